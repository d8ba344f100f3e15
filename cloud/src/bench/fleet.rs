//! The simulated nodes: one sans-IO [`ChannelClient`] per node, all driven from one
//! task over a few shared UDP sockets.
//!
//! Routing a datagram to its node costs no table: every channel index a node chooses
//! (the hello's sender index, which becomes the index the NMS addresses the channel's
//! datagrams, accepts and cookie replies to) is `generation << 20 | node number`. The
//! client draws that index with `RngCore::next_u32`; [`IndexRng`] hands it the chosen
//! one and real randomness for everything else (the ephemeral key). The run checks
//! every hello it builds, so a change in how the client draws indices is an error, not
//! silently unroutable replies.
//!
//! A phase is a list of operations (node, target). At most `window` are in flight; each
//! is retransmitted after a timeout (doubling) up to `attempts` transmissions. The
//! timeout adapts to the measured latency as TCP's does (RFC 6298, never below the
//! configured `rto`): a queue of a thousand hellos at a busy NMS takes a while, and a
//! spurious hello retransmission opens a second channel for the node at the NMS (and a
//! third evicts the one the node is using). A node runs one operation at a time, but
//! answers pushes (`RouteDirectionToResponder`) whenever they come.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::future::poll_fn;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::task::Poll;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, bail};
use cyphonic_proto::channel::{ChannelClient, MAX_DATAGRAM_LEN, MAX_INNER_LEN, Purpose, Service};
use cyphonic_proto::credential::{CloudKeyId, Credential, SignedCredential};
use cyphonic_proto::time::UnixTime;
use cyphonic_proto::wire::channel::{
    ChannelAcceptPacket, ChannelCookiePacket, ChannelHelloPacket, HELLO_MAX_LEN,
    SignalPacket as ChannelSignalPacket,
};
use cyphonic_proto::wire::signal::{RegistrationRequest, SignalMessage, SignalPacket, SignalRepr};
use cyphonic_proto::wire::status::StatusCode;
use cyphonic_proto::wire::{Fqdn, MessageType, NodeId, classify};
use ed25519_dalek::SigningKey;
use rand_core::{CryptoRng, OsRng, RngCore};
use sha2::{Digest, Sha256};
use tokio::io::ReadBuf;
use tokio::net::UdpSocket;
use x25519_dalek::{PublicKey, StaticSecret};

use super::PhaseReport;
use crate::net;

/// Bits of a channel index that name the node.
const NODE_BITS: u32 = 20;
const NODE_MASK: u32 = (1 << NODE_BITS) - 1;
/// Most nodes one run can simulate.
pub(super) const MAX_NODES: usize = 1 << NODE_BITS;
/// Generations of hellos per node before indices repeat.
const GENERATION_MASK: u32 = (1 << (32 - NODE_BITS)) - 1;
/// Longest retransmission timeout.
const MAX_RTO: Duration = Duration::from_secs(8);
/// Cookie replies one handshake follows at once before waiting for its timer.
const MAX_COOKIE_ROUNDS: u8 = 4;
/// Datagrams read from one socket in a row.
const RECV_BATCH: usize = 256;
/// Operations in flight at the start of a phase; each success lets two more go
/// (TCP's slow start), up to the window. Without it the first thousand hellos would
/// queue at the NMS for longer than the first timeout, before any latency is known.
const INITIAL_WINDOW: usize = 32;
/// Longest sleep without checking timers.
const MAX_WAIT: Duration = Duration::from_millis(50);
/// Credentials minted for the run are valid this long.
const CREDENTIAL_LIFETIME: Duration = Duration::from_secs(4 * 3600);
/// The domain simulated nodes are named in (the config's default domain).
const DOMAIN: &str = "bench.cyphonic";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum OpKind {
    Handshake,
    Registration,
    KeepAlive,
    Direction,
}

impl OpKind {
    fn name(self) -> &'static str {
        match self {
            Self::Handshake => "channel handshakes",
            Self::Registration => "registrations",
            Self::KeepAlive => "keepalives",
            Self::Direction => "direction requests",
        }
    }
}

#[derive(Debug, Clone)]
pub(super) struct FleetSettings {
    pub(super) sockets: usize,
    pub(super) window: usize,
    pub(super) rto: Duration,
    pub(super) attempts: u32,
}

/// One simulated node.
pub(super) struct SimNode {
    channel: ChannelClient,
    /// The operation in flight, if any.
    busy: Option<OpKind>,
    /// The direction target of the operation in flight.
    target: u32,
    /// Request id of the operation in flight (the last one sent).
    request_id: u32,
    /// Bumped on every transmission; timers carry it to recognise stale entries.
    serial: u32,
    generation: u32,
    transmissions: u32,
    cookie_rounds: u8,
    registered: bool,
    started: Instant,
}

impl std::fmt::Debug for SimNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimNode")
            .field("busy", &self.busy)
            .field("registered", &self.registered)
            .finish_non_exhaustive()
    }
}

/// Keys and credentials for `count` nodes, minted on all cores. Node `i`'s static key
/// and node id are derived from `i`, so runs are repeatable.
pub(super) fn mint_nodes(cloud: &SigningKey, count: usize) -> Vec<SimNode> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = count.div_ceil(threads).max(1);
    let now = Instant::now();
    let unix = UnixTime::from_system_time(SystemTime::now());
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..count)
            .step_by(chunk)
            .map(|start| {
                let end = (start + chunk).min(count);
                scope.spawn(move || {
                    (start..end)
                        .map(|i| mint_node(cloud, i as u32, now, unix))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap_or_default())
            .collect()
    })
}

fn mint_node(cloud: &SigningKey, i: u32, now: Instant, unix: UnixTime) -> SimNode {
    let digest = |label: &[u8]| -> [u8; 32] {
        Sha256::new()
            .chain_update(label)
            .chain_update(i.to_be_bytes())
            .finalize()
            .into()
    };
    let secret = StaticSecret::from(digest(b"cyphonic bench node key"));
    let mut node_id = [0u8; 16];
    node_id.copy_from_slice(&digest(b"cyphonic bench node id")[..16]);
    let credential = Credential {
        cloud_key_id: CloudKeyId::of(&cloud.verifying_key()),
        node_id: NodeId(node_id),
        not_before: unix.saturating_sub(Duration::from_secs(60)),
        not_after: unix.saturating_add(CREDENTIAL_LIFETIME),
        static_public: PublicKey::from(&secret).to_bytes(),
        vip4: Ipv4Addr::from(u32::from(Ipv4Addr::new(100, 64, 0, 1)) + i),
        vip6: Ipv6Addr::from(0xfd00_0000_0000_beec_0000_0000_0000_0000u128 + u128::from(i) + 1),
        fqdn: node_name(i),
    }
    .sign(cloud);
    SimNode {
        channel: ChannelClient::new(
            &cloud.verifying_key(),
            &secret,
            Service::NodeManagement,
            Purpose::Credential(credential),
        ),
        busy: None,
        target: 0,
        request_id: 0,
        serial: 0,
        generation: 0,
        transmissions: 0,
        cookie_rounds: 0,
        registered: false,
        started: now,
    }
}

fn node_name(i: u32) -> Fqdn {
    Fqdn::new(&format!("n{i}.{DOMAIN}")).expect("n<digits>.bench.cyphonic is a valid name")
}

/// `count` (initiator, target) pairs among `nodes`: every initiator once before any
/// repeats, targets uniformly random and never the initiator.
pub(super) fn direction_pairs(nodes: &[(u32, u32)], count: usize) -> Vec<(u32, u32)> {
    let mut rng = SplitMix(OsRng.next_u64());
    let mut order: Vec<u32> = nodes.iter().map(|(n, _)| *n).collect();
    if order.len() < 2 {
        return Vec::new();
    }
    for i in (1..order.len()).rev() {
        order.swap(i, rng.below(i + 1));
    }
    (0..count)
        .map(|k| {
            let initiator = order[k % order.len()];
            let target = loop {
                let t = order[rng.below(order.len())];
                if t != initiator {
                    break t;
                }
            };
            (initiator, target)
        })
        .collect()
}

/// The simulated nodes and their sockets.
pub(super) struct Fleet {
    nodes: Vec<SimNode>,
    sockets: Vec<UdpSocket>,
    local: Vec<SocketAddr>,
    nms: SocketAddr,
    settings: FleetSettings,
}

/// A phase's moving parts.
struct Phase {
    kind: OpKind,
    report: PhaseReport,
    timers: BinaryHeap<Reverse<(Instant, u32, u32)>>,
    in_flight: usize,
    latencies_us: Vec<u32>,
    rtt: RttEstimate,
    out: Vec<u8>,
    scratch: Vec<u8>,
}

impl Fleet {
    /// Binds the shared sockets on loopback (in the caller's tokio runtime).
    pub(super) fn new(
        nodes: Vec<SimNode>,
        nms: SocketAddr,
        settings: &FleetSettings,
    ) -> anyhow::Result<Self> {
        let bind = SocketAddr::new(nms.ip(), 0);
        let sockets = (0..settings.sockets)
            .map(|_| net::bind_udp(bind))
            .collect::<io::Result<Vec<_>>>()
            .context("binding the simulated nodes' sockets")?;
        let local = sockets
            .iter()
            .map(UdpSocket::local_addr)
            .collect::<io::Result<Vec<_>>>()?;
        Ok(Self {
            nodes,
            sockets,
            local,
            nms,
            settings: settings.clone(),
        })
    }

    pub(super) fn len(&self) -> u32 {
        self.nodes.len() as u32
    }

    /// Nodes with a channel, as phase work.
    pub(super) fn established(&self) -> Vec<(u32, u32)> {
        let now = Instant::now();
        (0..self.len())
            .filter(|&n| self.nodes[n as usize].channel.is_established(now))
            .map(|n| (n, 0))
            .collect()
    }

    /// Registered nodes, as phase work.
    pub(super) fn registered(&self) -> Vec<(u32, u32)> {
        (0..self.len())
            .filter(|&n| self.nodes[n as usize].registered)
            .map(|n| (n, 0))
            .collect()
    }

    /// Runs `work` (node, target) with at most `window` operations in flight.
    pub(super) async fn run_phase(
        &mut self,
        kind: OpKind,
        work: Vec<(u32, u32)>,
    ) -> anyhow::Result<PhaseReport> {
        let mut phase = Phase {
            kind,
            report: PhaseReport {
                name: kind.name(),
                ..PhaseReport::default()
            },
            timers: BinaryHeap::new(),
            in_flight: 0,
            latencies_us: Vec::with_capacity(work.len()),
            rtt: RttEstimate::default(),
            out: vec![0u8; MAX_DATAGRAM_LEN.max(HELLO_MAX_LEN)],
            scratch: vec![0u8; MAX_INNER_LEN],
        };
        let mut buf = vec![0u8; 4096];
        let mut work = work.into_iter();
        let mut work_done = false;
        let mut deferred: VecDeque<(u32, u32)> = VecDeque::new();
        let mut next_socket = 0usize;
        let start = Instant::now();
        loop {
            // Keep the window full. A node still busy with an earlier operation
            // waits in `deferred`.
            let mut skipped = 0usize;
            let ramp = INITIAL_WINDOW.saturating_add(2 * phase.report.ok as usize);
            let window = self.settings.window.min(ramp);
            while phase.in_flight < window && skipped <= window {
                let ready_deferred = deferred
                    .front()
                    .is_some_and(|(n, _)| self.nodes[*n as usize].busy.is_none());
                let next = if ready_deferred {
                    deferred.pop_front()
                } else {
                    let next = work.next();
                    work_done |= next.is_none();
                    next
                };
                let Some((n, target)) = next else { break };
                if self.nodes[n as usize].busy.is_some() {
                    deferred.push_back((n, target));
                    skipped += 1;
                    continue;
                }
                self.begin(&mut phase, n, target)?;
            }
            if phase.in_flight == 0 && work_done && deferred.is_empty() {
                break;
            }

            let now = Instant::now();
            while let Some(&Reverse((at, n, serial))) = phase.timers.peek() {
                if at > now {
                    break;
                }
                phase.timers.pop();
                self.on_timer(&mut phase, n, serial)?;
            }

            let wait = phase
                .timers
                .peek()
                .map_or(MAX_WAIT, |Reverse((at, _, _))| {
                    at.saturating_duration_since(now)
                })
                .min(MAX_WAIT);
            let received =
                tokio::time::timeout(wait, recv_any(&self.sockets, &mut buf, &mut next_socket))
                    .await;
            let Ok((socket, result)) = received else {
                continue;
            };
            match result {
                Ok(len) => self.on_datagram(&mut phase, &mut buf[..len])?,
                Err(e) => bail!("receiving on a node socket: {e}"),
            }
            for _ in 0..RECV_BATCH {
                match self.sockets[socket].try_recv_from(&mut buf) {
                    Ok((len, _)) => self.on_datagram(&mut phase, &mut buf[..len])?,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => bail!("receiving on a node socket: {e}"),
                }
            }
        }
        phase.report.elapsed = start.elapsed();
        phase.latencies_us.sort_unstable();
        let pick = |q: f64| {
            let l = &phase.latencies_us;
            if l.is_empty() {
                return Duration::ZERO;
            }
            let i = ((l.len() - 1) as f64 * q).round() as usize;
            Duration::from_micros(u64::from(l[i.min(l.len() - 1)]))
        };
        phase.report.latency_p50 = pick(0.5);
        phase.report.latency_p99 = pick(0.99);
        phase.report.latency_max = pick(1.0);
        Ok(phase.report)
    }

    fn begin(&mut self, phase: &mut Phase, n: u32, target: u32) -> anyhow::Result<()> {
        let node = &mut self.nodes[n as usize];
        node.busy = Some(phase.kind);
        node.target = target;
        node.transmissions = 0;
        node.cookie_rounds = 0;
        node.started = Instant::now();
        // Node request ids keep the top bit clear (the NMS's pushes set it).
        node.request_id = node.request_id.wrapping_add(1) & 0x7fff_ffff;
        phase.in_flight += 1;
        phase.report.attempted += 1;
        self.transmit(phase, n)
    }

    /// Sends the operation of node `n` (again) and arms its timer.
    fn transmit(&mut self, phase: &mut Phase, n: u32) -> anyhow::Result<()> {
        let now = Instant::now();
        let rto = {
            let node = &self.nodes[n as usize];
            let shift = node.transmissions.min(8);
            (phase.rtt.rto(self.settings.rto) * (1u32 << shift)).min(MAX_RTO)
        };
        let len = match phase.kind {
            OpKind::Handshake => self.hello(phase, n, now)?,
            kind => match self.request(phase, n, kind, now) {
                Some(len) => len,
                None => {
                    phase.report.not_sent += 1;
                    self.finish(phase, n);
                    return Ok(());
                }
            },
        };
        let node = &mut self.nodes[n as usize];
        node.transmissions += 1;
        node.serial = node.serial.wrapping_add(1);
        phase.timers.push(Reverse((now + rto, n, node.serial)));
        self.send(phase, n, len);
        Ok(())
    }

    /// Writes a fresh hello for node `n` into `phase.out`.
    fn hello(&mut self, phase: &mut Phase, n: u32, now: Instant) -> anyhow::Result<usize> {
        let node = &mut self.nodes[n as usize];
        node.generation = (node.generation + 1) & GENERATION_MASK;
        let index = (node.generation << NODE_BITS) | n;
        let mut rng = IndexRng {
            index: Some(index),
            os: OsRng,
        };
        let unix = UnixTime::from_system_time(SystemTime::now());
        let len = node
            .channel
            .start(now, unix, &mut rng, &mut phase.out)
            .context("building a hello")?;
        let chosen = ChannelHelloPacket::new_checked(&phase.out[..len])
            .context("the client built an invalid hello")?
            .sender_index();
        if chosen != index {
            bail!(
                "ChannelClient no longer draws its index with next_u32: the bench cannot \
                 route replies to nodes (update bench/fleet.rs)"
            );
        }
        Ok(len)
    }

    /// Seals node `n`'s request into `phase.out`; `None` when its channel is gone.
    fn request(&mut self, phase: &mut Phase, n: u32, kind: OpKind, now: Instant) -> Option<usize> {
        let socket = self.local[n as usize % self.local.len()];
        let target = match kind {
            OpKind::Direction => Some(node_name(self.nodes[n as usize].target)),
            _ => None,
        };
        let node = &mut self.nodes[n as usize];
        let message = match (kind, target) {
            (OpKind::Registration, _) => SignalMessage::RegistrationRequest(RegistrationRequest {
                credential: credential(&node.channel)?.clone(),
                endpoints: vec![socket],
            }),
            (OpKind::KeepAlive, _) => SignalMessage::KeepAlive {
                sequence: u64::from(node.request_id),
            },
            (OpKind::Direction, Some(target)) => SignalMessage::DirectionRequest { target },
            _ => return None,
        };
        let repr = SignalRepr {
            request_id: node.request_id,
            message,
        };
        let inner = repr.emit(&mut phase.scratch).ok()?;
        node.channel
            .seal(now, &phase.scratch[..inner], &mut phase.out)
            .ok()
    }

    fn send(&mut self, phase: &mut Phase, n: u32, len: usize) {
        let socket = &self.sockets[n as usize % self.sockets.len()];
        if socket.try_send_to(&phase.out[..len], self.nms).is_err() {
            // Lost like on a network; the timer retransmits.
            phase.report.send_errors += 1;
        }
    }

    fn on_timer(&mut self, phase: &mut Phase, n: u32, serial: u32) -> anyhow::Result<()> {
        let node = &self.nodes[n as usize];
        if node.busy.is_none() || node.serial != serial {
            return Ok(());
        }
        if node.transmissions >= self.settings.attempts {
            phase.report.timeouts += 1;
            self.finish(phase, n);
            return Ok(());
        }
        phase.report.retransmissions += 1;
        self.transmit(phase, n)
    }

    fn on_datagram(&mut self, phase: &mut Phase, datagram: &mut [u8]) -> anyhow::Result<()> {
        let now = Instant::now();
        let index = match classify(datagram) {
            Ok(MessageType::ChannelAccept) => {
                ChannelAcceptPacket::new_checked(&datagram[..]).map(|p| p.receiver_index())
            }
            Ok(MessageType::CookieReply) => {
                ChannelCookiePacket::new_checked(&datagram[..]).map(|p| p.receiver_index())
            }
            Ok(MessageType::Signal) => {
                ChannelSignalPacket::new_checked(&datagram[..]).map(|p| p.receiver_index())
            }
            _ => {
                phase.report.undecodable += 1;
                return Ok(());
            }
        };
        let Some(n) = index
            .ok()
            .map(|i| i & NODE_MASK)
            .filter(|n| (*n as usize) < self.nodes.len())
        else {
            phase.report.undecodable += 1;
            return Ok(());
        };
        let unix = UnixTime::from_system_time(SystemTime::now());
        let node = &mut self.nodes[n as usize];
        match classify(datagram) {
            Ok(MessageType::ChannelAccept) => {
                if node.channel.handle_accept(now, unix, datagram).is_err() {
                    // Usually the accept of a retransmitted hello after the first
                    // one's: the client forgets its other hellos once one completes.
                    if node.channel.is_established(now) {
                        phase.report.late_accepts += 1;
                    } else {
                        phase.report.undecodable += 1;
                    }
                } else if node.busy == Some(OpKind::Handshake) {
                    self.complete(phase, n);
                } else {
                    phase.report.stray += 1;
                }
            }
            Ok(MessageType::CookieReply) => {
                if node.channel.handle_cookie(now, datagram).is_err() {
                    phase.report.undecodable += 1;
                } else if node.busy == Some(OpKind::Handshake)
                    && node.cookie_rounds < MAX_COOKIE_ROUNDS
                {
                    // The NMS is under hello load: send the hello again at once,
                    // now with mac2 from the cookie.
                    node.cookie_rounds += 1;
                    phase.report.cookie_rounds += 1;
                    node.transmissions = node.transmissions.saturating_sub(1);
                    self.transmit(phase, n)?;
                } else {
                    phase.report.stray += 1;
                }
            }
            _ => {
                let Ok(range) = node.channel.open(now, datagram) else {
                    phase.report.undecodable += 1;
                    return Ok(());
                };
                let inner = &datagram[range];
                let Ok(repr) = SignalPacket::new_checked(inner).and_then(|p| SignalRepr::parse(&p))
                else {
                    phase.report.undecodable += 1;
                    return Ok(());
                };
                self.on_signal(phase, n, repr, now);
            }
        }
        Ok(())
    }

    fn on_signal(&mut self, phase: &mut Phase, n: u32, repr: SignalRepr, now: Instant) {
        if let SignalMessage::RouteDirectionToResponder { direction_id, .. } = repr.message {
            // Accept, echoing the push's request id (so the NMS does not answer).
            let confirm = SignalRepr {
                request_id: repr.request_id,
                message: SignalMessage::RouteDirectionConfirmation {
                    direction_id,
                    status: StatusCode::SUCCESS,
                },
            };
            let node = &mut self.nodes[n as usize];
            let sealed = confirm.emit(&mut phase.scratch).ok().and_then(|len| {
                node.channel
                    .seal(now, &phase.scratch[..len], &mut phase.out)
                    .ok()
            });
            match sealed {
                Some(len) => {
                    phase.report.pushes_confirmed += 1;
                    self.send(phase, n, len);
                }
                None => phase.report.not_sent += 1,
            }
            return;
        }
        let node = &self.nodes[n as usize];
        let Some(kind) = node.busy.filter(|_| repr.request_id == node.request_id) else {
            phase.report.stray += 1;
            return;
        };
        match (kind, repr.message) {
            (OpKind::Registration, SignalMessage::RegistrationResponse(_)) => {
                self.nodes[n as usize].registered = true;
                self.complete(phase, n);
            }
            (OpKind::KeepAlive, SignalMessage::KeepAliveAck { .. })
            | (OpKind::Direction, SignalMessage::RouteDirectionToInitiator { .. }) => {
                self.complete(phase, n);
            }
            (_, SignalMessage::Status(report)) => {
                *phase.report.refused.entry(report.status.0).or_default() += 1;
                self.finish(phase, n);
            }
            _ => {
                phase.report.unexpected += 1;
                self.finish(phase, n);
            }
        }
    }

    /// The operation of node `n` succeeded.
    fn complete(&mut self, phase: &mut Phase, n: u32) {
        let node = &self.nodes[n as usize];
        let latency = node.started.elapsed();
        // Karn: only unambiguous samples (one transmission, no cookie round).
        if node.transmissions == 1 && node.cookie_rounds == 0 {
            phase.rtt.sample(latency);
        }
        let micros = latency.as_micros();
        phase
            .latencies_us
            .push(u32::try_from(micros).unwrap_or(u32::MAX));
        phase.report.ok += 1;
        self.finish(phase, n);
    }

    /// The operation of node `n` is over, however it ended.
    fn finish(&mut self, phase: &mut Phase, n: u32) {
        let node = &mut self.nodes[n as usize];
        if node.busy.take().is_some() {
            phase.in_flight -= 1;
        }
    }
}

fn credential(channel: &ChannelClient) -> Option<&SignedCredential> {
    match channel.purpose() {
        Purpose::Credential(c) => Some(c),
        Purpose::Login => None,
    }
}

/// Smoothed latency and its variation (RFC 6298).
#[derive(Debug, Default)]
struct RttEstimate {
    srtt: Option<Duration>,
    rttvar: Duration,
}

impl RttEstimate {
    fn sample(&mut self, rtt: Duration) {
        match self.srtt {
            None => {
                self.srtt = Some(rtt);
                self.rttvar = rtt / 2;
            }
            Some(srtt) => {
                let error = srtt.abs_diff(rtt);
                self.rttvar = (self.rttvar * 3 + error) / 4;
                self.srtt = Some((srtt * 7 + rtt) / 8);
            }
        }
    }

    /// The retransmission timeout: srtt + 4 rttvar, at least `floor`.
    fn rto(&self, floor: Duration) -> Duration {
        self.srtt
            .map_or(floor, |srtt| (srtt + self.rttvar * 4).max(floor))
    }
}

/// Waits for a datagram on any socket (round robin from `next`); returns the socket
/// and the length received into `buf`.
async fn recv_any(
    sockets: &[UdpSocket],
    buf: &mut [u8],
    next: &mut usize,
) -> (usize, io::Result<usize>) {
    poll_fn(|cx| {
        let count = sockets.len();
        for k in 0..count {
            let i = (*next + k) % count;
            let mut read = ReadBuf::new(&mut *buf);
            if let Poll::Ready(result) = sockets[i].poll_recv_from(cx, &mut read) {
                let len = read.filled().len();
                *next = (i + 1) % count;
                return Poll::Ready((i, result.map(|_| len)));
            }
        }
        Poll::Pending
    })
    .await
}

/// Gives `ChannelClient::start` the channel index we chose (its one `next_u32` draw)
/// and the operating system's randomness for everything else. The index is public
/// (it travels in clear); the ephemeral key comes from `fill_bytes`.
struct IndexRng {
    index: Option<u32>,
    os: OsRng,
}

impl RngCore for IndexRng {
    fn next_u32(&mut self) -> u32 {
        self.index.take().unwrap_or_else(|| self.os.next_u32())
    }

    fn next_u64(&mut self) -> u64 {
        self.os.next_u64()
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        self.os.fill_bytes(dest);
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.os.try_fill_bytes(dest)
    }
}

impl CryptoRng for IndexRng {}

/// SplitMix64: picks the benchmark's random pairs (not a secret).
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform enough in `0..n` for picking pairs.
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_nodes_are_deterministic_and_distinct() {
        let cloud = SigningKey::from_bytes(&[7; 32]);
        let a = mint_nodes(&cloud, 5);
        let b = mint_nodes(&cloud, 5);
        assert_eq!(a.len(), 5);
        let publics: Vec<[u8; 32]> = a.iter().map(|n| n.channel.node_public()).collect();
        assert_eq!(
            publics,
            b.iter()
                .map(|n| n.channel.node_public())
                .collect::<Vec<_>>()
        );
        for (i, node) in a.iter().enumerate() {
            let c = credential(&node.channel).unwrap();
            c.verify_for_key(
                &[cloud.verifying_key()],
                UnixTime::from_system_time(SystemTime::now()),
                &publics[i],
            )
            .unwrap();
            assert_eq!(c.credential().fqdn.as_str(), format!("n{i}.bench.cyphonic"));
        }
        let mut unique = publics.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), 5);
    }

    #[test]
    fn hellos_carry_the_index_that_names_the_node() {
        let cloud = SigningKey::from_bytes(&[7; 32]);
        let mut node = mint_nodes(&cloud, 1).pop().unwrap();
        let mut out = vec![0u8; HELLO_MAX_LEN];
        for index in [0x0010_0003, 0xfff0_0000 | NODE_MASK] {
            let mut rng = IndexRng {
                index: Some(index),
                os: OsRng,
            };
            let len = node
                .channel
                .start(
                    Instant::now(),
                    UnixTime::from_system_time(SystemTime::now()),
                    &mut rng,
                    &mut out,
                )
                .unwrap();
            let hello = ChannelHelloPacket::new_checked(&out[..len]).unwrap();
            assert_eq!(hello.sender_index(), index);
            assert!(node.channel.owns_index(index));
        }
    }

    #[test]
    fn rto_follows_latency_but_never_drops_below_the_floor() {
        let floor = Duration::from_millis(1000);
        let mut rtt = RttEstimate::default();
        assert_eq!(rtt.rto(floor), floor);
        rtt.sample(Duration::from_millis(10));
        assert_eq!(rtt.rto(floor), floor);
        for _ in 0..50 {
            rtt.sample(Duration::from_millis(2000));
        }
        let rto = rtt.rto(floor);
        assert!(rto >= Duration::from_millis(2000), "{rto:?}");
        assert!(rto < Duration::from_millis(4000), "{rto:?}");
    }

    #[test]
    fn direction_pairs_avoid_self_and_spread_initiators() {
        let nodes: Vec<(u32, u32)> = (0..50).map(|n| (n, 0)).collect();
        let pairs = direction_pairs(&nodes, 120);
        assert_eq!(pairs.len(), 120);
        assert!(pairs.iter().all(|(a, b)| a != b && *a < 50 && *b < 50));
        let mut first: Vec<u32> = pairs[..50].iter().map(|p| p.0).collect();
        first.sort_unstable();
        assert_eq!(first, (0..50).collect::<Vec<_>>());
        assert!(direction_pairs(&nodes[..1], 3).is_empty());
    }
}
