//! wintun.dll: loading the signed file from this module's own directory (never from the
//! DLL search path), and thin owners of its adapter and session handles.
//!
//! The `wintun` crate loads the library and resolves its functions; the adapter and
//! session calls then go through the raw function table it resolved (`Wintun` derefs to
//! it) rather than through its `Adapter`/`Session` wrappers, because those drop the Win32
//! error of `WintunCreateAdapter`/`WintunOpenAdapter` (a bare "Failed to create adapter"
//! string: the operator could not be told what to do), look the adapter up again by its
//! alias after creating it (which fails, leaking the handle, when Windows renamed it),
//! and cannot wait on a second event next to the ring's.

use std::ffi::{OsStr, c_int, c_void};
use std::os::windows::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::ptr::{self, NonNull};
use std::sync::{Mutex, PoisonError};

use cyphonic_plugin_abi::{PluginFailure, Status};
use libloading::os::windows::{
    LOAD_LIBRARY_SEARCH_DLL_LOAD_DIR, LOAD_LIBRARY_SEARCH_SYSTEM32, Library,
};
use windows_sys::Win32::Foundation::HANDLE;
use windows_sys::Win32::NetworkManagement::Ndis::NET_LUID_LH;
use windows_sys::core::GUID;
use wintun::Wintun;

use crate::config::{MAX_RING_CAPACITY, MIN_RING_CAPACITY};
use crate::errors::{Step, code, win32_failure};
use crate::sys::{last_error, win32_text};

const _: () = assert!(MIN_RING_CAPACITY == wintun::MIN_RING_CAPACITY);
const _: () = assert!(MAX_RING_CAPACITY == wintun::MAX_RING_CAPACITY);

/// The file this plugin loads, from its own directory.
pub(crate) const DLL_NAME: &str = "wintun.dll";

/// Every function the `wintun` crate resolves when it loads the library (all at once:
/// one missing export fails the load). Checked one by one first, to name the missing one.
pub(crate) const FUNCTIONS: [&str; 14] = [
    "WintunCreateAdapter",
    "WintunCloseAdapter",
    "WintunOpenAdapter",
    "WintunGetAdapterLUID",
    "WintunGetRunningDriverVersion",
    "WintunDeleteDriver",
    "WintunSetLogger",
    "WintunStartSession",
    "WintunEndSession",
    "WintunGetReadWaitEvent",
    "WintunReceivePacket",
    "WintunReleaseReceivePacket",
    "WintunAllocateSendPacket",
    "WintunSendPacket",
];

/// Every wintun.dll this module loaded, by path, kept for the life of the process: its
/// create, open and close calls queue an orphaned-adapter sweep on the thread pool that
/// runs after they return, and unloading the library under it crashes the process
/// (seen under Wine). Loading the same path again reuses the entry.
static LOADED: Mutex<Vec<(PathBuf, Wintun)>> = Mutex::new(Vec::new());

/// The loaded wintun.dll.
pub(crate) struct Driver {
    wintun: Wintun,
    path: PathBuf,
}

impl std::fmt::Debug for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver").field("path", &self.path).finish()
    }
}

impl Driver {
    /// Loads `dir\wintun.dll`. Its own imports resolve from its directory and System32
    /// only, so a planted DLL elsewhere on the search path is never picked up.
    pub(crate) fn load_from(dir: &Path) -> Result<Self, PluginFailure> {
        let path = dir.join(DLL_NAME);
        if !path.is_file() {
            return Err(PluginFailure::new(
                Status::NOT_FOUND,
                format!(
                    "{DLL_NAME} not found in {} (the directory of this plugin; it is loaded \
                     from nowhere else): reinstall cyphonic, or copy wintun.dll for this \
                     architecture (bin\\amd64\\wintun.dll) from the wintun package \
                     (https://www.wintun.net) next to cyphonic_wintun.dll",
                    dir.display()
                ),
            ));
        }
        let mut loaded = LOADED.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((_, wintun)) = loaded.iter().find(|(p, _)| *p == path) {
            return Ok(Self {
                wintun: wintun.clone(),
                path,
            });
        }
        let load_failure = |context: String, err: &libloading::Error| {
            let code = os_code(err).unwrap_or(code::ERROR_PROC_NOT_FOUND);
            win32_failure(Step::LoadDll, &context, code, &win32_text(code))
        };
        // SAFETY: loading runs wintun.dll's initialisers. It is the file the operator
        // installed next to this plugin (trusted like the plugin itself), and the search
        // flags keep its dependencies to its own directory and System32.
        let library = unsafe {
            Library::load_with_flags(
                &path,
                LOAD_LIBRARY_SEARCH_DLL_LOAD_DIR | LOAD_LIBRARY_SEARCH_SYSTEM32,
            )
        }
        .map_err(|e| load_failure(format!("loading {}", path.display()), &e))?;
        for name in FUNCTIONS {
            let symbol = format!("{name}\0");
            // SAFETY: only probes that the export exists; the pointer is not used.
            if let Err(e) = unsafe { library.get::<*const c_void>(symbol.as_bytes()) } {
                return Err(load_failure(
                    format!("{} does not export {name}", path.display()),
                    &e,
                ));
            }
        }
        // SAFETY: every export exists (checked above) and, in a wintun.dll, has the
        // signature the crate's table declares (wintun.h of wintun 0.14).
        let wintun = unsafe { wintun::load_from_library(library) }.map_err(|e| {
            PluginFailure::new(Status::IO, format!("loading {}: {e}", path.display()))
        })?;
        // wintun's callback type is `extern "stdcall"`, which Rust no longer accepts for
        // definitions on x86-64. `extern "system"` is that very ABI on every Windows
        // target (stdcall on x86, the C ABI elsewhere), so only the type is converted; the
        // callback type itself lives in a private module of the crate, hence inferred.
        #[allow(clippy::missing_transmute_annotations)]
        // SAFETY: same argument and return types, same calling convention (above).
        let sink = unsafe { std::mem::transmute::<LogSink, _>(log_sink) };
        wintun::set_logger(&wintun, Some(sink));
        loaded.push((path.clone(), wintun.clone()));
        Ok(Self { wintun, path })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The running driver's version, or the Win32 error (`ERROR_FILE_NOT_FOUND`: no
    /// driver loaded yet, which is normal before the first adapter exists).
    pub(crate) fn running_version(&self) -> Result<(u16, u16), u32> {
        // SAFETY: no arguments; the function table is live while `self.wintun` is.
        let v = unsafe { self.wintun.WintunGetRunningDriverVersion() };
        if v == 0 {
            return Err(last_error());
        }
        Ok(((v >> 16) as u16, v as u16))
    }

    /// Opens the present adapter named `name`; `ERROR_NOT_FOUND` when there is none.
    /// Closing it releases the handle only: the adapter stays.
    pub(crate) fn open_adapter(&self, name: &str) -> Result<Adapter, u32> {
        let name = wide(name);
        // SAFETY: `name` is NUL-terminated UTF-16 and outlives the call.
        let handle = unsafe { self.wintun.WintunOpenAdapter(name.as_ptr()) };
        self.adapter(handle.cast())
    }

    /// Creates an adapter (installing or updating the driver if needed); closing it
    /// removes the adapter. Needs an elevated process.
    pub(crate) fn create_adapter(
        &self,
        name: &str,
        tunnel_type: &str,
        guid: u128,
    ) -> Result<Adapter, u32> {
        let name = wide(name);
        let tunnel_type = wide(tunnel_type);
        let guid = GUID::from_u128(guid);
        // SAFETY: both strings are NUL-terminated UTF-16 and `guid` a GUID (the crate's
        // bindgen GUID has the same layout as windows-sys'), all outliving the call.
        let handle = unsafe {
            self.wintun.WintunCreateAdapter(
                name.as_ptr(),
                tunnel_type.as_ptr(),
                (&raw const guid).cast(),
            )
        };
        self.adapter(handle.cast())
    }

    fn adapter(&self, handle: *mut c_void) -> Result<Adapter, u32> {
        // Read before anything else can overwrite it.
        let code = last_error();
        match NonNull::new(handle) {
            Some(handle) => Ok(Adapter {
                handle,
                wintun: self.wintun.clone(),
            }),
            None => Err(nonzero(code)),
        }
    }
}

/// An adapter handle; dropping it closes the handle, which removes the adapter if this
/// process created it.
pub(crate) struct Adapter {
    handle: NonNull<c_void>,
    wintun: Wintun,
}

impl std::fmt::Debug for Adapter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Adapter")
            .field("handle", &self.handle)
            .finish()
    }
}

// SAFETY: a wintun adapter handle is a heap object of wintun.dll, not tied to a thread;
// it is only read (LUID, starting a session) through `&self` and closed in `Drop`.
unsafe impl Send for Adapter {}
// SAFETY: as above.
unsafe impl Sync for Adapter {}

impl Adapter {
    pub(crate) fn luid(&self) -> NET_LUID_LH {
        let mut luid = NET_LUID_LH { Value: 0 };
        // SAFETY: the handle is live; NET_LUID is a 64-bit union in both bindings.
        unsafe {
            self.wintun
                .WintunGetAdapterLUID(self.handle.as_ptr().cast(), (&raw mut luid).cast())
        };
        luid
    }

    /// Starts the session (maps both rings of `capacity` bytes, a power of two within
    /// wintun's limits: `Plan` checked).
    pub(crate) fn start_session(&self, capacity: u32) -> Result<Session, u32> {
        // SAFETY: the handle is live; the capacity is in range.
        let handle = unsafe {
            self.wintun
                .WintunStartSession(self.handle.as_ptr().cast(), capacity)
        };
        let code = last_error();
        let handle = NonNull::new(handle.cast::<c_void>()).ok_or(nonzero(code))?;
        // SAFETY: the session is live; the event belongs to it (never closed by us).
        let read_event = unsafe { self.wintun.WintunGetReadWaitEvent(handle.as_ptr().cast()) };
        let session = Session {
            handle,
            read_event,
            wintun: self.wintun.clone(),
        };
        if read_event.is_null() {
            return Err(nonzero(last_error()));
        }
        Ok(session)
    }
}

impl Drop for Adapter {
    fn drop(&mut self) {
        // SAFETY: the handle is live and dropped exactly once, here.
        unsafe { self.wintun.WintunCloseAdapter(self.handle.as_ptr().cast()) };
    }
}

/// A session: the two rings between this process and the driver. Drop it before its
/// adapter.
pub(crate) struct Session {
    handle: NonNull<c_void>,
    read_event: HANDLE,
    wintun: Wintun,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("handle", &self.handle)
            .finish()
    }
}

// SAFETY: wintun documents its receive, release, allocate and send functions as
// thread-safe; the read event is a kernel handle. Ending the session happens in `Drop`.
unsafe impl Send for Session {}
// SAFETY: as above.
unsafe impl Sync for Session {}

impl Session {
    /// Signalled when packets may be ready to receive (auto-reset, owned by wintun).
    pub(crate) fn read_event(&self) -> HANDLE {
        self.read_event
    }

    /// The next packet the system sent into the adapter, if one is queued; never blocks.
    /// Errors: `ERROR_HANDLE_EOF` (adapter terminating), `ERROR_INVALID_DATA` (corrupt
    /// ring).
    pub(crate) fn receive(&self) -> Result<Option<Received<'_>>, u32> {
        let mut size = 0u32;
        // SAFETY: the session is live; `size` is a writable out-pointer.
        let ptr = unsafe {
            self.wintun
                .WintunReceivePacket(self.handle.as_ptr().cast(), &mut size)
        };
        match NonNull::new(ptr) {
            Some(ptr) => Ok(Some(Received {
                session: self,
                ptr,
                len: size as usize,
            })),
            None => match last_error() {
                code::ERROR_NO_MORE_ITEMS => Ok(None),
                code => Err(nonzero(code)),
            },
        }
    }

    /// Queues one packet (at most 0xFFFF bytes: the caller checks) for the system to
    /// receive from the adapter. `ERROR_BUFFER_OVERFLOW`: the ring is full.
    pub(crate) fn send(&self, packet: &[u8]) -> Result<(), u32> {
        let len = u32::try_from(packet.len()).map_err(|_| code::ERROR_INVALID_PARAMETER)?;
        // SAFETY: the session is live.
        let ptr = unsafe {
            self.wintun
                .WintunAllocateSendPacket(self.handle.as_ptr().cast(), len)
        };
        let code = last_error();
        let ptr = NonNull::new(ptr).ok_or(nonzero(code))?;
        // SAFETY: wintun handed out `len` writable bytes at `ptr`, not overlapping
        // `packet` (which is the caller's memory).
        unsafe { ptr::copy_nonoverlapping(packet.as_ptr(), ptr.as_ptr(), packet.len()) };
        // SAFETY: `ptr` came from WintunAllocateSendPacket on this session and is sent
        // once; every allocated packet must be sent, or the ring stalls.
        unsafe {
            self.wintun
                .WintunSendPacket(self.handle.as_ptr().cast(), ptr.as_ptr())
        };
        Ok(())
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        // SAFETY: the session is live and ended exactly once, here; `Received` borrows
        // `self`, so no packet is outstanding.
        unsafe { self.wintun.WintunEndSession(self.handle.as_ptr().cast()) };
    }
}

/// A received packet, released back to the ring on drop.
pub(crate) struct Received<'a> {
    session: &'a Session,
    ptr: NonNull<u8>,
    len: usize,
}

impl Received<'_> {
    pub(crate) fn bytes(&self) -> &[u8] {
        // SAFETY: wintun handed out `len` readable bytes at `ptr`, valid until released
        // in `Drop`, which the borrow of `self` precedes.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for Received<'_> {
    fn drop(&mut self) {
        // SAFETY: `ptr` came from WintunReceivePacket on this live session and is
        // released exactly once.
        unsafe {
            self.session
                .wintun
                .WintunReleaseReceivePacket(self.session.handle.as_ptr().cast(), self.ptr.as_ptr())
        };
    }
}

/// The last error-level message wintun.dll logged (it tells more than the bare code of
/// a failed `WintunCreateAdapter`: which step, the device problem code). Process-wide,
/// like wintun's logger; `open` clears it before creating and reads it after a failure.
static LAST_DRIVER_ERROR: Mutex<Option<String>> = Mutex::new(None);

pub(crate) fn clear_driver_error() {
    *LAST_DRIVER_ERROR
        .lock()
        .unwrap_or_else(PoisonError::into_inner) = None;
}

pub(crate) fn take_driver_error() -> Option<String> {
    LAST_DRIVER_ERROR
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take()
}

type LogSink = unsafe extern "system" fn(c_int, u64, *const u16);

/// wintun's logger callback: forwards to `tracing` and keeps the last error.
unsafe extern "system" fn log_sink(level: c_int, _timestamp: u64, message: *const u16) {
    if message.is_null() {
        return;
    }
    // Bounded: a message is a line, and a missing NUL must not run off.
    let mut len = 0;
    // SAFETY: wintun passes a NUL-terminated UTF-16 string valid for the call; reading
    // stops at the NUL (or the bound).
    while len < 4096 && unsafe { *message.add(len) } != 0 {
        len += 1;
    }
    // SAFETY: the first `len` units were just read.
    let text = String::from_utf16_lossy(unsafe { std::slice::from_raw_parts(message, len) });
    match level {
        0 => tracing::debug!(target: "wintun", "{text}"),
        1 => tracing::warn!(target: "wintun", "{text}"),
        _ => {
            tracing::warn!(target: "wintun", "error: {text}");
            *LAST_DRIVER_ERROR
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Some(text);
        }
    }
}

fn wide(s: &str) -> Vec<u16> {
    OsStr::new(s).encode_wide().chain([0]).collect()
}

/// A failed call that left no error code still failed.
fn nonzero(code: u32) -> u32 {
    if code == 0 {
        code::ERROR_GEN_FAILURE
    } else {
        code
    }
}

fn os_code(err: &libloading::Error) -> Option<u32> {
    let source = std::error::Error::source(err)?;
    let io = source.downcast_ref::<std::io::Error>()?;
    io.raw_os_error().map(|c| c as u32)
}
