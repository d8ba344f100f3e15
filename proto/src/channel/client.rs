//! The node's side of one channel: builds hellos, completes the handshake from an
//! accept, and seals and opens `Signal` datagrams under the channel keys.
//!
//! A [`ChannelClient`] keeps the channel in use (`current`) and the one before it
//! (`previous`, open-only) so that replies sealed just before a re-handshake still
//! arrive, plus the last few hellos still waiting for an accept (every retry is a fresh
//! hello with a new ephemeral key and timestamp, since the cloud refuses a timestamp it
//! has already seen, and an accept for an earlier retry must still complete).

use std::ops::Range;
use std::time::{Duration, Instant};

use ed25519_dalek::VerifyingKey;
use rand_core::{CryptoRng, RngCore};
use x25519_dalek::{PublicKey, StaticSecret};

use super::transport::{Role, Transport};
use super::{
    ChannelError, DropReason, PROLOGUE, Purpose, REKEY_AFTER_MESSAGES, REKEY_MARGIN,
    channel_public_key, fresh_index,
};
use crate::cookie::{self, ReceivedCookie};
use crate::noise::{KeyFingerprint, MESSAGE1_OVERHEAD, MESSAGE2_PAYLOAD_OFFSET, SymmetricState};
use crate::time::UnixTime;
use crate::wire::WireError;
use crate::wire::channel::{
    ACCEPT_HEADER_LEN, AcceptPayload, ChannelAcceptPacket, ChannelCookiePacket, ChannelHelloPacket,
    HELLO_HEADER_LEN, HELLO_OVERHEAD, HELLO_PAYLOAD_OFFSET, HelloPayload, HelloPurpose, MAC_LEN,
    Service, SignalPacket, emit_hello_header,
};

/// Hellos kept waiting for an accept; older retries are forgotten.
const MAX_PENDING_HELLOS: usize = 3;
/// How long a cookie from the cloud stays usable (the cloud rotates its secret every
/// two minutes).
const COOKIE_LIFETIME: Duration = Duration::from_secs(120);

/// The node's handshake and channel keys for one cloud service.
pub struct ChannelClient {
    cloud: CloudPublic,
    node_static: StaticSecret,
    node_public: PublicKey,
    service: Service,
    purpose: Purpose,
    pending: Vec<Initiation>,
    current: Option<Transport>,
    previous: Option<Transport>,
    last_timestamp: u64,
    cookie: Option<ReceivedCookie>,
}

/// What the node learned when a channel came up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Established {
    /// The cloud's wall clock when it accepted, in unix milliseconds.
    pub server_unix_millis: u64,
    /// Cloud clock minus ours (resolution: a second). Credentials are checked with a
    /// few minutes of tolerance; a larger offset means this node's clock is wrong.
    pub clock_offset_millis: i64,
    /// How long the cloud keeps this channel.
    pub lifetime: Duration,
}

struct Initiation {
    sender_index: u32,
    state: SymmetricState,
    ephemeral: StaticSecret,
    mac1: [u8; MAC_LEN],
}

/// What a node derives from the cloud key it pins.
#[derive(Clone)]
struct CloudPublic {
    /// The channel key: the responder's static key of every handshake.
    dh: [u8; 32],
    /// Keys `mac1` of hellos.
    mac1_key: [u8; 32],
    /// Seals cookie replies.
    cookie_key: [u8; 32],
}

impl CloudPublic {
    fn new(cloud: &VerifyingKey) -> Self {
        let dh = channel_public_key(cloud);
        Self {
            mac1_key: cookie::mac1_key(&dh),
            cookie_key: cookie::cookie_key(&dh),
            dh,
        }
    }
}

impl std::fmt::Debug for CloudPublic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CloudPublic")
            .field("dh", &KeyFingerprint(&self.dh))
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for ChannelClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelClient")
            .field("service", &self.service)
            .field("purpose", &self.purpose)
            .field("node_public", &KeyFingerprint(self.node_public.as_bytes()))
            .field("cloud", &self.cloud)
            .field("pending_hellos", &self.pending.len())
            .field("current", &self.current)
            .field("previous", &self.previous)
            .finish_non_exhaustive()
    }
}

impl ChannelClient {
    /// `cloud_public` is the cloud signing key the node pins from its config;
    /// `node_static` the node's static X25519 key (the one its credential names).
    pub fn new(
        cloud_public: &VerifyingKey,
        node_static: &StaticSecret,
        service: Service,
        purpose: Purpose,
    ) -> Self {
        Self {
            cloud: CloudPublic::new(cloud_public),
            node_public: PublicKey::from(node_static),
            node_static: node_static.clone(),
            service,
            purpose,
            pending: Vec::new(),
            current: None,
            previous: None,
            last_timestamp: 0,
            cookie: None,
        }
    }

    pub fn service(&self) -> Service {
        self.service
    }

    pub fn purpose(&self) -> &Purpose {
        &self.purpose
    }

    /// Replaces what later hellos present, e.g. a renewed credential. The channel in
    /// use is not affected.
    pub fn set_purpose(&mut self, purpose: Purpose) {
        self.purpose = purpose;
    }

    pub fn node_public(&self) -> [u8; 32] {
        self.node_public.to_bytes()
    }

    /// Writes a fresh hello into `out` and returns its length. Earlier hellos stay
    /// valid for a matching accept (up to a few).
    pub fn start(
        &mut self,
        now: Instant,
        unix_now: UnixTime,
        rng: &mut (impl RngCore + CryptoRng),
        out: &mut [u8],
    ) -> Result<usize, ChannelError> {
        // Strictly increasing even when the wall clock stalls or steps back.
        let timestamp = unix_now
            .0
            .saturating_mul(1000)
            .max(self.last_timestamp.saturating_add(1));
        let payload = HelloPayload {
            timestamp_millis: timestamp,
            purpose: match &self.purpose {
                Purpose::Login => HelloPurpose::Login,
                Purpose::Credential(c) => HelloPurpose::Credential(c.clone()),
            },
        };
        let payload_len = payload.buffer_len();
        let len = HELLO_OVERHEAD + payload_len;
        let available = out.len();
        let out = out.get_mut(..len).ok_or(WireError::BufferTooSmall {
            needed: len,
            available,
        })?;
        let sender_index = fresh_index(rng, |index| self.owns_index(index));
        emit_hello_header(self.service, sender_index, out)?;
        payload.emit(&mut out[HELLO_PAYLOAD_OFFSET..])?;

        let ephemeral = StaticSecret::random_from_rng(&mut *rng);
        let mut state =
            SymmetricState::initialize(&[PROLOGUE, &out[..HELLO_HEADER_LEN]], &self.cloud.dh);
        let noise_len = state
            .write_message1(
                &ephemeral,
                &self.node_static,
                &self.cloud.dh,
                &mut out[HELLO_HEADER_LEN..],
                payload_len,
            )
            .map_err(|_| ChannelError::WeakCloudKey)?;
        debug_assert_eq!(noise_len, MESSAGE1_OVERHEAD + payload_len);

        let mut packet = ChannelHelloPacket::new_unchecked(&mut out[..]);
        let mac1 = cookie::mac(&self.cloud.mac1_key, packet.mac1_input());
        packet.set_mac1(&mac1);
        let cookie = self
            .cookie
            .as_ref()
            .and_then(|c| c.fresh(now, COOKIE_LIFETIME));
        packet.set_mac2(&cookie::mac2(cookie, packet.mac2_input()));

        self.last_timestamp = timestamp;
        if self.pending.len() == MAX_PENDING_HELLOS {
            self.pending.remove(0);
        }
        self.pending.push(Initiation {
            sender_index,
            state,
            ephemeral,
            mac1,
        });
        Ok(len)
    }

    /// Completes the handshake from a `ChannelAccept`. The new channel becomes the
    /// current one; the one it replaces can still open datagrams until it expires.
    /// A forged or stray accept changes nothing.
    pub fn handle_accept(
        &mut self,
        now: Instant,
        unix_now: UnixTime,
        datagram: &mut [u8],
    ) -> Result<Established, DropReason> {
        let packet =
            ChannelAcceptPacket::new_checked(&datagram[..]).map_err(|_| DropReason::Malformed)?;
        if packet.reserved() != 0 {
            return Err(DropReason::Malformed);
        }
        let receiver_index = packet.receiver_index();
        let sender_index = packet.sender_index();
        let position = self
            .pending
            .iter()
            .position(|i| i.sender_index == receiver_index)
            .ok_or(DropReason::UnknownChannel)?;
        let noise_range = packet.noise_range();
        // Work on a copy: a forged accept must not spoil the pending handshake.
        let mut state = self.pending[position].state.clone();
        state.mix_hash(&datagram[..ACCEPT_HEADER_LEN]);
        let payload_len = state
            .read_message2(
                &self.pending[position].ephemeral,
                &self.node_static,
                &mut datagram[noise_range.clone()],
            )
            .map_err(|_| DropReason::DecryptFailed)?;
        let payload_start = noise_range.start + MESSAGE2_PAYLOAD_OFFSET;
        let payload = AcceptPayload::parse(&datagram[payload_start..payload_start + payload_len])
            .map_err(|_| DropReason::Malformed)?;
        let lifetime = Duration::from_secs(u64::from(payload.lifetime_secs));
        let transport = Transport::new(
            Role::Node,
            &state,
            receiver_index,
            sender_index,
            now,
            lifetime,
        );
        self.previous = self.current.replace(transport);
        self.pending.clear();
        let local_millis = i64::try_from(unix_now.0.saturating_mul(1000)).unwrap_or(i64::MAX);
        let server_millis = i64::try_from(payload.server_unix_millis).unwrap_or(i64::MAX);
        Ok(Established {
            server_unix_millis: payload.server_unix_millis,
            clock_offset_millis: server_millis.saturating_sub(local_millis),
            lifetime,
        })
    }

    /// Takes a cookie from a channel cookie reply to one of the pending hellos; the
    /// next hello carries `mac2` computed with it.
    pub fn handle_cookie(&mut self, now: Instant, datagram: &[u8]) -> Result<(), DropReason> {
        let packet =
            ChannelCookiePacket::new_checked(datagram).map_err(|_| DropReason::Malformed)?;
        if packet.reserved() != 0 {
            return Err(DropReason::Malformed);
        }
        let initiation = self
            .pending
            .iter()
            .find(|i| i.sender_index == packet.receiver_index())
            .ok_or(DropReason::UnknownChannel)?;
        let value = cookie::open_cookie(
            &self.cloud.cookie_key,
            &packet.nonce(),
            &packet.encrypted_cookie(),
            &initiation.mac1,
        )
        .ok_or(DropReason::DecryptFailed)?;
        self.cookie = Some(ReceivedCookie::new(value, now));
        Ok(())
    }

    /// Seals `inner` on the current channel into a `Signal` in `out`.
    pub fn seal(
        &mut self,
        now: Instant,
        inner: &[u8],
        out: &mut [u8],
    ) -> Result<usize, ChannelError> {
        self.current
            .as_mut()
            .ok_or(ChannelError::NotConnected)?
            .seal(now, inner, out)
    }

    /// Opens a `Signal` in place (on the current or the previous channel); returns the
    /// range of `datagram` that now holds the inner message.
    pub fn open(&mut self, now: Instant, datagram: &mut [u8]) -> Result<Range<usize>, DropReason> {
        let index = SignalPacket::new_checked(&datagram[..])
            .map_err(|_| DropReason::Malformed)?
            .receiver_index();
        [self.current.as_mut(), self.previous.as_mut()]
            .into_iter()
            .flatten()
            .find(|t| t.local_index == index)
            .ok_or(DropReason::UnknownChannel)?
            .open(now, datagram)
    }

    /// True when a channel is up and not expired.
    pub fn is_established(&self, now: Instant) -> bool {
        self.current.as_ref().is_some_and(|t| !t.is_expired(now))
    }

    /// True while hellos are waiting for an accept.
    pub fn is_handshaking(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Forgets the hellos waiting for an accept.
    pub fn abandon_handshake(&mut self) {
        self.pending.clear();
    }

    /// When the current channel should be replaced: a margin before it expires, or now
    /// when it has sealed many messages.
    pub fn rekey_at(&self) -> Option<Instant> {
        let t = self.current.as_ref()?;
        if t.messages_sent() >= REKEY_AFTER_MESSAGES {
            return Some(t.established);
        }
        let lifetime = t.expires.duration_since(t.established);
        let margin = REKEY_MARGIN.min(lifetime / 3);
        Some(t.expires - margin)
    }

    /// When the current channel came up.
    pub fn established_at(&self) -> Option<Instant> {
        self.current.as_ref().map(|t| t.established)
    }

    /// When the current channel stops working.
    pub fn expires_at(&self) -> Option<Instant> {
        self.current.as_ref().map(|t| t.expires)
    }

    /// The earliest instant a channel (current or previous) expires; timer input.
    pub fn next_expiry(&self) -> Option<Instant> {
        [self.current.as_ref(), self.previous.as_ref()]
            .into_iter()
            .flatten()
            .map(|t| t.expires)
            .min()
    }

    /// When the last datagram authenticated on the current channel (or when it was
    /// established).
    pub fn last_received(&self) -> Option<Instant> {
        self.current.as_ref().map(|t| t.last_received)
    }

    /// True if `index` is one this client chose (a pending hello or a channel), so
    /// that a host sharing one socket between channel and tunnel can route cookie
    /// replies.
    pub fn owns_index(&self, index: u32) -> bool {
        self.pending.iter().any(|i| i.sender_index == index)
            || [self.current.as_ref(), self.previous.as_ref()]
                .into_iter()
                .flatten()
                .any(|t| t.local_index == index)
    }

    /// Drops channels that have expired.
    pub fn expire(&mut self, now: Instant) {
        if self.previous.as_ref().is_some_and(|t| t.is_expired(now)) {
            self.previous = None;
        }
        if self.current.as_ref().is_some_and(|t| t.is_expired(now)) {
            self.current = None;
        }
    }
}
