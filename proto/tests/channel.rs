//! The node <-> cloud channel end to end: a node's `Signaling` and a cloud
//! `ChannelServer` in memory, with simulated time, latency and loss.
// Helpers outside #[test] functions unwrap too: a failure there is a test failure.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cyphonic_proto::channel::{
    ChannelClient, ChannelHandle, ChannelServer, DropReason, Event, MAX_DATAGRAM_LEN, PeerIdentity,
    Purpose, PurposeKind, ServerConfig, ServerEvent, Service, Signaling, SignalingConfig,
    channel_public_key,
};
use cyphonic_proto::credential::{CloudKeyId, Credential, SignedCredential};
use cyphonic_proto::time::UnixTime;
use cyphonic_proto::wire::channel::{ChannelHelloPacket, HELLO_PAYLOAD_OFFSET, SIGNAL_HEADER_LEN};
use cyphonic_proto::wire::{Fqdn, MessageType, NodeId};
use ed25519_dalek::SigningKey;
use hmac::{Hmac, Mac};
use proptest::prelude::*;
use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};
use sha2::{Digest, Sha256, Sha512};
use x25519_dalek::{PublicKey, StaticSecret};

const UNIX_BASE: u64 = 1_700_000_000;
const PASSWORD: &[u8] = b"correct horse battery staple";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dir {
    ToServer,
    ToNode,
}

/// One node, one cloud service, and the network between them.
struct Net {
    start: Instant,
    now: Instant,
    node: Signaling,
    server: ChannelServer,
    rng: ChaCha20Rng,
    loss_rng: ChaCha20Rng,
    loss: f64,
    latency: Duration,
    /// Seconds the node's clock is ahead of the cloud's.
    node_clock_ahead: u64,
    in_flight: Vec<(Instant, Dir, Vec<u8>)>,
    /// Every datagram put on the wire, lost or not.
    wire: Vec<(Instant, Dir, Vec<u8>)>,
    events: Vec<Event>,
    requests: Vec<(ChannelHandle, Arc<PeerIdentity>, Vec<u8>)>,
    accepts: usize,
    cookie_replies: usize,
    server_drops: Vec<DropReason>,
    auto_reply: bool,
    /// When false, datagrams to the server vanish (the cloud is unreachable).
    server_up: bool,
}

fn node_addr() -> SocketAddr {
    "198.51.100.7:40000".parse().unwrap()
}

fn cloud_key() -> SigningKey {
    SigningKey::from_bytes(&[0xc1; 32])
}

fn node_static() -> StaticSecret {
    StaticSecret::from([0x42; 32])
}

fn credential_for(
    cloud: &SigningKey,
    static_public: [u8; 32],
    not_before: u64,
    not_after: u64,
) -> SignedCredential {
    Credential {
        cloud_key_id: CloudKeyId::of(&cloud.verifying_key()),
        node_id: NodeId([7; 16]),
        not_before: UnixTime(not_before),
        not_after: UnixTime(not_after),
        static_public,
        vip4: "100.64.0.7".parse().unwrap(),
        vip6: "fd00::7".parse().unwrap(),
        fqdn: Fqdn::new("laptop.alice.cyphonic").unwrap(),
    }
    .sign(cloud)
}

fn valid_credential() -> SignedCredential {
    credential_for(
        &cloud_key(),
        PublicKey::from(&node_static()).to_bytes(),
        UNIX_BASE - 60,
        UNIX_BASE + 3600,
    )
}

/// An inner request: type byte, request id, body.
fn request(kind: u8, id: u32, body: &[u8]) -> Vec<u8> {
    let mut m = vec![kind];
    m.extend_from_slice(&id.to_be_bytes());
    m.extend_from_slice(body);
    m
}

fn reply_to(inner: &[u8]) -> Vec<u8> {
    let mut m = vec![inner[0] | 0x80];
    m.extend_from_slice(&inner[1..5]);
    m.extend_from_slice(b"ok");
    m
}

impl Net {
    fn new(service: Service, purpose: Purpose, pinned: &SigningKey) -> Self {
        Self::with(
            ServerConfig::new(service),
            purpose,
            pinned,
            SignalingConfig::default(),
        )
    }

    fn with(
        server_config: ServerConfig,
        purpose: Purpose,
        pinned: &SigningKey,
        config: SignalingConfig,
    ) -> Self {
        let start = Instant::now();
        let service = server_config.service;
        let client = ChannelClient::new(&pinned.verifying_key(), &node_static(), service, purpose);
        Self {
            start,
            now: start,
            node: Signaling::new(client, config),
            server: ChannelServer::new(&cloud_key(), vec![], server_config),
            rng: ChaCha20Rng::seed_from_u64(1),
            loss_rng: ChaCha20Rng::seed_from_u64(2),
            loss: 0.0,
            latency: Duration::from_millis(20),
            node_clock_ahead: 0,
            in_flight: Vec::new(),
            wire: Vec::new(),
            events: Vec::new(),
            requests: Vec::new(),
            accepts: 0,
            cookie_replies: 0,
            server_drops: Vec::new(),
            auto_reply: true,
            server_up: true,
        }
    }

    fn unix(&self) -> UnixTime {
        UnixTime(UNIX_BASE + (self.now - self.start).as_secs())
    }

    fn node_unix(&self) -> UnixTime {
        UnixTime(self.unix().0 + self.node_clock_ahead)
    }

    fn send_request(&mut self, inner: &[u8]) -> u32 {
        let (now, unix) = (self.now, self.node_unix());
        self.node
            .send_request(now, unix, &mut self.rng, inner)
            .unwrap()
    }

    fn put_on_wire(&mut self, dir: Dir, bytes: Vec<u8>) {
        self.wire.push((self.now, dir, bytes.clone()));
        let roll = f64::from(self.loss_rng.next_u32()) / f64::from(u32::MAX);
        if roll >= self.loss {
            self.in_flight.push((self.now + self.latency, dir, bytes));
        }
    }

    fn flush_node(&mut self) {
        let mut buf = [0u8; MAX_DATAGRAM_LEN];
        while let Some(n) = self.node.poll_transmit(self.now, &mut buf).unwrap() {
            self.put_on_wire(Dir::ToServer, buf[..n].to_vec());
        }
        while let Some(e) = self.node.poll_event() {
            self.events.push(e);
        }
    }

    /// Hands a datagram to the server and acts on what it says.
    fn server_receive(&mut self, mut datagram: Vec<u8>) -> ServerEvent {
        let mut out = [0u8; MAX_DATAGRAM_LEN];
        let event = self
            .server
            .handle_datagram(
                self.now,
                self.unix(),
                node_addr(),
                &mut datagram,
                &mut self.rng,
                &mut out,
            )
            .unwrap();
        match &event {
            ServerEvent::Accept { len, .. } => {
                self.accepts += 1;
                self.put_on_wire(Dir::ToNode, out[..*len].to_vec());
            }
            ServerEvent::CookieReply { len } => {
                self.cookie_replies += 1;
                self.put_on_wire(Dir::ToNode, out[..*len].to_vec());
            }
            ServerEvent::Request {
                channel,
                peer,
                src,
                inner,
            } => {
                assert_eq!(*src, node_addr());
                let inner = datagram[inner.clone()].to_vec();
                self.requests
                    .push((*channel, Arc::clone(peer), inner.clone()));
                if self.auto_reply {
                    let (n, dst) = self
                        .server
                        .seal_to(self.now, *channel, &reply_to(&inner), &mut out)
                        .unwrap();
                    assert_eq!(dst, node_addr());
                    self.put_on_wire(Dir::ToNode, out[..n].to_vec());
                }
            }
            ServerEvent::Dropped(reason) => self.server_drops.push(*reason),
        }
        event
    }

    fn push(&mut self, inner: &[u8]) {
        let key = PublicKey::from(&node_static()).to_bytes();
        let channel = self.server.channel_for(&key).expect("node has a channel");
        let mut out = [0u8; MAX_DATAGRAM_LEN];
        let (n, _) = self
            .server
            .seal_to(self.now, channel, inner, &mut out)
            .unwrap();
        self.put_on_wire(Dir::ToNode, out[..n].to_vec());
    }

    /// Advances time event by event until `done` holds or `limit` passes; returns
    /// whether `done` held.
    fn run_until(&mut self, limit: Duration, mut done: impl FnMut(&Net) -> bool) -> bool {
        let end = self.now + limit;
        for _ in 0..200_000 {
            self.flush_node();
            if done(self) {
                return true;
            }
            let next = [
                self.node.poll_timeout(),
                self.server.poll_timeout(),
                self.in_flight.iter().map(|f| f.0).min(),
            ]
            .into_iter()
            .flatten()
            .min();
            let Some(next) = next else { return false };
            if next > end {
                self.now = end;
                return done(self);
            }
            self.now = self.now.max(next);
            let now = self.now;
            let (due, later): (Vec<_>, Vec<_>) = self.in_flight.drain(..).partition(|f| f.0 <= now);
            self.in_flight = later;
            for (_, dir, bytes) in due {
                match dir {
                    Dir::ToServer if self.server_up => {
                        self.server_receive(bytes);
                    }
                    Dir::ToServer => {}
                    Dir::ToNode => {
                        let mut bytes = bytes;
                        let unix = self.node_unix();
                        let _ = self.node.handle_datagram(now, unix, &mut bytes);
                    }
                }
            }
            if self.node.poll_timeout().is_some_and(|t| t <= now) {
                let unix = self.node_unix();
                self.node.handle_timeout(now, unix, &mut self.rng).unwrap();
            }
            self.server.handle_timeout(now);
        }
        panic!("simulation did not settle");
    }

    fn run_for(&mut self, d: Duration) {
        self.run_until(d, |_| false);
    }

    fn replies(&self) -> Vec<(u32, Vec<u8>)> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Event::Reply {
                    request_id,
                    message,
                } => Some((*request_id, message.clone())),
                _ => None,
            })
            .collect()
    }

    fn has_reply(&self, id: u32) -> bool {
        self.replies().iter().any(|(r, _)| *r == id)
    }

    fn connected_count(&self) -> usize {
        self.events
            .iter()
            .filter(|e| matches!(e, Event::Connected(_)))
            .count()
    }

    fn failed(&self) -> Vec<u32> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Event::RequestFailed { request_id } => Some(*request_id),
                _ => None,
            })
            .collect()
    }

    fn sent(&self, dir: Dir, kind: MessageType) -> Vec<Vec<u8>> {
        self.wire
            .iter()
            .filter(|(_, d, b)| *d == dir && b[1] == kind as u8)
            .map(|(_, _, b)| b.clone())
            .collect()
    }
}

fn login_request(id: u32) -> Vec<u8> {
    let mut body = b"device-0042\0".to_vec();
    body.extend_from_slice(PASSWORD);
    request(0x01, id, &body)
}

/// mac1 as anyone who knows the cloud's public key computes it.
fn remac(cloud: &SigningKey, hello: &mut [u8]) {
    let key = {
        let mut h = Sha256::new();
        h.update(b"mac1----");
        h.update(channel_public_key(&cloud.verifying_key()));
        h.finalize()
    };
    let at = hello.len() - 32;
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&key).unwrap();
    mac.update(&hello[..at]);
    let full = mac.finalize().into_bytes();
    hello[at..at + 16].copy_from_slice(&full[..16]);
}

#[test]
fn login_round_trip() {
    let mut net = Net::new(Service::Auth, Purpose::Login, &cloud_key());
    let id = net.send_request(&login_request(7));
    assert_eq!(id, 7);
    assert!(net.run_until(Duration::from_secs(5), |n| n.has_reply(7)));

    assert!(matches!(net.events[0], Event::Connected(_)));
    if let Event::Connected(established) = &net.events[0] {
        assert_eq!(established.lifetime, Duration::from_secs(600));
        assert_eq!(established.clock_offset_millis, 0);
    }
    assert_eq!(net.replies(), vec![(7, reply_to(&login_request(7)))]);
    assert_eq!(net.requests.len(), 1);
    let (_, peer, inner) = &net.requests[0];
    assert_eq!(inner, &login_request(7));
    assert_eq!(peer.purpose, PurposeKind::Login);
    assert_eq!(peer.credential, None);
    assert_eq!(
        peer.static_public,
        PublicKey::from(&node_static()).to_bytes()
    );
    // hello, accept, request, reply: one round trip for the handshake, one for the login.
    let kinds: Vec<u8> = net.wire.iter().map(|(_, _, b)| b[1]).collect();
    assert_eq!(kinds, vec![0x01, 0x02, 0x03, 0x03]);
    assert_eq!(net.server.drops().total(), 0);
    assert_eq!(net.node.drops().total(), 0);
    assert_eq!(net.node.pending_requests(), 0);
}

#[test]
fn node_pinning_another_cloud_key_gets_nowhere() {
    let impostor_pin = SigningKey::from_bytes(&[0x99; 32]);
    let mut net = Net::new(Service::Auth, Purpose::Login, &impostor_pin);
    net.send_request(&login_request(1));
    net.run_for(Duration::from_secs(40));
    assert_eq!(net.connected_count(), 0);
    assert_eq!(net.accepts, 0);
    assert!(net.sent(Dir::ToNode, MessageType::ChannelAccept).is_empty());
    assert!(net.wire.iter().all(|(_, d, _)| *d == Dir::ToServer));
    assert!(net.server_drops.iter().all(|r| *r == DropReason::BadMac1));
    assert!(net.server.drops().get(DropReason::BadMac1) >= 5);
    assert_eq!(net.failed(), vec![1]);
    assert!(net.events.contains(&Event::ChannelLost));

    // Even with a valid mac1 (computable from the public key) the real cloud cannot
    // read a hello sealed to another key.
    let mut hello = net.sent(Dir::ToServer, MessageType::ChannelHello)[0].clone();
    remac(&cloud_key(), &mut hello);
    assert_eq!(
        net.server_receive(hello),
        ServerEvent::Dropped(DropReason::DecryptFailed)
    );
}

#[test]
fn a_server_without_the_cloud_secret_cannot_answer() {
    // The impostor holds another key but answers the node's hello as best it can.
    let mut net = Net::new(Service::Auth, Purpose::Login, &cloud_key());
    net.server_up = false;
    net.send_request(&login_request(1));
    net.flush_node();
    let mut hello = net.sent(Dir::ToServer, MessageType::ChannelHello)[0].clone();
    let impostor_key = SigningKey::from_bytes(&[0x66; 32]);
    remac(&impostor_key, &mut hello);
    let mut impostor = ChannelServer::new(&impostor_key, vec![], ServerConfig::new(Service::Auth));
    let mut out = [0u8; MAX_DATAGRAM_LEN];
    let mut rng = ChaCha20Rng::seed_from_u64(9);
    let event = impostor
        .handle_datagram(
            net.now,
            net.unix(),
            node_addr(),
            &mut hello,
            &mut rng,
            &mut out,
        )
        .unwrap();
    assert_eq!(event, ServerEvent::Dropped(DropReason::DecryptFailed));

    // A made-up accept for the node's index does not decrypt.
    let index =
        ChannelHelloPacket::new_checked(&net.sent(Dir::ToServer, MessageType::ChannelHello)[0][..])
            .unwrap()
            .sender_index();
    let mut forged = vec![1u8, 0x02, 0, 0, 0, 0, 0, 9];
    forged.extend_from_slice(&index.to_be_bytes());
    let mut filler = [0u8; 60];
    rng.fill_bytes(&mut filler);
    forged.extend_from_slice(&filler);
    let (now, unix) = (net.now, net.unix());
    assert_eq!(
        net.node.handle_datagram(now, unix, &mut forged),
        Err(DropReason::DecryptFailed)
    );
    assert!(!net.node.is_connected(now));
}

#[test]
fn the_password_never_appears_on_the_wire() {
    let mut net = Net::new(Service::Auth, Purpose::Login, &cloud_key());
    net.loss = 0.3;
    for id in 1..=5 {
        net.send_request(&login_request(id));
        assert!(net.run_until(Duration::from_secs(30), |n| n.has_reply(id)));
    }
    assert!(net.wire.len() >= 10);
    let sha256 = Sha256::digest(PASSWORD);
    let sha512 = Sha512::digest(PASSWORD);
    let hex512 = hex::encode(sha512);
    for needle in [
        PASSWORD,
        &sha256[..],
        &sha512[..],
        hex512.as_bytes(),
        &PASSWORD[..8],
    ] {
        for (_, _, datagram) in &net.wire {
            assert!(
                !datagram.windows(needle.len()).any(|w| w == needle),
                "found a password-derived value on the wire"
            );
        }
    }
    // But the cloud did receive it.
    assert!(
        net.requests
            .iter()
            .all(|(_, _, inner)| { inner.windows(PASSWORD.len()).any(|w| w == PASSWORD) })
    );
}

#[test]
fn replayed_signals_are_rejected_and_counted() {
    let mut net = Net::new(Service::Auth, Purpose::Login, &cloud_key());
    net.send_request(&login_request(3));
    assert!(net.run_until(Duration::from_secs(5), |n| n.has_reply(3)));
    let request = net.sent(Dir::ToServer, MessageType::Signal)[0].clone();
    let reply = net.sent(Dir::ToNode, MessageType::Signal)[0].clone();

    for _ in 0..3 {
        assert_eq!(
            net.server_receive(request.clone()),
            ServerEvent::Dropped(DropReason::Replay)
        );
    }
    assert_eq!(net.server.drops().get(DropReason::Replay), 3);
    assert_eq!(net.requests.len(), 1);

    let (now, unix) = (net.now, net.unix());
    let mut copy = reply.clone();
    assert_eq!(
        net.node.handle_datagram(now, unix, &mut copy),
        Err(DropReason::Replay)
    );
    assert_eq!(net.node.drops().get(DropReason::Replay), 1);
    assert_eq!(net.replies().len(), 1);
}

#[test]
fn replayed_and_redirected_hellos_are_rejected() {
    let mut net = Net::new(Service::Auth, Purpose::Login, &cloud_key());
    net.send_request(&login_request(1));
    assert!(net.run_until(Duration::from_secs(5), |n| n.has_reply(1)));
    let hello = net.sent(Dir::ToServer, MessageType::ChannelHello)[0].clone();
    let channels = net.server.channel_count();

    assert_eq!(
        net.server_receive(hello.clone()),
        ServerEvent::Dropped(DropReason::Replay)
    );
    assert_eq!(net.server.channel_count(), channels);

    // Another service with the same cloud key refuses it too: the service byte is
    // checked and bound into the handshake prologue.
    let mut trs = ChannelServer::new(&cloud_key(), vec![], ServerConfig::new(Service::Relay));
    let mut out = [0u8; MAX_DATAGRAM_LEN];
    let mut rng = ChaCha20Rng::seed_from_u64(5);
    let mut copy = hello.clone();
    assert_eq!(
        trs.handle_datagram(
            net.now,
            net.unix(),
            node_addr(),
            &mut copy,
            &mut rng,
            &mut out
        )
        .unwrap(),
        ServerEvent::Dropped(DropReason::Malformed)
    );
    let mut moved = hello.clone();
    moved[2] = Service::Relay as u8;
    remac(&cloud_key(), &mut moved);
    assert_eq!(
        trs.handle_datagram(
            net.now,
            net.unix(),
            node_addr(),
            &mut moved,
            &mut rng,
            &mut out
        )
        .unwrap(),
        ServerEvent::Dropped(DropReason::DecryptFailed)
    );

    // Once the server has forgotten the node (restart), the old hello is refused by
    // the timestamp window instead.
    let mut restarted = ChannelServer::new(&cloud_key(), vec![], ServerConfig::new(Service::Auth));
    let later = net.now + Duration::from_secs(3600);
    let mut copy = hello.clone();
    assert_eq!(
        restarted
            .handle_datagram(
                later,
                UnixTime(UNIX_BASE + 3600),
                node_addr(),
                &mut copy,
                &mut rng,
                &mut out
            )
            .unwrap(),
        ServerEvent::Dropped(DropReason::ClockSkew)
    );
}

#[test]
fn tampered_hellos_are_rejected() {
    let mut net = Net::new(Service::Auth, Purpose::Login, &cloud_key());
    net.server_up = false;
    net.send_request(&login_request(1));
    net.flush_node();
    let hello = net.sent(Dir::ToServer, MessageType::ChannelHello)[0].clone();
    let mac2_at = hello.len() - 16;
    let mut rng = ChaCha20Rng::seed_from_u64(5);
    let mut out = [0u8; MAX_DATAGRAM_LEN];
    for i in 0..mac2_at {
        let mut server = ChannelServer::new(&cloud_key(), vec![], ServerConfig::new(Service::Auth));
        let mut bad = hello.clone();
        bad[i] ^= 0x04;
        let event = server
            .handle_datagram(
                net.now,
                net.unix(),
                node_addr(),
                &mut bad,
                &mut rng,
                &mut out,
            )
            .unwrap();
        assert!(
            matches!(event, ServerEvent::Dropped(_)),
            "byte {i}: {event:?}"
        );
        // With mac1 recomputed, the handshake itself still catches every change.
        let mut bad = hello.clone();
        bad[i] ^= 0x04;
        if i < mac2_at - 16 {
            remac(&cloud_key(), &mut bad);
        }
        let event = server
            .handle_datagram(
                net.now,
                net.unix(),
                node_addr(),
                &mut bad,
                &mut rng,
                &mut out,
            )
            .unwrap();
        let expected: &[DropReason] = match i {
            0 => &[DropReason::UnknownVersion],
            1 => &[DropReason::UnexpectedType],
            2 | 3 => &[DropReason::Malformed],
            _ if i >= mac2_at - 16 => &[DropReason::BadMac1],
            _ => &[DropReason::DecryptFailed],
        };
        assert!(
            matches!(event, ServerEvent::Dropped(r) if expected.contains(&r)),
            "byte {i}: {event:?}"
        );
    }
    // Intact, it is accepted.
    net.server_up = true;
    assert!(matches!(
        net.server_receive(hello),
        ServerEvent::Accept { .. }
    ));
}

#[test]
fn tampered_accepts_and_signals_are_rejected() {
    let mut net = Net::new(Service::Auth, Purpose::Login, &cloud_key());
    net.auto_reply = false;
    net.send_request(&login_request(1));
    // Intercept the accept before the node sees it.
    net.flush_node();
    let hello = net.in_flight.remove(0).2;
    net.server_receive(hello);
    let accept = net.in_flight.remove(0).2;
    let (now, unix) = (net.now, net.unix());
    for i in 0..accept.len() {
        let mut bad = accept.clone();
        bad[i] ^= 0x20;
        assert!(
            net.node.handle_datagram(now, unix, &mut bad).is_err(),
            "byte {i}"
        );
    }
    assert!(!net.node.is_connected(now));
    let mut good = accept.clone();
    net.node.handle_datagram(now, unix, &mut good).unwrap();
    assert!(net.node.is_connected(now));

    net.flush_node();
    let signal = net.in_flight.pop().unwrap().2;
    assert_eq!(signal[1], MessageType::Signal as u8);
    for i in 0..signal.len() {
        let mut bad = signal.clone();
        bad[i] ^= 0x01;
        let event = net.server_receive(bad);
        assert!(
            matches!(event, ServerEvent::Dropped(_)),
            "byte {i}: {event:?}"
        );
    }
    assert!(net.requests.is_empty());
    assert!(matches!(
        net.server_receive(signal),
        ServerEvent::Request { .. }
    ));
    // Truncations too.
    let reply = {
        let (channel, _, inner) = net.requests[0].clone();
        let mut out = [0u8; MAX_DATAGRAM_LEN];
        let (n, _) = net
            .server
            .seal_to(now, channel, &reply_to(&inner), &mut out)
            .unwrap();
        out[..n].to_vec()
    };
    for cut in [0, 1, SIGNAL_HEADER_LEN, reply.len() - 1] {
        let mut short = reply[..cut].to_vec();
        assert!(net.node.handle_datagram(now, unix, &mut short).is_err());
    }
    let mut reply = reply;
    net.node.handle_datagram(now, unix, &mut reply).unwrap();
    net.flush_node();
    assert_eq!(net.replies().len(), 1);
}

#[test]
fn credential_channels_verify_the_credential() {
    let mut net = Net::new(
        Service::NodeManagement,
        Purpose::Credential(valid_credential()),
        &cloud_key(),
    );
    net.send_request(&request(0x10, 1, b"register"));
    assert!(net.run_until(Duration::from_secs(5), |n| n.has_reply(1)));
    let (_, peer, _) = &net.requests[0];
    assert_eq!(peer.purpose, PurposeKind::Credential);
    assert_eq!(peer.credential.as_ref(), Some(&valid_credential()));

    let me = PublicKey::from(&node_static()).to_bytes();
    let other_cloud = SigningKey::from_bytes(&[0x0f; 32]);
    let cases = [
        (
            "expired",
            credential_for(&cloud_key(), me, UNIX_BASE - 7200, UNIX_BASE - 3600),
        ),
        (
            "not yet valid",
            credential_for(&cloud_key(), me, UNIX_BASE + 3600, UNIX_BASE + 7200),
        ),
        (
            "forged",
            credential_for(&other_cloud, me, UNIX_BASE - 60, UNIX_BASE + 3600),
        ),
        (
            "other key",
            credential_for(&cloud_key(), [0x55; 32], UNIX_BASE - 60, UNIX_BASE + 3600),
        ),
        ("bad signature", {
            let mut bytes = valid_credential().as_bytes().to_vec();
            let last = bytes.len() - 1;
            bytes[last] ^= 1;
            SignedCredential::parse(&bytes).unwrap()
        }),
    ];
    for (name, credential) in cases {
        let mut net = Net::new(
            Service::NodeManagement,
            Purpose::Credential(credential),
            &cloud_key(),
        );
        net.send_request(&request(0x10, 1, b"register"));
        net.run_for(Duration::from_secs(5));
        assert_eq!(net.connected_count(), 0, "{name}");
        assert!(
            net.server.drops().get(DropReason::BadCredential) >= 3,
            "{name}: {:?}",
            net.server.drops()
        );
        assert_eq!(
            net.server.drops().total(),
            net.server.drops().get(DropReason::BadCredential)
        );
    }
}

#[test]
fn credential_only_services_refuse_logins() {
    let mut net = Net::new(Service::NodeManagement, Purpose::Login, &cloud_key());
    net.send_request(&login_request(1));
    net.run_for(Duration::from_secs(40));
    assert_eq!(net.connected_count(), 0);
    assert!(net.server.drops().get(DropReason::PurposeRefused) >= 5);
    assert_eq!(net.failed(), vec![1]);

    // And an AS configured without logins refuses them as well.
    let mut config = ServerConfig::new(Service::Auth);
    config.accept_login = false;
    let mut net = Net::with(
        config,
        Purpose::Login,
        &cloud_key(),
        SignalingConfig::default(),
    );
    net.send_request(&login_request(1));
    net.run_for(Duration::from_secs(2));
    assert!(net.server.drops().get(DropReason::PurposeRefused) >= 1);
    assert_eq!(net.connected_count(), 0);
}

#[test]
fn requests_survive_thirty_percent_loss() {
    let mut net = Net::new(
        Service::NodeManagement,
        Purpose::Credential(valid_credential()),
        &cloud_key(),
    );
    net.loss = 0.3;
    for id in 1..=40u32 {
        net.send_request(&request(0x11, id, b"keepalive"));
        assert!(
            net.run_until(Duration::from_secs(30), |n| n.has_reply(id)),
            "request {id}: {:?}",
            net.events
        );
    }
    assert!(net.failed().is_empty());
    let signals_sent = net.sent(Dir::ToServer, MessageType::Signal).len();
    assert!(signals_sent > 40, "no retransmission under loss?");
    // Retransmissions reach the cloud more than once sometimes; every reply arrived
    // exactly once.
    let mut ids: Vec<u32> = net.replies().iter().map(|r| r.0).collect();
    ids.dedup();
    assert_eq!(ids, (1..=40).collect::<Vec<_>>());
}

#[test]
fn retransmissions_back_off_exponentially_then_fail() {
    let mut net = Net::new(Service::Auth, Purpose::Login, &cloud_key());
    net.send_request(&login_request(1));
    assert!(net.run_until(Duration::from_secs(5), |n| n.has_reply(1)));
    net.server_up = false;
    let t0 = net.now;
    net.send_request(&login_request(2));
    net.run_for(Duration::from_secs(40));
    let times: Vec<f64> = net
        .wire
        .iter()
        .filter(|(t, d, b)| *t >= t0 && *d == Dir::ToServer && b[1] == MessageType::Signal as u8)
        .map(|(t, _, _)| (*t - t0).as_secs_f64())
        .collect();
    assert_eq!(times, vec![0.0, 0.5, 1.5, 3.5, 7.5, 15.5, 23.5]);
    // After three unanswered tries the node suspects the channel and re-handshakes
    // alongside.
    assert!(net.wire.iter().any(|(t, d, b)| *t >= t0
        && *d == Dir::ToServer
        && b[1] == MessageType::ChannelHello as u8));
    assert_eq!(net.failed(), vec![2]);
    let failed_at = net
        .events
        .iter()
        .position(|e| *e == Event::RequestFailed { request_id: 2 });
    assert!(failed_at.is_some());
    assert_eq!(net.node.pending_requests(), 0);
}

#[test]
fn server_pushes_reach_the_node() {
    let mut net = Net::new(
        Service::NodeManagement,
        Purpose::Credential(valid_credential()),
        &cloud_key(),
    );
    net.send_request(&request(0x10, 1, b"register"));
    assert!(net.run_until(Duration::from_secs(5), |n| n.has_reply(1)));
    let push = request(0x20, 0x8000_0001, b"route direction");
    net.push(&push);
    assert!(net.run_until(Duration::from_secs(1), |n| {
        n.events.contains(&Event::Push(push.clone()))
    }));
    // A message too short for a request id is a push too.
    net.push(&[0x21]);
    assert!(net.run_until(Duration::from_secs(1), |n| {
        n.events.contains(&Event::Push(vec![0x21]))
    }));
}

#[test]
fn duplicate_replies_are_not_pushes() {
    let mut net = Net::new(Service::Auth, Purpose::Login, &cloud_key());
    net.auto_reply = false;
    net.send_request(&login_request(5));
    assert!(net.run_until(Duration::from_secs(2), |n| !n.requests.is_empty()));
    let (channel, _, inner) = net.requests[0].clone();
    for _ in 0..2 {
        let mut out = [0u8; MAX_DATAGRAM_LEN];
        let (n, _) = net
            .server
            .seal_to(net.now, channel, &reply_to(&inner), &mut out)
            .unwrap();
        net.put_on_wire(Dir::ToNode, out[..n].to_vec());
    }
    net.run_for(Duration::from_secs(1));
    assert_eq!(net.replies().len(), 1);
    assert!(!net.events.iter().any(|e| matches!(e, Event::Push(_))));
    assert_eq!(net.node.drops().get(DropReason::Duplicate), 1);
}

#[test]
fn channel_expiry_re_handshakes_transparently() {
    let mut config = ServerConfig::new(Service::NodeManagement);
    config.lifetime = Duration::from_secs(60);
    let mut net = Net::with(
        config.clone(),
        Purpose::Credential(valid_credential()),
        &cloud_key(),
        SignalingConfig::default(),
    );
    // A keepalive every 5 s for five channel lifetimes: the node replaces each channel
    // before it expires, so no request ever waits for a handshake (one round trip is
    // 40 ms here).
    let (now, unix) = (net.now, net.unix());
    net.node.connect(now, unix, &mut net.rng).unwrap();
    assert!(net.run_until(Duration::from_secs(1), |n| n.connected_count() == 1));
    for id in 1..=60u32 {
        let sent = net.now;
        net.send_request(&request(0x11, id, b"keepalive"));
        assert!(
            net.run_until(Duration::from_secs(1), |n| n.has_reply(id)),
            "{id}"
        );
        assert!(
            net.now - sent <= Duration::from_millis(40),
            "request {id} waited"
        );
        net.run_for(Duration::from_secs(5) - (net.now - sent));
    }
    assert!(net.failed().is_empty());
    assert!(net.connected_count() >= 6, "{}", net.connected_count());
    assert!(!net.events.contains(&Event::ChannelLost));
    assert_eq!(net.node.drops().total(), 0);
    assert_eq!(net.server.drops().total(), 0);
    // At most the current and the previous channel per node.
    assert!(net.server.channel_count() <= 2);

    // Left idle, the channel is replaced once more and then lapses.
    net.run_for(Duration::from_secs(200));
    assert!(!net.node.is_connected(net.now));
    assert_eq!(net.server.channel_count(), 0);

    // A request in flight while the channel is replaced completes on the new one.
    let mut net = Net::with(
        config,
        Purpose::Credential(valid_credential()),
        &cloud_key(),
        SignalingConfig::default(),
    );
    net.send_request(&request(0x11, 1, b"keepalive"));
    assert!(net.run_until(Duration::from_secs(1), |n| n.has_reply(1)));
    net.run_for(Duration::from_secs(38));
    net.server_up = false;
    net.send_request(&request(0x11, 2, b"keepalive"));
    net.run_for(Duration::from_secs(5));
    assert_eq!(net.connected_count(), 1);
    net.server_up = true;
    assert!(net.run_until(Duration::from_secs(20), |n| n.has_reply(2)));
    assert_eq!(net.connected_count(), 2);
    // The reply came on the new channel.
    let last_reply = net.sent(Dir::ToNode, MessageType::Signal).pop().unwrap();
    let last_accept = net
        .sent(Dir::ToNode, MessageType::ChannelAccept)
        .pop()
        .unwrap();
    assert_eq!(last_reply[4..8], last_accept[8..12]);
}

#[test]
fn a_cloud_restart_is_noticed_and_pending_requests_complete() {
    let mut net = Net::new(
        Service::NodeManagement,
        Purpose::Credential(valid_credential()),
        &cloud_key(),
    );
    net.send_request(&request(0x10, 1, b"register"));
    assert!(net.run_until(Duration::from_secs(5), |n| n.has_reply(1)));
    net.server = ChannelServer::new(
        &cloud_key(),
        vec![],
        ServerConfig::new(Service::NodeManagement),
    );
    net.send_request(&request(0x11, 2, b"keepalive"));
    assert!(net.run_until(Duration::from_secs(10), |n| n.has_reply(2)));
    assert_eq!(net.connected_count(), 2);
    assert!(net.server.drops().get(DropReason::UnknownChannel) >= 3);
}

#[test]
fn persistent_channels_stay_up_for_pushes() {
    let config = SignalingConfig {
        persistent: true,
        ..SignalingConfig::default()
    };
    let mut server_config = ServerConfig::new(Service::NodeManagement);
    server_config.lifetime = Duration::from_secs(60);
    let mut net = Net::with(
        server_config,
        Purpose::Credential(valid_credential()),
        &cloud_key(),
        config,
    );
    let (now, unix) = (net.now, net.unix());
    net.node.connect(now, unix, &mut net.rng).unwrap();
    net.run_for(Duration::from_secs(300));
    assert!(net.connected_count() >= 5);
    let push = request(0x20, 0x8000_0002, b"route direction");
    net.push(&push);
    assert!(net.run_until(Duration::from_secs(1), |n| {
        n.events.contains(&Event::Push(push.clone()))
    }));
}

#[test]
fn cookies_are_required_under_load() {
    let mut net = Net::new(Service::Auth, Purpose::Login, &cloud_key());
    net.server.set_under_load(true);
    net.send_request(&login_request(1));
    assert!(net.run_until(Duration::from_secs(5), |n| n.has_reply(1)));
    assert_eq!(net.cookie_replies, 1);
    let hellos = net.sent(Dir::ToServer, MessageType::ChannelHello);
    assert_eq!(hellos.len(), 2);
    assert_eq!(&hellos[0][hellos[0].len() - 16..], &[0u8; 16]);
    assert_ne!(&hellos[1][hellos[1].len() - 16..], &[0u8; 16]);
    // The cookie reply is smaller than the hello it answers: no amplification.
    let cookie = &net.sent(Dir::ToNode, MessageType::CookieReply)[0];
    assert!(cookie.len() < hellos[0].len());
    // A hello with a bad mac1 gets no cookie.
    let mut junk = hellos[0].clone();
    junk[HELLO_PAYLOAD_OFFSET] ^= 1;
    assert_eq!(
        net.server_receive(junk),
        ServerEvent::Dropped(DropReason::BadMac1)
    );
}

#[test]
fn hellos_from_wrong_clocks_are_refused() {
    let mut net = Net::new(Service::Auth, Purpose::Login, &cloud_key());
    net.node_clock_ahead = 3600;
    net.send_request(&login_request(1));
    net.run_for(Duration::from_secs(3));
    assert_eq!(net.connected_count(), 0);
    assert!(net.server.drops().get(DropReason::ClockSkew) >= 1);

    // A few minutes off still connects, and the node learns the offset.
    let mut net = Net::new(Service::Auth, Purpose::Login, &cloud_key());
    net.node_clock_ahead = 300;
    net.send_request(&login_request(1));
    assert!(net.run_until(Duration::from_secs(3), |n| n.has_reply(1)));
    let Event::Connected(e) = &net.events[0] else {
        panic!("{:?}", net.events)
    };
    assert_eq!(e.clock_offset_millis, -300_000);
}

#[test]
fn server_state_is_bounded() {
    let mut config = ServerConfig::new(Service::Auth);
    config.max_channels = 4;
    let mut server = ChannelServer::new(&cloud_key(), vec![], config);
    let mut rng = ChaCha20Rng::seed_from_u64(3);
    let now = Instant::now();
    let mut out = [0u8; MAX_DATAGRAM_LEN];
    let mut hello = [0u8; MAX_DATAGRAM_LEN];
    for i in 0..10u8 {
        let key = StaticSecret::from([i + 1; 32]);
        let mut client = ChannelClient::new(
            &cloud_key().verifying_key(),
            &key,
            Service::Auth,
            Purpose::Login,
        );
        let n = client
            .start(now, UnixTime(UNIX_BASE), &mut rng, &mut hello)
            .unwrap();
        let event = server
            .handle_datagram(
                now,
                UnixTime(UNIX_BASE),
                node_addr(),
                &mut hello[..n],
                &mut rng,
                &mut out,
            )
            .unwrap();
        assert!(matches!(event, ServerEvent::Accept { .. }));
    }
    assert_eq!(server.channel_count(), 4);
    assert_eq!(server.evictions(), 6);
    // Expired channels go away on their own.
    server.handle_timeout(now + Duration::from_secs(3600));
    assert_eq!(server.channel_count(), 0);
    assert_eq!(server.poll_timeout(), None);

    // One node re-handshaking again and again holds at most two channels.
    let mut client = ChannelClient::new(
        &cloud_key().verifying_key(),
        &node_static(),
        Service::Auth,
        Purpose::Login,
    );
    for _ in 0..5 {
        let n = client
            .start(now, UnixTime(UNIX_BASE), &mut rng, &mut hello)
            .unwrap();
        server
            .handle_datagram(
                now,
                UnixTime(UNIX_BASE),
                node_addr(),
                &mut hello[..n],
                &mut rng,
                &mut out,
            )
            .unwrap();
    }
    assert_eq!(server.channel_count(), 2);
}

#[test]
fn api_misuse_is_an_error_not_a_panic() {
    let mut net = Net::new(Service::Auth, Purpose::Login, &cloud_key());
    let (now, unix) = (net.now, net.unix());
    assert!(
        net.node
            .send_request(now, unix, &mut net.rng, &[1, 2])
            .is_err()
    );
    assert!(
        net.node
            .send_request(now, unix, &mut net.rng, &vec![1; 1201])
            .is_err()
    );
    net.node
        .send_request(now, unix, &mut net.rng, &request(1, 9, b""))
        .unwrap();
    assert!(
        net.node
            .send_request(now, unix, &mut net.rng, &request(1, 9, b"again"))
            .is_err()
    );
    let mut small = [0u8; 10];
    assert!(net.node.poll_transmit(now, &mut small).is_err());
    let mut client = ChannelClient::new(
        &cloud_key().verifying_key(),
        &node_static(),
        Service::Auth,
        Purpose::Login,
    );
    assert!(client.seal(now, b"x", &mut [0u8; 64]).is_err());
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let mut out = [0u8; 10];
    let mut d = vec![1, 1];
    assert!(
        net.server
            .handle_datagram(now, unix, node_addr(), &mut d, &mut rng, &mut out)
            .is_err()
    );
}

#[test]
fn debug_output_shows_no_secrets() {
    let mut net = Net::new(
        Service::NodeManagement,
        Purpose::Credential(valid_credential()),
        &cloud_key(),
    );
    net.send_request(&login_request(1));
    net.flush_node();
    let text = format!("{:?} {:?} {:?}", net.node, net.server, net.events);
    let secret_hex = hex::encode([0x42u8; 32]);
    assert!(!text.contains(&secret_hex));
    assert!(!text.contains("correct horse"));
    let event = Event::Reply {
        request_id: 1,
        message: login_request(1),
    };
    assert!(!format!("{event:?}").contains("correct"));
}

/// Datagrams that look like channel traffic: our version and one of the channel types
/// up front, then anything.
fn channel_like() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::sample::select(vec![0x01u8, 0x02, 0x03, 0x12, 0x13, 0xff]),
        prop::collection::vec(any::<u8>(), 0..700),
    )
        .prop_map(|(kind, mut rest)| {
            let mut d = vec![1, kind];
            d.append(&mut rest);
            d
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_bytes_never_panic(
        raw in prop::collection::vec(any::<u8>(), 0..700),
        shaped in channel_like(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
    ) {
        let mut net = Net::new(Service::Auth, Purpose::Login, &cloud_key());
        net.send_request(&login_request(1));
        assert!(net.run_until(Duration::from_secs(5), |n| n.has_reply(1)));
        net.server.set_under_load(raw.len() % 2 == 0);
        let (now, unix) = (net.now, net.unix());
        // Real datagrams with a few bytes changed, and shaped and raw junk.
        let mut inputs = vec![raw.clone(), shaped.clone()];
        for (_, _, datagram) in net.wire.clone() {
            let mut d = datagram;
            for (at, value) in &flips {
                let i = at.index(d.len());
                d[i] ^= value | 1;
            }
            inputs.push(d);
        }
        for input in inputs {
            let mut a = input.clone();
            let _ = net.node.handle_datagram(now, unix, &mut a);
            let event = net.server_receive(input);
            let authenticated = matches!(event, ServerEvent::Request { .. });
            prop_assert!(!authenticated, "junk authenticated");
        }
        // Still works afterwards.
        net.send_request(&login_request(2));
        prop_assert!(net.run_until(Duration::from_secs(30), |n| n.has_reply(2)));
    }
}
