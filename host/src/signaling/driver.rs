//! The task behind every cloud connection: one UDP socket, one `Signaling`, a
//! command channel in and replies, readiness and events out.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use cyphonic_proto::channel::{Established, Event, MAX_DATAGRAM_LEN, Purpose, Signaling};
use cyphonic_proto::credential::SignedCredential;
use cyphonic_proto::wire::signal::{RegistrationRequest, SignalMessage, SignalPacket, SignalRepr};
use cyphonic_proto::wire::status::StatusCode;
use rand_core::{OsRng, RngCore};
use tokio::sync::{mpsc, oneshot};
use zeroize::{Zeroize, Zeroizing};

use super::nms::NmsEvent;
use super::{ClientConfig, CloudSocket, PUSH_ID_BIT, SignalingError, hello_clock_offset, unix_now};
use cyphonic_proto::time::UnixTime;

/// Commands queued per connection before senders wait.
const COMMAND_QUEUE: usize = 64;
/// Pushes remembered to recognise retransmissions and to answer `confirm`.
const PUSH_MEMORY: usize = 64;
/// Largest datagram we accept to read; anything longer is truncated by the kernel and
/// then refused by the channel.
const RECEIVE_BUFFER: usize = 65_536;

pub(super) type Reply = oneshot::Sender<Result<SignalMessage, SignalingError>>;

/// What a handle asks the task to do.
pub(super) enum Command {
    /// Send a request; the reply (any message, `Status` included) comes back.
    Request { outgoing: Outgoing, reply: Reply },
    /// Answer a `RouteDirectionToResponder` push.
    Confirm {
        direction_id: [u8; 16],
        status: StatusCode,
        reply: oneshot::Sender<Result<(), SignalingError>>,
    },
    /// Present this credential from the next hello on, and in registrations.
    SetCredential(SignedCredential),
}

/// A request before the task gives it an id.
pub(super) enum Outgoing {
    Message(SignalMessage),
    /// Built by the task with the credential it holds, so a renewal between the
    /// handle's call and the send cannot mix credentials.
    Registration {
        endpoints: Vec<SocketAddr>,
    },
    /// `FinalizationRequest`; the task ends once it is answered.
    Finalization,
}

/// The handle's end of a running connection task.
#[derive(Debug, Clone)]
pub(super) struct Link {
    commands: mpsc::Sender<Command>,
}

impl Link {
    /// Sends a request and waits for its reply.
    pub(super) async fn request(
        &self,
        outgoing: Outgoing,
    ) -> Result<SignalMessage, SignalingError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Request { outgoing, reply })
            .await
            .map_err(|_| SignalingError::Closed)?;
        answer.await.map_err(|_| SignalingError::Closed)?
    }

    pub(super) async fn confirm(
        &self,
        direction_id: [u8; 16],
        status: StatusCode,
    ) -> Result<(), SignalingError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Confirm {
                direction_id,
                status,
                reply,
            })
            .await
            .map_err(|_| SignalingError::Closed)?;
        answer.await.map_err(|_| SignalingError::Closed)?
    }

    pub(super) async fn set_credential(
        &self,
        credential: SignedCredential,
    ) -> Result<(), SignalingError> {
        self.commands
            .send(Command::SetCredential(credential))
            .await
            .map_err(|_| SignalingError::Closed)
    }
}

/// Everything a connection task starts with.
pub(super) struct Setup {
    pub(super) socket: CloudSocket,
    pub(super) signaling: Signaling,
    pub(super) credential: Option<SignedCredential>,
    pub(super) config: ClientConfig,
    /// Gets the first channel (or the failure to get one); the task connects at once.
    pub(super) ready: Option<oneshot::Sender<Result<Established, SignalingError>>>,
    /// Pushes and channel changes; `None` for connections that take no pushes.
    pub(super) events: Option<mpsc::Sender<NmsEvent>>,
}

impl Setup {
    pub(super) fn new(socket: CloudSocket, signaling: Signaling, config: ClientConfig) -> Self {
        Self {
            socket,
            signaling,
            credential: None,
            config,
            ready: None,
            events: None,
        }
    }
}

/// Starts the task; it ends when every [`Link`] is dropped or after a finalization.
pub(super) fn spawn(setup: Setup) -> Link {
    let (commands, receiver) = mpsc::channel(COMMAND_QUEUE);
    let connect_now = setup.ready.is_some();
    let mut task = Task {
        socket: setup.socket,
        signaling: setup.signaling,
        credential: setup.credential,
        reconnect_delay: setup.config.reconnect_delay,
        config: setup.config,
        ready: setup.ready,
        events: setup.events,
        clock_offset: hello_clock_offset(),
        commands: receiver,
        pending: HashMap::new(),
        pushes: VecDeque::new(),
        next_id: OsRng.next_u32() & !PUSH_ID_BIT,
        reconnect_at: None,
        ever_connected: false,
        finished: false,
        last_timeout: None,
    };
    if connect_now {
        let unix = task.unix_now();
        if let Err(e) = task.signaling.connect(Instant::now(), unix, &mut OsRng) {
            if let Some(ready) = task.ready.take() {
                let _ = ready.send(Err(e.into()));
            }
        }
    }
    tokio::spawn(task.run());
    Link { commands }
}

struct Task {
    socket: CloudSocket,
    signaling: Signaling,
    credential: Option<SignedCredential>,
    config: ClientConfig,
    ready: Option<oneshot::Sender<Result<Established, SignalingError>>>,
    events: Option<mpsc::Sender<NmsEvent>>,
    commands: mpsc::Receiver<Command>,
    pending: HashMap<u32, PendingReply>,
    pushes: VecDeque<PushRecord>,
    next_id: u32,
    /// A lost persistent channel is tried again at this time.
    reconnect_at: Option<Instant>,
    reconnect_delay: Duration,
    ever_connected: bool,
    finished: bool,
    clock_offset: u64,
    /// When timers last ran: the next run is at least a millisecond later, so a timer
    /// the state machine cannot clear never turns into a busy loop.
    last_timeout: Option<Instant>,
}

struct PendingReply {
    reply: Reply,
    finishes: bool,
}

/// A `RouteDirectionToResponder` we received: its request id (the confirmation
/// repeats it) and, once confirmed, the confirmation to resend if the push repeats.
struct PushRecord {
    request_id: u32,
    direction_id: [u8; 16],
    confirmation: Option<Vec<u8>>,
}

impl Task {
    async fn run(mut self) {
        let mut receive = vec![0u8; RECEIVE_BUFFER];
        let mut transmit = vec![0u8; MAX_DATAGRAM_LEN];
        loop {
            self.flush(&mut transmit).await;
            self.drain_events();
            self.forget_abandoned();
            if self.finished {
                break;
            }
            let deadline = self.deadline();
            tokio::select! {
                command = self.commands.recv() => match command {
                    Some(command) => self.handle_command(command),
                    None => break,
                },
                received = self.socket.recv(&mut receive) => match received {
                    Ok(len) => {
                        let datagram = &mut receive[..len];
                        let now = Instant::now();
                        let unix = self.unix_now();
                        if let Err(reason) = self.signaling.handle_datagram(now, unix, datagram)
                        {
                            tracing::trace!(%reason, len, "dropped a datagram from the cloud");
                        }
                        // Replies may carry punch and bind keys.
                        datagram.zeroize();
                    }
                    // A connected UDP socket reports ICMP errors (e.g. port
                    // unreachable while the cloud restarts); retransmission covers them.
                    Err(e) => tracing::debug!(error = %e, "receive from the cloud failed"),
                },
                () = sleep_until(deadline) => self.handle_timeout(),
            }
        }
        tracing::debug!("cloud connection task ended");
    }

    /// The wall clock as this connection's hellos see it (see [`hello_clock_offset`]).
    fn unix_now(&self) -> UnixTime {
        UnixTime(unix_now().0.saturating_add(self.clock_offset))
    }

    fn deadline(&self) -> Option<Instant> {
        let next = match (self.signaling.poll_timeout(), self.reconnect_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        match (next, self.last_timeout) {
            (Some(at), Some(last)) => Some(at.max(last + Duration::from_millis(1))),
            (at, _) => at,
        }
    }

    fn handle_timeout(&mut self) {
        let now = Instant::now();
        self.last_timeout = Some(now);
        if self.reconnect_at.is_some_and(|at| now >= at) {
            self.reconnect_at = None;
            let unix = self.unix_now();
            if let Err(e) = self.signaling.connect(now, unix, &mut OsRng) {
                tracing::warn!(error = %e, "could not start a handshake with the cloud");
            }
        }
        let unix = self.unix_now();
        if let Err(e) = self.signaling.handle_timeout(now, unix, &mut OsRng) {
            tracing::warn!(error = %e, "cloud channel timers failed");
        }
    }

    async fn flush(&mut self, buf: &mut [u8]) {
        loop {
            let len = match self.signaling.poll_transmit(Instant::now(), buf) {
                Ok(Some(len)) => len,
                Ok(None) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "could not seal a datagram for the cloud");
                    return;
                }
            };
            if let Err(e) = self.socket.send(&buf[..len]).await {
                tracing::debug!(error = %e, len, "send to the cloud failed");
            }
        }
    }

    fn handle_command(&mut self, command: Command) {
        let now = Instant::now();
        let unix = self.unix_now();
        match command {
            Command::Request { outgoing, reply } => {
                let (message, finishes) = match outgoing {
                    Outgoing::Message(m) => (m, false),
                    Outgoing::Finalization => (SignalMessage::FinalizationRequest, true),
                    Outgoing::Registration { endpoints } => match &self.credential {
                        Some(credential) => (
                            SignalMessage::RegistrationRequest(RegistrationRequest {
                                credential: credential.clone(),
                                endpoints,
                            }),
                            false,
                        ),
                        None => {
                            let _ = reply.send(Err(SignalingError::Protocol(
                                "registration needs a credential",
                            )));
                            return;
                        }
                    },
                };
                let request_id = self.fresh_id();
                let repr = SignalRepr {
                    request_id,
                    message,
                };
                let mut bytes = Zeroizing::new(vec![0u8; repr.buffer_len()]);
                if let Err(e) = repr.emit(&mut bytes) {
                    let _ = reply.send(Err(e.into()));
                    return;
                }
                match self.signaling.send_request(now, unix, &mut OsRng, &bytes) {
                    Ok(_) => {
                        tracing::trace!(
                            request_id,
                            kind = ?repr.message.signal_type(),
                            "request queued"
                        );
                        self.pending
                            .insert(request_id, PendingReply { reply, finishes });
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e.into()));
                    }
                }
            }
            Command::Confirm {
                direction_id,
                status,
                reply,
            } => {
                let Some(record) = self
                    .pushes
                    .iter_mut()
                    .find(|p| p.direction_id == direction_id)
                else {
                    let _ = reply.send(Err(SignalingError::Protocol(
                        "no route direction with this id was received",
                    )));
                    return;
                };
                let repr = SignalRepr {
                    request_id: record.request_id,
                    message: SignalMessage::RouteDirectionConfirmation {
                        direction_id,
                        status,
                    },
                };
                let mut bytes = vec![0u8; repr.buffer_len()];
                let result = repr
                    .emit(&mut bytes)
                    .map_err(SignalingError::from)
                    .and_then(|_| {
                        self.signaling
                            .send_oneway(now, unix, &mut OsRng, &bytes)
                            .map_err(SignalingError::from)
                    });
                if result.is_ok() {
                    record.confirmation = Some(bytes);
                }
                let _ = reply.send(result);
            }
            Command::SetCredential(credential) => {
                self.signaling
                    .set_purpose(Purpose::Credential(credential.clone()));
                self.credential = Some(credential);
            }
        }
    }

    fn drain_events(&mut self) {
        let mut batch = Vec::new();
        while let Some(event) = self.signaling.poll_event() {
            batch.push(event);
        }
        if batch.is_empty() {
            return;
        }
        // A lost channel fails its requests first; report those as the channel loss.
        let lost = batch.iter().any(|e| matches!(e, Event::ChannelLost));
        for event in batch {
            match event {
                Event::Connected(established) => self.on_connected(established),
                Event::Reply {
                    request_id,
                    message,
                } => self.on_reply(request_id, message),
                Event::Push(message) => self.on_push(message),
                Event::RequestFailed { request_id } => {
                    if let Some(pending) = self.pending.remove(&request_id) {
                        let error = if lost {
                            SignalingError::ChannelLost
                        } else {
                            SignalingError::Timeout
                        };
                        let _ = pending.reply.send(Err(error));
                    }
                }
                Event::ChannelLost => self.on_channel_lost(),
            }
        }
    }

    fn on_connected(&mut self, established: Established) {
        tracing::debug!(
            lifetime_secs = established.lifetime.as_secs(),
            clock_offset_millis = established.clock_offset_millis,
            "cloud channel established"
        );
        if established.clock_offset_millis.unsigned_abs() > 60_000 {
            tracing::warn!(
                clock_offset_millis = established.clock_offset_millis,
                "this node's clock differs from the cloud's by more than a minute"
            );
        }
        self.reconnect_delay = self.config.reconnect_delay;
        self.reconnect_at = None;
        if let Some(ready) = self.ready.take() {
            let _ = ready.send(Ok(established));
        } else if self.ever_connected {
            self.emit(NmsEvent::Reconnected(established));
        }
        self.ever_connected = true;
    }

    fn on_reply(&mut self, request_id: u32, mut message: Vec<u8>) {
        let Some(pending) = self.pending.remove(&request_id) else {
            message.zeroize();
            return;
        };
        let parsed = SignalPacket::new_checked(&message[..])
            .and_then(|packet| SignalRepr::parse(&packet))
            .map(|repr| repr.message);
        message.zeroize();
        let finished = pending.finishes
            && match &parsed {
                Ok(SignalMessage::FinalizationResponse) => true,
                Ok(SignalMessage::Status(s)) => s.status.is_success(),
                _ => false,
            };
        let _ = pending.reply.send(parsed.map_err(SignalingError::from));
        if finished {
            self.finished = true;
        }
    }

    fn on_push(&mut self, mut message: Vec<u8>) {
        let parsed =
            SignalPacket::new_checked(&message[..]).and_then(|packet| SignalRepr::parse(&packet));
        message.zeroize();
        let repr = match parsed {
            Ok(repr) => repr,
            Err(e) => {
                tracing::debug!(error = %e, "dropped a malformed push from the cloud");
                return;
            }
        };
        if repr.request_id & PUSH_ID_BIT == 0 {
            // A late duplicate of a reply we no longer remember.
            tracing::trace!(request_id = repr.request_id, "dropped a stray reply");
            return;
        }
        let unix = self.unix_now();
        match repr.message {
            SignalMessage::RouteDirectionToResponder { direction_id, peer } => {
                if let Some(record) = self.pushes.iter().find(|p| p.request_id == repr.request_id) {
                    // The cloud retransmitted: our confirmation (if any) was lost.
                    if let Some(confirmation) = record.confirmation.clone() {
                        if let Err(e) = self.signaling.send_oneway(
                            Instant::now(),
                            unix,
                            &mut OsRng,
                            &confirmation,
                        ) {
                            tracing::debug!(error = %e, "could not resend a confirmation");
                        }
                    }
                    return;
                }
                if self.pushes.len() == PUSH_MEMORY {
                    self.pushes.pop_front();
                }
                self.pushes.push_back(PushRecord {
                    request_id: repr.request_id,
                    direction_id,
                    confirmation: None,
                });
                self.emit(NmsEvent::RouteDirectionToResponder { direction_id, peer });
            }
            other => {
                tracing::debug!(kind = ?other.signal_type(), "ignored an unexpected push");
            }
        }
    }

    fn on_channel_lost(&mut self) {
        tracing::debug!("cloud channel lost");
        if let Some(ready) = self.ready.take() {
            let _ = ready.send(Err(SignalingError::ChannelLost));
            // Nobody holds a handle yet: there is nothing to keep alive.
            self.finished = true;
            return;
        }
        self.emit(NmsEvent::ChannelLost);
        if self.events.is_some() {
            self.reconnect_at = Some(Instant::now() + self.reconnect_delay);
            self.reconnect_delay = (self.reconnect_delay * 2).min(self.config.max_reconnect_delay);
        }
    }

    fn emit(&mut self, event: NmsEvent) {
        let Some(events) = &self.events else {
            return;
        };
        match events.try_send(event) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(event)) => {
                // Only the kind: routes carry credentials.
                let kind = match event {
                    NmsEvent::RouteDirectionToResponder { .. } => "route direction",
                    NmsEvent::ChannelLost => "channel lost",
                    NmsEvent::Reconnected(_) => "reconnected",
                };
                tracing::warn!(kind, "event queue full; dropped an event");
            }
            // Nobody listens: fine.
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }

    /// Gives up requests whose caller stopped waiting.
    fn forget_abandoned(&mut self) {
        let abandoned: Vec<u32> = self
            .pending
            .iter()
            .filter(|(_, p)| p.reply.is_closed())
            .map(|(id, _)| *id)
            .collect();
        for id in abandoned {
            self.pending.remove(&id);
            self.signaling.cancel(id);
        }
    }

    fn fresh_id(&mut self) -> u32 {
        loop {
            let id = self.next_id;
            self.next_id = (self.next_id + 1) & !PUSH_ID_BIT;
            if id != 0 && !self.pending.contains_key(&id) {
                return id;
            }
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}
