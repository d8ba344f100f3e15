//! The node's request layer over a [`ChannelClient`]: what the host drives for each
//! cloud service.
//!
//! Requests are inner messages whose bytes 1..5 are a request id; the first inner
//! message from the cloud that carries a pending id is its reply. Requests are
//! retransmitted with exponential backoff (500 ms doubling to 8 s by default) until a
//! reply or their deadline. The channel is (re)established on demand and replaced
//! transparently: shortly before it expires, after it sealed many messages, or when
//! several retransmissions in a row got no datagram back (the cloud may have lost the
//! channel, e.g. after a restart). Pending requests then continue on the new channel.
//! Inner messages from the cloud that answer no pending request are pushes.
//!
//! Delivery is at least once: a retransmitted request may reach the cloud twice, and the
//! cloud should treat a repeated request id on one node as the same request.

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

use rand_core::{CryptoRng, RngCore};
use zeroize::Zeroizing;

use super::client::{ChannelClient, Established};
use super::{ChannelError, DropCounters, DropReason, MAX_INNER_LEN, Purpose, request_id};
use crate::time::UnixTime;
use crate::wire::channel::HELLO_MAX_LEN;
use crate::wire::{MessageType, WireError, classify};

/// Recently answered request ids kept to recognise duplicate replies.
const COMPLETED_MEMORY: usize = 64;

/// Timers of the request layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignalingConfig {
    /// First retransmission timeout of a request or hello.
    pub initial_rto: Duration,
    /// The backoff doubles up to this.
    pub max_rto: Duration,
    /// A request without a reply this long after `send_request` fails.
    pub request_timeout: Duration,
    /// A handshake without an accept this long fails (and with it the requests waiting
    /// for it).
    pub handshake_timeout: Duration,
    /// After this many transmissions of one request with nothing received on the
    /// channel since the first, the node re-handshakes.
    pub lost_after_attempts: u32,
    /// Keep a channel up even with nothing to send, so the cloud can push (the NMS
    /// channel). Otherwise channels are opened on demand and left to expire.
    pub persistent: bool,
}

impl Default for SignalingConfig {
    fn default() -> Self {
        Self {
            initial_rto: Duration::from_millis(500),
            max_rto: Duration::from_secs(8),
            request_timeout: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(30),
            lost_after_attempts: 3,
            persistent: false,
        }
    }
}

/// What happened, in order.
#[derive(Clone, PartialEq, Eq)]
pub enum Event {
    /// A channel came up (the first one or a replacement).
    Connected(Established),
    /// The reply to a request: the whole inner message.
    Reply { request_id: u32, message: Vec<u8> },
    /// An inner message from the cloud that answers no pending request.
    Push(Vec<u8>),
    /// A request got no reply before its deadline, or its channel was lost.
    RequestFailed { request_id: u32 },
    /// No handshake succeeded within the handshake timeout and no channel is up; all
    /// pending requests failed.
    ChannelLost,
}

impl fmt::Debug for Event {
    // Inner messages may carry secrets: print only their size.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Connected(e) => f.debug_tuple("Connected").field(e).finish(),
            Self::Reply {
                request_id,
                message,
            } => f
                .debug_struct("Reply")
                .field("request_id", request_id)
                .field("len", &message.len())
                .finish(),
            Self::Push(message) => f.debug_struct("Push").field("len", &message.len()).finish(),
            Self::RequestFailed { request_id } => f
                .debug_struct("RequestFailed")
                .field("request_id", request_id)
                .finish(),
            Self::ChannelLost => f.write_str("ChannelLost"),
        }
    }
}

/// Requests, retransmissions and channel upkeep for one cloud service.
pub struct Signaling {
    channel: ChannelClient,
    config: SignalingConfig,
    handshake: Option<HandshakeAttempt>,
    hello: Box<[u8; HELLO_MAX_LEN]>,
    hello_len: usize,
    hello_due: bool,
    requests: Vec<PendingRequest>,
    oneway: VecDeque<Zeroizing<Vec<u8>>>,
    completed: VecDeque<u32>,
    events: VecDeque<Event>,
    drops: DropCounters,
    /// When the caller last queued something to send.
    last_activity: Option<Instant>,
}

#[derive(Debug, Clone, Copy)]
struct HandshakeAttempt {
    started: Instant,
    next_retry: Instant,
    rto: Duration,
}

struct PendingRequest {
    id: u32,
    /// May hold a password: wiped when dropped.
    bytes: Zeroizing<Vec<u8>>,
    deadline: Instant,
    next_send: Instant,
    rto: Duration,
    /// Transmissions on the current channel.
    attempts: u32,
    /// First transmission on the current channel.
    first_sent: Option<Instant>,
}

impl fmt::Debug for Signaling {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signaling")
            .field("channel", &self.channel)
            .field("handshake", &self.handshake)
            .field(
                "pending",
                &self.requests.iter().map(|r| r.id).collect::<Vec<_>>(),
            )
            .field("oneway", &self.oneway.len())
            .field("drops", &self.drops)
            .finish_non_exhaustive()
    }
}

impl Signaling {
    pub fn new(channel: ChannelClient, config: SignalingConfig) -> Self {
        Self {
            channel,
            config,
            handshake: None,
            hello: Box::new([0; HELLO_MAX_LEN]),
            hello_len: 0,
            hello_due: false,
            requests: Vec::new(),
            oneway: VecDeque::new(),
            completed: VecDeque::new(),
            events: VecDeque::new(),
            drops: DropCounters::default(),
            last_activity: None,
        }
    }

    pub fn channel(&self) -> &ChannelClient {
        &self.channel
    }

    /// What the next hello presents, e.g. a renewed credential.
    pub fn set_purpose(&mut self, purpose: Purpose) {
        self.channel.set_purpose(purpose);
    }

    /// Opens a channel now even with nothing to send.
    pub fn connect(
        &mut self,
        now: Instant,
        unix_now: UnixTime,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<(), ChannelError> {
        if self.handshake.is_none() && !self.channel.is_established(now) {
            self.start_handshake(now, unix_now, rng)?;
        }
        Ok(())
    }

    /// Queues a request (caller-encoded; bytes 1..5 are its id, which must not be
    /// pending) and opens a channel if none is up. Returns the request id.
    pub fn send_request(
        &mut self,
        now: Instant,
        unix_now: UnixTime,
        rng: &mut (impl RngCore + CryptoRng),
        inner: &[u8],
    ) -> Result<u32, ChannelError> {
        if inner.len() > MAX_INNER_LEN {
            return Err(ChannelError::TooLong(inner.len()));
        }
        let id = request_id(inner).ok_or(ChannelError::NoRequestId)?;
        if self.requests.iter().any(|r| r.id == id) {
            return Err(ChannelError::DuplicateRequest(id));
        }
        self.completed.retain(|c| *c != id);
        self.last_activity = Some(now);
        self.requests.push(PendingRequest {
            id,
            bytes: Zeroizing::new(inner.to_vec()),
            deadline: now + self.config.request_timeout,
            next_send: now,
            rto: self.config.initial_rto,
            attempts: 0,
            first_sent: None,
        });
        self.connect(now, unix_now, rng)?;
        Ok(id)
    }

    /// Queues an inner message sent once, without retransmission (e.g. an
    /// acknowledgement of a push). It waits for a channel if none is up and is
    /// discarded if the channel is lost.
    pub fn send_oneway(
        &mut self,
        now: Instant,
        unix_now: UnixTime,
        rng: &mut (impl RngCore + CryptoRng),
        inner: &[u8],
    ) -> Result<(), ChannelError> {
        if inner.len() > MAX_INNER_LEN {
            return Err(ChannelError::TooLong(inner.len()));
        }
        self.oneway.push_back(Zeroizing::new(inner.to_vec()));
        self.last_activity = Some(now);
        self.connect(now, unix_now, rng)
    }

    /// Gives up a pending request without an event.
    pub fn cancel(&mut self, request_id: u32) -> bool {
        let before = self.requests.len();
        self.requests.retain(|r| r.id != request_id);
        before != self.requests.len()
    }

    pub fn pending_requests(&self) -> usize {
        self.requests.len()
    }

    pub fn is_connected(&self, now: Instant) -> bool {
        self.channel.is_established(now)
    }

    /// The next datagram to send to the cloud, written into `buf` (which should hold
    /// [`super::MAX_DATAGRAM_LEN`] bytes). Call until it returns `None`.
    pub fn poll_transmit(
        &mut self,
        now: Instant,
        buf: &mut [u8],
    ) -> Result<Option<usize>, ChannelError> {
        if self.hello_due {
            let len = self.hello_len;
            let available = buf.len();
            buf.get_mut(..len)
                .ok_or(WireError::BufferTooSmall {
                    needed: len,
                    available,
                })?
                .copy_from_slice(&self.hello[..len]);
            self.hello_due = false;
            return Ok(Some(len));
        }
        if !self.channel.is_established(now) {
            return Ok(None);
        }
        if let Some(request) = self
            .requests
            .iter_mut()
            .filter(|r| r.next_send <= now)
            .min_by_key(|r| r.next_send)
        {
            let len = self.channel.seal(now, &request.bytes, buf)?;
            request.attempts += 1;
            request.first_sent.get_or_insert(now);
            request.next_send = now + request.rto;
            request.rto = (request.rto * 2).min(self.config.max_rto);
            return Ok(Some(len));
        }
        if let Some(message) = self.oneway.front() {
            let len = self.channel.seal(now, message, buf)?;
            self.oneway.pop_front();
            return Ok(Some(len));
        }
        Ok(None)
    }

    /// When [`Self::handle_timeout`] should run next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        let mut consider = |t: Instant| next = Some(next.map_or(t, |n| n.min(t)));
        if let Some(attempt) = &self.handshake {
            consider(
                attempt
                    .next_retry
                    .min(attempt.started + self.config.handshake_timeout),
            );
        }
        let has_channel = self.channel.expires_at().is_some();
        for request in &self.requests {
            consider(request.deadline);
            if has_channel {
                consider(request.next_send);
            }
        }
        if self.handshake.is_none() && self.wants_replacement() {
            if let Some(at) = self.channel.rekey_at() {
                consider(at);
            }
        }
        if let Some(at) = self.channel.next_expiry() {
            consider(at);
        }
        next
    }

    /// Runs the timers: request deadlines, hello retries, re-handshakes, expiry.
    pub fn handle_timeout(
        &mut self,
        now: Instant,
        unix_now: UnixTime,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<(), ChannelError> {
        self.channel.expire(now);
        let events = &mut self.events;
        self.requests.retain(|r| {
            let alive = r.deadline > now;
            if !alive {
                events.push_back(Event::RequestFailed { request_id: r.id });
            }
            alive
        });

        if let Some(attempt) = self.handshake {
            if now >= attempt.started + self.config.handshake_timeout {
                self.give_up_handshake(now);
            } else if now >= attempt.next_retry {
                self.start_handshake(now, unix_now, rng)?;
            }
        }
        if self.handshake.is_none() {
            let replace = (self.wants_channel()
                && (!self.channel.is_established(now) || self.channel_seems_lost()))
                || (self.wants_replacement()
                    && self.channel.rekey_at().is_some_and(|at| now >= at));
            if replace {
                self.start_handshake(now, unix_now, rng)?;
            }
        }
        Ok(())
    }

    /// Processes a datagram from the cloud. Problems are counted and returned; they
    /// are never answered.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        unix_now: UnixTime,
        datagram: &mut [u8],
    ) -> Result<(), DropReason> {
        let result = self.dispatch(now, unix_now, datagram);
        if let Err(reason) = result {
            self.drops.record(reason);
        }
        result
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Datagrams dropped, per reason.
    pub fn drops(&self) -> &DropCounters {
        &self.drops
    }

    fn dispatch(
        &mut self,
        now: Instant,
        unix_now: UnixTime,
        datagram: &mut [u8],
    ) -> Result<(), DropReason> {
        match classify(datagram).map_err(DropReason::from_classify)? {
            MessageType::ChannelAccept => {
                let established = self.channel.handle_accept(now, unix_now, datagram)?;
                self.handshake = None;
                self.hello_due = false;
                for request in &mut self.requests {
                    // Requests that were never sent or seem lost go out now; others
                    // keep their timers (their replies can still arrive on the
                    // previous channel). Loss detection starts over on the new channel.
                    if request.first_sent.is_none()
                        || request.attempts >= self.config.lost_after_attempts
                    {
                        request.next_send = now;
                        request.rto = self.config.initial_rto;
                    }
                    request.attempts = 0;
                    request.first_sent = None;
                }
                self.events.push_back(Event::Connected(established));
                Ok(())
            }
            MessageType::Signal => {
                let range = self.channel.open(now, datagram)?;
                let inner = &datagram[range];
                match request_id(inner) {
                    Some(id) => {
                        if let Some(pos) = self.requests.iter().position(|r| r.id == id) {
                            self.requests.swap_remove(pos);
                            if self.completed.len() == COMPLETED_MEMORY {
                                self.completed.pop_front();
                            }
                            self.completed.push_back(id);
                            self.events.push_back(Event::Reply {
                                request_id: id,
                                message: inner.to_vec(),
                            });
                            return Ok(());
                        }
                        if self.completed.contains(&id) {
                            return Err(DropReason::Duplicate);
                        }
                        self.events.push_back(Event::Push(inner.to_vec()));
                    }
                    None => self.events.push_back(Event::Push(inner.to_vec())),
                }
                Ok(())
            }
            MessageType::CookieReply => self.channel.handle_cookie(now, datagram),
            _ => Err(DropReason::UnexpectedType),
        }
    }

    fn wants_channel(&self) -> bool {
        self.config.persistent || !self.requests.is_empty() || !self.oneway.is_empty()
    }

    /// Whether to replace the current channel before it expires: when a channel is
    /// wanted anyway, or when this one has been used (a node that talks regularly
    /// never waits for a handshake; an idle one lets its channel lapse).
    fn wants_replacement(&self) -> bool {
        self.wants_channel()
            || self
                .last_activity
                .zip(self.channel.established_at())
                .is_some_and(|(active, established)| active >= established)
    }

    /// Several transmissions of a request and nothing at all back since the first:
    /// the cloud has probably lost this channel.
    fn channel_seems_lost(&self) -> bool {
        let Some(last_received) = self.channel.last_received() else {
            return false;
        };
        self.requests.iter().any(|r| {
            r.attempts >= self.config.lost_after_attempts
                && r.first_sent.is_some_and(|first| first >= last_received)
        })
    }

    fn start_handshake(
        &mut self,
        now: Instant,
        unix_now: UnixTime,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<(), ChannelError> {
        self.hello_len = self
            .channel
            .start(now, unix_now, rng, &mut self.hello[..])?;
        self.hello_due = true;
        let attempt = match self.handshake {
            Some(previous) => {
                let rto = (previous.rto * 2).min(self.config.max_rto);
                HandshakeAttempt {
                    started: previous.started,
                    next_retry: now + rto,
                    rto,
                }
            }
            None => HandshakeAttempt {
                started: now,
                next_retry: now + self.config.initial_rto,
                rto: self.config.initial_rto,
            },
        };
        self.handshake = Some(attempt);
        Ok(())
    }

    fn give_up_handshake(&mut self, now: Instant) {
        self.handshake = None;
        self.hello_due = false;
        self.channel.abandon_handshake();
        if self.channel.is_established(now) {
            // A replacement failed but the channel in use still works; the next timer
            // tries again.
            return;
        }
        self.oneway.clear();
        for request in self.requests.drain(..) {
            self.events.push_back(Event::RequestFailed {
                request_id: request.id,
            });
        }
        self.events.push_back(Event::ChannelLost);
    }
}
