//! A test fixture: `libcyphonic_test_broken_mobility_plugin.so`, a mobility-detector
//! plugin that misbehaves on request, for the host's containment tests
//! (plugins/conformance).
//!
//! Without a fault it reports two fixed addresses (198.51.100.1/24 and 2001:db8::1/64 on
//! interface 1), and `wait` returns 0 on timeout or `wake`. The `fault=NAME` option of
//! `open` picks one misbehaviour per handle, at one of two layers:
//!
//! - In the [`MobilityDetector`] impl, exported through the real export glue: panics
//!   (`panic-open`, `panic-wait`, `panic-snapshot`, `panic-wake`, `panic-close`), which
//!   the glue must turn into the `PANIC` status, and `too-many` (a snapshot of 1 000 000
//!   addresses, which the glue reports as `BUFFER_TOO_SMALL` with that count).
//! - Garbage a careless C plugin could return (`null-handle`, `count-past-cap`,
//!   `huge-count`, `always-too-small`, `garbage-entries`, `unknown-status`), forged by a
//!   shim vtable around the glue's, so the host's wrappers have to catch it themselves.
//!
//! An unknown fault name is refused with `INVALID_ARGUMENT`.

// The shim is a hand-written C vtable: raw pointers and `no_mangle` are its purpose.
#![allow(unsafe_code)]

use std::ffi::{CStr, c_char, c_void};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::ptr::{self, NonNull};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use cyphonic_plugin_abi::{
    AddrEntry, HandleCloseFn, HandleWakeFn, MobilityDetector, MobilityOpenFn, MobilitySnapshotFn,
    MobilityVtable, MobilityWaitFn, PluginFailure, PluginHeader, Status, option_value,
};

cyphonic_plugin_abi::export_plugin_entry!(plugin_header);

/// The header of this fixture: the shim vtable, and the glue's `last_error` (the panic
/// messages are the glue's).
pub fn plugin_header() -> &'static PluginHeader {
    static HEADER: PluginHeader = PluginHeader::mobility_detector(
        c"broken-mobility",
        c"0.1.0",
        &SHIM,
        cyphonic_plugin_abi::__private::LAST_ERROR,
    );
    &HEADER
}

/// How many addresses the `too-many` snapshot claims: far past any sane host's limit.
const TOO_MANY: usize = 1_000_000;

/// The misbehaviour a handle was opened with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    None,
    PanicOpen,
    PanicWait,
    PanicSnapshot,
    PanicWake,
    PanicClose,
    TooMany,
    NullHandle,
    CountPastCap,
    HugeCount,
    AlwaysTooSmall,
    GarbageEntries,
    UnknownStatus,
}

impl Fault {
    fn parse(options: Option<&str>) -> Result<Self, PluginFailure> {
        Ok(
            match options.and_then(|o| option_value(o, "fault")).unwrap_or("") {
                "" => Self::None,
                "panic-open" => Self::PanicOpen,
                "panic-wait" => Self::PanicWait,
                "panic-snapshot" => Self::PanicSnapshot,
                "panic-wake" => Self::PanicWake,
                "panic-close" => Self::PanicClose,
                "too-many" => Self::TooMany,
                "null-handle" => Self::NullHandle,
                "count-past-cap" => Self::CountPastCap,
                "huge-count" => Self::HugeCount,
                "always-too-small" => Self::AlwaysTooSmall,
                "garbage-entries" => Self::GarbageEntries,
                "unknown-status" => Self::UnknownStatus,
                other => {
                    return Err(PluginFailure::invalid_argument(format!(
                        "broken-mobility: unknown fault `{other}`"
                    )));
                }
            },
        )
    }
}

// ---- the detector, exported through the real glue -----------------------------------

struct BrokenMobility {
    fault: Fault,
    woken: Mutex<bool>,
    ready: Condvar,
}

impl BrokenMobility {
    fn panic_if(&self, fault: Fault) {
        if self.fault == fault {
            panic!("broken-mobility: {fault:?} on purpose");
        }
    }
}

impl MobilityDetector for BrokenMobility {
    fn open(options: Option<&str>) -> Result<Self, PluginFailure> {
        quiet_panics();
        let fault = Fault::parse(options)?;
        if fault == Fault::PanicOpen {
            panic!("broken-mobility: PanicOpen on purpose");
        }
        Ok(Self {
            fault,
            woken: Mutex::new(false),
            ready: Condvar::new(),
        })
    }

    fn wait(&self, timeout_ms: i32) -> Result<u32, PluginFailure> {
        self.panic_if(Fault::PanicWait);
        let deadline =
            (timeout_ms >= 0).then(|| Instant::now() + Duration::from_millis(timeout_ms as u64));
        let mut woken = self.woken.lock().unwrap_or_else(|e| e.into_inner());
        while !*woken {
            woken = match deadline {
                None => self.ready.wait(woken).unwrap_or_else(|e| e.into_inner()),
                Some(deadline) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Ok(0);
                    }
                    self.ready
                        .wait_timeout(woken, left)
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
            };
        }
        *woken = false;
        Ok(0)
    }

    fn snapshot(&self) -> Result<Vec<AddrEntry>, PluginFailure> {
        self.panic_if(Fault::PanicSnapshot);
        let v4 = AddrEntry::new(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1)), 24, 0, 1);
        if self.fault == Fault::TooMany {
            return Ok(vec![v4; TOO_MANY]);
        }
        let v6 = AddrEntry::new(
            IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)),
            64,
            0,
            1,
        );
        Ok(vec![v4, v6])
    }

    fn wake(&self) -> Result<(), PluginFailure> {
        self.panic_if(Fault::PanicWake);
        *self.woken.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.ready.notify_all();
        Ok(())
    }
}

impl Drop for BrokenMobility {
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

const GLUE: MobilityVtable = cyphonic_plugin_abi::__private::mobility_vtable::<BrokenMobility>();
const GLUE_OPEN: MobilityOpenFn = some(GLUE.open);
const GLUE_WAIT: MobilityWaitFn = some(GLUE.wait);
const GLUE_SNAPSHOT: MobilitySnapshotFn = some(GLUE.snapshot);
const GLUE_WAKE: HandleWakeFn = some(GLUE.wake);
const GLUE_CLOSE: HandleCloseFn = some(GLUE.close);

const fn some<F: Copy>(f: Option<F>) -> F {
    match f {
        Some(f) => f,
        None => panic!("the glue vtable fills every function"),
    }
}

static SHIM: MobilityVtable = MobilityVtable {
    struct_size: size_of::<MobilityVtable>() as u32,
    reserved: 0,
    open: Some(shim_open),
    wait: Some(shim_wait),
    snapshot: Some(shim_snapshot),
    wake: Some(shim_wake),
    close: Some(shim_close),
};

/// A shim handle: the fault and the glue's handle.
struct Shim {
    fault: Fault,
    inner: NonNull<c_void>,
}

const INVALID_ARGUMENT: i32 = Status::INVALID_ARGUMENT.code();

/// # Safety
/// A non-null `h` is a live handle from [`shim_open`].
unsafe fn shim_ref<'h>(h: *mut c_void) -> Option<&'h Shim> {
    // SAFETY: per the caller, null or a `Box<Shim>` that is still alive.
    unsafe { h.cast::<Shim>().as_ref() }
}

unsafe extern "C" fn shim_open(options: *const c_char, out: *mut *mut c_void) -> i32 {
    // SAFETY: the host passes null or a C string alive for the call.
    let text = (!options.is_null()).then(|| unsafe { CStr::from_ptr(options) });
    // Options the glue refuses leave the fault unknown; the glue reports them.
    let fault = Fault::parse(text.and_then(|t| t.to_str().ok())).unwrap_or(Fault::None);
    let mut inner: *mut c_void = ptr::null_mut();
    // SAFETY: the host's options, forwarded; `inner` is a writable out-pointer.
    let status = unsafe { GLUE_OPEN(options, &mut inner) };
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

unsafe extern "C" fn shim_wait(h: *mut c_void, timeout_ms: i32, out_hint: *mut u32) -> i32 {
    // SAFETY: the host passes a handle from `shim_open`.
    let Some(shim) = (unsafe { shim_ref(h) }) else {
        return INVALID_ARGUMENT;
    };
    // SAFETY: the glue's live handle and the host's out-pointer, forwarded.
    let status = unsafe { GLUE_WAIT(shim.inner.as_ptr(), timeout_ms, out_hint) };
    if status == 0 && shim.fault == Fault::UnknownStatus {
        return 4242;
    }
    status
}

unsafe extern "C" fn shim_snapshot(
    h: *mut c_void,
    out: *mut AddrEntry,
    cap: usize,
    out_count: *mut usize,
) -> i32 {
    // SAFETY: the host passes a handle from `shim_open`.
    let Some(shim) = (unsafe { shim_ref(h) }) else {
        return INVALID_ARGUMENT;
    };
    if out_count.is_null() || !out_count.is_aligned() {
        return INVALID_ARGUMENT;
    }
    let claim = |count: usize, status: Status| {
        // SAFETY: checked non-null and aligned above; the host provides it writable.
        unsafe { out_count.write(count) };
        status.code()
    };
    match shim.fault {
        // Nothing is written to `out` in these three: only the count lies.
        Fault::CountPastCap => return claim(cap.saturating_add(1), Status::OK),
        Fault::HugeCount => return claim(usize::MAX, Status::OK),
        Fault::AlwaysTooSmall => return claim(cap.saturating_add(1), Status::BUFFER_TOO_SMALL),
        _ => {}
    }
    // SAFETY: the glue's live handle and the host's array and out-pointer, forwarded.
    let status = unsafe { GLUE_SNAPSHOT(shim.inner.as_ptr(), out, cap, out_count) };
    if status == 0 && shim.fault == Fault::GarbageEntries {
        // SAFETY: on success the glue wrote `*out_count <= cap` entries into the host's
        // array, which is therefore valid for them.
        let entries = unsafe { std::slice::from_raw_parts_mut(out, (*out_count).min(cap)) };
        for entry in entries {
            entry.family = 0xee;
            entry.prefix_len = 0xff;
        }
    }
    status
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
