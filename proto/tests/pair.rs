//! Two tunnel endpoints talking over a simulated network (after quinn-proto's `Pair`):
//! simulated time, latency with jitter (so reordering), seeded loss, a tap for a man in
//! the middle, and `drive` / `run_until` that advance time to the next delivery or
//! timer. Every scenario of the tunnel's requirements runs here end to end.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cyphonic_proto::credential::{CloudKeyId, Credential, CredentialError, SignedCredential};
use cyphonic_proto::suite::SuiteId;
use cyphonic_proto::suite::software::SoftwareSuites;
use cyphonic_proto::time::UnixTime;
use cyphonic_proto::tunnel::cookie::CookieChecker;
use cyphonic_proto::tunnel::handshake::{self, InitiatorHandshake, LocalIdentity};
use cyphonic_proto::tunnel::{
    Decapsulated, DropReason, Encapsulated, Endpoint, PeerEvent, PeerId, TunnelConfig, TunnelStats,
};
use cyphonic_proto::wire::handshake::{MAX_HANDSHAKE_LEN, TunnelRequestPacket};
use cyphonic_proto::wire::{Fqdn, MessageType, NodeId, classify};
use ed25519_dalek::SigningKey;
use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};
use x25519_dalek::{PublicKey, StaticSecret};

const UNIX_BASE: u64 = 1_700_000_000;
const BUF: usize = 2048;

/// A test cloud that signs credentials.
struct Cloud {
    key: SigningKey,
}

impl Cloud {
    fn new(seed: u8) -> Self {
        Self {
            key: SigningKey::from_bytes(&[seed; 32]),
        }
    }

    fn credential(&self, static_public: [u8; 32], name: &str, not_after: u64) -> SignedCredential {
        Credential {
            cloud_key_id: CloudKeyId::of(&self.key.verifying_key()),
            node_id: NodeId([static_public[0]; 16]),
            not_before: UnixTime(UNIX_BASE - 3_600),
            not_after: UnixTime(not_after),
            static_public,
            vip4: "100.64.0.2".parse().expect("literal"),
            vip6: "fd00::2".parse().expect("literal"),
            fqdn: Fqdn::new(name).expect("literal"),
        }
        .sign(&self.key)
    }
}

const VALID_UNTIL: u64 = UNIX_BASE + 86_400;

fn secret(seed: u8) -> StaticSecret {
    StaticSecret::from([seed; 32])
}

fn public(seed: u8) -> [u8; 32] {
    PublicKey::from(&secret(seed)).to_bytes()
}

/// An identity whose credential the given cloud signed for its own key.
fn identity(cloud: &Cloud, seed: u8, name: &str) -> LocalIdentity {
    identity_presenting(
        cloud,
        seed,
        cloud.credential(public(seed), name, VALID_UNTIL),
    )
}

/// An identity with static key `seed` that presents `credential`, whatever it says.
fn identity_presenting(cloud: &Cloud, seed: u8, credential: SignedCredential) -> LocalIdentity {
    LocalIdentity::new(
        secret(seed),
        credential,
        vec![cloud.key.verifying_key()],
        Arc::new(SoftwareSuites),
    )
    .expect("software suites exist")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    A,
    B,
}

impl Side {
    fn other(self) -> Side {
        match self {
            Side::A => Side::B,
            Side::B => Side::A,
        }
    }
}

/// What the tap does with a datagram in flight.
enum Verdict {
    Deliver,
    Drop,
}

type Tap = Box<dyn FnMut(Side, &mut Vec<u8>) -> Verdict>;

struct Node {
    endpoint: Endpoint,
    addr: SocketAddr,
    /// The other node, as this endpoint knows it.
    peer: PeerId,
    rng: ChaCha20Rng,
    received: Vec<Vec<u8>>,
    control: Vec<Vec<u8>>,
    drops: Vec<DropReason>,
    events: Vec<PeerEvent>,
}

struct InFlight {
    at: Instant,
    seq: u64,
    to: Side,
    from: SocketAddr,
    bytes: Vec<u8>,
}

struct Pair {
    a: Node,
    b: Node,
    start: Instant,
    now: Instant,
    latency: Duration,
    jitter: Duration,
    loss: f64,
    net_rng: ChaCha20Rng,
    in_flight: Vec<InFlight>,
    next_seq: u64,
    tap: Option<Tap>,
    /// Every datagram handed to the network, with its sender.
    sent: Vec<(Side, Vec<u8>)>,
}

impl Pair {
    fn new(config: TunnelConfig) -> Self {
        let cloud = Cloud::new(1);
        let a = identity(&cloud, 10, "a.test.cyphonic");
        let b = identity(&cloud, 20, "b.test.cyphonic");
        let a_view = b.credential().clone();
        let b_view = a.credential().clone();
        Self::with(config, a, b, a_view, b_view)
    }

    /// `a_view_of_b` is what A's host was told about B (by the NMS), and vice versa.
    fn with(
        config: TunnelConfig,
        a: LocalIdentity,
        b: LocalIdentity,
        a_view_of_b: SignedCredential,
        b_view_of_a: SignedCredential,
    ) -> Self {
        let unix = UnixTime(UNIX_BASE);
        let mut a_ep = Endpoint::new(config.clone(), a);
        let mut b_ep = Endpoint::new(config, b);
        let a_peer = a_ep.add_peer(a_view_of_b, unix).expect("valid view of b");
        let b_peer = b_ep.add_peer(b_view_of_a, unix).expect("valid view of a");
        let start = Instant::now();
        let node = |endpoint, addr: &str, peer, seed| Node {
            endpoint,
            addr: addr.parse().expect("literal"),
            peer,
            rng: ChaCha20Rng::seed_from_u64(seed),
            received: Vec::new(),
            control: Vec::new(),
            drops: Vec::new(),
            events: Vec::new(),
        };
        Self {
            a: node(a_ep, "192.0.2.1:4500", a_peer, 1),
            b: node(b_ep, "198.51.100.2:4500", b_peer, 2),
            start,
            now: start,
            latency: Duration::from_millis(10),
            jitter: Duration::ZERO,
            loss: 0.0,
            net_rng: ChaCha20Rng::seed_from_u64(3),
            in_flight: Vec::new(),
            next_seq: 0,
            tap: None,
            sent: Vec::new(),
        }
    }

    fn node(&mut self, side: Side) -> &mut Node {
        match side {
            Side::A => &mut self.a,
            Side::B => &mut self.b,
        }
    }

    fn unix(&self) -> UnixTime {
        UnixTime(UNIX_BASE + self.now.duration_since(self.start).as_secs())
    }

    fn elapsed(&self) -> Duration {
        self.now.duration_since(self.start)
    }

    fn stats(&self, side: Side) -> TunnelStats {
        match side {
            Side::A => self.a.endpoint.stats(),
            Side::B => self.b.endpoint.stats(),
        }
    }

    fn established(&self, side: Side) -> bool {
        let node = match side {
            Side::A => &self.a,
            Side::B => &self.b,
        };
        node.endpoint
            .peer(node.peer)
            .and_then(|p| p.send_session(self.now))
            .is_some()
    }

    /// Hands an inner packet to `from`'s tunnel and sends whatever comes out.
    fn send(&mut self, from: Side, packet: &[u8]) -> Encapsulated {
        self.send_kind(from, packet, false)
    }

    fn send_control(&mut self, from: Side, message: &[u8]) -> Encapsulated {
        self.send_kind(from, message, true)
    }

    fn send_kind(&mut self, from: Side, packet: &[u8], control: bool) -> Encapsulated {
        let (now, unix) = (self.now, self.unix());
        let node = self.node(from);
        let mut out = vec![0u8; BUF];
        let peer = node.endpoint.peer_mut(node.peer).expect("peer exists");
        let result = if control {
            peer.encapsulate_control(now, unix, &mut node.rng, packet, &mut out)
        } else {
            peer.encapsulate(now, unix, &mut node.rng, packet, &mut out)
        }
        .expect("encapsulate");
        match result {
            Encapsulated::Sealed(n) | Encapsulated::HandshakeNeeded(n) => {
                self.transmit(from, out[..n].to_vec());
            }
            Encapsulated::Queued => {}
        }
        self.flush(from);
        result
    }

    /// Sends everything `side` wants to send now and collects its events.
    fn flush(&mut self, side: Side) {
        let (now, unix) = (self.now, self.unix());
        let mut out = vec![0u8; BUF];
        loop {
            let node = self.node(side);
            let next = node
                .endpoint
                .poll_transmit(now, unix, &mut node.rng, &mut out)
                .expect("poll_transmit");
            let Some((_, len)) = next else { break };
            self.transmit(side, out[..len].to_vec());
        }
        let node = self.node(side);
        while let Some((_, event)) = node.endpoint.poll_event() {
            node.events.push(event);
        }
    }

    fn transmit(&mut self, from: Side, bytes: Vec<u8>) {
        self.sent.push((from, bytes.clone()));
        if self.loss > 0.0 {
            let roll = (self.net_rng.next_u32() as f64) / (u32::MAX as f64);
            if roll < self.loss {
                return;
            }
        }
        let jitter = if self.jitter.is_zero() {
            Duration::ZERO
        } else {
            Duration::from_nanos(self.net_rng.next_u64() % self.jitter.as_nanos() as u64)
        };
        let from_addr = self.node(from).addr;
        self.next_seq += 1;
        self.in_flight.push(InFlight {
            at: self.now + self.latency + jitter,
            seq: self.next_seq,
            to: from.other(),
            from: from_addr,
            bytes,
        });
    }

    /// Feeds one datagram to `to` right now, as if it came from the other node, and
    /// sends whatever it answers.
    fn inject(&mut self, to: Side, mut bytes: Vec<u8>) -> Result<Decapsulated, DropReason> {
        let from = self.node(to.other()).addr;
        self.receive(to, from, &mut bytes)
    }

    fn receive(
        &mut self,
        to: Side,
        from: SocketAddr,
        bytes: &mut [u8],
    ) -> Result<Decapsulated, DropReason> {
        let (now, unix) = (self.now, self.unix());
        let mut out = vec![0u8; BUF];
        let node = self.node(to);
        let result = node
            .endpoint
            .decapsulate(now, unix, &mut node.rng, from, bytes, &mut out);
        match &result {
            Ok(Decapsulated::Data { range, .. }) => {
                node.received.push(bytes[range.clone()].to_vec())
            }
            Ok(Decapsulated::Control { range, .. }) => {
                node.control.push(bytes[range.clone()].to_vec())
            }
            Ok(Decapsulated::WriteToNetwork { len, .. }) => {
                let reply = out[..*len].to_vec();
                self.transmit(to, reply);
            }
            Ok(Decapsulated::Keepalive { .. } | Decapsulated::Established { .. }) => {}
            Err(reason) => node.drops.push(reason.clone()),
        }
        self.flush(to);
        result
    }

    fn next_event(&self) -> Option<Instant> {
        let flights = self.in_flight.iter().map(|f| f.at);
        let timers = [
            self.a.endpoint.poll_timeout(),
            self.b.endpoint.poll_timeout(),
        ];
        flights.chain(timers.into_iter().flatten()).min()
    }

    /// Advances to the next delivery or timer (if not later than `limit`) and
    /// processes everything due then. False if nothing was due.
    fn step(&mut self, limit: Instant) -> bool {
        let Some(next) = self.next_event() else {
            return false;
        };
        if next > limit {
            return false;
        }
        self.now = self.now.max(next);
        self.in_flight.sort_by_key(|f| (f.at, f.seq));
        while self.in_flight.first().is_some_and(|f| f.at <= self.now) {
            let mut flight = self.in_flight.remove(0);
            if let Some(tap) = self.tap.as_mut() {
                if let Verdict::Drop = tap(flight.to, &mut flight.bytes) {
                    continue;
                }
            }
            let _ = self.receive(flight.to, flight.from, &mut flight.bytes);
        }
        for side in [Side::A, Side::B] {
            let now = self.now;
            let node = self.node(side);
            if node.endpoint.poll_timeout().is_some_and(|t| t <= now) {
                node.endpoint.handle_timeout(now);
                self.flush(side);
            }
        }
        true
    }

    /// Runs until nothing is in flight (timers that fire meanwhile run too).
    fn drive(&mut self) {
        let horizon = self.now + Duration::from_secs(3_600);
        while !self.in_flight.is_empty() {
            assert!(
                self.step(horizon),
                "in-flight datagrams must be deliverable"
            );
        }
    }

    /// Runs every delivery and timer up to `deadline`, then sets the clock to it.
    fn run_until(&mut self, deadline: Instant) {
        while self.step(deadline) {}
        self.now = self.now.max(deadline);
    }

    fn run_for(&mut self, duration: Duration) {
        let deadline = self.now + duration;
        self.run_until(deadline);
    }

    fn handshake(&mut self) {
        assert!(matches!(
            self.send(Side::A, b"first"),
            Encapsulated::HandshakeNeeded(_)
        ));
        self.drive();
        assert!(self.established(Side::A) && self.established(Side::B));
        assert_eq!(self.b.received.pop().as_deref(), Some(&b"first"[..]));
    }

    /// The datagrams of `kind` that `side` sent.
    fn sent_by(&self, side: Side, kind: MessageType) -> Vec<Vec<u8>> {
        self.sent
            .iter()
            .filter(|(s, bytes)| *s == side && classify(bytes) == Ok(kind))
            .map(|(_, bytes)| bytes.clone())
            .collect()
    }
}

fn shrunk_config() -> TunnelConfig {
    TunnelConfig {
        rekey_after_time: Duration::from_secs(2),
        reject_after_time: Duration::from_secs(3),
        rekey_attempt_time: Duration::from_millis(1_500),
        rekey_timeout: Duration::from_millis(250),
        rekey_timeout_max: Duration::from_millis(500),
        keepalive_timeout: Duration::from_millis(500),
        ..TunnelConfig::default()
    }
}

fn tagged(side: Side, n: u32) -> Vec<u8> {
    let mut packet = vec![side as u8];
    packet.extend_from_slice(&n.to_be_bytes());
    packet.extend_from_slice(&[0x45; 60]);
    packet
}

fn sequence_numbers(received: &[Vec<u8>]) -> Vec<u32> {
    received
        .iter()
        .map(|p| u32::from_be_bytes(p[1..5].try_into().expect("tagged packet")))
        .collect()
}

/// Asserts every one of `count` packets arrived exactly once.
fn assert_exactly_once(received: &[Vec<u8>], count: u32) {
    let numbers = sequence_numbers(received);
    let unique: BTreeSet<u32> = numbers.iter().copied().collect();
    assert_eq!(numbers.len(), unique.len(), "duplicates delivered");
    let missing: Vec<u32> = (0..count).filter(|n| !unique.contains(n)).collect();
    assert!(missing.is_empty(), "lost packets: {missing:?}");
    assert_eq!(numbers.len() as u32, count);
}

#[test]
fn handshake_completes_and_data_flows_both_ways() {
    let mut pair = Pair::new(TunnelConfig::default());
    pair.handshake();
    assert_eq!(pair.send(Side::B, b"reply"), Encapsulated::Sealed(5 + 32));
    pair.drive();
    assert_eq!(pair.a.received, vec![b"reply".to_vec()]);
    for i in 0..10u8 {
        pair.send(Side::A, &[i; 100]);
        pair.send(Side::B, &[i; 1400]);
    }
    pair.drive();
    assert_eq!(pair.b.received.len(), 10);
    assert_eq!(pair.a.received.len(), 11);
    assert_eq!(pair.a.received[10], vec![9u8; 1400]);

    let a = pair.stats(Side::A);
    let b = pair.stats(Side::B);
    assert_eq!((a.requests_sent, a.handshakes_completed), (1, 1));
    assert_eq!((b.responses_sent, b.sessions_confirmed), (1, 1));
    assert_eq!(a.dropped_total() + b.dropped_total(), 0);
    assert_eq!(pair.a.events, vec![PeerEvent::Established]);
    assert_eq!(pair.b.events, vec![PeerEvent::Established]);
    // Both lists are [AES-256-GCM, ChaCha20-Poly1305]: the initiator's first wins.
    let session = pair
        .a
        .endpoint
        .peer(pair.a.peer)
        .and_then(|p| p.send_session(pair.now))
        .expect("session");
    assert_eq!(session.suite(), SuiteId::AES_256_GCM);
    assert!(session.we_initiated());
    // The peer's credential is the one it presented, and it names it.
    let peer = pair.a.endpoint.peer(pair.a.peer).expect("peer");
    assert_eq!(
        peer.credential().credential().fqdn.as_str(),
        "b.test.cyphonic"
    );
}

#[test]
fn control_messages_and_in_place_sealing() {
    let mut pair = Pair::new(TunnelConfig::default());
    pair.handshake();
    pair.send_control(Side::B, b"\x01control body");
    pair.drive();
    assert_eq!(pair.a.control, vec![b"\x01control body".to_vec()]);

    // In place: the caller reserves 16 bytes of headroom and 16 of tailroom.
    let (now, unix) = (pair.now, pair.unix());
    let mut buf = vec![0u8; 16 + 4 + 16];
    buf[16..20].copy_from_slice(b"ping");
    let node = &mut pair.a;
    let peer = node.endpoint.peer_mut(node.peer).expect("peer");
    let sealed = peer
        .encapsulate_in_place(now, unix, &mut node.rng, &mut buf, 4)
        .expect("seal");
    assert_eq!(sealed, Encapsulated::Sealed(36));
    assert_eq!(
        pair.inject(Side::B, buf),
        Ok(Decapsulated::Data {
            peer: pair.b.peer,
            range: 16..20
        })
    );
    assert_eq!(
        pair.b.received.last().map(Vec::as_slice),
        Some(&b"ping"[..])
    );
}

#[test]
fn keepalive_follows_one_way_traffic_and_sessions_expire() {
    let config = shrunk_config();
    let mut pair = Pair::new(config.clone());
    pair.handshake();
    pair.run_for(Duration::from_millis(100));
    let before = pair.stats(Side::A).keepalives_received;
    pair.send(Side::A, b"one way");
    pair.run_for(config.keepalive_timeout + Duration::from_millis(100));
    assert_eq!(pair.stats(Side::A).keepalives_received, before + 1);

    // Idle past reject_after_time: every session is gone, nothing is accepted ...
    pair.run_for(config.reject_after_time + Duration::from_millis(100));
    assert!(!pair.established(Side::A) && !pair.established(Side::B));
    let peer = pair.a.endpoint.peer(pair.a.peer).expect("peer");
    assert_eq!(peer.sessions().count(), 0);
    // ... and the next packet starts a fresh handshake and still arrives.
    assert!(matches!(
        pair.send(Side::A, b"after expiry"),
        Encapsulated::HandshakeNeeded(_)
    ));
    pair.drive();
    assert_eq!(
        pair.b.received.last().map(Vec::as_slice),
        Some(&b"after expiry"[..])
    );
}

/// A peer that stops answering (it crashed and restarted without our session) is
/// reported once per silence, and a new handshake starts, so the host can ask the NMS
/// for the route again.
#[test]
fn a_silent_peer_is_reported_unresponsive() {
    let config = shrunk_config();
    let mut pair = Pair::new(config.clone());
    pair.handshake();
    pair.run_for(Duration::from_millis(100));
    pair.a.events.clear();
    pair.tap = Some(Box::new(|to, _| {
        if to == Side::A {
            Verdict::Drop
        } else {
            Verdict::Deliver
        }
    }));
    let requests_before = pair.sent_by(Side::A, MessageType::TunnelRequest).len();
    pair.send(Side::A, b"into the void");
    pair.run_for(config.keepalive_timeout + config.rekey_timeout + Duration::from_millis(100));
    assert_eq!(
        pair.a
            .events
            .iter()
            .filter(|e| **e == PeerEvent::Unresponsive)
            .count(),
        1,
        "{:?}",
        pair.a.events
    );
    assert!(pair.sent_by(Side::A, MessageType::TunnelRequest).len() > requests_before);
    // Answers again: the new handshake completes and traffic flows.
    pair.tap = None;
    pair.run_for(config.rekey_timeout_max * 2);
    pair.send(Side::A, b"back");
    pair.drive();
    assert_eq!(
        pair.b.received.last().map(Vec::as_slice),
        Some(&b"back"[..])
    );
}

/// The core no-loss property: a packet every 10 ms each way across many rekeys
/// (time-based, shrunk to 2 s), with reordering, every packet delivered exactly once.
#[test]
fn rekey_under_continuous_traffic_loses_nothing() {
    let config = shrunk_config();
    let mut pair = Pair::new(config);
    pair.latency = Duration::from_millis(15);
    pair.jitter = Duration::from_millis(12);
    let count = 2_000u32;
    for n in 0..count {
        pair.send(Side::A, &tagged(Side::A, n));
        pair.send(Side::B, &tagged(Side::B, n));
        pair.run_for(Duration::from_millis(10));
    }
    pair.run_for(Duration::from_secs(1));
    assert_exactly_once(&pair.b.received, count);
    assert_exactly_once(&pair.a.received, count);
    let (a, b) = (pair.stats(Side::A), pair.stats(Side::B));
    let rekeys = a.handshakes_completed + b.handshakes_completed;
    assert!(rekeys >= 9, "20 s at 2 s per rekey, got {rekeys}");
    // Both sides start with a packet and no session, so both initiate at once; the
    // tie-break drops exactly one request. Nothing else is ever dropped.
    assert_eq!(a.rejected_simultaneous + b.rejected_simultaneous, 1);
    assert_eq!(a.dropped_total() + b.dropped_total(), 1, "{a:?} {b:?}");
    assert_eq!(a.queue_dropped + b.queue_dropped, 0);
}

/// Rekeys triggered by the message limit hit both sides at once, so both start a
/// handshake simultaneously; the tie-break must keep every packet.
#[test]
fn simultaneous_rekeys_by_message_count_lose_nothing() {
    let config = TunnelConfig {
        rekey_after_messages: 50,
        reject_after_messages: 400,
        ..shrunk_config()
    };
    let mut pair = Pair::new(config);
    pair.latency = Duration::from_millis(20);
    pair.jitter = Duration::from_millis(8);
    let count = 1_000u32;
    for n in 0..count {
        pair.send(Side::A, &tagged(Side::A, n));
        pair.send(Side::B, &tagged(Side::B, n));
        pair.run_for(Duration::from_millis(5));
    }
    pair.run_for(Duration::from_secs(1));
    assert_exactly_once(&pair.b.received, count);
    assert_exactly_once(&pair.a.received, count);
    let (a, b) = (pair.stats(Side::A), pair.stats(Side::B));
    assert!(a.handshakes_completed + b.handshakes_completed >= 15);
    assert!(
        a.rejected_simultaneous + b.rejected_simultaneous > 0,
        "the scenario must actually produce simultaneous handshakes"
    );
    assert_eq!(a.queue_dropped + b.queue_dropped, 0);
}

#[test]
fn replayed_tampered_and_truncated_packets_are_rejected_and_counted() {
    let mut pair = Pair::new(TunnelConfig::default());
    pair.handshake();
    pair.send(Side::A, b"original");
    let datagram = pair
        .sent_by(Side::A, MessageType::Capsule)
        .pop()
        .expect("sent");
    pair.drive();
    assert_eq!(pair.b.received, vec![b"original".to_vec()]);

    assert_eq!(pair.inject(Side::B, datagram), Err(DropReason::Replay));
    // Send a fresh packet first so the tampered one is not also a replay.
    pair.send(Side::A, b"second");
    let fresh = pair
        .sent_by(Side::A, MessageType::Capsule)
        .pop()
        .expect("sent");
    pair.in_flight.clear();
    let mut forged = fresh.clone();
    forged[20] ^= 0x01;
    assert_eq!(pair.inject(Side::B, forged), Err(DropReason::Tampered));
    let mut header = fresh.clone();
    header[15] ^= 0x01; // the counter is authenticated too
    assert_eq!(pair.inject(Side::B, header), Err(DropReason::Tampered));
    assert_eq!(
        pair.inject(Side::B, fresh[..20].to_vec()),
        Err(DropReason::Truncated)
    );
    assert_eq!(
        pair.inject(Side::B, fresh[..fresh.len() - 1].to_vec()),
        Err(DropReason::Tampered)
    );
    let mut unknown = fresh.clone();
    unknown[4] ^= 0x40;
    assert_eq!(pair.inject(Side::B, unknown), Err(DropReason::UnknownIndex));
    // None of that moved the replay window or hurt the session.
    assert!(matches!(
        pair.inject(Side::B, fresh),
        Ok(Decapsulated::Data { .. })
    ));
    pair.send(Side::B, b"still fine");
    pair.drive();
    assert_eq!(
        pair.a.received.last().map(Vec::as_slice),
        Some(&b"still fine"[..])
    );

    let b = pair.stats(Side::B);
    assert_eq!(b.dropped_replay, 1);
    assert_eq!(b.dropped_tampered, 3);
    assert_eq!(b.dropped_truncated, 1);
    assert_eq!(b.dropped_unknown_index, 1);
    assert_eq!(b.data_received, 3, "first, original, fresh");
}

#[test]
fn replayed_tunnel_request_is_rejected() {
    let mut pair = Pair::new(TunnelConfig::default());
    pair.handshake();
    let request = pair
        .sent_by(Side::A, MessageType::TunnelRequest)
        .pop()
        .expect("sent");
    assert_eq!(
        pair.inject(Side::B, request.clone()),
        Err(DropReason::StaleRequest)
    );
    pair.run_for(Duration::from_secs(30));
    assert_eq!(pair.inject(Side::B, request), Err(DropReason::StaleRequest));
    assert_eq!(pair.stats(Side::B).rejected_stale_request, 2);
    assert_eq!(pair.stats(Side::B).responses_sent, 1);
    pair.send(Side::B, b"unaffected");
    pair.drive();
    assert_eq!(
        pair.a.received.last().map(Vec::as_slice),
        Some(&b"unaffected"[..])
    );
}

#[test]
fn removing_and_re_adding_a_peer_keeps_replay_protection() {
    let mut pair = Pair::new(TunnelConfig::default());
    pair.handshake();
    let request = pair
        .sent_by(Side::A, MessageType::TunnelRequest)
        .pop()
        .expect("sent");
    let view = pair.a.endpoint.identity().credential().clone();
    assert!(pair.b.endpoint.remove_peer(pair.b.peer));
    let unix = pair.unix();
    pair.b.peer = pair.b.endpoint.add_peer(view, unix).expect("re-add");
    assert_eq!(pair.inject(Side::B, request), Err(DropReason::StaleRequest));
}

fn assert_handshake_refused(pair: &mut Pair, refuser: Side, expected: &DropReason) {
    let _ = pair.send(Side::A, b"never delivered");
    pair.run_for(Duration::from_secs(2));
    assert!(!pair.established(Side::A));
    assert!(!pair.established(Side::B));
    assert!(pair.b.received.is_empty());
    assert!(
        pair.node(refuser).drops.contains(expected),
        "{:?}",
        pair.node(refuser).drops
    );
}

#[test]
fn credential_signed_by_another_cloud_is_rejected() {
    let cloud = Cloud::new(1);
    let rogue = Cloud::new(66);
    // A presents a credential for its real key, signed by a cloud B does not trust.
    let a = identity_presenting(
        &cloud,
        10,
        rogue.credential(public(10), "a.test.cyphonic", VALID_UNTIL),
    );
    let b = identity(&cloud, 20, "b.test.cyphonic");
    let genuine_a = cloud.credential(public(10), "a.test.cyphonic", VALID_UNTIL);
    let b_cred = b.credential().clone();
    let mut pair = Pair::with(TunnelConfig::default(), a, b, b_cred, genuine_a);
    assert_handshake_refused(
        &mut pair,
        Side::B,
        &DropReason::BadCredential(CredentialError::UnknownCloudKey),
    );
    assert!(pair.stats(Side::B).rejected_bad_credential >= 1);
    assert_eq!(pair.stats(Side::B).responses_sent, 0);
}

#[test]
fn responder_with_a_forged_credential_is_rejected_by_the_initiator() {
    let cloud = Cloud::new(1);
    let rogue = Cloud::new(66);
    let a = identity(&cloud, 10, "a.test.cyphonic");
    let b = identity_presenting(
        &cloud,
        20,
        rogue.credential(public(20), "b.test.cyphonic", VALID_UNTIL),
    );
    let genuine_b = cloud.credential(public(20), "b.test.cyphonic", VALID_UNTIL);
    let a_cred = a.credential().clone();
    let mut pair = Pair::with(TunnelConfig::default(), a, b, genuine_b, a_cred);
    let expected = DropReason::BadCredential(CredentialError::UnknownCloudKey);
    assert_handshake_refused(&mut pair, Side::A, &expected);
    assert!(
        pair.a
            .events
            .contains(&PeerEvent::HandshakeFailed(expected))
    );
    // The round was abandoned, with its queued packet.
    assert_eq!(pair.stats(Side::A).queue_dropped, 1);
}

#[test]
fn expired_credential_is_rejected() {
    let cloud = Cloud::new(1);
    let expired = cloud.credential(public(10), "a.test.cyphonic", UNIX_BASE - 1);
    let a = identity_presenting(&cloud, 10, expired);
    let b = identity(&cloud, 20, "b.test.cyphonic");
    let genuine_a = cloud.credential(public(10), "a.test.cyphonic", VALID_UNTIL);
    let b_cred = b.credential().clone();
    let mut pair = Pair::with(TunnelConfig::default(), a, b, b_cred, genuine_a);
    assert_handshake_refused(
        &mut pair,
        Side::B,
        &DropReason::BadCredential(CredentialError::Expired(UnixTime(UNIX_BASE - 1))),
    );
    assert!(
        pair.a
            .endpoint
            .identity()
            .check_credential(UnixTime(UNIX_BASE))
            .is_err()
    );
}

#[test]
fn credential_for_another_static_key_is_rejected() {
    let cloud = Cloud::new(1);
    // Properly signed, but for static key 30, while A proves key 10 in the handshake.
    let someone_else = cloud.credential(public(30), "a.test.cyphonic", VALID_UNTIL);
    let a = identity_presenting(&cloud, 10, someone_else);
    let b = identity(&cloud, 20, "b.test.cyphonic");
    let genuine_a = cloud.credential(public(10), "a.test.cyphonic", VALID_UNTIL);
    let b_cred = b.credential().clone();
    let mut pair = Pair::with(TunnelConfig::default(), a, b, b_cred, genuine_a);
    assert_handshake_refused(
        &mut pair,
        Side::B,
        &DropReason::BadCredential(CredentialError::KeyMismatch),
    );
}

#[test]
fn requests_from_nodes_that_are_not_peers_get_no_answer() {
    let cloud = Cloud::new(1);
    let mut pair = Pair::new(TunnelConfig::default());
    let stranger = identity(&cloud, 77, "stranger.test.cyphonic");
    let mut rng = ChaCha20Rng::seed_from_u64(9);
    let mut out = vec![0u8; MAX_HANDSHAKE_LEN];
    let b_static = *pair.b.endpoint.identity().static_public();
    let (_, len) = InitiatorHandshake::start(&stranger, &b_static, 1, 1, None, &mut rng, &mut out)
        .expect("request");
    assert_eq!(
        pair.inject(Side::B, out[..len].to_vec()),
        Err(DropReason::UnknownPeer)
    );
    assert!(pair.in_flight.is_empty());
    // Junk that does not even carry a valid mac1 is dropped before any DH.
    let mut junk = out[..len].to_vec();
    junk[100] ^= 1;
    assert_eq!(pair.inject(Side::B, junk), Err(DropReason::Mac1));
    let b = pair.stats(Side::B);
    assert_eq!((b.rejected_unknown_peer, b.dropped_mac1), (1, 1));
}

/// A man in the middle rewrites the (encrypted) suite list, fixing up mac1 since the
/// responder's key is public: the Noise transcript breaks, nothing is negotiated.
#[test]
fn rewritten_suite_list_breaks_the_transcript() {
    let mut pair = Pair::new(TunnelConfig::default());
    let b_static = *pair.b.endpoint.identity().static_public();
    let a_static = *pair.a.endpoint.identity().static_public();
    pair.tap = Some(Box::new(move |to, bytes| {
        let target = match classify(bytes) {
            Ok(MessageType::TunnelRequest) => b_static,
            Ok(MessageType::TunnelResponse) => a_static,
            _ => return Verdict::Deliver,
        };
        // Request payload: timestamp (8) then the suite count and list at 88 + 8.
        // Response payload: chosen suite at 44. Flip a bit of each ciphertext.
        let at = if to == Side::B { 88 + 10 } else { 44 + 1 };
        bytes[at] ^= 0x02;
        let mac1_at = bytes.len() - 32;
        let mac1 = {
            use hmac::{Hmac, Mac};
            use sha2::{Digest, Sha256};
            let key = Sha256::new()
                .chain_update(b"mac1----")
                .chain_update(target)
                .finalize();
            let mut h = <Hmac<Sha256> as Mac>::new_from_slice(&key).expect("any key");
            h.update(&bytes[..mac1_at]);
            h.finalize().into_bytes()
        };
        bytes[mac1_at..mac1_at + 16].copy_from_slice(&mac1[..16]);
        Verdict::Deliver
    }));
    assert_handshake_refused(&mut pair, Side::B, &DropReason::HandshakeDecrypt);
    assert_eq!(pair.stats(Side::B).dropped_mac1, 0, "mac1 was fixed up");
    assert!(pair.stats(Side::B).rejected_decrypt >= 1);
}

/// A responder (malicious, or a man in the middle holding its key) that does not pick
/// the initiator's first shared suite is caught by the initiator.
#[test]
fn responder_choosing_a_lesser_suite_is_a_downgrade() {
    let cloud = Cloud::new(1);
    for (responder_suites, chosen) in [
        // Not the first of the initiator's list that the responder supports.
        (
            vec![SuiteId::CHACHA20_POLY1305, SuiteId::AES_256_GCM],
            SuiteId::AES_256_GCM,
        ),
        // A suite the responder's own list does not contain: inconsistent.
        (vec![SuiteId::AES_256_GCM], SuiteId::CHACHA20_POLY1305),
    ] {
        let a = identity(&cloud, 10, "a.test.cyphonic")
            .with_suites(&[SuiteId::CHACHA20_POLY1305, SuiteId::AES_256_GCM])
            .expect("suites");
        let b = identity(&cloud, 20, "b.test.cyphonic")
            .with_suites(&responder_suites)
            .expect("suites");
        let a_view = b.credential().clone();
        let b_view = a.credential().clone();
        let mut pair = Pair::with(TunnelConfig::default(), a, b, a_view, b_view);
        let mut out = vec![0u8; BUF];
        let (now, unix) = (pair.now, pair.unix());
        let node = &mut pair.a;
        let peer = node.endpoint.peer_mut(node.peer).expect("peer");
        let Encapsulated::HandshakeNeeded(len) = peer
            .encapsulate(now, unix, &mut node.rng, b"data", &mut out)
            .expect("request")
        else {
            panic!("expected a handshake");
        };
        // Play the responder by hand with B's identity and the wrong choice.
        let responder = pair.b.endpoint.identity();
        let request = handshake::consume_request(responder, &mut out[..len]).expect("valid");
        let mut response = vec![0u8; BUF];
        let mut rng = ChaCha20Rng::seed_from_u64(5);
        let (len, _) = request
            .respond(responder, chosen, 0x4242, &mut rng, &mut response)
            .expect("respond");
        assert_eq!(
            pair.inject(Side::A, response[..len].to_vec()),
            Err(DropReason::Downgrade)
        );
        assert!(!pair.established(Side::A));
        assert!(
            pair.a
                .events
                .contains(&PeerEvent::HandshakeFailed(DropReason::Downgrade))
        );
        assert_eq!(pair.stats(Side::A).rejected_downgrade, 1);
    }
}

#[test]
fn suite_negotiation_follows_the_initiator_or_fails_cleanly() {
    let cloud = Cloud::new(1);
    let cases = [
        (
            vec![SuiteId::CHACHA20_POLY1305, SuiteId::AES_256_GCM],
            vec![SuiteId::AES_256_GCM, SuiteId::CHACHA20_POLY1305],
            Some(SuiteId::CHACHA20_POLY1305),
        ),
        (
            vec![SuiteId::CHACHA20_POLY1305, SuiteId::AES_256_GCM],
            vec![SuiteId::AES_256_GCM],
            Some(SuiteId::AES_256_GCM),
        ),
        (
            vec![SuiteId::CHACHA20_POLY1305],
            vec![SuiteId::AES_256_GCM],
            None,
        ),
    ];
    for (initiator, responder, expected) in cases {
        let a = identity(&cloud, 10, "a.test.cyphonic")
            .with_suites(&initiator)
            .expect("suites");
        let b = identity(&cloud, 20, "b.test.cyphonic")
            .with_suites(&responder)
            .expect("suites");
        let a_view = b.credential().clone();
        let b_view = a.credential().clone();
        let mut pair = Pair::with(TunnelConfig::default(), a, b, a_view, b_view);
        pair.send(Side::A, b"x");
        pair.run_for(Duration::from_secs(1));
        match expected {
            Some(suite) => {
                let a_suite = pair
                    .a
                    .endpoint
                    .peer(pair.a.peer)
                    .and_then(|p| p.send_session(pair.now))
                    .map(|s| s.suite());
                let b_suite = pair
                    .b
                    .endpoint
                    .peer(pair.b.peer)
                    .and_then(|p| p.send_session(pair.now))
                    .map(|s| s.suite());
                assert_eq!((a_suite, b_suite), (Some(suite), Some(suite)));
            }
            None => {
                assert!(!pair.established(Side::A));
                assert!(pair.b.drops.contains(&DropReason::NoCommonSuite));
            }
        }
    }
}

#[test]
fn handshake_completes_under_30_percent_loss_within_the_attempt_time() {
    let config = TunnelConfig::default();
    let mut retransmitted = 0;
    for seed in 0..20 {
        let mut pair = Pair::new(config.clone());
        pair.loss = 0.3;
        pair.net_rng = ChaCha20Rng::seed_from_u64(seed);
        pair.latency = Duration::from_millis(40);
        pair.send(Side::A, b"hello");
        let deadline = pair.now + config.rekey_attempt_time;
        while !pair.established(Side::A) {
            assert!(
                pair.step(deadline),
                "seed {seed}: no handshake within the attempt time"
            );
        }
        assert!(pair.elapsed() <= config.rekey_attempt_time);
        if pair.stats(Side::A).requests_sent > 1 {
            retransmitted += 1;
        }
        // Whatever was lost on the way (the first packet, the confirming keepalive),
        // traffic in both directions works afterwards.
        pair.loss = 0.0;
        pair.run_for(Duration::from_secs(1));
        pair.send(Side::A, b"ping");
        pair.send(Side::B, b"pong");
        pair.run_for(Duration::from_secs(30));
        assert!(pair.b.received.contains(&b"ping".to_vec()), "seed {seed}");
        assert!(pair.a.received.contains(&b"pong".to_vec()), "seed {seed}");
    }
    assert!(
        retransmitted >= 5,
        "the loss must force retransmissions ({retransmitted})"
    );
}

#[test]
fn lost_requests_are_retransmitted_with_backoff() {
    let config = TunnelConfig::default();
    let mut pair = Pair::new(config.clone());
    let mut dropped = 0;
    pair.tap = Some(Box::new(move |_, bytes| {
        if classify(bytes) == Ok(MessageType::TunnelRequest) && dropped < 2 {
            dropped += 1;
            return Verdict::Drop;
        }
        Verdict::Deliver
    }));
    pair.send(Side::A, b"third time lucky");
    let deadline = pair.now + config.rekey_attempt_time;
    while !pair.established(Side::B) {
        assert!(pair.step(deadline));
    }
    assert_eq!(pair.b.received, vec![b"third time lucky".to_vec()]);
    assert_eq!(pair.stats(Side::A).requests_sent, 3);
    // Retransmitted after ~5 s and then ~10 s more (plus at most 1/16 jitter each).
    let elapsed = pair.elapsed();
    assert!(elapsed >= Duration::from_secs(15), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(17), "{elapsed:?}");
}

#[test]
fn cookie_path_under_load() {
    let mut pair = Pair::new(TunnelConfig::default());
    pair.b.endpoint.set_under_load(true);
    assert!(matches!(
        pair.send(Side::A, b"through the cookie"),
        Encapsulated::HandshakeNeeded(_)
    ));
    pair.drive();
    assert!(pair.established(Side::A) && pair.established(Side::B));
    assert_eq!(pair.b.received, vec![b"through the cookie".to_vec()]);
    let (a, b) = (pair.stats(Side::A), pair.stats(Side::B));
    assert_eq!(b.cookie_replies_sent, 1);
    assert_eq!(a.cookie_replies_received, 1);
    assert_eq!(a.requests_sent, 2, "the first request only earned a cookie");
    assert_eq!(b.responses_sent, 1);
    let replies = pair.sent_by(Side::B, MessageType::CookieReply);
    assert_eq!(replies.len(), 1);
    assert_eq!(replies[0].len(), 64);

    // The stored cookie goes into the next handshake too: no second cookie round.
    let (now, unix) = (pair.now, pair.unix());
    let mut out = vec![0u8; BUF];
    let node = &mut pair.a;
    let len = node
        .endpoint
        .peer_mut(node.peer)
        .expect("peer")
        .initiate_handshake(now, unix, &mut node.rng, &mut out)
        .expect("request");
    pair.transmit(Side::A, out[..len].to_vec());
    pair.drive();
    assert_eq!(pair.stats(Side::B).cookie_replies_sent, 1);
    assert_eq!(pair.stats(Side::B).responses_sent, 2);

    // A cookie is bound to the source address: the same request from elsewhere
    // earns a cookie reply, not a Diffie-Hellman.
    let len = {
        let node = &mut pair.a;
        node.endpoint
            .peer_mut(node.peer)
            .expect("peer")
            .initiate_handshake(now, unix, &mut node.rng, &mut out)
            .expect("request")
    };
    let elsewhere: SocketAddr = "203.0.113.9:9999".parse().expect("literal");
    let mut request = out[..len].to_vec();
    let result = pair.receive(Side::B, elsewhere, &mut request);
    assert!(matches!(
        result,
        Ok(Decapsulated::WriteToNetwork {
            peer: None,
            len: 64
        })
    ));
}

#[test]
fn cookie_checker_alone_answers_floods_cheaply() {
    // Under load, a flood of well-formed requests (valid mac1, no cookie) costs the
    // responder one HMAC each plus a 64-byte reply: never a Diffie-Hellman.
    let cloud = Cloud::new(1);
    let b = identity(&cloud, 20, "b.test.cyphonic");
    let mut checker = CookieChecker::new(b.static_public());
    let attacker = identity(&cloud, 99, "x.test.cyphonic");
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let mut out = vec![0u8; MAX_HANDSHAKE_LEN];
    let (_, len) =
        InitiatorHandshake::start(&attacker, b.static_public(), 1, 1, None, &mut rng, &mut out)
            .expect("request");
    let packet = TunnelRequestPacket::new_checked(&out[..len]).expect("well formed");
    assert!(checker.verify_mac1(&out[..len], packet.mac1_offset()));
    let src: SocketAddr = "192.0.2.50:1234".parse().expect("literal");
    assert!(!checker.verify_mac2(
        Instant::now(),
        &mut rng,
        src,
        &out[..len],
        packet.mac2_offset()
    ));
    assert!(
        len > 64,
        "a cookie reply is smaller than the request it answers"
    );
}

/// What a "handshakes per second" benchmark does, through the public API only.
#[test]
fn repeated_full_handshakes_through_the_public_api() {
    let mut pair = Pair::new(TunnelConfig::default());
    pair.handshake();
    let mut out = vec![0u8; MAX_HANDSHAKE_LEN];
    let mut reply = vec![0u8; MAX_HANDSHAKE_LEN];
    for i in 0..20 {
        let (now, unix) = (pair.now, pair.unix());
        let a_peer = pair.a.peer;
        let len = pair
            .a
            .endpoint
            .peer_mut(a_peer)
            .expect("peer")
            .initiate_handshake(now, unix, &mut pair.a.rng, &mut out)
            .expect("request");
        let a_addr = pair.a.addr;
        let response = pair
            .b
            .endpoint
            .decapsulate(
                now,
                unix,
                &mut pair.b.rng,
                a_addr,
                &mut out[..len],
                &mut reply,
            )
            .expect("response");
        let Decapsulated::WriteToNetwork { len, .. } = response else {
            panic!("expected a response, got {response:?}");
        };
        let b_addr = pair.b.addr;
        let done = pair
            .a
            .endpoint
            .decapsulate(
                now,
                unix,
                &mut pair.a.rng,
                b_addr,
                &mut reply[..len],
                &mut out,
            )
            .expect("established");
        assert_eq!(
            done,
            Decapsulated::Established { peer: a_peer },
            "round {i}"
        );
    }
    assert_eq!(pair.stats(Side::A).handshakes_completed, 21);
    // Old sessions are evicted, never more than the fixed number kept.
    let peer = pair.a.endpoint.peer(pair.a.peer).expect("peer");
    assert!(peer.sessions().count() <= cyphonic_proto::tunnel::MAX_SESSIONS);
}
