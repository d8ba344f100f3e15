//! The `extern "C"` functions the export macros put in a plugin's vtable: generic over
//! the plugin's trait impl, they check every pointer and length the caller passed, run
//! the safe trait method under `catch_unwind`, and record failures as the thread's last
//! error. The macros only instantiate these, so the plugin crate itself needs no unsafe.
//!
//! The last-error slot is a thread-local of this crate: plugins linked statically into one
//! binary share it (a host reads it right after the failed call, so that is harmless);
//! each shared-library plugin has its own copy.

#![allow(unsafe_code)]

use std::any::Any;
use std::borrow::Cow;
use std::cell::RefCell;
use std::ffi::{CStr, c_char, c_void};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::ptr;

use crate::abi::{
    AddrEntry, CryptoInfo, CryptoOp, CryptoVtable, LastErrorFn, MobilityVtable, Packet, Route,
    VIF_IFNAME_LEN, VifConfig, VifInfo, VifVtable,
};
use crate::plugin::{CryptoSuite, MobilityDetector, VirtualInterface};
use crate::settings::VifSettings;
use crate::status::{PluginFailure, Status};

/// The `last_error` every macro-built header carries.
pub const LAST_ERROR: Option<LastErrorFn> = Some(last_error);

/// The crypto vtable for suite `S`.
pub const fn crypto_vtable<S: CryptoSuite>() -> CryptoVtable {
    CryptoVtable {
        struct_size: size_of::<CryptoVtable>() as u32,
        reserved: 0,
        info: Some(crypto_info::<S>),
        key_new: Some(crypto_key_new::<S>),
        key_free: Some(crypto_key_free::<S>),
        seal_batch: Some(crypto_seal_batch::<S>),
        open_batch: Some(crypto_open_batch::<S>),
    }
}

/// The virtual-interface vtable for `V`.
pub const fn vif_vtable<V: VirtualInterface>() -> VifVtable {
    VifVtable {
        struct_size: size_of::<VifVtable>() as u32,
        reserved: 0,
        open: Some(vif_open::<V>),
        info: Some(vif_info::<V>),
        read_batch: Some(vif_read_batch::<V>),
        write_batch: Some(vif_write_batch::<V>),
        pollable_fd: Some(vif_pollable_fd::<V>),
        wake: Some(vif_wake::<V>),
        close: Some(close_handle::<V>),
    }
}

/// The mobility-detector vtable for `M`.
pub const fn mobility_vtable<M: MobilityDetector>() -> MobilityVtable {
    MobilityVtable {
        struct_size: size_of::<MobilityVtable>() as u32,
        reserved: 0,
        open: Some(mobility_open::<M>),
        wait: Some(mobility_wait::<M>),
        snapshot: Some(mobility_snapshot::<M>),
        wake: Some(mobility_wake::<M>),
        close: Some(close_handle::<M>),
    }
}

/// `s` as the bytes of a C string; `N` must be `s.len() + 1` and `s` free of NUL (checked
/// at compile time when used in a `const`).
pub const fn nul_terminated<const N: usize>(s: &str) -> [u8; N] {
    let bytes = s.as_bytes();
    assert!(bytes.len() + 1 == N, "N must be the string length plus one");
    let mut out = [0u8; N];
    let mut i = 0;
    while i < bytes.len() {
        assert!(
            bytes[i] != 0,
            "plugin name and version must not contain NUL"
        );
        out[i] = bytes[i];
        i += 1;
    }
    out
}

/// `bytes` (from [`nul_terminated`]) as a `CStr`.
pub const fn cstr(bytes: &'static [u8]) -> &'static CStr {
    match CStr::from_bytes_with_nul(bytes) {
        Ok(s) => s,
        Err(_) => panic!("not a NUL-terminated string without interior NUL"),
    }
}

thread_local! {
    static LAST_ERROR_MESSAGE: RefCell<Cow<'static, str>> = const { RefCell::new(Cow::Borrowed("")) };
}

unsafe extern "C" fn last_error(buf: *mut u8, cap: usize) -> usize {
    let copy = || {
        LAST_ERROR_MESSAGE
            .try_with(|slot| {
                let Ok(message) = slot.try_borrow() else {
                    return 0;
                };
                let bytes = message.as_bytes();
                let n = bytes.len().min(cap);
                if n > 0 && !buf.is_null() {
                    // SAFETY: the caller provides `cap` writable bytes at `buf` (ABI
                    // contract of `last_error`); `n <= cap`, and our own string cannot
                    // overlap the caller's buffer.
                    unsafe { ptr::copy_nonoverlapping(bytes.as_ptr(), buf, n) };
                }
                bytes.len()
            })
            .unwrap_or(0)
    };
    catch_unwind(copy).unwrap_or(0)
}

fn set_last_error(message: Cow<'static, str>) {
    // During thread teardown the slot may be gone; the message is then lost, not fatal.
    let _ = LAST_ERROR_MESSAGE.try_with(|slot| {
        if let Ok(mut slot) = slot.try_borrow_mut() {
            *slot = message;
        }
    });
}

/// Runs one entry point: its failures and panics become a status and the last error.
fn guard(f: impl FnOnce() -> Result<(), PluginFailure>) -> i32 {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => Status::OK.code(),
        Ok(Err(failure)) => {
            let status = failure.status();
            set_last_error(failure.into_message());
            status.code()
        }
        Err(payload) => {
            set_last_error(Cow::Owned(format!(
                "panicked: {}",
                panic_message(&*payload)
            )));
            // A payload whose destructor panics must not unwind into C.
            let _ = catch_unwind(AssertUnwindSafe(move || drop(payload)));
            Status::PANIC.code()
        }
    }
}

fn panic_message(payload: &(dyn Any + Send)) -> &str {
    if let Some(s) = payload.downcast_ref::<&'static str>() {
        s
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s
    } else {
        "non-string panic payload"
    }
}

// ---- crypto suites ------------------------------------------------------------------

unsafe extern "C" fn crypto_info<S: CryptoSuite>(out: *mut CryptoInfo) -> i32 {
    guard(|| {
        // SAFETY: `out` points at a caller-sized `CryptoInfo` (ABI contract).
        unsafe { check_out_struct(out) }?;
        let mut info = S::INFO;
        info.struct_size = size_of::<CryptoInfo>() as u32;
        // SAFETY: checked non-null, aligned and at least this large just above.
        unsafe { out.write(info) };
        Ok(())
    })
}

unsafe extern "C" fn crypto_key_new<S: CryptoSuite>(
    key: *const u8,
    key_len: usize,
    out: *mut *mut c_void,
) -> i32 {
    guard(|| {
        // SAFETY: `out` is a caller-provided out-pointer (ABI contract).
        let out = unsafe { out_ref(out) }?;
        *out = ptr::null_mut();
        // SAFETY: `key[..key_len]` is readable (ABI contract).
        let key = unsafe { bytes(key, key_len) }?;
        if key.len() != S::INFO.key_len as usize {
            return Err(PluginFailure::invalid_argument(format!(
                "key must be {} bytes, got {}",
                S::INFO.key_len,
                key.len()
            )));
        }
        let key = S::key_new(key)?;
        *out = Box::into_raw(Box::new(key)).cast();
        Ok(())
    })
}

unsafe extern "C" fn crypto_key_free<S: CryptoSuite>(key: *mut c_void) {
    if key.is_null() {
        return;
    }
    let _ = guard(|| {
        // SAFETY: a non-null key came from `crypto_key_new::<S>`, i.e. `Box<S::Key>`, and
        // the caller frees it once, with no call on it in flight (ABI contract).
        drop(unsafe { Box::from_raw(key.cast::<S::Key>()) });
        Ok(())
    });
}

unsafe extern "C" fn crypto_seal_batch<S: CryptoSuite>(
    key: *const c_void,
    ops: *mut CryptoOp<'_>,
    count: usize,
) -> i32 {
    guard(|| {
        // SAFETY: `key` came from `crypto_key_new::<S>` and is alive (ABI contract).
        let key = unsafe { key_ref::<S>(key) }?;
        // SAFETY: `ops[..count]` is caller-owned, writable (ABI contract).
        let ops = unsafe { slice_mut(ops, count) }?;
        for op in ops {
            // SAFETY: the op's pointers describe caller-owned buffers (ABI contract).
            let status = guard(|| unsafe { seal_one::<S>(key, op) });
            op.status = status;
        }
        Ok(())
    })
}

unsafe extern "C" fn crypto_open_batch<S: CryptoSuite>(
    key: *const c_void,
    ops: *mut CryptoOp<'_>,
    count: usize,
) -> i32 {
    guard(|| {
        // SAFETY: as in `crypto_seal_batch`.
        let key = unsafe { key_ref::<S>(key) }?;
        // SAFETY: as in `crypto_seal_batch`.
        let ops = unsafe { slice_mut(ops, count) }?;
        for op in ops {
            // SAFETY: as in `crypto_seal_batch`.
            let status = guard(|| unsafe { open_one::<S>(key, op) });
            op.status = status;
        }
        Ok(())
    })
}

/// # Safety
/// `op.aad[..aad_len]` is readable and `op.buf[..buf_cap]` writable, and neither overlaps
/// the op itself.
unsafe fn seal_one<S: CryptoSuite>(
    key: &S::Key,
    op: &mut CryptoOp<'_>,
) -> Result<(), PluginFailure> {
    // SAFETY: forwarded from the caller.
    let (aad, buf) = unsafe { op_buffers(op) }?;
    let len = op.len;
    if len > buf.len() {
        return Err(PluginFailure::invalid_argument("op len exceeds buf_cap"));
    }
    if buf.len() - len < S::INFO.tag_len as usize {
        return Err(PluginFailure::buffer_too_small(
            "buf_cap has no room for the tag",
        ));
    }
    let nonce = op.nonce;
    let sealed = S::seal(key, &nonce, aad, buf, len)?;
    if sealed > op.buf_cap {
        return Err(PluginFailure::internal(
            "suite returned a sealed length past buf_cap",
        ));
    }
    op.len = sealed;
    Ok(())
}

/// # Safety
/// As for [`seal_one`].
unsafe fn open_one<S: CryptoSuite>(
    key: &S::Key,
    op: &mut CryptoOp<'_>,
) -> Result<(), PluginFailure> {
    // SAFETY: forwarded from the caller.
    let (aad, buf) = unsafe { op_buffers(op) }?;
    let len = op.len;
    if len > buf.len() {
        return Err(PluginFailure::invalid_argument("op len exceeds buf_cap"));
    }
    if len < S::INFO.tag_len as usize {
        return Err(PluginFailure::auth_failed());
    }
    let nonce = op.nonce;
    let opened = S::open(key, &nonce, aad, &mut buf[..len])?;
    if opened > len {
        return Err(PluginFailure::internal(
            "suite returned a plaintext longer than its input",
        ));
    }
    op.len = opened;
    Ok(())
}

/// The op's aad and whole buffer, refusing null pointers and overlap between the two.
///
/// # Safety
/// As for [`seal_one`].
unsafe fn op_buffers<'b>(op: &CryptoOp<'_>) -> Result<(&'b [u8], &'b mut [u8]), PluginFailure> {
    let aad_range = (op.aad as usize, op.aad_len);
    let buf_range = (op.buf as usize, op.buf_cap);
    if overlaps(aad_range, buf_range) {
        return Err(PluginFailure::invalid_argument("aad overlaps buf"));
    }
    // SAFETY: readable per the caller; not overlapping `buf` (checked above).
    let aad = unsafe { bytes(op.aad, op.aad_len) }?;
    // SAFETY: writable per the caller.
    let buf = unsafe { bytes_mut(op.buf, op.buf_cap) }?;
    Ok((aad, buf))
}

fn overlaps((a, a_len): (usize, usize), (b, b_len): (usize, usize)) -> bool {
    a_len != 0 && b_len != 0 && a < b.saturating_add(b_len) && b < a.saturating_add(a_len)
}

/// # Safety
/// A non-null `key` is a live key made by `crypto_key_new::<S>`.
unsafe fn key_ref<'k, S: CryptoSuite>(key: *const c_void) -> Result<&'k S::Key, PluginFailure> {
    let key = key.cast::<S::Key>();
    if key.is_null() || !key.is_aligned() {
        return Err(PluginFailure::invalid_argument("null or misaligned key"));
    }
    // SAFETY: per the caller, a `Box<S::Key>` pointer; keys are only shared, never mutated.
    Ok(unsafe { &*key })
}

// ---- virtual interfaces -------------------------------------------------------------

unsafe extern "C" fn vif_open<V: VirtualInterface>(
    cfg: *const VifConfig,
    out: *mut *mut c_void,
) -> i32 {
    guard(|| {
        // SAFETY: caller-provided out-pointer (ABI contract).
        let out = unsafe { out_ref(out) }?;
        *out = ptr::null_mut();
        // SAFETY: `cfg` points at a config of `struct_size` bytes whose pointers are
        // valid for this call (ABI contract).
        let settings = unsafe { decode_vif_config(cfg) }?;
        let vif = V::open(&settings)?;
        *out = Box::into_raw(Box::new(vif)).cast();
        Ok(())
    })
}

unsafe extern "C" fn vif_info<V: VirtualInterface>(h: *mut c_void, out: *mut VifInfo) -> i32 {
    guard(|| {
        // SAFETY: a handle from `vif_open::<V>` (ABI contract).
        let vif = unsafe { handle_ref::<V>(h) }?;
        // SAFETY: `out` points at a caller-sized `VifInfo` (ABI contract).
        unsafe { check_out_struct(out) }?;
        let details = vif.info()?;
        let name = details.ifname.as_bytes();
        if name.len() >= VIF_IFNAME_LEN || name.contains(&0) {
            return Err(PluginFailure::internal(
                "interface name longer than 63 bytes or has NUL",
            ));
        }
        let mut info = VifInfo::empty();
        info.mtu = details.mtu;
        info.ifindex = details.ifindex;
        info.ifname[..name.len()].copy_from_slice(name);
        // SAFETY: checked non-null, aligned and large enough above.
        unsafe { out.write(info) };
        Ok(())
    })
}

unsafe extern "C" fn vif_read_batch<V: VirtualInterface>(
    h: *mut c_void,
    pkts: *mut Packet<'_>,
    count: usize,
    timeout_ms: i32,
    out_filled: *mut usize,
) -> i32 {
    guard(|| {
        // SAFETY: caller-provided out-pointer (ABI contract).
        let filled = unsafe { out_ref(out_filled) }?;
        *filled = 0;
        // SAFETY: a handle from `vif_open::<V>` (ABI contract).
        let vif = unsafe { handle_ref::<V>(h) }?;
        // SAFETY: `pkts[..count]` is caller-owned and writable (ABI contract).
        let pkts = unsafe { slice_mut(pkts, count) }?;
        for pkt in pkts.iter_mut() {
            check_packet_buffer(pkt)?;
            pkt.len = 0;
        }
        let n = vif.read_batch(pkts, timeout_ms)?;
        if n > count {
            return Err(PluginFailure::internal(
                "read_batch reported more packets than slots",
            ));
        }
        *filled = n;
        Ok(())
    })
}

unsafe extern "C" fn vif_write_batch<V: VirtualInterface>(
    h: *mut c_void,
    pkts: *const Packet<'_>,
    count: usize,
    out_written: *mut usize,
) -> i32 {
    guard(|| {
        // SAFETY: caller-provided out-pointer (ABI contract).
        let written = unsafe { out_ref(out_written) }?;
        *written = 0;
        // SAFETY: a handle from `vif_open::<V>` (ABI contract).
        let vif = unsafe { handle_ref::<V>(h) }?;
        // SAFETY: `pkts[..count]` is caller-owned and readable (ABI contract).
        let pkts = unsafe { slice_ref(pkts, count) }?;
        for pkt in pkts {
            check_packet_buffer(pkt)?;
            if pkt.len > pkt.cap - pkt.offset {
                return Err(PluginFailure::invalid_argument(
                    "packet offset + len exceeds cap",
                ));
            }
        }
        let n = vif.write_batch(pkts)?;
        if n > count {
            return Err(PluginFailure::internal(
                "write_batch reported more packets than given",
            ));
        }
        *written = n;
        Ok(())
    })
}

unsafe extern "C" fn vif_pollable_fd<V: VirtualInterface>(h: *mut c_void, out_fd: *mut i64) -> i32 {
    guard(|| {
        // SAFETY: caller-provided out-pointer (ABI contract).
        let out = unsafe { out_ref(out_fd) }?;
        *out = -1;
        // SAFETY: a handle from `vif_open::<V>` (ABI contract).
        let vif = unsafe { handle_ref::<V>(h) }?;
        *out = vif.pollable_fd()?;
        Ok(())
    })
}

unsafe extern "C" fn vif_wake<V: VirtualInterface>(h: *mut c_void) -> i32 {
    guard(|| {
        // SAFETY: a handle from `vif_open::<V>` (ABI contract).
        unsafe { handle_ref::<V>(h) }?.wake()
    })
}

/// Packet slots must describe a real buffer before the trait sees them as `Packet`s,
/// whose safe accessors rely on `offset + len <= cap` over valid memory.
fn check_packet_buffer(pkt: &Packet<'_>) -> Result<(), PluginFailure> {
    if pkt.cap != 0 && pkt.buf.is_null() {
        return Err(PluginFailure::invalid_argument(
            "null packet buffer with non-zero cap",
        ));
    }
    if pkt.cap > isize::MAX as usize || pkt.offset > pkt.cap {
        return Err(PluginFailure::invalid_argument("packet offset exceeds cap"));
    }
    Ok(())
}

/// # Safety
/// `cfg` points at `struct_size` readable bytes of a `VifConfig` whose pointers are valid.
unsafe fn decode_vif_config(cfg: *const VifConfig) -> Result<VifSettings, PluginFailure> {
    if cfg.is_null() || !cfg.is_aligned() {
        return Err(PluginFailure::invalid_argument("null or misaligned config"));
    }
    // SAFETY: every version of the struct starts with `struct_size`.
    let size = unsafe { cfg.cast::<u32>().read() } as usize;
    if size < size_of::<VifConfig>() {
        return Err(PluginFailure::invalid_argument(
            "VifConfig struct_size too small",
        ));
    }
    // SAFETY: at least `size_of::<VifConfig>()` readable bytes (checked above).
    let cfg = unsafe { &*cfg };
    let prefix_ok = |has: u8, len: u8, max: u8| has == 0 || len <= max;
    if !prefix_ok(cfg.has_ipv4, cfg.ipv4_prefix_len, 32)
        || !prefix_ok(cfg.has_ipv6, cfg.ipv6_prefix_len, 128)
    {
        return Err(PluginFailure::invalid_argument(
            "prefix length exceeds the address width",
        ));
    }
    // SAFETY: `routes[..route_count]` is readable (caller).
    let routes: &[Route] = unsafe { slice_ref(cfg.routes, cfg.route_count) }?;
    let routes = routes
        .iter()
        .map(|r| {
            r.destination()
                .ok_or_else(|| PluginFailure::invalid_argument("bad route family or prefix"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let settings = VifSettings {
        mtu: cfg.mtu,
        // SAFETY: null or a NUL-terminated string (caller).
        ifname: unsafe { opt_string(cfg.ifname, "ifname") }?,
        ipv4: (cfg.has_ipv4 != 0).then(|| (Ipv4Addr::from(cfg.ipv4), cfg.ipv4_prefix_len)),
        ipv6: (cfg.has_ipv6 != 0).then(|| (Ipv6Addr::from(cfg.ipv6), cfg.ipv6_prefix_len)),
        routes,
        // SAFETY: null or a NUL-terminated string (caller).
        options: unsafe { opt_string(cfg.options, "options") }?,
    };
    settings.validate()?;
    Ok(settings)
}

// ---- mobility detectors -------------------------------------------------------------

unsafe extern "C" fn mobility_open<M: MobilityDetector>(
    options: *const c_char,
    out: *mut *mut c_void,
) -> i32 {
    guard(|| {
        // SAFETY: caller-provided out-pointer (ABI contract).
        let out = unsafe { out_ref(out) }?;
        *out = ptr::null_mut();
        // SAFETY: null or a NUL-terminated string (ABI contract).
        let options = unsafe { opt_string(options, "options") }?;
        let detector = M::open(options.as_deref())?;
        *out = Box::into_raw(Box::new(detector)).cast();
        Ok(())
    })
}

unsafe extern "C" fn mobility_wait<M: MobilityDetector>(
    h: *mut c_void,
    timeout_ms: i32,
    out_hint: *mut u32,
) -> i32 {
    guard(|| {
        // SAFETY: caller-provided out-pointer (ABI contract).
        let hint = unsafe { out_ref(out_hint) }?;
        *hint = 0;
        // SAFETY: a handle from `mobility_open::<M>` (ABI contract).
        *hint = unsafe { handle_ref::<M>(h) }?.wait(timeout_ms)?;
        Ok(())
    })
}

unsafe extern "C" fn mobility_snapshot<M: MobilityDetector>(
    h: *mut c_void,
    out: *mut AddrEntry,
    cap: usize,
    out_count: *mut usize,
) -> i32 {
    guard(|| {
        // SAFETY: caller-provided out-pointer (ABI contract).
        let count = unsafe { out_ref(out_count) }?;
        *count = 0;
        // SAFETY: a handle from `mobility_open::<M>` (ABI contract).
        let entries = unsafe { handle_ref::<M>(h) }?.snapshot()?;
        *count = entries.len();
        if entries.len() > cap {
            return Err(PluginFailure::buffer_too_small(
                "snapshot needs more entries than cap",
            ));
        }
        // SAFETY: `out[..cap]` is caller-owned and writable (ABI contract).
        let out = unsafe { slice_mut(out, cap) }?;
        out[..entries.len()].copy_from_slice(&entries);
        Ok(())
    })
}

unsafe extern "C" fn mobility_wake<M: MobilityDetector>(h: *mut c_void) -> i32 {
    guard(|| {
        // SAFETY: a handle from `mobility_open::<M>` (ABI contract).
        unsafe { handle_ref::<M>(h) }?.wake()
    })
}

// ---- shared helpers -----------------------------------------------------------------

unsafe extern "C" fn close_handle<T: Send + Sync + 'static>(h: *mut c_void) {
    if h.is_null() {
        return;
    }
    let _ = guard(|| {
        // SAFETY: a non-null handle came from `Box<T>::into_raw` in this module's `open`;
        // the caller closes it once with no call in flight (ABI contract).
        drop(unsafe { Box::from_raw(h.cast::<T>()) });
        Ok(())
    });
}

/// # Safety
/// A non-null `h` is a live handle made by this module's `open` for `T`.
unsafe fn handle_ref<'h, T>(h: *mut c_void) -> Result<&'h T, PluginFailure> {
    let h = h.cast::<T>().cast_const();
    if h.is_null() || !h.is_aligned() {
        return Err(PluginFailure::invalid_argument("null or misaligned handle"));
    }
    // SAFETY: per the caller; handles are only used through `&T` (the traits take `&self`).
    Ok(unsafe { &*h })
}

/// # Safety
/// A non-null `out` is valid for writes of `T`.
unsafe fn out_ref<'o, T>(out: *mut T) -> Result<&'o mut T, PluginFailure> {
    if out.is_null() || !out.is_aligned() {
        return Err(PluginFailure::invalid_argument(
            "null or misaligned out-pointer",
        ));
    }
    // SAFETY: per the caller.
    Ok(unsafe { &mut *out })
}

/// Checks an out-struct whose caller stored its capacity in the leading `struct_size`.
///
/// # Safety
/// A non-null `out` points at `struct_size` writable bytes.
unsafe fn check_out_struct<T>(out: *mut T) -> Result<(), PluginFailure> {
    if out.is_null() || !out.is_aligned() {
        return Err(PluginFailure::invalid_argument(
            "null or misaligned out-struct",
        ));
    }
    // SAFETY: every out-struct starts with `struct_size: u32` (per the caller).
    let size = unsafe { out.cast::<u32>().read() } as usize;
    if size < size_of::<T>() {
        return Err(PluginFailure::invalid_argument(
            "out-struct struct_size too small",
        ));
    }
    Ok(())
}

/// # Safety
/// A non-null `ptr` is valid for reads of `len` bytes for `'b`.
unsafe fn bytes<'b>(ptr: *const u8, len: usize) -> Result<&'b [u8], PluginFailure> {
    if len == 0 {
        return Ok(&[]);
    }
    if ptr.is_null() || len > isize::MAX as usize {
        return Err(PluginFailure::invalid_argument(
            "null buffer or length past isize::MAX",
        ));
    }
    // SAFETY: per the caller; non-null and in range (checked).
    Ok(unsafe { std::slice::from_raw_parts(ptr, len) })
}

/// # Safety
/// A non-null `ptr` is valid for reads and writes of `len` bytes for `'b`, unaliased.
unsafe fn bytes_mut<'b>(ptr: *mut u8, len: usize) -> Result<&'b mut [u8], PluginFailure> {
    if len == 0 {
        return Ok(&mut []);
    }
    if ptr.is_null() || len > isize::MAX as usize {
        return Err(PluginFailure::invalid_argument(
            "null buffer or length past isize::MAX",
        ));
    }
    // SAFETY: per the caller; non-null and in range (checked).
    Ok(unsafe { std::slice::from_raw_parts_mut(ptr, len) })
}

/// # Safety
/// A non-null `ptr` is valid for reads and writes of `count` elements for `'b`, unaliased.
unsafe fn slice_mut<'b, T>(ptr: *mut T, count: usize) -> Result<&'b mut [T], PluginFailure> {
    if count == 0 {
        return Ok(&mut []);
    }
    if ptr.is_null() || !ptr.is_aligned() || count > isize::MAX as usize / size_of::<T>().max(1) {
        return Err(PluginFailure::invalid_argument(
            "null or misaligned array, or count too large",
        ));
    }
    // SAFETY: per the caller; non-null, aligned, in range (checked).
    Ok(unsafe { std::slice::from_raw_parts_mut(ptr, count) })
}

/// # Safety
/// A non-null `ptr` is valid for reads of `count` elements for `'b`.
unsafe fn slice_ref<'b, T>(ptr: *const T, count: usize) -> Result<&'b [T], PluginFailure> {
    if count == 0 {
        return Ok(&[]);
    }
    if ptr.is_null() || !ptr.is_aligned() || count > isize::MAX as usize / size_of::<T>().max(1) {
        return Err(PluginFailure::invalid_argument(
            "null or misaligned array, or count too large",
        ));
    }
    // SAFETY: per the caller; non-null, aligned, in range (checked).
    Ok(unsafe { std::slice::from_raw_parts(ptr, count) })
}

/// # Safety
/// A non-null `ptr` is a NUL-terminated string.
unsafe fn opt_string(
    ptr: *const c_char,
    what: &'static str,
) -> Result<Option<String>, PluginFailure> {
    if ptr.is_null() {
        return Ok(None);
    }
    // SAFETY: per the caller.
    let s = unsafe { CStr::from_ptr(ptr) };
    match s.to_str() {
        Ok(s) => Ok(Some(s.to_owned())),
        Err(_) => Err(PluginFailure::invalid_argument(format!(
            "{what} is not UTF-8"
        ))),
    }
}
