//! The Authentication Service (AS): login with device id and password, credential
//! renewal and logout, over the cloud-authenticated channel of `cyphonic-proto`.
//!
//! One task owns all protocol state (the [`ChannelServer`], per-channel reply caches,
//! the failed-login limits). Datagrams from every socket are read into one reused
//! buffer. The slow parts of a request (store look-ups, Argon2) run in spawned tasks
//! (Argon2 on blocking threads, at most a few at once) whose outcome comes back to the
//! loop through a channel; the loop then seals the reply. So the service keeps
//! answering hellos, duplicates and other requests while passwords are verified.
//!
//! Decisions worth knowing:
//! - An unknown device id and a wrong password get the same `AUTHENTICATION_FAILED`
//!   answer after the same work: unknown ids are verified against a dummy hash made
//!   with the configured Argon2 cost, so timing does not tell which ids exist.
//! - Failed logins are limited per device id and per source (an IPv4 address, or the
//!   /64 of an IPv6 address, since one host holds a whole /64). The limits are checked
//!   before any verification; attempts being verified count against them until their
//!   outcome is known; only failures stay counted; a success clears the device's count.
//! - A request id seen again on the same channel (a retransmission) gets the reply
//!   cached for it, byte for byte, and does no work again; while the first is still
//!   being handled the repeat is dropped.
//! - When many logins wait for verification, hellos must carry a cookie (the channel's
//!   DoS defence); when the queue is full, logins are answered `UNAVAILABLE`.

mod limiter;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant, SystemTime};

use cyphonic_proto::channel::{
    self, ChannelHandle, ChannelServer, DropReason, MAX_DATAGRAM_LEN, PeerIdentity, PurposeKind,
    ServerConfig, ServerEvent,
};
use cyphonic_proto::credential::{CloudKeyId, Credential, SignedCredential};
use cyphonic_proto::time::UnixTime;
use cyphonic_proto::wire::channel::{ACCEPT_LEN, COOKIE_REPLY_LEN, HELLO_MAX_LEN, Service};
use cyphonic_proto::wire::signal::{
    LoginRequest, LoginResponse, SignalMessage, SignalPacket, SignalRepr, StatusReport,
};
use cyphonic_proto::wire::status::StatusCode;
use cyphonic_proto::wire::{Fqdn, NodeId, WireError};
use ed25519_dalek::SigningKey;
use rand_core::{OsRng, RngCore};
use tokio::io::ReadBuf;
use tokio::net::UdpSocket;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use zeroize::{Zeroize, Zeroizing};

use crate::context::CloudContext;
use crate::metrics::{Counter, Gauge, Metrics};
use crate::net;
use crate::password::{self, PasswordError};
use limiter::FailureLimiter;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("the authentication service needs the cloud signing key")]
    NoSigningKey,
    #[error("the authentication service has no socket to listen on")]
    NoSockets,
    #[error("preparing the dummy password hash: {0}")]
    DummyHash(#[from] PasswordError),
    #[error("socket: {0}")]
    Io(#[from] io::Error),
}

/// Load limits of the AS. The defaults suit a small host; [`run`] uses them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthOptions {
    /// Argon2 verifications running at once (each takes a blocking thread and the
    /// hash's memory cost).
    pub max_concurrent_verifies: usize,
    /// Logins accepted for verification at once, running or queued. Beyond this,
    /// logins are answered `UNAVAILABLE` with a retry time.
    pub max_pending_logins: usize,
    /// From this many pending logins on, hellos must carry a cookie.
    pub under_load_at: usize,
    /// Renewals waiting for the store at once; beyond this, `UNAVAILABLE`.
    pub max_pending_renewals: usize,
    /// Requests one channel may have in progress at once; beyond this, `RATE_LIMITED`.
    pub max_in_flight_per_channel: usize,
    /// Keys each failed-login limiter remembers at most.
    pub limiter_capacity: usize,
}

impl Default for AuthOptions {
    fn default() -> Self {
        Self {
            max_concurrent_verifies: 2,
            max_pending_logins: 64,
            under_load_at: 16,
            max_pending_renewals: 256,
            max_in_flight_per_channel: 4,
            limiter_capacity: 64 * 1024,
        }
    }
}

/// Runs the AS on `sockets` until `shutdown` is cancelled.
pub async fn run(
    ctx: Arc<CloudContext>,
    sockets: Vec<Arc<UdpSocket>>,
    shutdown: CancellationToken,
) -> Result<(), AuthError> {
    run_with(ctx, sockets, shutdown, AuthOptions::default()).await
}

/// [`run`] with explicit load limits.
pub async fn run_with(
    ctx: Arc<CloudContext>,
    sockets: Vec<Arc<UdpSocket>>,
    shutdown: CancellationToken,
    options: AuthOptions,
) -> Result<(), AuthError> {
    let signing = ctx.keys.signing.clone().ok_or(AuthError::NoSigningKey)?;
    if sockets.is_empty() {
        return Err(AuthError::NoSockets);
    }
    let locals = sockets
        .iter()
        .map(|s| s.local_addr())
        .collect::<io::Result<Vec<_>>>()?;
    let dummy_hash = dummy_hash(&ctx).await?;
    let (results_tx, mut results) = mpsc::unbounded_channel();
    let mut service = AuthService::new(ctx, signing, locals, dummy_hash, options, results_tx);
    service.update_load();
    tracing::info!(listen = ?service.locals, "authentication service running");

    let mut buf = vec![0u8; RECV_BUFFER_LEN];
    let mut next_socket = 0;
    let mut consecutive_errors = 0u32;
    loop {
        let deadline = tokio::time::Instant::from_std(service.next_deadline());
        let wake = tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            Some(done) = results.recv() => Wake::Done(done),
            () = tokio::time::sleep_until(deadline) => Wake::Timer,
            (index, received) = recv_any(&sockets, &mut next_socket, &mut buf) => {
                Wake::Datagram(index, received)
            }
        };
        let transmit = match wake {
            Wake::Done(done) => service.handle_done(done),
            Wake::Timer => {
                service.handle_timer();
                None
            }
            Wake::Datagram(index, Ok((len, from))) => {
                consecutive_errors = 0;
                service.handle_datagram(index, from, &mut buf[..len])
            }
            Wake::Datagram(index, Err(e)) => {
                // ICMP errors surface here on some systems; they concern one peer, not
                // the socket. Only a socket that keeps failing stops the service.
                consecutive_errors += 1;
                tracing::debug!(socket = %service.locals[index], error = %e, "receive error");
                if consecutive_errors >= MAX_CONSECUTIVE_RECV_ERRORS {
                    return Err(AuthError::Io(e));
                }
                None
            }
        };
        if let Some(t) = transmit {
            let to = net::for_socket(t.to, service.locals[t.socket]);
            if let Err(e) = sockets[t.socket].send_to(&service.out[..t.len], to).await {
                service.metrics.send_failed.inc();
                tracing::debug!(%to, error = %e, "send failed");
            }
        }
    }
    tracing::info!("authentication service stopped");
    Ok(())
}

/// Longest datagram read; anything valid is far shorter, longer ones arrive
/// truncated and fail to authenticate.
const RECV_BUFFER_LEN: usize = 2048;
const _: () = assert!(RECV_BUFFER_LEN > MAX_DATAGRAM_LEN && RECV_BUFFER_LEN > HELLO_MAX_LEN);
/// Room for any datagram the AS sends: a sealed reply, an accept or a cookie reply.
const OUT_BUFFER_LEN: usize = max(MAX_DATAGRAM_LEN, max(ACCEPT_LEN, COOKIE_REPLY_LEN));
const MAX_CONSECUTIVE_RECV_ERRORS: u32 = 1000;
/// Issued credentials start this long in the past, for nodes whose clocks run late.
const CREDENTIAL_BACKDATE: Duration = Duration::from_secs(60);
/// Replies kept per channel for answering retransmissions.
const REPLY_CACHE_LEN: usize = 4;
/// How often limits, caches and gauges are tidied.
const HOUSEKEEPING_INTERVAL: Duration = Duration::from_secs(1);
/// Starting estimate of one Argon2 verification, refined by measurement.
const INITIAL_VERIFY_ESTIMATE: Duration = Duration::from_millis(100);
const MAX_RETRY_AFTER_SECS: u16 = 60;
/// Retry hint after a store error.
const INTERNAL_RETRY_SECS: u16 = 5;

/// The one answer to an unknown device id, a wrong password or a removed device.
const AUTH_FAILED_TEXT: &str = "wrong device id or password";

const fn max(a: usize, b: usize) -> usize {
    if a > b { a } else { b }
}

enum Wake {
    Done(Done),
    Timer,
    Datagram(usize, io::Result<(usize, SocketAddr)>),
}

/// A datagram to send from `out[..len]` on socket `socket`.
#[derive(Debug, Clone, Copy)]
struct Transmit {
    socket: usize,
    to: SocketAddr,
    len: usize,
}

/// Waits for a datagram on any socket, starting after the one served last so that a
/// busy socket cannot starve the others.
async fn recv_any(
    sockets: &[Arc<UdpSocket>],
    next: &mut usize,
    buf: &mut [u8],
) -> (usize, io::Result<(usize, SocketAddr)>) {
    std::future::poll_fn(|cx| {
        let n = sockets.len();
        for k in 0..n {
            let i = (*next + k) % n;
            let mut read = ReadBuf::new(&mut *buf);
            if let Poll::Ready(result) = sockets[i].poll_recv_from(cx, &mut read) {
                *next = (i + 1) % n;
                return Poll::Ready((i, result.map(|from| (read.filled().len(), from))));
            }
        }
        Poll::Pending
    })
    .await
}

/// A hash of a random password with the configured cost: what unknown device ids are
/// verified against.
async fn dummy_hash(ctx: &CloudContext) -> Result<Arc<str>, AuthError> {
    let settings = ctx.config.argon2.clone();
    let mut secret = Zeroizing::new([0u8; 32]);
    OsRng.fill_bytes(&mut secret[..]);
    let hash = tokio::task::spawn_blocking(move || password::hash(&secret[..], &settings))
        .await
        .map_err(|e| AuthError::Io(io::Error::other(e)))??;
    Ok(Arc::from(hash))
}

fn unix_now() -> UnixTime {
    UnixTime::from_system_time(SystemTime::now())
}

/// The key failed logins from `ip` are counted under: the address itself for IPv4,
/// the /64 for IPv6.
fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !((1u128 << 64) - 1))),
        },
    }
}

fn retry_secs(d: Duration) -> u16 {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    u16::try_from(secs.max(1)).unwrap_or(u16::MAX)
}

/// What the AS counts.
#[derive(Debug)]
struct AuthMetrics {
    login_ok: Counter,
    login_failed: Counter,
    login_rate_limited: Counter,
    login_unavailable: Counter,
    login_error: Counter,
    renew_ok: Counter,
    renew_revoked: Counter,
    renew_unavailable: Counter,
    renew_error: Counter,
    /// Mirrors the channel server's drop counters, indexed by `DropReason as usize`.
    channel_drops: [Counter; DropReason::ALL.len()],
    short_request: Counter,
    duplicate_in_flight: Counter,
    unreachable: Counter,
    send_failed: Counter,
    repeated: Counter,
    verifications: Counter,
    evictions: Counter,
    channels: Gauge,
    pending_logins: Gauge,
}

impl AuthMetrics {
    fn new(m: &Metrics) -> Self {
        let login = |result| {
            m.counter(
                "cyphonic_as_logins_total",
                &[("result", result)],
                "Login requests by outcome",
            )
        };
        let renew = |result| {
            m.counter(
                "cyphonic_as_renewals_total",
                &[("result", result)],
                "Credential renewals by outcome",
            )
        };
        let dropped = |reason| {
            m.counter(
                "cyphonic_as_dropped_total",
                &[("reason", reason)],
                "Datagrams and requests the AS dropped without an answer",
            )
        };
        Self {
            login_ok: login("ok"),
            login_failed: login("failed"),
            login_rate_limited: login("rate_limited"),
            login_unavailable: login("unavailable"),
            login_error: login("error"),
            renew_ok: renew("ok"),
            renew_revoked: renew("revoked"),
            renew_unavailable: renew("unavailable"),
            renew_error: renew("error"),
            channel_drops: DropReason::ALL.map(|r| dropped(r.name())),
            short_request: dropped("short_request"),
            duplicate_in_flight: dropped("duplicate_in_flight"),
            unreachable: dropped("unreachable"),
            send_failed: dropped("send_failed"),
            repeated: m.counter(
                "cyphonic_as_repeated_requests_total",
                &[],
                "Retransmitted requests answered from the reply cache",
            ),
            verifications: m.counter(
                "cyphonic_as_password_verifications_total",
                &[],
                "Argon2 password verifications run",
            ),
            evictions: m.counter(
                "cyphonic_as_channel_evictions_total",
                &[],
                "Channels evicted because the channel table was full",
            ),
            channels: m.gauge("cyphonic_as_channels", &[], "Open AS channels"),
            pending_logins: m.gauge(
                "cyphonic_as_pending_logins",
                &[],
                "Logins waiting for or in password verification",
            ),
        }
    }
}

/// What one channel has asked recently.
#[derive(Debug, Default)]
struct ChannelState {
    /// Replies to the last few requests, oldest first.
    replies: VecDeque<(u32, Box<[u8]>)>,
    /// Requests being handled in a spawned task.
    in_flight: Vec<u32>,
}

impl ChannelState {
    fn cached(&self, request_id: u32) -> Option<&[u8]> {
        self.replies
            .iter()
            .find(|(id, _)| *id == request_id)
            .map(|(_, reply)| &reply[..])
    }

    fn remember(&mut self, request_id: u32, reply: Box<[u8]>) {
        if self.replies.len() == REPLY_CACHE_LEN {
            self.replies.pop_front();
        }
        self.replies.push_back((request_id, reply));
    }
}

/// Where a reply goes once the spawned work is done.
#[derive(Debug, Clone, Copy)]
struct ReplyTo {
    channel: ChannelHandle,
    socket: usize,
    request_id: u32,
}

/// A finished piece of spawned work.
#[derive(Debug)]
enum Done {
    Login {
        reply: ReplyTo,
        device_id: String,
        src: SocketAddr,
        static_public: [u8; 32],
        /// How long the Argon2 verification took, if it ran.
        verify_time: Option<Duration>,
        verdict: Verdict,
    },
    Renewal {
        reply: ReplyTo,
        static_public: [u8; 32],
        node_id: NodeId,
        verdict: Verdict,
    },
}

/// The outcome of a login or renewal.
#[derive(Debug)]
enum Verdict {
    Granted(Grant),
    /// Login: unknown device, wrong password or revoked. Renewal: device gone or
    /// revoked.
    Refused,
    /// The store failed.
    Error(String),
}

/// What a credential states about a device.
#[derive(Debug)]
struct Grant {
    node_id: NodeId,
    fqdn: Fqdn,
    vip4: Ipv4Addr,
    vip6: Ipv6Addr,
}

struct AuthService {
    ctx: Arc<CloudContext>,
    signing: SigningKey,
    cloud_key_id: CloudKeyId,
    server: ChannelServer,
    locals: Vec<SocketAddr>,
    out: Box<[u8; OUT_BUFFER_LEN]>,
    options: AuthOptions,
    metrics: AuthMetrics,
    states: HashMap<ChannelHandle, ChannelState>,
    device_limits: FailureLimiter<String>,
    source_limits: FailureLimiter<IpAddr>,
    dummy_hash: Arc<str>,
    verify_slots: Arc<Semaphore>,
    pending_logins: usize,
    pending_renewals: usize,
    under_load: bool,
    /// Moving average of one verification, for the retry hint of `UNAVAILABLE`.
    verify_estimate: Duration,
    results: mpsc::UnboundedSender<Done>,
    /// Spawned work; aborted when the service stops.
    tasks: JoinSet<()>,
    next_housekeeping: Instant,
    evictions_seen: u64,
}

impl std::fmt::Debug for AuthService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the signing key.
        f.debug_struct("AuthService")
            .field("server", &self.server)
            .field("locals", &self.locals)
            .field("pending_logins", &self.pending_logins)
            .field("pending_renewals", &self.pending_renewals)
            .finish_non_exhaustive()
    }
}

impl AuthService {
    fn new(
        ctx: Arc<CloudContext>,
        signing: SigningKey,
        locals: Vec<SocketAddr>,
        dummy_hash: Arc<str>,
        options: AuthOptions,
        results: mpsc::UnboundedSender<Done>,
    ) -> Self {
        let server = ChannelServer::new(
            &signing,
            ctx.keys.trusted.clone(),
            ServerConfig::new(Service::Auth),
        );
        let limits = &ctx.config.login_limits;
        let window = Duration::from_secs(u64::from(limits.window_secs));
        let metrics = AuthMetrics::new(&ctx.metrics);
        Self {
            cloud_key_id: CloudKeyId::of(&signing.verifying_key()),
            device_limits: FailureLimiter::new(
                limits.per_device_failures,
                window,
                options.limiter_capacity,
            ),
            source_limits: FailureLimiter::new(
                limits.per_source_failures,
                window,
                options.limiter_capacity,
            ),
            verify_slots: Arc::new(Semaphore::new(options.max_concurrent_verifies.max(1))),
            ctx,
            signing,
            server,
            locals,
            out: Box::new([0; OUT_BUFFER_LEN]),
            options,
            metrics,
            states: HashMap::new(),
            dummy_hash,
            pending_logins: 0,
            pending_renewals: 0,
            under_load: false,
            verify_estimate: INITIAL_VERIFY_ESTIMATE,
            results,
            tasks: JoinSet::new(),
            next_housekeeping: Instant::now() + HOUSEKEEPING_INTERVAL,
            evictions_seen: 0,
        }
    }

    fn next_deadline(&self) -> Instant {
        match self.server.poll_timeout() {
            Some(at) => at.min(self.next_housekeeping),
            None => self.next_housekeeping,
        }
    }

    fn handle_timer(&mut self) {
        let now = Instant::now();
        self.server.handle_timeout(now);
        if now >= self.next_housekeeping {
            self.next_housekeeping = now + HOUSEKEEPING_INTERVAL;
            self.device_limits.prune(now);
            self.source_limits.prune(now);
            let server = &self.server;
            self.states
                .retain(|h, s| !s.in_flight.is_empty() || server.peer(*h).is_some());
            let evictions = self.server.evictions();
            self.metrics
                .evictions
                .add(evictions.saturating_sub(self.evictions_seen));
            self.evictions_seen = evictions;
        }
        self.metrics
            .channels
            .set(gauge_value(self.server.channel_count()));
    }

    fn handle_datagram(
        &mut self,
        socket: usize,
        from: SocketAddr,
        datagram: &mut [u8],
    ) -> Option<Transmit> {
        let src = net::canonical(from);
        let now = Instant::now();
        let event = match self.server.handle_datagram(
            now,
            unix_now(),
            src,
            datagram,
            &mut OsRng,
            &mut self.out[..],
        ) {
            Ok(event) => event,
            Err(e) => {
                // Only a short output buffer is an error, and ours is sized for all.
                tracing::error!(error = %e, "channel server refused the output buffer");
                return None;
            }
        };
        let transmit = match event {
            ServerEvent::Accept { channel, peer, len } => {
                tracing::trace!(%src, channel = channel.index(), purpose = ?peer.purpose, "channel accepted");
                Some(Transmit {
                    socket,
                    to: src,
                    len,
                })
            }
            ServerEvent::CookieReply { len } => {
                tracing::trace!(%src, "hello answered with a cookie");
                Some(Transmit {
                    socket,
                    to: src,
                    len,
                })
            }
            ServerEvent::Request {
                channel,
                peer,
                src,
                inner,
            } => {
                let transmit =
                    self.handle_request(now, socket, channel, &peer, src, &datagram[inner.clone()]);
                // The request may have carried a password.
                datagram[inner].zeroize();
                transmit
            }
            ServerEvent::Dropped(reason) => {
                self.metrics.channel_drops[reason as usize].inc();
                tracing::trace!(%src, reason = reason.name(), "datagram dropped");
                None
            }
        };
        self.metrics
            .channels
            .set(gauge_value(self.server.channel_count()));
        transmit
    }

    fn handle_request(
        &mut self,
        now: Instant,
        socket: usize,
        channel: ChannelHandle,
        peer: &Arc<PeerIdentity>,
        src: SocketAddr,
        inner: &[u8],
    ) -> Option<Transmit> {
        let Some(request_id) = channel::request_id(inner) else {
            self.metrics.short_request.inc();
            tracing::trace!(%src, "request without a request id dropped");
            return None;
        };
        let reply = ReplyTo {
            channel,
            socket,
            request_id,
        };
        let state = self.states.entry(channel).or_default();
        if let Some(cached) = state.cached(request_id) {
            let cached = cached.to_vec();
            self.metrics.repeated.inc();
            tracing::trace!(%src, request_id, "repeated request answered from the cache");
            return self.seal(now, reply, &cached);
        }
        if state.in_flight.contains(&request_id) {
            self.metrics.duplicate_in_flight.inc();
            tracing::trace!(%src, request_id, "repeat of a request in progress dropped");
            return None;
        }
        let in_flight = state.in_flight.len();

        let repr = match SignalPacket::new_checked(inner).and_then(|p| SignalRepr::parse(&p)) {
            Ok(repr) => repr,
            Err(WireError::UnknownType(kind)) => {
                tracing::debug!(%src, kind, "unknown signaling type");
                return self.reply_status(
                    now,
                    reply,
                    StatusCode::UNSUPPORTED_VERSION,
                    0,
                    "unknown message type",
                );
            }
            Err(e) => {
                tracing::debug!(%src, error = %e, "malformed request");
                return self.reply_status(
                    now,
                    reply,
                    StatusCode::MALFORMED,
                    0,
                    "malformed request",
                );
            }
        };
        tracing::trace!(%src, request_id, kind = ?repr.message.signal_type(), "request");
        let needs_work = matches!(
            repr.message,
            SignalMessage::LoginRequest(_) | SignalMessage::RenewRequest
        );
        if needs_work && in_flight >= self.options.max_in_flight_per_channel {
            return self.reply_status(
                now,
                reply,
                StatusCode::RATE_LIMITED,
                1,
                "too many requests in progress",
            );
        }
        match repr.message {
            SignalMessage::LoginRequest(request) => {
                self.start_login(now, reply, peer, src, request)
            }
            SignalMessage::RenewRequest => self.start_renewal(now, reply, peer, src),
            SignalMessage::FinalizationRequest => {
                let transmit = self.reply(now, reply, SignalMessage::FinalizationResponse);
                self.server.close(channel);
                self.states.remove(&channel);
                tracing::debug!(%src, "logout: channel closed");
                transmit
            }
            _ => self.reply_status(
                now,
                reply,
                StatusCode::FORBIDDEN,
                0,
                "not a request for the authentication service",
            ),
        }
    }

    fn start_login(
        &mut self,
        now: Instant,
        reply: ReplyTo,
        peer: &PeerIdentity,
        src: SocketAddr,
        request: LoginRequest,
    ) -> Option<Transmit> {
        let device_id = request.device_id.clone();
        if peer.purpose != PurposeKind::Login {
            return self.reply_status(
                now,
                reply,
                StatusCode::FORBIDDEN,
                0,
                "log in on a login channel",
            );
        }
        if request.static_public != peer.static_public {
            self.metrics.login_failed.inc();
            tracing::warn!(device = %device_id, %src, "login refused: static key differs from the channel's");
            return self.reply_status(
                now,
                reply,
                StatusCode::FALSIFICATION_DETECTED,
                0,
                "static key differs from the channel's",
            );
        }
        let source = source_key(src.ip());
        let by_device = self.device_limits.check(&device_id, now).err();
        let by_source = self.source_limits.check(&source, now).err();
        if let Some(wait) = by_device.max(by_source) {
            self.metrics.login_rate_limited.inc();
            tracing::debug!(device = %device_id, %src, "login rate-limited");
            return self.reply_status(
                now,
                reply,
                StatusCode::RATE_LIMITED,
                retry_secs(wait),
                "too many failed logins",
            );
        }
        if self.pending_logins >= self.options.max_pending_logins {
            self.metrics.login_unavailable.inc();
            tracing::debug!(device = %device_id, %src, "login refused: verification queue full");
            let wait = self.queue_wait();
            return self.reply_status(
                now,
                reply,
                StatusCode::UNAVAILABLE,
                wait,
                "too many logins in progress",
            );
        }

        self.device_limits.begin(device_id.clone(), now);
        self.source_limits.begin(source, now);
        self.pending_logins += 1;
        self.update_load();
        self.states
            .entry(reply.channel)
            .or_default()
            .in_flight
            .push(reply.request_id);
        let job = LoginJob {
            ctx: Arc::clone(&self.ctx),
            slots: Arc::clone(&self.verify_slots),
            dummy_hash: Arc::clone(&self.dummy_hash),
            verifications: self.metrics.verifications.clone(),
        };
        let results = self.results.clone();
        let static_public = request.static_public;
        self.tasks.spawn(async move {
            let (verdict, verify_time) = job.run(request).await;
            // The loop owns the receiver for as long as tasks may run.
            let _ = results.send(Done::Login {
                reply,
                device_id,
                src,
                static_public,
                verify_time,
                verdict,
            });
        });
        None
    }

    fn start_renewal(
        &mut self,
        now: Instant,
        reply: ReplyTo,
        peer: &PeerIdentity,
        src: SocketAddr,
    ) -> Option<Transmit> {
        let Some(credential) = peer
            .credential
            .as_ref()
            .filter(|_| peer.purpose == PurposeKind::Credential)
        else {
            return self.reply_status(
                now,
                reply,
                StatusCode::FORBIDDEN,
                0,
                "renew on a channel opened with a credential",
            );
        };
        let node_id = credential.credential().node_id;
        if self.ctx.revoked.contains(&node_id) {
            self.metrics.renew_revoked.inc();
            tracing::info!(node = %node_id, %src, "renewal refused: revoked");
            return self.reply_status(now, reply, StatusCode::REVOKED, 0, "device removed");
        }
        if self.pending_renewals >= self.options.max_pending_renewals {
            self.metrics.renew_unavailable.inc();
            return self.reply_status(
                now,
                reply,
                StatusCode::UNAVAILABLE,
                1,
                "too many renewals in progress",
            );
        }
        self.pending_renewals += 1;
        self.states
            .entry(reply.channel)
            .or_default()
            .in_flight
            .push(reply.request_id);
        let ctx = Arc::clone(&self.ctx);
        let results = self.results.clone();
        let static_public = peer.static_public;
        self.tasks.spawn(async move {
            let verdict = renewal(&ctx, node_id).await;
            let _ = results.send(Done::Renewal {
                reply,
                static_public,
                node_id,
                verdict,
            });
        });
        None
    }

    fn handle_done(&mut self, done: Done) -> Option<Transmit> {
        // Reap finished tasks so the set does not grow.
        while self.tasks.try_join_next().is_some() {}
        let now = Instant::now();
        match done {
            Done::Login {
                reply,
                device_id,
                src,
                static_public,
                verify_time,
                verdict,
            } => {
                self.pending_logins = self.pending_logins.saturating_sub(1);
                self.update_load();
                if let Some(t) = verify_time {
                    self.verify_estimate = (self.verify_estimate * 7 + t) / 8;
                }
                self.end_in_flight(reply);
                let failed = matches!(verdict, Verdict::Refused);
                self.device_limits.finish(&device_id, now, failed);
                self.source_limits
                    .finish(&source_key(src.ip()), now, failed);
                match verdict {
                    Verdict::Granted(grant) => {
                        self.device_limits.clear(&device_id);
                        self.metrics.login_ok.inc();
                        tracing::info!(device = %device_id, %src, node = %grant.node_id, fqdn = grant.fqdn.as_str(), "login ok");
                        self.reply_credential(now, reply, static_public, &grant)
                    }
                    Verdict::Refused => {
                        self.metrics.login_failed.inc();
                        tracing::warn!(device = %device_id, %src, "login failed: wrong device id or password");
                        self.reply_status(
                            now,
                            reply,
                            StatusCode::AUTHENTICATION_FAILED,
                            0,
                            AUTH_FAILED_TEXT,
                        )
                    }
                    Verdict::Error(error) => {
                        self.metrics.login_error.inc();
                        tracing::error!(device = %device_id, %src, %error, "login failed: store error");
                        self.reply_status(
                            now,
                            reply,
                            StatusCode::INTERNAL,
                            INTERNAL_RETRY_SECS,
                            "internal error",
                        )
                    }
                }
            }
            Done::Renewal {
                reply,
                static_public,
                node_id,
                verdict,
            } => {
                self.pending_renewals = self.pending_renewals.saturating_sub(1);
                self.end_in_flight(reply);
                match verdict {
                    Verdict::Granted(grant) => {
                        self.metrics.renew_ok.inc();
                        tracing::debug!(node = %node_id, fqdn = grant.fqdn.as_str(), "credential renewed");
                        self.reply_credential(now, reply, static_public, &grant)
                    }
                    Verdict::Refused => {
                        self.metrics.renew_revoked.inc();
                        tracing::info!(node = %node_id, "renewal refused: device removed");
                        self.reply_status(now, reply, StatusCode::REVOKED, 0, "device removed")
                    }
                    Verdict::Error(error) => {
                        self.metrics.renew_error.inc();
                        tracing::error!(node = %node_id, %error, "renewal failed: store error");
                        self.reply_status(
                            now,
                            reply,
                            StatusCode::INTERNAL,
                            INTERNAL_RETRY_SECS,
                            "internal error",
                        )
                    }
                }
            }
        }
    }

    fn end_in_flight(&mut self, reply: ReplyTo) {
        if let Some(state) = self.states.get_mut(&reply.channel) {
            state.in_flight.retain(|id| *id != reply.request_id);
        }
    }

    fn update_load(&mut self) {
        self.metrics
            .pending_logins
            .set(gauge_value(self.pending_logins));
        let under_load = self.pending_logins >= self.options.under_load_at;
        if under_load != self.under_load {
            self.under_load = under_load;
            self.server.set_under_load(under_load);
            if under_load {
                tracing::warn!(
                    pending = self.pending_logins,
                    "many logins waiting for verification: hellos now need cookies"
                );
            } else {
                tracing::info!("login queue drained: cookies no longer required");
            }
        }
    }

    /// Seconds until the verification queue has likely drained.
    fn queue_wait(&self) -> u16 {
        let slots = u32::try_from(self.options.max_concurrent_verifies.max(1)).unwrap_or(1);
        let queued = u32::try_from(self.pending_logins).unwrap_or(u32::MAX);
        let wait = self.verify_estimate.saturating_mul(queued) / slots;
        retry_secs(wait).min(MAX_RETRY_AFTER_SECS)
    }

    fn reply_credential(
        &mut self,
        now: Instant,
        reply: ReplyTo,
        static_public: [u8; 32],
        grant: &Grant,
    ) -> Option<Transmit> {
        let credential = self.issue(static_public, grant);
        let message = SignalMessage::LoginResponse(LoginResponse {
            credential,
            renew_after_secs: self.ctx.config.credentials.renew_after_secs,
            domain: self.ctx.config.domain.clone(),
        });
        self.reply(now, reply, message)
    }

    fn issue(&self, static_public: [u8; 32], grant: &Grant) -> SignedCredential {
        let unix = unix_now();
        Credential {
            cloud_key_id: self.cloud_key_id,
            node_id: grant.node_id,
            not_before: unix.saturating_sub(CREDENTIAL_BACKDATE),
            not_after: unix.saturating_add(self.ctx.config.credential_lifetime()),
            static_public,
            vip4: grant.vip4,
            vip6: grant.vip6,
            fqdn: grant.fqdn.clone(),
        }
        .sign(&self.signing)
    }

    fn reply_status(
        &mut self,
        now: Instant,
        reply: ReplyTo,
        status: StatusCode,
        retry_after_secs: u16,
        message: &str,
    ) -> Option<Transmit> {
        self.reply(
            now,
            reply,
            SignalMessage::Status(StatusReport {
                status,
                retry_after_secs,
                message: message.to_owned(),
            }),
        )
    }

    /// Encodes, caches and seals a reply.
    fn reply(&mut self, now: Instant, reply: ReplyTo, message: SignalMessage) -> Option<Transmit> {
        let repr = SignalRepr {
            request_id: reply.request_id,
            message,
        };
        let mut bytes = vec![0u8; repr.buffer_len()].into_boxed_slice();
        if let Err(e) = repr.emit(&mut bytes) {
            // Our own replies always fit their rules; this is a bug, not input.
            tracing::error!(error = %e, kind = ?repr.message.signal_type(), "reply does not encode");
            return None;
        }
        let transmit = self.seal(now, reply, &bytes);
        if let Some(state) = self.states.get_mut(&reply.channel) {
            state.remember(reply.request_id, bytes);
        }
        transmit
    }

    fn seal(&mut self, now: Instant, reply: ReplyTo, inner: &[u8]) -> Option<Transmit> {
        let (len, to) = match self
            .server
            .seal_to(now, reply.channel, inner, &mut self.out[..])
        {
            Ok(sealed) => sealed,
            Err(e) => {
                // The channel expired or was replaced while the work ran; the node
                // retransmits on its new channel.
                tracing::debug!(request_id = reply.request_id, error = %e, "reply not sealed");
                return None;
            }
        };
        let socket = if net::can_reach(self.locals[reply.socket], to) {
            reply.socket
        } else if let Some(i) = self.locals.iter().position(|l| net::can_reach(*l, to)) {
            i
        } else {
            self.metrics.unreachable.inc();
            tracing::debug!(%to, "no socket reaches the node");
            return None;
        };
        Some(Transmit { socket, to, len })
    }
}

fn gauge_value(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// What a login task needs from the service.
struct LoginJob {
    ctx: Arc<CloudContext>,
    slots: Arc<Semaphore>,
    dummy_hash: Arc<str>,
    verifications: Counter,
}

impl LoginJob {
    /// Looks the device up, verifies the password (against the dummy hash for unknown
    /// devices, so both take the same time) and on success assigns the addresses.
    async fn run(self, request: LoginRequest) -> (Verdict, Option<Duration>) {
        let LoginRequest {
            device_id,
            password,
            ..
        } = request;
        let device = match self.ctx.store.device(&device_id).await {
            Ok(device) => device,
            Err(e) => return (Verdict::Error(e.to_string()), None),
        };
        let hash: Arc<str> = match &device {
            Some(d) => Arc::from(d.password_hash.as_str()),
            None => Arc::clone(&self.dummy_hash),
        };
        let Ok(_permit) = self.slots.acquire().await else {
            return (Verdict::Error("verification slots closed".into()), None);
        };
        let started = Instant::now();
        self.verifications.inc();
        let matched = tokio::task::spawn_blocking(move || {
            let matched = password::verify(&password, &hash);
            // Wipes the password now rather than whenever the closure is dropped.
            drop(password);
            matched
        })
        .await;
        let verify_time = Some(started.elapsed());
        let matched = match matched {
            Ok(matched) => matched,
            Err(e) => {
                return (
                    Verdict::Error(format!("verification task: {e}")),
                    verify_time,
                );
            }
        };
        let Some(device) = device.filter(|d| matched && !self.ctx.revoked.contains(&d.node_id))
        else {
            return (Verdict::Refused, verify_time);
        };
        let verdict = match self.grant(device.device_id.as_str()).await {
            Ok((vip4, vip6)) => Verdict::Granted(Grant {
                node_id: device.node_id,
                fqdn: device.fqdn,
                vip4,
                vip6,
            }),
            Err(e) => Verdict::Error(e.to_string()),
        };
        (verdict, verify_time)
    }

    async fn grant(
        &self,
        device_id: &str,
    ) -> Result<(Ipv4Addr, Ipv6Addr), crate::store::StoreError> {
        let store = &self.ctx.store;
        let addresses = store
            .assign_addresses(device_id, self.ctx.config.pools.ipv4, self.ctx.ipv6_pool)
            .await?;
        store.record_login(device_id, unix_now()).await?;
        Ok(addresses)
    }
}

/// The stored facts for renewing `node_id`'s credential, or `Refused` when its device
/// is gone or revoked.
async fn renewal(ctx: &CloudContext, node_id: NodeId) -> Verdict {
    let device = match ctx.store.device_by_node(&node_id).await {
        Ok(Some(device)) if !ctx.revoked.contains(&node_id) => device,
        Ok(_) => return Verdict::Refused,
        Err(e) => return Verdict::Error(e.to_string()),
    };
    let addresses = match (device.vip4, device.vip6) {
        (Some(v4), Some(v6)) => Ok((v4, v6)),
        // Cannot happen for a device that logged in; assigning is still right.
        _ => {
            ctx.store
                .assign_addresses(&device.device_id, ctx.config.pools.ipv4, ctx.ipv6_pool)
                .await
        }
    };
    match addresses {
        Ok((vip4, vip6)) => Verdict::Granted(Grant {
            node_id: device.node_id,
            fqdn: device.fqdn,
            vip4,
            vip6,
        }),
        Err(e) => Verdict::Error(e.to_string()),
    }
}
