//! The Node Management Service (NMS): who is online where, and how two nodes reach
//! each other.
//!
//! One task owns all state. It serves the node channels of
//! `cyphonic_proto::channel::ChannelServer` (credential hellos only: a node must have
//! logged in at the AS first) and handles, per authenticated request:
//!
//! - `RegistrationRequest`: the credential in the body must be the channel's (same node
//!   id and static key; a renewed one is verified) or the answer is
//!   FALSIFICATION_DETECTED. Records the presence: real endpoints from the body,
//!   observed endpoint = the datagram source, per address family;
//! - `KeepAlive` / `AddressUpdate`: refresh the presence (and the observed endpoint: NAT
//!   rebinding), or replace the endpoints after a move. From a node that is not
//!   registered (it expired, or the NMS restarted) they get `Status OFFLINE`: register
//!   again;
//! - `DirectionRequest`: policy, target lookup (registered: go on; known to the store
//!   but not registered: OFFLINE; unknown: NOT_FOUND; the node itself or not registered
//!   itself: FORBIDDEN), path plan ([`plan`]), relay offer and ticket, push
//!   `RouteDirectionToResponder`, wait for `RouteDirectionConfirmation`, then answer
//!   `RouteDirectionToInitiator` — or OFFLINE when the responder stays silent for
//!   `confirm_timeout_ms`, or the responder's refusal status;
//! - `DirectionRequestByAddress`: the node whose credential carries that virtual
//!   address, among the registered ones, is asked for as if by its name (same checks,
//!   plan and answers). Only registered nodes are indexed by address, so an address of
//!   an offline device and an address nobody has both get NOT_FOUND;
//! - `FinalizationRequest`: presence removed, answered, channel closed shortly after
//!   (a retransmitted finalization within two seconds still gets its answer).
//!
//! Every other inner message is answered with `Status` (unknown type:
//! UNSUPPORTED_VERSION; unparsable or not an NMS request: MALFORMED) or, for messages
//! that are themselves answers, dropped; all of them are counted. Revoked nodes are cut
//! off at once: their hellos are refused, their presence dropped and channels closed
//! when the revocation arrives, and any request on a leftover channel closes it.
//!
//! Pushes use request ids with the top bit set (nodes keep it clear). A confirmation
//! whose request id has the top bit clear was sent by the node as a request of its own
//! and is answered with `Status SUCCESS`; one that echoes the push id (as
//! `docs/protocol.md` specifies) is not answered.

mod direction;
pub mod plan;
mod presence;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_support;

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant, SystemTime};

use cyphonic_proto::channel::{
    ChannelHandle, ChannelServer, DropReason, MAX_DATAGRAM_LEN, MAX_INNER_LEN, PeerIdentity,
    PurposeKind, ServerConfig, ServerEvent, Service,
};
use cyphonic_proto::credential::CredentialError;
use cyphonic_proto::relay::{bind_key, mint_ticket};
use cyphonic_proto::time::UnixTime;
use cyphonic_proto::wire::signal::{
    PathPlan, PeerRoute, RegistrationRequest, RegistrationResponse, RelayOffer, SignalMessage,
    SignalPacket, SignalRepr, StatusReport,
};
use cyphonic_proto::wire::status::StatusCode;
use cyphonic_proto::wire::{Fqdn, MessageType, NodeId, WireError, classify};
use rand_core::{OsRng, RngCore};
use tokio::io::ReadBuf;
use tokio::net::UdpSocket;
use tokio::sync::broadcast;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use zeroize::{Zeroize, Zeroizing};

use crate::config::{self, PolicyAction};
use crate::context::CloudContext;
use crate::metrics::{Counter, Gauge, Metrics};
use crate::net;
use crate::store::StoreError;
use direction::{Busy, Directions, Due, KnownNames, NewPending, RelaySite, RequestKey, Target};
use presence::{Presence, Presences, Registration};

/// Why the NMS could not start.
#[derive(Debug, thiserror::Error)]
pub enum NmsError {
    #[error(
        "the NMS needs the cloud signing key (its channel key), but this process has only the relay key"
    )]
    NoSigningKey,
    #[error("the NMS needs at least one socket")]
    NoSockets,
    #[error("the NMS serves at most {MAX_SOCKETS} sockets, got {0}")]
    TooManySockets(usize),
    #[error("reading a socket's local address: {0}")]
    Io(#[from] io::Error),
}

/// Serves the NMS on `sockets` until `shutdown` is cancelled.
pub async fn run(
    ctx: Arc<CloudContext>,
    sockets: Vec<Arc<UdpSocket>>,
    shutdown: CancellationToken,
) -> Result<(), NmsError> {
    let mut nms = Nms::new(ctx, sockets)?;
    tracing::info!(
        sockets = ?nms.tx.local,
        relays = nms.relays.len(),
        "NMS serving"
    );
    nms.serve(shutdown).await;
    tracing::info!(nodes = nms.presences.len(), "NMS stopped");
    Ok(())
}

/// Socket indices are stored in a byte per node.
const MAX_SOCKETS: usize = 256;
/// Registered nodes at most; beyond, registrations get UNAVAILABLE.
const MAX_NODES: usize = 250_000;
/// Channels at most: a node has two for a while when it re-handshakes.
const MAX_CHANNELS: usize = 2 * MAX_NODES;
/// Node keys whose last hello timestamp the channel server remembers.
const HELLO_MEMORY: usize = MAX_NODES;
/// Above this many hellos a second, hellos must carry a cookie (a round trip that
/// proves the source address) before they cost Diffie-Hellman operations.
const HELLO_LOAD_PER_SEC: u32 = 2_000;
/// Store lookups (names that are not registered) running at once.
const MAX_LOOKUPS: usize = 64;
/// Datagrams read from one socket in a row before timers and other sockets get a turn.
const RECV_BATCH: usize = 64;
/// How long a finalized channel stays open to answer a retransmitted finalization.
const FINALIZE_GRACE: Duration = Duration::from_secs(2);
/// Larger than any datagram of the protocol, so oversized ones arrive whole and are
/// dropped as malformed rather than truncated into something else.
const RECV_BUFFER_LEN: usize = 4096;
/// Top bit of request ids the NMS picks for pushes.
const CLOUD_REQUEST_BIT: u32 = 0x8000_0000;

/// The NMS's whole state, owned by its one task.
struct Nms {
    ctx: Arc<CloudContext>,
    server: ChannelServer,
    tx: Transmitter,
    presences: Presences,
    directions: Directions,
    names: KnownNames,
    /// Store lookups running, and whom each answers about which name.
    lookups: JoinSet<Result<bool, StoreError>>,
    lookup_askers: HashMap<tokio::task::Id, (Asker, Fqdn)>,
    relays: Vec<RelaySite>,
    /// Finalized channels, closed after [`FINALIZE_GRACE`] unless the node registered
    /// on them again.
    closing: VecDeque<(Instant, ChannelHandle, NodeId)>,
    metrics: NmsMetrics,
    rng: OsRng,
    hello_window_start: Instant,
    hellos_in_window: u32,
}

/// The authenticated sender of a request.
struct Sender {
    channel: ChannelHandle,
    peer: Arc<PeerIdentity>,
    node: NodeId,
    /// The datagram source, canonical: the node's observed endpoint.
    src: SocketAddr,
    socket: u8,
}

/// How a direction request ended, for `cyphonic_nms_directions_total{result}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Ok,
    NotFound,
    Offline,
    Forbidden,
    Timeout,
    Refused,
    Unavailable,
    RateLimited,
}

impl Outcome {
    const ALL: [Outcome; 8] = [
        Self::Ok,
        Self::NotFound,
        Self::Offline,
        Self::Forbidden,
        Self::Timeout,
        Self::Refused,
        Self::Unavailable,
        Self::RateLimited,
    ];

    fn name(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::NotFound => "not_found",
            Self::Offline => "offline",
            Self::Forbidden => "forbidden",
            Self::Timeout => "timeout",
            Self::Refused => "refused",
            Self::Unavailable => "unavailable",
            Self::RateLimited => "rate_limited",
        }
    }
}

/// Drops the NMS counts on top of the channel server's [`DropReason`]s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NmsDrop {
    /// A registration presenting a credential that is not the channel's.
    Falsification,
    /// A hello or request from a revoked node.
    Revoked,
    /// A channel without a credential (the channel server should never open one).
    WrongPurpose,
    /// An inner message that does not parse.
    BadSignal,
    /// An inner message the NMS does not take (an answer type, or an AS request).
    UnexpectedSignal,
    /// A confirmation for no pending direction (late, duplicate, or not the
    /// responder's).
    StaleConfirmation,
}

impl NmsDrop {
    const ALL: [NmsDrop; 6] = [
        Self::Falsification,
        Self::Revoked,
        Self::WrongPurpose,
        Self::BadSignal,
        Self::UnexpectedSignal,
        Self::StaleConfirmation,
    ];

    fn name(self) -> &'static str {
        match self {
            Self::Falsification => "falsification",
            Self::Revoked => "revoked",
            Self::WrongPurpose => "wrong_purpose",
            Self::BadSignal => "bad_signal",
            Self::UnexpectedSignal => "unexpected_signal",
            Self::StaleConfirmation => "stale_confirmation",
        }
    }
}

/// The NMS's counters, registered once.
struct NmsMetrics {
    registrations: Counter,
    keepalives: Counter,
    address_updates: Counter,
    expired: Counter,
    nodes: Gauge,
    directions: Vec<Counter>,
    channel_drops: Vec<Counter>,
    nms_drops: Vec<Counter>,
    recv_errors: Counter,
}

impl NmsMetrics {
    fn new(m: &Metrics) -> Self {
        const DROPPED: &str = "cyphonic_nms_dropped_total";
        const DROPPED_HELP: &str = "Datagrams and requests the NMS dropped or refused, by reason";
        Self {
            registrations: m.counter(
                "cyphonic_nms_registrations_total",
                &[],
                "Registration requests accepted (a retransmitted one counts again)",
            ),
            keepalives: m.counter(
                "cyphonic_nms_keepalives_total",
                &[],
                "Keepalives answered (a retransmitted one counts again)",
            ),
            address_updates: m.counter(
                "cyphonic_nms_address_updates_total",
                &[],
                "Address updates (node moves) accepted",
            ),
            expired: m.counter(
                "cyphonic_nms_expired_total",
                &[],
                "Presences that expired without keepalives",
            ),
            nodes: m.gauge("cyphonic_nms_nodes", &[], "Registered nodes"),
            directions: Outcome::ALL
                .iter()
                .map(|o| {
                    m.counter(
                        "cyphonic_nms_directions_total",
                        &[("result", o.name())],
                        "Direction requests answered, by result",
                    )
                })
                .collect(),
            channel_drops: DropReason::ALL
                .iter()
                .map(|r| m.counter(DROPPED, &[("reason", r.name())], DROPPED_HELP))
                .collect(),
            nms_drops: NmsDrop::ALL
                .iter()
                .map(|r| m.counter(DROPPED, &[("reason", r.name())], DROPPED_HELP))
                .collect(),
            recv_errors: m.counter(
                "cyphonic_nms_recv_errors_total",
                &[],
                "Socket receive errors",
            ),
        }
    }

    fn direction(&self, outcome: Outcome) {
        self.directions[outcome as usize].inc();
    }

    fn channel_drop(&self, reason: DropReason) {
        self.channel_drops[reason as usize].inc();
    }

    fn drop(&self, reason: NmsDrop) {
        self.nms_drops[reason as usize].inc();
    }
}

/// The sockets and the buffers datagrams are sealed and sent from.
struct Transmitter {
    sockets: Vec<Arc<UdpSocket>>,
    local: Vec<SocketAddr>,
    /// Sealed datagrams (and accepts, cookie replies) are written here.
    out: Box<[u8]>,
    /// Inner messages are encoded here before sealing.
    scratch: Box<[u8]>,
    send_errors: Counter,
}

impl Transmitter {
    /// Sends `out[..len]` to `to`, through socket `hint` when it can reach `to`.
    fn send_out(&self, hint: usize, to: SocketAddr, len: usize) {
        let reachable = |i: usize| net::can_reach(self.local[i], to);
        let Some(i) = (hint < self.sockets.len() && reachable(hint))
            .then_some(hint)
            .or_else(|| (0..self.sockets.len()).find(|i| reachable(*i)))
        else {
            self.send_errors.inc();
            tracing::debug!(%to, "no NMS socket can reach this address");
            return;
        };
        // A full socket buffer drops the datagram like the network would; nodes
        // retransmit.
        if let Err(e) =
            self.sockets[i].try_send_to(&self.out[..len], net::for_socket(to, self.local[i]))
        {
            self.send_errors.inc();
            tracing::debug!(%to, error = %e, "NMS send failed");
        }
    }

    /// Seals an encoded inner message on `channel` and sends it to the node.
    fn seal(
        &mut self,
        server: &mut ChannelServer,
        now: Instant,
        channel: ChannelHandle,
        hint: u8,
        inner: &[u8],
    ) {
        match server.seal_to(now, channel, inner, &mut self.out) {
            Ok((len, addr)) => self.send_out(usize::from(hint), net::canonical(addr), len),
            Err(e) => tracing::debug!(error = %e, "cannot seal to the node's channel"),
        }
    }

    /// Encodes `repr`, seals it on `channel` and sends it.
    fn send(
        &mut self,
        server: &mut ChannelServer,
        now: Instant,
        channel: ChannelHandle,
        hint: u8,
        repr: &SignalRepr,
    ) {
        let len = match repr.emit(&mut self.scratch) {
            Ok(len) => len,
            Err(e) => {
                tracing::error!(error = %e, kind = ?repr.message.signal_type(), "cannot encode an NMS message");
                return;
            }
        };
        match server.seal_to(now, channel, &self.scratch[..len], &mut self.out) {
            Ok((out_len, addr)) => self.send_out(usize::from(hint), net::canonical(addr), out_len),
            Err(e) => tracing::debug!(error = %e, "cannot seal to the node's channel"),
        }
        self.scratch[..len].zeroize();
    }
}

enum Wake {
    Datagram(usize, io::Result<(SocketAddr, usize)>),
    Revoked(Result<NodeId, broadcast::error::RecvError>),
    Lookup(Result<(tokio::task::Id, Result<bool, StoreError>), tokio::task::JoinError>),
    Timer,
}

impl Nms {
    fn new(ctx: Arc<CloudContext>, sockets: Vec<Arc<UdpSocket>>) -> Result<Self, NmsError> {
        let signing = ctx.keys.signing.as_ref().ok_or(NmsError::NoSigningKey)?;
        if sockets.is_empty() {
            return Err(NmsError::NoSockets);
        }
        if sockets.len() > MAX_SOCKETS {
            return Err(NmsError::TooManySockets(sockets.len()));
        }
        let local = sockets
            .iter()
            .map(|s| s.local_addr())
            .collect::<Result<Vec<_>, _>>()?;
        let mut server_config = ServerConfig::new(Service::NodeManagement);
        server_config.accept_login = false;
        server_config.accept_credential = true;
        server_config.max_channels = MAX_CHANNELS;
        server_config.hello_memory = HELLO_MEMORY;
        let server = ChannelServer::new(signing, ctx.keys.trusted.clone(), server_config);
        let nms_config = &ctx.config.services.nms;
        let now = Instant::now();
        let metrics = NmsMetrics::new(&ctx.metrics);
        let send_errors = ctx.metrics.counter(
            "cyphonic_nms_send_errors_total",
            &[],
            "Datagrams the NMS could not send",
        );
        Ok(Self {
            server,
            tx: Transmitter {
                sockets,
                local,
                out: vec![0u8; MAX_DATAGRAM_LEN].into_boxed_slice(),
                scratch: vec![0u8; MAX_INNER_LEN].into_boxed_slice(),
                send_errors,
            },
            presences: Presences::new(
                now,
                Duration::from_secs(u64::from(nms_config.presence_ttl_secs)),
            ),
            directions: Directions::new(Duration::from_millis(u64::from(
                nms_config.confirm_timeout_ms,
            ))),
            names: KnownNames::default(),
            lookups: JoinSet::new(),
            lookup_askers: HashMap::new(),
            relays: direction::relay_sites(&ctx.config),
            closing: VecDeque::new(),
            metrics,
            rng: OsRng,
            hello_window_start: now,
            hellos_in_window: 0,
            ctx,
        })
    }

    async fn serve(&mut self, shutdown: CancellationToken) {
        let mut revocations = Some(self.ctx.revoked.subscribe());
        let mut buf = vec![0u8; RECV_BUFFER_LEN];
        let mut next_socket = 0usize;
        loop {
            let deadline = self.next_deadline();
            let wake = tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                r = next_revocation(&mut revocations) => Wake::Revoked(r),
                Some(done) = self.lookups.join_next_with_id(), if !self.lookups.is_empty() => {
                    Wake::Lookup(done)
                }
                () = sleep_until(deadline) => Wake::Timer,
                (i, r) = recv_any(&self.tx.sockets, &mut buf, &mut next_socket) => {
                    Wake::Datagram(i, r)
                }
            };
            match wake {
                Wake::Datagram(i, Ok((src, len))) => {
                    self.on_datagram(Instant::now(), i, src, &mut buf[..len]);
                    for _ in 0..RECV_BATCH {
                        match self.tx.sockets[i].try_recv_from(&mut buf) {
                            Ok((len, src)) => {
                                self.on_datagram(Instant::now(), i, src, &mut buf[..len]);
                            }
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                            Err(e) => {
                                self.recv_error(&e);
                                break;
                            }
                        }
                    }
                }
                Wake::Datagram(_, Err(e)) => self.recv_error(&e),
                Wake::Revoked(Ok(node)) => self.on_revoked(Instant::now(), node),
                Wake::Revoked(Err(broadcast::error::RecvError::Lagged(missed))) => {
                    tracing::warn!(missed, "NMS missed revocation events; rescanning");
                    self.rescan_revoked(Instant::now());
                }
                Wake::Revoked(Err(broadcast::error::RecvError::Closed)) => revocations = None,
                Wake::Lookup(Ok((id, Ok(known)))) => {
                    self.on_lookup(Instant::now(), id, Some(known));
                }
                Wake::Lookup(Ok((id, Err(e)))) => {
                    tracing::warn!(error = %e, "NMS store lookup failed");
                    self.on_lookup(Instant::now(), id, None);
                }
                Wake::Lookup(Err(e)) => {
                    tracing::error!(error = %e, "NMS store lookup task failed");
                    self.on_lookup(Instant::now(), e.id(), None);
                }
                Wake::Timer => {}
            }
            self.run_timers(Instant::now());
        }
        self.lookups.abort_all();
    }

    fn next_deadline(&self) -> Option<Instant> {
        [
            self.server.poll_timeout(),
            self.presences.next_expiry(),
            self.directions.next_timer(),
            self.closing.front().map(|c| c.0),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    fn recv_error(&self, e: &io::Error) {
        self.metrics.recv_errors.inc();
        tracing::debug!(error = %e, "NMS receive error");
    }

    fn run_timers(&mut self, now: Instant) {
        if self.server.poll_timeout().is_some_and(|at| at <= now) {
            self.server.handle_timeout(now);
        }
        if self.presences.next_expiry().is_some_and(|at| at <= now) {
            let expired = &self.metrics.expired;
            self.presences.expire(now, |node, _| {
                expired.inc();
                tracing::debug!(%node, "presence expired");
            });
            self.metrics.nodes.set(self.presences.len() as i64);
        }
        while let Some(due) = self.directions.poll_due(now) {
            match due {
                Due::Retransmit(id) => {
                    if let Some(p) = self.directions.get(&id) {
                        let channel = self
                            .server
                            .channel_for(&p.responder_key)
                            .unwrap_or(p.responder_channel);
                        self.tx
                            .seal(&mut self.server, now, channel, p.responder_socket, &p.push);
                    }
                }
                Due::TimedOut(p) => {
                    tracing::debug!(initiator = %p.initiator, responder = %p.responder, "direction not confirmed in time");
                    self.answer_direction(
                        now,
                        &p,
                        StatusCode::OFFLINE,
                        "the peer did not answer",
                        Outcome::Timeout,
                    );
                }
            }
        }
        while let Some(&(at, channel, node)) = self.closing.front() {
            if at > now {
                break;
            }
            self.closing.pop_front();
            let reused = self
                .presences
                .get(&node)
                .is_some_and(|p| p.channel == channel);
            if !reused {
                self.server.close(channel);
            }
        }
    }

    fn on_datagram(&mut self, now: Instant, socket: usize, src: SocketAddr, datagram: &mut [u8]) {
        let src = net::canonical(src);
        if matches!(classify(datagram), Ok(MessageType::ChannelHello)) {
            self.meter_hello(now);
        }
        let event = match self.server.handle_datagram(
            now,
            unix_now(),
            src,
            datagram,
            &mut self.rng,
            &mut self.tx.out,
        ) {
            Ok(event) => event,
            Err(e) => {
                tracing::error!(error = %e, "NMS output buffer too small");
                return;
            }
        };
        match event {
            ServerEvent::Accept { channel, peer, len } => {
                self.on_accept(socket, src, channel, &peer, len);
            }
            ServerEvent::CookieReply { len } => self.tx.send_out(socket, src, len),
            ServerEvent::Request {
                channel,
                peer,
                src,
                inner,
            } => {
                let Some(node) = credential_node(&peer) else {
                    self.server.close(channel);
                    self.metrics.drop(NmsDrop::WrongPurpose);
                    return;
                };
                let sender = Sender {
                    channel,
                    peer,
                    node,
                    src: net::canonical(src),
                    socket: u8::try_from(socket).unwrap_or(u8::MAX),
                };
                self.on_request(now, &sender, &datagram[inner]);
            }
            ServerEvent::Dropped(reason) => {
                self.metrics.channel_drop(reason);
                tracing::trace!(%src, %reason, "NMS dropped a datagram");
            }
        }
    }

    /// Counts hellos per second; past the limit, hellos need a cookie for the rest of
    /// this second and the next.
    fn meter_hello(&mut self, now: Instant) {
        if now.saturating_duration_since(self.hello_window_start) >= Duration::from_secs(1) {
            let was_busy = self.hellos_in_window > HELLO_LOAD_PER_SEC;
            self.server.set_under_load(was_busy);
            self.hello_window_start = now;
            self.hellos_in_window = 0;
        }
        self.hellos_in_window = self.hellos_in_window.saturating_add(1);
        if self.hellos_in_window == HELLO_LOAD_PER_SEC + 1 {
            tracing::info!("NMS under hello load: asking for cookies");
            self.server.set_under_load(true);
        }
    }

    fn on_accept(
        &mut self,
        socket: usize,
        src: SocketAddr,
        channel: ChannelHandle,
        peer: &Arc<PeerIdentity>,
        len: usize,
    ) {
        let Some(node) = credential_node(peer) else {
            self.server.close(channel);
            self.metrics.drop(NmsDrop::WrongPurpose);
            return;
        };
        if self.ctx.revoked.contains(&node) {
            // No accept: the node learns nothing and its handshake times out.
            self.server.close(channel);
            self.metrics.drop(NmsDrop::Revoked);
            tracing::debug!(%node, "hello from a revoked node refused");
            return;
        }
        self.tx.send_out(socket, src, len);
        tracing::trace!(%node, %src, "NMS channel opened");
    }

    fn on_request(&mut self, now: Instant, from: &Sender, inner: &[u8]) {
        if self.ctx.revoked.contains(&from.node) {
            self.metrics.drop(NmsDrop::Revoked);
            self.cut_off(now, from.node, Some(&from.peer.static_public));
            return;
        }
        let Ok(packet) = SignalPacket::new_checked(inner) else {
            // Too short to carry a request id: nothing to answer to.
            self.metrics.drop(NmsDrop::BadSignal);
            return;
        };
        let request_id = packet.request_id();
        let repr = match SignalRepr::parse(&packet) {
            Ok(repr) => repr,
            Err(e) => {
                self.metrics.drop(NmsDrop::BadSignal);
                let (status, text) = match e {
                    WireError::UnknownType(_) => {
                        (StatusCode::UNSUPPORTED_VERSION, "unknown signal type")
                    }
                    _ => (StatusCode::MALFORMED, "malformed request"),
                };
                self.reply_status(now, from, request_id, status, 0, text);
                return;
            }
        };
        let registered = self
            .presences
            .get(&from.node)
            .is_some_and(|p| p.static_public() == &from.peer.static_public);
        if registered {
            self.presences.adopt_identity(&from.node, &from.peer);
            self.presences
                .touch(now, &from.node, from.src, from.channel, from.socket);
        }
        match repr.message {
            SignalMessage::RegistrationRequest(req) => {
                self.on_registration(now, from, request_id, req)
            }
            SignalMessage::KeepAlive { sequence } => {
                if !registered {
                    return self.not_registered(now, from, request_id);
                }
                self.metrics.keepalives.inc();
                self.reply(
                    now,
                    from,
                    request_id,
                    SignalMessage::KeepAliveAck {
                        sequence,
                        observed: from.src,
                    },
                );
            }
            SignalMessage::AddressUpdate { endpoints } => {
                if !registered {
                    return self.not_registered(now, from, request_id);
                }
                self.presences
                    .move_to(now, &from.node, &endpoints, from.src);
                self.metrics.address_updates.inc();
                self.reply(
                    now,
                    from,
                    request_id,
                    SignalMessage::AddressUpdateAck {
                        observed: Some(from.src),
                    },
                );
            }
            SignalMessage::DirectionRequest { target } => {
                self.on_direction_request(now, from, request_id, registered, Target::Name(target));
            }
            SignalMessage::DirectionRequestByAddress { target } => {
                self.on_direction_request(
                    now,
                    from,
                    request_id,
                    registered,
                    Target::Address(target),
                );
            }
            SignalMessage::RouteDirectionConfirmation {
                direction_id,
                status,
            } => self.on_confirmation(now, from, request_id, direction_id, status),
            SignalMessage::FinalizationRequest => {
                if registered {
                    self.presences.remove(&from.node);
                    self.metrics.nodes.set(self.presences.len() as i64);
                    self.release_directions(now, &from.node);
                    tracing::debug!(node = %from.node, "node finalized");
                }
                self.reply(now, from, request_id, SignalMessage::FinalizationResponse);
                if !self.closing.iter().any(|c| c.1 == from.channel) {
                    self.closing
                        .push_back((now + FINALIZE_GRACE, from.channel, from.node));
                }
            }
            SignalMessage::LoginRequest(_) | SignalMessage::RenewRequest => {
                self.metrics.drop(NmsDrop::UnexpectedSignal);
                self.reply_status(
                    now,
                    from,
                    request_id,
                    StatusCode::MALFORMED,
                    0,
                    "not a request for the NMS; log in at the AS",
                );
            }
            // Answers (and pushes) travel the other way; answering them could loop.
            SignalMessage::LoginResponse(_)
            | SignalMessage::RegistrationResponse(_)
            | SignalMessage::KeepAliveAck { .. }
            | SignalMessage::AddressUpdateAck { .. }
            | SignalMessage::RouteDirectionToResponder { .. }
            | SignalMessage::RouteDirectionToInitiator { .. }
            | SignalMessage::FinalizationResponse
            | SignalMessage::Status(_) => self.metrics.drop(NmsDrop::UnexpectedSignal),
        }
    }

    fn on_registration(
        &mut self,
        now: Instant,
        from: &Sender,
        request_id: u32,
        req: RegistrationRequest,
    ) {
        let Some(channel_credential) = from.peer.credential.as_ref() else {
            return;
        };
        let identity = if req.credential.as_bytes() == channel_credential.as_bytes() {
            Arc::clone(&from.peer)
        } else {
            let claimed = req.credential.credential();
            if claimed.node_id != from.node || claimed.static_public != from.peer.static_public {
                self.metrics.drop(NmsDrop::Falsification);
                tracing::info!(node = %from.node, claimed = %claimed.node_id, "registration with another node's credential");
                return self.reply_status(
                    now,
                    from,
                    request_id,
                    StatusCode::FALSIFICATION_DETECTED,
                    0,
                    "the credential is not the one this channel was opened with",
                );
            }
            // A renewed credential for the same node and key: verify it like a hello.
            match req.credential.verify(&self.ctx.keys.trusted, unix_now()) {
                Ok(_) => Arc::new(PeerIdentity {
                    static_public: from.peer.static_public,
                    purpose: PurposeKind::Credential,
                    credential: Some(req.credential),
                }),
                Err(CredentialError::Expired(_) | CredentialError::NotYetValid(_)) => {
                    return self.reply_status(
                        now,
                        from,
                        request_id,
                        StatusCode::EXPIRED,
                        0,
                        "the credential is outside its validity window",
                    );
                }
                Err(_) => {
                    self.metrics.drop(NmsDrop::Falsification);
                    return self.reply_status(
                        now,
                        from,
                        request_id,
                        StatusCode::FALSIFICATION_DETECTED,
                        0,
                        "the credential does not verify",
                    );
                }
            }
        };
        if !self.presences.contains(&from.node) && self.presences.len() >= MAX_NODES {
            return self.reply_status(
                now,
                from,
                request_id,
                StatusCode::UNAVAILABLE,
                60,
                "the NMS is full",
            );
        }
        let displaced = self.presences.register(
            now,
            Registration {
                peer: identity,
                endpoints: &req.endpoints,
                observed: from.src,
                channel: from.channel,
                socket: from.socket,
            },
        );
        if let Some(other) = displaced {
            tracing::info!(node = %from.node, displaced = %other, "name moved to a newer node");
            self.release_directions(now, &other);
        }
        self.metrics.registrations.inc();
        self.metrics.nodes.set(self.presences.len() as i64);
        tracing::debug!(node = %from.node, src = %from.src, "node registered");
        let nms = &self.ctx.config.services.nms;
        let response = RegistrationResponse {
            observed: Some(from.src),
            keepalive_secs: nms.keepalive_secs,
            presence_ttl_secs: nms.presence_ttl_secs,
        };
        self.reply(
            now,
            from,
            request_id,
            SignalMessage::RegistrationResponse(response),
        );
    }

    fn not_registered(&mut self, now: Instant, from: &Sender, request_id: u32) {
        self.reply_status(
            now,
            from,
            request_id,
            StatusCode::OFFLINE,
            0,
            "not registered: send a RegistrationRequest",
        );
    }

    fn on_direction_request(
        &mut self,
        now: Instant,
        from: &Sender,
        request_id: u32,
        registered: bool,
        target: Target,
    ) {
        let key = (from.node, request_id);
        let generation = self
            .presences
            .get(&from.node)
            .filter(|_| registered)
            .map_or(0, Presence::generation);
        if let Some(reply) = self.directions.cached(now, &key, &target, generation) {
            self.tx
                .seal(&mut self.server, now, from.channel, from.socket, reply);
            return;
        }
        if self.directions.is_in_flight(&key) {
            tracing::trace!(node = %from.node, request_id, "direction request retransmitted while pending");
            return;
        }
        let to = Asker {
            key,
            target,
            generation,
            initiator_key: from.peer.static_public,
            channel: from.channel,
            socket: from.socket,
        };
        let Some(initiator) = self.presences.get(&from.node).filter(|_| registered) else {
            return self.finish(
                now,
                to,
                StatusCode::FORBIDDEN,
                "register before asking for directions",
                Outcome::Forbidden,
            );
        };
        let own = initiator.fqdn().clone();
        let (name, responder) = match &to.target {
            Target::Name(name) => (name.clone(), None),
            Target::Address(ip) => {
                let Some((node, name)) = self.presences.node_by_address(*ip).and_then(|node| {
                    let p = self.presences.get(&node)?;
                    Some((node, p.fqdn().clone()))
                }) else {
                    return self.finish(
                        now,
                        to,
                        StatusCode::NOT_FOUND,
                        "no online node has this address",
                        Outcome::NotFound,
                    );
                };
                (name, Some(node))
            }
        };
        if own == name {
            return self.finish(
                now,
                to,
                StatusCode::FORBIDDEN,
                "a node cannot open a direction to itself",
                Outcome::Forbidden,
            );
        }
        if !policy_allows(&self.ctx.config.policy, &own, &name) {
            tracing::debug!(from = %own, to = %name, "direction denied by policy");
            return self.finish(
                now,
                to,
                StatusCode::FORBIDDEN,
                "policy does not allow this direction",
                Outcome::Forbidden,
            );
        }
        if let Some(responder) = responder.or_else(|| self.presences.node_by_fqdn(&name)) {
            return self.start_direction(now, to, responder);
        }
        match self.names.get(&name, now) {
            Some(true) => self.finish(
                now,
                to,
                StatusCode::OFFLINE,
                "the node is not online",
                Outcome::Offline,
            ),
            Some(false) => self.finish(
                now,
                to,
                StatusCode::NOT_FOUND,
                "no such name",
                Outcome::NotFound,
            ),
            None if self.lookups.len() >= MAX_LOOKUPS => self.finish(
                now,
                to,
                StatusCode::UNAVAILABLE,
                "too many lookups; retry",
                Outcome::Unavailable,
            ),
            None => {
                self.directions.begin_lookup(to.key);
                let store = Arc::clone(&self.ctx.store);
                let lookup = name.clone();
                let task = self.lookups.spawn(async move {
                    store
                        .device_by_fqdn(&lookup)
                        .await
                        .map(|device| device.is_some())
                });
                self.lookup_askers.insert(task.id(), (to, name));
            }
        }
    }

    /// A store lookup ended: the name is known, unknown, or (`None`) the store failed.
    fn on_lookup(&mut self, now: Instant, task: tokio::task::Id, known: Option<bool>) {
        let Some((to, name)) = self.lookup_askers.remove(&task) else {
            return;
        };
        if !self.presences.contains(&to.key.0) {
            // The initiator left (finalized, expired, revoked) while we looked.
            self.directions.abandon(&to.key);
            return;
        }
        match known {
            Some(known) => {
                // It may have registered while the store answered.
                let responder = self.presences.node_by_fqdn(&name);
                self.names.insert(name, known, now);
                if let Some(responder) = responder {
                    self.start_direction(now, to, responder);
                } else if known {
                    self.finish(
                        now,
                        to,
                        StatusCode::OFFLINE,
                        "the node is not online",
                        Outcome::Offline,
                    );
                } else {
                    self.finish(
                        now,
                        to,
                        StatusCode::NOT_FOUND,
                        "no such name",
                        Outcome::NotFound,
                    );
                }
            }
            None => {
                self.finish(
                    now,
                    to,
                    StatusCode::UNAVAILABLE,
                    "lookup failed; retry",
                    Outcome::Unavailable,
                );
            }
        }
    }

    /// Everything checks out so far: plan the route, push it to the responder, and wait
    /// for its confirmation.
    fn start_direction(&mut self, now: Instant, to: Asker, responder: NodeId) {
        match self.prepare_direction(now, &to, responder) {
            Ok((direction_id, pending)) => {
                let channel = pending.responder_channel;
                self.tx.seal(
                    &mut self.server,
                    now,
                    channel,
                    pending.responder_socket,
                    &pending.push,
                );
                self.directions.insert(now, direction_id, pending);
            }
            Err((status, text, outcome)) => self.finish(now, to, status, text, outcome),
        }
    }

    #[allow(clippy::type_complexity)]
    fn prepare_direction(
        &mut self,
        now: Instant,
        to: &Asker,
        responder: NodeId,
    ) -> Result<([u8; 16], NewPending), (StatusCode, &'static str, Outcome)> {
        const OFFLINE: (StatusCode, &str, Outcome) = (
            StatusCode::OFFLINE,
            "the node is not online",
            Outcome::Offline,
        );
        let (Some(a), Some(b)) = (
            self.presences.get(&to.key.0),
            self.presences.get(&responder),
        ) else {
            return Err(OFFLINE);
        };
        let unix = unix_now();
        if b.credential().credential().not_after < unix {
            return Err(OFFLINE);
        }
        let Some(responder_channel) = self.server.channel_for(b.static_public()) else {
            return Err(OFFLINE);
        };
        match self.directions.check_capacity(&to.key.0) {
            Ok(()) => {}
            Err(Busy::Initiator) => {
                return Err((
                    StatusCode::RATE_LIMITED,
                    "too many directions pending",
                    Outcome::RateLimited,
                ));
            }
            Err(Busy::Service) => {
                return Err((
                    StatusCode::UNAVAILABLE,
                    "the NMS is busy; retry",
                    Outcome::Unavailable,
                ));
            }
        }
        let tick = self.presences.tick(now);
        let ttl = self.presences.ttl();
        let (real_a, real_b) = (a.real(), b.real());
        let (ra, rb) = (
            a.reachability(&real_a, tick, ttl),
            b.reachability(&real_b, tick, ttl),
        );
        let plan = plan::plan(&ra, &rb);
        let site = direction::pick_site(&self.relays, ra.families(), rb.families());
        if plan == PathPlan::Relay && site.is_none() {
            return Err((
                StatusCode::UNAVAILABLE,
                "the nodes share no address family and no relay can join them",
                Outcome::Unavailable,
            ));
        }
        let mut direction_id = [0u8; 16];
        self.rng.fill_bytes(&mut direction_id);
        let mut punch_key = Zeroizing::new([0u8; 32]);
        self.rng.fill_bytes(&mut *punch_key);
        let (a_node, b_node) = (to.key.0, responder);
        let (offer_a, offer_b) = match site {
            Some(site) => {
                let mut ticket_id = [0u8; 16];
                self.rng.fill_bytes(&mut ticket_id);
                let lifetime = Duration::from_secs(u64::from(
                    self.ctx.config.credentials.ticket_lifetime_secs,
                ));
                let relay_key = &self.ctx.keys.relay;
                let ticket = mint_ticket(
                    relay_key,
                    ticket_id,
                    a_node,
                    b_node,
                    unix.saturating_add(lifetime),
                );
                let offer = |node: &NodeId| RelayOffer {
                    trs_name: site.name.clone(),
                    trs_endpoints: site.endpoints.clone(),
                    ticket,
                    bind_key: bind_key(relay_key, &ticket, node),
                };
                (Some(offer(&a_node)), Some(offer(&b_node)))
            }
            None => (None, None),
        };
        let route = |p: &Presence, real: &[SocketAddr], relay: Option<RelayOffer>| PeerRoute {
            credential: p.credential().clone(),
            real: real.to_vec(),
            observed: p.observed(tick, ttl),
            plan,
            punch_key: punch_key.clone(),
            relay,
        };
        let to_responder = route(a, &real_a, offer_b);
        let to_initiator = route(b, &real_b, offer_a);
        let (responder_key, responder_socket) = (*b.static_public(), b.socket);
        let push_id = self.directions.next_push_id();
        let encoded = encode_route(push_id, direction_id, to_responder, true).zip(encode_route(
            to.key.1,
            direction_id,
            to_initiator,
            false,
        ));
        let Some((push, reply)) = encoded else {
            tracing::error!("a route does not fit in a signal");
            return Err((
                StatusCode::INTERNAL,
                "the route does not fit in a message",
                Outcome::Unavailable,
            ));
        };
        tracing::debug!(initiator = %a_node, responder = %b_node, ?plan, relay = site.is_some(), "direction pushed");
        Ok((
            direction_id,
            NewPending {
                initiator: a_node,
                request_id: to.key.1,
                initiator_key: to.initiator_key,
                initiator_channel: to.channel,
                initiator_socket: to.socket,
                target: to.target.clone(),
                generation: to.generation,
                responder,
                responder_key,
                responder_channel,
                responder_socket,
                push,
                reply,
            },
        ))
    }

    fn on_confirmation(
        &mut self,
        now: Instant,
        from: &Sender,
        request_id: u32,
        direction_id: [u8; 16],
        status: StatusCode,
    ) {
        if request_id & CLOUD_REQUEST_BIT == 0 {
            // Sent as a request of the node's own: it waits for an answer.
            self.reply_status(now, from, request_id, StatusCode::SUCCESS, 0, "");
        }
        let Some(p) = self.directions.confirm(&direction_id, &from.node) else {
            self.metrics.drop(NmsDrop::StaleConfirmation);
            return;
        };
        if status.is_success() {
            let channel = self
                .server
                .channel_for(&p.initiator_key)
                .unwrap_or(p.initiator_channel);
            self.tx
                .seal(&mut self.server, now, channel, p.initiator_socket, &p.reply);
            self.metrics.direction(Outcome::Ok);
            self.directions.complete(
                now,
                (p.initiator, p.request_id),
                p.target,
                p.generation,
                p.reply,
            );
        } else {
            tracing::debug!(responder = %from.node, %status, "direction refused");
            self.answer_direction(now, &p, status, "the peer refused", Outcome::Refused);
        }
    }

    /// Answers the initiator of a pending direction with a status.
    fn answer_direction(
        &mut self,
        now: Instant,
        p: &direction::Pending,
        status: StatusCode,
        text: &'static str,
        outcome: Outcome,
    ) {
        let to = Asker {
            key: (p.initiator, p.request_id),
            target: p.target.clone(),
            generation: p.generation,
            initiator_key: p.initiator_key,
            channel: p.initiator_channel,
            socket: p.initiator_socket,
        };
        self.finish(now, to, status, text, outcome);
    }

    /// The final answer to a direction request that is a `Status`: sent, counted and
    /// remembered for retransmissions.
    fn finish(
        &mut self,
        now: Instant,
        to: Asker,
        status: StatusCode,
        text: &'static str,
        outcome: Outcome,
    ) {
        let repr = SignalRepr {
            request_id: to.key.1,
            message: SignalMessage::Status(StatusReport {
                status,
                retry_after_secs: match outcome {
                    Outcome::Unavailable | Outcome::RateLimited => 1,
                    _ => 0,
                },
                message: text.into(),
            }),
        };
        let mut bytes = Zeroizing::new(vec![0u8; repr.buffer_len()]);
        if repr.emit(&mut bytes).is_err() {
            tracing::error!("cannot encode a direction status");
            return;
        }
        let channel = self
            .server
            .channel_for(&to.initiator_key)
            .unwrap_or(to.channel);
        self.tx
            .seal(&mut self.server, now, channel, to.socket, &bytes);
        self.metrics.direction(outcome);
        self.directions
            .complete(now, to.key, to.target, to.generation, bytes);
    }

    /// A node left: directions it was the responder of are answered OFFLINE now, the
    /// ones it started are forgotten.
    fn release_directions(&mut self, now: Instant, node: &NodeId) {
        for p in self.directions.drop_node(node) {
            self.answer_direction(
                now,
                &p,
                StatusCode::OFFLINE,
                "the peer went offline",
                Outcome::Offline,
            );
        }
    }

    fn on_revoked(&mut self, now: Instant, node: NodeId) {
        let key = self.presences.get(&node).map(|p| *p.static_public());
        if key.is_some() {
            self.metrics.drop(NmsDrop::Revoked);
        }
        self.cut_off(now, node, key.as_ref());
    }

    /// Drops a revoked node's presence and every channel of its key.
    fn cut_off(&mut self, now: Instant, node: NodeId, channel_key: Option<&[u8; 32]>) {
        let presence = self.presences.remove(&node);
        if presence.is_some() {
            tracing::info!(%node, "revoked node cut off");
        }
        let keys = [channel_key.copied(), presence.map(|p| *p.static_public())];
        for key in keys.iter().flatten() {
            close_all(&mut self.server, key);
        }
        self.metrics.nodes.set(self.presences.len() as i64);
        self.release_directions(now, &node);
    }

    fn rescan_revoked(&mut self, now: Instant) {
        let revoked = self.ctx.revoked.clone();
        let mut gone = Vec::new();
        let server = &mut self.server;
        self.presences.remove_where(
            |node| revoked.contains(node),
            |node, p| {
                close_all(server, p.static_public());
                gone.push(node);
            },
        );
        for node in gone {
            self.metrics.drop(NmsDrop::Revoked);
            self.release_directions(now, &node);
        }
        self.metrics.nodes.set(self.presences.len() as i64);
    }

    fn reply(&mut self, now: Instant, from: &Sender, request_id: u32, message: SignalMessage) {
        let repr = SignalRepr {
            request_id,
            message,
        };
        self.tx
            .send(&mut self.server, now, from.channel, from.socket, &repr);
    }

    fn reply_status(
        &mut self,
        now: Instant,
        from: &Sender,
        request_id: u32,
        status: StatusCode,
        retry_after_secs: u16,
        text: &str,
    ) {
        self.reply(
            now,
            from,
            request_id,
            SignalMessage::Status(StatusReport {
                status,
                retry_after_secs,
                message: text.into(),
            }),
        );
    }
}

/// Who a direction answer goes to.
struct Asker {
    key: RequestKey,
    /// What the request asked for, as sent.
    target: Target,
    /// The initiator's registration the request came under.
    generation: u16,
    initiator_key: [u8; 32],
    channel: ChannelHandle,
    socket: u8,
}

/// The node id of a channel opened with a credential.
fn credential_node(peer: &PeerIdentity) -> Option<NodeId> {
    match (&peer.credential, peer.purpose) {
        (Some(c), PurposeKind::Credential) => Some(c.credential().node_id),
        _ => None,
    }
}

/// Rules in order, first match decides, `default` otherwise.
fn policy_allows(policy: &config::Policy, from: &Fqdn, to: &Fqdn) -> bool {
    policy
        .rules
        .iter()
        .find(|r| config::pattern_matches(&r.from, from) && config::pattern_matches(&r.to, to))
        .map_or(policy.default, |r| r.action)
        == PolicyAction::Allow
}

/// Encodes a route message, leaving out real endpoints from the end when a very long
/// name would push it past [`MAX_INNER_LEN`].
fn encode_route(
    request_id: u32,
    direction_id: [u8; 16],
    mut route: PeerRoute,
    to_responder: bool,
) -> Option<Zeroizing<Vec<u8>>> {
    loop {
        let peer = Box::new(route);
        let repr = SignalRepr {
            request_id,
            message: if to_responder {
                SignalMessage::RouteDirectionToResponder { direction_id, peer }
            } else {
                SignalMessage::RouteDirectionToInitiator { direction_id, peer }
            },
        };
        let len = repr.buffer_len();
        if len <= MAX_INNER_LEN {
            let mut bytes = Zeroizing::new(vec![0u8; len]);
            return repr.emit(&mut bytes).ok().map(|_| bytes);
        }
        let (SignalMessage::RouteDirectionToResponder { peer, .. }
        | SignalMessage::RouteDirectionToInitiator { peer, .. }) = repr.message
        else {
            return None;
        };
        route = *peer;
        route.real.pop()?;
    }
}

fn close_all(server: &mut ChannelServer, key: &[u8; 32]) {
    // At most two channels per key; the bound only guards against a surprise.
    for _ in 0..4 {
        match server.channel_for(key) {
            Some(channel) => server.close(channel),
            None => break,
        }
    }
}

fn unix_now() -> UnixTime {
    UnixTime::from_system_time(SystemTime::now())
}

async fn next_revocation(
    receiver: &mut Option<broadcast::Receiver<NodeId>>,
) -> Result<NodeId, broadcast::error::RecvError> {
    match receiver {
        Some(r) => r.recv().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// The next datagram on any socket, into `buf`, trying sockets round-robin from
/// `next` so that one busy socket does not starve the others.
async fn recv_any(
    sockets: &[Arc<UdpSocket>],
    buf: &mut [u8],
    next: &mut usize,
) -> (usize, io::Result<(SocketAddr, usize)>) {
    std::future::poll_fn(|cx| {
        let n = sockets.len();
        for k in 0..n {
            let i = (*next + k) % n;
            let mut read = ReadBuf::new(&mut buf[..]);
            match sockets[i].poll_recv_from(cx, &mut read) {
                Poll::Ready(Ok(src)) => {
                    *next = (i + 1) % n;
                    return Poll::Ready((i, Ok((src, read.filled().len()))));
                }
                Poll::Ready(Err(e)) => {
                    *next = (i + 1) % n;
                    return Poll::Ready((i, Err(e)));
                }
                Poll::Pending => {}
            }
        }
        Poll::Pending
    })
    .await
}
