//! The state machine of one remote node (cf. boringtun's `Tunn`).
//!
//! A peer holds up to [`MAX_SESSIONS`] sessions. One of them is the *send* session;
//! all live ones accept packets until they expire (`reject_after_time`), so packets
//! in flight under an older key are never lost across a rekey. The rules:
//!
//! - A handshake we initiated yields a confirmed session that immediately becomes the
//!   send session (the response proved the responder has the keys). We keep sending
//!   on the old session until then.
//! - A handshake we answered yields an *unconfirmed* session: the initiator may not
//!   have the response yet, so we keep sending on the old session. The first packet
//!   that authenticates under the new session confirms it and, if it is newer than
//!   the send session, it becomes the send session (WireGuard's confirmation).
//! - A newer valid request makes older unconfirmed sessions dead (the initiator
//!   abandons a handshake when it retransmits), so they are dropped.
//! - Both sides may start a rekey at once. While our own handshake is pending, a
//!   request from the peer is dropped if our static key is the lower one (the peer
//!   will answer ours instead), and otherwise answered after abandoning ours. So
//!   exactly one of the two handshakes completes, and "newer session wins" makes both
//!   ends settle on it.
//!
//! Timers (all from [`TunnelConfig`]): retransmission of a TunnelRequest with
//! doubling, jittered timeouts until `rekey_attempt_time`; rekey after
//! `rekey_after_time` (the session's initiator) or `rekey_after_time +
//! keepalive_timeout + rekey_timeout` (its responder) or the message limit, checked
//! when sending; a keepalive `keepalive_timeout` after receiving data with nothing
//! sent back; a new handshake when we sent data and heard nothing for
//! `keepalive_timeout + rekey_timeout`.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand_core::{CryptoRng, RngCore};

use super::cookie::{self, COOKIE_LIFETIME};
use super::handshake::{
    ConsumedRequest, HandshakeError, InitiatorHandshake, LocalIdentity, check_negotiation,
    negotiate,
};
use super::session::{OpenError, SealError, Session};
use super::{
    Decapsulated, DropReason, EncapsulateError, Encapsulated, PeerId, TunnelConfig, TunnelStats,
};
use crate::cookie::ReceivedCookie;
use crate::credential::SignedCredential;
use crate::noise::KeyFingerprint;
use crate::time::UnixTime;
use crate::wire::MessageType;
use crate::wire::data::{DATA_HEADER_LEN, DATA_OVERHEAD, DataPacket};
use crate::wire::handshake::{CookieReplyPacket, TunnelResponsePacket};

/// Sessions a peer keeps at once: the send session, older ones still draining and
/// one unconfirmed new one, with room to spare for a simultaneous rekey.
pub const MAX_SESSIONS: usize = 4;
/// The largest inner packet: what fits in one UDP datagram after our overhead.
pub const MAX_INNER_PACKET: usize = u16::MAX as usize - DATA_OVERHEAD;

/// Something the host may want to know about a peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerEvent {
    /// A new session became the send session (first handshake or a rekey).
    Established,
    /// A handshake round got no answer within `rekey_attempt_time`; queued packets
    /// were dropped.
    HandshakeTimedOut,
    /// The peer answered our handshake but failed a check (credential, downgrade);
    /// queued packets were dropped.
    HandshakeFailed(DropReason),
    /// We sent data and heard nothing back for `keepalive_timeout + rekey_timeout`: a
    /// new handshake starts. The peer may have restarted and forgotten us, in which case
    /// it refuses the handshake until it learns the route again: the host should ask
    /// for the route again.
    Unresponsive,
}

struct PendingHandshake {
    handshake: InitiatorHandshake,
    round_started: Instant,
    attempt: u32,
    retransmit_at: Instant,
}

/// One remote node, owned by an [`super::Endpoint`].
pub struct Peer {
    id: PeerId,
    config: TunnelConfig,
    identity: Arc<LocalIdentity>,
    credential: SignedCredential,
    static_public: [u8; 32],
    sessions: [Option<Session>; MAX_SESSIONS],
    send_slot: Option<usize>,
    next_seq: u64,
    pending: Option<PendingHandshake>,
    handshake_due: bool,
    last_request_sent: u64,
    last_request_accepted: u64,
    cookie: Option<ReceivedCookie>,
    queue: VecDeque<(MessageType, Vec<u8>)>,
    spare: Vec<Vec<u8>>,
    keepalive_due: bool,
    keepalive_deadline: Option<Instant>,
    dead_peer_deadline: Option<Instant>,
    events: VecDeque<PeerEvent>,
    stats: TunnelStats,
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peer")
            .field("id", &self.id)
            .field("node", &self.credential.credential().fqdn)
            .field("static_public", &KeyFingerprint(&self.static_public))
            .field("sessions", &self.sessions.iter().flatten().count())
            .field("handshake_pending", &self.pending.is_some())
            .field("queued", &self.queue.len())
            .finish_non_exhaustive()
    }
}

impl Peer {
    pub(crate) fn new(
        id: PeerId,
        config: TunnelConfig,
        identity: Arc<LocalIdentity>,
        credential: SignedCredential,
    ) -> Self {
        let static_public = credential.credential().static_public;
        Self {
            id,
            config,
            identity,
            credential,
            static_public,
            sessions: Default::default(),
            send_slot: None,
            next_seq: 0,
            pending: None,
            handshake_due: false,
            last_request_sent: 0,
            last_request_accepted: 0,
            cookie: None,
            queue: VecDeque::new(),
            spare: Vec::new(),
            keepalive_due: false,
            keepalive_deadline: None,
            dead_peer_deadline: None,
            events: VecDeque::new(),
            stats: TunnelStats::default(),
        }
    }

    pub fn id(&self) -> PeerId {
        self.id
    }

    /// The peer's credential: the one the host added it with, replaced by the one it
    /// presented in the last successful handshake.
    pub fn credential(&self) -> &SignedCredential {
        &self.credential
    }

    pub fn static_public(&self) -> &[u8; 32] {
        &self.static_public
    }

    pub fn stats(&self) -> &TunnelStats {
        &self.stats
    }

    /// The session packets are sealed with now, if one is usable. Its `&self` seal
    /// methods let several threads seal batches at once; [`Self::encapsulate`] is the
    /// single-threaded path that also runs the rekey checks.
    pub fn send_session(&self, now: Instant) -> Option<&Session> {
        self.usable_send_slot(now)
            .and_then(|slot| self.sessions[slot].as_ref())
    }

    /// All live sessions, oldest first.
    pub fn sessions(&self) -> impl Iterator<Item = &Session> {
        let mut live: Vec<&Session> = self.sessions.iter().flatten().collect();
        live.sort_by_key(|s| s.seq);
        live.into_iter()
    }

    pub fn handshake_in_progress(&self) -> bool {
        self.pending.is_some()
    }

    /// Inner packets waiting for a session.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// Seals an inner IP packet for the peer into `out` (which needs
    /// `packet.len() + 32` bytes, and [`crate::wire::handshake::MAX_HANDSHAKE_LEN`] in
    /// case a handshake must start). Afterwards drain [`Self::poll_transmit`]: a rekey
    /// may have become due.
    pub fn encapsulate(
        &mut self,
        now: Instant,
        unix_now: UnixTime,
        rng: &mut (impl RngCore + CryptoRng),
        packet: &[u8],
        out: &mut [u8],
    ) -> Result<Encapsulated, EncapsulateError> {
        self.encapsulate_kind(MessageType::Capsule, now, unix_now, rng, packet, out)
    }

    /// Like [`Self::encapsulate`] for a control message (`wire::node` body).
    pub fn encapsulate_control(
        &mut self,
        now: Instant,
        unix_now: UnixTime,
        rng: &mut (impl RngCore + CryptoRng),
        message: &[u8],
        out: &mut [u8],
    ) -> Result<Encapsulated, EncapsulateError> {
        self.encapsulate_kind(MessageType::Control, now, unix_now, rng, message, out)
    }

    /// Seals without copying: the inner packet is at `buf[16..16 + packet_len]` and
    /// `buf` has 16 more bytes after it for the tag. On `HandshakeNeeded` the packet was
    /// copied to the queue and `buf` now holds the TunnelRequest.
    pub fn encapsulate_in_place(
        &mut self,
        now: Instant,
        unix_now: UnixTime,
        rng: &mut (impl RngCore + CryptoRng),
        buf: &mut [u8],
        packet_len: usize,
    ) -> Result<Encapsulated, EncapsulateError> {
        if packet_len > MAX_INNER_PACKET {
            return Err(EncapsulateError::PacketTooLarge(packet_len));
        }
        let needed = packet_len + DATA_OVERHEAD;
        if buf.len() < needed {
            return Err(EncapsulateError::BufferTooSmall {
                needed,
                available: buf.len(),
            });
        }
        if let Some(slot) = self.usable_send_slot(now) {
            if let Some(len) = self.seal_on(slot, now, MessageType::Capsule, buf, packet_len)? {
                return Ok(Encapsulated::Sealed(len));
            }
        }
        self.check_request_room(buf)?;
        self.enqueue(
            MessageType::Capsule,
            &buf[DATA_HEADER_LEN..DATA_HEADER_LEN + packet_len],
        );
        self.start_if_idle(now, unix_now, rng, buf)
    }

    /// Starts a new handshake now, even if a session exists (after roaming, or to
    /// measure handshakes); writes the TunnelRequest into `out`.
    pub fn initiate_handshake(
        &mut self,
        now: Instant,
        unix_now: UnixTime,
        rng: &mut (impl RngCore + CryptoRng),
        out: &mut [u8],
    ) -> Result<usize, EncapsulateError> {
        let retransmission = self.pending.is_some();
        self.send_request(now, unix_now, rng, out, retransmission)
    }

    /// The next datagram this peer wants sent: a (re)transmitted TunnelRequest, a
    /// queued packet now that a session exists, or a keepalive. Call until `None`.
    pub fn poll_transmit(
        &mut self,
        now: Instant,
        unix_now: UnixTime,
        rng: &mut (impl RngCore + CryptoRng),
        out: &mut [u8],
    ) -> Result<Option<usize>, EncapsulateError> {
        if self.handshake_due {
            let retransmission = self.pending.is_some();
            return self
                .send_request(now, unix_now, rng, out, retransmission)
                .map(Some);
        }
        let Some(slot) = self.usable_send_slot(now) else {
            return Ok(None);
        };
        if let Some((kind, packet)) = self.queue.pop_front() {
            let needed = packet.len() + DATA_OVERHEAD;
            if out.len() < needed {
                let available = out.len();
                self.queue.push_front((kind, packet));
                return Err(EncapsulateError::BufferTooSmall { needed, available });
            }
            out[DATA_HEADER_LEN..DATA_HEADER_LEN + packet.len()].copy_from_slice(&packet);
            let sealed = self.seal_on(slot, now, kind, out, packet.len());
            match sealed {
                Ok(Some(len)) => {
                    self.recycle(packet);
                    return Ok(Some(len));
                }
                other => {
                    self.queue.push_front((kind, packet));
                    return other;
                }
            }
        }
        if self.keepalive_due {
            self.keepalive_due = false;
            return self.seal_on(slot, now, MessageType::Capsule, out, 0);
        }
        Ok(None)
    }

    /// When [`Self::handle_timeout`] should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut earliest: Option<Instant> = None;
        let mut consider = |t: Instant| {
            earliest = Some(earliest.map_or(t, |e| e.min(t)));
        };
        if let Some(p) = &self.pending {
            consider(p.retransmit_at);
        }
        if let Some(t) = self.keepalive_deadline {
            consider(t);
        }
        if let Some(t) = self.dead_peer_deadline {
            consider(t);
        }
        for session in self.sessions.iter().flatten() {
            consider(session.created() + self.config.reject_after_time);
            if !session.confirmed && !self.queue.is_empty() && self.pending.is_none() {
                consider(session.created() + self.config.rekey_timeout);
            }
        }
        earliest
    }

    /// Runs the timers due at `now`; then drain [`Self::poll_transmit`].
    pub fn handle_timeout(&mut self, now: Instant) {
        for slot in 0..MAX_SESSIONS {
            let expired = self.sessions[slot]
                .as_ref()
                .is_some_and(|s| now >= s.created() + self.config.reject_after_time);
            if expired {
                self.sessions[slot] = None;
                if self.send_slot == Some(slot) {
                    self.send_slot = None;
                }
            }
        }
        if let Some(p) = &self.pending {
            if now >= p.retransmit_at {
                if now >= p.round_started + self.config.rekey_attempt_time {
                    self.give_up(PeerEvent::HandshakeTimedOut);
                    self.stats.handshake_timeouts += 1;
                } else {
                    self.handshake_due = true;
                }
            }
        }
        if self.keepalive_deadline.is_some_and(|t| now >= t) {
            self.keepalive_deadline = None;
            self.keepalive_due = self.usable_send_slot(now).is_some();
        }
        if self.dead_peer_deadline.is_some_and(|t| now >= t) {
            self.dead_peer_deadline = None;
            if self.pending.is_none() {
                self.handshake_due = true;
            }
            self.events.push_back(PeerEvent::Unresponsive);
        }
        if !self.queue.is_empty()
            && self.usable_send_slot(now).is_none()
            && self.pending.is_none()
            && !self.awaiting_confirmation(now)
        {
            self.handshake_due = true;
        }
    }

    pub fn poll_event(&mut self) -> Option<PeerEvent> {
        self.events.pop_front()
    }

    pub(crate) fn set_identity(&mut self, identity: Arc<LocalIdentity>) {
        self.identity = identity;
    }

    pub(crate) fn record_drop(&mut self, reason: &DropReason) {
        self.stats.record_drop(reason);
    }

    /// Timestamps (last sent as initiator, last accepted as responder), kept by the
    /// endpoint when the peer is removed so a re-added peer cannot be replayed to.
    pub(crate) fn timestamps(&self) -> (u64, u64) {
        (self.last_request_sent, self.last_request_accepted)
    }

    pub(crate) fn restore_timestamps(&mut self, (sent, accepted): (u64, u64)) {
        self.last_request_sent = sent;
        self.last_request_accepted = accepted;
    }

    /// A Capsule or Control datagram whose receiver index belongs to this peer.
    pub(crate) fn receive_data(
        &mut self,
        now: Instant,
        datagram: &mut [u8],
    ) -> Result<Decapsulated, DropReason> {
        let index = DataPacket::new_checked(&*datagram)?.receiver_index();
        let slot = self
            .sessions
            .iter()
            .position(|s| s.as_ref().is_some_and(|s| s.local_index() == index))
            .ok_or(DropReason::UnknownIndex)?;
        let reject_after = self.config.reject_after_time;
        let session = self.sessions[slot]
            .as_mut()
            .ok_or(DropReason::UnknownIndex)?;
        if now >= session.created() + reject_after {
            return Err(DropReason::Expired);
        }
        let (kind, range) = session.open_in_place(datagram).map_err(|e| match e {
            OpenError::Malformed(w) => w.into(),
            OpenError::WrongSession => DropReason::UnknownIndex,
            OpenError::Replay => DropReason::Replay,
            OpenError::Tampered => DropReason::Tampered,
            OpenError::Exhausted => DropReason::Expired,
        })?;
        let newly_confirmed = !session.confirmed;
        session.confirmed = true;
        let seq = session.seq;

        self.dead_peer_deadline = None;
        if newly_confirmed {
            self.stats.sessions_confirmed += 1;
            let replaces_send = match self.send_slot {
                None => true,
                Some(current) => {
                    self.usable_send_slot(now).is_none()
                        || self.sessions[current].as_ref().is_none_or(|s| s.seq < seq)
                }
            };
            if replaces_send {
                self.send_slot = Some(slot);
                self.events.push_back(PeerEvent::Established);
            }
        }
        let peer = self.id;
        let result = match kind {
            MessageType::Control => {
                self.stats.control_received += 1;
                Decapsulated::Control { peer, range }
            }
            _ if range.is_empty() => {
                self.stats.keepalives_received += 1;
                Decapsulated::Keepalive { peer }
            }
            _ => {
                self.stats.data_received += 1;
                Decapsulated::Data { peer, range }
            }
        };
        if !matches!(result, Decapsulated::Keepalive { .. }) && self.keepalive_deadline.is_none() {
            self.keepalive_deadline = Some(now + self.config.keepalive_timeout);
        }
        self.check_rekey_on_receive(now);
        Ok(result)
    }

    /// A TunnelRequest from this peer that authenticated; `out` gets the response.
    pub(crate) fn accept_request(
        &mut self,
        now: Instant,
        unix_now: UnixTime,
        rng: &mut (impl RngCore + CryptoRng),
        request: ConsumedRequest,
        out: &mut [u8],
    ) -> Result<usize, DropReason> {
        let payload = request.payload();
        if payload.timestamp <= self.last_request_accepted {
            return Err(DropReason::StaleRequest);
        }
        self.identity.verify_peer_credential(
            &payload.credential,
            unix_now,
            request.initiator_static(),
        )?;
        let suite =
            negotiate(&payload.suites, self.identity.suites()).ok_or(DropReason::NoCommonSuite)?;
        let timestamp = payload.timestamp;
        let credential = payload.credential.clone();
        let their_index = request.sender_index();
        self.last_request_accepted = timestamp;

        if self.pending.is_some() {
            if self.identity.static_public() < &self.static_public {
                // We win the tie-break: the peer will answer our request instead.
                return Err(DropReason::SimultaneousHandshake);
            }
            self.pending = None;
        }
        self.handshake_due = false;
        let index = self.allocate_index(rng);
        let (len, keys) = request.respond(&self.identity, suite, index, rng, out)?;
        let keys = keys
            .into_aead_keys(self.identity.provider(), false)
            .map_err(DropReason::Suite)?;
        // The initiator abandoned every earlier handshake when it sent this one.
        for slot in self.sessions.iter_mut() {
            if slot.as_ref().is_some_and(|s| !s.confirmed) {
                *slot = None;
            }
        }
        let seq = self.take_seq();
        let session = Session::new(
            &self.config,
            index,
            their_index,
            keys.send,
            keys.receive,
            now,
            false,
            seq,
        );
        self.insert_session(session);
        self.credential = credential;
        self.stats.responses_sent += 1;
        Ok(len)
    }

    /// A TunnelResponse whose receiver index belongs to this peer.
    pub(crate) fn receive_response(
        &mut self,
        now: Instant,
        unix_now: UnixTime,
        datagram: &mut [u8],
    ) -> Result<Decapsulated, DropReason> {
        let index = TunnelResponsePacket::new_checked(&*datagram)?.receiver_index();
        let pending = self
            .pending
            .as_ref()
            .filter(|p| p.handshake.sender_index() == index)
            .ok_or(DropReason::UnknownIndex)?;
        // Failures up to here leave the handshake pending: the datagram may be forged.
        let response = pending
            .handshake
            .consume_response(&self.identity, datagram)?;
        let checked = check_negotiation(self.identity.suites(), &response.payload)
            .and_then(|suite| {
                self.identity.verify_peer_credential(
                    &response.payload.credential,
                    unix_now,
                    &self.static_public,
                )?;
                Ok(suite)
            })
            .and_then(|suite| {
                response
                    .session_keys(suite)
                    .into_aead_keys(self.identity.provider(), true)
                    .map_err(HandshakeError::Suite)
            });
        let keys = match checked {
            Ok(keys) => keys,
            Err(e) => {
                // The peer itself answered wrongly: this round is over.
                let reason = DropReason::from(e);
                self.give_up(PeerEvent::HandshakeFailed(reason.clone()));
                return Err(reason);
            }
        };
        let seq = self.take_seq();
        let session = Session::new(
            &self.config,
            index,
            response.responder_index,
            keys.send,
            keys.receive,
            now,
            true,
            seq,
        );
        let slot = self.insert_session(session);
        self.send_slot = Some(slot);
        self.pending = None;
        self.handshake_due = false;
        self.credential = response.payload.credential;
        self.stats.handshakes_completed += 1;
        self.events.push_back(PeerEvent::Established);
        if self.queue.is_empty() {
            // The responder may only send once it sees a packet under the new keys.
            self.keepalive_due = true;
        }
        Ok(Decapsulated::Established { peer: self.id })
    }

    /// A CookieReply answering our pending request: store the cookie and retry now.
    pub(crate) fn receive_cookie_reply(
        &mut self,
        now: Instant,
        unix_now: UnixTime,
        rng: &mut (impl RngCore + CryptoRng),
        datagram: &[u8],
        out: &mut [u8],
    ) -> Result<Decapsulated, DropReason> {
        let index = CookieReplyPacket::new_checked(datagram)?.receiver_index();
        let pending = self
            .pending
            .as_ref()
            .filter(|p| p.handshake.sender_index() == index)
            .ok_or(DropReason::UnknownIndex)?;
        let cookie =
            cookie::open_cookie_reply(&self.static_public, datagram, pending.handshake.mac1())
                .ok_or(DropReason::Tampered)?;
        self.cookie = Some(ReceivedCookie::new(cookie, now));
        self.stats.cookie_replies_received += 1;
        let len = self
            .send_request(now, unix_now, rng, out, false)
            .map_err(|e| match e {
                EncapsulateError::BufferTooSmall { needed, available } => {
                    DropReason::BufferTooSmall { needed, available }
                }
                EncapsulateError::Handshake(h) => h.into(),
                EncapsulateError::Suite(s) => DropReason::Suite(s),
                EncapsulateError::PacketTooLarge(_) => {
                    DropReason::Malformed(crate::wire::WireError::Malformed("request too large"))
                }
            })?;
        Ok(Decapsulated::WriteToNetwork {
            peer: Some(self.id),
            len,
        })
    }

    fn encapsulate_kind(
        &mut self,
        kind: MessageType,
        now: Instant,
        unix_now: UnixTime,
        rng: &mut (impl RngCore + CryptoRng),
        packet: &[u8],
        out: &mut [u8],
    ) -> Result<Encapsulated, EncapsulateError> {
        if packet.len() > MAX_INNER_PACKET {
            return Err(EncapsulateError::PacketTooLarge(packet.len()));
        }
        if let Some(slot) = self.usable_send_slot(now) {
            let needed = packet.len() + DATA_OVERHEAD;
            if out.len() < needed {
                return Err(EncapsulateError::BufferTooSmall {
                    needed,
                    available: out.len(),
                });
            }
            out[DATA_HEADER_LEN..DATA_HEADER_LEN + packet.len()].copy_from_slice(packet);
            if let Some(len) = self.seal_on(slot, now, kind, out, packet.len())? {
                return Ok(Encapsulated::Sealed(len));
            }
        }
        self.check_request_room(out)?;
        self.enqueue(kind, packet);
        self.start_if_idle(now, unix_now, rng, out)
    }

    /// Seals `buf[16..16 + len]` on the session in `slot`. `None` if the session ran
    /// out of counters (the caller falls back to queueing).
    fn seal_on(
        &mut self,
        slot: usize,
        now: Instant,
        kind: MessageType,
        buf: &mut [u8],
        len: usize,
    ) -> Result<Option<usize>, EncapsulateError> {
        let Some(session) = self.sessions[slot].as_ref() else {
            return Ok(None);
        };
        let sealed = match session.seal_in_place(kind, buf, len) {
            Ok(n) => n,
            Err(SealError::Exhausted) => {
                self.handshake_due |= self.pending.is_none();
                return Ok(None);
            }
            Err(SealError::BufferTooSmall { needed, available }) => {
                return Err(EncapsulateError::BufferTooSmall { needed, available });
            }
            Err(SealError::Suite(e)) => return Err(e.into()),
        };
        self.keepalive_deadline = None;
        self.keepalive_due = false;
        match kind {
            MessageType::Control => self.stats.control_sent += 1,
            _ if len == 0 => self.stats.keepalives_sent += 1,
            _ => self.stats.data_sent += 1,
        }
        if len > 0 && self.dead_peer_deadline.is_none() {
            self.dead_peer_deadline =
                Some(now + self.config.keepalive_timeout + self.config.rekey_timeout);
        }
        self.check_rekey_on_send(now);
        Ok(Some(sealed))
    }

    fn check_rekey_on_send(&mut self, now: Instant) {
        // A session we just answered is about to replace this one: no second round.
        if self.pending.is_some() || self.handshake_due || self.awaiting_confirmation(now) {
            return;
        }
        let Some(session) = self.send_slot.and_then(|s| self.sessions[s].as_ref()) else {
            return;
        };
        let age = now.saturating_duration_since(session.created());
        let limit = if session.we_initiated() {
            self.config.rekey_after_time
        } else {
            // The session's initiator rekeys first; we step in only if it stays quiet.
            self.config.rekey_after_time + self.config.keepalive_timeout + self.config.rekey_timeout
        };
        if age >= limit || session.wants_rekey_by_count() {
            self.handshake_due = true;
        }
    }

    fn check_rekey_on_receive(&mut self, now: Instant) {
        if self.pending.is_some() || self.handshake_due {
            return;
        }
        let Some(session) = self.send_slot.and_then(|s| self.sessions[s].as_ref()) else {
            return;
        };
        // If only the peer sends, our send path never runs the time check: the
        // session's initiator renews it before the responder could no longer send.
        let limit = self
            .config
            .reject_after_time
            .saturating_sub(self.config.keepalive_timeout + self.config.rekey_timeout);
        if session.we_initiated() && now.saturating_duration_since(session.created()) >= limit {
            self.handshake_due = true;
        }
    }

    fn start_if_idle(
        &mut self,
        now: Instant,
        unix_now: UnixTime,
        rng: &mut (impl RngCore + CryptoRng),
        out: &mut [u8],
    ) -> Result<Encapsulated, EncapsulateError> {
        if self.pending.is_some() || self.awaiting_confirmation(now) {
            return Ok(Encapsulated::Queued);
        }
        let len = self.send_request(now, unix_now, rng, out, false)?;
        Ok(Encapsulated::HandshakeNeeded(len))
    }

    fn send_request(
        &mut self,
        now: Instant,
        unix_now: UnixTime,
        rng: &mut (impl RngCore + CryptoRng),
        out: &mut [u8],
        retransmission: bool,
    ) -> Result<usize, EncapsulateError> {
        let timestamp = (self.last_request_sent + 1).max(unix_now.0.saturating_mul(1000));
        let index = self.allocate_index(rng);
        let cookie = self
            .cookie
            .as_ref()
            .and_then(|c| c.fresh(now, COOKIE_LIFETIME));
        let (handshake, len) = InitiatorHandshake::start(
            &self.identity,
            &self.static_public,
            index,
            timestamp,
            cookie,
            rng,
            out,
        )?;
        self.last_request_sent = timestamp;
        let (round_started, attempt) = match &self.pending {
            Some(p) => (p.round_started, p.attempt + u32::from(retransmission)),
            None => (now, 0),
        };
        let retransmit_at = now + self.retransmit_timeout(attempt, rng);
        self.pending = Some(PendingHandshake {
            handshake,
            round_started,
            attempt,
            retransmit_at,
        });
        self.handshake_due = false;
        self.stats.requests_sent += 1;
        Ok(len)
    }

    /// `rekey_timeout * 2^attempt`, capped, plus up to 1/16 of random jitter so that
    /// peers that lost packets together do not retry in lockstep.
    fn retransmit_timeout(&self, attempt: u32, rng: &mut impl RngCore) -> Duration {
        let doubled = self
            .config
            .rekey_timeout
            .saturating_mul(1u32 << attempt.min(16));
        let base = doubled.min(self.config.rekey_timeout_max.max(self.config.rekey_timeout));
        let jitter_max = u64::try_from(base.as_nanos() / 16).unwrap_or(u64::MAX);
        let jitter = if jitter_max == 0 {
            0
        } else {
            rng.next_u64() % jitter_max
        };
        base + Duration::from_nanos(jitter)
    }

    fn give_up(&mut self, event: PeerEvent) {
        self.pending = None;
        self.handshake_due = false;
        let dropped = self.queue.len() as u64;
        self.stats.queue_dropped += dropped;
        while let Some((_, packet)) = self.queue.pop_front() {
            self.recycle(packet);
        }
        self.events.push_back(event);
    }

    fn usable_send_slot(&self, now: Instant) -> Option<usize> {
        let slot = self.send_slot?;
        let session = self.sessions[slot].as_ref()?;
        let fresh = now < session.created() + self.config.reject_after_time;
        (fresh && session.can_send()).then_some(slot)
    }

    /// True while a session we answered is young enough that its confirmation may
    /// still be on the way; starting our own handshake then would only race it.
    fn awaiting_confirmation(&self, now: Instant) -> bool {
        self.sessions
            .iter()
            .flatten()
            .any(|s| !s.confirmed && now < s.created() + self.config.rekey_timeout)
    }

    fn check_request_room(&self, out: &[u8]) -> Result<(), EncapsulateError> {
        let needed = crate::wire::handshake::REQUEST_MIN_LEN
            + 8
            + self.identity.suites().wire_len()
            + self.identity.credential().as_bytes().len();
        if out.len() < needed {
            return Err(EncapsulateError::BufferTooSmall {
                needed,
                available: out.len(),
            });
        }
        Ok(())
    }

    fn enqueue(&mut self, kind: MessageType, packet: &[u8]) {
        if self.queue.len() >= self.config.max_queued_packets.max(1) {
            if let Some((_, old)) = self.queue.pop_front() {
                self.recycle(old);
            }
            self.stats.queue_dropped += 1;
        }
        let mut buf = self.spare.pop().unwrap_or_default();
        buf.clear();
        buf.extend_from_slice(packet);
        self.queue.push_back((kind, buf));
    }

    fn recycle(&mut self, buf: Vec<u8>) {
        if self.spare.len() < self.config.max_queued_packets {
            self.spare.push(buf);
        }
    }

    fn take_seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }

    /// Picks a free session index: this peer's id in the upper 24 bits, a random
    /// byte below it.
    fn allocate_index(&self, rng: &mut impl RngCore) -> u32 {
        let in_use = |index: u32| {
            self.sessions
                .iter()
                .flatten()
                .any(|s| s.local_index() == index)
                || self
                    .pending
                    .as_ref()
                    .is_some_and(|p| p.handshake.sender_index() == index)
        };
        let start = rng.next_u32();
        (0..=255u32)
            .map(|k| (self.id.0 << 8) | (start.wrapping_add(k) & 0xff))
            .find(|index| !in_use(*index))
            .unwrap_or(self.id.0 << 8)
    }

    /// Stores a new session, evicting the oldest one that is not the send session
    /// when all slots are taken. Returns its slot.
    fn insert_session(&mut self, session: Session) -> usize {
        let slot = match self.sessions.iter().position(Option::is_none) {
            Some(free) => free,
            None => (0..MAX_SESSIONS)
                .filter(|s| Some(*s) != self.send_slot)
                .min_by_key(|s| self.sessions[*s].as_ref().map_or(0, |x| x.seq))
                .unwrap_or(0),
        };
        if self.send_slot == Some(slot) {
            self.send_slot = None;
        }
        self.sessions[slot] = Some(session);
        slot
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tunnel::handshake::tests::identity;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    fn peer(config: TunnelConfig) -> Peer {
        let me = Arc::new(identity(1, "me.cyphonic"));
        let other = identity(2, "other.cyphonic");
        Peer::new(PeerId(5), config, me, other.credential().clone())
    }

    #[test]
    fn retransmit_timeouts_double_up_to_the_cap_with_bounded_jitter() {
        let p = peer(TunnelConfig::default());
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        for (attempt, base) in [(0, 5), (1, 10), (2, 20), (3, 20), (30, 20)] {
            let t = p.retransmit_timeout(attempt, &mut rng);
            let base = Duration::from_secs(base);
            assert!(t >= base && t < base + base / 16, "{attempt}: {t:?}");
        }
    }

    #[test]
    fn indices_carry_the_peer_id_and_stay_unique() {
        let mut p = peer(TunnelConfig::default());
        let mut rng = ChaCha20Rng::seed_from_u64(2);
        let now = Instant::now();
        let mut out = [0u8; 1024];
        let mut seen = std::collections::HashSet::new();
        for _ in 0..50 {
            p.initiate_handshake(now, UnixTime(5_000), &mut rng, &mut out)
                .unwrap();
            let index = p.pending.as_ref().unwrap().handshake.sender_index();
            assert_eq!(index >> 8, 5);
            seen.insert(index);
        }
        assert!(seen.len() > 30);
    }

    #[test]
    fn request_timestamps_strictly_increase() {
        let mut p = peer(TunnelConfig::default());
        let mut rng = ChaCha20Rng::seed_from_u64(3);
        let now = Instant::now();
        let mut out = [0u8; 1024];
        let mut last = 0;
        for unix in [5_000, 5_000, 4_000, 6_000] {
            p.initiate_handshake(now, UnixTime(unix), &mut rng, &mut out)
                .unwrap();
            let ts = p.pending.as_ref().unwrap().handshake.timestamp();
            assert!(ts > last);
            assert!(ts >= unix * 1000 || ts == last + 1);
            last = ts;
        }
        assert_eq!(last, 6_000_000);
    }

    #[test]
    fn queue_is_bounded_and_handshake_starts_once() {
        let mut p = peer(TunnelConfig {
            max_queued_packets: 3,
            ..TunnelConfig::default()
        });
        let mut rng = ChaCha20Rng::seed_from_u64(4);
        let now = Instant::now();
        let mut out = [0u8; 1024];
        let first = p
            .encapsulate(now, UnixTime(5_000), &mut rng, b"one", &mut out)
            .unwrap();
        assert!(matches!(first, Encapsulated::HandshakeNeeded(n) if n > 300));
        for packet in [&b"two"[..], b"three", b"four"] {
            assert_eq!(
                p.encapsulate(now, UnixTime(5_000), &mut rng, packet, &mut out)
                    .unwrap(),
                Encapsulated::Queued
            );
        }
        assert_eq!(p.queued(), 3);
        assert_eq!(p.stats().queue_dropped, 1);
        assert_eq!(
            p.poll_transmit(now, UnixTime(5_000), &mut rng, &mut out),
            Ok(None)
        );
        assert!(matches!(
            p.encapsulate(now, UnixTime(5_000), &mut rng, b"x", &mut out[..100]),
            Err(EncapsulateError::BufferTooSmall { .. })
        ));
        assert!(matches!(
            p.encapsulate(now, UnixTime(5_000), &mut rng, &vec![0; 70_000], &mut out),
            Err(EncapsulateError::PacketTooLarge(70_000))
        ));
    }

    #[test]
    fn handshake_gives_up_after_the_attempt_time() {
        let config = TunnelConfig::default();
        let mut p = peer(config.clone());
        let mut rng = ChaCha20Rng::seed_from_u64(5);
        let start = Instant::now();
        let mut now = start;
        let mut out = [0u8; 1024];
        p.encapsulate(now, UnixTime(5_000), &mut rng, b"lost", &mut out)
            .unwrap();
        let mut sent_at = vec![now];
        while let Some(t) = p.poll_timeout() {
            now = t;
            p.handle_timeout(now);
            while p
                .poll_transmit(now, UnixTime(5_000), &mut rng, &mut out)
                .unwrap()
                .is_some()
            {
                sent_at.push(now);
            }
            if !p.handshake_in_progress() {
                break;
            }
        }
        assert_eq!(p.poll_event(), Some(PeerEvent::HandshakeTimedOut));
        assert_eq!(p.queued(), 0);
        assert_eq!(p.stats().queue_dropped, 1);
        assert_eq!(p.stats().handshake_timeouts, 1);
        // 0, ~5, ~15, ~35, ~55, ~75 s, then the give-up at the next deadline (~95 s).
        assert_eq!(sent_at.len(), 6, "{sent_at:?}");
        let gave_up = now.duration_since(start);
        assert!(gave_up >= config.rekey_attempt_time && gave_up < Duration::from_secs(105));
        assert_eq!(p.poll_timeout(), None);
    }
}
