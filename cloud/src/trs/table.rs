//! The relay's state machine without sockets or clocks: the binding table, bind
//! verification and anti-replay, forwarding decisions, the per-ticket token buckets and
//! expiry. [`super::run`] feeds it datagrams and times and carries out what it decides.
//!
//! Tables:
//! - `slots`: the bindings, one per ticket, in a slab so that forwarding needs one hash
//!   lookup; `by_ticket` finds a binding from a bind.
//! - `forward`: (channel id, source endpoint) -> (slot, side), as docs/protocol.md
//!   specifies: two tickets whose ids share their first 8 bytes are told apart by the
//!   source endpoint.
//! - `tombstones`: the highest accepted bind timestamps of bindings removed for idleness,
//!   kept until those timestamps fall out of the bind window, so that a bind captured
//!   before the removal cannot recreate the binding at an attacker's address.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use cyphonic_proto::relay::{self, BIND_MAX_SKEW_SECS, RelayError, RelayKey};
use cyphonic_proto::time::UnixTime;
use cyphonic_proto::wire::relay::{
    RelayBindAckRepr, RelayBindPacket, RelayBindRepr, RelayChannelId, RelayDataPacket, RelayTicket,
};
use cyphonic_proto::wire::status::StatusCode;
use cyphonic_proto::wire::{MessageType, NodeId, classify};

use crate::config::TrsSettings;
use crate::context::Revoked;
use crate::metrics::{Counter, Gauge, Metrics};

/// What the caller does with the datagram it passed to [`RelayTable::handle`].
#[derive(Debug)]
pub(super) enum Action {
    /// Nothing to send (the drop, if any, is already counted).
    Drop,
    /// Send the received datagram, unchanged, to `to` on socket `socket`.
    Forward { socket: usize, to: SocketAddr },
    /// Send these acks.
    Reply(Replies),
}

/// At most two acks: the answer to a bind, and the news for the peer that was waiting.
#[derive(Debug, Default)]
pub(super) struct Replies {
    items: [Option<Reply>; 2],
}

impl Replies {
    pub(super) fn iter(&self) -> impl Iterator<Item = &Reply> {
        self.items.iter().flatten()
    }

    fn push(&mut self, reply: Reply) {
        if let Some(free) = self.items.iter_mut().find(|r| r.is_none()) {
            *free = Some(reply);
        }
    }
}

/// One `RelayBindAck`, encoded.
#[derive(Debug)]
pub(super) struct Reply {
    pub(super) socket: usize,
    pub(super) to: SocketAddr,
    len: usize,
    bytes: [u8; RelayBindAckRepr::MAX_LEN],
}

impl Reply {
    pub(super) fn bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// Why a datagram was not relayed or answered; the `reason` label of
/// `cyphonic_trs_dropped_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum DropReason {
    /// Not a datagram of ours, or a RelayBind/RelayData of the wrong length.
    Malformed,
    /// A valid prefix of a message the TRS never receives (acks, signaling, tunnel).
    UnexpectedType,
    /// A bind whose ticket or MAC does not verify (unknown key, bad ticket MAC, bad bind
    /// MAC): never answered.
    Forged,
    /// A genuine ticket, but the binder is not one of its nodes.
    NotInTicket,
    /// A bind whose timestamp is not above the last accepted one for (ticket, node).
    Replay,
    /// RelayData whose (channel id, source) is not a bound endpoint.
    Unbound,
    /// RelayData from a bound side whose peer has not bound yet.
    PeerUnbound,
    /// Over the ticket's rate.
    RateLimited,
    /// The socket refused to send (counted by the caller).
    SendFailed,
    /// The socket reported an error instead of a datagram (counted by the caller).
    RecvError,
}

impl DropReason {
    const ALL: [Self; 10] = [
        Self::Malformed,
        Self::UnexpectedType,
        Self::Forged,
        Self::NotInTicket,
        Self::Replay,
        Self::Unbound,
        Self::PeerUnbound,
        Self::RateLimited,
        Self::SendFailed,
        Self::RecvError,
    ];

    pub(super) fn label(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::UnexpectedType => "unexpected_type",
            Self::Forged => "forged",
            Self::NotInTicket => "not_in_ticket",
            Self::Replay => "replay",
            Self::Unbound => "unbound",
            Self::PeerUnbound => "peer_unbound",
            Self::RateLimited => "rate_limited",
            Self::SendFailed => "send_failed",
            Self::RecvError => "recv_error",
        }
    }
}

/// The `result` label of `cyphonic_trs_binds_total`: every RelayBind of the right
/// length ends in exactly one of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum BindResult {
    /// Bound (first bind of this side, or a refresh from the same endpoint).
    Ok,
    /// A newer bind from another endpoint moved this side.
    Moved,
    /// Dropped unanswered: ticket or bind MAC wrong, or relay key unknown.
    Forged,
    /// Dropped unanswered: binder not in the ticket.
    NotInTicket,
    /// Answered `EXPIRED`: the ticket expired or the timestamp is outside the window.
    Expired,
    /// Dropped unanswered: timestamp not above the last accepted one.
    Replay,
    /// Answered `REVOKED`: the binder or its peer was removed.
    Revoked,
    /// Answered `CONFLICT`: the endpoint already names another live binding.
    Conflict,
    /// Answered `UNAVAILABLE`: `max_bindings` reached.
    Full,
}

impl BindResult {
    const ALL: [Self; 9] = [
        Self::Ok,
        Self::Moved,
        Self::Forged,
        Self::NotInTicket,
        Self::Expired,
        Self::Replay,
        Self::Revoked,
        Self::Conflict,
        Self::Full,
    ];

    pub(super) fn label(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Moved => "moved",
            Self::Forged => "forged",
            Self::NotInTicket => "not_in_ticket",
            Self::Expired => "expired",
            Self::Replay => "replay",
            Self::Revoked => "revoked",
            Self::Conflict => "conflict",
            Self::Full => "full",
        }
    }
}

/// The TRS's counters, registered once so that the per-datagram cost is an atomic add.
#[derive(Debug, Clone)]
pub(super) struct TrsMetrics {
    binds: [Counter; BindResult::ALL.len()],
    dropped: [Counter; DropReason::ALL.len()],
    relayed_packets: Counter,
    relayed_bytes: Counter,
    bindings: Gauge,
}

impl TrsMetrics {
    pub(super) fn register(metrics: &Metrics) -> Self {
        Self {
            binds: BindResult::ALL.map(|r| {
                metrics.counter(
                    "cyphonic_trs_binds_total",
                    &[("result", r.label())],
                    "RelayBind datagrams by outcome",
                )
            }),
            dropped: DropReason::ALL.map(|r| {
                metrics.counter(
                    "cyphonic_trs_dropped_total",
                    &[("reason", r.label())],
                    "Datagrams the TRS neither relayed nor answered",
                )
            }),
            relayed_packets: metrics.counter(
                "cyphonic_trs_relayed_packets_total",
                &[],
                "RelayData datagrams forwarded",
            ),
            relayed_bytes: metrics.counter(
                "cyphonic_trs_relayed_bytes_total",
                &[],
                "Bytes of RelayData datagrams forwarded (UDP payload)",
            ),
            bindings: metrics.gauge("cyphonic_trs_bindings", &[], "Tickets with a binding"),
        }
    }

    pub(super) fn dropped(&self, reason: DropReason) {
        // The arrays are built from `ALL` in declaration order, so the discriminant is the
        // index.
        self.dropped[reason as usize].inc();
    }

    fn bind(&self, result: BindResult) {
        self.binds[result as usize].inc();
    }
}

/// Why a binding went away (for the log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Removal {
    Idle,
    TicketExpired,
    Revoked,
}

/// The relay's whole state. Owned by the one TRS task; never shared.
#[derive(Debug)]
pub(super) struct RelayTable {
    key: RelayKey,
    rate_bytes_per_sec: u64,
    burst_bytes: u64,
    idle: Duration,
    max_bindings: usize,
    slots: Vec<Option<Binding>>,
    free: Vec<usize>,
    by_ticket: HashMap<[u8; 16], usize>,
    forward: HashMap<(RelayChannelId, SocketAddr), Route>,
    tombstones: HashMap<[u8; 16], Tombstone>,
    metrics: TrsMetrics,
}

#[derive(Debug, Clone, Copy)]
struct Route {
    slot: usize,
    side: usize,
}

/// One ticket's relay state.
#[derive(Debug)]
struct Binding {
    /// Kept whole: the unsolicited ack to the first side needs that side's bind key,
    /// which is derived from the full ticket.
    ticket: RelayTicket,
    /// Side 0 is the ticket's node a, side 1 node b.
    sides: [Side; 2],
    bucket: TokenBucket,
    last_activity: Instant,
    packets: u64,
    bytes: u64,
}

#[derive(Debug, Clone, Copy)]
struct Side {
    node: NodeId,
    bound: Option<Endpoint>,
    /// Highest accepted bind timestamp (Unix ms); binds must go strictly above it.
    last_timestamp: Option<u64>,
}

/// Where a side is bound, and the socket its binds arrived on: we answer and forward to
/// it from that socket, since a NAT in front of the node only lets in datagrams from the
/// address the node sent to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Endpoint {
    addr: SocketAddr,
    socket: usize,
}

#[derive(Debug, Clone, Copy)]
struct Tombstone {
    last_timestamps: [Option<u64>; 2],
    /// After this second every bind at or below those timestamps is outside the window.
    forget_after: UnixTime,
}

impl RelayTable {
    pub(super) fn new(key: RelayKey, settings: &TrsSettings, metrics: TrsMetrics) -> Self {
        metrics.bindings.set(0);
        Self {
            key,
            rate_bytes_per_sec: settings.rate_bytes_per_sec,
            burst_bytes: settings.burst_bytes,
            // An idle time of 0 would drop every binding at the first sweep.
            idle: Duration::from_secs(u64::from(settings.idle_secs.max(1))),
            max_bindings: settings.max_bindings,
            slots: Vec::new(),
            free: Vec::new(),
            by_ticket: HashMap::new(),
            forward: HashMap::new(),
            tombstones: HashMap::new(),
            metrics,
        }
    }

    pub(super) fn len(&self) -> usize {
        self.by_ticket.len()
    }

    /// Decides what to do with one received datagram. `src` must be canonical
    /// (`net::canonical`), `socket` the index of the socket it arrived on.
    pub(super) fn handle(
        &mut self,
        socket: usize,
        src: SocketAddr,
        datagram: &[u8],
        now: Instant,
        wall: UnixTime,
        revoked: &Revoked,
    ) -> Action {
        match classify(datagram) {
            Ok(MessageType::RelayData) => self.relay(src, datagram, now),
            Ok(MessageType::RelayBind) => self.bind(socket, src, datagram, now, wall, revoked),
            Ok(_) => self.drop(DropReason::UnexpectedType),
            Err(_) => self.drop(DropReason::Malformed),
        }
    }

    /// Removes bindings idle for longer than `idle_secs` or whose ticket expired, and
    /// forgets tombstones whose timestamps left the bind window.
    pub(super) fn sweep(&mut self, now: Instant, wall: UnixTime) {
        for slot in 0..self.slots.len() {
            let removal = match &self.slots[slot] {
                Some(b) if wall > b.ticket.not_after => Removal::TicketExpired,
                Some(b) if now.saturating_duration_since(b.last_activity) > self.idle => {
                    Removal::Idle
                }
                _ => continue,
            };
            self.remove(slot, removal, wall);
        }
        self.tombstones.retain(|_, t| t.forget_after >= wall);
    }

    /// Removes every binding `node` is part of.
    pub(super) fn revoke(&mut self, node: &NodeId, wall: UnixTime) {
        self.remove_where(wall, |b| b.ticket.peer_of(node).is_some());
    }

    /// Removes every binding with a revoked node: the catch-up after missed
    /// revocation events.
    pub(super) fn revoke_all(&mut self, revoked: &Revoked, wall: UnixTime) {
        self.remove_where(wall, |b| {
            revoked.contains(&b.ticket.node_a) || revoked.contains(&b.ticket.node_b)
        });
    }

    // -----------------------------------------------------------------------------------
    // RelayData

    fn relay(&mut self, src: SocketAddr, datagram: &[u8], now: Instant) -> Action {
        let Ok(packet) = RelayDataPacket::new_checked(datagram) else {
            return self.drop(DropReason::Malformed);
        };
        let Some(&Route { slot, side }) = self.forward.get(&(packet.channel_id(), src)) else {
            return self.drop(DropReason::Unbound);
        };
        let Some(Some(binding)) = self.slots.get_mut(slot) else {
            // `forward` and `slots` change together; a miss would be our bug, and the
            // datagram is still unrelayable.
            return self.drop(DropReason::Unbound);
        };
        let Some(peer) = binding.sides[1 - side].bound else {
            return self.drop(DropReason::PeerUnbound);
        };
        let len = datagram.len();
        if !binding
            .bucket
            .take(len, now, self.rate_bytes_per_sec, self.burst_bytes)
        {
            return self.drop(DropReason::RateLimited);
        }
        binding.last_activity = now;
        binding.packets += 1;
        binding.bytes += len as u64;
        self.metrics.relayed_packets.inc();
        self.metrics.relayed_bytes.add(len as u64);
        tracing::trace!(from = %src, to = %peer.addr, len, "relayed");
        Action::Forward {
            socket: peer.socket,
            to: peer.addr,
        }
    }

    // -----------------------------------------------------------------------------------
    // RelayBind

    fn bind(
        &mut self,
        socket: usize,
        src: SocketAddr,
        datagram: &[u8],
        now: Instant,
        wall: UnixTime,
        revoked: &Revoked,
    ) -> Action {
        let Ok(packet) = RelayBindPacket::new_checked(datagram) else {
            return self.drop(DropReason::Malformed);
        };
        let Ok(bind) = RelayBindRepr::parse(&packet) else {
            return self.drop(DropReason::Malformed);
        };
        let bind_key = match relay::verify_bind(&self.key, &bind, wall) {
            Ok(key) => key,
            Err(error) => return self.refuse_unverified(socket, src, &bind, error),
        };
        let ticket = &bind.ticket;
        let side = usize::from(bind.binder != ticket.node_a);
        let timestamp = bind.timestamp_millis;
        let answer = |status, peer_bound| {
            ack(
                &bind_key,
                ticket,
                status,
                timestamp,
                peer_bound,
                Endpoint { addr: src, socket },
            )
        };

        let existing = self.by_ticket.get(&ticket.ticket_id).copied();
        let last_timestamp = match existing {
            Some(slot) => self.slots[slot]
                .as_ref()
                .and_then(|b| b.sides[side].last_timestamp),
            None => self
                .tombstones
                .get(&ticket.ticket_id)
                .and_then(|t| t.last_timestamps[side]),
        };
        if last_timestamp.is_some_and(|last| timestamp <= last) {
            tracing::trace!(from = %src, node = %bind.binder, "replayed bind");
            self.metrics.bind(BindResult::Replay);
            return self.drop(DropReason::Replay);
        }
        if revoked.contains(&ticket.node_a) || revoked.contains(&ticket.node_b) {
            self.metrics.bind(BindResult::Revoked);
            return reply(answer(StatusCode::REVOKED, false));
        }

        let slot = match existing {
            Some(slot) => slot,
            None => {
                if self.by_ticket.len() >= self.max_bindings {
                    tracing::debug!(max = self.max_bindings, "binding table full");
                    self.metrics.bind(BindResult::Full);
                    return reply(answer(StatusCode::UNAVAILABLE, false));
                }
                if self.forward.contains_key(&(ticket.channel_id(), src)) {
                    self.metrics.bind(BindResult::Conflict);
                    return reply(answer(StatusCode::CONFLICT, false));
                }
                self.insert(ticket, now)
            }
        };
        let Some(binding) = self.slots[slot].as_mut() else {
            // `by_ticket` and `slots` change together; refuse rather than panic.
            self.metrics.bind(BindResult::Conflict);
            return reply(answer(StatusCode::CONFLICT, false));
        };
        if binding.ticket != *ticket {
            // Another genuine ticket with the same id: only a broken NMS RNG makes one.
            self.metrics.bind(BindResult::Conflict);
            return reply(answer(StatusCode::CONFLICT, false));
        }
        let channel = ticket.channel_id();
        let here = Endpoint { addr: src, socket };
        let previous = binding.sides[side].bound;
        let moved = previous.is_some_and(|p| p.addr != src);
        if previous.is_none_or(|p| p.addr != src) {
            if let Some(route) = self.forward.get(&(channel, src)) {
                // The endpoint already sends for another ticket with this channel id, or
                // for the other side of this one: forwarding could not tell them apart.
                if route.slot != slot || route.side != side {
                    self.metrics.bind(BindResult::Conflict);
                    return reply(answer(StatusCode::CONFLICT, false));
                }
            }
            if let Some(p) = previous {
                self.forward.remove(&(channel, p.addr));
            }
            self.forward.insert((channel, src), Route { slot, side });
        }
        binding.sides[side].bound = Some(here);
        binding.sides[side].last_timestamp = Some(timestamp);
        binding.last_activity = now;
        let peer = binding.sides[1 - side];
        let peer_bound = peer.bound.is_some();

        let mut replies = Replies::default();
        if let Some(r) = answer(StatusCode::SUCCESS, peer_bound) {
            replies.push(r);
        }
        // The peer bound first and has been told "peer not bound": tell it, with an ack
        // echoing its own latest bind, that data can flow now.
        if previous.is_none() {
            if let (Some(peer_at), Some(peer_timestamp)) = (peer.bound, peer.last_timestamp) {
                let peer_key = relay::bind_key(&self.key, ticket, &peer.node);
                if let Some(r) = ack(
                    &peer_key,
                    ticket,
                    StatusCode::SUCCESS,
                    peer_timestamp,
                    true,
                    peer_at,
                ) {
                    replies.push(r);
                }
            }
        }
        if moved {
            tracing::debug!(node = %bind.binder, to = %src, "relay side moved");
            self.metrics.bind(BindResult::Moved);
        } else {
            if previous.is_none() {
                tracing::debug!(node = %bind.binder, at = %src, peer_bound, "relay side bound");
            }
            self.metrics.bind(BindResult::Ok);
        }
        Action::Reply(replies)
    }

    /// A bind `verify_bind` refused: answered only when the binder proved its bind key
    /// (the status then says why), dropped silently otherwise.
    fn refuse_unverified(
        &mut self,
        socket: usize,
        src: SocketAddr,
        bind: &RelayBindRepr,
        error: RelayError,
    ) -> Action {
        tracing::trace!(from = %src, %error, "bind refused");
        let Some(status) = error.ack_status() else {
            let (result, reason) = match error {
                RelayError::NotInTicket => (BindResult::NotInTicket, DropReason::NotInTicket),
                _ => (BindResult::Forged, DropReason::Forged),
            };
            self.metrics.bind(result);
            return self.drop(reason);
        };
        self.metrics.bind(BindResult::Expired);
        // `verify_bind` checks the bind MAC before expiry and the timestamp window, so the
        // binder holds this key and the answer is authenticated.
        let key = relay::bind_key(&self.key, &bind.ticket, &bind.binder);
        reply(ack(
            &key,
            &bind.ticket,
            status,
            bind.timestamp_millis,
            false,
            Endpoint { addr: src, socket },
        ))
    }

    // -----------------------------------------------------------------------------------
    // Table upkeep

    fn insert(&mut self, ticket: &RelayTicket, now: Instant) -> usize {
        let last_timestamps = self
            .tombstones
            .remove(&ticket.ticket_id)
            .map(|t| t.last_timestamps)
            .unwrap_or_default();
        let side = |node, last_timestamp| Side {
            node,
            bound: None,
            last_timestamp,
        };
        let binding = Binding {
            ticket: *ticket,
            sides: [
                side(ticket.node_a, last_timestamps[0]),
                side(ticket.node_b, last_timestamps[1]),
            ],
            bucket: TokenBucket::full(self.burst_bytes, now),
            last_activity: now,
            packets: 0,
            bytes: 0,
        };
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slots[slot] = Some(binding);
                slot
            }
            None => {
                self.slots.push(Some(binding));
                self.slots.len() - 1
            }
        };
        self.by_ticket.insert(ticket.ticket_id, slot);
        self.metrics.bindings.set(self.by_ticket.len() as i64);
        slot
    }

    fn remove_where(&mut self, wall: UnixTime, mut doomed: impl FnMut(&Binding) -> bool) {
        for slot in 0..self.slots.len() {
            if self.slots[slot].as_ref().is_some_and(&mut doomed) {
                self.remove(slot, Removal::Revoked, wall);
            }
        }
    }

    fn remove(&mut self, slot: usize, why: Removal, wall: UnixTime) {
        let Some(binding) = self.slots[slot].take() else {
            return;
        };
        self.free.push(slot);
        let ticket = &binding.ticket;
        self.by_ticket.remove(&ticket.ticket_id);
        for side in &binding.sides {
            if let Some(at) = side.bound {
                self.forward.remove(&(ticket.channel_id(), at.addr));
            }
        }
        // Only an idle binding can come back with a replayed bind: an expired ticket
        // fails verification and a revoked node is refused.
        let last_timestamps = binding.sides.map(|s| s.last_timestamp);
        if why == Removal::Idle && self.tombstones.len() < self.max_bindings {
            if let Some(newest) = last_timestamps.iter().flatten().max() {
                let forget_after = UnixTime((newest / 1000).saturating_add(BIND_MAX_SKEW_SECS + 1));
                if forget_after >= wall {
                    self.tombstones.insert(
                        ticket.ticket_id,
                        Tombstone {
                            last_timestamps,
                            forget_after,
                        },
                    );
                }
            }
        }
        self.metrics.bindings.set(self.by_ticket.len() as i64);
        tracing::debug!(
            node_a = %ticket.node_a,
            node_b = %ticket.node_b,
            reason = ?why,
            packets = binding.packets,
            bytes = binding.bytes,
            "relay binding removed"
        );
    }

    fn drop(&self, reason: DropReason) -> Action {
        self.metrics.dropped(reason);
        Action::Drop
    }
}

fn reply(reply: Option<Reply>) -> Action {
    match reply {
        Some(r) => {
            let mut replies = Replies::default();
            replies.push(r);
            Action::Reply(replies)
        }
        None => Action::Drop,
    }
}

/// An ack MAC'd with `bind_key`, to be sent to `to`.
fn ack(
    bind_key: &[u8; 32],
    ticket: &RelayTicket,
    status: StatusCode,
    timestamp_millis: u64,
    peer_bound: bool,
    to: Endpoint,
) -> Option<Reply> {
    let mut repr = RelayBindAckRepr {
        ticket_id: ticket.ticket_id,
        status,
        timestamp_millis,
        peer_bound,
        observed: to.addr,
        mac: [0; 16],
    };
    repr.seal(bind_key);
    let mut bytes = [0u8; RelayBindAckRepr::MAX_LEN];
    match repr.emit(&mut bytes) {
        Ok(len) => Some(Reply {
            socket: to.socket,
            to: to.addr,
            len,
            bytes,
        }),
        Err(error) => {
            // MAX_LEN fits every ack; this would be a proto bug, not a node's doing.
            tracing::error!(%error, "cannot encode a RelayBindAck");
            None
        }
    }
}

/// Bytes one ticket may still relay, refilled at the configured rate up to the burst.
/// Kept in nanobytes so that frequent small refills lose nothing to rounding.
#[derive(Debug, Clone, Copy)]
struct TokenBucket {
    nanobytes: u128,
    refilled_at: Instant,
}

const NANOS_PER_SEC: u128 = 1_000_000_000;

impl TokenBucket {
    fn full(burst_bytes: u64, now: Instant) -> Self {
        Self {
            nanobytes: u128::from(burst_bytes) * NANOS_PER_SEC,
            refilled_at: now,
        }
    }

    /// Takes `bytes` if the bucket holds them; an over-limit datagram takes nothing.
    fn take(&mut self, bytes: usize, now: Instant, rate_per_sec: u64, burst_bytes: u64) -> bool {
        let elapsed = now.saturating_duration_since(self.refilled_at).as_nanos();
        if now > self.refilled_at {
            self.refilled_at = now;
        }
        let capacity = u128::from(burst_bytes) * NANOS_PER_SEC;
        self.nanobytes = self
            .nanobytes
            .saturating_add(elapsed.saturating_mul(u128::from(rate_per_sec)))
            .min(capacity);
        let cost = bytes as u128 * NANOS_PER_SEC;
        if self.nanobytes >= cost {
            self.nanobytes -= cost;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trs::testkit::{A, B, C, Pair, data_bytes, relay_key};

    const WALL: UnixTime = UnixTime(1_700_000_000);

    fn settings() -> TrsSettings {
        TrsSettings {
            rate_bytes_per_sec: 10_000,
            burst_bytes: 5_000,
            idle_secs: 10,
            max_bindings: 4,
            ..TrsSettings::default()
        }
    }

    struct Fixture {
        table: RelayTable,
        metrics: Metrics,
        revoked: Revoked,
        t0: Instant,
    }

    impl Fixture {
        fn new(settings: TrsSettings) -> Self {
            let metrics = Metrics::new();
            Self {
                table: RelayTable::new(relay_key(), &settings, TrsMetrics::register(&metrics)),
                metrics,
                revoked: Revoked::new(),
                t0: Instant::now(),
            }
        }

        fn at(&mut self, secs: f64, socket: usize, src: &str, datagram: &[u8]) -> Action {
            let now = self.t0 + Duration::from_secs_f64(secs);
            let wall = UnixTime(WALL.0 + secs as u64);
            self.table.handle(
                socket,
                src.parse().unwrap(),
                datagram,
                now,
                wall,
                &self.revoked,
            )
        }

        fn dropped(&self, reason: &str) -> u64 {
            self.metrics
                .counter("cyphonic_trs_dropped_total", &[("reason", reason)], "")
                .value()
        }

        fn binds(&self, result: &str) -> u64 {
            self.metrics
                .counter("cyphonic_trs_binds_total", &[("result", result)], "")
                .value()
        }

        fn sweep(&mut self, secs: f64) {
            let now = self.t0 + Duration::from_secs_f64(secs);
            self.table.sweep(now, UnixTime(WALL.0 + secs as u64));
        }
    }

    fn acks(action: Action) -> Vec<(usize, SocketAddr, Vec<u8>)> {
        match action {
            Action::Reply(r) => r
                .iter()
                .map(|r| (r.socket, r.to, r.bytes().to_vec()))
                .collect(),
            other => panic!("expected acks, got {other:?}"),
        }
    }

    fn forwarded(action: Action) -> (usize, SocketAddr) {
        match action {
            Action::Forward { socket, to } => (socket, to),
            other => panic!("expected a forward, got {other:?}"),
        }
    }

    fn ms(secs: u64) -> u64 {
        (WALL.0 + secs) * 1000
    }

    #[test]
    fn bind_both_then_forward_on_the_binding_socket() {
        let mut f = Fixture::new(settings());
        let pair = Pair::new([1; 16], WALL.0 + 3600);
        let a = acks(f.at(0.0, 0, "192.0.2.1:1000", &pair.bind(A, ms(0))));
        assert_eq!(a.len(), 1);
        let ack = pair.ack(A, &a[0].2);
        assert_eq!(ack.status, StatusCode::SUCCESS);
        assert!(!ack.peer_bound);
        assert_eq!(ack.timestamp_millis, ms(0));
        assert_eq!(ack.observed, "192.0.2.1:1000".parse().unwrap());

        // B arrives on socket 1 (another family); A hears that its peer is bound.
        let b = acks(f.at(0.1, 1, "[2001:db8::2]:2000", &pair.bind(B, ms(0))));
        assert_eq!(b.len(), 2);
        assert_eq!(b[0].0, 1);
        let ack_b = pair.ack(B, &b[0].2);
        assert!(ack_b.peer_bound);
        assert_eq!((b[1].0, b[1].1), (0, "192.0.2.1:1000".parse().unwrap()));
        let news = pair.ack(A, &b[1].2);
        assert!(news.peer_bound);
        assert_eq!(news.timestamp_millis, ms(0), "echoes A's own latest bind");

        let data = data_bytes(pair.ticket.channel_id(), b"sealed");
        assert_eq!(
            forwarded(f.at(0.2, 0, "192.0.2.1:1000", &data)),
            (1, "[2001:db8::2]:2000".parse().unwrap())
        );
        assert_eq!(
            forwarded(f.at(0.2, 1, "[2001:db8::2]:2000", &data)),
            (0, "192.0.2.1:1000".parse().unwrap())
        );
        // A refresh from the same endpoint tells nobody else anything.
        assert_eq!(
            acks(f.at(1.0, 0, "192.0.2.1:1000", &pair.bind(A, ms(1)))).len(),
            1
        );
        assert_eq!(f.binds("ok"), 3);
        assert_eq!(f.table.len(), 1);
    }

    #[test]
    fn replays_and_forgeries_leave_the_binding_alone() {
        let mut f = Fixture::new(settings());
        let pair = Pair::new([2; 16], WALL.0 + 3600);
        let bind_a = pair.bind(A, ms(5));
        acks(f.at(5.0, 0, "192.0.2.1:1000", &bind_a));
        acks(f.at(5.0, 0, "192.0.2.2:2000", &pair.bind(B, ms(5))));

        // The captured bind, from the attacker and from the node itself.
        assert!(matches!(
            f.at(6.0, 0, "203.0.113.9:666", &bind_a),
            Action::Drop
        ));
        assert!(matches!(
            f.at(6.0, 0, "192.0.2.1:1000", &bind_a),
            Action::Drop
        ));
        // An older one, also signed by A.
        assert!(matches!(
            f.at(6.0, 0, "203.0.113.9:666", &pair.bind(A, ms(4))),
            Action::Drop
        ));
        assert_eq!(f.dropped("replay"), 3);
        assert_eq!(f.binds("replay"), 3);

        // A forged MAC, a foreign key, a binder outside the ticket.
        let mut bad_mac = pair.bind(A, ms(7));
        bad_mac[130] ^= 1;
        assert!(matches!(
            f.at(7.0, 0, "203.0.113.9:666", &bad_mac),
            Action::Drop
        ));
        let foreign = Pair::minted(
            RelayKey::derive(b"some other cloud's secret"),
            [2; 16],
            A,
            B,
            WALL.0 + 3600,
        );
        assert!(matches!(
            f.at(7.0, 0, "203.0.113.9:666", &foreign.bind(A, ms(7))),
            Action::Drop
        ));
        assert!(matches!(
            f.at(7.0, 0, "203.0.113.9:666", &pair.bind(C, ms(7))),
            Action::Drop
        ));
        assert_eq!(f.dropped("forged"), 2);
        assert_eq!(f.dropped("not_in_ticket"), 1);

        let data = data_bytes(pair.ticket.channel_id(), b"x1");
        assert_eq!(
            forwarded(f.at(8.0, 0, "192.0.2.2:2000", &data)).1,
            "192.0.2.1:1000".parse().unwrap()
        );
        assert!(matches!(
            f.at(8.0, 0, "203.0.113.9:666", &data),
            Action::Drop
        ));
        assert_eq!(f.dropped("unbound"), 1);
    }

    #[test]
    fn newer_bind_from_elsewhere_moves_the_side() {
        let mut f = Fixture::new(settings());
        let pair = Pair::new([3; 16], WALL.0 + 3600);
        acks(f.at(0.0, 0, "192.0.2.1:1000", &pair.bind(A, ms(0))));
        acks(f.at(0.0, 0, "192.0.2.2:2000", &pair.bind(B, ms(0))));
        let moved = acks(f.at(1.0, 1, "[2001:db8::1]:1001", &pair.bind(A, ms(1))));
        assert_eq!(moved.len(), 1, "B is not told again");
        assert!(pair.ack(A, &moved[0].2).peer_bound);
        assert_eq!(f.binds("moved"), 1);
        let data = data_bytes(pair.ticket.channel_id(), b"x1");
        assert_eq!(
            forwarded(f.at(1.5, 0, "192.0.2.2:2000", &data)),
            (1, "[2001:db8::1]:1001".parse().unwrap())
        );
        assert!(matches!(
            f.at(1.5, 0, "192.0.2.1:1000", &data),
            Action::Drop
        ));
        assert_eq!(f.dropped("unbound"), 1);
    }

    #[test]
    fn peer_unbound_and_garbage() {
        let mut f = Fixture::new(settings());
        let pair = Pair::new([4; 16], WALL.0 + 3600);
        acks(f.at(0.0, 0, "192.0.2.1:1000", &pair.bind(A, ms(0))));
        let data = data_bytes(pair.ticket.channel_id(), b"x1");
        assert!(matches!(
            f.at(0.1, 0, "192.0.2.1:1000", &data),
            Action::Drop
        ));
        assert_eq!(f.dropped("peer_unbound"), 1);
        for junk in [
            &[][..],
            &[1],
            &[1, 0x22, 0, 0],
            &[1, 0x20, 0],
            &[9, 0x22, 1, 2],
            &[1, 0x99],
        ] {
            assert!(matches!(f.at(0.2, 0, "192.0.2.9:9", junk), Action::Drop));
        }
        assert_eq!(f.dropped("malformed"), 6);
        assert!(matches!(
            f.at(0.2, 0, "192.0.2.9:9", &[1, 0x21, 0, 0]),
            Action::Drop
        ));
        assert_eq!(f.dropped("unexpected_type"), 1);
        let mut long_bind = pair.bind(A, ms(1)).to_vec();
        long_bind.push(0);
        assert!(matches!(
            f.at(0.2, 0, "192.0.2.1:1000", &long_bind),
            Action::Drop
        ));
        assert_eq!(f.dropped("malformed"), 7);
    }

    #[test]
    fn expired_and_stale_binds_get_an_authenticated_expired() {
        let mut f = Fixture::new(settings());
        let old = Pair::new([5; 16], WALL.0 - 1);
        let a = acks(f.at(0.0, 0, "192.0.2.1:1000", &old.bind(A, ms(0))));
        assert_eq!(old.ack(A, &a[0].2).status, StatusCode::EXPIRED);
        let pair = Pair::new([6; 16], WALL.0 + 3600);
        let stale = WALL.0 - BIND_MAX_SKEW_SECS - 1;
        let a = acks(f.at(0.0, 0, "192.0.2.1:1000", &pair.bind(A, stale * 1000)));
        assert_eq!(pair.ack(A, &a[0].2).status, StatusCode::EXPIRED);
        assert_eq!(f.binds("expired"), 2);
        assert_eq!(f.table.len(), 0);
    }

    #[test]
    fn rate_limit_counts_both_directions() {
        let mut f = Fixture::new(settings());
        let pair = Pair::new([7; 16], WALL.0 + 3600);
        acks(f.at(0.0, 0, "192.0.2.1:1000", &pair.bind(A, ms(0))));
        acks(f.at(0.0, 0, "192.0.2.2:2000", &pair.bind(B, ms(0))));
        let data = data_bytes(pair.ticket.channel_id(), &[0u8; 990]); // 1000 bytes
        // Burst 5000: five datagrams, alternating directions, then nothing.
        for i in 0..5 {
            let src = if i % 2 == 0 {
                "192.0.2.1:1000"
            } else {
                "192.0.2.2:2000"
            };
            forwarded(f.at(1.0, 0, src, &data));
        }
        assert!(matches!(
            f.at(1.0, 0, "192.0.2.2:2000", &data),
            Action::Drop
        ));
        assert_eq!(f.dropped("rate_limited"), 1);
        // 10 kB/s: 0.1 s later one more datagram fits, the next does not.
        forwarded(f.at(1.1, 0, "192.0.2.1:1000", &data));
        assert!(matches!(
            f.at(1.1, 0, "192.0.2.1:1000", &data),
            Action::Drop
        ));
        assert_eq!(f.dropped("rate_limited"), 2);
        // The bucket never holds more than the burst, however long it rests.
        for _ in 0..5 {
            forwarded(f.at(100.0, 0, "192.0.2.1:1000", &data));
        }
        assert!(matches!(
            f.at(100.0, 0, "192.0.2.1:1000", &data),
            Action::Drop
        ));
    }

    #[test]
    fn idle_and_expired_bindings_are_swept_and_idle_ones_remember_timestamps() {
        let mut f = Fixture::new(settings());
        let pair = Pair::new([8; 16], WALL.0 + 30);
        let bind_a = pair.bind(A, ms(0));
        acks(f.at(0.0, 0, "192.0.2.1:1000", &bind_a));
        acks(f.at(0.0, 0, "192.0.2.2:2000", &pair.bind(B, ms(0))));
        let data = data_bytes(pair.ticket.channel_id(), b"x1");
        forwarded(f.at(9.0, 0, "192.0.2.1:1000", &data));
        f.sweep(18.0);
        assert_eq!(f.table.len(), 1, "activity at 9 s keeps it until 19 s");
        f.sweep(19.5);
        assert_eq!(f.table.len(), 0);
        assert_eq!(f.metrics.gauge("cyphonic_trs_bindings", &[], "").value(), 0);
        assert!(matches!(
            f.at(19.6, 0, "192.0.2.1:1000", &data),
            Action::Drop
        ));
        // The bind captured at 0 s cannot bring the binding back for an attacker...
        assert!(matches!(
            f.at(20.0, 0, "203.0.113.9:666", &bind_a),
            Action::Drop
        ));
        assert_eq!(f.dropped("replay"), 1);
        assert_eq!(f.table.len(), 0);
        // ...but the node's next bind does, and the memory moves into the binding.
        let a = acks(f.at(20.0, 0, "192.0.2.1:1000", &pair.bind(A, ms(20))));
        assert_eq!(pair.ack(A, &a[0].2).status, StatusCode::SUCCESS);
        assert!(!pair.ack(A, &a[0].2).peer_bound);
        assert!(f.table.tombstones.is_empty());
        // Ticket expiry (not_after = +30 s) removes the binding whatever the activity.
        let b = acks(f.at(30.0, 0, "192.0.2.2:2000", &pair.bind(B, ms(30))));
        assert!(pair.ack(B, &b[0].2).peer_bound);
        f.sweep(31.0);
        assert_eq!(f.table.len(), 0);
        assert!(
            f.table.tombstones.is_empty(),
            "expired tickets need no memory"
        );
        // Tombstones are forgotten once their timestamps left the bind window.
        let other = Pair::new([9; 16], WALL.0 + 3600);
        acks(f.at(40.0, 0, "192.0.2.1:1000", &other.bind(A, ms(40))));
        f.sweep(51.0);
        assert_eq!(f.table.tombstones.len(), 1);
        f.sweep(40.0 + BIND_MAX_SKEW_SECS as f64 + 1.0);
        assert_eq!(f.table.tombstones.len(), 1);
        f.sweep(40.0 + BIND_MAX_SKEW_SECS as f64 + 2.0);
        assert!(f.table.tombstones.is_empty());
    }

    #[test]
    fn full_table_and_channel_id_collisions() {
        let mut f = Fixture::new(TrsSettings {
            max_bindings: 2,
            ..settings()
        });
        let one = Pair::new([1; 16], WALL.0 + 3600);
        let mut twin_id = [1; 16];
        twin_id[15] = 2;
        let twin = Pair::new(twin_id, WALL.0 + 3600);
        acks(f.at(0.0, 0, "192.0.2.1:1000", &one.bind(A, ms(0))));
        // Same channel id, same source endpoint: forwarding could not tell them apart.
        let c = acks(f.at(0.0, 0, "192.0.2.1:1000", &twin.bind(B, ms(0))));
        assert_eq!(twin.ack(B, &c[0].2).status, StatusCode::CONFLICT);
        // From another endpoint it is fine.
        let c = acks(f.at(0.0, 0, "192.0.2.3:1000", &twin.bind(B, ms(0))));
        assert_eq!(twin.ack(B, &c[0].2).status, StatusCode::SUCCESS);
        let third = Pair::new([3; 16], WALL.0 + 3600);
        let u = acks(f.at(0.0, 0, "192.0.2.4:1000", &third.bind(A, ms(0))));
        assert_eq!(third.ack(A, &u[0].2).status, StatusCode::UNAVAILABLE);
        assert_eq!(f.binds("full"), 1);
        assert_eq!(f.binds("conflict"), 1);
        // Both nodes of one ticket behind one endpoint cannot both bind.
        let c = acks(f.at(0.0, 0, "192.0.2.1:1000", &one.bind(B, ms(0))));
        assert_eq!(one.ack(B, &c[0].2).status, StatusCode::CONFLICT);
    }

    #[test]
    fn revocation_removes_bindings_and_refuses_binds() {
        let mut f = Fixture::new(settings());
        let ab = Pair::new([1; 16], WALL.0 + 3600);
        let bc = Pair::minted(relay_key(), [2; 16], B, C, WALL.0 + 3600);
        acks(f.at(0.0, 0, "192.0.2.1:1000", &ab.bind(A, ms(0))));
        acks(f.at(0.0, 0, "192.0.2.2:2000", &ab.bind(B, ms(0))));
        acks(f.at(0.0, 0, "192.0.2.2:2001", &bc.bind(B, ms(0))));
        acks(f.at(0.0, 0, "192.0.2.3:3000", &bc.bind(C, ms(0))));
        assert_eq!(f.table.len(), 2);
        f.revoked.extend([A]);
        f.table.revoke(&A, WALL);
        assert_eq!(f.table.len(), 1);
        let r = acks(f.at(1.0, 0, "192.0.2.2:2000", &ab.bind(B, ms(1))));
        assert_eq!(ab.ack(B, &r[0].2).status, StatusCode::REVOKED);
        assert_eq!(f.table.len(), 1);
        f.revoked.extend([C]);
        f.table.revoke_all(&f.revoked.clone(), WALL);
        assert_eq!(f.table.len(), 0);
        assert_eq!(f.binds("revoked"), 1);
    }
}
