//! Wall-clock time as the protocol sees it.
//!
//! Timers (retransmission, rekey, expiry) use the monotonic [`std::time::Instant`] the
//! caller passes in. Validity windows that two machines must agree on (credentials,
//! relay tickets) need wall-clock time, which the caller passes as a [`UnixTime`].

use std::time::Duration;

/// Seconds since the Unix epoch, as carried on the wire (u64, big-endian).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct UnixTime(pub u64);

impl UnixTime {
    /// The current wall-clock time. Only `host/` and `cloud/` call this; protocol code
    /// always receives the time as an argument.
    pub fn from_system_time(time: std::time::SystemTime) -> Self {
        let secs = time
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        Self(secs)
    }

    pub fn saturating_add(self, duration: Duration) -> Self {
        Self(self.0.saturating_add(duration.as_secs()))
    }

    pub fn saturating_sub(self, duration: Duration) -> Self {
        Self(self.0.saturating_sub(duration.as_secs()))
    }
}
