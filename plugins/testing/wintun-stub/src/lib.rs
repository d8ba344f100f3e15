//! TEST-ONLY: a stand-in `wintun.dll` for running the wintun plugin's error paths and
//! data path under Wine, which has no kernel drivers. It must never ship: an installed
//! copy makes every adapter creation fail, and its log line says so.
//!
//! It exports every function the `wintun` crate 0.5.1 resolves when it loads the library
//! (it resolves all 14 at once), plus `WintunStubCounts` for the tests. What the adapter
//! functions do depends on the requested adapter name:
//!
//! | name | `WintunOpenAdapter` | `WintunCreateAdapter` | `WintunStartSession` |
//! |---|---|---|---|
//! | `stub-denied` | `ERROR_NOT_FOUND` | `ERROR_ACCESS_DENIED` | — |
//! | `stub-present` | a handle to an adapter with no interface behind its LUID | `ERROR_GEN_FAILURE` | — |
//! | `stub-session-fails` | `ERROR_NOT_FOUND` | a handle | `ERROR_GEN_FAILURE` |
//! | `stub-ring` | `ERROR_NOT_FOUND` | a handle | an in-memory loopback ring |
//! | any other | `ERROR_NOT_FOUND` (no adapter) | `ERROR_GEN_FAILURE`, as with no driver | — |
//!
//! Stub adapters have LUID [`STUB_LUID`], which names no interface, so IP Helper calls
//! on it fail. `WintunGetRunningDriverVersion` fails with `ERROR_FILE_NOT_FOUND` (no
//! driver loaded) and `WintunDeleteDriver` with `ERROR_FILE_NOT_FOUND` too. Failures set
//! the thread's last error with `SetLastError`, like the real library.
//!
//! The loopback ring of `stub-ring`: a sent packet is queued for receiving (the system
//! "answers" with the same bytes) and the read event is signalled. Allocated, queued and
//! not-yet-released packets together may use at most the session capacity; beyond it
//! `WintunAllocateSendPacket` fails with `ERROR_BUFFER_OVERFLOW`, like a full ring.

#![cfg(windows)]
// Raw C exports are the purpose of this crate.
#![allow(unsafe_code)]
// The export names are wintun's.
#![allow(non_snake_case)]

use std::collections::VecDeque;
use std::ffi::{c_int, c_void};
use std::ptr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use windows_sys::Win32::Foundation::{
    CloseHandle, ERROR_ACCESS_DENIED, ERROR_BUFFER_OVERFLOW, ERROR_FILE_NOT_FOUND,
    ERROR_GEN_FAILURE, ERROR_INVALID_PARAMETER, ERROR_NO_MORE_ITEMS, ERROR_NOT_FOUND, HANDLE,
    SetLastError,
};
use windows_sys::Win32::System::Threading::{CreateEventW, SetEvent};

/// The LUID of every stub adapter: interface type 0xff, index 0xffffff, which no real
/// interface has.
pub const STUB_LUID: u64 = 0x00ff_ffff_ff00_0000;

/// What the stub was asked to do, for the tests (`WintunStubCounts`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StubCounts {
    pub open_calls: u64,
    pub create_calls: u64,
    /// Adapter handles handed out (by open or create).
    pub adapters_out: u64,
    pub adapters_closed: u64,
    pub sessions_started: u64,
    pub sessions_ended: u64,
    /// Bytes still held by loopback rings (sent and not yet released).
    pub ring_bytes_in_use: u64,
}

static OPEN_CALLS: AtomicU64 = AtomicU64::new(0);
static CREATE_CALLS: AtomicU64 = AtomicU64::new(0);
static ADAPTERS_OUT: AtomicU64 = AtomicU64::new(0);
static ADAPTERS_CLOSED: AtomicU64 = AtomicU64::new(0);
static SESSIONS_STARTED: AtomicU64 = AtomicU64::new(0);
static SESSIONS_ENDED: AtomicU64 = AtomicU64::new(0);
static RING_BYTES: AtomicUsize = AtomicUsize::new(0);

type Logger = unsafe extern "system" fn(level: c_int, timestamp: u64, message: *const u16);
static LOGGER: Mutex<Option<Logger>> = Mutex::new(None);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Denied,
    Present,
    SessionFails,
    Ring,
    NoDriver,
}

impl Mode {
    /// # Safety
    /// `name` is null or a NUL-terminated UTF-16 string.
    unsafe fn of(name: *const u16) -> Mode {
        // SAFETY: the caller's contract.
        match unsafe { wide_to_string(name) }.as_str() {
            "stub-denied" => Mode::Denied,
            "stub-present" => Mode::Present,
            "stub-session-fails" => Mode::SessionFails,
            "stub-ring" => Mode::Ring,
            _ => Mode::NoDriver,
        }
    }
}

struct StubAdapter {
    mode: Mode,
}

struct StubSession {
    capacity: usize,
    read_event: HANDLE,
    ring: Mutex<Ring>,
}

#[derive(Default)]
struct Ring {
    used: usize,
    allocated: Vec<Box<[u8]>>,
    queued: VecDeque<Box<[u8]>>,
    received: Vec<Box<[u8]>>,
}

impl StubSession {
    fn ring(&self) -> MutexGuard<'_, Ring> {
        self.ring.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Fills `out` with the counters.
///
/// # Safety
/// `out` is null or writable for one `StubCounts`.
#[unsafe(no_mangle)]
pub unsafe extern "system" fn WintunStubCounts(out: *mut StubCounts) {
    let counts = StubCounts {
        open_calls: OPEN_CALLS.load(Ordering::SeqCst),
        create_calls: CREATE_CALLS.load(Ordering::SeqCst),
        adapters_out: ADAPTERS_OUT.load(Ordering::SeqCst),
        adapters_closed: ADAPTERS_CLOSED.load(Ordering::SeqCst),
        sessions_started: SESSIONS_STARTED.load(Ordering::SeqCst),
        sessions_ended: SESSIONS_ENDED.load(Ordering::SeqCst),
        ring_bytes_in_use: RING_BYTES.load(Ordering::SeqCst) as u64,
    };
    if !out.is_null() {
        // SAFETY: the caller's contract.
        unsafe { out.write(counts) };
    }
}

/// # Safety
/// `name` and `tunnel_type` are NUL-terminated UTF-16 strings (`guid` is not read).
#[unsafe(no_mangle)]
pub unsafe extern "system" fn WintunCreateAdapter(
    name: *const u16,
    _tunnel_type: *const u16,
    _guid: *const c_void,
) -> *mut c_void {
    CREATE_CALLS.fetch_add(1, Ordering::SeqCst);
    // SAFETY: the caller's contract.
    match unsafe { Mode::of(name) } {
        Mode::Denied => fail(ERROR_ACCESS_DENIED),
        mode @ (Mode::SessionFails | Mode::Ring) => adapter(mode),
        Mode::Present | Mode::NoDriver => {
            log(
                2,
                "this is the TEST-ONLY stub wintun.dll (plugins/testing/wintun-stub): \
                 it has no driver; install the signed wintun.dll",
            );
            fail(ERROR_GEN_FAILURE)
        }
    }
}

/// # Safety
/// `name` is a NUL-terminated UTF-16 string.
#[unsafe(no_mangle)]
pub unsafe extern "system" fn WintunOpenAdapter(name: *const u16) -> *mut c_void {
    OPEN_CALLS.fetch_add(1, Ordering::SeqCst);
    // SAFETY: the caller's contract.
    match unsafe { Mode::of(name) } {
        Mode::Present => adapter(Mode::Present),
        _ => fail(ERROR_NOT_FOUND),
    }
}

/// # Safety
/// `adapter` is null or a live handle from this library, closed once.
#[unsafe(no_mangle)]
pub unsafe extern "system" fn WintunCloseAdapter(adapter: *mut c_void) {
    if adapter.is_null() {
        return;
    }
    ADAPTERS_CLOSED.fetch_add(1, Ordering::SeqCst);
    // SAFETY: made by `Box::into_raw` in `adapter`, freed once (caller's contract).
    drop(unsafe { Box::from_raw(adapter.cast::<StubAdapter>()) });
}

/// # Safety
/// `adapter` is a live handle from this library; `luid` is writable for 8 bytes.
#[unsafe(no_mangle)]
pub unsafe extern "system" fn WintunGetAdapterLUID(_adapter: *mut c_void, luid: *mut u64) {
    if !luid.is_null() {
        // SAFETY: the caller's contract.
        unsafe { luid.write_unaligned(STUB_LUID) };
    }
}

#[unsafe(no_mangle)]
pub extern "system" fn WintunGetRunningDriverVersion() -> u32 {
    set_last_error(ERROR_FILE_NOT_FOUND);
    0
}

#[unsafe(no_mangle)]
pub extern "system" fn WintunDeleteDriver() -> i32 {
    set_last_error(ERROR_FILE_NOT_FOUND);
    0
}

#[unsafe(no_mangle)]
pub extern "system" fn WintunSetLogger(logger: Option<Logger>) {
    *LOGGER.lock().unwrap_or_else(PoisonError::into_inner) = logger;
}

/// # Safety
/// `adapter` is a live handle from this library.
#[unsafe(no_mangle)]
pub unsafe extern "system" fn WintunStartSession(
    adapter: *mut c_void,
    capacity: u32,
) -> *mut c_void {
    if adapter.is_null() {
        return fail(ERROR_INVALID_PARAMETER);
    }
    // SAFETY: the caller's contract: a live `StubAdapter`.
    let mode = unsafe { (*adapter.cast::<StubAdapter>()).mode };
    if mode != Mode::Ring {
        return fail(ERROR_GEN_FAILURE);
    }
    // SAFETY: no attributes, no name: a private auto-reset event, like wintun's.
    let read_event = unsafe { CreateEventW(ptr::null(), 0, 0, ptr::null()) };
    if read_event.is_null() {
        return ptr::null_mut();
    }
    SESSIONS_STARTED.fetch_add(1, Ordering::SeqCst);
    Box::into_raw(Box::new(StubSession {
        capacity: capacity as usize,
        read_event,
        ring: Mutex::new(Ring::default()),
    }))
    .cast()
}

/// # Safety
/// `session` is null or a live session from this library, ended once, with no packet
/// still in use.
#[unsafe(no_mangle)]
pub unsafe extern "system" fn WintunEndSession(session: *mut c_void) {
    if session.is_null() {
        return;
    }
    // SAFETY: made by `Box::into_raw` in `WintunStartSession`, freed once.
    let session = unsafe { Box::from_raw(session.cast::<StubSession>()) };
    RING_BYTES.fetch_sub(session.ring().used, Ordering::SeqCst);
    // SAFETY: the event is owned by the session and closed once.
    unsafe { CloseHandle(session.read_event) };
    SESSIONS_ENDED.fetch_add(1, Ordering::SeqCst);
}

/// # Safety
/// `session` is a live session from this library.
#[unsafe(no_mangle)]
pub unsafe extern "system" fn WintunGetReadWaitEvent(session: *mut c_void) -> HANDLE {
    // SAFETY: the caller's contract.
    match unsafe { session.cast::<StubSession>().as_ref() } {
        Some(session) => session.read_event,
        None => ptr::null_mut(),
    }
}

/// # Safety
/// `session` is a live session from this library; `size` is writable.
#[unsafe(no_mangle)]
pub unsafe extern "system" fn WintunReceivePacket(session: *mut c_void, size: *mut u32) -> *mut u8 {
    // SAFETY: the caller's contract.
    let Some(session) = (unsafe { session.cast::<StubSession>().as_ref() }) else {
        return fail(ERROR_INVALID_PARAMETER).cast();
    };
    let mut ring = session.ring();
    let Some(mut packet) = ring.queued.pop_front() else {
        drop(ring);
        return fail(ERROR_NO_MORE_ITEMS).cast();
    };
    let p = packet.as_mut_ptr();
    if !size.is_null() {
        // SAFETY: the caller's contract.
        unsafe { size.write(packet.len() as u32) };
    }
    ring.received.push(packet);
    p
}

/// # Safety
/// `session` is a live session; `packet` came from `WintunReceivePacket` on it.
#[unsafe(no_mangle)]
pub unsafe extern "system" fn WintunReleaseReceivePacket(session: *mut c_void, packet: *const u8) {
    // SAFETY: the caller's contract.
    if let Some(session) = unsafe { session.cast::<StubSession>().as_ref() } {
        let mut ring = session.ring();
        if let Some(i) = ring
            .received
            .iter()
            .position(|b| ptr::eq(b.as_ptr(), packet))
        {
            let freed = ring.received.swap_remove(i).len();
            ring.used -= freed;
            RING_BYTES.fetch_sub(freed, Ordering::SeqCst);
        }
    }
}

/// # Safety
/// `session` is a live session from this library.
#[unsafe(no_mangle)]
pub unsafe extern "system" fn WintunAllocateSendPacket(session: *mut c_void, size: u32) -> *mut u8 {
    // SAFETY: the caller's contract.
    let Some(session) = (unsafe { session.cast::<StubSession>().as_ref() }) else {
        return fail(ERROR_INVALID_PARAMETER).cast();
    };
    let size = size as usize;
    if size == 0 || size > 0xFFFF {
        return fail(ERROR_INVALID_PARAMETER).cast();
    }
    let mut ring = session.ring();
    if ring.used + size > session.capacity {
        drop(ring);
        return fail(ERROR_BUFFER_OVERFLOW).cast();
    }
    let mut packet = vec![0u8; size].into_boxed_slice();
    let p = packet.as_mut_ptr();
    ring.allocated.push(packet);
    ring.used += size;
    RING_BYTES.fetch_add(size, Ordering::SeqCst);
    p
}

/// # Safety
/// `session` is a live session; `packet` came from `WintunAllocateSendPacket` on it.
#[unsafe(no_mangle)]
pub unsafe extern "system" fn WintunSendPacket(session: *mut c_void, packet: *const u8) {
    // SAFETY: the caller's contract.
    if let Some(session) = unsafe { session.cast::<StubSession>().as_ref() } {
        let mut ring = session.ring();
        if let Some(i) = ring
            .allocated
            .iter()
            .position(|b| ptr::eq(b.as_ptr(), packet))
        {
            let sent = ring.allocated.remove(i);
            ring.queued.push_back(sent);
            drop(ring);
            // SAFETY: the event lives as long as the session.
            unsafe { SetEvent(session.read_event) };
        }
    }
}

fn adapter(mode: Mode) -> *mut c_void {
    ADAPTERS_OUT.fetch_add(1, Ordering::SeqCst);
    Box::into_raw(Box::new(StubAdapter { mode })).cast()
}

/// Sets the last error and returns null, as a failed wintun call does.
fn fail(code: u32) -> *mut c_void {
    set_last_error(code);
    ptr::null_mut()
}

fn set_last_error(code: u32) {
    // SAFETY: sets a thread-local value; no preconditions.
    unsafe { SetLastError(code) };
}

/// Calls the logger the library user set, if any, with `message` NUL-terminated.
fn log(level: c_int, message: &str) {
    let logger = *LOGGER.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(logger) = logger {
        let wide: Vec<u16> = message.encode_utf16().chain([0]).collect();
        // SAFETY: the logger was given by the library user for exactly this call shape;
        // the message is NUL-terminated and outlives the call.
        unsafe { logger(level, 0, wide.as_ptr()) };
    }
}

/// # Safety
/// `s` is null or a NUL-terminated UTF-16 string.
unsafe fn wide_to_string(s: *const u16) -> String {
    if s.is_null() {
        return String::new();
    }
    let mut len = 0;
    // SAFETY: the caller's contract; reading stops at the NUL (or a sane bound).
    while len < 1024 && unsafe { *s.add(len) } != 0 {
        len += 1;
    }
    // SAFETY: the first `len` units were just read.
    String::from_utf16_lossy(unsafe { std::slice::from_raw_parts(s, len) })
}
