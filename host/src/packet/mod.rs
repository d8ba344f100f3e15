//! The data path: the packet hook (batches from and to the virtual-interface plugin)
//! and packet handling (the tunnel endpoint sealing and opening in place, batched UDP).
//!
//! Three threads, none of them async (firezone's shape: the TUN never waits for the
//! runtime, the runtime never waits for the TUN):
//! - **outbound**: reads a batch from the interface into one contiguous buffer of
//!   fixed-size slots, seals every packet in its slot, and sends runs of full-size
//!   datagrams to the same peer as one UDP GSO send (the slots are laid out so that a
//!   sealed full-MTU packet fills its slot exactly and the run is contiguous);
//! - **inbound**: receives batches (GRO-coalesced where the kernel does it), opens
//!   each datagram in place, checks the replay window (inside `Endpoint::decapsulate`)
//!   and that the inner source address is the sending node's own virtual address, and
//!   writes the plaintexts to the interface as one batch;
//! - **timer**: handshake retransmissions, keepalives, rekeys, expiry.
//!
//! All three share one [`Tunnel`] behind a mutex, taken once per batch and never
//! across a system call on the hot path. Per-packet work does not allocate: the
//! buffers, slot arrays and result tables are made once per thread.
//!
//! Destinations without a peer go to the signaling side as a "need" (the same
//! Direction Request a DNS query makes); their first packets wait in a small queue.
//! A destination the NMS does not know is answered with ICMP unreachable.

mod ip;

use std::collections::HashMap;
use std::io::IoSliceMut;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::thread::{JoinHandle, Thread};
use std::time::{Duration, Instant, SystemTime};

use crate::signaling::RelayBinder;
use arc_swap::ArcSwapOption;
use cyphonic_plugin_abi::{Packet, VifHandle};
use cyphonic_proto::credential::SignedCredential;
use cyphonic_proto::time::UnixTime;
use cyphonic_proto::tunnel::{
    AddPeerError, Decapsulated, DropReason, Encapsulated, Endpoint, LocalIdentity, PeerEvent,
    PeerId, TunnelStats,
};
use cyphonic_proto::wire::Fqdn;
use cyphonic_proto::wire::data::{DATA_HEADER_LEN, DATA_OVERHEAD};
use cyphonic_proto::wire::handshake::MAX_HANDSHAKE_LEN;
use cyphonic_proto::wire::node::{
    ControlPacket, ControlRepr, HolePunchingPacket, HolePunchingRepr, PunchKind,
};
use cyphonic_proto::wire::relay::{
    RELAY_DATA_HEADER_LEN, RelayBindAckPacket, RelayChannelId, RelayDataPacket, RelayDataRepr,
    RelayTicket,
};
use cyphonic_proto::wire::{MessageType, NodeId};
use quinn_udp::{RecvMeta, Transmit, UdpSockRef, UdpSocketState};
use rand_core::{OsRng, RngCore};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};
use zeroize::Zeroizing;

/// Packets per interface read.
const TUN_BATCH: usize = 64;
/// Receive buffers per UDP batch; each holds one (possibly GRO-coalesced) read.
const UDP_BATCH: usize = 16;
/// A GRO read is at most 64 KiB.
const UDP_BUF: usize = 1 << 16;
/// Most datagrams one UDP batch can hold, GRO included.
const MAX_DELIVER: usize = UDP_BATCH * 64;
/// Datagrams from the NMS waiting for the signaling task (a burst of pushes).
const CLOUD_TAP_QUEUE: usize = 64;
/// Largest UDP payload of one GSO send.
const MAX_GSO_BYTES: usize = 65_000;
/// How long the data threads sleep before looking at the stop flag again.
const IDLE_WAIT: Duration = Duration::from_millis(250);
/// Packets kept per destination while its direction is asked for.
const MAX_PENDING_PACKETS: usize = 16;
/// A new path whose probe got no answer is probed again after this.
const VALIDATION_RETRY: Duration = Duration::from_millis(500);
/// How long a destination the NMS does not know is answered from memory.
const UNREACHABLE_MEMORY: Duration = Duration::from_secs(5);
/// A direction that got no answer by then gives up its queued packets.
const PENDING_TIMEOUT: Duration = Duration::from_secs(10);

/// How the data path reaches a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PathKind {
    /// Straight to the peer's public address.
    Direct,
    /// Through both NATs after simultaneous hole punching (or a probe that got through).
    Punched,
    /// To the peer's address on a LAN both share behind one NAT.
    Local,
    /// Through a TRS (see [`PeerStatus::relay`]).
    Relayed,
}

/// Where a peer's datagrams go: a UDP endpoint, wrapped in `RelayData` for a TRS
/// channel when relayed. Small and `Copy`: the hot path reads it per packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub endpoint: SocketAddr,
    pub relay_channel: Option<RelayChannelId>,
}

/// A TRS channel to a peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayPath {
    /// The TRS's name (from the relay offer) and the endpoint we bound at.
    pub name: String,
    pub trs: SocketAddr,
    pub channel: RelayChannelId,
}

/// A peer as `cyphonic peers` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerStatus {
    pub fqdn: String,
    pub vip4: Ipv4Addr,
    pub vip6: Ipv6Addr,
    pub path: PathKind,
    pub endpoint: SocketAddr,
    /// The TRS relaying this peer's traffic, when `path` is `relayed`.
    pub relay: Option<String>,
    /// The suite of the current send session, if any.
    pub suite: Option<String>,
    /// Unix seconds of the last completed handshake.
    pub last_handshake: Option<u64>,
    pub handshake_in_progress: bool,
    pub tx_bytes: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub rx_packets: u64,
}

/// Counters of the data path (the tunnel's own drop counters are in [`TunnelStats`]).
#[derive(Debug, Default)]
pub struct DataCounters {
    pub tun_packets_read: AtomicU64,
    pub tun_packets_written: AtomicU64,
    pub udp_datagrams_received: AtomicU64,
    pub udp_datagrams_sent: AtomicU64,
    /// Inner packets to an address outside any peer that we do not ask about
    /// (multicast, broadcast, not IP).
    pub no_route: AtomicU64,
    /// Decrypted packets whose inner source is not the sending node's address.
    pub spoofed_source: AtomicU64,
    pub icmp_unreachable_sent: AtomicU64,
    pub pending_dropped: AtomicU64,
    pub oversize: AtomicU64,
    /// Hole-punching datagrams that were malformed, for no punch of ours, or forged.
    pub punch_rejected: AtomicU64,
    /// Authenticated address updates received from peers that moved.
    pub address_updates: AtomicU64,
    pub send_errors: AtomicU64,
    pub tun_errors: AtomicU64,
    pub control_unhandled: AtomicU64,
}

impl DataCounters {
    pub fn snapshot(&self) -> std::collections::BTreeMap<&'static str, u64> {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        [
            ("tun_packets_read", get(&self.tun_packets_read)),
            ("tun_packets_written", get(&self.tun_packets_written)),
            ("udp_datagrams_received", get(&self.udp_datagrams_received)),
            ("udp_datagrams_sent", get(&self.udp_datagrams_sent)),
            ("no_route", get(&self.no_route)),
            ("spoofed_source", get(&self.spoofed_source)),
            ("icmp_unreachable_sent", get(&self.icmp_unreachable_sent)),
            ("pending_dropped", get(&self.pending_dropped)),
            ("oversize", get(&self.oversize)),
            ("punch_rejected", get(&self.punch_rejected)),
            ("address_updates", get(&self.address_updates)),
            ("send_errors", get(&self.send_errors)),
            ("tun_errors", get(&self.tun_errors)),
            ("control_unhandled", get(&self.control_unhandled)),
        ]
        .into_iter()
        .collect()
    }
}

/// Where a peer is, for the data path.
#[derive(Debug, Clone)]
pub struct PeerPlacement {
    pub endpoint: SocketAddr,
    pub path: PathKind,
    /// The peer's direct candidates (real and NAT-observed endpoints), probed in the
    /// background while relayed.
    pub candidates: Vec<SocketAddr>,
}

/// How far a relay bind got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum RelayState {
    Unbound,
    /// The TRS accepted our bind.
    Bound,
    /// ... and the peer's: data flows.
    BothBound,
}

/// Timers of path maintenance.
#[derive(Debug, Clone, Copy)]
pub struct PathTimers {
    /// A peer we sent nothing to for this long gets a keepalive: it holds NAT mappings
    /// and relay bindings open and tells the peer we are alive.
    pub keepalive: Duration,
    /// How often a relayed peer's direct candidates are probed.
    pub probe_interval: Duration,
    /// A direct path that brought nothing for this long falls back to the relay.
    pub direct_silence: Duration,
}

impl Default for PathTimers {
    fn default() -> Self {
        Self {
            keepalive: Duration::from_secs(20),
            probe_interval: Duration::from_secs(2),
            direct_silence: Duration::from_secs(45),
        }
    }
}

/// The running data path.
#[derive(Debug)]
pub struct DataPlane {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

struct Shared {
    tunnel: Mutex<Tunnel>,
    socket: UdpSocket,
    udp: UdpSocketState,
    /// Whether `socket` is an IPv6 socket (IPv4 peers are then sent to as mapped).
    socket_v6: bool,
    /// The interface; `None` only while a reload swaps it.
    vif: ArcSwapOption<VifHandle>,
    stop: AtomicBool,
    timer: OnceLock<Thread>,
    needs: mpsc::UnboundedSender<IpAddr>,
    own4: Ipv4Addr,
    own6: Ipv6Addr,
    mtu: AtomicUsize,
    counters: DataCounters,
    /// Datagrams from the NMS, handed to the signaling task when the NMS channel rides
    /// on this socket ([`DataPlane::cloud_port`]).
    cloud_tap: ArcSwapOption<CloudTap>,
}

/// Where datagrams from the NMS go when the NMS channel shares the tunnel socket.
struct CloudTap {
    nms: SocketAddr,
    to_signaling: tokio::sync::mpsc::Sender<Vec<u8>>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("socket", &self.socket.local_addr().ok())
            .field("mtu", &self.mtu.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

struct PeerMeta {
    fqdn: Fqdn,
    vip4: Ipv4Addr,
    vip6: Ipv6Addr,
    route: Route,
    path: PathKind,
    candidates: Vec<SocketAddr>,
    /// The TRS channel, once bound; kept while direct to fall back to.
    relay: Option<RelayPath>,
    /// Whether a packet arrived on `route` since it was set.
    confirmed: bool,
    /// A new path heard from, awaiting its probe's answer, and since when.
    validating: Option<(Route, Instant)>,
    last_handshake: Option<SystemTime>,
    established: watch::Sender<u64>,
    last_tx: Instant,
    last_rx: Instant,
    last_probe: Instant,
    tx_bytes: u64,
    rx_bytes: u64,
    tx_packets: u64,
    rx_packets: u64,
}

impl PeerMeta {
    fn set_direct(&mut self, endpoint: SocketAddr, path: PathKind) {
        self.route = Route {
            endpoint,
            relay_channel: None,
        };
        self.path = path;
    }

    fn set_relayed(&mut self) -> bool {
        let Some(relay) = &self.relay else {
            return false;
        };
        self.route = Route {
            endpoint: relay.trs,
            relay_channel: Some(relay.channel),
        };
        self.path = PathKind::Relayed;
        true
    }
}

/// A hole punch under way: both ends MAC their punches with the direction's key.
struct Punch {
    peer: PeerId,
    peer_node: NodeId,
    me: NodeId,
    key: Zeroizing<[u8; 32]>,
    found: watch::Sender<Option<SocketAddr>>,
}

struct Pending {
    packets: Vec<Vec<u8>>,
    since: Instant,
}

/// Everything the three data threads and the signaling side share.
struct Tunnel {
    endpoint: Endpoint,
    by_vip: HashMap<IpAddr, PeerId>,
    meta: Vec<Option<PeerMeta>>,
    pending: HashMap<IpAddr, Pending>,
    unreachable: HashMap<IpAddr, Instant>,
    probes: HashMap<u64, (PeerId, Instant, oneshot::Sender<Duration>)>,
    next_probe: u64,
    punches: HashMap<[u8; 16], Punch>,
    /// Sequence of our address updates to peers.
    move_sequence: u64,
    relay_binds: HashMap<[u8; 16], (RelayBinder, watch::Sender<RelayState>)>,
    timers: PathTimers,
    /// Scratch for handshake messages and control answers.
    scratch: Vec<u8>,
}

impl DataPlane {
    /// Starts the data threads over an open interface and a bound UDP socket. `needs`
    /// receives destinations that have no peer yet.
    pub fn start(
        vif: VifHandle,
        socket: UdpSocket,
        endpoint: Endpoint,
        own: (Ipv4Addr, Ipv6Addr),
        mtu: usize,
        timers: PathTimers,
        needs: mpsc::UnboundedSender<IpAddr>,
    ) -> std::io::Result<Self> {
        let socket_v6 = socket.local_addr()?.is_ipv6();
        let udp = UdpSocketState::new(UdpSockRef::from(&socket))?;
        let shared = Arc::new(Shared {
            tunnel: Mutex::new(Tunnel {
                endpoint,
                by_vip: HashMap::new(),
                meta: Vec::new(),
                pending: HashMap::new(),
                unreachable: HashMap::new(),
                probes: HashMap::new(),
                next_probe: 1,
                punches: HashMap::new(),
                move_sequence: 0,
                relay_binds: HashMap::new(),
                timers,
                scratch: vec![0; MAX_HANDSHAKE_LEN.max(2048)],
            }),
            socket,
            udp,
            socket_v6,
            vif: ArcSwapOption::from_pointee(vif),
            stop: AtomicBool::new(false),
            timer: OnceLock::new(),
            needs,
            own4: own.0,
            own6: own.1,
            mtu: AtomicUsize::new(mtu),
            counters: DataCounters::default(),
            cloud_tap: ArcSwapOption::empty(),
        });
        let mut threads = Vec::new();
        let spawn = |name: &str, f: fn(&Shared)| {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name(name.to_owned())
                .spawn(move || f(&shared))
        };
        let timer = spawn("cyph-timer", timer_loop)?;
        let _ = shared.timer.set(timer.thread().clone());
        threads.push(timer);
        threads.push(spawn("cyph-outbound", outbound_loop)?);
        threads.push(spawn("cyph-inbound", inbound_loop)?);
        Ok(Self { shared, threads })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.shared.socket.local_addr()
    }

    /// Carries the NMS channel on the tunnel socket itself, for systems without
    /// SO_REUSEPORT (Windows): the NMS then observes the tunnel port's NAT mapping, as
    /// peers must use it. Datagrams from `nms` go to the returned port's receiver
    /// instead of the tunnel; sends leave from the tunnel socket. Replaces an earlier
    /// tap.
    pub fn cloud_port(&self, nms: SocketAddr) -> std::io::Result<crate::signaling::SharedPort> {
        let (to_signaling, incoming) = tokio::sync::mpsc::channel(CLOUD_TAP_QUEUE);
        let socket = self.shared.socket.try_clone()?;
        let nms = canonical(nms);
        self.shared
            .cloud_tap
            .store(Some(Arc::new(CloudTap { nms, to_signaling })));
        Ok(crate::signaling::SharedPort::new(
            socket,
            self.shared.wire_addr(nms),
            incoming,
        ))
    }

    pub fn counters(&self) -> &DataCounters {
        &self.shared.counters
    }

    pub fn tunnel_stats(&self) -> TunnelStats {
        self.shared.lock().endpoint.stats()
    }

    /// Adds the node of `credential` as a peer (or updates where it is). Returns its id
    /// and a receiver that ticks on every completed handshake. Packets that waited for
    /// it go out with [`Self::flush_pending`].
    pub fn add_peer(
        &self,
        credential: SignedCredential,
        placement: PeerPlacement,
    ) -> Result<(PeerId, watch::Receiver<u64>), AddPeerError> {
        let unix_now = unix_now();
        let now = Instant::now();
        let mut guard = self.shared.lock();
        let t = &mut *guard;
        let c = credential.credential().clone();
        let id = match t.endpoint.add_peer(credential, unix_now) {
            Ok(id) => id,
            Err(AddPeerError::AlreadyKnown(id)) => id,
            Err(e) => return Err(e),
        };
        // A virtual address that named another node before (a re-created device)
        // now belongs to this one.
        for vip in [IpAddr::V4(c.vip4), IpAddr::V6(c.vip6)] {
            if let Some(old) = t.by_vip.insert(vip, id) {
                if old != id {
                    t.remove_peer(old);
                }
            }
        }
        let slot = id.index() as usize;
        if t.meta.len() <= slot {
            t.meta.resize_with(slot + 1, || None);
        }
        let meta = t.meta[slot].get_or_insert_with(|| PeerMeta {
            fqdn: c.fqdn.clone(),
            vip4: c.vip4,
            vip6: c.vip6,
            route: Route {
                endpoint: placement.endpoint,
                relay_channel: None,
            },
            path: placement.path,
            candidates: Vec::new(),
            relay: None,
            confirmed: false,
            validating: None,
            last_handshake: None,
            established: watch::Sender::new(0),
            last_tx: now,
            last_rx: now,
            last_probe: now,
            tx_bytes: 0,
            rx_bytes: 0,
            tx_packets: 0,
            rx_packets: 0,
        });
        meta.set_direct(placement.endpoint, placement.path);
        meta.candidates = placement.candidates;
        let established = meta.established.subscribe();
        for vip in [IpAddr::V4(c.vip4), IpAddr::V6(c.vip6)] {
            t.unreachable.remove(&vip);
        }
        drop(guard);
        Ok((id, established))
    }

    /// Sends what waited for `id` (packets to its addresses from before it was known),
    /// once its path is settled.
    pub fn flush_pending(&self, id: PeerId) {
        let now = Instant::now();
        let unix_now = unix_now();
        let mut guard = self.shared.lock();
        let t = &mut *guard;
        let Some(m) = t.meta_mut(id) else { return };
        let vips = [IpAddr::V4(m.vip4), IpAddr::V6(m.vip6)];
        for vip in vips {
            if let Some(pending) = t.pending.remove(&vip) {
                for packet in pending.packets {
                    self.shared.encapsulate_one(t, now, unix_now, id, &packet);
                }
            }
        }
        drop(guard);
        self.shared.wake_timer();
    }

    /// Starts a handshake with `id` unless a session or a handshake exists.
    pub fn ensure_session(&self, id: PeerId) {
        let now = Instant::now();
        let mut guard = self.shared.lock();
        let t = &mut *guard;
        let Some(peer) = t.endpoint.peer_mut(id) else {
            return;
        };
        if peer.send_session(now).is_some() || peer.handshake_in_progress() {
            return;
        }
        let mut scratch = std::mem::take(&mut t.scratch);
        let sent = peer.initiate_handshake(now, unix_now(), &mut OsRng, &mut scratch);
        match sent {
            Ok(len) => {
                if let Some(dest) = t.destination(id) {
                    self.shared.send_route(dest, &scratch[..len]);
                }
            }
            Err(e) => tracing::warn!(peer = %id, error = %e, "cannot start a handshake"),
        }
        t.scratch = scratch;
        drop(guard);
        self.shared.wake_timer();
    }

    /// The peer of a name, with a receiver of its handshakes.
    pub fn peer_by_fqdn(&self, fqdn: &Fqdn) -> Option<(PeerId, Ipv4Addr, Ipv6Addr, bool)> {
        let now = Instant::now();
        let t = self.shared.lock();
        t.meta.iter().enumerate().find_map(|(slot, m)| {
            let m = m.as_ref().filter(|m| &m.fqdn == fqdn)?;
            let id = *t.by_vip.get(&IpAddr::V4(m.vip4))?;
            debug_assert_eq!(id.index() as usize, slot);
            let has_session = t
                .endpoint
                .peer(id)
                .is_some_and(|p| p.send_session(now).is_some());
            Some((id, m.vip4, m.vip6, has_session))
        })
    }

    /// The direction for `vip` failed; `unknown` when no node has the address (its
    /// queued packets are answered with ICMP unreachable, and so is new traffic for a
    /// few seconds).
    pub fn direction_failed(&self, vip: IpAddr, unknown: bool) {
        let mut guard = self.shared.lock();
        let t = &mut *guard;
        let Some(pending) = t.pending.remove(&vip) else {
            if unknown {
                t.unreachable
                    .insert(vip, Instant::now() + UNREACHABLE_MEMORY);
            }
            return;
        };
        if unknown {
            t.unreachable
                .insert(vip, Instant::now() + UNREACHABLE_MEMORY);
            drop(guard);
            for packet in &pending.packets {
                self.shared.answer_unreachable(packet);
            }
        } else {
            self.shared
                .counters
                .pending_dropped
                .fetch_add(pending.packets.len() as u64, Ordering::Relaxed);
        }
    }

    /// Sends an overlay-level probe to `id`; the receiver gets the round-trip time.
    pub fn probe(&self, id: PeerId) -> Option<oneshot::Receiver<Duration>> {
        let now = Instant::now();
        let mut guard = self.shared.lock();
        let t = &mut *guard;
        let probe_id = t.next_probe;
        t.next_probe += 1;
        let (tx, rx) = oneshot::channel();
        let mut body = [0u8; 32];
        let len = ControlRepr::PathProbe {
            probe_id,
            path_tag: 0,
        }
        .emit(&mut body)
        .ok()?;
        t.probes
            .retain(|_, (_, at, _)| now.duration_since(*at) < Duration::from_secs(30));
        t.probes.insert(probe_id, (id, now, tx));
        self.shared.send_control(t, now, id, &body[..len]);
        Some(rx)
    }

    /// Starts hole punching toward `candidates` for the direction `direction_id`
    /// (punches MAC'd with its key); the receiver gets the first endpoint the peer
    /// answered from. Call [`Self::punch`] again to repeat the punches.
    pub fn start_punch(
        &self,
        direction_id: [u8; 16],
        peer: PeerId,
        peer_node: NodeId,
        me: NodeId,
        key: &[u8; 32],
    ) -> watch::Receiver<Option<SocketAddr>> {
        let mut t = self.shared.lock();
        let (found, rx) = watch::channel(None);
        // Directions are short-lived; a handful at a time is normal.
        if t.punches.len() > 256 {
            t.punches.clear();
        }
        t.punches.insert(
            direction_id,
            Punch {
                peer,
                peer_node,
                me,
                key: Zeroizing::new(*key),
                found,
            },
        );
        rx
    }

    /// Sends one punch of `direction_id` to each candidate.
    pub fn punch(&self, direction_id: [u8; 16], candidates: &[SocketAddr]) {
        let datagram = {
            let t = self.shared.lock();
            let Some(p) = t.punches.get(&direction_id) else {
                return;
            };
            let mut nonce = [0u8; 8];
            OsRng.fill_bytes(&mut nonce);
            let repr = HolePunchingRepr::sealed(
                direction_id,
                p.me,
                PunchKind::Punch,
                u64::from_be_bytes(nonce),
                &p.key,
            );
            let mut out = [0u8; HolePunchingRepr::LEN];
            if repr.emit(&mut out).is_err() {
                return;
            }
            out
        };
        for c in candidates {
            self.shared.send_one(*c, &datagram);
        }
    }

    /// Forgets a finished punch.
    pub fn end_punch(&self, direction_id: &[u8; 16]) {
        self.shared.lock().punches.remove(direction_id);
    }

    /// Binds our tunnel socket to a TRS channel (one `RelayBind`; repeat with
    /// [`Self::relay_rebind`] until the receiver says both ends are bound).
    pub fn relay_bind(
        &self,
        ticket: RelayTicket,
        bind_key: &[u8; 32],
        me: NodeId,
        trs: SocketAddr,
    ) -> watch::Receiver<RelayState> {
        let (bound, rx) = watch::channel(RelayState::Unbound);
        self.shared.lock().relay_binds.insert(
            ticket.ticket_id,
            (RelayBinder::new(ticket, bind_key, me), bound),
        );
        self.relay_rebind(&ticket.ticket_id, trs);
        rx
    }

    pub fn relay_rebind(&self, ticket_id: &[u8; 16], trs: SocketAddr) {
        let mut out = [0u8; 256];
        let len = {
            let mut t = self.shared.lock();
            let Some((binder, _)) = t.relay_binds.get_mut(ticket_id) else {
                return;
            };
            let millis = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            match binder.bind(millis, &mut out) {
                Ok(len) => len,
                Err(_) => return,
            }
        };
        self.shared.send_one(trs, &out[..len]);
    }

    /// Uses the relay for `id` from now on (and keeps it as the fallback of a direct
    /// path found later).
    pub fn set_relay(&self, id: PeerId, relay: RelayPath) {
        let mut t = self.shared.lock();
        if let Some(m) = t.meta_mut(id) {
            tracing::info!(peer = %m.fqdn, trs = %relay.name, endpoint = %relay.trs, "relayed");
            m.relay = Some(relay);
            m.set_relayed();
        }
    }

    /// Sends to `id` at `endpoint` from now on.
    pub fn set_direct(&self, id: PeerId, endpoint: SocketAddr, path: PathKind) {
        let mut t = self.shared.lock();
        if let Some(m) = t.meta_mut(id) {
            m.set_direct(endpoint, path);
        }
    }

    /// Tells every peer with a session that we moved to `endpoints`, in an update
    /// sealed in its session and sent over the new path: the peer moves to the source
    /// it came from (an authenticated packet), and answers.
    pub fn announce_move(&self, endpoints: &[SocketAddr]) {
        let now = Instant::now();
        let mut guard = self.shared.lock();
        let t = &mut *guard;
        t.move_sequence += 1;
        let sequence = t.move_sequence;
        let mut body = [0u8; 512];
        let Ok(len) = (ControlRepr::AddressUpdate {
            sequence,
            endpoints: endpoints.to_vec(),
        })
        .emit(&mut body) else {
            return;
        };
        let peers: Vec<PeerId> = t
            .by_vip
            .iter()
            .filter(|(vip, _)| vip.is_ipv4())
            .map(|(_, id)| *id)
            .filter(|id| {
                t.endpoint
                    .peer(*id)
                    .is_some_and(|p| p.send_session(now).is_some())
            })
            .collect();
        for id in peers {
            self.shared.send_control(t, now, id, &body[..len]);
        }
    }

    /// Starts a new handshake with every peer that has a session: after the suite
    /// list changed, so the new one is used without waiting for the regular rekey.
    /// Traffic keeps flowing on the current sessions until the new ones are confirmed.
    pub fn rekey_all(&self) {
        let now = Instant::now();
        let unix_now = unix_now();
        let mut guard = self.shared.lock();
        let t = &mut *guard;
        let ids: Vec<PeerId> = t
            .by_vip
            .iter()
            .filter(|(vip, _)| vip.is_ipv4())
            .map(|(_, id)| *id)
            .collect();
        let mut scratch = std::mem::take(&mut t.scratch);
        for id in ids {
            let Some(route) = t.destination(id) else {
                continue;
            };
            let Some(peer) = t.endpoint.peer_mut(id) else {
                continue;
            };
            if peer.send_session(now).is_none() || peer.handshake_in_progress() {
                continue;
            }
            match peer.initiate_handshake(now, unix_now, &mut OsRng, &mut scratch) {
                Ok(len) => self.shared.send_route(route, &scratch[..len]),
                Err(e) => tracing::warn!(peer = %id, error = %e, "cannot start a rekey"),
            }
        }
        t.scratch = scratch;
        drop(guard);
        self.shared.wake_timer();
    }

    /// Replaces the virtual interface (another plugin, MTU or options): the old one
    /// is closed first (a name can exist once), then `open` makes the new one. Returns
    /// how long the data path had no interface. When `open` fails the data path stays
    /// without one; the caller opens the previous configuration again.
    pub fn swap_interface<E>(
        &self,
        open: impl FnOnce() -> Result<(VifHandle, usize), E>,
    ) -> Result<Duration, E> {
        let started = Instant::now();
        if let Some(old) = self.shared.vif.swap(None) {
            // The reader holds its own reference while it waits in `read_batch`.
            let _ = old.wake();
            let deadline = Instant::now() + Duration::from_secs(2);
            while Arc::strong_count(&old) > 1 && Instant::now() < deadline {
                let _ = old.wake();
                std::thread::sleep(Duration::from_millis(1));
            }
            drop(old);
        }
        let (vif, mtu) = open()?;
        self.shared.mtu.store(mtu, Ordering::Relaxed);
        self.shared.vif.store(Some(Arc::new(vif)));
        Ok(started.elapsed())
    }

    /// New keepalive and probing timers (a reload).
    pub fn set_timers(&self, timers: PathTimers) {
        self.shared.lock().timers = timers;
        self.shared.wake_timer();
    }

    /// Presents a new identity (a renewed credential) from the next handshake on.
    pub fn set_identity(&self, identity: LocalIdentity) {
        self.shared.lock().endpoint.set_identity(identity);
    }

    pub fn peers(&self) -> Vec<PeerStatus> {
        let now = Instant::now();
        let t = self.shared.lock();
        t.meta
            .iter()
            .enumerate()
            .filter_map(|(slot, m)| {
                let m = m.as_ref()?;
                let id = *t.by_vip.get(&IpAddr::V4(m.vip4))?;
                let peer = t.endpoint.peer(id)?;
                debug_assert_eq!(id.index() as usize, slot);
                Some(PeerStatus {
                    fqdn: m.fqdn.to_string(),
                    vip4: m.vip4,
                    vip6: m.vip6,
                    path: m.path,
                    endpoint: canonical(m.route.endpoint),
                    relay: (m.path == PathKind::Relayed)
                        .then(|| m.relay.as_ref().map(|r| r.name.clone()))
                        .flatten(),
                    suite: peer.send_session(now).map(|s| s.suite().name().to_owned()),
                    last_handshake: m.last_handshake.and_then(|t| {
                        t.duration_since(SystemTime::UNIX_EPOCH)
                            .ok()
                            .map(|d| d.as_secs())
                    }),
                    handshake_in_progress: peer.handshake_in_progress(),
                    tx_bytes: m.tx_bytes,
                    rx_bytes: m.rx_bytes,
                    tx_packets: m.tx_packets,
                    rx_packets: m.rx_packets,
                })
            })
            .collect()
    }

    /// Stops the threads; the interface closes with the last handle.
    pub fn shutdown(mut self) {
        self.stop_threads();
    }

    fn stop_threads(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(vif) = self.shared.vif.load_full() {
            let _ = vif.wake();
        }
        self.shared.wake_timer();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for DataPlane {
    fn drop(&mut self) {
        self.stop_threads();
    }
}

impl Tunnel {
    fn destination(&self, id: PeerId) -> Option<Route> {
        self.meta
            .get(id.index() as usize)?
            .as_ref()
            .map(|m| m.route)
    }

    fn meta_mut(&mut self, id: PeerId) -> Option<&mut PeerMeta> {
        self.meta.get_mut(id.index() as usize)?.as_mut()
    }

    fn remove_peer(&mut self, id: PeerId) {
        self.endpoint.remove_peer(id);
        if let Some(meta) = self
            .meta
            .get_mut(id.index() as usize)
            .and_then(Option::take)
        {
            for vip in [IpAddr::V4(meta.vip4), IpAddr::V6(meta.vip6)] {
                if self.by_vip.get(&vip) == Some(&id) {
                    self.by_vip.remove(&vip);
                }
            }
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Tunnel> {
        // A data thread that panicked while holding the lock left the tunnel in a
        // state every operation still handles (no invariant spans an unlock), so keep
        // going rather than take the node down.
        self.tunnel.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wake_timer(&self) {
        if let Some(t) = self.timer.get() {
            t.unpark();
        }
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// The socket address to send to (IPv4 peers as mapped addresses on an IPv6 socket).
    fn wire_addr(&self, dest: SocketAddr) -> SocketAddr {
        match dest {
            SocketAddr::V4(v4) if self.socket_v6 => {
                SocketAddr::V6(SocketAddrV6::new(v4.ip().to_ipv6_mapped(), v4.port(), 0, 0))
            }
            other => other,
        }
    }

    fn send_one(&self, dest: SocketAddr, datagram: &[u8]) {
        // Single datagrams go out from under the tunnel lock: a full socket buffer
        // must not stall the other data threads, so they wait only briefly.
        self.send(dest, datagram, None, 2);
    }

    /// Sends one datagram along `route`, inside `RelayData` when relayed (a copy: the
    /// relay header goes in front of a datagram sealed in place).
    fn send_route(&self, route: Route, datagram: &[u8]) {
        let Some(channel) = route.relay_channel else {
            return self.send_one(route.endpoint, datagram);
        };
        let mut stack = [0u8; 2048];
        let mut heap = Vec::new();
        let total = RELAY_DATA_HEADER_LEN + datagram.len();
        let buf: &mut [u8] = if total <= stack.len() {
            &mut stack[..total]
        } else {
            heap.resize(total, 0);
            &mut heap
        };
        if RelayDataRepr::emit_header(&channel, buf).is_err() {
            return;
        }
        buf[RELAY_DATA_HEADER_LEN..].copy_from_slice(datagram);
        self.send_one(route.endpoint, buf);
    }

    /// Sends, waiting up to `attempts` x 10 ms for room in the socket buffer; the batch
    /// path (no lock held) waits long, so a burst is slowed rather than dropped.
    fn send(&self, dest: SocketAddr, contents: &[u8], segment_size: Option<usize>, attempts: u32) {
        let transmit = Transmit {
            destination: self.wire_addr(dest),
            ecn: None,
            contents,
            segment_size,
            src_ip: None,
        };
        let segments = segment_size.map_or(1, |s| contents.len().div_ceil(s)) as u64;
        for _ in 0..attempts {
            match self.udp.try_send(UdpSockRef::from(&self.socket), &transmit) {
                Ok(()) => {
                    self.counters
                        .udp_datagrams_sent
                        .fetch_add(segments, Ordering::Relaxed);
                    return;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    crate::sys::wait_fd(&self.socket, true, Duration::from_millis(10));
                }
                Err(e) => {
                    self.counters.send_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::trace!(%dest, error = %e, "send failed");
                    return;
                }
            }
        }
        self.counters.send_errors.fetch_add(1, Ordering::Relaxed);
    }

    /// Seals (or queues behind a handshake) one inner packet for `id` outside the
    /// batch path: packets that waited for a direction.
    fn encapsulate_one(
        &self,
        t: &mut Tunnel,
        now: Instant,
        unix_now: UnixTime,
        id: PeerId,
        packet: &[u8],
    ) {
        let Some(dest) = t.destination(id) else {
            return;
        };
        let mut buf = vec![0u8; (packet.len() + DATA_OVERHEAD).max(MAX_HANDSHAKE_LEN)];
        let Some(peer) = t.endpoint.peer_mut(id) else {
            return;
        };
        match peer.encapsulate(now, unix_now, &mut OsRng, packet, &mut buf) {
            Ok(Encapsulated::Sealed(len) | Encapsulated::HandshakeNeeded(len)) => {
                self.send_route(dest, &buf[..len]);
            }
            Ok(Encapsulated::Queued) => {}
            Err(e) => {
                tracing::debug!(peer = %id, error = %e, "queued packet dropped");
                return;
            }
        }
        // Counted when handed to the tunnel, as on the batch path: a packet queued
        // behind the handshake goes out with it.
        if let Some(meta) = t.meta_mut(id) {
            meta.tx_bytes += packet.len() as u64;
            meta.tx_packets += 1;
        }
    }

    fn send_control(&self, t: &mut Tunnel, now: Instant, id: PeerId, body: &[u8]) {
        if let Some(route) = t.destination(id) {
            self.send_control_via(t, now, id, route, body);
        }
    }

    /// Seals a control message for `id` and sends it along `route` (a probe of a
    /// candidate path goes elsewhere than the peer's current route).
    fn send_control_via(
        &self,
        t: &mut Tunnel,
        now: Instant,
        id: PeerId,
        route: Route,
        body: &[u8],
    ) {
        let mut scratch = std::mem::take(&mut t.scratch);
        if let Some(peer) = t.endpoint.peer_mut(id) {
            match peer.encapsulate_control(now, unix_now(), &mut OsRng, body, &mut scratch) {
                Ok(Encapsulated::Sealed(len)) => self.send_route(route, &scratch[..len]),
                Ok(Encapsulated::HandshakeNeeded(len)) => {
                    if let Some(current) = t.destination(id) {
                        self.send_route(current, &scratch[..len]);
                    }
                }
                Ok(Encapsulated::Queued) => {}
                Err(e) => tracing::debug!(peer = %id, error = %e, "control message not sent"),
            }
        }
        t.scratch = scratch;
    }

    /// Sends everything the endpoint wants sent and handles its events.
    fn drain(&self, t: &mut Tunnel, now: Instant) {
        let unix_now = unix_now();
        let mut scratch = std::mem::take(&mut t.scratch);
        loop {
            match t
                .endpoint
                .poll_transmit(now, unix_now, &mut OsRng, &mut scratch)
            {
                Ok(Some((id, len))) => {
                    if let Some(dest) = t.destination(id) {
                        self.send_route(dest, &scratch[..len]);
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(error = %e, "a queued packet could not be sent");
                    break;
                }
            }
        }
        t.scratch = scratch;
        while let Some((id, event)) = t.endpoint.poll_event() {
            let Some(meta) = t.meta_mut(id) else { continue };
            match event {
                PeerEvent::Established => {
                    meta.last_handshake = Some(SystemTime::now());
                    meta.established.send_modify(|n| *n += 1);
                    tracing::debug!(peer = %meta.fqdn, "session established");
                }
                PeerEvent::HandshakeTimedOut => {
                    tracing::info!(peer = %meta.fqdn, "handshake timed out");
                }
                PeerEvent::HandshakeFailed(reason) => {
                    tracing::warn!(peer = %meta.fqdn, %reason, "handshake failed");
                }
                PeerEvent::Unresponsive => {
                    // A peer that restarted refuses our handshake until the NMS has
                    // told it about us again: a fresh Direction Request does that
                    // (the NMS sends the Route Direction to both ends).
                    tracing::info!(peer = %meta.fqdn, "peer unresponsive: asking the NMS for its route again");
                    let _ = self.needs.send(IpAddr::V4(meta.vip4));
                }
            }
        }
    }

    /// Answers `packet` with ICMP unreachable, sent in the name of its destination:
    /// the kernel drops packets that claim to come from one of its own addresses (our
    /// virtual address) on the interface, and the destination is the address the
    /// application asked about.
    fn answer_unreachable(&self, packet: &[u8]) {
        let Some(router) = ip::destination(packet) else {
            return;
        };
        let mut out = [0u8; ip::MAX_ICMP_ERROR];
        let Some(len) = ip::unreachable(packet, router, &mut out) else {
            return;
        };
        let written = Packet::new(&mut out, 0, len)
            .ok()
            .and_then(|p| self.vif.load_full().map(|vif| vif.write_batch(&[p])));
        match written {
            Some(Ok(_)) => {
                self.counters
                    .icmp_unreachable_sent
                    .fetch_add(1, Ordering::Relaxed);
            }
            _ => {
                self.counters.tun_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// An inner packet to `dst` with no peer: queue it and ask for a direction, or
    /// answer it at once when the address is known to be nobody's.
    fn no_peer(&self, t: &mut Tunnel, now: Instant, dst: IpAddr, packet: &[u8]) -> bool {
        let unicast = match dst {
            IpAddr::V4(a) => !(a.is_broadcast() || a.is_multicast() || a.is_unspecified()),
            IpAddr::V6(a) => !(a.is_multicast() || a.is_unspecified()),
        };
        if !unicast || dst == IpAddr::V4(self.own4) || dst == IpAddr::V6(self.own6) {
            self.counters.no_route.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        if let Some(until) = t.unreachable.get(&dst) {
            if *until > now {
                return true;
            }
            t.unreachable.remove(&dst);
        }
        let pending = t.pending.entry(dst).or_insert_with(|| {
            let _ = self.needs.send(dst);
            Pending {
                packets: Vec::new(),
                since: now,
            }
        });
        if pending.packets.len() < MAX_PENDING_PACKETS {
            pending.packets.push(packet.to_vec());
        } else {
            self.counters
                .pending_dropped
                .fetch_add(1, Ordering::Relaxed);
        }
        false
    }
}

fn outbound_loop(shared: &Shared) {
    let mut mtu = shared.mtu.load(Ordering::Relaxed);
    let mut stride = mtu + DATA_OVERHEAD;
    let mut buf = vec![0u8; TUN_BATCH * stride];
    let mut lens = [0usize; TUN_BATCH];
    // Per slot: where its sealed datagram goes and its length, if anything is sent.
    let mut out: Vec<Option<(Route, usize)>> = vec![None; TUN_BATCH];
    let mut unreachable: Vec<usize> = Vec::with_capacity(TUN_BATCH);
    let segments = |stride: usize| {
        shared
            .udp
            .max_gso_segments()
            .min(MAX_GSO_BYTES / stride)
            .max(1)
    };
    let mut max_segments = segments(stride);
    while !shared.stopping() {
        // A reload may have swapped the interface (and its MTU) in between.
        let Some(vif) = shared.vif.load_full() else {
            std::thread::sleep(Duration::from_millis(2));
            continue;
        };
        if shared.mtu.load(Ordering::Relaxed) != mtu {
            mtu = shared.mtu.load(Ordering::Relaxed);
            stride = mtu + DATA_OVERHEAD;
            buf = vec![0u8; TUN_BATCH * stride];
            max_segments = segments(stride);
        }
        let read = {
            let mut chunks = buf.chunks_exact_mut(stride);
            let mut slots: [Packet<'_>; TUN_BATCH] = std::array::from_fn(|_| {
                let chunk = chunks.next().expect("the buffer holds TUN_BATCH slots");
                Packet::empty(chunk, DATA_HEADER_LEN).expect("headroom is inside the slot")
            });
            let read = vif.read_batch(&mut slots, IDLE_WAIT.as_millis() as i32);
            for (len, slot) in lens.iter_mut().zip(&slots) {
                *len = slot.len();
            }
            read
        };
        drop(vif);
        let n = match read {
            Ok(0) => continue,
            Ok(n) => n,
            Err(e) => {
                shared.counters.tun_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "reading from the virtual interface failed");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        shared
            .counters
            .tun_packets_read
            .fetch_add(n as u64, Ordering::Relaxed);
        let now = Instant::now();
        let unix_now = unix_now();
        unreachable.clear();
        {
            let mut guard = shared.lock();
            let t = &mut *guard;
            for (i, slot) in buf.chunks_exact_mut(stride).take(n).enumerate() {
                out[i] = None;
                let len = lens[i];
                if len + DATA_OVERHEAD > stride {
                    shared.counters.oversize.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let packet = &slot[DATA_HEADER_LEN..DATA_HEADER_LEN + len];
                let Some(dst) = ip::destination(packet) else {
                    shared.counters.no_route.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                let Some(&id) = t.by_vip.get(&dst) else {
                    if shared.no_peer(t, now, dst, packet) {
                        unreachable.push(i);
                    }
                    continue;
                };
                let Some(dest) = t.destination(id) else {
                    continue;
                };
                let Some(peer) = t.endpoint.peer_mut(id) else {
                    continue;
                };
                match peer.encapsulate_in_place(now, unix_now, &mut OsRng, slot, len) {
                    Ok(Encapsulated::Sealed(sent) | Encapsulated::HandshakeNeeded(sent)) => {
                        out[i] = Some((dest, sent));
                    }
                    Ok(Encapsulated::Queued) => {}
                    Err(e) => {
                        tracing::trace!(peer = %id, error = %e, "packet not sealed");
                        continue;
                    }
                }
                if let Some(meta) = t.meta_mut(id) {
                    meta.tx_bytes += len as u64;
                    meta.tx_packets += 1;
                    meta.last_tx = now;
                }
            }
        }
        for &i in &unreachable {
            let slot = &buf[i * stride..(i + 1) * stride];
            shared.answer_unreachable(&slot[DATA_HEADER_LEN..DATA_HEADER_LEN + lens[i]]);
        }
        send_runs(shared, &buf, &out[..n], stride, max_segments);
    }
}

/// Sends the sealed slots; consecutive full slots to one direct destination go out as
/// one GSO send (the kernel splits them at `stride`). Relayed datagrams go one by one
/// behind their relay header.
fn send_runs(
    shared: &Shared,
    buf: &[u8],
    out: &[Option<(Route, usize)>],
    stride: usize,
    max_segments: usize,
) {
    let mut i = 0;
    while i < out.len() {
        let Some((route, len)) = out[i] else {
            i += 1;
            continue;
        };
        let start = i * stride;
        if route.relay_channel.is_some() {
            shared.send_route(route, &buf[start..start + len]);
            i += 1;
            continue;
        }
        let mut end = start + len;
        let mut count = 1;
        let mut last_len = len;
        while last_len == stride && count < max_segments && i + count < out.len() {
            match out[i + count] {
                Some((r, l)) if r == route => {
                    end += l;
                    last_len = l;
                    count += 1;
                }
                _ => break,
            }
        }
        let segment = (count > 1).then_some(stride);
        shared.send(route.endpoint, &buf[start..end], segment, 100);
        i += count;
    }
}

fn inbound_loop(shared: &Shared) {
    let mut buf = vec![0u8; UDP_BATCH * UDP_BUF];
    let mut metas = [RecvMeta::default(); UDP_BATCH];
    // Absolute (start, len) in `buf` of every plaintext to write to the interface.
    let mut deliver: Vec<(usize, usize)> = Vec::with_capacity(MAX_DELIVER);
    let mut slots: Vec<Packet<'static>> = Vec::with_capacity(TUN_BATCH);
    while !shared.stopping() {
        if !crate::sys::wait_fd(&shared.socket, false, IDLE_WAIT) {
            continue;
        }
        let received = {
            let mut chunks = buf.chunks_exact_mut(UDP_BUF);
            let mut iovs: [IoSliceMut<'_>; UDP_BATCH] = std::array::from_fn(|_| {
                IoSliceMut::new(chunks.next().expect("the buffer holds UDP_BATCH slots"))
            });
            shared
                .udp
                .recv(UdpSockRef::from(&shared.socket), &mut iovs, &mut metas)
        };
        let n = match received {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => {
                tracing::debug!(error = %e, "receive failed");
                continue;
            }
        };
        let now = Instant::now();
        let unix_now = unix_now();
        deliver.clear();
        let cloud_tap = shared.cloud_tap.load();
        {
            let mut guard = shared.lock();
            let t = &mut *guard;
            for (k, meta) in metas.iter().take(n).enumerate() {
                let source = canonical(meta.addr);
                let base = k * UDP_BUF;
                let stride = meta.stride.max(1);
                let region = &mut buf[base..base + meta.len.min(UDP_BUF)];
                for (s, segment) in region.chunks_mut(stride).enumerate() {
                    shared
                        .counters
                        .udp_datagrams_received
                        .fetch_add(1, Ordering::Relaxed);
                    if let Some(tap) = &*cloud_tap {
                        if tap.nms == source {
                            // Signaling, not tunnel traffic; a full queue drops it
                            // like a lost datagram (the channel retransmits).
                            let _ = tap.to_signaling.try_send(segment.to_vec());
                            continue;
                        }
                    }
                    if let Some(range) = handle_datagram(shared, t, now, unix_now, source, segment)
                    {
                        deliver.push((base + s * stride + range.0, range.1));
                    }
                }
            }
        }
        slots = write_delivered(shared, &mut buf, &deliver, slots);
    }
}

/// Opens one datagram; returns the plaintext's (offset, len) within it when there is
/// a packet for the interface. Relay data is unwrapped first; hole punches and relay
/// bind acks are handled here and never reach the tunnel.
fn handle_datagram(
    shared: &Shared,
    t: &mut Tunnel,
    now: Instant,
    unix_now: UnixTime,
    source: SocketAddr,
    datagram: &mut [u8],
) -> Option<(usize, usize)> {
    match datagram.get(1).map(|b| MessageType::try_from(*b)) {
        Some(Ok(MessageType::RelayData)) => {
            let channel = RelayDataPacket::new_checked(&*datagram)
                .ok()
                .map(|p| p.channel_id())?;
            let via = Route {
                endpoint: source,
                relay_channel: Some(channel),
            };
            let inner = &mut datagram[RELAY_DATA_HEADER_LEN..];
            return open_datagram(shared, t, now, unix_now, via, inner)
                .map(|(start, len)| (start + RELAY_DATA_HEADER_LEN, len));
        }
        Some(Ok(MessageType::HolePunching)) => {
            handle_punch(shared, t, source, datagram);
            return None;
        }
        Some(Ok(MessageType::RelayBindAck)) => {
            handle_bind_ack(t, datagram);
            return None;
        }
        _ => {}
    }
    let via = Route {
        endpoint: source,
        relay_channel: None,
    };
    open_datagram(shared, t, now, unix_now, via, datagram)
}

fn open_datagram(
    shared: &Shared,
    t: &mut Tunnel,
    now: Instant,
    unix_now: UnixTime,
    via: Route,
    datagram: &mut [u8],
) -> Option<(usize, usize)> {
    let source = via.endpoint;
    let mut scratch = std::mem::take(&mut t.scratch);
    let result = t
        .endpoint
        .decapsulate(now, unix_now, &mut OsRng, source, datagram, &mut scratch);
    let mut deliver = None;
    match result {
        Ok(Decapsulated::Data { peer, range }) => {
            let inner = &datagram[range.clone()];
            let meta = t.meta_mut(peer);
            let owned = meta.as_ref().is_some_and(|m| {
                matches!(ip::source(inner), Some(IpAddr::V4(a)) if a == m.vip4)
                    || matches!(ip::source(inner), Some(IpAddr::V6(a)) if a == m.vip6)
            });
            if let (true, Some(m)) = (owned, meta) {
                m.rx_bytes += range.len() as u64;
                m.rx_packets += 1;
                let validate = roam(m, via, now);
                deliver = Some((range.start, range.len()));
                t.scratch = scratch;
                if validate {
                    validate_path(shared, t, now, peer, via);
                }
                return deliver;
            } else {
                shared
                    .counters
                    .spoofed_source
                    .fetch_add(1, Ordering::Relaxed);
                tracing::trace!(%peer, "inner source is not the peer's address");
            }
        }
        Ok(Decapsulated::Control { peer, range }) => {
            let validate = t.meta_mut(peer).is_some_and(|m| roam(m, via, now));
            let body = datagram[range].to_vec();
            t.scratch = scratch;
            if validate {
                validate_path(shared, t, now, peer, via);
            }
            handle_control(shared, t, now, peer, via, &body);
            return None;
        }
        Ok(Decapsulated::Keepalive { peer }) => {
            let validate = t.meta_mut(peer).is_some_and(|m| roam(m, via, now));
            t.scratch = scratch;
            if validate {
                validate_path(shared, t, now, peer, via);
            }
            return None;
        }
        Ok(Decapsulated::WriteToNetwork { len, .. }) => {
            shared.send_route(via, &scratch[..len]);
        }
        Ok(Decapsulated::Established { peer }) => {
            // The handshake was a round trip on this path: no probe needed.
            if let Some(m) = t.meta_mut(peer) {
                m.validating = None;
                m.confirmed = false;
                roam(m, via, now);
            }
            t.scratch = scratch;
            shared.drain(t, now);
            return None;
        }
        Err(reason) => {
            trace_drop(source, &reason);
        }
    }
    t.scratch = scratch;
    deliver
}

/// A `HolePunching` datagram: a punch is answered with an ack to its source; either
/// one, authenticated under the direction's key, tells where the peer can be reached.
fn handle_punch(shared: &Shared, t: &mut Tunnel, source: SocketAddr, datagram: &[u8]) {
    let Ok(packet) = HolePunchingPacket::new_checked(datagram) else {
        shared
            .counters
            .punch_rejected
            .fetch_add(1, Ordering::Relaxed);
        return;
    };
    let Some(punch) = t.punches.get(&packet.direction_id()) else {
        shared
            .counters
            .punch_rejected
            .fetch_add(1, Ordering::Relaxed);
        return;
    };
    if packet.verify(&punch.key).is_err() || packet.sender() != punch.peer_node {
        shared
            .counters
            .punch_rejected
            .fetch_add(1, Ordering::Relaxed);
        return;
    }
    let Ok(repr) = HolePunchingRepr::parse(&packet) else {
        return;
    };
    if repr.kind == PunchKind::Punch {
        let ack = repr.ack(punch.me, &punch.key);
        let mut out = [0u8; HolePunchingRepr::LEN];
        if ack.emit(&mut out).is_ok() {
            shared.send_one(source, &out);
        }
    }
    if punch.found.borrow().is_none() {
        tracing::debug!(peer = %punch.peer, %source, "hole punched");
        punch.found.send_replace(Some(source));
    }
}

fn handle_bind_ack(t: &mut Tunnel, datagram: &[u8]) {
    let Ok(packet) = RelayBindAckPacket::new_checked(datagram) else {
        return;
    };
    let Some((binder, bound)) = t.relay_binds.get(&packet.ticket_id()) else {
        return;
    };
    match binder.handle_ack(datagram) {
        Ok(ack) if ack.status.is_success() => {
            bound.send_replace(if ack.peer_bound {
                RelayState::BothBound
            } else {
                RelayState::Bound
            });
        }
        Ok(ack) => tracing::warn!(status = %ack.status, "the TRS refused a relay bind"),
        Err(e) => tracing::debug!(error = ?e, "relay bind ack ignored"),
    }
}

fn handle_control(
    shared: &Shared,
    t: &mut Tunnel,
    now: Instant,
    peer: PeerId,
    via: Route,
    body: &[u8],
) {
    let repr = ControlPacket::new_checked(body).and_then(|p| ControlRepr::parse(&p));
    match repr {
        Ok(ControlRepr::PathProbe { probe_id, .. }) => {
            // Answered on the path it came in on: that is the path being tested.
            let mut out = [0u8; 64];
            if let Ok(len) = (ControlRepr::PathProbeAck {
                probe_id,
                observed: via.endpoint,
            })
            .emit(&mut out)
            {
                shared.send_control_via(t, now, peer, via, &out[..len]);
            }
        }
        Ok(ControlRepr::PathProbeAck { probe_id, .. }) => {
            if let Some((expected, sent, tx)) = t.probes.remove(&probe_id) {
                if expected == peer {
                    let _ = tx.send(now.duration_since(sent));
                }
            }
            // The round trip on a new path is complete: move there.
            if let Some(m) = t.meta_mut(peer) {
                if m.validating.is_some_and(|(r, _)| r == via) {
                    let path = match m.path {
                        PathKind::Relayed => PathKind::Punched,
                        other => other,
                    };
                    tracing::info!(peer = %m.fqdn, to = %via.endpoint, ?path, "new path validated; moving");
                    m.validating = None;
                    m.set_direct(via.endpoint, path);
                }
            }
        }
        Ok(ControlRepr::KeepAlive | ControlRepr::AddressUpdateAck { .. }) => {}
        Ok(ControlRepr::AddressUpdate { sequence, .. }) => {
            // The update is authenticated by the session and its source is where
            // `roam` already moved the peer; the ack goes back there, which proves
            // the new path both ways.
            shared
                .counters
                .address_updates
                .fetch_add(1, Ordering::Relaxed);
            let mut out = [0u8; 16];
            if let Ok(len) = (ControlRepr::AddressUpdateAck { sequence }).emit(&mut out) {
                shared.send_control(t, now, peer, &out[..len]);
            }
        }
        Err(e) => {
            shared
                .counters
                .control_unhandled
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%peer, error = %e, "malformed control message");
        }
    }
}

/// A packet authenticated by the session came `via` this route. The first path a peer
/// confirms is taken at once (the handshake was a round trip on it). A peer heard from
/// on another direct path later (it moved, or a relayed peer's probe got through) is
/// only moved there once a probe on that path came back: an authenticated packet can
/// still be a copy an on-path attacker forwards from elsewhere, and until the round
/// trip the old path stays in use (make before break). Returns whether a validation
/// probe is due. Traffic through the relay never moves a direct peer.
fn roam(meta: &mut PeerMeta, via: Route, now: Instant) -> bool {
    meta.last_rx = now;
    if via.relay_channel.is_some() || meta.route == via {
        if via == meta.route {
            meta.confirmed = true;
        }
        return false;
    }
    if !meta.confirmed {
        let path = match meta.path {
            PathKind::Relayed => PathKind::Punched,
            other => other,
        };
        tracing::debug!(peer = %meta.fqdn, from = %meta.route.endpoint, to = %via.endpoint, ?path, "peer endpoint set");
        meta.set_direct(via.endpoint, path);
        meta.confirmed = true;
        return false;
    }
    match meta.validating {
        Some((route, since)) if route == via && now.duration_since(since) < VALIDATION_RETRY => {
            false
        }
        _ => {
            meta.validating = Some((via, now));
            true
        }
    }
}

/// Sends a probe along `via` whose acknowledgement moves the peer there.
fn validate_path(shared: &Shared, t: &mut Tunnel, now: Instant, peer: PeerId, via: Route) {
    let probe_id = t.next_probe;
    t.next_probe += 1;
    let mut body = [0u8; 32];
    if let Ok(len) = (ControlRepr::PathProbe {
        probe_id,
        path_tag: 2,
    })
    .emit(&mut body)
    {
        tracing::debug!(%peer, to = %via.endpoint, "validating a new path");
        shared.send_control_via(t, now, peer, via, &body[..len]);
    }
}

fn trace_drop(source: SocketAddr, reason: &DropReason) {
    tracing::trace!(%source, %reason, "datagram dropped");
}

/// Writes the plaintexts to the interface in batches. Takes and returns the slot
/// vector so its allocation is reused across batches whatever the borrow lifetimes.
fn write_delivered(
    shared: &Shared,
    buf: &mut [u8],
    deliver: &[(usize, usize)],
    slots: Vec<Packet<'static>>,
) -> Vec<Packet<'static>> {
    let mut slots = recycle(slots);
    let mut rest: &mut [u8] = buf;
    let mut consumed = 0;
    for &(start, len) in deliver {
        let tail = std::mem::take(&mut rest);
        let (_, tail) = tail.split_at_mut(start - consumed);
        let (packet, tail) = tail.split_at_mut(len);
        rest = tail;
        consumed = start + len;
        if let Ok(slot) = Packet::new(packet, 0, len) {
            slots.push(slot);
        }
        if slots.len() == TUN_BATCH {
            write_all(shared, &slots);
            slots.clear();
        }
    }
    if !slots.is_empty() {
        write_all(shared, &slots);
    }
    recycle(slots)
}

fn write_all(shared: &Shared, slots: &[Packet<'_>]) {
    let Some(vif) = shared.vif.load_full() else {
        // The interface is being swapped: these packets are lost, as on a link flap.
        shared
            .counters
            .tun_errors
            .fetch_add(slots.len() as u64, Ordering::Relaxed);
        return;
    };
    let mut done = 0;
    while done < slots.len() {
        match vif.write_batch(&slots[done..]) {
            Ok(0) => {
                shared.counters.tun_errors.fetch_add(1, Ordering::Relaxed);
                break;
            }
            Ok(n) => {
                shared
                    .counters
                    .tun_packets_written
                    .fetch_add(n as u64, Ordering::Relaxed);
                done += n;
            }
            Err(e) => {
                shared.counters.tun_errors.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(error = %e, "writing to the virtual interface failed");
                break;
            }
        }
    }
}

/// Empties a slot vector and hands back its allocation under a new lifetime (the
/// element type is the same but for the borrow, so the in-place collect reuses it).
fn recycle<'b>(mut slots: Vec<Packet<'_>>) -> Vec<Packet<'b>> {
    slots.clear();
    slots
        .into_iter()
        .map(|_| unreachable!("the vector was cleared"))
        .collect()
}

fn timer_loop(shared: &Shared) {
    while !shared.stopping() {
        let now = Instant::now();
        let next = {
            let mut guard = shared.lock();
            let t = &mut *guard;
            if t.endpoint.poll_timeout().is_some_and(|at| at <= now) {
                t.endpoint.handle_timeout(now);
            }
            shared.drain(t, now);
            t.unreachable.retain(|_, until| *until > now);
            let stale: Vec<IpAddr> = t
                .pending
                .iter()
                .filter(|(_, p)| now.duration_since(p.since) > PENDING_TIMEOUT)
                .map(|(ip, _)| *ip)
                .collect();
            for ip in stale {
                if let Some(p) = t.pending.remove(&ip) {
                    shared
                        .counters
                        .pending_dropped
                        .fetch_add(p.packets.len() as u64, Ordering::Relaxed);
                }
            }
            maintain_paths(shared, t, now);
            t.endpoint.poll_timeout()
        };
        let wait = next
            .map_or(Duration::from_secs(1), |at| {
                at.saturating_duration_since(now)
            })
            .clamp(Duration::from_millis(1), Duration::from_secs(1));
        std::thread::park_timeout(wait);
    }
}

/// Keepalives for idle peers (NAT mappings and relay bindings stay open), direct
/// probes for relayed peers (the relay -> direct upgrade), and the fall back to the
/// relay when a direct path went silent.
fn maintain_paths(shared: &Shared, t: &mut Tunnel, now: Instant) {
    let timers = t.timers;
    let mut keepalive = Vec::new();
    let mut probe = Vec::new();
    for (slot, m) in t.meta.iter_mut().enumerate() {
        let Some(m) = m else { continue };
        let Some(&id) = t.by_vip.get(&IpAddr::V4(m.vip4)) else {
            continue;
        };
        debug_assert_eq!(id.index() as usize, slot);
        let has_session = t
            .endpoint
            .peer(id)
            .is_some_and(|p| p.send_session(now).is_some());
        if !has_session {
            continue;
        }
        if m.path != PathKind::Relayed
            && m.relay.is_some()
            && now.duration_since(m.last_rx) > timers.direct_silence
            && m.set_relayed()
        {
            tracing::info!(peer = %m.fqdn, "direct path silent; back to the relay");
        }
        if now.duration_since(m.last_tx) >= timers.keepalive {
            m.last_tx = now;
            keepalive.push(id);
        }
        if m.path == PathKind::Relayed
            && !m.candidates.is_empty()
            && now.duration_since(m.last_probe) >= timers.probe_interval
        {
            m.last_probe = now;
            probe.push((id, m.candidates.clone()));
        }
    }
    let mut body = [0u8; 32];
    if let Ok(len) = ControlRepr::KeepAlive.emit(&mut body) {
        for id in keepalive {
            shared.send_control(t, now, id, &body[..len]);
        }
    }
    for (id, candidates) in probe {
        for endpoint in candidates {
            let probe_id = t.next_probe;
            t.next_probe += 1;
            let Ok(len) = (ControlRepr::PathProbe {
                probe_id,
                path_tag: 1,
            })
            .emit(&mut body) else {
                continue;
            };
            let direct = Route {
                endpoint,
                relay_channel: None,
            };
            shared.send_control_via(t, now, id, direct, &body[..len]);
        }
    }
}

/// IPv4 peers reaching an IPv6 socket appear as `::ffff:a.b.c.d`.
fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => addr,
        },
        SocketAddr::V4(_) => addr,
    }
}

fn unix_now() -> UnixTime {
    UnixTime::from_system_time(SystemTime::now())
}
