//! Status codes: the `i32` every ABI call returns ([`Status`]), the failure a plugin's
//! Rust code reports ([`PluginFailure`]) and the error the host sees ([`PluginError`]).

use std::borrow::Cow;
use std::fmt;

/// An ABI status code: 0 is success, every failure is negative. Codes outside the list
/// are possible (a newer plugin, a buggy one) and must be treated as failures.
#[repr(transparent)]
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Status(pub i32);

impl Status {
    pub const OK: Status = Status(0);
    /// The plugin's code panicked (or otherwise crashed in a caught way).
    pub const PANIC: Status = Status(-1);
    /// A null pointer, a length that does not fit, a malformed option...
    pub const INVALID_ARGUMENT: Status = Status(-2);
    /// The caller's buffer is too small for the result.
    pub const BUFFER_TOO_SMALL: Status = Status(-3);
    /// An AEAD tag did not verify.
    pub const AUTH_FAILED: Status = Status(-4);
    /// The plugin does not implement this function or option.
    pub const UNSUPPORTED: Status = Status(-5);
    /// An operating-system I/O error.
    pub const IO: Status = Status(-6);
    pub const TIMED_OUT: Status = Status(-7);
    /// The handle's underlying resource went away.
    pub const CLOSED: Status = Status(-8);
    /// A bug: an invariant of the plugin (or of what it returned) broke.
    pub const INTERNAL: Status = Status(-9);
    pub const PERMISSION_DENIED: Status = Status(-10);
    pub const NOT_FOUND: Status = Status(-11);

    /// Every code ABI 1.0 defines, with its name.
    pub const ALL: [(Status, &'static str); 12] = [
        (Status::OK, "OK"),
        (Status::PANIC, "PANIC"),
        (Status::INVALID_ARGUMENT, "INVALID_ARGUMENT"),
        (Status::BUFFER_TOO_SMALL, "BUFFER_TOO_SMALL"),
        (Status::AUTH_FAILED, "AUTH_FAILED"),
        (Status::UNSUPPORTED, "UNSUPPORTED"),
        (Status::IO, "IO"),
        (Status::TIMED_OUT, "TIMED_OUT"),
        (Status::CLOSED, "CLOSED"),
        (Status::INTERNAL, "INTERNAL"),
        (Status::PERMISSION_DENIED, "PERMISSION_DENIED"),
        (Status::NOT_FOUND, "NOT_FOUND"),
    ];

    pub const fn code(self) -> i32 {
        self.0
    }

    pub const fn is_ok(self) -> bool {
        self.0 == 0
    }

    /// The code's name (`"AUTH_FAILED"`), or `None` for a code ABI 1.0 does not define.
    pub fn name(self) -> Option<&'static str> {
        Self::ALL.iter().find(|(s, _)| *s == self).map(|(_, n)| *n)
    }
}

impl fmt::Debug for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => write!(f, "{name} ({})", self.0),
            None => write!(f, "unknown status ({})", self.0),
        }
    }
}

/// A failure inside a Rust plugin: the status the export glue returns and the message it
/// stores as the calling thread's last error. Static messages cost no allocation, which
/// matters on the per-packet path (e.g. `AUTH_FAILED`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginFailure {
    status: Status,
    message: Cow<'static, str>,
}

impl PluginFailure {
    /// A failure with `status`; a non-negative `status` is a bug and becomes `INTERNAL`.
    pub fn new(status: Status, message: impl Into<Cow<'static, str>>) -> Self {
        let status = if status.0 < 0 {
            status
        } else {
            Status::INTERNAL
        };
        Self {
            status,
            message: message.into(),
        }
    }

    pub fn invalid_argument(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(Status::INVALID_ARGUMENT, message)
    }

    pub fn buffer_too_small(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(Status::BUFFER_TOO_SMALL, message)
    }

    /// `AUTH_FAILED` with the message "authentication failed".
    pub fn auth_failed() -> Self {
        Self::new(Status::AUTH_FAILED, "authentication failed")
    }

    pub fn unsupported(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(Status::UNSUPPORTED, message)
    }

    pub fn io(err: &std::io::Error) -> Self {
        let status = match err.kind() {
            std::io::ErrorKind::PermissionDenied => Status::PERMISSION_DENIED,
            std::io::ErrorKind::NotFound => Status::NOT_FOUND,
            std::io::ErrorKind::TimedOut => Status::TIMED_OUT,
            _ => Status::IO,
        };
        Self::new(status, err.to_string())
    }

    pub fn internal(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(Status::INTERNAL, message)
    }

    pub fn status(&self) -> Status {
        self.status
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    pub(crate) fn into_message(self) -> Cow<'static, str> {
        self.message
    }
}

impl fmt::Display for PluginFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.status, self.message)
    }
}

impl std::error::Error for PluginFailure {}

/// A failed plugin call, as the host sees it: the status code and the plugin's message
/// (its `last_error`, or a message of the host's own checks).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status}: {message}")]
pub struct PluginError {
    pub status: Status,
    pub message: Cow<'static, str>,
}

impl PluginError {
    pub fn new(status: Status, message: impl Into<Cow<'static, str>>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    pub fn status(&self) -> Status {
        self.status
    }

    pub fn message(&self) -> &str {
        &self.message
    }
}

impl From<PluginFailure> for PluginError {
    fn from(failure: PluginFailure) -> Self {
        Self {
            status: failure.status,
            message: failure.message,
        }
    }
}
