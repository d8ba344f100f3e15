//! Turning Win32 error codes into plugin failures: the ABI [`Status`], the message (what
//! failed, Windows' own text, the code) and a hint saying what to do about it. Pure, so
//! the mapping is tested on every platform; the Windows code supplies the text.

use cyphonic_plugin_abi::{PluginFailure, Status};

/// The Win32 error codes this plugin tells apart (values from `winerror.h`).
pub(crate) mod code {
    pub(crate) const ERROR_FILE_NOT_FOUND: u32 = 2;
    pub(crate) const ERROR_PATH_NOT_FOUND: u32 = 3;
    pub(crate) const ERROR_ACCESS_DENIED: u32 = 5;
    pub(crate) const ERROR_NOT_ENOUGH_MEMORY: u32 = 8;
    pub(crate) const ERROR_INVALID_DATA: u32 = 13;
    pub(crate) const ERROR_OUTOFMEMORY: u32 = 14;
    pub(crate) const ERROR_GEN_FAILURE: u32 = 31;
    pub(crate) const ERROR_HANDLE_EOF: u32 = 38;
    pub(crate) const ERROR_DUP_NAME: u32 = 52;
    pub(crate) const ERROR_INVALID_PARAMETER: u32 = 87;
    pub(crate) const ERROR_BUFFER_OVERFLOW: u32 = 111;
    pub(crate) const ERROR_MOD_NOT_FOUND: u32 = 126;
    pub(crate) const ERROR_PROC_NOT_FOUND: u32 = 127;
    pub(crate) const ERROR_ALREADY_EXISTS: u32 = 183;
    pub(crate) const ERROR_BAD_EXE_FORMAT: u32 = 193;
    pub(crate) const WAIT_TIMEOUT: u32 = 258;
    pub(crate) const ERROR_NO_MORE_ITEMS: u32 = 259;
    pub(crate) const ERROR_INVALID_IMAGE_HASH: u32 = 577;
    pub(crate) const ERROR_NOT_FOUND: u32 = 1168;
    pub(crate) const ERROR_DRIVER_BLOCKED: u32 = 1275;
    pub(crate) const ERROR_TIMEOUT: u32 = 1460;
    pub(crate) const ERROR_OBJECT_ALREADY_EXISTS: u32 = 5010;
}

use code::*;

/// The hint for every failure that needs an elevated process.
pub(crate) const NEED_ADMIN: &str = "run cyphonicd as Administrator or as the service";

/// Where a Win32 error happened; the same code means different things (and calls for
/// different remedies) in different steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// Loading wintun.dll and resolving its functions.
    LoadDll,
    /// `WintunCreateAdapter`: where the driver gets installed and started.
    CreateAdapter,
    /// `WintunStartSession`: mapping the rings.
    StartSession,
    /// IP Helper: addresses, routes, MTU.
    Configure,
    /// Receiving and sending packets.
    DataPath,
}

/// The ABI status for `code` failing in `step`.
pub(crate) fn status_of(step: Step, code: u32) -> Status {
    match (step, code) {
        (_, ERROR_ACCESS_DENIED) => Status::PERMISSION_DENIED,
        (Step::DataPath, ERROR_HANDLE_EOF) => Status::CLOSED,
        (Step::LoadDll, ERROR_FILE_NOT_FOUND | ERROR_PATH_NOT_FOUND | ERROR_MOD_NOT_FOUND) => {
            Status::NOT_FOUND
        }
        // The driver's own failures are I/O, whatever code it picked.
        (Step::CreateAdapter | Step::StartSession | Step::DataPath | Step::LoadDll, _) => {
            Status::IO
        }
        (Step::Configure, ERROR_FILE_NOT_FOUND | ERROR_PATH_NOT_FOUND | ERROR_NOT_FOUND) => {
            Status::NOT_FOUND
        }
        (Step::Configure, ERROR_INVALID_PARAMETER) => Status::INVALID_ARGUMENT,
        (Step::Configure, WAIT_TIMEOUT | ERROR_TIMEOUT) => Status::TIMED_OUT,
        (Step::Configure, _) => Status::IO,
    }
}

/// What the operator can do about `code` failing in `step`, if anything useful.
pub(crate) fn hint(step: Step, code: u32) -> Option<&'static str> {
    match (step, code) {
        (_, ERROR_ACCESS_DENIED) => Some(NEED_ADMIN),
        (Step::LoadDll, ERROR_BAD_EXE_FORMAT) => Some(
            "this wintun.dll is built for another processor architecture: \
             use bin\\amd64\\wintun.dll (or arm64) from the wintun package",
        ),
        (Step::LoadDll, ERROR_PROC_NOT_FOUND) => Some(
            "this is not wintun.dll 0.14 or later: \
             use the signed wintun.dll from https://www.wintun.net",
        ),
        (Step::LoadDll, _) => Some(
            "reinstall cyphonic, or replace wintun.dll with the signed one from \
             https://www.wintun.net",
        ),
        (
            Step::CreateAdapter,
            ERROR_ALREADY_EXISTS | ERROR_OBJECT_ALREADY_EXISTS | ERROR_DUP_NAME,
        ) => Some(
            "another program (another cyphonicd?) holds an adapter with this name: \
                 stop it, or give this node another interface name",
        ),
        (Step::CreateAdapter, ERROR_INVALID_IMAGE_HASH | ERROR_DRIVER_BLOCKED) => Some(
            "Windows refused to load the wintun driver: use the signed wintun.dll from \
             https://www.wintun.net and check the driver signature policy",
        ),
        (Step::CreateAdapter, _) => Some(
            "the wintun driver could not set up the adapter: check that wintun.dll is the \
             signed one from https://www.wintun.net, that no policy or security software \
             blocks driver installation, and look for Wintun in the System event log \
             (a reboot helps after a driver update)",
        ),
        (Step::StartSession, ERROR_NOT_ENOUGH_MEMORY | ERROR_OUTOFMEMORY) => {
            Some("lower the ring_capacity option")
        }
        (Step::StartSession, _) => {
            Some("the adapter went away or its driver failed: restart cyphonicd")
        }
        (Step::Configure, ERROR_INVALID_PARAMETER) => {
            Some("Windows rejects this address, route or MTU for the adapter")
        }
        (Step::Configure, ERROR_FILE_NOT_FOUND | ERROR_NOT_FOUND) => Some(
            "the adapter disappeared, or the protocol (IPv6?) is unbound from it \
             in its adapter properties",
        ),
        (Step::Configure, _) => None,
        (Step::DataPath, ERROR_HANDLE_EOF) => Some("the adapter is being removed"),
        (Step::DataPath, ERROR_INVALID_DATA) => {
            Some("the wintun ring is corrupt: restart cyphonicd")
        }
        (Step::DataPath, _) => None,
    }
}

/// The failure for Win32 error `code` (whose system text is `text`) while doing
/// `context` in `step`: `"{context}: {text} (Win32 error {code}); {hint}"`.
pub(crate) fn win32_failure(step: Step, context: &str, code: u32, text: &str) -> PluginFailure {
    let text = text.trim_end().trim_end_matches('.');
    let mut message = if text.is_empty() {
        format!("{context}: Win32 error {code}")
    } else {
        format!("{context}: {text} (Win32 error {code})")
    };
    if let Some(hint) = hint(step, code) {
        message.push_str("; ");
        message.push_str(hint);
    }
    PluginFailure::new(status_of(step, code), message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_denied_is_permission_denied_with_the_admin_hint_everywhere() {
        for step in [
            Step::LoadDll,
            Step::CreateAdapter,
            Step::StartSession,
            Step::Configure,
            Step::DataPath,
        ] {
            let f = win32_failure(
                step,
                "doing it",
                ERROR_ACCESS_DENIED,
                "Access is denied.\r\n",
            );
            assert_eq!(f.status(), Status::PERMISSION_DENIED, "{step:?}");
            assert_eq!(
                f.message(),
                "doing it: Access is denied (Win32 error 5); \
                 run cyphonicd as Administrator or as the service"
            );
        }
    }

    #[test]
    fn driver_failures_are_io_with_a_driver_hint() {
        let f = win32_failure(
            Step::CreateAdapter,
            "creating wintun adapter `cyphonic`",
            ERROR_GEN_FAILURE,
            "A device attached to the system is not functioning.",
        );
        assert_eq!(f.status(), Status::IO);
        assert!(f.message().starts_with(
            "creating wintun adapter `cyphonic`: A device attached to the system is not \
             functioning (Win32 error 31); the wintun driver could not set up the adapter"
        ));
        // Codes that mean "not found" elsewhere are still driver failures here.
        for code in [
            ERROR_FILE_NOT_FOUND,
            ERROR_NOT_FOUND,
            ERROR_INVALID_PARAMETER,
        ] {
            assert_eq!(status_of(Step::CreateAdapter, code), Status::IO);
            assert_eq!(status_of(Step::StartSession, code), Status::IO);
        }
        assert!(
            hint(Step::CreateAdapter, ERROR_ALREADY_EXISTS)
                .unwrap()
                .contains("another cyphonicd")
        );
        assert!(
            hint(Step::CreateAdapter, ERROR_INVALID_IMAGE_HASH)
                .unwrap()
                .contains("signed")
        );
        assert_eq!(
            hint(Step::StartSession, ERROR_NOT_ENOUGH_MEMORY),
            Some("lower the ring_capacity option")
        );
    }

    #[test]
    fn dll_loading_maps_missing_files_to_not_found() {
        for code in [
            ERROR_FILE_NOT_FOUND,
            ERROR_PATH_NOT_FOUND,
            ERROR_MOD_NOT_FOUND,
        ] {
            assert_eq!(status_of(Step::LoadDll, code), Status::NOT_FOUND);
        }
        assert_eq!(status_of(Step::LoadDll, ERROR_BAD_EXE_FORMAT), Status::IO);
        assert!(
            hint(Step::LoadDll, ERROR_BAD_EXE_FORMAT)
                .unwrap()
                .contains("amd64")
        );
        assert!(
            hint(Step::LoadDll, ERROR_PROC_NOT_FOUND)
                .unwrap()
                .contains("0.14")
        );
    }

    #[test]
    fn configuration_errors_keep_their_meaning() {
        assert_eq!(
            status_of(Step::Configure, ERROR_NOT_FOUND),
            Status::NOT_FOUND
        );
        assert_eq!(
            status_of(Step::Configure, ERROR_INVALID_PARAMETER),
            Status::INVALID_ARGUMENT
        );
        assert_eq!(status_of(Step::Configure, ERROR_TIMEOUT), Status::TIMED_OUT);
        assert_eq!(status_of(Step::Configure, ERROR_GEN_FAILURE), Status::IO);
        assert_eq!(hint(Step::Configure, ERROR_GEN_FAILURE), None);
        let f = win32_failure(
            Step::Configure,
            "adding fd00::1/64",
            ERROR_NOT_FOUND,
            "Element not found.",
        );
        assert_eq!(f.status(), Status::NOT_FOUND);
        assert!(
            f.message()
                .contains("(Win32 error 1168); the adapter disappeared")
        );
    }

    #[test]
    fn data_path_eof_is_closed() {
        assert_eq!(status_of(Step::DataPath, ERROR_HANDLE_EOF), Status::CLOSED);
        assert_eq!(status_of(Step::DataPath, ERROR_INVALID_DATA), Status::IO);
        assert_eq!(status_of(Step::DataPath, ERROR_BUFFER_OVERFLOW), Status::IO);
        assert_eq!(
            hint(Step::DataPath, ERROR_HANDLE_EOF),
            Some("the adapter is being removed")
        );
        let f = win32_failure(Step::DataPath, "receiving", ERROR_NO_MORE_ITEMS, "");
        assert_eq!(f.message(), "receiving: Win32 error 259");
    }
}
