//! The node-to-node tunnel: handshake, cookies, sessions and the per-peer state
//! machine, all sans-IO.
//!
//! - [`handshake`]: Noise IK (`Noise_IK_25519_ChaChaPoly_SHA256`, prologue
//!   "cyphonic tunnel v1") with credentials and both suite lists in the encrypted
//!   payloads; one round trip gives two directional, suite-bound keys.
//! - [`cookie`]: mac1 / mac2 and cookie replies against handshake floods.
//! - [`session`]: keys + atomic send counter + replay window of one handshake.
//! - [`Peer`]: everything about one remote node: its sessions (current, older ones
//!   kept until they expire, an unconfirmed new one), the pending handshake with
//!   retransmission, keepalives, rekeys, the packet queue while no session exists.
//! - [`Endpoint`]: owns the peers, the session-index table and the cookie checker;
//!   the single entry for received datagrams.
//!
//! Driving it (quinn style): feed datagrams to [`Endpoint::decapsulate`], outgoing
//! inner packets to [`Peer::encapsulate`]; after either, and after
//! [`Endpoint::handle_timeout`] at [`Endpoint::poll_timeout`], drain
//! [`Endpoint::poll_transmit`] and [`Endpoint::poll_event`]. The host must also check
//! that a decapsulated inner packet's source address is one of the peer's virtual
//! addresses ([`Peer::credential`]): the tunnel authenticates the node, not the
//! addresses inside.
//!
//! `docs/protocol.md` (tunnel section) has every byte and timer.

pub mod cookie;
mod endpoint;
pub mod handshake;
mod peer;
pub mod session;

use std::fmt;
use std::time::Duration;

use crate::credential::CredentialError;
use crate::suite::SuiteError;
use crate::wire::{MessageType, WireError};

pub use endpoint::{AddPeerError, Endpoint, MAX_PEERS};
pub use handshake::{HandshakeError, LocalIdentity};
pub use peer::{MAX_INNER_PACKET, MAX_SESSIONS, Peer, PeerEvent};
pub use session::Session;

/// Timers and limits of the tunnel. The defaults are WireGuard's; tests shrink them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelConfig {
    /// The initiator of a session starts a new handshake when it sends on a session
    /// this old. (The responder of the session waits a little longer, see `peer`.)
    pub rekey_after_time: Duration,
    /// Nothing is sent or accepted on a session this old.
    pub reject_after_time: Duration,
    /// A handshake round gives up (and drops queued packets) after this long.
    pub rekey_attempt_time: Duration,
    /// First retransmission timeout of a TunnelRequest; doubles per attempt.
    pub rekey_timeout: Duration,
    /// Cap of the doubling retransmission timeout.
    pub rekey_timeout_max: Duration,
    /// After receiving data with nothing to send back, a keepalive goes out after this.
    pub keepalive_timeout: Duration,
    /// Start a rekey after this many packets under one key (lowered per suite, see
    /// [`session::suite_message_limits`]).
    pub rekey_after_messages: u64,
    /// Refuse to send or accept counters at or beyond this.
    pub reject_after_messages: u64,
    /// Inner packets held while no session exists; the oldest is dropped when full.
    pub max_queued_packets: usize,
}

pub const REKEY_AFTER_TIME: Duration = Duration::from_secs(120);
pub const REJECT_AFTER_TIME: Duration = Duration::from_secs(180);
pub const REKEY_ATTEMPT_TIME: Duration = Duration::from_secs(90);
pub const REKEY_TIMEOUT: Duration = Duration::from_secs(5);
pub const REKEY_TIMEOUT_MAX: Duration = Duration::from_secs(20);
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
pub const REKEY_AFTER_MESSAGES: u64 = 1 << 60;
pub const REJECT_AFTER_MESSAGES: u64 = u64::MAX - crate::replay::WINDOW_BITS - 1;
pub const MAX_QUEUED_PACKETS: usize = 64;

impl Default for TunnelConfig {
    fn default() -> Self {
        Self {
            rekey_after_time: REKEY_AFTER_TIME,
            reject_after_time: REJECT_AFTER_TIME,
            rekey_attempt_time: REKEY_ATTEMPT_TIME,
            rekey_timeout: REKEY_TIMEOUT,
            rekey_timeout_max: REKEY_TIMEOUT_MAX,
            keepalive_timeout: KEEPALIVE_TIMEOUT,
            rekey_after_messages: REKEY_AFTER_MESSAGES,
            reject_after_messages: REJECT_AFTER_MESSAGES,
            max_queued_packets: MAX_QUEUED_PACKETS,
        }
    }
}

/// Identifies a peer within its [`Endpoint`]. Every session index the peer hands
/// out is this id shifted left by 8 plus a random byte, so routing a data packet to
/// its peer is one shift.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PeerId(pub(crate) u32);

impl PeerId {
    pub fn index(self) -> u32 {
        self.0
    }
}

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "peer#{}", self.0)
    }
}

/// What [`Peer::encapsulate`] did with an inner packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encapsulated {
    /// `out[..len]` is a sealed data packet for the peer.
    Sealed(usize),
    /// No session yet: the packet was queued and `out[..len]` is a TunnelRequest to
    /// send to the peer.
    HandshakeNeeded(usize),
    /// No session yet and a handshake is already under way: the packet was queued.
    Queued,
}

/// Why an inner packet could not be encapsulated (it was not queued either).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncapsulateError {
    #[error("output buffer too small: need {needed} bytes, have {available}")]
    BufferTooSmall { needed: usize, available: usize },
    #[error("inner packet of {0} bytes is too large")]
    PacketTooLarge(usize),
    #[error("crypto suite failed: {0}")]
    Suite(#[from] SuiteError),
    #[error("handshake could not be built: {0}")]
    Handshake(#[from] HandshakeError),
}

/// What a received datagram turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decapsulated {
    /// An inner IP packet, decrypted in place at `datagram[range]`.
    Data {
        peer: PeerId,
        range: std::ops::Range<usize>,
    },
    /// A control message (a `wire::node` body), decrypted in place at
    /// `datagram[range]`.
    Control {
        peer: PeerId,
        range: std::ops::Range<usize>,
    },
    /// An empty capsule: proof of life, nothing to deliver.
    Keepalive { peer: PeerId },
    /// Send `out[..len]` back to the datagram's source: a TunnelResponse, a
    /// CookieReply (no peer yet) or a TunnelRequest retried with a fresh cookie.
    WriteToNetwork { peer: Option<PeerId>, len: usize },
    /// Our handshake with `peer` completed; drain [`Endpoint::poll_transmit`] to send
    /// queued packets (or the confirming keepalive).
    Established { peer: PeerId },
}

/// Why a received datagram was dropped. Every drop is counted in [`TunnelStats`];
/// none is ever answered except as described on [`Decapsulated::WriteToNetwork`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DropReason {
    #[error("datagram truncated")]
    Truncated,
    #[error("malformed datagram: {0}")]
    Malformed(WireError),
    #[error("datagram of type {0:?} is not tunnel traffic")]
    NotTunnel(MessageType),
    #[error("no session or handshake with this index")]
    UnknownIndex,
    #[error("handshake from a node that is not a configured peer")]
    UnknownPeer,
    #[error("replayed or too old counter")]
    Replay,
    #[error("authentication tag did not verify")]
    Tampered,
    #[error("session expired")]
    Expired,
    #[error("invalid mac1")]
    Mac1,
    #[error("handshake message failed to authenticate")]
    HandshakeDecrypt,
    #[error("TunnelRequest timestamp not newer than the last one accepted")]
    StaleRequest,
    #[error("peer credential rejected: {0}")]
    BadCredential(CredentialError),
    #[error("suite negotiation tampered with")]
    Downgrade,
    #[error("no crypto suite in common")]
    NoCommonSuite,
    #[error("simultaneous handshake lost the tie-break")]
    SimultaneousHandshake,
    #[error("crypto suite failed: {0}")]
    Suite(SuiteError),
    #[error("output buffer too small: need {needed} bytes, have {available}")]
    BufferTooSmall { needed: usize, available: usize },
}

impl From<WireError> for DropReason {
    fn from(e: WireError) -> Self {
        match e {
            WireError::Truncated => Self::Truncated,
            WireError::BufferTooSmall { needed, available } => {
                Self::BufferTooSmall { needed, available }
            }
            other => Self::Malformed(other),
        }
    }
}

impl From<HandshakeError> for DropReason {
    fn from(e: HandshakeError) -> Self {
        match e {
            HandshakeError::Malformed(w) => w.into(),
            HandshakeError::Mac1 => Self::Mac1,
            HandshakeError::Decrypt => Self::HandshakeDecrypt,
            HandshakeError::UnexpectedIndex => Self::UnknownIndex,
            HandshakeError::BadCredential(c) => Self::BadCredential(c),
            HandshakeError::Downgrade => Self::Downgrade,
            HandshakeError::NoCommonSuite => Self::NoCommonSuite,
            HandshakeError::Suite(s) => Self::Suite(s),
        }
    }
}

/// Counters of everything the tunnel sent, received and dropped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TunnelStats {
    pub data_sent: u64,
    pub data_received: u64,
    pub control_sent: u64,
    pub control_received: u64,
    pub keepalives_sent: u64,
    pub keepalives_received: u64,
    /// TunnelRequests sent, retransmissions included.
    pub requests_sent: u64,
    pub responses_sent: u64,
    pub cookie_replies_sent: u64,
    pub cookie_replies_received: u64,
    /// Handshakes we initiated that completed.
    pub handshakes_completed: u64,
    /// Handshakes we answered that the initiator confirmed by sending on them.
    pub sessions_confirmed: u64,
    /// Handshake rounds abandoned after `rekey_attempt_time`.
    pub handshake_timeouts: u64,
    /// Queued inner packets dropped (queue full, or the handshake failed).
    pub queue_dropped: u64,
    pub dropped_truncated: u64,
    pub dropped_malformed: u64,
    pub dropped_not_tunnel: u64,
    pub dropped_unknown_index: u64,
    pub dropped_replay: u64,
    pub dropped_tampered: u64,
    pub dropped_expired: u64,
    pub dropped_mac1: u64,
    pub rejected_unknown_peer: u64,
    pub rejected_decrypt: u64,
    pub rejected_stale_request: u64,
    pub rejected_bad_credential: u64,
    pub rejected_downgrade: u64,
    pub rejected_no_common_suite: u64,
    pub rejected_simultaneous: u64,
    pub dropped_other: u64,
}

impl TunnelStats {
    pub fn record_drop(&mut self, reason: &DropReason) {
        let counter = match reason {
            DropReason::Truncated => &mut self.dropped_truncated,
            DropReason::Malformed(_) => &mut self.dropped_malformed,
            DropReason::NotTunnel(_) => &mut self.dropped_not_tunnel,
            DropReason::UnknownIndex => &mut self.dropped_unknown_index,
            DropReason::UnknownPeer => &mut self.rejected_unknown_peer,
            DropReason::Replay => &mut self.dropped_replay,
            DropReason::Tampered => &mut self.dropped_tampered,
            DropReason::Expired => &mut self.dropped_expired,
            DropReason::Mac1 => &mut self.dropped_mac1,
            DropReason::HandshakeDecrypt => &mut self.rejected_decrypt,
            DropReason::StaleRequest => &mut self.rejected_stale_request,
            DropReason::BadCredential(_) => &mut self.rejected_bad_credential,
            DropReason::Downgrade => &mut self.rejected_downgrade,
            DropReason::NoCommonSuite => &mut self.rejected_no_common_suite,
            DropReason::SimultaneousHandshake => &mut self.rejected_simultaneous,
            DropReason::Suite(_) | DropReason::BufferTooSmall { .. } => &mut self.dropped_other,
        };
        *counter += 1;
    }

    /// Every datagram dropped, for any reason.
    pub fn dropped_total(&self) -> u64 {
        self.dropped_truncated
            + self.dropped_malformed
            + self.dropped_not_tunnel
            + self.dropped_unknown_index
            + self.dropped_replay
            + self.dropped_tampered
            + self.dropped_expired
            + self.dropped_mac1
            + self.rejected_unknown_peer
            + self.rejected_decrypt
            + self.rejected_stale_request
            + self.rejected_bad_credential
            + self.rejected_downgrade
            + self.rejected_no_common_suite
            + self.rejected_simultaneous
            + self.dropped_other
    }

    /// Adds `other` into `self`.
    pub fn merge(&mut self, other: &TunnelStats) {
        macro_rules! add {
            ($($field:ident),*) => { $( self.$field += other.$field; )* };
        }
        add!(
            data_sent,
            data_received,
            control_sent,
            control_received,
            keepalives_sent,
            keepalives_received,
            requests_sent,
            responses_sent,
            cookie_replies_sent,
            cookie_replies_received,
            handshakes_completed,
            sessions_confirmed,
            handshake_timeouts,
            queue_dropped,
            dropped_truncated,
            dropped_malformed,
            dropped_not_tunnel,
            dropped_unknown_index,
            dropped_replay,
            dropped_tampered,
            dropped_expired,
            dropped_mac1,
            rejected_unknown_peer,
            rejected_decrypt,
            rejected_stale_request,
            rejected_bad_credential,
            rejected_downgrade,
            rejected_no_common_suite,
            rejected_simultaneous,
            dropped_other
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_can_be_shared_across_threads() {
        fn send_sync<T: Send + Sync>() {}
        // A host seals batches from several threads through `&Session`, and moves
        // endpoints between threads.
        send_sync::<Session>();
        send_sync::<Endpoint>();
        send_sync::<Peer>();
    }

    #[test]
    fn defaults_are_wireguards() {
        let c = TunnelConfig::default();
        assert_eq!(c.rekey_after_time, Duration::from_secs(120));
        assert_eq!(c.reject_after_time, Duration::from_secs(180));
        assert_eq!(c.keepalive_timeout, Duration::from_secs(10));
        assert_eq!(c.rekey_timeout, Duration::from_secs(5));
        assert_eq!(c.rekey_attempt_time, Duration::from_secs(90));
        assert!(c.reject_after_messages > c.rekey_after_messages);
    }

    #[test]
    fn every_drop_is_counted_once() {
        let reasons = [
            DropReason::Truncated,
            DropReason::Malformed(WireError::TrailingBytes(1)),
            DropReason::NotTunnel(MessageType::Signal),
            DropReason::UnknownIndex,
            DropReason::UnknownPeer,
            DropReason::Replay,
            DropReason::Tampered,
            DropReason::Expired,
            DropReason::Mac1,
            DropReason::HandshakeDecrypt,
            DropReason::StaleRequest,
            DropReason::BadCredential(CredentialError::BadSignature),
            DropReason::Downgrade,
            DropReason::NoCommonSuite,
            DropReason::SimultaneousHandshake,
            DropReason::Suite(SuiteError::AuthenticationFailed),
            DropReason::BufferTooSmall {
                needed: 2,
                available: 1,
            },
        ];
        let mut stats = TunnelStats::default();
        for (i, r) in reasons.iter().enumerate() {
            stats.record_drop(r);
            assert_eq!(stats.dropped_total(), i as u64 + 1);
        }
        let mut sum = TunnelStats::default();
        sum.merge(&stats);
        sum.merge(&stats);
        assert_eq!(sum.dropped_total(), 2 * reasons.len() as u64);
    }
}
