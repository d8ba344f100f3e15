//! The authenticated, replay-protected node <-> cloud channel that every signaling
//! message travels in (login, registration, keepalive, directions, pushes).
//!
//! The original CYPHONIC sent its signaling as unauthenticated UDP and logged in with an
//! unsalted SHA-512 of the password. Here a node opens a channel to a cloud service
//! with a one-round-trip Noise IK handshake (`Noise_IK_25519_ChaChaPoly_SHA256`):
//!
//! - the node pins ONE key, the cloud's Ed25519 signing key from its config (the key
//!   that signs credentials). The channel's X25519 static key is the Montgomery form of
//!   that key, so a node that pins the wrong key cannot complete a handshake and a
//!   server without the cloud's secret cannot answer one;
//! - the node's static X25519 key (the one its credential names) is proven by the
//!   handshake; a node that already has a credential presents it in the hello
//!   ([`Purpose::Credential`]), a node without one may only log in ([`Purpose::Login`]);
//! - the password is only ever an inner message of a `Signal` sealed under forward-
//!   secret keys that only the holder of the pinned cloud key can derive. It is never
//!   sent as a hash anyone could replay;
//! - every later datagram is sealed with ChaCha20-Poly1305 under directional keys, with
//!   a counter the receiver checks against a [`crate::replay::ReplayWindow`]; hellos
//!   carry a timestamp the cloud remembers per node key.
//!
//! The pieces, all sans-IO:
//! - [`ChannelClient`]: one node's handshake and channel keys (current and previous);
//! - [`Signaling`]: the node's request layer over it: request ids, retransmission with
//!   exponential backoff, transparent re-handshakes, server pushes, events;
//! - [`ChannelServer`]: one cloud service's side: hello processing, bounded channel
//!   table, hello-replay memory, cookies under load, per-reason drop counters.
//!
//! Inner messages are opaque here with one contract: byte 0 is the message type and
//! bytes 1..5 the request id (big-endian) that a reply repeats. `docs/protocol.md` has
//! the byte layouts and the key schedule.

mod client;
mod server;
mod signaling;
mod transport;

use std::fmt;
use std::time::Duration;

use ed25519_dalek::VerifyingKey;

use crate::credential::SignedCredential;
use crate::wire::WireError;
pub use crate::wire::channel::Service;
pub use client::{ChannelClient, Established};
pub use server::{ChannelHandle, ChannelServer, PeerIdentity, ServerConfig, ServerEvent};
pub use signaling::{Event, Signaling, SignalingConfig};

/// Largest inner message a `Signal` carries, so that a `Signal` fits a 1280-byte IPv6
/// packet with its IP and UDP headers.
pub const MAX_INNER_LEN: usize = 1200;
/// Largest datagram the channel sends; output buffers of this size always suffice.
pub const MAX_DATAGRAM_LEN: usize =
    crate::wire::channel::SIGNAL_HEADER_LEN + MAX_INNER_LEN + crate::wire::channel::TAG_LEN;
/// Bytes 1..5 of an inner message are its request id.
pub const REQUEST_ID_RANGE: std::ops::Range<usize> = 1..5;
/// Shortest inner message that carries a request id.
pub const MIN_REQUEST_LEN: usize = REQUEST_ID_RANGE.end;

/// How long the cloud keeps a channel by default before the node must re-handshake.
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(600);
/// How long before the end of a channel's lifetime the node starts a new handshake
/// (at most a third of the lifetime).
pub const REKEY_MARGIN: Duration = Duration::from_secs(30);
/// How long the cloud keeps accepting a channel past its announced lifetime, for
/// datagrams that were in flight when the node moved to the next channel.
pub const EXPIRY_GRACE: Duration = Duration::from_secs(15);
/// After this many datagrams in one direction the node re-handshakes.
pub const REKEY_AFTER_MESSAGES: u64 = 1 << 20;
/// No side seals or opens a datagram with a counter at or above this.
pub const REJECT_AFTER_MESSAGES: u64 = 1 << 21;

/// What a node proves when it opens a channel.
#[derive(Clone, PartialEq, Eq)]
pub enum Purpose {
    /// No credential yet: the node will log in with its device id and password. Only the
    /// AS accepts this.
    Login,
    /// The node presents its current credential; the cloud checks that it is valid now
    /// and names the static key the handshake proved.
    Credential(SignedCredential),
}

impl Purpose {
    pub fn kind(&self) -> PurposeKind {
        match self {
            Self::Login => PurposeKind::Login,
            Self::Credential(_) => PurposeKind::Credential,
        }
    }
}

impl fmt::Debug for Purpose {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Login => f.write_str("Login"),
            Self::Credential(c) => f
                .debug_tuple("Credential")
                .field(&c.credential().node_id)
                .finish(),
        }
    }
}

/// [`Purpose`] without the credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PurposeKind {
    Login,
    Credential,
}

/// Why a received datagram was dropped. Receivers never answer a dropped datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum DropReason {
    #[error("malformed datagram")]
    Malformed,
    #[error("unknown protocol version")]
    UnknownVersion,
    #[error("message type not expected here")]
    UnexpectedType,
    #[error("hello mac1 does not verify")]
    BadMac1,
    #[error("replayed datagram")]
    Replay,
    #[error("hello timestamp too far from the server clock")]
    ClockSkew,
    #[error("credential rejected")]
    BadCredential,
    #[error("purpose not accepted by this service")]
    PurposeRefused,
    #[error("no such channel")]
    UnknownChannel,
    #[error("decryption or key agreement failed")]
    DecryptFailed,
    #[error("channel expired")]
    Expired,
    #[error("duplicate reply")]
    Duplicate,
}

impl DropReason {
    pub const ALL: [DropReason; 12] = [
        Self::Malformed,
        Self::UnknownVersion,
        Self::UnexpectedType,
        Self::BadMac1,
        Self::Replay,
        Self::ClockSkew,
        Self::BadCredential,
        Self::PurposeRefused,
        Self::UnknownChannel,
        Self::DecryptFailed,
        Self::Expired,
        Self::Duplicate,
    ];

    /// A short stable name for metrics.
    pub fn name(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::UnknownVersion => "unknown_version",
            Self::UnexpectedType => "unexpected_type",
            Self::BadMac1 => "bad_mac1",
            Self::Replay => "replay",
            Self::ClockSkew => "clock_skew",
            Self::BadCredential => "bad_credential",
            Self::PurposeRefused => "purpose_refused",
            Self::UnknownChannel => "unknown_channel",
            Self::DecryptFailed => "decrypt_failed",
            Self::Expired => "expired",
            Self::Duplicate => "duplicate",
        }
    }

    fn from_classify(error: WireError) -> Self {
        match error {
            WireError::UnknownVersion(_) => Self::UnknownVersion,
            WireError::UnknownType(_) | WireError::WrongType => Self::UnexpectedType,
            _ => Self::Malformed,
        }
    }
}

/// How many datagrams were dropped, per [`DropReason`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DropCounters {
    counts: [u64; DropReason::ALL.len()],
}

impl DropCounters {
    pub fn get(&self, reason: DropReason) -> u64 {
        self.counts[reason as usize]
    }

    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Every reason with its count, for exporting as metrics.
    pub fn iter(&self) -> impl Iterator<Item = (DropReason, u64)> + '_ {
        DropReason::ALL.into_iter().map(|r| (r, self.get(r)))
    }

    fn record(&mut self, reason: DropReason) {
        self.counts[reason as usize] += 1;
    }
}

/// Misuse of the channel API or a state that does not allow the operation. Problems
/// with received datagrams are [`DropReason`]s instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChannelError {
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("no channel is established")]
    NotConnected,
    #[error("inner message of {0} bytes is longer than {MAX_INNER_LEN}")]
    TooLong(usize),
    #[error("inner message is too short to carry a request id")]
    NoRequestId,
    #[error("request {0} is already pending")]
    DuplicateRequest(u32),
    #[error("unknown or expired channel")]
    UnknownChannel,
    #[error("the channel has sealed its last message")]
    CounterExhausted,
    #[error("the pinned cloud key is a low-order point")]
    WeakCloudKey,
}

/// The X25519 key the channel uses on the cloud side, derived from the cloud's Ed25519
/// key: the Montgomery form of its public point (`VerifyingKey::to_montgomery`). The
/// cloud's secret is `SigningKey::to_scalar_bytes`, the libsodium conversion.
pub fn channel_public_key(cloud: &VerifyingKey) -> [u8; 32] {
    cloud.to_montgomery().to_bytes()
}

/// Reads the request id of an inner message (bytes 1..5, big-endian).
pub fn request_id(inner: &[u8]) -> Option<u32> {
    let bytes = inner.get(REQUEST_ID_RANGE)?;
    let mut id = [0u8; 4];
    id.copy_from_slice(bytes);
    Some(u32::from_be_bytes(id))
}

/// Mixed into the handshake as the prologue, followed by the hello's cleartext header.
const PROLOGUE: &[u8] = b"cyphonic channel v1";

/// A random index that `taken` does not refuse: the index the other side addresses a
/// hello's answer or a channel's datagrams to.
fn fresh_index(rng: &mut impl rand_core::RngCore, taken: impl Fn(u32) -> bool) -> u32 {
    loop {
        let index = rng.next_u32();
        if !taken(index) {
            return index;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::SigningKey;
    use x25519_dalek::{PublicKey, StaticSecret};

    #[test]
    fn ed25519_conversion_gives_a_matching_x25519_pair() {
        for seed in [[1u8; 32], [0x5a; 32], [0xff; 32]] {
            let signing = SigningKey::from_bytes(&seed);
            let secret = StaticSecret::from(signing.to_scalar_bytes());
            assert_eq!(
                PublicKey::from(&secret).to_bytes(),
                channel_public_key(&signing.verifying_key())
            );
        }
    }

    #[test]
    fn request_id_reads_bytes_one_to_five() {
        assert_eq!(request_id(&[9, 0, 0, 1, 2, 7]), Some(0x0102));
        assert_eq!(request_id(&[9, 0, 0, 1]), None);
    }

    #[test]
    fn drop_reasons_index_their_counters() {
        let mut c = DropCounters::default();
        for (i, r) in DropReason::ALL.into_iter().enumerate() {
            assert_eq!(r as usize, i);
            c.record(r);
        }
        assert_eq!(c.total(), DropReason::ALL.len() as u64);
        assert!(c.iter().all(|(_, n)| n == 1));
    }
}
