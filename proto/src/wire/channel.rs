//! Wire formats of the node <-> cloud channel: `ChannelHello`, `ChannelAccept`, `Signal`
//! and the channel's cookie reply, plus the plaintext payloads the two handshake
//! messages carry.
//!
//! The cryptography lives in [`crate::channel`]; this module only knows where each field
//! is. The hello and the accept are the two messages of a Noise IK handshake framed
//! with a small cleartext header (which the handshake hash covers); a `Signal` carries
//! one opaque inner signaling message sealed under the channel keys with its 16-byte
//! header as associated data.
//!
//! ```text
//! ChannelHello (node -> cloud), 145..=556 bytes
//!   0  version                 1
//!   1  type = 0x01             1
//!   2  service                 1   1 = AS, 2 = NMS, 3 = TRS
//!   3  reserved = 0            1
//!   4  sender index            4   the node's index for this channel
//!   8  ephemeral public       32   Noise `e`
//!  40  encrypted static       48   Noise `s` (32) + tag (16)
//!  88  encrypted payload     n+16  HelloPayload (n = 9 + credential length)
//!   .  mac1                   16   HMAC-SHA256(SHA-256("mac1----" || cloud channel key),
//!                                   bytes 0..mac1)[..16]
//!   .  mac2                   16   HMAC-SHA256(cookie, bytes 0..mac2)[..16], or zeros
//!
//! ChannelAccept (cloud -> node), 72 bytes
//!   0  version, 1 type = 0x02, 2 reserved u16 = 0
//!   4  sender index            4   the cloud's index for this channel
//!   8  receiver index          4   the node's index from the hello
//!  12  ephemeral public       32   Noise `e`
//!  44  encrypted payload      28   AcceptPayload (12) + tag (16)
//!
//! Signal (both directions), 32.. bytes
//!   0  version, 1 type = 0x03, 2 reserved u16 = 0
//!   4  receiver index          4   the index the receiving side chose
//!   8  counter                 8   starts at 0, +1 per datagram and direction
//!  16  sealed inner message  m+16  ChaCha20-Poly1305, AAD = bytes 0..16
//!
//! Channel cookie reply (cloud -> node, only under load), 64 bytes
//!   0  version, 1 type = 0x12, 2 reserved u16 = 0
//!   4  receiver index          4   the sender index of the hello it answers
//!   8  nonce                  24
//!  32  encrypted cookie       32   XChaCha20-Poly1305(cookie (16)) + tag, AAD = the
//!                                   hello's mac1
//! ```

use std::ops::Range;

use super::{MessageType, Reader, WireError, Writer, check_prefix};
use crate::credential::{CREDENTIAL_FIXED_LEN, CredentialError, SignedCredential};
use crate::wire::Fqdn;

/// Bytes of an X25519 public key.
pub const KEY_LEN: usize = 32;
/// Bytes of a ChaCha20-Poly1305 tag.
pub const TAG_LEN: usize = 16;
/// Bytes of the truncated `mac1` / `mac2` fields and of a cookie.
pub const MAC_LEN: usize = 16;

/// Which cloud service a channel is for. The byte is part of the handshake prologue,
/// so a hello meant for one service cannot be replayed to another that shares the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Service {
    /// Authentication Service: login and credential renewal.
    Auth = 1,
    /// Node Management Service: registration, keepalive, directions.
    NodeManagement = 2,
    /// Tunnel Relay Service.
    Relay = 3,
}

impl TryFrom<u8> for Service {
    type Error = WireError;

    fn try_from(value: u8) -> Result<Self, WireError> {
        match value {
            1 => Ok(Self::Auth),
            2 => Ok(Self::NodeManagement),
            3 => Ok(Self::Relay),
            _ => Err(WireError::Malformed("service")),
        }
    }
}

// ---------------------------------------------------------------------------------------
// ChannelHello

mod hello_field {
    use super::{KEY_LEN, TAG_LEN};
    use std::ops::Range;

    pub(super) const SERVICE: usize = 2;
    pub(super) const RESERVED: usize = 3;
    pub(super) const SENDER_INDEX: Range<usize> = 4..8;
    pub(super) const EPHEMERAL: Range<usize> = 8..8 + KEY_LEN;
    pub(super) const STATIC: Range<usize> = EPHEMERAL.end..EPHEMERAL.end + KEY_LEN + TAG_LEN;
    pub(super) const PAYLOAD: usize = STATIC.end;
}

/// Bytes of the cleartext hello header (prefix, service, reserved, sender index).
pub const HELLO_HEADER_LEN: usize = 8;
/// Offset of the encrypted payload in a hello.
pub const HELLO_PAYLOAD_OFFSET: usize = hello_field::PAYLOAD;
/// Smallest plaintext hello payload: timestamp and purpose of a login.
pub const HELLO_PAYLOAD_MIN_LEN: usize = 8 + 1;
/// Largest plaintext hello payload: a credential with the longest name.
pub const HELLO_PAYLOAD_MAX_LEN: usize = 8 + 1 + CREDENTIAL_FIXED_LEN + Fqdn::MAX_LEN;
/// Bytes of a hello apart from its payload.
pub const HELLO_OVERHEAD: usize = HELLO_PAYLOAD_OFFSET + TAG_LEN + 2 * MAC_LEN;
pub const HELLO_MIN_LEN: usize = HELLO_OVERHEAD + HELLO_PAYLOAD_MIN_LEN;
pub const HELLO_MAX_LEN: usize = HELLO_OVERHEAD + HELLO_PAYLOAD_MAX_LEN;

/// A checked view of a `ChannelHello` datagram.
#[derive(Debug, Clone)]
pub struct ChannelHelloPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> ChannelHelloPacket<T> {
    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// Checks the prefix and that the length lies within [`HELLO_MIN_LEN`] and
    /// [`HELLO_MAX_LEN`], so that no accessor can panic.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    pub fn check_len(&self) -> Result<(), WireError> {
        let data = self.buffer.as_ref();
        check_prefix(data, MessageType::ChannelHello)?;
        if data.len() < HELLO_MIN_LEN {
            return Err(WireError::Truncated);
        }
        if data.len() > HELLO_MAX_LEN {
            return Err(WireError::TrailingBytes(data.len() - HELLO_MAX_LEN));
        }
        Ok(())
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// The raw service byte; [`Service::try_from`] interprets it.
    pub fn service(&self) -> u8 {
        self.buffer.as_ref()[hello_field::SERVICE]
    }

    pub fn reserved(&self) -> u8 {
        self.buffer.as_ref()[hello_field::RESERVED]
    }

    pub fn sender_index(&self) -> u32 {
        u32::from_be_bytes(array(&self.buffer.as_ref()[hello_field::SENDER_INDEX]))
    }

    /// The cleartext header, which the handshake mixes into its prologue.
    pub fn header(&self) -> &[u8] {
        &self.buffer.as_ref()[..HELLO_HEADER_LEN]
    }

    pub fn ephemeral(&self) -> [u8; KEY_LEN] {
        array(&self.buffer.as_ref()[hello_field::EPHEMERAL])
    }

    pub fn encrypted_static(&self) -> &[u8] {
        &self.buffer.as_ref()[hello_field::STATIC]
    }

    pub fn encrypted_payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.payload_range()]
    }

    /// The Noise handshake message: ephemeral, encrypted static and encrypted payload.
    pub fn noise_range(&self) -> Range<usize> {
        HELLO_HEADER_LEN..self.mac1_offset()
    }

    pub fn mac1(&self) -> [u8; MAC_LEN] {
        let at = self.mac1_offset();
        array(&self.buffer.as_ref()[at..at + MAC_LEN])
    }

    pub fn mac2(&self) -> [u8; MAC_LEN] {
        let at = self.mac2_offset();
        array(&self.buffer.as_ref()[at..at + MAC_LEN])
    }

    /// The bytes `mac1` covers: everything before it.
    pub fn mac1_input(&self) -> &[u8] {
        &self.buffer.as_ref()[..self.mac1_offset()]
    }

    /// The bytes `mac2` covers: everything before it, `mac1` included.
    pub fn mac2_input(&self) -> &[u8] {
        &self.buffer.as_ref()[..self.mac2_offset()]
    }

    fn payload_range(&self) -> Range<usize> {
        HELLO_PAYLOAD_OFFSET..self.mac1_offset()
    }

    fn mac1_offset(&self) -> usize {
        self.buffer.as_ref().len() - 2 * MAC_LEN
    }

    fn mac2_offset(&self) -> usize {
        self.buffer.as_ref().len() - MAC_LEN
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> ChannelHelloPacket<T> {
    /// The Noise message, for decrypting in place (check the MACs first: they cover
    /// the ciphertext).
    pub fn noise_mut(&mut self) -> &mut [u8] {
        let range = self.noise_range();
        &mut self.buffer.as_mut()[range]
    }

    pub fn set_mac1(&mut self, mac: &[u8; MAC_LEN]) {
        let at = self.mac1_offset();
        self.buffer.as_mut()[at..at + MAC_LEN].copy_from_slice(mac);
    }

    pub fn set_mac2(&mut self, mac: &[u8; MAC_LEN]) {
        let at = self.mac2_offset();
        self.buffer.as_mut()[at..at + MAC_LEN].copy_from_slice(mac);
    }
}

/// A parsed `ChannelHello`. The encrypted fields stay borrowed from the datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelHelloRepr<'a> {
    pub service: Service,
    pub sender_index: u32,
    pub ephemeral: [u8; KEY_LEN],
    pub encrypted_static: &'a [u8],
    pub encrypted_payload: &'a [u8],
    pub mac1: [u8; MAC_LEN],
    pub mac2: [u8; MAC_LEN],
}

impl<'a> ChannelHelloRepr<'a> {
    pub fn parse<T: AsRef<[u8]> + ?Sized>(
        packet: &ChannelHelloPacket<&'a T>,
    ) -> Result<Self, WireError> {
        packet.check_len()?;
        if packet.reserved() != 0 {
            return Err(WireError::Malformed("reserved"));
        }
        let data: &'a [u8] = packet.buffer.as_ref();
        Ok(Self {
            service: Service::try_from(packet.service())?,
            sender_index: packet.sender_index(),
            ephemeral: packet.ephemeral(),
            encrypted_static: &data[hello_field::STATIC],
            encrypted_payload: &data[packet.payload_range()],
            mac1: packet.mac1(),
            mac2: packet.mac2(),
        })
    }

    pub fn buffer_len(&self) -> usize {
        HELLO_PAYLOAD_OFFSET + self.encrypted_payload.len() + 2 * MAC_LEN
    }

    pub fn emit(&self, buf: &mut [u8]) -> Result<usize, WireError> {
        if self.encrypted_static.len() != KEY_LEN + TAG_LEN {
            return Err(WireError::Malformed("encrypted static length"));
        }
        let payload = self.encrypted_payload.len();
        if !(HELLO_PAYLOAD_MIN_LEN + TAG_LEN..=HELLO_PAYLOAD_MAX_LEN + TAG_LEN).contains(&payload) {
            return Err(WireError::Malformed("hello payload length"));
        }
        let len = self.buffer_len();
        let mut w = Writer::with_len(buf, len)?;
        w.prefix(MessageType::ChannelHello)?;
        w.u8(self.service as u8)?;
        w.u8(0)?;
        w.u32(self.sender_index)?;
        w.bytes(&self.ephemeral)?;
        w.bytes(self.encrypted_static)?;
        w.bytes(self.encrypted_payload)?;
        w.bytes(&self.mac1)?;
        w.bytes(&self.mac2)?;
        Ok(w.position())
    }
}

/// Writes the cleartext hello header into `buf[..HELLO_HEADER_LEN]`.
pub fn emit_hello_header(
    service: Service,
    sender_index: u32,
    buf: &mut [u8],
) -> Result<(), WireError> {
    let mut w = Writer::with_len(buf, HELLO_HEADER_LEN)?;
    w.prefix(MessageType::ChannelHello)?;
    w.u8(service as u8)?;
    w.u8(0)?;
    w.u32(sender_index)
}

/// What the node proves in its hello.
pub const PURPOSE_LOGIN: u8 = 1;
pub const PURPOSE_CREDENTIAL: u8 = 2;

/// Why the node opens this channel, as carried in the hello payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HelloPurpose {
    /// The node has no credential yet and will log in with its password; its static
    /// key is proven by the handshake alone.
    Login,
    /// The node presents the credential the AS issued for its static key.
    Credential(SignedCredential),
}

/// The plaintext payload of a hello (encrypted on the wire).
///
/// ```text
///  0  timestamp, unix milliseconds   8   strictly increasing per node static key
///  8  purpose                        1   1 = login, 2 = credential
///  9  signed credential              ..  purpose 2 only (self-delimiting)
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HelloPayload {
    pub timestamp_millis: u64,
    pub purpose: HelloPurpose,
}

impl HelloPayload {
    pub fn parse(bytes: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(bytes);
        let timestamp_millis = r.u64()?;
        let purpose = match r.u8()? {
            PURPOSE_LOGIN => HelloPurpose::Login,
            PURPOSE_CREDENTIAL => {
                HelloPurpose::Credential(SignedCredential::read(&mut r).map_err(|e| match e {
                    CredentialError::Malformed(w) => w,
                    _ => WireError::Malformed("credential"),
                })?)
            }
            _ => return Err(WireError::Malformed("purpose")),
        };
        r.finish()?;
        Ok(Self {
            timestamp_millis,
            purpose,
        })
    }

    pub fn buffer_len(&self) -> usize {
        HELLO_PAYLOAD_MIN_LEN
            + match &self.purpose {
                HelloPurpose::Login => 0,
                HelloPurpose::Credential(c) => c.as_bytes().len(),
            }
    }

    pub fn emit(&self, buf: &mut [u8]) -> Result<usize, WireError> {
        let mut w = Writer::with_len(buf, self.buffer_len())?;
        w.u64(self.timestamp_millis)?;
        match &self.purpose {
            HelloPurpose::Login => w.u8(PURPOSE_LOGIN)?,
            HelloPurpose::Credential(c) => {
                w.u8(PURPOSE_CREDENTIAL)?;
                w.bytes(c.as_bytes())?;
            }
        }
        Ok(w.position())
    }
}

// ---------------------------------------------------------------------------------------
// ChannelAccept

mod accept_field {
    use super::{ACCEPT_PAYLOAD_LEN, KEY_LEN, TAG_LEN};
    use std::ops::Range;

    pub(super) const RESERVED: Range<usize> = 2..4;
    pub(super) const SENDER_INDEX: Range<usize> = 4..8;
    pub(super) const RECEIVER_INDEX: Range<usize> = 8..12;
    pub(super) const EPHEMERAL: Range<usize> = 12..12 + KEY_LEN;
    pub(super) const PAYLOAD: Range<usize> =
        EPHEMERAL.end..EPHEMERAL.end + ACCEPT_PAYLOAD_LEN + TAG_LEN;
}

/// Bytes of the cleartext accept header (prefix, reserved, both indices).
pub const ACCEPT_HEADER_LEN: usize = 12;
/// Bytes of the plaintext accept payload.
pub const ACCEPT_PAYLOAD_LEN: usize = 8 + 4;
/// Bytes of every `ChannelAccept`.
pub const ACCEPT_LEN: usize = accept_field::PAYLOAD.end;

/// A checked view of a `ChannelAccept` datagram.
#[derive(Debug, Clone)]
pub struct ChannelAcceptPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> ChannelAcceptPacket<T> {
    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// Checks the prefix and the exact length.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    pub fn check_len(&self) -> Result<(), WireError> {
        let data = self.buffer.as_ref();
        check_prefix(data, MessageType::ChannelAccept)?;
        exact_len(data.len(), ACCEPT_LEN)
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    pub fn reserved(&self) -> u16 {
        u16::from_be_bytes(array(&self.buffer.as_ref()[accept_field::RESERVED]))
    }

    pub fn sender_index(&self) -> u32 {
        u32::from_be_bytes(array(&self.buffer.as_ref()[accept_field::SENDER_INDEX]))
    }

    pub fn receiver_index(&self) -> u32 {
        u32::from_be_bytes(array(&self.buffer.as_ref()[accept_field::RECEIVER_INDEX]))
    }

    /// The cleartext header, which both sides mix into the handshake hash.
    pub fn header(&self) -> &[u8] {
        &self.buffer.as_ref()[..ACCEPT_HEADER_LEN]
    }

    pub fn ephemeral(&self) -> [u8; KEY_LEN] {
        array(&self.buffer.as_ref()[accept_field::EPHEMERAL])
    }

    pub fn encrypted_payload(&self) -> &[u8] {
        &self.buffer.as_ref()[accept_field::PAYLOAD]
    }

    /// The Noise handshake message: ephemeral and encrypted payload.
    pub fn noise_range(&self) -> Range<usize> {
        ACCEPT_HEADER_LEN..ACCEPT_LEN
    }
}

/// A parsed `ChannelAccept`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelAcceptRepr {
    pub sender_index: u32,
    pub receiver_index: u32,
    pub ephemeral: [u8; KEY_LEN],
    pub encrypted_payload: [u8; ACCEPT_PAYLOAD_LEN + TAG_LEN],
}

impl ChannelAcceptRepr {
    pub fn parse<T: AsRef<[u8]> + ?Sized>(
        packet: &ChannelAcceptPacket<&T>,
    ) -> Result<Self, WireError> {
        packet.check_len()?;
        if packet.reserved() != 0 {
            return Err(WireError::Malformed("reserved"));
        }
        Ok(Self {
            sender_index: packet.sender_index(),
            receiver_index: packet.receiver_index(),
            ephemeral: packet.ephemeral(),
            encrypted_payload: array(packet.encrypted_payload()),
        })
    }

    pub fn buffer_len(&self) -> usize {
        ACCEPT_LEN
    }

    pub fn emit(&self, buf: &mut [u8]) -> Result<usize, WireError> {
        let mut w = Writer::with_len(buf, ACCEPT_LEN)?;
        w.prefix(MessageType::ChannelAccept)?;
        w.u16(0)?;
        w.u32(self.sender_index)?;
        w.u32(self.receiver_index)?;
        w.bytes(&self.ephemeral)?;
        w.bytes(&self.encrypted_payload)?;
        Ok(w.position())
    }
}

/// Writes the cleartext accept header into `buf[..ACCEPT_HEADER_LEN]`.
pub fn emit_accept_header(
    sender_index: u32,
    receiver_index: u32,
    buf: &mut [u8],
) -> Result<(), WireError> {
    let mut w = Writer::with_len(buf, ACCEPT_HEADER_LEN)?;
    w.prefix(MessageType::ChannelAccept)?;
    w.u16(0)?;
    w.u32(sender_index)?;
    w.u32(receiver_index)
}

/// The plaintext payload of an accept (encrypted on the wire).
///
/// ```text
///  0  server time, unix milliseconds   8   lets the node notice a wrong clock
///  8  channel lifetime, seconds        4   never 0
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AcceptPayload {
    pub server_unix_millis: u64,
    pub lifetime_secs: u32,
}

impl AcceptPayload {
    pub fn parse(bytes: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(bytes);
        let payload = Self {
            server_unix_millis: r.u64()?,
            lifetime_secs: r.u32()?,
        };
        r.finish()?;
        if payload.lifetime_secs == 0 {
            return Err(WireError::Malformed("zero channel lifetime"));
        }
        Ok(payload)
    }

    pub fn buffer_len(&self) -> usize {
        ACCEPT_PAYLOAD_LEN
    }

    pub fn emit(&self, buf: &mut [u8]) -> Result<usize, WireError> {
        // Refuse what `parse` refuses, so every emitted payload round-trips.
        if self.lifetime_secs == 0 {
            return Err(WireError::Malformed("zero channel lifetime"));
        }
        let mut w = Writer::with_len(buf, ACCEPT_PAYLOAD_LEN)?;
        w.u64(self.server_unix_millis)?;
        w.u32(self.lifetime_secs)?;
        Ok(w.position())
    }
}

// ---------------------------------------------------------------------------------------
// Signal

mod signal_field {
    use std::ops::Range;

    pub(super) const RESERVED: Range<usize> = 2..4;
    pub(super) const RECEIVER_INDEX: Range<usize> = 4..8;
    pub(super) const COUNTER: Range<usize> = 8..16;
}

/// Bytes of the `Signal` header, which is the associated data of the sealed body.
pub const SIGNAL_HEADER_LEN: usize = signal_field::COUNTER.end;
/// Smallest `Signal`: a header and the tag of an empty inner message.
pub const SIGNAL_MIN_LEN: usize = SIGNAL_HEADER_LEN + TAG_LEN;

/// A checked view of a `Signal` datagram: header plus sealed inner message.
#[derive(Debug, Clone)]
pub struct SignalPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> SignalPacket<T> {
    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// Checks the prefix and that a header and a tag fit.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    pub fn check_len(&self) -> Result<(), WireError> {
        let data = self.buffer.as_ref();
        check_prefix(data, MessageType::Signal)?;
        if data.len() < SIGNAL_MIN_LEN {
            return Err(WireError::Truncated);
        }
        Ok(())
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    pub fn reserved(&self) -> u16 {
        u16::from_be_bytes(array(&self.buffer.as_ref()[signal_field::RESERVED]))
    }

    pub fn receiver_index(&self) -> u32 {
        u32::from_be_bytes(array(&self.buffer.as_ref()[signal_field::RECEIVER_INDEX]))
    }

    pub fn counter(&self) -> u64 {
        u64::from_be_bytes(array(&self.buffer.as_ref()[signal_field::COUNTER]))
    }

    pub fn header(&self) -> &[u8] {
        &self.buffer.as_ref()[..SIGNAL_HEADER_LEN]
    }

    /// The sealed inner message: ciphertext followed by the tag.
    pub fn sealed_body(&self) -> &[u8] {
        &self.buffer.as_ref()[SIGNAL_HEADER_LEN..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> SignalPacket<T> {
    /// Writes the header fields (prefix, zero reserved, index, counter).
    pub fn fill_header(&mut self, receiver_index: u32, counter: u64) {
        let buf = self.buffer.as_mut();
        buf[0] = super::VERSION;
        buf[1] = MessageType::Signal as u8;
        buf[signal_field::RESERVED].fill(0);
        buf[signal_field::RECEIVER_INDEX].copy_from_slice(&receiver_index.to_be_bytes());
        buf[signal_field::COUNTER].copy_from_slice(&counter.to_be_bytes());
    }

    /// The header (associated data) and the sealed body, for sealing or opening in
    /// place.
    pub fn split_mut(&mut self) -> (&[u8], &mut [u8]) {
        let (header, body) = self.buffer.as_mut().split_at_mut(SIGNAL_HEADER_LEN);
        (header, body)
    }
}

/// A parsed `Signal`; the body stays sealed and borrowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignalRepr<'a> {
    pub receiver_index: u32,
    pub counter: u64,
    pub sealed_body: &'a [u8],
}

impl<'a> SignalRepr<'a> {
    pub fn parse<T: AsRef<[u8]> + ?Sized>(packet: &SignalPacket<&'a T>) -> Result<Self, WireError> {
        packet.check_len()?;
        if packet.reserved() != 0 {
            return Err(WireError::Malformed("reserved"));
        }
        let data: &'a [u8] = packet.buffer.as_ref();
        Ok(Self {
            receiver_index: packet.receiver_index(),
            counter: packet.counter(),
            sealed_body: &data[SIGNAL_HEADER_LEN..],
        })
    }

    pub fn buffer_len(&self) -> usize {
        SIGNAL_HEADER_LEN + self.sealed_body.len()
    }

    pub fn emit(&self, buf: &mut [u8]) -> Result<usize, WireError> {
        if self.sealed_body.len() < TAG_LEN {
            return Err(WireError::Malformed("sealed body shorter than a tag"));
        }
        let len = self.buffer_len();
        let mut w = Writer::with_len(buf, len)?;
        w.prefix(MessageType::Signal)?;
        w.u16(0)?;
        w.u32(self.receiver_index)?;
        w.u64(self.counter)?;
        w.bytes(self.sealed_body)?;
        Ok(w.position())
    }
}

// ---------------------------------------------------------------------------------------
// Channel cookie reply

mod cookie_field {
    use super::{COOKIE_NONCE_LEN, MAC_LEN, TAG_LEN};
    use std::ops::Range;

    pub(super) const RESERVED: Range<usize> = 2..4;
    pub(super) const RECEIVER_INDEX: Range<usize> = 4..8;
    pub(super) const NONCE: Range<usize> = 8..8 + COOKIE_NONCE_LEN;
    pub(super) const COOKIE: Range<usize> = NONCE.end..NONCE.end + MAC_LEN + TAG_LEN;
}

/// Bytes of the XChaCha20-Poly1305 nonce of a cookie reply.
pub const COOKIE_NONCE_LEN: usize = 24;
/// Bytes of every channel cookie reply.
pub const COOKIE_REPLY_LEN: usize = cookie_field::COOKIE.end;

/// A checked view of the channel's cookie reply. It shares the type byte
/// [`MessageType::CookieReply`] with the tunnel's; a node tells them apart by the
/// receiver index (its own, chosen at random for the hello or the tunnel request).
#[derive(Debug, Clone)]
pub struct ChannelCookiePacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> ChannelCookiePacket<T> {
    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    pub fn check_len(&self) -> Result<(), WireError> {
        let data = self.buffer.as_ref();
        check_prefix(data, MessageType::CookieReply)?;
        exact_len(data.len(), COOKIE_REPLY_LEN)
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    pub fn reserved(&self) -> u16 {
        u16::from_be_bytes(array(&self.buffer.as_ref()[cookie_field::RESERVED]))
    }

    pub fn receiver_index(&self) -> u32 {
        u32::from_be_bytes(array(&self.buffer.as_ref()[cookie_field::RECEIVER_INDEX]))
    }

    pub fn nonce(&self) -> [u8; COOKIE_NONCE_LEN] {
        array(&self.buffer.as_ref()[cookie_field::NONCE])
    }

    pub fn encrypted_cookie(&self) -> [u8; MAC_LEN + TAG_LEN] {
        array(&self.buffer.as_ref()[cookie_field::COOKIE])
    }
}

/// A parsed channel cookie reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelCookieRepr {
    pub receiver_index: u32,
    pub nonce: [u8; COOKIE_NONCE_LEN],
    pub encrypted_cookie: [u8; MAC_LEN + TAG_LEN],
}

impl ChannelCookieRepr {
    pub fn parse<T: AsRef<[u8]> + ?Sized>(
        packet: &ChannelCookiePacket<&T>,
    ) -> Result<Self, WireError> {
        packet.check_len()?;
        if packet.reserved() != 0 {
            return Err(WireError::Malformed("reserved"));
        }
        Ok(Self {
            receiver_index: packet.receiver_index(),
            nonce: packet.nonce(),
            encrypted_cookie: packet.encrypted_cookie(),
        })
    }

    pub fn buffer_len(&self) -> usize {
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

fn exact_len(have: usize, want: usize) -> Result<(), WireError> {
    match have.cmp(&want) {
        std::cmp::Ordering::Less => Err(WireError::Truncated),
        std::cmp::Ordering::Equal => Ok(()),
        std::cmp::Ordering::Greater => Err(WireError::TrailingBytes(have - want)),
    }
}

/// Copies a slice whose length the caller has already fixed.
fn array<const N: usize>(bytes: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(bytes);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credential::{CloudKeyId, Credential};
    use crate::time::UnixTime;
    use crate::wire::NodeId;
    use ed25519_dalek::SigningKey;

    fn credential() -> SignedCredential {
        let cloud = SigningKey::from_bytes(&[3; 32]);
        Credential {
            cloud_key_id: CloudKeyId::of(&cloud.verifying_key()),
            node_id: NodeId([5; 16]),
            not_before: UnixTime(10),
            not_after: UnixTime(20),
            static_public: [6; 32],
            vip4: "100.64.0.9".parse().unwrap(),
            vip6: "fd00::9".parse().unwrap(),
            fqdn: Fqdn::new("node.example.cyphonic").unwrap(),
        }
        .sign(&cloud)
    }

    #[test]
    fn layout_constants() {
        assert_eq!(HELLO_PAYLOAD_OFFSET, 88);
        assert_eq!(HELLO_MIN_LEN, 145);
        assert_eq!(HELLO_MAX_LEN, 556);
        assert_eq!(ACCEPT_LEN, 72);
        assert_eq!(SIGNAL_HEADER_LEN, 16);
        assert_eq!(COOKIE_REPLY_LEN, 64);
    }

    #[test]
    fn hello_round_trip() {
        let payload = [0xabu8; 40];
        let enc_static = [0x11u8; 48];
        let repr = ChannelHelloRepr {
            service: Service::NodeManagement,
            sender_index: 0xdead_beef,
            ephemeral: [7; 32],
            encrypted_static: &enc_static,
            encrypted_payload: &payload,
            mac1: [1; 16],
            mac2: [2; 16],
        };
        let mut buf = vec![0u8; repr.buffer_len()];
        assert_eq!(repr.emit(&mut buf).unwrap(), buf.len());
        assert_eq!(&buf[..4], &[1, 0x01, 2, 0]);
        let packet = ChannelHelloPacket::new_checked(&buf[..]).unwrap();
        assert_eq!(packet.header(), &buf[..8]);
        assert_eq!(packet.noise_range(), 8..buf.len() - 32);
        assert_eq!(packet.mac1_input().len(), buf.len() - 32);
        assert_eq!(packet.mac2_input().len(), buf.len() - 16);
        assert_eq!(ChannelHelloRepr::parse(&packet).unwrap(), repr);

        let mut bad = buf.clone();
        bad[3] = 1;
        let packet = ChannelHelloPacket::new_checked(&bad[..]).unwrap();
        assert_eq!(
            ChannelHelloRepr::parse(&packet),
            Err(WireError::Malformed("reserved"))
        );
        bad[3] = 0;
        bad[2] = 9;
        let packet = ChannelHelloPacket::new_checked(&bad[..]).unwrap();
        assert_eq!(
            ChannelHelloRepr::parse(&packet),
            Err(WireError::Malformed("service"))
        );
        assert_eq!(
            ChannelHelloPacket::new_checked(&buf[..HELLO_MIN_LEN - 1]).err(),
            Some(WireError::Truncated)
        );
        let long = vec![0u8; HELLO_MAX_LEN + 3];
        let mut long = long;
        long[0] = 1;
        long[1] = 0x01;
        assert_eq!(
            ChannelHelloPacket::new_checked(&long[..]).err(),
            Some(WireError::TrailingBytes(3))
        );
    }

    #[test]
    fn hello_payload_round_trip_and_trailing_bytes() {
        for purpose in [HelloPurpose::Login, HelloPurpose::Credential(credential())] {
            let payload = HelloPayload {
                timestamp_millis: 1_700_000_000_123,
                purpose,
            };
            let mut buf = vec![0u8; payload.buffer_len() + 1];
            let n = payload.emit(&mut buf).unwrap();
            assert_eq!(n, payload.buffer_len());
            assert_eq!(HelloPayload::parse(&buf[..n]).unwrap(), payload);
            assert_eq!(
                HelloPayload::parse(&buf[..n + 1]),
                Err(WireError::TrailingBytes(1))
            );
            assert!(HelloPayload::parse(&buf[..n - 1]).is_err());
        }
        let mut bad = [0u8; 9];
        bad[8] = 3;
        assert_eq!(
            HelloPayload::parse(&bad),
            Err(WireError::Malformed("purpose"))
        );
        assert!(HELLO_PAYLOAD_MAX_LEN >= HELLO_PAYLOAD_MIN_LEN + credential().as_bytes().len());
    }

    #[test]
    fn accept_round_trip() {
        let repr = ChannelAcceptRepr {
            sender_index: 1,
            receiver_index: 2,
            ephemeral: [3; 32],
            encrypted_payload: [4; 28],
        };
        let mut buf = [0u8; ACCEPT_LEN];
        assert_eq!(repr.emit(&mut buf).unwrap(), ACCEPT_LEN);
        let packet = ChannelAcceptPacket::new_checked(&buf[..]).unwrap();
        assert_eq!(packet.header(), &buf[..12]);
        assert_eq!(ChannelAcceptRepr::parse(&packet).unwrap(), repr);
        let mut longer = buf.to_vec();
        longer.push(0);
        assert_eq!(
            ChannelAcceptPacket::new_checked(&longer[..]).err(),
            Some(WireError::TrailingBytes(1))
        );
        assert_eq!(
            ChannelAcceptPacket::new_checked(&buf[..71]).err(),
            Some(WireError::Truncated)
        );
        buf[2] = 1;
        let packet = ChannelAcceptPacket::new_checked(&buf[..]).unwrap();
        assert!(ChannelAcceptRepr::parse(&packet).is_err());

        let payload = AcceptPayload {
            server_unix_millis: 5,
            lifetime_secs: 600,
        };
        let mut p = [0u8; ACCEPT_PAYLOAD_LEN];
        payload.emit(&mut p).unwrap();
        assert_eq!(AcceptPayload::parse(&p).unwrap(), payload);
        p[8..].fill(0);
        assert!(AcceptPayload::parse(&p).is_err());
    }

    #[test]
    fn signal_round_trip() {
        let body = [9u8; 21];
        let repr = SignalRepr {
            receiver_index: 0x0102_0304,
            counter: 77,
            sealed_body: &body,
        };
        let mut buf = vec![0u8; repr.buffer_len()];
        repr.emit(&mut buf).unwrap();
        let packet = SignalPacket::new_checked(&buf[..]).unwrap();
        assert_eq!(SignalRepr::parse(&packet).unwrap(), repr);
        assert_eq!(packet.header(), &buf[..16]);

        let mut other = vec![0u8; buf.len()];
        let mut view = SignalPacket::new_unchecked(&mut other[..]);
        view.fill_header(0x0102_0304, 77);
        view.split_mut().1.copy_from_slice(&body);
        assert_eq!(other, buf);

        assert_eq!(
            SignalPacket::new_checked(&buf[..31]).err(),
            Some(WireError::Truncated)
        );
        buf[3] = 1;
        let packet = SignalPacket::new_checked(&buf[..]).unwrap();
        assert!(SignalRepr::parse(&packet).is_err());
        let short = SignalRepr {
            receiver_index: 0,
            counter: 0,
            sealed_body: &body[..15],
        };
        assert!(short.emit(&mut [0u8; 64]).is_err());
    }

    #[test]
    fn cookie_round_trip() {
        let repr = ChannelCookieRepr {
            receiver_index: 42,
            nonce: [1; 24],
            encrypted_cookie: [2; 32],
        };
        let mut buf = [0u8; COOKIE_REPLY_LEN];
        repr.emit(&mut buf).unwrap();
        let packet = ChannelCookiePacket::new_checked(&buf[..]).unwrap();
        assert_eq!(ChannelCookieRepr::parse(&packet).unwrap(), repr);
        assert!(ChannelCookiePacket::new_checked(&buf[..63]).is_err());
    }

    #[test]
    fn views_reject_other_types_and_versions() {
        let mut buf = [0u8; HELLO_MAX_LEN];
        buf[0] = 1;
        buf[1] = MessageType::Signal as u8;
        assert_eq!(
            ChannelHelloPacket::new_checked(&buf[..200]).err(),
            Some(WireError::WrongType)
        );
        assert_eq!(
            ChannelAcceptPacket::new_checked(&buf[..ACCEPT_LEN]).err(),
            Some(WireError::WrongType)
        );
        buf[0] = 2;
        assert_eq!(
            SignalPacket::new_checked(&buf[..40]).err(),
            Some(WireError::UnknownVersion(2))
        );
    }

    proptest::proptest! {
        /// Views never panic, and whatever parses re-emits to the same bytes (one
        /// encoding per message).
        #[test]
        fn parse_emit_is_identity(
            kind in proptest::sample::select(vec![0x01u8, 0x02, 0x03, 0x12]),
            body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600),
        ) {
            let mut d = vec![1u8, kind];
            d.extend_from_slice(&body);
            let mut out = vec![0u8; d.len()];
            if let Ok(p) = ChannelHelloPacket::new_checked(&d[..]) {
                let _ = (p.mac1_input(), p.mac2_input(), p.encrypted_payload(), p.noise_range());
                if let Ok(r) = ChannelHelloRepr::parse(&p) {
                    proptest::prop_assert_eq!(r.emit(&mut out).unwrap(), d.len());
                    proptest::prop_assert_eq!(&out, &d);
                }
            }
            if let Ok(p) = ChannelAcceptPacket::new_checked(&d[..]) {
                if let Ok(r) = ChannelAcceptRepr::parse(&p) {
                    proptest::prop_assert_eq!(r.emit(&mut out).unwrap(), d.len());
                    proptest::prop_assert_eq!(&out, &d);
                }
            }
            if let Ok(p) = SignalPacket::new_checked(&d[..]) {
                if let Ok(r) = SignalRepr::parse(&p) {
                    proptest::prop_assert_eq!(r.emit(&mut out).unwrap(), d.len());
                    proptest::prop_assert_eq!(&out, &d);
                }
            }
            if let Ok(p) = ChannelCookiePacket::new_checked(&d[..]) {
                if let Ok(r) = ChannelCookieRepr::parse(&p) {
                    proptest::prop_assert_eq!(r.emit(&mut out).unwrap(), d.len());
                    proptest::prop_assert_eq!(&out, &d);
                }
            }
            if let Ok(p) = HelloPayload::parse(&body) {
                let mut out = vec![0u8; body.len()];
                proptest::prop_assert_eq!(p.emit(&mut out).unwrap(), body.len());
                proptest::prop_assert_eq!(&out, &body);
            }
        }
    }
}
