//! One session: the pair of directional keys a handshake produced, the send counter
//! and the receive replay window.
//!
//! Sending needs only `&self`: the counter is an [`AtomicU64`], so several threads can
//! seal at once, and a batch reserves a whole range of counters with one `fetch_add`
//! ([`Session::reserve`]). Every counter is handed out once, so no nonce repeats under
//! a key. Receiving needs `&mut self` for the replay window: the window is consulted
//! before decryption (cheap rejection of replays) and updated only after the tag
//! verified (so forged packets cannot move it).

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use crate::replay::ReplayWindow;
use crate::suite::{AeadKey, SuiteError, SuiteId, nonce_for_counter};
use crate::wire::data::{DATA_HEADER_LEN, DATA_OVERHEAD, DataHeaderRepr, DataPacket};
use crate::wire::{MessageType, WireError};

use super::TunnelConfig;

/// Messages a suite may seal under one key before the keys must be replaced, when the
/// suite is weaker than the configured limit. AES-based suites (GCM and CTR) lose
/// confidentiality margin with the number of blocks encrypted; with full-size
/// packets (~95 blocks) the AEAD-limits analysis gives about 2^29 packets for a
/// 2^-57 advantage, so they rekey at 2^28 and refuse at 2^29. ChaCha20-Poly1305 has
/// no such bound below the configured 2^60.
pub fn suite_message_limits(suite: SuiteId) -> Option<(u64, u64)> {
    match suite {
        SuiteId::AES_256_GCM | SuiteId::AES_256_CTR_HMAC_SHA256 => Some((1 << 28, 1 << 29)),
        _ => None,
    }
}

/// Why a packet could not be sealed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("output buffer too small: need {needed} bytes, have {available}")]
    BufferTooSmall { needed: usize, available: usize },
    #[error("the session has used up its counters; a new handshake is needed")]
    Exhausted,
    #[error("crypto suite failed: {0}")]
    Suite(#[from] SuiteError),
}

/// Why a received data packet was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    #[error("malformed data packet: {0}")]
    Malformed(WireError),
    #[error("packet is for another session")]
    WrongSession,
    #[error("counter already seen or too old")]
    Replay,
    #[error("authentication failed")]
    Tampered,
    #[error("counter beyond the session's limit")]
    Exhausted,
}

/// A session's keys, counters and bookkeeping.
#[derive(Debug)]
pub struct Session {
    local_index: u32,
    remote_index: u32,
    suite: SuiteId,
    send_key: Arc<dyn AeadKey>,
    recv_key: Arc<dyn AeadKey>,
    send_counter: AtomicU64,
    replay: ReplayWindow,
    created: Instant,
    we_initiated: bool,
    rekey_after_messages: u64,
    reject_after_messages: u64,
    received: u64,
    /// For responder sessions: true once the initiator has sent under it.
    pub(crate) confirmed: bool,
    /// Creation order within a peer; the newer session wins when both sides rekeyed.
    pub(crate) seq: u64,
}

impl Session {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        config: &TunnelConfig,
        local_index: u32,
        remote_index: u32,
        send_key: Arc<dyn AeadKey>,
        recv_key: Arc<dyn AeadKey>,
        created: Instant,
        we_initiated: bool,
        seq: u64,
    ) -> Self {
        let suite = send_key.suite();
        let (mut rekey, mut reject) = (config.rekey_after_messages, config.reject_after_messages);
        if let Some((suite_rekey, suite_reject)) = suite_message_limits(suite) {
            rekey = rekey.min(suite_rekey);
            reject = reject.min(suite_reject);
        }
        Self {
            local_index,
            remote_index,
            suite,
            send_key,
            recv_key,
            send_counter: AtomicU64::new(0),
            replay: ReplayWindow::new(),
            created,
            we_initiated,
            rekey_after_messages: rekey,
            // The replay window can never accept u64::MAX.
            reject_after_messages: reject.min(u64::MAX - 1),
            received: 0,
            confirmed: we_initiated,
            seq,
        }
    }

    /// The index the peer puts in packets for this session.
    pub fn local_index(&self) -> u32 {
        self.local_index
    }

    /// The index we put in packets for the peer.
    pub fn remote_index(&self) -> u32 {
        self.remote_index
    }

    pub fn suite(&self) -> SuiteId {
        self.suite
    }

    pub fn created(&self) -> Instant {
        self.created
    }

    /// True if we sent the TunnelRequest that made this session.
    pub fn we_initiated(&self) -> bool {
        self.we_initiated
    }

    /// Counters handed out so far (packets sealed, or reserved for a batch).
    pub fn messages_sent(&self) -> u64 {
        self.send_counter.load(Ordering::Relaxed)
    }

    pub fn messages_received(&self) -> u64 {
        self.received
    }

    /// True once enough messages were sent that a rekey should start.
    pub fn wants_rekey_by_count(&self) -> bool {
        self.messages_sent() >= self.rekey_after_messages
    }

    /// True while counters remain below the hard limit.
    pub fn can_send(&self) -> bool {
        self.messages_sent() < self.reject_after_messages
    }

    /// Reserves `count` consecutive counters for a batch sealed from any thread.
    pub fn reserve(&self, count: u64) -> Result<SealBatch<'_>, SealError> {
        // A compare-and-swap loop rather than a bare fetch_add: a refused reservation
        // must not move the counter, or enough of them could wrap it around.
        let limit = self.reject_after_messages;
        let start = self
            .send_counter
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |next| {
                next.checked_add(count).filter(|end| *end <= limit)
            })
            .map_err(|_| SealError::Exhausted)?;
        Ok(SealBatch {
            session: self,
            counters: start..start + count,
        })
    }

    /// Seals `buf[16..16 + payload_len]` in place: writes the header in front and the
    /// tag behind; returns the datagram length (`payload_len + 32`).
    pub fn seal_in_place(
        &self,
        kind: MessageType,
        buf: &mut [u8],
        payload_len: usize,
    ) -> Result<usize, SealError> {
        check_room(buf, payload_len)?;
        self.reserve(1)?.seal_in_place(kind, buf, payload_len)
    }

    /// Copies `payload` behind a header in `out` and seals it.
    pub fn seal(
        &self,
        kind: MessageType,
        payload: &[u8],
        out: &mut [u8],
    ) -> Result<usize, SealError> {
        check_room(out, payload.len())?;
        out[DATA_HEADER_LEN..DATA_HEADER_LEN + payload.len()].copy_from_slice(payload);
        self.seal_in_place(kind, out, payload.len())
    }

    /// Opens a data packet for this session in place and returns its type and the
    /// plaintext range within `datagram`.
    pub fn open_in_place(
        &mut self,
        datagram: &mut [u8],
    ) -> Result<(MessageType, Range<usize>), OpenError> {
        let packet = DataPacket::new_checked(&*datagram).map_err(OpenError::Malformed)?;
        if packet.receiver_index() != self.local_index {
            return Err(OpenError::WrongSession);
        }
        let counter = packet.counter();
        let kind = packet.kind();
        if counter >= self.reject_after_messages {
            return Err(OpenError::Exhausted);
        }
        if !self.replay.may_accept(counter) {
            return Err(OpenError::Replay);
        }
        let (header, sealed) = datagram.split_at_mut(DATA_HEADER_LEN);
        let len = self
            .recv_key
            .open_in_place(&nonce_for_counter(counter), header, sealed)
            .map_err(|_| OpenError::Tampered)?;
        if !self.replay.accept(counter) {
            return Err(OpenError::Replay);
        }
        self.received += 1;
        Ok((kind, DATA_HEADER_LEN..DATA_HEADER_LEN + len))
    }
}

fn check_room(buf: &[u8], payload_len: usize) -> Result<(), SealError> {
    let needed = payload_len + DATA_OVERHEAD;
    if buf.len() < needed {
        return Err(SealError::BufferTooSmall {
            needed,
            available: buf.len(),
        });
    }
    Ok(())
}

/// A range of counters reserved from one session; each is used at most once.
#[derive(Debug)]
pub struct SealBatch<'a> {
    session: &'a Session,
    counters: Range<u64>,
}

impl SealBatch<'_> {
    /// Counters left in this batch.
    pub fn remaining(&self) -> u64 {
        self.counters.end - self.counters.start
    }

    /// Seals `buf[16..16 + payload_len]` in place with the batch's next counter.
    pub fn seal_in_place(
        &mut self,
        kind: MessageType,
        buf: &mut [u8],
        payload_len: usize,
    ) -> Result<usize, SealError> {
        check_room(buf, payload_len)?;
        let counter = self.counters.next().ok_or(SealError::Exhausted)?;
        let header = DataHeaderRepr {
            kind,
            receiver_index: self.session.remote_index,
            counter,
        };
        header.emit(buf).map_err(|_| SealError::BufferTooSmall {
            needed: DATA_HEADER_LEN,
            available: buf.len(),
        })?;
        let (header, body) = buf.split_at_mut(DATA_HEADER_LEN);
        let sealed = self.session.send_key.seal_in_place(
            &nonce_for_counter(counter),
            header,
            body,
            payload_len,
        )?;
        Ok(DATA_HEADER_LEN + sealed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::suite::SuiteProvider;
    use crate::suite::software::SoftwareSuites;

    fn pair(config: &TunnelConfig, suite: SuiteId) -> (Session, Session) {
        let k1 = SoftwareSuites.new_key(suite, &[1; 32]).unwrap();
        let k2 = SoftwareSuites.new_key(suite, &[2; 32]).unwrap();
        let now = Instant::now();
        let a = Session::new(config, 0x100, 0x200, k1.clone(), k2.clone(), now, true, 0);
        let b = Session::new(config, 0x200, 0x100, k2, k1, now, false, 0);
        (a, b)
    }

    #[test]
    fn seal_open_and_reject_replays() {
        let (a, mut b) = pair(&TunnelConfig::default(), SuiteId::CHACHA20_POLY1305);
        let mut buf = [0u8; 64];
        let n = a
            .seal(MessageType::Capsule, b"ip packet", &mut buf)
            .unwrap();
        assert_eq!(n, 9 + 32);
        assert_eq!(&buf[..8], &[1, 0x13, 0, 0, 0, 0, 2, 0]);
        let mut replayed = buf;
        let (kind, range) = b.open_in_place(&mut buf[..n]).unwrap();
        assert_eq!(kind, MessageType::Capsule);
        assert_eq!(&buf[range], b"ip packet");
        assert_eq!(b.open_in_place(&mut replayed[..n]), Err(OpenError::Replay));
        assert_eq!(b.messages_received(), 1);
    }

    #[test]
    fn tampering_with_any_byte_is_detected_without_moving_the_window() {
        let (a, mut b) = pair(&TunnelConfig::default(), SuiteId::AES_256_GCM);
        let mut buf = [0u8; 64];
        let n = a.seal(MessageType::Control, b"ctl", &mut buf).unwrap();
        for i in 0..n {
            let mut m = buf;
            m[i] ^= 0x04;
            assert!(b.open_in_place(&mut m[..n]).is_err(), "byte {i}");
        }
        assert_eq!(
            b.open_in_place(&mut buf[..n]).unwrap().0,
            MessageType::Control
        );
    }

    #[test]
    fn batches_reserve_disjoint_counters_and_reorder_is_accepted() {
        let (a, mut b) = pair(&TunnelConfig::default(), SuiteId::CHACHA20_POLY1305);
        let mut batch1 = a.reserve(3).unwrap();
        let mut batch2 = a.reserve(2).unwrap();
        assert_eq!(a.messages_sent(), 5);
        let mut packets = Vec::new();
        for batch in [&mut batch2, &mut batch1] {
            while batch.remaining() > 0 {
                let mut buf = vec![0u8; 40];
                buf[16..20].copy_from_slice(b"abcd");
                let n = batch
                    .seal_in_place(MessageType::Capsule, &mut buf, 4)
                    .unwrap();
                buf.truncate(n);
                packets.push(buf);
            }
        }
        assert_eq!(
            batch1.seal_in_place(MessageType::Capsule, &mut [0u8; 40], 4),
            Err(SealError::Exhausted)
        );
        let mut counters: Vec<u64> = packets
            .iter()
            .map(|p| DataPacket::new_checked(&p[..]).unwrap().counter())
            .collect();
        counters.sort_unstable();
        assert_eq!(counters, vec![0, 1, 2, 3, 4]);
        for mut p in packets {
            assert!(b.open_in_place(&mut p).is_ok());
        }
    }

    #[test]
    fn counters_are_limited() {
        let config = TunnelConfig {
            rekey_after_messages: 2,
            reject_after_messages: 3,
            ..TunnelConfig::default()
        };
        let (a, mut b) = pair(&config, SuiteId::CHACHA20_POLY1305);
        let mut buf = [0u8; 40];
        for sent in 0..3 {
            assert_eq!(a.wants_rekey_by_count(), sent >= 2);
            let n = a.seal(MessageType::Capsule, b"x", &mut buf).unwrap();
            b.open_in_place(&mut buf[..n]).unwrap();
        }
        assert!(a.wants_rekey_by_count());
        assert!(matches!(a.reserve(u64::MAX), Err(SealError::Exhausted)));
        assert_eq!(a.messages_sent(), 3);
        assert!(!a.can_send());
        assert_eq!(
            a.seal(MessageType::Capsule, b"x", &mut buf),
            Err(SealError::Exhausted)
        );
        // A forged header with a counter past the limit is refused before decryption.
        let mut forged = [0u8; 40];
        DataHeaderRepr {
            kind: MessageType::Capsule,
            receiver_index: 0x200,
            counter: 3,
        }
        .emit(&mut forged)
        .unwrap();
        assert_eq!(b.open_in_place(&mut forged), Err(OpenError::Exhausted));
    }

    #[test]
    fn aes_suites_have_lower_limits() {
        let (a, _) = pair(&TunnelConfig::default(), SuiteId::AES_256_GCM);
        assert_eq!(a.rekey_after_messages, 1 << 28);
        let (c, _) = pair(&TunnelConfig::default(), SuiteId::CHACHA20_POLY1305);
        assert_eq!(c.rekey_after_messages, 1 << 60);
    }

    #[test]
    fn wrong_session_and_small_buffers() {
        let (a, _) = pair(&TunnelConfig::default(), SuiteId::CHACHA20_POLY1305);
        let (_, mut other) = pair(&TunnelConfig::default(), SuiteId::CHACHA20_POLY1305);
        let mut buf = [0u8; 40];
        let n = a.seal(MessageType::Capsule, b"x", &mut buf).unwrap();
        let mut wrong = buf;
        wrong[7] = 9;
        assert_eq!(
            other.open_in_place(&mut wrong[..n]),
            Err(OpenError::WrongSession)
        );
        assert!(matches!(
            a.seal(MessageType::Capsule, &[0u8; 20], &mut [0u8; 51]),
            Err(SealError::BufferTooSmall { needed: 52, .. })
        ));
        assert!(matches!(
            other.open_in_place(&mut buf[..20]),
            Err(OpenError::Malformed(WireError::Truncated))
        ));
    }
}
