//! The Rust side of the C header check (`tests/c_header.rs`): every constant with its C
//! name, and the size, alignment and field offsets/sizes of every ABI struct, computed by
//! the compiler. The test compiles a C program printing the same from
//! `include/cyphonic_plugin.h` and compares.

use std::mem::offset_of;

use crate::abi::{
    ABI_MAJOR, ABI_MINOR, ADDR_FLAG_DEPRECATED, ADDR_FLAG_TEMPORARY, ADDR_FLAG_TENTATIVE,
    AddrEntry, CryptoInfo, CryptoOp, CryptoVtable, FAMILY_IPV4, FAMILY_IPV6,
    HINT_ADDRESSES_CHANGED, HINT_ROUTES_CHANGED, KIND_CRYPTO_SUITE, KIND_MOBILITY_DETECTOR,
    KIND_VIRTUAL_INTERFACE, MAGIC, MobilityVtable, NONCE_LEN, Packet, PluginHeader, Route,
    SUITE_AES_256_CTR_HMAC_SHA256, SUITE_AES_256_GCM, SUITE_CHACHA20_POLY1305, TIMEOUT_INFINITE,
    VIF_IFNAME_LEN, VifConfig, VifInfo, VifVtable,
};
use crate::status::Status;

/// `(C macro name, value)` of every numeric constant, except the status codes (see
/// [`c_constants`]).
pub const C_CONSTANTS: &[(&str, i64)] = &[
    ("CYPHONIC_PLUGIN_MAGIC", MAGIC as i64),
    ("CYPHONIC_PLUGIN_ABI_MAJOR", ABI_MAJOR as i64),
    ("CYPHONIC_PLUGIN_ABI_MINOR", ABI_MINOR as i64),
    (
        "CYPHONIC_KIND_VIRTUAL_INTERFACE",
        KIND_VIRTUAL_INTERFACE as i64,
    ),
    ("CYPHONIC_KIND_CRYPTO_SUITE", KIND_CRYPTO_SUITE as i64),
    (
        "CYPHONIC_KIND_MOBILITY_DETECTOR",
        KIND_MOBILITY_DETECTOR as i64,
    ),
    ("CYPHONIC_SUITE_AES_256_GCM", SUITE_AES_256_GCM as i64),
    (
        "CYPHONIC_SUITE_CHACHA20_POLY1305",
        SUITE_CHACHA20_POLY1305 as i64,
    ),
    (
        "CYPHONIC_SUITE_AES_256_CTR_HMAC_SHA256",
        SUITE_AES_256_CTR_HMAC_SHA256 as i64,
    ),
    ("CYPHONIC_NONCE_LEN", NONCE_LEN as i64),
    (
        "CYPHONIC_HINT_ADDRESSES_CHANGED",
        HINT_ADDRESSES_CHANGED as i64,
    ),
    ("CYPHONIC_HINT_ROUTES_CHANGED", HINT_ROUTES_CHANGED as i64),
    ("CYPHONIC_ADDR_FLAG_TEMPORARY", ADDR_FLAG_TEMPORARY as i64),
    ("CYPHONIC_ADDR_FLAG_DEPRECATED", ADDR_FLAG_DEPRECATED as i64),
    ("CYPHONIC_ADDR_FLAG_TENTATIVE", ADDR_FLAG_TENTATIVE as i64),
    ("CYPHONIC_FAMILY_IPV4", FAMILY_IPV4 as i64),
    ("CYPHONIC_FAMILY_IPV6", FAMILY_IPV6 as i64),
    ("CYPHONIC_VIF_IFNAME_LEN", VIF_IFNAME_LEN as i64),
    ("CYPHONIC_TIMEOUT_INFINITE", TIMEOUT_INFINITE as i64),
];

/// Every numeric constant of the C header with its value: [`C_CONSTANTS`] plus
/// `CYPHONIC_STATUS_<NAME>` for each status code.
pub fn c_constants() -> Vec<(String, i64)> {
    let statuses = Status::ALL
        .iter()
        .map(|(s, name)| (format!("CYPHONIC_STATUS_{name}"), i64::from(s.code())));
    C_CONSTANTS
        .iter()
        .map(|(n, v)| ((*n).to_owned(), *v))
        .chain(statuses)
        .collect()
}

/// The layout of one ABI struct as the Rust compiler lays it out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StructLayout {
    /// The C type name (`cyphonic_crypto_op`).
    pub c_name: &'static str,
    pub size: usize,
    pub align: usize,
    /// `(field, offset, size)`; the C field names are the Rust ones.
    pub fields: Vec<(&'static str, usize, usize)>,
}

macro_rules! layout {
    ($c_name:literal, $t:ty, [$($field:ident),* $(,)?]) => {
        StructLayout {
            c_name: $c_name,
            size: size_of::<$t>(),
            align: align_of::<$t>(),
            fields: vec![$((stringify!($field), offset_of!($t, $field), field_size(|s: &$t| &s.$field))),*],
        }
    };
}

fn field_size<T, F>(_project: impl Fn(&T) -> &F) -> usize {
    size_of::<F>()
}

/// The layout of every struct of the ABI.
pub fn c_layout() -> Vec<StructLayout> {
    vec![
        layout!(
            "cyphonic_plugin_header",
            PluginHeader,
            [
                magic,
                abi_major,
                abi_minor,
                header_size,
                kind,
                name,
                version,
                vtable,
                vtable_size,
                reserved,
                last_error,
            ]
        ),
        layout!(
            "cyphonic_crypto_info",
            CryptoInfo,
            [
                struct_size,
                suite_id,
                key_len,
                nonce_len,
                tag_len,
                reserved,
                max_messages_per_key,
            ]
        ),
        layout!(
            "cyphonic_crypto_op",
            CryptoOp<'static>,
            [
                nonce, reserved, aad, aad_len, buf, buf_cap, len, status, reserved2,
            ]
        ),
        layout!(
            "cyphonic_crypto_vtable",
            CryptoVtable,
            [
                struct_size,
                reserved,
                info,
                key_new,
                key_free,
                seal_batch,
                open_batch,
            ]
        ),
        layout!(
            "cyphonic_route",
            Route,
            [family, prefix_len, reserved, addr]
        ),
        layout!(
            "cyphonic_vif_config",
            VifConfig,
            [
                struct_size,
                mtu,
                ifname,
                has_ipv4,
                ipv4_prefix_len,
                has_ipv6,
                ipv6_prefix_len,
                ipv4,
                ipv6,
                routes,
                route_count,
                options,
            ]
        ),
        layout!(
            "cyphonic_vif_info",
            VifInfo,
            [struct_size, mtu, ifindex, reserved, ifname]
        ),
        layout!("cyphonic_packet", Packet<'static>, [buf, cap, offset, len]),
        layout!(
            "cyphonic_vif_vtable",
            VifVtable,
            [
                struct_size,
                reserved,
                open,
                info,
                read_batch,
                write_batch,
                pollable_fd,
                wake,
                close,
            ]
        ),
        layout!(
            "cyphonic_addr_entry",
            AddrEntry,
            [family, prefix_len, flags, ifindex, addr]
        ),
        layout!(
            "cyphonic_mobility_vtable",
            MobilityVtable,
            [struct_size, reserved, open, wait, snapshot, wake, close,]
        ),
    ]
}
