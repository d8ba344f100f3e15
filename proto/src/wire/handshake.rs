//! The node-to-node tunnel handshake messages: [`MessageType::TunnelRequest`],
//! [`MessageType::TunnelResponse`] and [`MessageType::CookieReply`], and the plaintext
//! payloads the first two carry inside their Noise ciphertext.
//!
//! The cryptography (Noise IK, mac1/mac2, the cookie) lives in `tunnel`; this module
//! only knows where the bytes are.
//!
//! ```text
//! TunnelRequest                         TunnelResponse
//!  0 version, type 0x10, reserved(2)     0 version, type 0x11, reserved(2)
//!  4 sender index          4             4 sender index          4
//!  8 ephemeral            32             8 receiver index        4
//! 40 encrypted static  32+16            12 ephemeral            32
//! 88 encrypted payload  n+16            44 encrypted payload  n+16
//! .. mac1                 16            .. mac1                 16
//! .. mac2                 16            .. mac2                 16
//!
//! CookieReply (64 bytes)
//!  0 version, type 0x12, reserved(2)
//!  4 receiver index        4
//!  8 nonce                24
//! 32 encrypted cookie  16+16
//! ```
//!
//! Request payload: timestamp (u64 ms) | suite count (u8, 1..=8) | suites (u16 each) |
//! signed credential. Response payload: chosen suite (u16) | suite count | suites |
//! signed credential. Both end exactly where the credential ends.

use super::{MessageType, Reader, VERSION, WireError, Writer};
use crate::credential::{CREDENTIAL_FIXED_LEN, CredentialError, SignedCredential};
use crate::suite::{SuiteId, TAG_LEN};
use crate::wire::Fqdn;

/// Bytes of a MAC field (mac1, mac2).
pub const MAC_LEN: usize = 16;
/// Bytes of an X25519 public key.
pub const KEY_LEN: usize = 32;
/// Bytes of the encrypted static key in a request: key + tag.
pub const ENCRYPTED_STATIC_LEN: usize = KEY_LEN + TAG_LEN;
/// Offset of the encrypted payload in a request.
pub const REQUEST_PAYLOAD_OFFSET: usize = 88;
/// Offset of the encrypted payload in a response.
pub const RESPONSE_PAYLOAD_OFFSET: usize = 44;
/// Shortest well-formed request (empty payload); real ones are longer.
pub const REQUEST_MIN_LEN: usize = REQUEST_PAYLOAD_OFFSET + TAG_LEN + 2 * MAC_LEN;
/// Shortest well-formed response (empty payload); real ones are longer.
pub const RESPONSE_MIN_LEN: usize = RESPONSE_PAYLOAD_OFFSET + TAG_LEN + 2 * MAC_LEN;
/// Largest plaintext request payload: 8 suites and a 253-byte name.
pub const REQUEST_PAYLOAD_MAX_LEN: usize =
    8 + 1 + 2 * SuiteList::MAX + CREDENTIAL_FIXED_LEN + Fqdn::MAX_LEN;
/// Largest plaintext response payload.
pub const RESPONSE_PAYLOAD_MAX_LEN: usize =
    2 + 1 + 2 * SuiteList::MAX + CREDENTIAL_FIXED_LEN + Fqdn::MAX_LEN;
pub const REQUEST_MAX_LEN: usize = REQUEST_MIN_LEN + REQUEST_PAYLOAD_MAX_LEN;
pub const RESPONSE_MAX_LEN: usize = RESPONSE_MIN_LEN + RESPONSE_PAYLOAD_MAX_LEN;
/// The largest handshake datagram; an output buffer of this size always suffices.
pub const MAX_HANDSHAKE_LEN: usize = REQUEST_MAX_LEN;
/// Bytes of the XChaCha20 nonce in a cookie reply.
pub const COOKIE_NONCE_LEN: usize = 24;
/// Bytes of a cookie.
pub const COOKIE_LEN: usize = 16;
/// Bytes of a cookie reply.
pub const COOKIE_REPLY_LEN: usize = 8 + COOKIE_NONCE_LEN + COOKIE_LEN + TAG_LEN;

fn be_u32(bytes: &[u8]) -> u32 {
    let mut raw = [0u8; 4];
    raw.copy_from_slice(&bytes[..4]);
    u32::from_be_bytes(raw)
}

fn check_common(data: &[u8], kind: MessageType, min: usize, max: usize) -> Result<(), WireError> {
    super::check_prefix(data, kind)?;
    if data.len() < min {
        return Err(WireError::Truncated);
    }
    if data.len() > max {
        return Err(WireError::TrailingBytes(data.len() - max));
    }
    if data[2..4] != [0, 0] {
        return Err(WireError::Malformed("handshake reserved field"));
    }
    Ok(())
}

fn write_prefix(data: &mut [u8], kind: MessageType) {
    data[0] = VERSION;
    data[1] = kind as u8;
    data[2] = 0;
    data[3] = 0;
}

/// A checked zero-copy view of a TunnelRequest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TunnelRequestPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> TunnelRequestPacket<T> {
    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// Checks the prefix, the reserved field and that the length lies between the
    /// shortest and the longest possible request.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        check_common(
            buffer.as_ref(),
            MessageType::TunnelRequest,
            REQUEST_MIN_LEN,
            REQUEST_MAX_LEN,
        )?;
        Ok(Self { buffer })
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    pub fn len(&self) -> usize {
        self.buffer.as_ref().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn sender_index(&self) -> u32 {
        be_u32(&self.buffer.as_ref()[4..8])
    }

    pub fn ephemeral(&self) -> &[u8] {
        &self.buffer.as_ref()[8..40]
    }

    pub fn encrypted_static(&self) -> &[u8] {
        &self.buffer.as_ref()[40..REQUEST_PAYLOAD_OFFSET]
    }

    /// Payload ciphertext followed by its tag.
    pub fn encrypted_payload(&self) -> &[u8] {
        &self.buffer.as_ref()[REQUEST_PAYLOAD_OFFSET..self.mac1_offset()]
    }

    pub fn mac1(&self) -> &[u8] {
        let at = self.mac1_offset();
        &self.buffer.as_ref()[at..at + MAC_LEN]
    }

    pub fn mac2(&self) -> &[u8] {
        &self.buffer.as_ref()[self.mac2_offset()..]
    }

    /// Offset of mac1: the bytes before it are what mac1 covers.
    pub fn mac1_offset(&self) -> usize {
        self.len() - 2 * MAC_LEN
    }

    /// Offset of mac2: the bytes before it are what mac2 covers.
    pub fn mac2_offset(&self) -> usize {
        self.len() - MAC_LEN
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> TunnelRequestPacket<T> {
    /// Writes version, type and the zero reserved field.
    pub fn fill_prefix(&mut self) {
        write_prefix(self.buffer.as_mut(), MessageType::TunnelRequest);
    }

    pub fn set_sender_index(&mut self, index: u32) {
        self.buffer.as_mut()[4..8].copy_from_slice(&index.to_be_bytes());
    }

    pub fn ephemeral_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[8..40]
    }

    pub fn encrypted_static_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[40..REQUEST_PAYLOAD_OFFSET]
    }

    pub fn encrypted_payload_mut(&mut self) -> &mut [u8] {
        let end = self.mac1_offset();
        &mut self.buffer.as_mut()[REQUEST_PAYLOAD_OFFSET..end]
    }

    pub fn mac1_mut(&mut self) -> &mut [u8] {
        let at = self.mac1_offset();
        &mut self.buffer.as_mut()[at..at + MAC_LEN]
    }

    pub fn mac2_mut(&mut self) -> &mut [u8] {
        let at = self.mac2_offset();
        &mut self.buffer.as_mut()[at..]
    }
}

/// A parsed TunnelRequest. The ciphertexts stay opaque here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelRequestRepr<'a> {
    pub sender_index: u32,
    pub ephemeral: [u8; KEY_LEN],
    pub encrypted_static: [u8; ENCRYPTED_STATIC_LEN],
    pub encrypted_payload: &'a [u8],
    pub mac1: [u8; MAC_LEN],
    pub mac2: [u8; MAC_LEN],
}

impl<'a> TunnelRequestRepr<'a> {
    pub fn parse<T: AsRef<[u8]> + ?Sized>(
        packet: &TunnelRequestPacket<&'a T>,
    ) -> Result<Self, WireError> {
        let checked = TunnelRequestPacket::new_checked(packet.buffer.as_ref())?;
        let mut r = Reader::new(checked.buffer);
        r.bytes(4)?;
        let sender_index = r.u32()?;
        let ephemeral = r.array()?;
        let encrypted_static = r.array()?;
        let encrypted_payload = r.bytes(checked.mac1_offset() - REQUEST_PAYLOAD_OFFSET)?;
        let mac1 = r.array()?;
        let mac2 = r.array()?;
        r.finish()?;
        Ok(Self {
            sender_index,
            ephemeral,
            encrypted_static,
            encrypted_payload,
            mac1,
            mac2,
        })
    }

    pub fn buffer_len(&self) -> usize {
        REQUEST_PAYLOAD_OFFSET + self.encrypted_payload.len() + 2 * MAC_LEN
    }

    pub fn emit(&self, buf: &mut [u8]) -> Result<usize, WireError> {
        let len = self.buffer_len();
        if !(REQUEST_MIN_LEN..=REQUEST_MAX_LEN).contains(&len) {
            return Err(WireError::Malformed("request payload length"));
        }
        let mut w = Writer::with_len(buf, len)?;
        w.prefix(MessageType::TunnelRequest)?;
        w.u16(0)?;
        w.u32(self.sender_index)?;
        w.bytes(&self.ephemeral)?;
        w.bytes(&self.encrypted_static)?;
        w.bytes(self.encrypted_payload)?;
        w.bytes(&self.mac1)?;
        w.bytes(&self.mac2)?;
        Ok(w.position())
    }
}

/// A checked zero-copy view of a TunnelResponse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TunnelResponsePacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> TunnelResponsePacket<T> {
    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        check_common(
            buffer.as_ref(),
            MessageType::TunnelResponse,
            RESPONSE_MIN_LEN,
            RESPONSE_MAX_LEN,
        )?;
        Ok(Self { buffer })
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    pub fn len(&self) -> usize {
        self.buffer.as_ref().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn sender_index(&self) -> u32 {
        be_u32(&self.buffer.as_ref()[4..8])
    }

    pub fn receiver_index(&self) -> u32 {
        be_u32(&self.buffer.as_ref()[8..12])
    }

    pub fn ephemeral(&self) -> &[u8] {
        &self.buffer.as_ref()[12..RESPONSE_PAYLOAD_OFFSET]
    }

    pub fn encrypted_payload(&self) -> &[u8] {
        &self.buffer.as_ref()[RESPONSE_PAYLOAD_OFFSET..self.mac1_offset()]
    }

    pub fn mac1(&self) -> &[u8] {
        let at = self.mac1_offset();
        &self.buffer.as_ref()[at..at + MAC_LEN]
    }

    pub fn mac2(&self) -> &[u8] {
        &self.buffer.as_ref()[self.mac2_offset()..]
    }

    pub fn mac1_offset(&self) -> usize {
        self.len() - 2 * MAC_LEN
    }

    pub fn mac2_offset(&self) -> usize {
        self.len() - MAC_LEN
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> TunnelResponsePacket<T> {
    pub fn fill_prefix(&mut self) {
        write_prefix(self.buffer.as_mut(), MessageType::TunnelResponse);
    }

    pub fn set_sender_index(&mut self, index: u32) {
        self.buffer.as_mut()[4..8].copy_from_slice(&index.to_be_bytes());
    }

    pub fn set_receiver_index(&mut self, index: u32) {
        self.buffer.as_mut()[8..12].copy_from_slice(&index.to_be_bytes());
    }

    pub fn ephemeral_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[12..RESPONSE_PAYLOAD_OFFSET]
    }

    pub fn encrypted_payload_mut(&mut self) -> &mut [u8] {
        let end = self.mac1_offset();
        &mut self.buffer.as_mut()[RESPONSE_PAYLOAD_OFFSET..end]
    }

    pub fn mac1_mut(&mut self) -> &mut [u8] {
        let at = self.mac1_offset();
        &mut self.buffer.as_mut()[at..at + MAC_LEN]
    }

    pub fn mac2_mut(&mut self) -> &mut [u8] {
        let at = self.mac2_offset();
        &mut self.buffer.as_mut()[at..]
    }
}

/// A parsed TunnelResponse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelResponseRepr<'a> {
    pub sender_index: u32,
    pub receiver_index: u32,
    pub ephemeral: [u8; KEY_LEN],
    pub encrypted_payload: &'a [u8],
    pub mac1: [u8; MAC_LEN],
    pub mac2: [u8; MAC_LEN],
}

impl<'a> TunnelResponseRepr<'a> {
    pub fn parse<T: AsRef<[u8]> + ?Sized>(
        packet: &TunnelResponsePacket<&'a T>,
    ) -> Result<Self, WireError> {
        let checked = TunnelResponsePacket::new_checked(packet.buffer.as_ref())?;
        let mut r = Reader::new(checked.buffer);
        r.bytes(4)?;
        let sender_index = r.u32()?;
        let receiver_index = r.u32()?;
        let ephemeral = r.array()?;
        let encrypted_payload = r.bytes(checked.mac1_offset() - RESPONSE_PAYLOAD_OFFSET)?;
        let mac1 = r.array()?;
        let mac2 = r.array()?;
        r.finish()?;
        Ok(Self {
            sender_index,
            receiver_index,
            ephemeral,
            encrypted_payload,
            mac1,
            mac2,
        })
    }

    pub fn buffer_len(&self) -> usize {
        RESPONSE_PAYLOAD_OFFSET + self.encrypted_payload.len() + 2 * MAC_LEN
    }

    pub fn emit(&self, buf: &mut [u8]) -> Result<usize, WireError> {
        let len = self.buffer_len();
        if !(RESPONSE_MIN_LEN..=RESPONSE_MAX_LEN).contains(&len) {
            return Err(WireError::Malformed("response payload length"));
        }
        let mut w = Writer::with_len(buf, len)?;
        w.prefix(MessageType::TunnelResponse)?;
        w.u16(0)?;
        w.u32(self.sender_index)?;
        w.u32(self.receiver_index)?;
        w.bytes(&self.ephemeral)?;
        w.bytes(self.encrypted_payload)?;
        w.bytes(&self.mac1)?;
        w.bytes(&self.mac2)?;
        Ok(w.position())
    }
}

/// A checked zero-copy view of a CookieReply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CookieReplyPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> CookieReplyPacket<T> {
    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        check_common(
            buffer.as_ref(),
            MessageType::CookieReply,
            COOKIE_REPLY_LEN,
            COOKIE_REPLY_LEN,
        )?;
        Ok(Self { buffer })
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    pub fn receiver_index(&self) -> u32 {
        be_u32(&self.buffer.as_ref()[4..8])
    }

    pub fn nonce(&self) -> &[u8] {
        &self.buffer.as_ref()[8..8 + COOKIE_NONCE_LEN]
    }

    /// The encrypted cookie followed by its tag.
    pub fn encrypted_cookie(&self) -> &[u8] {
        &self.buffer.as_ref()[8 + COOKIE_NONCE_LEN..COOKIE_REPLY_LEN]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> CookieReplyPacket<T> {
    pub fn fill_prefix(&mut self) {
        write_prefix(self.buffer.as_mut(), MessageType::CookieReply);
    }

    pub fn set_receiver_index(&mut self, index: u32) {
        self.buffer.as_mut()[4..8].copy_from_slice(&index.to_be_bytes());
    }

    pub fn nonce_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[8..8 + COOKIE_NONCE_LEN]
    }

    pub fn encrypted_cookie_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[8 + COOKIE_NONCE_LEN..COOKIE_REPLY_LEN]
    }
}

/// A parsed CookieReply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CookieReplyRepr {
    pub receiver_index: u32,
    pub nonce: [u8; COOKIE_NONCE_LEN],
    pub encrypted_cookie: [u8; COOKIE_LEN + TAG_LEN],
}

impl CookieReplyRepr {
    pub fn parse<T: AsRef<[u8]> + ?Sized>(
        packet: &CookieReplyPacket<&T>,
    ) -> Result<Self, WireError> {
        let checked = CookieReplyPacket::new_checked(packet.buffer.as_ref())?;
        let mut r = Reader::new(checked.buffer);
        r.bytes(4)?;
        let repr = Self {
            receiver_index: r.u32()?,
            nonce: r.array()?,
            encrypted_cookie: r.array()?,
        };
        r.finish()?;
        Ok(repr)
    }

    pub const fn buffer_len(&self) -> usize {
        COOKIE_REPLY_LEN
    }

    pub fn emit(&self, buf: &mut [u8]) -> Result<usize, WireError> {
        let mut w = Writer::with_len(buf, COOKIE_REPLY_LEN)?;
        w.prefix(MessageType::CookieReply)?;
        w.u16(0)?;
        w.u32(self.receiver_index)?;
        w.bytes(&self.nonce)?;
        w.bytes(&self.encrypted_cookie)?;
        Ok(w.position())
    }
}

/// An ordered, duplicate-free list of 1 to 8 suites, most preferred first. Fixed size,
/// so handshakes never allocate for it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct SuiteList {
    len: u8,
    ids: [SuiteId; SuiteList::MAX],
}

impl SuiteList {
    pub const MAX: usize = 8;

    pub fn new(suites: &[SuiteId]) -> Result<Self, WireError> {
        if suites.is_empty() || suites.len() > Self::MAX {
            return Err(WireError::Malformed("suite list length"));
        }
        let mut ids = [SuiteId(0); Self::MAX];
        for (i, suite) in suites.iter().enumerate() {
            if suites[..i].contains(suite) {
                return Err(WireError::Malformed("duplicate suite"));
            }
            ids[i] = *suite;
        }
        Ok(Self {
            len: suites.len() as u8,
            ids,
        })
    }

    pub fn as_slice(&self) -> &[SuiteId] {
        &self.ids[..usize::from(self.len)]
    }

    pub fn contains(&self, suite: SuiteId) -> bool {
        self.as_slice().contains(&suite)
    }

    /// The first suite of `self` (the initiator's preference order) that `other`
    /// also lists: the negotiation rule.
    pub fn first_shared(&self, other: &SuiteList) -> Option<SuiteId> {
        self.as_slice().iter().copied().find(|s| other.contains(*s))
    }

    /// Bytes on the wire: count byte + two bytes per suite.
    pub fn wire_len(&self) -> usize {
        1 + 2 * usize::from(self.len)
    }

    pub fn read(r: &mut Reader<'_>) -> Result<Self, WireError> {
        let count = usize::from(r.u8()?);
        if count == 0 || count > Self::MAX {
            return Err(WireError::Malformed("suite list length"));
        }
        let mut ids = [SuiteId(0); Self::MAX];
        for id in ids.iter_mut().take(count) {
            *id = SuiteId(r.u16()?);
        }
        Self::new(&ids[..count])
    }

    pub fn write(&self, w: &mut Writer<'_>) -> Result<(), WireError> {
        w.u8(self.len)?;
        for suite in self.as_slice() {
            w.u16(suite.0)?;
        }
        Ok(())
    }
}

impl std::fmt::Debug for SuiteList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.as_slice()).finish()
    }
}

fn read_credential(r: &mut Reader<'_>) -> Result<SignedCredential, WireError> {
    SignedCredential::read(r).map_err(|e| match e {
        CredentialError::Malformed(w) => w,
        _ => WireError::Malformed("credential"),
    })
}

/// What the initiator says inside the request's encrypted payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestPayload {
    /// Milliseconds, strictly increasing per initiator static key: the responder
    /// rejects anything not newer than the last request it accepted (replay defence).
    pub timestamp: u64,
    /// The initiator's suites, most preferred first.
    pub suites: SuiteList,
    pub credential: SignedCredential,
}

impl RequestPayload {
    pub fn parse(bytes: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(bytes);
        let payload = Self {
            timestamp: r.u64()?,
            suites: SuiteList::read(&mut r)?,
            credential: read_credential(&mut r)?,
        };
        r.finish()?;
        Ok(payload)
    }

    pub fn buffer_len(&self) -> usize {
        8 + self.suites.wire_len() + self.credential.as_bytes().len()
    }

    pub fn emit(&self, buf: &mut [u8]) -> Result<usize, WireError> {
        let mut w = Writer::with_len(buf, self.buffer_len())?;
        w.u64(self.timestamp)?;
        self.suites.write(&mut w)?;
        w.bytes(self.credential.as_bytes())?;
        Ok(w.position())
    }
}

/// What the responder says inside the response's encrypted payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponsePayload {
    /// The first suite of the initiator's list that the responder supports.
    pub chosen: SuiteId,
    /// The responder's own suites, so the initiator can re-check the choice.
    pub suites: SuiteList,
    pub credential: SignedCredential,
}

impl ResponsePayload {
    pub fn parse(bytes: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(bytes);
        let payload = Self {
            chosen: SuiteId(r.u16()?),
            suites: SuiteList::read(&mut r)?,
            credential: read_credential(&mut r)?,
        };
        r.finish()?;
        Ok(payload)
    }

    pub fn buffer_len(&self) -> usize {
        2 + self.suites.wire_len() + self.credential.as_bytes().len()
    }

    pub fn emit(&self, buf: &mut [u8]) -> Result<usize, WireError> {
        let mut w = Writer::with_len(buf, self.buffer_len())?;
        w.u16(self.chosen.0)?;
        self.suites.write(&mut w)?;
        w.bytes(self.credential.as_bytes())?;
        Ok(w.position())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credential::{CloudKeyId, Credential};
    use crate::time::UnixTime;
    use crate::wire::NodeId;
    use ed25519_dalek::SigningKey;

    fn credential(name: &str) -> SignedCredential {
        let cloud = SigningKey::from_bytes(&[3; 32]);
        Credential {
            cloud_key_id: CloudKeyId::of(&cloud.verifying_key()),
            node_id: NodeId([5; 16]),
            not_before: UnixTime(1),
            not_after: UnixTime(2),
            static_public: [7; 32],
            vip4: "100.64.0.1".parse().unwrap(),
            vip6: "fd00::1".parse().unwrap(),
            fqdn: Fqdn::new(name).unwrap(),
        }
        .sign(&cloud)
    }

    fn suites() -> SuiteList {
        SuiteList::new(&[SuiteId::CHACHA20_POLY1305, SuiteId::AES_256_GCM]).unwrap()
    }

    #[test]
    fn request_layout_round_trip() {
        let payload = [0xaau8; 40];
        let repr = TunnelRequestRepr {
            sender_index: 0x0a0b_0c0d,
            ephemeral: [1; 32],
            encrypted_static: [2; 48],
            encrypted_payload: &payload,
            mac1: [3; 16],
            mac2: [4; 16],
        };
        let mut buf = vec![0u8; repr.buffer_len()];
        assert_eq!(repr.emit(&mut buf).unwrap(), 88 + 40 + 32);
        assert_eq!(&buf[..8], &[1, 0x10, 0, 0, 0x0a, 0x0b, 0x0c, 0x0d]);
        assert_eq!(&buf[8..40], &[1; 32]);
        assert_eq!(&buf[40..88], &[2; 48]);
        assert_eq!(&buf[88..128], &[0xaa; 40]);
        assert_eq!(&buf[128..144], &[3; 16]);
        assert_eq!(&buf[144..], &[4; 16]);
        let packet = TunnelRequestPacket::new_checked(&buf[..]).unwrap();
        assert_eq!(packet.mac1_offset(), 128);
        assert_eq!(packet.mac2_offset(), 144);
        assert_eq!(TunnelRequestRepr::parse(&packet).unwrap(), repr);
    }

    #[test]
    fn response_and_cookie_layout_round_trip() {
        let payload = [0x55u8; 20];
        let repr = TunnelResponseRepr {
            sender_index: 7,
            receiver_index: 9,
            ephemeral: [1; 32],
            encrypted_payload: &payload,
            mac1: [3; 16],
            mac2: [0; 16],
        };
        let mut buf = vec![0u8; repr.buffer_len()];
        repr.emit(&mut buf).unwrap();
        assert_eq!(&buf[..12], &[1, 0x11, 0, 0, 0, 0, 0, 7, 0, 0, 0, 9]);
        let packet = TunnelResponsePacket::new_checked(&buf[..]).unwrap();
        assert_eq!(TunnelResponseRepr::parse(&packet).unwrap(), repr);

        let cookie = CookieReplyRepr {
            receiver_index: 0x0102_0304,
            nonce: [6; 24],
            encrypted_cookie: [8; 32],
        };
        let mut buf = [0u8; COOKIE_REPLY_LEN];
        assert_eq!(cookie.emit(&mut buf).unwrap(), 64);
        assert_eq!(&buf[..8], &[1, 0x12, 0, 0, 1, 2, 3, 4]);
        let packet = CookieReplyPacket::new_checked(&buf[..]).unwrap();
        assert_eq!(packet.nonce(), &[6; 24]);
        assert_eq!(CookieReplyRepr::parse(&packet).unwrap(), cookie);
        assert_eq!(
            CookieReplyPacket::new_checked(&buf[..63]).unwrap_err(),
            WireError::Truncated
        );
    }

    #[test]
    fn lengths_and_reserved_are_checked() {
        let mut buf = [0u8; REQUEST_MIN_LEN];
        buf[0] = VERSION;
        buf[1] = MessageType::TunnelRequest as u8;
        assert!(TunnelRequestPacket::new_checked(&buf[..]).is_ok());
        assert_eq!(
            TunnelRequestPacket::new_checked(&buf[..REQUEST_MIN_LEN - 1]).unwrap_err(),
            WireError::Truncated
        );
        buf[2] = 1;
        assert!(matches!(
            TunnelRequestPacket::new_checked(&buf[..]),
            Err(WireError::Malformed(_))
        ));
        let mut long = vec![0u8; REQUEST_MAX_LEN + 1];
        long[0] = VERSION;
        long[1] = MessageType::TunnelRequest as u8;
        assert_eq!(
            TunnelRequestPacket::new_checked(&long[..]).unwrap_err(),
            WireError::TrailingBytes(1)
        );
        assert_eq!(
            TunnelResponsePacket::new_checked(&long[..]).unwrap_err(),
            WireError::WrongType
        );
    }

    #[test]
    fn payloads_round_trip_and_reject_trailing_bytes() {
        let request = RequestPayload {
            timestamp: 1_700_000_000_123,
            suites: suites(),
            credential: credential("laptop.alice.cyphonic"),
        };
        let mut buf = vec![0u8; request.buffer_len() + 1];
        let n = request.emit(&mut buf).unwrap();
        assert_eq!(
            n,
            8 + 5 + CREDENTIAL_FIXED_LEN + "laptop.alice.cyphonic".len()
        );
        assert_eq!(&buf[8..13], &[2, 0, 2, 0, 1]);
        assert_eq!(RequestPayload::parse(&buf[..n]).unwrap(), request);
        assert_eq!(
            RequestPayload::parse(&buf[..n + 1]).unwrap_err(),
            WireError::TrailingBytes(1)
        );
        assert_eq!(
            RequestPayload::parse(&buf[..n - 1]).unwrap_err(),
            WireError::Truncated
        );

        let response = ResponsePayload {
            chosen: SuiteId::CHACHA20_POLY1305,
            suites: suites(),
            credential: credential("srv.cyphonic"),
        };
        let mut buf = vec![0u8; response.buffer_len()];
        let n = response.emit(&mut buf).unwrap();
        assert_eq!(ResponsePayload::parse(&buf[..n]).unwrap(), response);
    }

    #[test]
    fn largest_payload_fits_the_maximum() {
        let name = format!(
            "{}.{}.{}.{}",
            "a".repeat(63),
            "b".repeat(63),
            "c".repeat(63),
            "d".repeat(61)
        );
        let all: Vec<SuiteId> = (1..=8).map(SuiteId).collect();
        let request = RequestPayload {
            timestamp: 0,
            suites: SuiteList::new(&all).unwrap(),
            credential: credential(&name),
        };
        assert_eq!(request.buffer_len(), REQUEST_PAYLOAD_MAX_LEN);
        assert_eq!(REQUEST_MAX_LEN, 572);
        assert_eq!(RESPONSE_MAX_LEN, 522);
    }

    #[test]
    fn suite_lists_are_canonical() {
        assert!(SuiteList::new(&[]).is_err());
        assert!(SuiteList::new(&[SuiteId(1), SuiteId(1)]).is_err());
        let nine: Vec<SuiteId> = (1..=9).map(SuiteId).collect();
        assert!(SuiteList::new(&nine).is_err());
        for bad in [&[0u8][..], &[9], &[2, 0, 1, 0, 1]] {
            assert!(SuiteList::read(&mut Reader::new(bad)).is_err(), "{bad:?}");
        }
        let a = SuiteList::new(&[SuiteId(3), SuiteId(2), SuiteId(1)]).unwrap();
        let b = SuiteList::new(&[SuiteId(1), SuiteId(2)]).unwrap();
        assert_eq!(a.first_shared(&b), Some(SuiteId(2)));
        assert_eq!(b.first_shared(&a), Some(SuiteId(1)));
        let c = SuiteList::new(&[SuiteId(9)]).unwrap();
        assert_eq!(a.first_shared(&c), None);
    }
}
