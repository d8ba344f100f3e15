//! The versioned C ABI between cyphonic and its plugins (ABI 1.0), both sides of it.
//!
//! - The raw contract: [`PluginHeader`], the per-kind vtables ([`CryptoVtable`],
//!   [`VifVtable`], [`MobilityVtable`]), the structs they pass and the status codes
//!   ([`Status`]). `include/cyphonic_plugin.h` is the same contract in C, and
//!   `docs/plugins.md` the prose one.
//! - The plugin side: the traits [`CryptoSuite`], [`VirtualInterface`],
//!   [`MobilityDetector`] and the macros [`crypto_suite_plugin!`],
//!   [`virtual_interface_plugin!`], [`mobility_detector_plugin!`] and
//!   [`export_plugin_entry!`] that export an implementation, panic-safe and with every
//!   pointer and length checked. Helpers plugin authors share: [`option_lines`] for the
//!   `key=value` options text, [`network`] for prefix masks, and the mobility debounce
//!   [`Burst`].
//! - The host side: [`Plugin`] (validated header; `Plugin::load` with the `loader`
//!   feature dlopens a shared library) and the safe wrappers [`CryptoSuitePlugin`] /
//!   [`CryptoKey`], [`VifPlugin`] / [`VifHandle`], [`MobilityPlugin`] /
//!   [`MobilityHandle`], which re-check everything a plugin returns.
//!
//! `unsafe` lives only in the modules that cross the boundary (`abi`, `plugin::glue`,
//! `host`, `loader`), each opting in with `#![allow(unsafe_code)]`; the code the macros
//! expand to in a plugin crate contains none except the `no_mangle` entry point.

mod abi;
mod debounce;
mod host;
#[cfg(feature = "loader")]
mod loader;
mod plugin;
mod settings;
mod status;
mod wipe;

pub use abi::{
    ABI_MAJOR, ABI_MINOR, ADDR_FLAG_DEPRECATED, ADDR_FLAG_TEMPORARY, ADDR_FLAG_TENTATIVE,
    AddrEntry, CryptoBatchFn, CryptoInfo, CryptoInfoFn, CryptoKeyFreeFn, CryptoKeyNewFn, CryptoOp,
    CryptoVtable, ENTRY_SYMBOL, EntryFn, FAMILY_IPV4, FAMILY_IPV6, HINT_ADDRESSES_CHANGED,
    HINT_ROUTES_CHANGED, HandleCloseFn, HandleWakeFn, KIND_CRYPTO_SUITE, KIND_MOBILITY_DETECTOR,
    KIND_VIRTUAL_INTERFACE, LastErrorFn, MAGIC, MobilityOpenFn, MobilitySnapshotFn, MobilityVtable,
    MobilityWaitFn, NONCE_LEN, Packet, PluginHeader, Route, SUITE_AES_256_CTR_HMAC_SHA256,
    SUITE_AES_256_GCM, SUITE_CHACHA20_POLY1305, TIMEOUT_INFINITE, VIF_IFNAME_LEN, VifConfig,
    VifInfo, VifInfoFn, VifOpenFn, VifPollableFdFn, VifReadBatchFn, VifVtable, VifWriteBatchFn,
};
pub use debounce::{Burst, MAX_BURST_FACTOR};
pub use host::{
    AbiVersion, CryptoKey, CryptoSuitePlugin, LoadError, MobilityHandle, MobilityPlugin, Plugin,
    PluginKind, VifHandle, VifPlugin,
};
pub use plugin::{CryptoSuite, MobilityDetector, VirtualInterface};
pub use settings::{VifDetails, VifSettings, network, option_lines, option_value};
pub use status::{PluginError, PluginFailure, Status};
pub use wipe::WipeOnDrop;

/// Support for the export macros and this crate's own tests; not a stable API.
#[doc(hidden)]
pub mod __private {
    pub use crate::host::layout::{C_CONSTANTS, StructLayout, c_constants, c_layout};
    pub use crate::plugin::glue::{
        LAST_ERROR, crypto_vtable, cstr, mobility_vtable, nul_terminated, vif_vtable,
    };
}
