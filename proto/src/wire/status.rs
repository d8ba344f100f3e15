//! Status codes: the outcome a cloud service or relay reports for a request.
//!
//! A [`StatusCode`] is a plain `u16` on the wire (big-endian). Unknown values parse fine
//! so that a newer peer can add codes without breaking older ones; they display as
//! `status N` and callers treat any unknown non-zero code as a failure.

use std::fmt;

use super::{Reader, WireError, Writer};

/// The outcome of a request, as carried in `Status` signals, route confirmations and
/// relay bind acknowledgements.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct StatusCode(pub u16);

impl StatusCode {
    /// The request was carried out.
    pub const SUCCESS: Self = Self(0);
    /// A MAC or signature did not verify: someone altered the message.
    pub const FALSIFICATION_DETECTED: Self = Self(1);
    /// A sealed body could not be opened.
    pub const DECRYPTION_FAILED: Self = Self(2);
    /// Wrong device id or password, or a credential the service does not accept.
    pub const AUTHENTICATION_FAILED: Self = Self(3);
    /// Authenticated, but policy does not allow this request.
    pub const FORBIDDEN: Self = Self(4);
    /// The name asked for is unknown.
    pub const NOT_FOUND: Self = Self(5);
    /// The name is known but its node is not registered right now.
    pub const OFFLINE: Self = Self(6);
    /// Too many requests; retry after the time the answer gives.
    pub const RATE_LIMITED: Self = Self(7);
    /// A credential, ticket or timestamp is outside its validity window.
    pub const EXPIRED: Self = Self(8);
    /// The credential or device was revoked.
    pub const REVOKED: Self = Self(9);
    /// The peer speaks a protocol or message version we do not.
    pub const UNSUPPORTED_VERSION: Self = Self(10);
    /// The request could not be parsed or breaks a field rule.
    pub const MALFORMED: Self = Self(11);
    /// The request duplicates state that already exists (e.g. a second registration).
    pub const CONFLICT: Self = Self(12);
    /// The service is down or overloaded; retry later.
    pub const UNAVAILABLE: Self = Self(13);
    /// The service failed on its side.
    pub const INTERNAL: Self = Self(14);

    /// Bytes a status code takes on the wire.
    pub const LEN: usize = 2;

    /// Every code this version knows, in numeric order.
    pub const KNOWN: [Self; 15] = [
        Self::SUCCESS,
        Self::FALSIFICATION_DETECTED,
        Self::DECRYPTION_FAILED,
        Self::AUTHENTICATION_FAILED,
        Self::FORBIDDEN,
        Self::NOT_FOUND,
        Self::OFFLINE,
        Self::RATE_LIMITED,
        Self::EXPIRED,
        Self::REVOKED,
        Self::UNSUPPORTED_VERSION,
        Self::MALFORMED,
        Self::CONFLICT,
        Self::UNAVAILABLE,
        Self::INTERNAL,
    ];

    /// The code's name, or `None` for a code this version does not know.
    pub const fn name(self) -> Option<&'static str> {
        Some(match self.0 {
            0 => "Success",
            1 => "FalsificationDetected",
            2 => "DecryptionFailed",
            3 => "AuthenticationFailed",
            4 => "Forbidden",
            5 => "NotFound",
            6 => "Offline",
            7 => "RateLimited",
            8 => "Expired",
            9 => "Revoked",
            10 => "UnsupportedVersion",
            11 => "Malformed",
            12 => "Conflict",
            13 => "Unavailable",
            14 => "Internal",
            _ => return None,
        })
    }

    pub const fn is_success(self) -> bool {
        self.0 == Self::SUCCESS.0
    }

    /// True for codes this version has a name for.
    pub const fn is_known(self) -> bool {
        self.name().is_some()
    }

    pub fn read(r: &mut Reader<'_>) -> Result<Self, WireError> {
        Ok(Self(r.u16()?))
    }

    pub fn write(self, w: &mut Writer<'_>) -> Result<(), WireError> {
        w.u16(self.0)
    }
}

impl From<u16> for StatusCode {
    fn from(value: u16) -> Self {
        Self(value)
    }
}

impl From<StatusCode> for u16 {
    fn from(value: StatusCode) -> Self {
        value.0
    }
}

impl fmt::Display for StatusCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => f.write_str(name),
            None => write!(f, "status {}", self.0),
        }
    }
}

impl fmt::Debug for StatusCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StatusCode({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_display() {
        assert_eq!(StatusCode::SUCCESS.to_string(), "Success");
        assert_eq!(StatusCode::OFFLINE.name(), Some("Offline"));
        assert_eq!(StatusCode(999).to_string(), "status 999");
        assert_eq!(StatusCode(999).name(), None);
        assert!(StatusCode::SUCCESS.is_success());
        assert!(!StatusCode::INTERNAL.is_success());
        assert!(!StatusCode(15).is_known());
        for (i, code) in StatusCode::KNOWN.iter().enumerate() {
            assert_eq!(usize::from(code.0), i);
            assert!(code.is_known());
        }
    }

    #[test]
    fn unknown_codes_round_trip() {
        let mut buf = [0u8; 2];
        StatusCode(0xbeef)
            .write(&mut Writer::new(&mut buf))
            .unwrap();
        assert_eq!(buf, [0xbe, 0xef]);
        assert_eq!(
            StatusCode::read(&mut Reader::new(&buf)).unwrap(),
            StatusCode(0xbeef)
        );
    }
}
