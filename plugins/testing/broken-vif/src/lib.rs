//! A test fixture: `libcyphonic_test_broken_vif_plugin.so`, a virtual-interface plugin
//! that misbehaves on request, for the host's containment tests (plugins/conformance).
//!
//! Without a fault it is an in-memory loopback: packets written come back on read, and
//! `wake` ends a read. The `fault=NAME` option of `open` picks one misbehaviour per
//! handle, at one of two layers:
//!
//! - Panics (`panic-open`, `panic-info`, `panic-read`, `panic-write`, `panic-wake`,
//!   `panic-close`) happen in the [`VirtualInterface`] impl, exported through the real
//!   export glue, which must turn them into the `PANIC` status.
//! - Garbage (`null-handle`, `len-past-cap`, `huge-len`, `offset-past-cap`,
//!   `filled-past-count`, `written-past-count`, `info-no-nul`, `info-bad-utf8`,
//!   `info-short`, `unknown-status`) is what a careless C plugin could return; a shim
//!   vtable around the glue's forges it after the glue call succeeded, so the host's
//!   wrappers have to catch it themselves.
//!
//! An unknown fault name is refused with `INVALID_ARGUMENT`.

// The shim is a hand-written C vtable: raw pointers and `no_mangle` are its purpose.
#![allow(unsafe_code)]

use std::collections::VecDeque;
use std::ffi::{CStr, c_void};
use std::ptr::{self, NonNull};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use cyphonic_plugin_abi::{
    HandleCloseFn, HandleWakeFn, Packet, PluginFailure, PluginHeader, Status, VifConfig,
    VifDetails, VifInfo, VifInfoFn, VifOpenFn, VifPollableFdFn, VifReadBatchFn, VifSettings,
    VifVtable, VifWriteBatchFn, VirtualInterface, option_value,
};

cyphonic_plugin_abi::export_plugin_entry!(plugin_header);

/// The header of this fixture: the shim vtable, and the glue's `last_error` (the panic
/// messages are the glue's).
pub fn plugin_header() -> &'static PluginHeader {
    static HEADER: PluginHeader = PluginHeader::virtual_interface(
        c"broken-vif",
        c"0.1.0",
        &SHIM,
        cyphonic_plugin_abi::__private::LAST_ERROR,
    );
    &HEADER
}

/// The misbehaviour a handle was opened with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    None,
    PanicOpen,
    PanicInfo,
    PanicRead,
    PanicWrite,
    PanicWake,
    PanicClose,
    NullHandle,
    LenPastCap,
    HugeLen,
    OffsetPastCap,
    FilledPastCount,
    WrittenPastCount,
    InfoNoNul,
    InfoBadUtf8,
    InfoShort,
    UnknownStatus,
}

impl Fault {
    fn parse(options: Option<&str>) -> Result<Self, PluginFailure> {
        Ok(
            match options.and_then(|o| option_value(o, "fault")).unwrap_or("") {
                "" => Self::None,
                "panic-open" => Self::PanicOpen,
                "panic-info" => Self::PanicInfo,
                "panic-read" => Self::PanicRead,
                "panic-write" => Self::PanicWrite,
                "panic-wake" => Self::PanicWake,
                "panic-close" => Self::PanicClose,
                "null-handle" => Self::NullHandle,
                "len-past-cap" => Self::LenPastCap,
                "huge-len" => Self::HugeLen,
                "offset-past-cap" => Self::OffsetPastCap,
                "filled-past-count" => Self::FilledPastCount,
                "written-past-count" => Self::WrittenPastCount,
                "info-no-nul" => Self::InfoNoNul,
                "info-bad-utf8" => Self::InfoBadUtf8,
                "info-short" => Self::InfoShort,
                "unknown-status" => Self::UnknownStatus,
                other => {
                    return Err(PluginFailure::invalid_argument(format!(
                        "broken-vif: unknown fault `{other}`"
                    )));
                }
            },
        )
    }
}

// ---- the interface, exported through the real glue ----------------------------------

/// The in-memory loopback, panicking where its fault says.
struct BrokenVif {
    fault: Fault,
    mtu: u32,
    state: Mutex<State>,
    ready: Condvar,
}

#[derive(Default)]
struct State {
    queue: VecDeque<Vec<u8>>,
    woken: bool,
}

impl BrokenVif {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn panic_if(&self, fault: Fault) {
        if self.fault == fault {
            panic!("broken-vif: {fault:?} on purpose");
        }
    }
}

impl VirtualInterface for BrokenVif {
    fn open(settings: &VifSettings) -> Result<Self, PluginFailure> {
        quiet_panics();
        let fault = Fault::parse(settings.options.as_deref())?;
        if fault == Fault::PanicOpen {
            panic!("broken-vif: PanicOpen on purpose");
        }
        Ok(Self {
            fault,
            mtu: settings.mtu,
            state: Mutex::default(),
            ready: Condvar::new(),
        })
    }

    fn info(&self) -> Result<VifDetails, PluginFailure> {
        self.panic_if(Fault::PanicInfo);
        Ok(VifDetails {
            mtu: self.mtu,
            ifindex: 1,
            ifname: "broken0".to_owned(),
        })
    }

    fn read_batch(&self, pkts: &mut [Packet<'_>], timeout_ms: i32) -> Result<usize, PluginFailure> {
        self.panic_if(Fault::PanicRead);
        let deadline =
            (timeout_ms >= 0).then(|| Instant::now() + Duration::from_millis(timeout_ms as u64));
        let mut state = self.state();
        while state.queue.is_empty() && !state.woken {
            state = match deadline {
                None => self.ready.wait(state).unwrap_or_else(|e| e.into_inner()),
                Some(deadline) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Ok(0);
                    }
                    self.ready
                        .wait_timeout(state, left)
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
            };
        }
        if std::mem::take(&mut state.woken) {
            return Ok(0);
        }
        let mut filled = 0;
        for pkt in pkts.iter_mut() {
            let Some(data) = state.queue.pop_front() else {
                break;
            };
            let n = data.len().min(pkt.room());
            pkt.space_mut()[..n].copy_from_slice(&data[..n]);
            pkt.set_len(n)?;
            filled += 1;
        }
        Ok(filled)
    }

    fn write_batch(&self, pkts: &[Packet<'_>]) -> Result<usize, PluginFailure> {
        self.panic_if(Fault::PanicWrite);
        let mut state = self.state();
        state.queue.extend(pkts.iter().map(|p| p.data().to_vec()));
        self.ready.notify_all();
        Ok(pkts.len())
    }

    fn wake(&self) -> Result<(), PluginFailure> {
        self.panic_if(Fault::PanicWake);
        self.state().woken = true;
        self.ready.notify_all();
        Ok(())
    }
}

impl Drop for BrokenVif {
    fn drop(&mut self) {
        self.panic_if(Fault::PanicClose);
    }
}

/// Silences this library's panic hook (its own copy of std's, not the host's): the
/// panics are on purpose, and the glue reports each as `panicked: <message>` anyway.
fn quiet_panics() {
    static QUIET: std::sync::Once = std::sync::Once::new();
    QUIET.call_once(|| std::panic::set_hook(Box::new(|_| {})));
}

// ---- the shim: garbage a C plugin could return ---------------------------------------

const GLUE: VifVtable = cyphonic_plugin_abi::__private::vif_vtable::<BrokenVif>();
const GLUE_OPEN: VifOpenFn = some(GLUE.open);
const GLUE_INFO: VifInfoFn = some(GLUE.info);
const GLUE_READ: VifReadBatchFn = some(GLUE.read_batch);
const GLUE_WRITE: VifWriteBatchFn = some(GLUE.write_batch);
const GLUE_POLLABLE_FD: VifPollableFdFn = some(GLUE.pollable_fd);
const GLUE_WAKE: HandleWakeFn = some(GLUE.wake);
const GLUE_CLOSE: HandleCloseFn = some(GLUE.close);

const fn some<F: Copy>(f: Option<F>) -> F {
    match f {
        Some(f) => f,
        None => panic!("the glue vtable fills every function"),
    }
}

static SHIM: VifVtable = VifVtable {
    struct_size: size_of::<VifVtable>() as u32,
    reserved: 0,
    open: Some(shim_open),
    info: Some(shim_info),
    read_batch: Some(shim_read_batch),
    write_batch: Some(shim_write_batch),
    pollable_fd: Some(shim_pollable_fd),
    wake: Some(shim_wake),
    close: Some(shim_close),
};

/// A shim handle: the fault and the glue's handle.
struct Shim {
    fault: Fault,
    inner: NonNull<c_void>,
}

/// The layout of a `cyphonic_packet`, whose Rust fields are private.
#[repr(C)]
struct RawPacket {
    buf: *mut u8,
    cap: usize,
    offset: usize,
    len: usize,
}

const _: () = assert!(size_of::<RawPacket>() == size_of::<Packet<'static>>());

const INVALID_ARGUMENT: i32 = Status::INVALID_ARGUMENT.code();

/// # Safety
/// A non-null `h` is a live handle from [`shim_open`].
unsafe fn shim_ref<'h>(h: *mut c_void) -> Option<&'h Shim> {
    // SAFETY: per the caller, null or a `Box<Shim>` that is still alive.
    unsafe { h.cast::<Shim>().as_ref() }
}

unsafe extern "C" fn shim_open(cfg: *const VifConfig, out: *mut *mut c_void) -> i32 {
    // A config the glue refuses leaves the fault unknown; the glue reports it.
    let fault = if cfg.is_null() || !cfg.is_aligned() {
        Fault::None
    } else {
        // SAFETY: the host passes a live config whose `options` is null or a C string.
        let options = unsafe { (*cfg).options };
        // SAFETY: as above.
        let text = (!options.is_null()).then(|| unsafe { CStr::from_ptr(options) });
        Fault::parse(text.and_then(|t| t.to_str().ok())).unwrap_or(Fault::None)
    };
    let mut inner: *mut c_void = ptr::null_mut();
    // SAFETY: the host's config, forwarded; `inner` is a writable out-pointer.
    let status = unsafe { GLUE_OPEN(cfg, &mut inner) };
    if out.is_null() || !out.is_aligned() {
        if let Some(inner) = NonNull::new(inner) {
            // SAFETY: the glue's handle, closed once and never used again.
            unsafe { GLUE_CLOSE(inner.as_ptr()) };
        }
        return INVALID_ARGUMENT;
    }
    let handle = match NonNull::new(inner) {
        Some(inner) if status == 0 => {
            if fault == Fault::NullHandle {
                // SAFETY: the glue's handle, closed once and never used again.
                unsafe { GLUE_CLOSE(inner.as_ptr()) };
                ptr::null_mut()
            } else {
                Box::into_raw(Box::new(Shim { fault, inner })).cast()
            }
        }
        _ => ptr::null_mut(),
    };
    // SAFETY: checked non-null and aligned above; the host provides it writable.
    unsafe { out.write(handle) };
    status
}

unsafe extern "C" fn shim_info(h: *mut c_void, out: *mut VifInfo) -> i32 {
    // SAFETY: the host passes a handle from `shim_open`.
    let Some(shim) = (unsafe { shim_ref(h) }) else {
        return INVALID_ARGUMENT;
    };
    // SAFETY: the glue's live handle and the host's out-struct, forwarded.
    let status = unsafe { GLUE_INFO(shim.inner.as_ptr(), out) };
    if status != 0 {
        return status;
    }
    // SAFETY: the glue wrote a whole `VifInfo` there, so it is valid and writable.
    let info = unsafe { &mut *out };
    match shim.fault {
        Fault::InfoNoNul => info.ifname = [b'x'; cyphonic_plugin_abi::VIF_IFNAME_LEN],
        Fault::InfoBadUtf8 => info.ifname[..3].copy_from_slice(&[0xff, 0xfe, 0]),
        Fault::InfoShort => info.struct_size = 8,
        _ => {}
    }
    0
}

unsafe extern "C" fn shim_read_batch(
    h: *mut c_void,
    pkts: *mut Packet<'_>,
    count: usize,
    timeout_ms: i32,
    out_filled: *mut usize,
) -> i32 {
    // SAFETY: the host passes a handle from `shim_open`.
    let Some(shim) = (unsafe { shim_ref(h) }) else {
        return INVALID_ARGUMENT;
    };
    // SAFETY: the glue's live handle and the host's slots and out-pointer, forwarded.
    let status = unsafe { GLUE_READ(shim.inner.as_ptr(), pkts, count, timeout_ms, out_filled) };
    if status != 0 {
        return status;
    }
    // SAFETY: the glue succeeded, so `out_filled` is a valid out-pointer it wrote.
    let filled = unsafe { &mut *out_filled };
    // SAFETY: the glue succeeded, so `pkts[..count]` are the host's writable slots;
    // `RawPacket` has their layout.
    let slots = unsafe { std::slice::from_raw_parts_mut(pkts.cast::<RawPacket>(), count) };
    let claimed = &mut slots[..(*filled).min(count)];
    match shim.fault {
        Fault::LenPastCap => claimed
            .iter_mut()
            .for_each(|p| p.len = p.cap - p.offset + 1),
        Fault::HugeLen => claimed.iter_mut().for_each(|p| p.len = usize::MAX),
        Fault::OffsetPastCap => claimed
            .iter_mut()
            .for_each(|p| p.offset = p.cap.saturating_add(7)),
        Fault::FilledPastCount => *filled = count + 3,
        Fault::UnknownStatus => return 4242,
        _ => {}
    }
    0
}

unsafe extern "C" fn shim_write_batch(
    h: *mut c_void,
    pkts: *const Packet<'_>,
    count: usize,
    out_written: *mut usize,
) -> i32 {
    // SAFETY: the host passes a handle from `shim_open`.
    let Some(shim) = (unsafe { shim_ref(h) }) else {
        return INVALID_ARGUMENT;
    };
    // SAFETY: the glue's live handle and the host's packets and out-pointer, forwarded.
    let status = unsafe { GLUE_WRITE(shim.inner.as_ptr(), pkts, count, out_written) };
    if status == 0 && shim.fault == Fault::WrittenPastCount {
        // SAFETY: the glue succeeded, so `out_written` is a valid out-pointer.
        unsafe { out_written.write(count + 1) };
    }
    status
}

unsafe extern "C" fn shim_pollable_fd(h: *mut c_void, out_fd: *mut i64) -> i32 {
    // SAFETY: the host passes a handle from `shim_open`.
    let Some(shim) = (unsafe { shim_ref(h) }) else {
        return INVALID_ARGUMENT;
    };
    // SAFETY: the glue's live handle and the host's out-pointer, forwarded.
    unsafe { GLUE_POLLABLE_FD(shim.inner.as_ptr(), out_fd) }
}

unsafe extern "C" fn shim_wake(h: *mut c_void) -> i32 {
    // SAFETY: the host passes a handle from `shim_open`.
    let Some(shim) = (unsafe { shim_ref(h) }) else {
        return INVALID_ARGUMENT;
    };
    // SAFETY: the glue's live handle.
    unsafe { GLUE_WAKE(shim.inner.as_ptr()) }
}

unsafe extern "C" fn shim_close(h: *mut c_void) {
    if h.is_null() {
        return;
    }
    // SAFETY: a non-null handle is a `Box<Shim>` from `shim_open`, closed once with no
    // call in flight (ABI contract).
    let shim = unsafe { Box::from_raw(h.cast::<Shim>()) };
    // SAFETY: the glue's handle, closed once; the glue catches a panic in its drop.
    unsafe { GLUE_CLOSE(shim.inner.as_ptr()) };
}
