//! Calls into a plugin the way a careless or hostile C host could: raw
//! vtable calls with lengths and pointers the safe wrappers refuse to build. The buffers
//! are always real and owned here, so a conforming plugin only has to check what it is
//! told; a plugin that trusted `len` over `buf_cap` would read or write past them.
//!
//! The mirrors of `cyphonic_plugin_header` and `cyphonic_crypto_op` follow
//! `plugins/abi/include/cyphonic_plugin.h`; [`check_mirrors`] compares them against
//! the Rust definitions before any call.
//!
//! For virtual interfaces, [`vif_open_unvalidated`] hands the plugin a configuration
//! the safe wrapper would refuse before calling it (prefix lengths past the address
//! width), so the plugin's own checks are what is tested.

#![allow(unsafe_code)]

use std::ffi::{CString, c_char, c_void};

use cyphonic_plugin_abi::{
    CryptoOp, CryptoVtable, LastErrorFn, NONCE_LEN, Plugin, PluginKind, Route, Status, VifConfig,
    VifSettings, VifVtable,
};

/// A misuse of a crypto plugin's batch functions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Misuse {
    /// `seal_batch` with an op whose `len` is past its `buf_cap`.
    SealLenPastCapacity,
    /// `open_batch` with an op whose `len` is past its `buf_cap`.
    OpenLenPastCapacity,
    /// `seal_batch` with a null `buf` and a non-zero `buf_cap`.
    SealNullBuffer,
    /// `seal_batch` with a null `aad` and a non-zero `aad_len`.
    SealNullAad,
    /// `seal_batch` with an `aad` that overlaps `buf`.
    SealAadOverlapsBuffer,
    /// `seal_batch` with a null ops array and a non-zero count.
    SealNullOps,
    /// `open_batch` with a null key.
    OpenNullKey,
}

impl Misuse {
    pub const ALL: [Misuse; 7] = [
        Misuse::SealLenPastCapacity,
        Misuse::OpenLenPastCapacity,
        Misuse::SealNullBuffer,
        Misuse::SealNullAad,
        Misuse::SealAadOverlapsBuffer,
        Misuse::SealNullOps,
        Misuse::OpenNullKey,
    ];
}

/// What the plugin answered: the status of the batch call and, when the call processed
/// the batch, the status of the op.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answer {
    pub call: Status,
    pub op: Option<Status>,
}

/// Makes a key of `key_bytes` through the raw vtable and commits `misuse` with it.
/// Panics if the plugin is not a crypto suite or the mirrors do not match.
pub fn misuse(plugin: &Plugin, key_bytes: &[u8], misuse: Misuse) -> Answer {
    check_mirrors(plugin);
    let vtable = crypto_vtable(plugin);
    let key_new = vtable
        .key_new
        .expect("a validated crypto vtable has key_new");
    let key_free = vtable
        .key_free
        .expect("a validated crypto vtable has key_free");
    let seal = vtable
        .seal_batch
        .expect("a validated crypto vtable has seal_batch");
    let open = vtable
        .open_batch
        .expect("a validated crypto vtable has open_batch");

    let mut key: *mut c_void = std::ptr::null_mut();
    // SAFETY: `key_bytes` is readable for its length and `key` is a writable out-pointer.
    let status = unsafe { key_new(key_bytes.as_ptr(), key_bytes.len(), &mut key) };
    assert_eq!(Status(status), Status::OK, "key_new failed");
    assert!(!key.is_null(), "key_new succeeded with a null key");

    let mut buf = [0x5au8; 64];
    let aad = [0xa5u8; 8];
    let mut op = RawOp {
        nonce: [7; NONCE_LEN],
        reserved: 0,
        aad: aad.as_ptr(),
        aad_len: aad.len(),
        buf: buf.as_mut_ptr(),
        buf_cap: 32,
        len: 16,
        status: Status::INTERNAL.code(),
        reserved2: 0,
    };
    let (f, key_arg, ops, count) = match misuse {
        Misuse::SealLenPastCapacity => {
            op.len = 40;
            (seal, key, &raw mut op, 1)
        }
        Misuse::OpenLenPastCapacity => {
            op.len = 40;
            (open, key, &raw mut op, 1)
        }
        Misuse::SealNullBuffer => {
            op.buf = std::ptr::null_mut();
            (seal, key, &raw mut op, 1)
        }
        Misuse::SealNullAad => {
            op.aad = std::ptr::null();
            (seal, key, &raw mut op, 1)
        }
        Misuse::SealAadOverlapsBuffer => {
            op.aad = buf.as_ptr().wrapping_add(4);
            (seal, key, &raw mut op, 1)
        }
        Misuse::SealNullOps => (seal, key, std::ptr::null_mut(), 1),
        Misuse::OpenNullKey => (open, std::ptr::null_mut(), &raw mut op, 1),
    };
    // SAFETY: `key_arg` is the live key or null; `ops` is null or points at `op`, whose
    // buffers (`buf`, `aad`) are live and at least as large as `buf_cap` / `aad_len`
    // claim, or null. `RawOp` has `CryptoOp`'s layout (`check_mirrors`).
    let call = Status(unsafe { f(key_arg, ops.cast::<CryptoOp<'_>>(), count) });
    // SAFETY: `key` came from `key_new` above, is freed once, and no call is in flight.
    unsafe { key_free(key) };
    // An op is only meaningful when the call processed the batch.
    let op = (call == Status::OK).then_some(Status(op.status));
    Answer { call, op }
}

/// What a virtual-interface plugin's `open` answered to [`vif_open_unvalidated`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenAnswer {
    pub status: Status,
    /// Whether `*out_handle` was non-null afterwards (the handle is closed again).
    pub handle: bool,
}

/// Calls the `open` of a virtual-interface plugin with `settings` encoded as the safe
/// wrapper would, but without [`VifSettings::validate`]: prefix lengths past the address
/// width reach the plugin. A handle it returns is closed at once. Panics if the plugin
/// is not a virtual interface, the header mirror does not match, or a string holds NUL.
pub fn vif_open_unvalidated(plugin: &Plugin, settings: &VifSettings) -> OpenAnswer {
    check_header_mirror(plugin);
    assert_eq!(plugin.kind(), PluginKind::VirtualInterface, "not a vif");
    let raw = raw_header(plugin);
    assert!(raw.vtable_size as usize >= size_of::<VifVtable>());
    // SAFETY: the loader validated this header: a virtual interface's vtable pointer is
    // non-null, aligned and at least `size_of::<VifVtable>()` bytes (checked above), and
    // stays valid forever (plugins are never unloaded).
    let vtable = unsafe { raw.vtable.cast::<VifVtable>().read() };
    let open = vtable.open.expect("a validated vif vtable has open");
    let close = vtable.close.expect("a validated vif vtable has close");

    let c_string = |s: &str| CString::new(s).expect("test strings have no NUL");
    let ifname = settings.ifname.as_deref().map(c_string);
    let options = settings.options.as_deref().map(c_string);
    let routes: Vec<Route> = settings
        .routes
        .iter()
        .map(|&(addr, len)| Route::new(addr, len))
        .collect();
    let (ipv4, ipv4_prefix_len) = settings.ipv4.map_or(([0; 4], 0), |(a, p)| (a.octets(), p));
    let (ipv6, ipv6_prefix_len) = settings.ipv6.map_or(([0; 16], 0), |(a, p)| (a.octets(), p));
    let cfg = VifConfig {
        struct_size: size_of::<VifConfig>() as u32,
        mtu: settings.mtu,
        ifname: ifname.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
        has_ipv4: settings.ipv4.is_some().into(),
        ipv4_prefix_len,
        has_ipv6: settings.ipv6.is_some().into(),
        ipv6_prefix_len,
        ipv4,
        ipv6,
        routes: if routes.is_empty() {
            std::ptr::null()
        } else {
            routes.as_ptr()
        },
        route_count: routes.len(),
        options: options.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
    };
    let mut handle: *mut c_void = std::ptr::null_mut();
    // SAFETY: `cfg` and everything it points at (`ifname`, `options`, `routes`) live
    // until the end of this function; `handle` is a writable out-pointer.
    let status = Status(unsafe { open(&cfg, &mut handle) });
    let returned = !handle.is_null();
    if returned {
        // SAFETY: a handle `open` just returned, closed once, with no call in flight.
        unsafe { close(handle) };
    }
    OpenAnswer {
        status,
        handle: returned,
    }
}

/// The mirror of `cyphonic_crypto_op`.
#[repr(C)]
struct RawOp {
    nonce: [u8; NONCE_LEN],
    reserved: u32,
    aad: *const u8,
    aad_len: usize,
    buf: *mut u8,
    buf_cap: usize,
    len: usize,
    status: i32,
    reserved2: u32,
}

/// The mirror of `cyphonic_plugin_header`.
#[repr(C)]
struct RawHeader {
    magic: u32,
    abi_major: u16,
    abi_minor: u16,
    header_size: u32,
    kind: u32,
    name: *const c_char,
    version: *const c_char,
    vtable: *const c_void,
    vtable_size: u32,
    reserved: u32,
    last_error: Option<LastErrorFn>,
}

/// Checks the mirrors against the real types: sizes, and the fields the real types let
/// us read.
fn check_mirrors(plugin: &Plugin) {
    assert_eq!(
        size_of::<RawOp>(),
        size_of::<CryptoOp<'_>>(),
        "RawOp mirror size"
    );
    let mut buf = [0u8; 48];
    let op = CryptoOp::new(&[9; NONCE_LEN], b"aad", &mut buf, 17).expect("17 <= 48");
    // SAFETY: `RawOp` is a same-size `repr(C)` mirror of `CryptoOp`; reading plain
    // fields of a live op through it is a reinterpretation of initialised memory.
    let raw = unsafe { &*(&raw const op).cast::<RawOp>() };
    assert_eq!(
        (raw.nonce, raw.len, raw.buf_cap, raw.aad_len, raw.status),
        (*op.nonce(), op.len(), op.capacity(), 3, op.status().code()),
        "RawOp mirror fields"
    );
    check_header_mirror(plugin);
}

/// Checks the header mirror against the real type: its size, and the fields the real
/// type lets us read.
fn check_header_mirror(plugin: &Plugin) {
    assert_eq!(
        size_of::<RawHeader>(),
        size_of::<cyphonic_plugin_abi::PluginHeader>(),
        "RawHeader mirror size"
    );
    let header = plugin.header();
    let raw = raw_header(plugin);
    assert_eq!(
        (
            raw.magic,
            raw.abi_major,
            raw.abi_minor,
            raw.header_size,
            raw.kind,
            raw.vtable_size
        ),
        (
            header.magic(),
            header.abi_major(),
            header.abi_minor(),
            header.header_size(),
            header.kind(),
            header.vtable_size()
        ),
        "RawHeader mirror fields"
    );
}

fn raw_header(plugin: &Plugin) -> &'static RawHeader {
    let header: &'static cyphonic_plugin_abi::PluginHeader = plugin.header();
    // SAFETY: `RawHeader` is a same-size `repr(C)` mirror of `PluginHeader` (checked by
    // `check_mirrors` before any use of a pointer field), and the header is `'static`.
    unsafe { &*(header as *const cyphonic_plugin_abi::PluginHeader).cast::<RawHeader>() }
}

fn crypto_vtable(plugin: &Plugin) -> CryptoVtable {
    assert_eq!(plugin.kind(), PluginKind::CryptoSuite, "not a crypto suite");
    let raw = raw_header(plugin);
    assert!(raw.vtable_size as usize >= size_of::<CryptoVtable>());
    // SAFETY: the loader validated this header: a crypto suite's vtable pointer is
    // non-null, aligned and at least `size_of::<CryptoVtable>()` bytes (checked above),
    // and stays valid forever (plugins are never unloaded).
    unsafe { raw.vtable.cast::<CryptoVtable>().read() }
}
