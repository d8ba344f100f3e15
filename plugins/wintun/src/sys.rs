//! Small Win32 helpers: where this module lives on disk, whether the process is
//! elevated, Windows' text for an error code, and the wake event with its wait.

use std::ffi::OsString;
use std::io;
use std::os::windows::ffi::OsStringExt;
use std::path::PathBuf;
use std::ptr;

use windows_sys::Win32::Foundation::{
    CloseHandle, GetLastError, HANDLE, HMODULE, WAIT_FAILED, WAIT_OBJECT_0, WAIT_TIMEOUT,
};
use windows_sys::Win32::Security::{
    GetTokenInformation, TOKEN_ELEVATION, TOKEN_QUERY, TokenElevation,
};
use windows_sys::Win32::System::Diagnostics::Debug::{
    FORMAT_MESSAGE_FROM_SYSTEM, FORMAT_MESSAGE_IGNORE_INSERTS, FormatMessageW,
};
use windows_sys::Win32::System::LibraryLoader::{
    GET_MODULE_HANDLE_EX_FLAG_FROM_ADDRESS, GET_MODULE_HANDLE_EX_FLAG_UNCHANGED_REFCOUNT,
    GetModuleFileNameW, GetModuleHandleExW,
};
use windows_sys::Win32::System::Threading::{
    CreateEventW, GetCurrentProcess, INFINITE, OpenProcessToken, ResetEvent, SetEvent,
    WaitForMultipleObjects,
};

/// The calling thread's last Win32 error code.
pub(crate) fn last_error() -> u32 {
    // SAFETY: reads a thread-local value; no preconditions.
    unsafe { GetLastError() }
}

/// Windows' text for error `code` (as `FormatMessageW` gives it, in the system language),
/// or an empty string when it has none.
pub(crate) fn win32_text(code: u32) -> String {
    let mut buf = [0u16; 512];
    // SAFETY: `buf` is writable for `buf.len()` UTF-16 units; FROM_SYSTEM with
    // IGNORE_INSERTS reads no source and no arguments.
    let n = unsafe {
        FormatMessageW(
            FORMAT_MESSAGE_FROM_SYSTEM | FORMAT_MESSAGE_IGNORE_INSERTS,
            ptr::null(),
            code,
            0,
            buf.as_mut_ptr(),
            buf.len() as u32,
            ptr::null(),
        )
    };
    let n = (n as usize).min(buf.len());
    String::from_utf16_lossy(&buf[..n]).trim().to_owned()
}

/// The directory holding the module (DLL, or EXE when linked statically) that contains
/// this code: where the signed wintun.dll must be.
pub(crate) fn module_dir() -> io::Result<PathBuf> {
    let mut module: HMODULE = ptr::null_mut();
    // Any address inside this module identifies it.
    let anchor = module_dir as *const () as *const u16;
    // SAFETY: FROM_ADDRESS makes the second argument an address, not a string;
    // UNCHANGED_REFCOUNT takes no reference we would have to release; `module` is a
    // writable out-pointer.
    let ok = unsafe {
        GetModuleHandleExW(
            GET_MODULE_HANDLE_EX_FLAG_FROM_ADDRESS | GET_MODULE_HANDLE_EX_FLAG_UNCHANGED_REFCOUNT,
            anchor,
            &mut module,
        )
    };
    if ok == 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buf = vec![0u16; 260];
    loop {
        let cap = u32::try_from(buf.len()).unwrap_or(u32::MAX);
        // SAFETY: `buf` is writable for `cap` UTF-16 units; `module` is this module,
        // loaded for as long as this code runs.
        let n = unsafe { GetModuleFileNameW(module, buf.as_mut_ptr(), cap) } as usize;
        if n == 0 {
            return Err(io::Error::last_os_error());
        }
        // A full buffer means the path was truncated; NT paths end at 32767 units.
        if n < buf.len() {
            let file = PathBuf::from(OsString::from_wide(&buf[..n]));
            return file.parent().map(PathBuf::from).ok_or_else(|| {
                io::Error::other(format!("module path {} has no directory", file.display()))
            });
        }
        if buf.len() >= 32_768 {
            return Err(io::Error::other("module path longer than 32767 characters"));
        }
        buf.resize(buf.len() * 2, 0);
    }
}

/// Whether this process runs with an elevated (full administrator) token.
pub(crate) fn is_elevated() -> io::Result<bool> {
    let mut token: HANDLE = ptr::null_mut();
    // SAFETY: the pseudo-handle of the current process needs no closing; `token` is a
    // writable out-pointer.
    if unsafe { OpenProcessToken(GetCurrentProcess(), TOKEN_QUERY, &mut token) } == 0 {
        return Err(io::Error::last_os_error());
    }
    let token = OwnedHandle(token);
    let mut elevation = TOKEN_ELEVATION { TokenIsElevated: 0 };
    let mut len = 0u32;
    // SAFETY: `elevation` is writable for the size passed, `len` is a writable
    // out-pointer, `token` is open with TOKEN_QUERY.
    let ok = unsafe {
        GetTokenInformation(
            token.0,
            TokenElevation,
            (&raw mut elevation).cast(),
            size_of::<TOKEN_ELEVATION>() as u32,
            &mut len,
        )
    };
    if ok == 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(elevation.TokenIsElevated != 0)
}

/// A handle closed on drop.
#[derive(Debug)]
struct OwnedHandle(HANDLE);

impl Drop for OwnedHandle {
    fn drop(&mut self) {
        // SAFETY: the handle is open and owned by this value alone.
        unsafe { CloseHandle(self.0) };
    }
}

/// A manual-reset event, owned.
#[derive(Debug)]
pub(crate) struct Event(HANDLE);

// SAFETY: an event handle may be signalled, reset, waited on and closed from any thread;
// closing happens only in `Drop`, with exclusive access.
unsafe impl Send for Event {}
// SAFETY: as above; `set`/`reset`/waits through `&self` are thread-safe kernel calls.
unsafe impl Sync for Event {}

impl Event {
    pub(crate) fn new() -> io::Result<Self> {
        // SAFETY: no security attributes and no name: a private, unsignalled,
        // manual-reset event.
        let handle = unsafe { CreateEventW(ptr::null(), 1, 0, ptr::null()) };
        if handle.is_null() {
            return Err(io::Error::last_os_error());
        }
        Ok(Self(handle))
    }

    pub(crate) fn set(&self) -> io::Result<()> {
        // SAFETY: the handle is a live event owned by `self`.
        if unsafe { SetEvent(self.0) } == 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    pub(crate) fn reset(&self) {
        // SAFETY: as in `set`. It cannot fail on a live event handle.
        unsafe { ResetEvent(self.0) };
    }

    pub(crate) fn raw(&self) -> HANDLE {
        self.0
    }
}

impl Drop for Event {
    fn drop(&mut self) {
        // SAFETY: the handle is open and owned by this value alone.
        unsafe { CloseHandle(self.0) };
    }
}

/// Waits up to `timeout_ms` (`None`: forever) for either of two handles; the index of a
/// signalled one, or `None` on timeout.
pub(crate) fn wait_either(
    handles: [HANDLE; 2],
    timeout_ms: Option<u32>,
) -> io::Result<Option<usize>> {
    // INFINITE is u32::MAX: keep finite timeouts below it.
    let timeout = timeout_ms.map_or(INFINITE, |ms| ms.min(INFINITE - 1));
    // SAFETY: both handles are live waitable objects for the whole call (owned by the
    // caller's session and event); the array outlives the call.
    let r = unsafe { WaitForMultipleObjects(2, handles.as_ptr(), 0, timeout) };
    match r {
        WAIT_TIMEOUT => Ok(None),
        WAIT_FAILED => Err(io::Error::last_os_error()),
        r if (WAIT_OBJECT_0..WAIT_OBJECT_0 + 2).contains(&r) => {
            Ok(Some((r - WAIT_OBJECT_0) as usize))
        }
        // WAIT_ABANDONED_*: only for mutexes, which these are not.
        r => Err(io::Error::other(format!(
            "WaitForMultipleObjects returned {r:#x}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_dir_is_the_test_executables_directory() {
        let dir = module_dir().unwrap();
        let exe = std::env::current_exe().unwrap();
        assert_eq!(
            dir.to_string_lossy().to_lowercase(),
            exe.parent().unwrap().to_string_lossy().to_lowercase()
        );
    }

    #[test]
    fn win32_text_knows_common_codes() {
        assert!(!win32_text(5).is_empty());
        assert!(!win32_text(31).is_empty());
    }

    #[test]
    fn events_wake_a_wait_and_time_out() {
        let a = Event::new().unwrap();
        let b = Event::new().unwrap();
        assert_eq!(wait_either([a.raw(), b.raw()], Some(0)).unwrap(), None);
        b.set().unwrap();
        assert_eq!(
            wait_either([a.raw(), b.raw()], Some(1000)).unwrap(),
            Some(1)
        );
        // Manual reset: still signalled until reset.
        assert_eq!(wait_either([a.raw(), b.raw()], Some(0)).unwrap(), Some(1));
        b.reset();
        let start = std::time::Instant::now();
        assert_eq!(wait_either([a.raw(), b.raw()], Some(50)).unwrap(), None);
        assert!(start.elapsed() >= std::time::Duration::from_millis(40));
    }

    #[test]
    fn elevation_is_readable() {
        is_elevated().unwrap();
    }
}
