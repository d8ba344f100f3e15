//! Private storage on Windows: `%ProgramData%\cyphonic` (configuration, node key, credential)
//! and the files in it, with a protected DACL that grants access only to SYSTEM and the
//! Administrators group — the counterpart of `0700`/`0600` on Linux.
//!
//! `%ProgramData%` is writable by ordinary users, who could pre-create `cyphonic` to read what
//! the service later writes there; [`create_private_dir`] therefore refuses an existing
//! directory whose owner is not SYSTEM, Administrators or TrustedInstaller. New directories and
//! files are created with the restricted descriptor in the creating call, so they are never
//! readable by others, not even for an instant.
#![allow(unsafe_code)]

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Write};
use std::os::windows::ffi::OsStringExt;
use std::os::windows::io::{FromRawHandle, OwnedHandle};
use std::path::{Path, PathBuf};
use std::ptr;
use std::sync::atomic::{AtomicU32, Ordering};

use windows_sys::Win32::Foundation::{ERROR_ALREADY_EXISTS, GENERIC_WRITE, INVALID_HANDLE_VALUE};
use windows_sys::Win32::Security::Authorization::{
    GetNamedSecurityInfoW, SE_FILE_OBJECT, SetNamedSecurityInfoW,
};
use windows_sys::Win32::Security::{
    DACL_SECURITY_INFORMATION, OBJECT_SECURITY_INFORMATION, OWNER_SECURITY_INFORMATION,
    PROTECTED_DACL_SECURITY_INFORMATION, PSECURITY_DESCRIPTOR, PSID,
};
use windows_sys::Win32::Storage::FileSystem::{
    CREATE_NEW, CreateDirectoryW, CreateFileW, FILE_ATTRIBUTE_NORMAL,
};
use windows_sys::Win32::System::Com::CoTaskMemFree;
use windows_sys::Win32::UI::Shell::{FOLDERID_ProgramData, KF_FLAG_DEFAULT, SHGetKnownFolderPath};

use super::security::{SecurityDescriptor, context, current_user_sid, sid_string, to_wide};

/// Directory SDDL: owner Administrators; protected DACL, full control for SYSTEM and
/// Administrators, inherited by every file and subdirectory.
pub const DIR_SDDL: &str = "O:BAD:PAI(A;OICI;FA;;;SY)(A;OICI;FA;;;BA)";

/// File SDDL: the same without inheritance flags (files have no children).
pub const FILE_SDDL: &str = "O:BAD:PAI(A;;FA;;;SY)(A;;FA;;;BA)";

/// Owners an existing private directory may have besides the current user: LocalSystem,
/// Administrators, TrustedInstaller.
const TRUSTED_OWNERS: [&str; 3] = [
    "S-1-5-18",
    "S-1-5-32-544",
    "S-1-5-80-956008885-3418522649-1831038044-1853292631-2271478464",
];

/// `%ProgramData%\cyphonic`: the known folder from the shell, else `%ProgramData%`, else
/// `C:\ProgramData`.
pub fn program_data_dir() -> PathBuf {
    known_program_data()
        .or_else(|| {
            std::env::var_os("ProgramData")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        })
        .unwrap_or_else(|| PathBuf::from(r"C:\ProgramData"))
        .join("cyphonic")
}

/// Replaces `path`'s DACL with the protected SYSTEM + Administrators one ([`DIR_SDDL`] for a
/// directory, [`FILE_SDDL`] otherwise) and makes Administrators the owner when the caller may
/// (an elevated administrator or SYSTEM); the DACL alone is applied otherwise.
pub fn restrict_to_admins(path: &Path) -> io::Result<()> {
    let sddl = if path.is_dir() { DIR_SDDL } else { FILE_SDDL };
    let sd = SecurityDescriptor::from_sddl(sddl)?;
    let dacl = sd.dacl()?;
    let owner = sd.owner()?;
    let wide = to_wide(path)?;
    let set = |info: OBJECT_SECURITY_INFORMATION, owner: PSID| {
        // SAFETY: `wide` is NUL-terminated; `owner` and `dacl` point into `sd`, which outlives
        // the call; the group and SACL are not requested and may be null.
        unsafe {
            SetNamedSecurityInfoW(
                wide.as_ptr(),
                SE_FILE_OBJECT,
                info,
                owner,
                ptr::null_mut(),
                dacl,
                ptr::null(),
            )
        }
    };
    let dacl_info = DACL_SECURITY_INFORMATION | PROTECTED_DACL_SECURITY_INFORMATION;
    if set(dacl_info | OWNER_SECURITY_INFORMATION, owner) == 0 {
        return Ok(());
    }
    // Taking ownership needs an elevated token; the DACL alone already locks others out.
    match set(dacl_info, ptr::null_mut()) {
        0 => Ok(()),
        rc => Err(restrict_error(rc, path)),
    }
}

/// Creates `path` (and missing parents) as a private directory. A new final directory is
/// created with the restricted descriptor; an existing one must be owned by SYSTEM,
/// Administrators, TrustedInstaller or the current user (else
/// [`io::ErrorKind::PermissionDenied`]: someone else may have planted it) and gets its DACL
/// reset.
pub fn create_private_dir(path: &Path) -> io::Result<()> {
    if !path.exists() {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| context(e, format_args!("creating {}", parent.display())))?;
        }
        let sd = SecurityDescriptor::from_sddl(DIR_SDDL)?;
        let attrs = sd.attributes();
        let wide = to_wide(path)?;
        // SAFETY: `wide` is NUL-terminated; `attrs` points at `sd`, alive for the call.
        let ok = unsafe { CreateDirectoryW(wide.as_ptr(), &attrs) };
        if ok != 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(ERROR_ALREADY_EXISTS as i32) {
            return Err(context(e, format_args!("creating {}", path.display())));
        }
        // Lost a race with another creator: treat it like any existing directory.
    }
    if !path.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{} exists and is not a directory", path.display()),
        ));
    }
    let owner = owner_sid(path)?;
    if !owner_is_trusted(&owner, current_user_sid().ok().as_deref()) {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} already exists and is owned by {owner}, not by SYSTEM or Administrators: it \
                 may have been planted by another user; inspect it, delete it from an elevated \
                 prompt and retry",
                path.display()
            ),
        ));
    }
    // Rewriting an already private DACL would only make Windows walk the whole tree again.
    let wanted = SecurityDescriptor::from_sddl(DIR_SDDL)?.to_sddl(DACL_SECURITY_INFORMATION)?;
    if dacl_sddl(path)? == wanted {
        return Ok(());
    }
    restrict_to_admins(path)
}

/// Atomically replaces `path` with `bytes`. The temporary file is created next to `path` with
/// the restricted descriptor ([`FILE_SDDL`]'s DACL; owned by the caller: Administrators for an
/// elevated administrator, SYSTEM for the service), so it is never readable by others, then
/// written, flushed to disk and renamed over `path`; the rename keeps the file's own
/// descriptor.
pub fn private_file_write(path: &Path, bytes: &[u8]) -> io::Result<()> {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let file_name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} has no file name", path.display()),
        )
    })?;
    let mut tmp_name = OsString::from(".");
    tmp_name.push(file_name);
    tmp_name.push(format!(
        ".{}.{}.tmp",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let tmp = path.with_file_name(tmp_name);

    let result = write_new_private(&tmp, bytes).and_then(|()| {
        std::fs::rename(&tmp, path).map_err(|e| {
            context(
                e,
                format_args!("renaming {} to {}", tmp.display(), path.display()),
            )
        })
    });
    if result.is_err() {
        // Best effort: the temporary file is private anyway.
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// `path`'s DACL as SDDL, e.g. `D:PAI(A;OICI;FA;;;SY)(A;OICI;FA;;;BA)`.
pub fn dacl_sddl(path: &Path) -> io::Result<String> {
    named_security(path, DACL_SECURITY_INFORMATION)?.to_sddl(DACL_SECURITY_INFORMATION)
}

/// `path`'s owner as a SID string, e.g. `S-1-5-32-544` for Administrators.
pub fn owner_sid(path: &Path) -> io::Result<String> {
    let sd = named_security(path, OWNER_SECURITY_INFORMATION)?;
    let owner = sd.owner()?;
    // SAFETY: `owner` is null or points into `sd`, which is alive.
    unsafe { sid_string(owner) }
        .map_err(|e| context(e, format_args!("owner of {}", path.display())))
}

fn owner_is_trusted(owner: &str, current_user: Option<&str>) -> bool {
    TRUSTED_OWNERS.contains(&owner) || current_user == Some(owner)
}

fn named_security(
    path: &Path,
    info: OBJECT_SECURITY_INFORMATION,
) -> io::Result<SecurityDescriptor> {
    let wide = to_wide(path)?;
    let mut sd: PSECURITY_DESCRIPTOR = ptr::null_mut();
    // SAFETY: `wide` is NUL-terminated; only the descriptor out-parameter is requested (the
    // others are optional); it receives a LocalAlloc'd buffer that `SecurityDescriptor` frees.
    let rc = unsafe {
        GetNamedSecurityInfoW(
            wide.as_ptr(),
            SE_FILE_OBJECT,
            info,
            ptr::null_mut(),
            ptr::null_mut(),
            ptr::null_mut(),
            ptr::null_mut(),
            &mut sd,
        )
    };
    if rc != 0 || sd.is_null() {
        return Err(context(
            io::Error::from_raw_os_error(rc as i32),
            format_args!("reading the security of {}", path.display()),
        ));
    }
    // SAFETY: `sd` was just allocated by GetNamedSecurityInfoW and is owned by nobody else.
    Ok(unsafe { SecurityDescriptor::from_local(sd, path.display().to_string()) })
}

fn write_new_private(tmp: &Path, bytes: &[u8]) -> io::Result<()> {
    let sd = SecurityDescriptor::from_sddl(FILE_SDDL)?;
    let attrs = sd.attributes();
    let wide = to_wide(tmp)?;
    // SAFETY: `wide` is NUL-terminated and `attrs` points at `sd`, both alive for the call;
    // CREATE_NEW never opens an existing file (or a link planted in its place).
    let handle = unsafe {
        CreateFileW(
            wide.as_ptr(),
            GENERIC_WRITE,
            0,
            &attrs,
            CREATE_NEW,
            FILE_ATTRIBUTE_NORMAL,
            ptr::null_mut(),
        )
    };
    if handle == INVALID_HANDLE_VALUE {
        return Err(context(
            io::Error::last_os_error(),
            format_args!("creating {}", tmp.display()),
        ));
    }
    // SAFETY: `handle` is a valid file handle just returned by CreateFileW and owned by nobody
    // else; `File` closes it.
    let mut file = File::from(unsafe { OwnedHandle::from_raw_handle(handle) });
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| context(e, format_args!("writing {}", tmp.display())))?;
    Ok(())
}

fn restrict_error(rc: u32, path: &Path) -> io::Error {
    let e = io::Error::from_raw_os_error(rc as i32);
    if e.kind() == io::ErrorKind::PermissionDenied {
        io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "cannot restrict {} to Administrators and SYSTEM: access denied; run from an \
                 elevated prompt",
                path.display()
            ),
        )
    } else {
        context(
            e,
            format_args!(
                "restricting {} to Administrators and SYSTEM",
                path.display()
            ),
        )
    }
}

fn known_program_data() -> Option<PathBuf> {
    let mut out: *mut u16 = ptr::null_mut();
    // SAFETY: FOLDERID_ProgramData is a static GUID; a null token means the current user;
    // `out` receives a CoTaskMemAlloc'd string (possibly even on failure) freed below.
    let hr = unsafe {
        SHGetKnownFolderPath(
            &FOLDERID_ProgramData,
            KF_FLAG_DEFAULT as u32,
            ptr::null_mut(),
            &mut out,
        )
    };
    let path = (hr >= 0 && !out.is_null()).then(|| {
        // SAFETY: on success `out` is a NUL-terminated UTF-16 path.
        let s = unsafe { wide_ptr_os(out) };
        PathBuf::from(s)
    });
    // SAFETY: `out` is null or was allocated by the shell with CoTaskMemAlloc; not used again.
    unsafe { CoTaskMemFree(out.cast()) };
    path.filter(|p| !p.as_os_str().is_empty())
}

/// A NUL-terminated UTF-16 path, losslessly.
///
/// # Safety
/// `p` must point at a readable NUL-terminated UTF-16 string.
unsafe fn wide_ptr_os(p: *const u16) -> OsString {
    let mut len = 0usize;
    // SAFETY: NUL-terminated per the caller's contract.
    while unsafe { *p.add(len) } != 0 {
        len += 1;
    }
    // SAFETY: `len` elements from `p` were just read.
    OsString::from_wide(unsafe { std::slice::from_raw_parts(p, len) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::windows::security::under_wine;
    use windows_sys::Win32::Security::DACL_SECURITY_INFORMATION as DACL;

    fn trustees(sddl: &str) -> Vec<String> {
        let mut who: Vec<String> = sddl
            .split('(')
            .skip(1)
            .map(|ace| {
                ace.trim_end_matches(')')
                    .rsplit(';')
                    .next()
                    .unwrap_or_default()
                    .to_owned()
            })
            .collect();
        who.sort();
        who
    }

    /// The DACL read back from the file system is the private one.
    ///
    /// Wine 8 does not store file DACLs: it maps the DACL given to CreateFileW/CreateDirectoryW
    /// to Unix mode bits, ignores SetNamedSecurityInfoW, and synthesizes a DACL from the mode
    /// on read (SYSTEM, the Unix user, and Everyone when "other" has access). There the
    /// descriptor itself is checked by `descriptors_are_admin_only`, and a path `created` with
    /// it must at least deny Everyone.
    fn assert_private(path: &Path, inheritable: bool, created: bool) {
        let sddl = dacl_sddl(path).unwrap();
        if under_wine() {
            eprintln!("wine: {} reads back as {sddl}", path.display());
            if created {
                assert!(!sddl.contains(";;;WD)"), "world-accessible: {sddl}");
            }
            return;
        }
        assert!(sddl.starts_with("D:P"), "not protected: {sddl}");
        assert_eq!(trustees(&sddl), ["BA", "SY"], "{sddl}");
        assert_eq!(sddl.contains("OICI"), inheritable, "{sddl}");
    }

    #[test]
    fn descriptors_are_admin_only() {
        for (sddl, inherit) in [(DIR_SDDL, "OICI"), (FILE_SDDL, "")] {
            let sd = SecurityDescriptor::from_sddl(sddl).unwrap();
            let dacl = sd.to_sddl(DACL).unwrap();
            assert!(dacl.starts_with("D:P"), "{dacl}");
            assert_eq!(trustees(&dacl), ["BA", "SY"], "{dacl}");
            assert_eq!(
                dacl,
                format!("D:PAI(A;{inherit};FA;;;SY)(A;{inherit};FA;;;BA)")
            );
            let owner = sd.owner().unwrap();
            // SAFETY: `owner` points into `sd`, which is alive.
            assert_eq!(unsafe { sid_string(owner) }.unwrap(), "S-1-5-32-544");
        }
    }

    #[test]
    fn program_data_dir_ends_in_cyphonic() {
        let dir = program_data_dir();
        assert!(dir.ends_with("cyphonic"), "{}", dir.display());
        assert!(dir.is_absolute(), "{}", dir.display());
        assert!(dir.parent().is_some_and(Path::is_dir), "{}", dir.display());
    }

    #[test]
    fn private_dir_is_created_restricted_and_reusable() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("a").join("cyphonic");
        create_private_dir(&dir).unwrap();
        assert!(dir.is_dir());
        assert_private(&dir, true, true);
        let me = current_user_sid().unwrap();
        assert!(owner_is_trusted(&owner_sid(&dir).unwrap(), Some(&me)));
        // Idempotent on an existing directory we own.
        create_private_dir(&dir).unwrap();
        assert_private(&dir, true, false);
    }

    #[test]
    fn private_file_round_trips() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("cyphonic");
        create_private_dir(&dir).unwrap();
        let file = dir.join("credential.bin");
        private_file_write(&file, b"first").unwrap();
        private_file_write(&file, b"second secret").unwrap();
        assert_eq!(std::fs::read(&file).unwrap(), b"second secret");
        assert_private(&file, false, true);
        // No temporary files left behind.
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [OsString::from("credential.bin")]);
    }

    #[test]
    fn private_file_write_needs_a_file_name_and_a_directory() {
        let root = tempfile::tempdir().unwrap();
        let err = private_file_write(&root.path().join("missing").join("f"), b"x").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound, "{err}");
        let err = private_file_write(Path::new(r"C:\"), b"x").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{err}");
    }

    #[test]
    fn restrict_existing_file() {
        let root = tempfile::tempdir().unwrap();
        let file = root.path().join("plain.txt");
        std::fs::write(&file, b"x").unwrap();
        restrict_to_admins(&file).unwrap();
        assert_private(&file, false, false);
        assert_eq!(std::fs::read(&file).unwrap(), b"x");
    }

    #[test]
    fn restrict_missing_path_fails() {
        let root = tempfile::tempdir().unwrap();
        let err = restrict_to_admins(&root.path().join("nope")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound, "{err}");
    }

    #[test]
    fn planted_directory_owners_are_refused() {
        let me = "S-1-5-21-1-2-3-1001";
        assert!(owner_is_trusted("S-1-5-18", Some(me)));
        assert!(owner_is_trusted("S-1-5-32-544", None));
        assert!(owner_is_trusted(me, Some(me)));
        assert!(!owner_is_trusted("S-1-5-21-1-2-3-1002", Some(me)));
        assert!(!owner_is_trusted("S-1-5-32-545", None)); // Users
    }

    #[test]
    fn file_where_dir_expected_is_an_error() {
        let root = tempfile::tempdir().unwrap();
        let file = root.path().join("cyphonic");
        std::fs::write(&file, b"x").unwrap();
        let err = create_private_dir(&file).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists, "{err}");
    }
}
