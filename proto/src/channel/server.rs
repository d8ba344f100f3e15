//! The cloud's side of the channel, one [`ChannelServer`] per service (AS, NMS, TRS).
//!
//! It answers valid hellos with an accept, opens `Signal` datagrams into requests
//! tagged with the authenticated peer, and seals replies and pushes. All of its state
//! is bounded: the channel table (evicting the channel closest to expiry when full),
//! at most two channels per node key (the newest and the one before), and the memory of
//! hello timestamps (per node key, forgotten once a timestamp falls out of the
//! acceptance window). Anything that does not verify is dropped, counted and never
//! answered; the only answer to an unauthenticated datagram is the cookie reply to a
//! hello with a valid `mac1` while the caller reports load.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ed25519_dalek::{SigningKey, VerifyingKey};
use rand_core::{CryptoRng, RngCore};
use x25519_dalek::StaticSecret;
use zeroize::Zeroize;

use super::transport::{Role, Transport};
use super::{
    ChannelError, DEFAULT_LIFETIME, DropCounters, DropReason, EXPIRY_GRACE, PROLOGUE, PurposeKind,
    channel_public_key, fresh_index,
};
use crate::cookie::{AddressForm, CookieChecker, SealedCookie};
use crate::credential::SignedCredential;
use crate::noise::{KeyFingerprint, MESSAGE2_PAYLOAD_OFFSET, SymmetricState};
use crate::time::UnixTime;
use crate::wire::channel::{
    ACCEPT_HEADER_LEN, ACCEPT_LEN, ACCEPT_PAYLOAD_LEN, AcceptPayload, COOKIE_REPLY_LEN,
    ChannelCookieRepr, ChannelHelloPacket, HELLO_HEADER_LEN, HELLO_PAYLOAD_OFFSET, HelloPayload,
    HelloPurpose, Service, SignalPacket, emit_accept_header,
};
use crate::wire::{MessageType, WireError, classify};

/// What one service accepts and how much state it keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    pub service: Service,
    /// Hellos that log in without a credential. Only the AS turns this on.
    pub accept_login: bool,
    /// Hellos that present a credential.
    pub accept_credential: bool,
    /// How long a channel lasts (capped at the remaining validity of the credential
    /// presented); announced to the node in the accept.
    pub lifetime: Duration,
    /// Channels kept at most; when full, the one closest to expiry is evicted.
    pub max_channels: usize,
    /// Node keys whose last hello timestamp is remembered at most.
    pub hello_memory: usize,
    /// How far a hello timestamp may be from the server clock, either way. Hellos
    /// outside it are refused, which is what lets the server forget old timestamps.
    pub hello_window: Duration,
}

impl ServerConfig {
    /// Defaults for `service`: the AS accepts logins and credentials, every other
    /// service credentials only.
    pub fn new(service: Service) -> Self {
        Self {
            service,
            accept_login: service == Service::Auth,
            accept_credential: true,
            lifetime: DEFAULT_LIFETIME,
            max_channels: 16 * 1024,
            hello_memory: 64 * 1024,
            hello_window: Duration::from_secs(600),
        }
    }
}

/// Names one channel of a server. A handle stays unique for the server's life even
/// when an index is reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelHandle {
    index: u32,
    serial: u64,
}

impl ChannelHandle {
    /// The index nodes address this channel with.
    pub fn index(&self) -> u32 {
        self.index
    }
}

/// Who is at the other end of a channel, as the handshake proved it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    /// The node's static X25519 key, proven by the handshake.
    pub static_public: [u8; 32],
    pub purpose: PurposeKind,
    /// For [`PurposeKind::Credential`]: the credential, verified when the channel
    /// opened (signature, validity at that time, and that it names `static_public`).
    pub credential: Option<SignedCredential>,
}

/// What [`ChannelServer::handle_datagram`] made of a datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerEvent {
    /// A new channel: send `out[..len]` (the accept) to the datagram's source.
    Accept {
        channel: ChannelHandle,
        peer: Arc<PeerIdentity>,
        len: usize,
    },
    /// Under load, a hello without a valid cookie: send `out[..len]` (a cookie reply)
    /// to the source; the hello was not processed.
    CookieReply { len: usize },
    /// An authenticated inner message, now in `datagram[inner]` in the clear. It may
    /// hold a password: the caller wipes the buffer once done with it.
    Request {
        channel: ChannelHandle,
        peer: Arc<PeerIdentity>,
        src: SocketAddr,
        inner: Range<usize>,
    },
    /// Dropped and counted; never answered.
    Dropped(DropReason),
}

/// One cloud service's side of all node channels.
pub struct ChannelServer {
    static_secret: StaticSecret,
    /// The channel key nodes pin (the Montgomery form of the cloud key).
    static_public: [u8; 32],
    trusted: Vec<VerifyingKey>,
    config: ServerConfig,
    channels: HashMap<u32, ServerChannel>,
    by_key: HashMap<[u8; 32], KeyChannels>,
    /// (expiry, serial, index) of every channel, soonest first.
    expiry: BTreeSet<(Instant, u64, u32)>,
    hellos: HelloMemory,
    next_serial: u64,
    under_load: bool,
    cookies: CookieChecker,
    drops: DropCounters,
    evicted: u64,
}

struct ServerChannel {
    serial: u64,
    transport: Transport,
    peer: Arc<PeerIdentity>,
    addr: SocketAddr,
}

#[derive(Debug, Clone, Copy)]
struct KeyChannels {
    current: ChannelHandle,
    previous: Option<ChannelHandle>,
}

impl std::fmt::Debug for ChannelServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelServer")
            .field("config", &self.config)
            .field("static_public", &KeyFingerprint(&self.static_public))
            .field("channels", &self.channels.len())
            .field("under_load", &self.under_load)
            .field("drops", &self.drops)
            .finish_non_exhaustive()
    }
}

impl ChannelServer {
    /// `cloud_key` is the cloud's Ed25519 key, whose Montgomery form is the channel key
    /// nodes pin; `trusted` the keys credentials may be signed with (the cloud key is
    /// always among them).
    pub fn new(cloud_key: &SigningKey, trusted: Vec<VerifyingKey>, config: ServerConfig) -> Self {
        let mut scalar = cloud_key.to_scalar_bytes();
        let static_secret = StaticSecret::from(scalar);
        scalar.zeroize();
        let cloud_public = cloud_key.verifying_key();
        let static_public = channel_public_key(&cloud_public);
        let mut trusted = trusted;
        if !trusted.contains(&cloud_public) {
            trusted.push(cloud_public);
        }
        Self {
            static_secret,
            static_public,
            cookies: CookieChecker::with_address_form(&static_public, AddressForm::V4Mapped),
            trusted,
            hellos: HelloMemory::new(config.hello_memory),
            config,
            channels: HashMap::new(),
            by_key: HashMap::new(),
            expiry: BTreeSet::new(),
            next_serial: 0,
            under_load: false,
            drops: DropCounters::default(),
            evicted: 0,
        }
    }

    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    /// While under load, hellos must carry a cookie for their source address (`mac2`)
    /// before the server spends Diffie-Hellman operations on them.
    pub fn set_under_load(&mut self, under_load: bool) {
        self.under_load = under_load;
    }

    /// Processes one received datagram. `out` receives an accept or a cookie reply
    /// and must hold at least [`ACCEPT_LEN`] bytes. Only a caller error (a short `out`)
    /// is an `Err`.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        unix_now: UnixTime,
        src: SocketAddr,
        datagram: &mut [u8],
        rng: &mut (impl RngCore + CryptoRng),
        out: &mut [u8],
    ) -> Result<ServerEvent, ChannelError> {
        let needed = ACCEPT_LEN.max(COOKIE_REPLY_LEN);
        if out.len() < needed {
            return Err(WireError::BufferTooSmall {
                needed,
                available: out.len(),
            }
            .into());
        }
        let result = match classify(datagram) {
            Err(e) => Err(DropReason::from_classify(e)),
            Ok(MessageType::ChannelHello) => {
                self.handle_hello(now, unix_now, src, datagram, rng, out)
            }
            Ok(MessageType::Signal) => self.handle_signal(now, src, datagram),
            Ok(_) => Err(DropReason::UnexpectedType),
        };
        Ok(result.unwrap_or_else(|reason| {
            self.drops.record(reason);
            ServerEvent::Dropped(reason)
        }))
    }

    /// Seals `inner` (a reply or a push) on `channel`; returns the datagram length in
    /// `out` and the address the node last sent from.
    pub fn seal_to(
        &mut self,
        now: Instant,
        channel: ChannelHandle,
        inner: &[u8],
        out: &mut [u8],
    ) -> Result<(usize, SocketAddr), ChannelError> {
        let ch = self
            .channels
            .get_mut(&channel.index)
            .filter(|c| c.serial == channel.serial)
            .ok_or(ChannelError::UnknownChannel)?;
        let len = ch.transport.seal(now, inner, out).map_err(|e| match e {
            ChannelError::NotConnected => ChannelError::UnknownChannel,
            other => other,
        })?;
        Ok((len, ch.addr))
    }

    /// The channel to push to for a node key: of its (at most two) live channels, the
    /// one the node last sent on, since that is the one it surely has the keys for.
    pub fn channel_for(&self, static_public: &[u8; 32]) -> Option<ChannelHandle> {
        let kc = self.by_key.get(static_public)?;
        let received = |h: ChannelHandle| {
            self.channels
                .get(&h.index)
                .filter(|c| c.serial == h.serial)
                .map(|c| c.transport.last_received)
        };
        match kc.previous {
            Some(prev) if received(prev) > received(kc.current) => Some(prev),
            _ => Some(kc.current),
        }
    }

    pub fn peer(&self, channel: ChannelHandle) -> Option<&Arc<PeerIdentity>> {
        self.channels
            .get(&channel.index)
            .filter(|c| c.serial == channel.serial)
            .map(|c| &c.peer)
    }

    /// Forgets a channel (e.g. after a logout); later datagrams on it are dropped.
    pub fn close(&mut self, channel: ChannelHandle) {
        self.remove_channel(channel);
    }

    /// Removes expired channels.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(&(at, serial, index)) = self.expiry.first() {
            if at > now {
                break;
            }
            self.remove_channel(ChannelHandle { index, serial });
        }
    }

    /// When the next channel expires.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.expiry.first().map(|e| e.0)
    }

    pub fn channel_count(&self) -> usize {
        self.channels.len()
    }

    pub fn drops(&self) -> &DropCounters {
        &self.drops
    }

    /// Channels evicted because the table was full.
    pub fn evictions(&self) -> u64 {
        self.evicted
    }

    fn handle_hello(
        &mut self,
        now: Instant,
        unix_now: UnixTime,
        src: SocketAddr,
        datagram: &mut [u8],
        rng: &mut (impl RngCore + CryptoRng),
        out: &mut [u8],
    ) -> Result<ServerEvent, DropReason> {
        let hello = &datagram[..];
        let packet = ChannelHelloPacket::new_checked(hello).map_err(|_| DropReason::Malformed)?;
        if packet.reserved() != 0 || packet.service() != self.config.service as u8 {
            return Err(DropReason::Malformed);
        }
        // mac1 first: junk costs one HMAC, not three Diffie-Hellman operations.
        let (mac1_at, mac2_at) = (packet.mac1_input().len(), packet.mac2_input().len());
        if !self.cookies.verify_mac1(hello, mac1_at) {
            return Err(DropReason::BadMac1);
        }
        if self.under_load && !self.cookies.verify_mac2(now, rng, src, hello, mac2_at) {
            let SealedCookie {
                nonce,
                encrypted_cookie,
            } = self.cookies.seal_cookie(now, rng, src, &packet.mac1());
            let len = ChannelCookieRepr {
                receiver_index: packet.sender_index(),
                nonce,
                encrypted_cookie,
            }
            .emit(out)
            .expect("handle_datagram checked that out holds a cookie reply");
            return Ok(ServerEvent::CookieReply { len });
        }
        let sender_index = packet.sender_index();
        let mut header = [0u8; HELLO_HEADER_LEN];
        header.copy_from_slice(packet.header());
        let noise_range = packet.noise_range();

        let mut state = SymmetricState::initialize(&[PROLOGUE, &header], &self.static_public);
        let (node_ephemeral, node_static, payload_len) = state
            .read_message1(&self.static_secret, &mut datagram[noise_range])
            .map_err(|_| DropReason::DecryptFailed)?;
        let payload = &datagram[HELLO_PAYLOAD_OFFSET..HELLO_PAYLOAD_OFFSET + payload_len];
        let payload = HelloPayload::parse(payload).map_err(|_| DropReason::Malformed)?;

        let now_millis = unix_now.0.saturating_mul(1000);
        let window = u64::try_from(self.config.hello_window.as_millis()).unwrap_or(u64::MAX);
        let ts = payload.timestamp_millis;
        if ts > now_millis.saturating_add(window) || ts.saturating_add(window) < now_millis {
            return Err(DropReason::ClockSkew);
        }
        let key = node_static;
        if !self.hellos.is_fresh(&key, ts) {
            return Err(DropReason::Replay);
        }
        let mut lifetime = self.config.lifetime;
        let (purpose, credential) = match payload.purpose {
            HelloPurpose::Login if self.config.accept_login => (PurposeKind::Login, None),
            HelloPurpose::Credential(c) if self.config.accept_credential => {
                let statement = c
                    .verify_for_key(&self.trusted, unix_now, &key)
                    .map_err(|_| DropReason::BadCredential)?;
                let remaining = statement.not_after.0.saturating_sub(unix_now.0).max(1);
                lifetime = lifetime.min(Duration::from_secs(remaining));
                (PurposeKind::Credential, Some(c))
            }
            _ => return Err(DropReason::PurposeRefused),
        };
        self.hellos.record(key, ts, now_millis, window);

        let index = fresh_index(rng, |index| self.channels.contains_key(&index));
        let lifetime_secs = u32::try_from(lifetime.as_secs().max(1)).unwrap_or(u32::MAX);
        let lifetime = Duration::from_secs(u64::from(lifetime_secs));
        let out = &mut out[..ACCEPT_LEN];
        emit_accept_header(index, sender_index, out).map_err(|_| DropReason::Malformed)?;
        AcceptPayload {
            server_unix_millis: now_millis,
            lifetime_secs,
        }
        .emit(&mut out[ACCEPT_HEADER_LEN + MESSAGE2_PAYLOAD_OFFSET..])
        .map_err(|_| DropReason::Malformed)?;
        state.mix_hash(&out[..ACCEPT_HEADER_LEN]);
        let ephemeral = StaticSecret::random_from_rng(&mut *rng);
        state
            .write_message2(
                &ephemeral,
                &node_ephemeral,
                &node_static,
                &mut out[ACCEPT_HEADER_LEN..],
                ACCEPT_PAYLOAD_LEN,
            )
            .map_err(|_| DropReason::DecryptFailed)?;
        let transport = Transport::new(
            Role::Cloud,
            &state,
            index,
            sender_index,
            now,
            lifetime + EXPIRY_GRACE,
        );
        let peer = Arc::new(PeerIdentity {
            static_public: key,
            purpose,
            credential,
        });
        let channel = self.insert_channel(transport, Arc::clone(&peer), src);
        Ok(ServerEvent::Accept {
            channel,
            peer,
            len: ACCEPT_LEN,
        })
    }

    fn handle_signal(
        &mut self,
        now: Instant,
        src: SocketAddr,
        datagram: &mut [u8],
    ) -> Result<ServerEvent, DropReason> {
        let index = SignalPacket::new_checked(&datagram[..])
            .map_err(|_| DropReason::Malformed)?
            .receiver_index();
        let ch = self
            .channels
            .get_mut(&index)
            .ok_or(DropReason::UnknownChannel)?;
        let inner = ch.transport.open(now, datagram)?;
        // Follow the node when its address changes: the datagram authenticated.
        ch.addr = src;
        Ok(ServerEvent::Request {
            channel: ChannelHandle {
                index,
                serial: ch.serial,
            },
            peer: Arc::clone(&ch.peer),
            src,
            inner,
        })
    }

    fn insert_channel(
        &mut self,
        transport: Transport,
        peer: Arc<PeerIdentity>,
        addr: SocketAddr,
    ) -> ChannelHandle {
        while self.channels.len() >= self.config.max_channels.max(1) {
            let Some(&(_, serial, index)) = self.expiry.first() else {
                break;
            };
            self.remove_channel(ChannelHandle { index, serial });
            self.evicted += 1;
        }
        let serial = self.next_serial;
        self.next_serial += 1;
        let handle = ChannelHandle {
            index: transport.local_index,
            serial,
        };
        self.expiry
            .insert((transport.expires, serial, transport.local_index));
        let key = peer.static_public;
        self.channels.insert(
            handle.index,
            ServerChannel {
                serial,
                transport,
                peer,
                addr,
            },
        );
        // At most two channels per node: the new one and, of the two before it, the
        // one the node used last (an accept may have been lost, leaving the node on
        // the older channel).
        let received = |channels: &HashMap<u32, ServerChannel>, h: ChannelHandle| {
            channels
                .get(&h.index)
                .filter(|c| c.serial == h.serial)
                .map(|c| c.transport.last_received)
        };
        let replaced = match self.by_key.get_mut(&key) {
            Some(kc) => {
                let (keep, drop) = match kc.previous {
                    Some(previous)
                        if received(&self.channels, previous)
                            > received(&self.channels, kc.current) =>
                    {
                        (previous, Some(kc.current))
                    }
                    previous => (kc.current, previous),
                };
                kc.previous = Some(keep);
                kc.current = handle;
                drop
            }
            None => {
                self.by_key.insert(
                    key,
                    KeyChannels {
                        current: handle,
                        previous: None,
                    },
                );
                None
            }
        };
        if let Some(oldest) = replaced {
            self.remove_channel(oldest);
        }
        handle
    }

    fn remove_channel(&mut self, handle: ChannelHandle) {
        let Some(ch) = self
            .channels
            .get(&handle.index)
            .filter(|c| c.serial == handle.serial)
        else {
            return;
        };
        self.expiry
            .remove(&(ch.transport.expires, handle.serial, handle.index));
        let key = ch.peer.static_public;
        self.channels.remove(&handle.index);
        if let Some(kc) = self.by_key.get_mut(&key) {
            if kc.current == handle {
                match kc.previous.take() {
                    Some(previous) => kc.current = previous,
                    None => {
                        self.by_key.remove(&key);
                    }
                }
            } else if kc.previous == Some(handle) {
                kc.previous = None;
            }
        }
    }
}

/// The last accepted hello timestamp per node key, bounded in size. Entries older
/// than the acceptance window are forgotten (such hellos are refused by the window
/// anyway); when full, the least recently updated entry goes.
#[derive(Debug)]
struct HelloMemory {
    last: HashMap<[u8; 32], u64>,
    /// (key, timestamp) in update order; entries whose timestamp is no longer the
    /// key's latest are skipped when they reach the front.
    order: VecDeque<([u8; 32], u64)>,
    capacity: usize,
}

impl HelloMemory {
    fn new(capacity: usize) -> Self {
        Self {
            last: HashMap::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    fn is_fresh(&self, key: &[u8; 32], timestamp: u64) -> bool {
        self.last.get(key).is_none_or(|&last| timestamp > last)
    }

    fn record(&mut self, key: [u8; 32], timestamp: u64, now_millis: u64, window: u64) {
        self.last.insert(key, timestamp);
        self.order.push_back((key, timestamp));
        while let Some(&(k, t)) = self.order.front() {
            let live = self.last.get(&k) == Some(&t);
            let outside_window = t.saturating_add(window) < now_millis;
            if !live {
                self.order.pop_front();
            } else if outside_window || self.last.len() > self.capacity {
                self.order.pop_front();
                self.last.remove(&k);
            } else {
                break;
            }
        }
        if self.order.len() > 2 * self.capacity {
            let last = &self.last;
            self.order.retain(|(k, t)| last.get(k) == Some(t));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use x25519_dalek::PublicKey;

    #[test]
    fn hello_memory_refuses_old_timestamps_and_stays_bounded() {
        let mut m = HelloMemory::new(3);
        let window = 1_000;
        m.record([1; 32], 10_000, 10_000, window);
        assert!(!m.is_fresh(&[1; 32], 10_000));
        assert!(!m.is_fresh(&[1; 32], 9_999));
        assert!(m.is_fresh(&[1; 32], 10_001));
        for i in 0..100u64 {
            m.record([1; 32], 10_001 + i, 10_000, window);
        }
        assert_eq!(m.last.len(), 1);
        assert!(m.order.len() <= 6);
        for k in 2..=5u8 {
            m.record([k; 32], 10_000, 10_000, window);
        }
        assert_eq!(m.last.len(), 3);
        // Outside the window entries are forgotten as time goes on.
        m.record([9; 32], 20_000, 20_000, window);
        assert_eq!(m.last.len(), 1);
    }

    #[test]
    fn lifetime_defaults_follow_the_service() {
        assert!(ServerConfig::new(Service::Auth).accept_login);
        assert!(!ServerConfig::new(Service::NodeManagement).accept_login);
        assert!(ServerConfig::new(Service::Relay).accept_credential);
    }

    #[test]
    fn channel_public_key_is_what_the_server_derives() {
        let cloud = SigningKey::from_bytes(&[4; 32]);
        let server = ChannelServer::new(&cloud, vec![], ServerConfig::new(Service::Auth));
        assert_eq!(
            PublicKey::from(&server.static_secret).to_bytes(),
            super::super::channel_public_key(&cloud.verifying_key())
        );
        assert_eq!(server.trusted, vec![cloud.verifying_key()]);
    }
}
