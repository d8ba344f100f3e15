//! Security descriptors built from SDDL and turned back into SDDL, plus the UTF-16 string
//! helpers every Win32 call here needs. Shared by [`super::pipe`] and [`super::acl`] so the
//! LocalAlloc/LocalFree ownership rules live in one place.
#![allow(unsafe_code)]

use std::ffi::OsStr;
use std::fmt;
use std::io;
use std::os::windows::ffi::OsStrExt;
use std::ptr;

use std::os::windows::io::{AsRawHandle, FromRawHandle, OwnedHandle};

use windows_sys::Win32::Foundation::{HANDLE, HLOCAL, LocalFree};
use windows_sys::Win32::Security::Authorization::{
    ConvertSecurityDescriptorToStringSecurityDescriptorW, ConvertSidToStringSidW,
    ConvertStringSecurityDescriptorToSecurityDescriptorW, SDDL_REVISION_1,
};
use windows_sys::Win32::Security::{
    ACL, GetSecurityDescriptorDacl, GetSecurityDescriptorOwner, GetTokenInformation,
    OBJECT_SECURITY_INFORMATION, PSECURITY_DESCRIPTOR, PSID, SECURITY_ATTRIBUTES, TOKEN_QUERY,
    TOKEN_USER, TokenUser,
};
use windows_sys::Win32::System::Threading::{GetCurrentProcess, OpenProcessToken};

/// A self-relative security descriptor allocated by the system with `LocalAlloc` (by
/// `ConvertStringSecurityDescriptorToSecurityDescriptorW` or `Get[Named]SecurityInfo`), freed on
/// drop.
pub(crate) struct SecurityDescriptor {
    ptr: PSECURITY_DESCRIPTOR,
    origin: String,
}

// SAFETY: the descriptor is a self-relative buffer owned exclusively by this value and never
// mutated after creation; Win32 only reads it, from any thread.
unsafe impl Send for SecurityDescriptor {}
// SAFETY: as above: shared access is read-only.
unsafe impl Sync for SecurityDescriptor {}

impl SecurityDescriptor {
    /// Parses an SDDL string (e.g. `D:P(A;;GA;;;SY)`).
    pub(crate) fn from_sddl(sddl: &str) -> io::Result<Self> {
        let wide = to_wide(sddl)?;
        let mut sd: PSECURITY_DESCRIPTOR = ptr::null_mut();
        // SAFETY: `wide` is NUL-terminated and outlives the call; `sd` receives a LocalAlloc'd
        // buffer that `Self` takes ownership of; the size out-parameter is optional.
        let ok = unsafe {
            ConvertStringSecurityDescriptorToSecurityDescriptorW(
                wide.as_ptr(),
                SDDL_REVISION_1,
                &mut sd,
                ptr::null_mut(),
            )
        };
        if ok == 0 || sd.is_null() {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(
                e.kind(),
                format!("parsing security descriptor {sddl:?}: {e}"),
            ));
        }
        Ok(Self {
            ptr: sd,
            origin: sddl.to_owned(),
        })
    }

    /// Takes ownership of a descriptor returned by `GetSecurityInfo`/`GetNamedSecurityInfoW`.
    ///
    /// # Safety
    /// `ptr` must be a valid security descriptor allocated with `LocalAlloc`, not owned elsewhere.
    pub(crate) unsafe fn from_local(ptr: PSECURITY_DESCRIPTOR, origin: String) -> Self {
        Self { ptr, origin }
    }

    /// The DACL, or null when the descriptor has none (which would mean "everyone": callers
    /// building descriptors from SDDL always include a `D:` part).
    pub(crate) fn dacl(&self) -> io::Result<*mut ACL> {
        let mut present = 0;
        let mut defaulted = 0;
        let mut dacl: *mut ACL = ptr::null_mut();
        // SAFETY: `self.ptr` is a valid descriptor (type invariant); the out-pointers are valid
        // locals; the returned ACL points into the descriptor and lives as long as `self`.
        let ok =
            unsafe { GetSecurityDescriptorDacl(self.ptr, &mut present, &mut dacl, &mut defaulted) };
        if ok == 0 {
            return Err(io::Error::last_os_error());
        }
        if present == 0 || dacl.is_null() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("security descriptor {:?} has no DACL", self.origin),
            ));
        }
        Ok(dacl)
    }

    /// The owner SID, or null when the descriptor sets none.
    pub(crate) fn owner(&self) -> io::Result<PSID> {
        let mut owner: PSID = ptr::null_mut();
        let mut defaulted = 0;
        // SAFETY: `self.ptr` is valid (type invariant); the SID points into the descriptor.
        let ok = unsafe { GetSecurityDescriptorOwner(self.ptr, &mut owner, &mut defaulted) };
        if ok == 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(owner)
    }

    /// The parts selected by `info` (e.g. `DACL_SECURITY_INFORMATION`) as SDDL.
    pub(crate) fn to_sddl(&self, info: OBJECT_SECURITY_INFORMATION) -> io::Result<String> {
        let mut out: *mut u16 = ptr::null_mut();
        let mut len = 0u32;
        // SAFETY: `self.ptr` is valid; `out` receives a LocalAlloc'd NUL-terminated string that
        // is freed below.
        let ok = unsafe {
            ConvertSecurityDescriptorToStringSecurityDescriptorW(
                self.ptr,
                SDDL_REVISION_1,
                info,
                &mut out,
                &mut len,
            )
        };
        if ok == 0 || out.is_null() {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `out` is a NUL-terminated UTF-16 string written by the call above.
        let s = unsafe { from_wide_ptr(out) };
        // SAFETY: `out` was allocated by the system with LocalAlloc and is not used again.
        unsafe { LocalFree(out as HLOCAL) };
        Ok(s)
    }

    /// `SECURITY_ATTRIBUTES` pointing at this descriptor, handles not inherited. The result
    /// borrows `self`: keep `self` alive while the attributes are in use.
    pub(crate) fn attributes(&self) -> SECURITY_ATTRIBUTES {
        SECURITY_ATTRIBUTES {
            nLength: size_of::<SECURITY_ATTRIBUTES>() as u32,
            lpSecurityDescriptor: self.ptr,
            bInheritHandle: 0,
        }
    }
}

impl Drop for SecurityDescriptor {
    fn drop(&mut self) {
        // SAFETY: the pointer was allocated with LocalAlloc by the system (type invariant) and
        // is owned exclusively by `self`.
        unsafe { LocalFree(self.ptr as HLOCAL) };
    }
}

impl fmt::Debug for SecurityDescriptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("SecurityDescriptor")
            .field(&self.origin)
            .finish()
    }
}

/// A SID as its string form (`S-1-5-18`).
///
/// # Safety
/// `sid` must be null or point at a valid SID.
pub(crate) unsafe fn sid_string(sid: PSID) -> io::Result<String> {
    if sid.is_null() {
        return Err(io::Error::new(io::ErrorKind::NotFound, "no SID"));
    }
    let mut out: *mut u16 = ptr::null_mut();
    // SAFETY: `sid` is valid per the caller's contract; `out` receives a LocalAlloc'd string.
    let ok = unsafe { ConvertSidToStringSidW(sid, &mut out) };
    if ok == 0 || out.is_null() {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `out` is a NUL-terminated UTF-16 string written by the call above.
    let s = unsafe { from_wide_ptr(out) };
    // SAFETY: allocated with LocalAlloc by ConvertSidToStringSidW, not used again.
    unsafe { LocalFree(out as HLOCAL) };
    Ok(s)
}

/// The SID of the user this process runs as (`S-1-5-18` for a service running as LocalSystem).
pub(crate) fn current_user_sid() -> io::Result<String> {
    let mut raw: HANDLE = ptr::null_mut();
    // SAFETY: GetCurrentProcess returns a pseudo-handle that needs no closing; `raw` receives a
    // token handle that `OwnedHandle` closes.
    if unsafe { OpenProcessToken(GetCurrentProcess(), TOKEN_QUERY, &mut raw) } == 0 {
        return Err(context(
            io::Error::last_os_error(),
            "opening the process token",
        ));
    }
    // SAFETY: `raw` is a valid token handle just opened and owned by nobody else.
    let token = unsafe { OwnedHandle::from_raw_handle(raw) };
    let mut len = 0u32;
    // SAFETY: a size query: null buffer of length 0; fails with ERROR_INSUFFICIENT_BUFFER and
    // sets `len`.
    unsafe {
        GetTokenInformation(
            token.as_raw_handle(),
            TokenUser,
            ptr::null_mut(),
            0,
            &mut len,
        )
    };
    // u64 elements: TOKEN_USER needs pointer alignment.
    let mut buf = vec![0u64; (len as usize).div_ceil(8).max(1)];
    let cap = u32::try_from(buf.len() * 8).unwrap_or(u32::MAX);
    // SAFETY: `buf` has `cap` writable, 8-aligned bytes.
    let ok = unsafe {
        GetTokenInformation(
            token.as_raw_handle(),
            TokenUser,
            buf.as_mut_ptr().cast(),
            cap,
            &mut len,
        )
    };
    if ok == 0 {
        return Err(context(
            io::Error::last_os_error(),
            "reading the process token's user",
        ));
    }
    // SAFETY: on success the buffer starts with a TOKEN_USER (alignment ensured above) whose SID
    // points into the same buffer, alive until the end of this function.
    unsafe {
        let user = &*buf.as_ptr().cast::<TOKEN_USER>();
        sid_string(user.User.Sid)
    }
}

/// True when running under Wine, whose file security differs from Windows (tests only).
#[cfg(test)]
pub(crate) fn under_wine() -> bool {
    use windows_sys::Win32::System::LibraryLoader::{GetModuleHandleW, GetProcAddress};
    let Ok(ntdll) = to_wide("ntdll.dll") else {
        return false;
    };
    // SAFETY: `ntdll` is NUL-terminated; ntdll is always loaded; the name is a C string.
    unsafe {
        let module = GetModuleHandleW(ntdll.as_ptr());
        !module.is_null() && GetProcAddress(module, c"wine_get_version".as_ptr().cast()).is_some()
    }
}

/// `s` as a NUL-terminated UTF-16 string; an interior NUL is an error, not a truncation.
pub(crate) fn to_wide(s: impl AsRef<OsStr>) -> io::Result<Vec<u16>> {
    let s = s.as_ref();
    let mut wide: Vec<u16> = s.encode_wide().collect();
    if wide.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{s:?} contains a NUL character"),
        ));
    }
    wide.push(0);
    Ok(wide)
}

/// Copies a NUL-terminated UTF-16 string (lossily: SDDL, SIDs and paths from the system are
/// valid UTF-16 in practice).
///
/// # Safety
/// `p` must point at a readable NUL-terminated UTF-16 string.
pub(crate) unsafe fn from_wide_ptr(p: *const u16) -> String {
    let mut len = 0usize;
    // SAFETY: the string is NUL-terminated (caller's contract), so every index up to and
    // including the terminator is readable.
    while unsafe { *p.add(len) } != 0 {
        len += 1;
    }
    // SAFETY: `len` elements starting at `p` were just read above.
    let units = unsafe { std::slice::from_raw_parts(p, len) };
    String::from_utf16_lossy(units)
}

/// Adds `what` to an error's message, keeping its kind (so callers can still match NotFound or
/// PermissionDenied).
pub(crate) fn context(e: io::Error, what: impl fmt::Display) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e}"))
}
