//! Wire formats of the TRS relay: the relay ticket, `RelayBind`, `RelayBindAck` and
//! `RelayData`.
//!
//! A TRS keeps no configuration per node: the NMS mints a [`RelayTicket`] for a pair of
//! nodes with a key derived from the cloud secret, hands it to both together with a
//! per-node *bind key* (see [`crate::relay`]), and each node binds its endpoint to the
//! ticket with a [`RelayBindRepr`] MAC'd under its bind key. The TRS recomputes the bind
//! key from the ticket, answers with a [`RelayBindAckRepr`] MAC'd under the same key,
//! and from then on forwards [`RelayDataRepr`] datagrams between the two bound
//! endpoints without being able to read them (they carry sealed node-to-node datagrams).
//!
//! The TRS keeps two pieces of soft state, both its own business: the highest bind
//! timestamp seen per (ticket id, node) to refuse replayed binds, and the forwarding
//! table keyed by (channel id, source endpoint).

use std::net::SocketAddr;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use super::status::StatusCode;
use super::{
    MessageType, NodeId, PREFIX_LEN, Reader, WireError, Writer, check_prefix, endpoint_len,
};
use crate::time::UnixTime;

/// Bytes of a MAC truncated for datagrams (binds, acks, hole punching).
pub const SHORT_MAC_LEN: usize = 16;

/// The first 8 bytes of a ticket id; names a relayed pair in every `RelayData`.
pub type RelayChannelId = [u8; 8];

/// A MAC in a datagram did not verify. Receivers drop such datagrams silently.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("message authentication code does not verify")]
pub struct BadMac;

/// The NMS's permission for two nodes to meet at a TRS until `not_after`.
///
/// Fixed size ([`Self::LEN`] bytes). `mac` is the full HMAC-SHA256 over the first
/// [`Self::MAC_INPUT_LEN`] bytes under the relay key named by `key_id`; minting and
/// checking live in [`crate::relay`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RelayTicket {
    pub ticket_id: [u8; 16],
    pub node_a: NodeId,
    pub node_b: NodeId,
    pub not_after: UnixTime,
    pub key_id: [u8; 8],
    pub mac: [u8; 32],
}

impl RelayTicket {
    pub const LEN: usize = 16 + 16 + 16 + 8 + 8 + 32;
    /// Bytes the ticket MAC covers: everything before the MAC.
    pub const MAC_INPUT_LEN: usize = Self::LEN - 32;

    /// Parses exactly one ticket.
    pub fn parse(bytes: &[u8]) -> Result<Self, WireError> {
        exact_len(bytes.len(), Self::LEN)?;
        Ok(Self::from_bytes(&array(bytes)))
    }

    /// Reads a ticket from the front of a longer message.
    pub fn read(r: &mut Reader<'_>) -> Result<Self, WireError> {
        Ok(Self::from_bytes(&r.array()?))
    }

    /// Any [`Self::LEN`] bytes are a ticket; whether it is genuine is
    /// [`crate::relay::verify_ticket`]'s question.
    pub fn from_bytes(bytes: &[u8; Self::LEN]) -> Self {
        Self {
            ticket_id: array(&bytes[0..16]),
            node_a: NodeId(array(&bytes[16..32])),
            node_b: NodeId(array(&bytes[32..48])),
            not_after: UnixTime(u64::from_be_bytes(array(&bytes[48..56]))),
            key_id: array(&bytes[56..64]),
            mac: array(&bytes[64..96]),
        }
    }

    pub fn write(&self, w: &mut Writer<'_>) -> Result<(), WireError> {
        w.bytes(&self.ticket_id)?;
        w.node_id(&self.node_a)?;
        w.node_id(&self.node_b)?;
        w.u64(self.not_after.0)?;
        w.bytes(&self.key_id)?;
        w.bytes(&self.mac)
    }

    pub fn to_bytes(&self) -> [u8; Self::LEN] {
        let mut out = [0u8; Self::LEN];
        let mut at = 0;
        for part in [
            &self.ticket_id[..],
            &self.node_a.0,
            &self.node_b.0,
            &self.not_after.0.to_be_bytes(),
            &self.key_id,
            &self.mac,
        ] {
            out[at..at + part.len()].copy_from_slice(part);
            at += part.len();
        }
        out
    }

    /// The id relayed datagrams of this pair carry.
    pub fn channel_id(&self) -> RelayChannelId {
        let mut id = [0u8; 8];
        id.copy_from_slice(&self.ticket_id[..8]);
        id
    }

    /// The other node of the pair, or `None` when `node` is not in the ticket.
    pub fn peer_of(&self, node: &NodeId) -> Option<NodeId> {
        if *node == self.node_a {
            Some(self.node_b)
        } else if *node == self.node_b {
            Some(self.node_a)
        } else {
            None
        }
    }
}

// ---------------------------------------------------------------------------------------
// RelayBind

mod bind_field {
    use super::{RelayTicket, SHORT_MAC_LEN};
    use std::ops::Range;

    pub(super) const TICKET: Range<usize> = 2..2 + RelayTicket::LEN;
    pub(super) const BINDER: Range<usize> = TICKET.end..TICKET.end + 16;
    pub(super) const TIMESTAMP: Range<usize> = BINDER.end..BINDER.end + 8;
    pub(super) const MAC: Range<usize> = TIMESTAMP.end..TIMESTAMP.end + SHORT_MAC_LEN;
}

const BIND_LABEL: &[u8] = b"cyphonic bind v1";
const BIND_ACK_LABEL: &[u8] = b"cyphonic bind ack v1";

/// A checked view of a `RelayBind` datagram (node -> TRS).
#[derive(Debug, Clone)]
pub struct RelayBindPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> RelayBindPacket<T> {
    /// Bytes of every `RelayBind` datagram.
    pub const LEN: usize = bind_field::MAC.end;

    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// Checks the prefix and the exact length, so that no accessor can panic.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    pub fn check_len(&self) -> Result<(), WireError> {
        let data = self.buffer.as_ref();
        check_prefix(data, MessageType::RelayBind)?;
        exact_len(data.len(), Self::LEN)
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    pub fn ticket(&self) -> RelayTicket {
        RelayTicket::from_bytes(&array(&self.buffer.as_ref()[bind_field::TICKET]))
    }

    pub fn binder(&self) -> NodeId {
        NodeId(array(&self.buffer.as_ref()[bind_field::BINDER]))
    }

    pub fn timestamp_millis(&self) -> u64 {
        u64::from_be_bytes(array(&self.buffer.as_ref()[bind_field::TIMESTAMP]))
    }

    pub fn mac(&self) -> [u8; SHORT_MAC_LEN] {
        array(&self.buffer.as_ref()[bind_field::MAC])
    }

    /// Checks the MAC over the received bytes in constant time.
    pub fn verify(&self, bind_key: &[u8; 32]) -> Result<(), BadMac> {
        let data = self.buffer.as_ref();
        let expected = short_mac(bind_key, BIND_LABEL, &data[..bind_field::MAC.start]);
        ct_check(&expected, &data[bind_field::MAC])
    }
}

/// A parsed `RelayBind`: "I, `binder`, am at this datagram's source address for
/// `ticket`". The TRS refuses binds whose timestamp is more than
/// [`crate::relay::BIND_MAX_SKEW_SECS`] away from its clock, and binds whose timestamp is
/// not greater than the last one it accepted for the same (ticket id, binder).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayBindRepr {
    pub ticket: RelayTicket,
    pub binder: NodeId,
    /// The binder's wall clock in Unix milliseconds.
    pub timestamp_millis: u64,
    pub mac: [u8; SHORT_MAC_LEN],
}

impl RelayBindRepr {
    pub fn parse<T: AsRef<[u8]> + ?Sized>(packet: &RelayBindPacket<&T>) -> Result<Self, WireError> {
        packet.check_len()?;
        Ok(Self {
            ticket: packet.ticket(),
            binder: packet.binder(),
            timestamp_millis: packet.timestamp_millis(),
            mac: packet.mac(),
        })
    }

    pub fn buffer_len(&self) -> usize {
        RelayBindPacket::<&[u8]>::LEN
    }

    pub fn emit(&self, buf: &mut [u8]) -> Result<usize, WireError> {
        let mut w = Writer::with_len(buf, self.buffer_len())?;
        w.prefix(MessageType::RelayBind)?;
        self.ticket.write(&mut w)?;
        w.node_id(&self.binder)?;
        w.u64(self.timestamp_millis)?;
        w.bytes(&self.mac)?;
        Ok(w.position())
    }

    /// Sets `mac` for the other fields under the binder's bind key.
    pub fn seal(&mut self, bind_key: &[u8; 32]) {
        self.mac = self.expected_mac(bind_key);
    }

    /// Checks `mac` in constant time.
    pub fn verify(&self, bind_key: &[u8; 32]) -> Result<(), BadMac> {
        ct_check(&self.expected_mac(bind_key), &self.mac)
    }

    fn expected_mac(&self, bind_key: &[u8; 32]) -> [u8; SHORT_MAC_LEN] {
        let mut buf = [0u8; RelayBindPacket::<&[u8]>::LEN];
        // The buffer has the fixed length of every bind, so emitting cannot fail.
        let _ = self.emit(&mut buf);
        short_mac(bind_key, BIND_LABEL, &buf[..bind_field::MAC.start])
    }
}

// ---------------------------------------------------------------------------------------
// RelayBindAck

mod ack_field {
    use std::ops::Range;

    pub(super) const TICKET_ID: Range<usize> = 2..18;
    pub(super) const STATUS: Range<usize> = 18..20;
    pub(super) const TIMESTAMP: Range<usize> = 20..28;
    pub(super) const PEER_BOUND: usize = 28;
    pub(super) const OBSERVED: usize = 29;
}

/// A checked view of a `RelayBindAck` datagram (TRS -> node). Its length depends on the
/// family of the observed address (52 bytes for IPv4, 64 for IPv6).
#[derive(Debug, Clone)]
pub struct RelayBindAckPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> RelayBindAckPacket<T> {
    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// Checks the prefix, the address family and the exact length.
    pub fn check_len(&self) -> Result<(), WireError> {
        let data = self.buffer.as_ref();
        check_prefix(data, MessageType::RelayBindAck)?;
        let family = *data.get(ack_field::OBSERVED).ok_or(WireError::Truncated)?;
        let endpoint = match family {
            4 => 7,
            6 => 19,
            _ => return Err(WireError::Malformed("address family")),
        };
        exact_len(data.len(), ack_field::OBSERVED + endpoint + SHORT_MAC_LEN)
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    pub fn ticket_id(&self) -> [u8; 16] {
        array(&self.buffer.as_ref()[ack_field::TICKET_ID])
    }

    pub fn status(&self) -> StatusCode {
        StatusCode(u16::from_be_bytes(array(
            &self.buffer.as_ref()[ack_field::STATUS],
        )))
    }

    pub fn timestamp_millis(&self) -> u64 {
        u64::from_be_bytes(array(&self.buffer.as_ref()[ack_field::TIMESTAMP]))
    }

    /// The raw peer-bound byte; [`RelayBindAckRepr::parse`] accepts only 0 and 1.
    pub fn peer_bound(&self) -> u8 {
        self.buffer.as_ref()[ack_field::PEER_BOUND]
    }

    pub fn observed(&self) -> SocketAddr {
        let data = &self.buffer.as_ref()[ack_field::OBSERVED..];
        let port = u16::from_be_bytes(array(&data[1..3]));
        // `check_len` allowed only families 4 and 6 with their exact lengths.
        if data[0] == 6 {
            SocketAddr::from((array::<16>(&data[3..19]), port))
        } else {
            SocketAddr::from((array::<4>(&data[3..7]), port))
        }
    }

    pub fn mac(&self) -> [u8; SHORT_MAC_LEN] {
        let data = self.buffer.as_ref();
        array(&data[data.len() - SHORT_MAC_LEN..])
    }

    /// Checks the MAC over the received bytes in constant time.
    pub fn verify(&self, bind_key: &[u8; 32]) -> Result<(), BadMac> {
        let data = self.buffer.as_ref();
        let split = data.len() - SHORT_MAC_LEN;
        let expected = short_mac(bind_key, BIND_ACK_LABEL, &data[..split]);
        ct_check(&expected, &data[split..])
    }
}

/// A parsed `RelayBindAck`. The TRS sends one only for a bind whose MAC verified (it
/// drops everything else silently), MAC'd with the binder's bind key and echoing the
/// bind's timestamp, so that a node can tell a genuine answer to its latest bind from a
/// forged or replayed one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayBindAckRepr {
    pub ticket_id: [u8; 16],
    /// `SUCCESS`, or why the bind was refused (`EXPIRED`, `RATE_LIMITED`, ...).
    pub status: StatusCode,
    /// The timestamp of the bind this answers.
    pub timestamp_millis: u64,
    /// True when the other node of the ticket is bound as well, so data can flow.
    pub peer_bound: bool,
    /// The bind's source address as the TRS saw it.
    pub observed: SocketAddr,
    pub mac: [u8; SHORT_MAC_LEN],
}

impl RelayBindAckRepr {
    /// Bytes of the longest ack (IPv6 observed address).
    pub const MAX_LEN: usize = ack_field::OBSERVED + 19 + SHORT_MAC_LEN;

    pub fn parse<T: AsRef<[u8]> + ?Sized>(
        packet: &RelayBindAckPacket<&T>,
    ) -> Result<Self, WireError> {
        packet.check_len()?;
        let peer_bound = match packet.peer_bound() {
            0 => false,
            1 => true,
            _ => return Err(WireError::Malformed("peer bound flag")),
        };
        Ok(Self {
            ticket_id: packet.ticket_id(),
            status: packet.status(),
            timestamp_millis: packet.timestamp_millis(),
            peer_bound,
            observed: packet.observed(),
            mac: packet.mac(),
        })
    }

    pub fn buffer_len(&self) -> usize {
        ack_field::OBSERVED + endpoint_len(&self.observed) + SHORT_MAC_LEN
    }

    pub fn emit(&self, buf: &mut [u8]) -> Result<usize, WireError> {
        let len = self.emit_unmacd(buf)?;
        buf[len..len + SHORT_MAC_LEN].copy_from_slice(&self.mac);
        Ok(len + SHORT_MAC_LEN)
    }

    /// Sets `mac` for the other fields under the binder's bind key.
    pub fn seal(&mut self, bind_key: &[u8; 32]) {
        self.mac = self.expected_mac(bind_key);
    }

    /// Checks `mac` in constant time.
    pub fn verify(&self, bind_key: &[u8; 32]) -> Result<(), BadMac> {
        ct_check(&self.expected_mac(bind_key), &self.mac)
    }

    fn emit_unmacd(&self, buf: &mut [u8]) -> Result<usize, WireError> {
        let mut w = Writer::with_len(buf, self.buffer_len())?;
        w.prefix(MessageType::RelayBindAck)?;
        w.bytes(&self.ticket_id)?;
        self.status.write(&mut w)?;
        w.u64(self.timestamp_millis)?;
        w.u8(u8::from(self.peer_bound))?;
        w.endpoint(&self.observed)?;
        Ok(w.position())
    }

    fn expected_mac(&self, bind_key: &[u8; 32]) -> [u8; SHORT_MAC_LEN] {
        let mut buf = [0u8; Self::MAX_LEN];
        // MAX_LEN fits every ack, so emitting cannot fail.
        let len = self.emit_unmacd(&mut buf).unwrap_or(0);
        short_mac(bind_key, BIND_ACK_LABEL, &buf[..len])
    }
}

// ---------------------------------------------------------------------------------------
// RelayData

/// A checked view of a `RelayData` datagram: the 10-byte relay header followed by a
/// complete, already sealed node-to-node datagram.
#[derive(Debug, Clone)]
pub struct RelayDataPacket<T: AsRef<[u8]>> {
    buffer: T,
}

/// Bytes `RelayData` adds in front of the relayed datagram: prefix (2) + channel id (8).
pub const RELAY_DATA_HEADER_LEN: usize = PREFIX_LEN + 8;

impl<T: AsRef<[u8]>> RelayDataPacket<T> {
    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// Checks the prefix and that an inner datagram of at least its own prefix follows.
    pub fn check_len(&self) -> Result<(), WireError> {
        let data = self.buffer.as_ref();
        check_prefix(data, MessageType::RelayData)?;
        if data.len() < RELAY_DATA_HEADER_LEN + PREFIX_LEN {
            return Err(WireError::Truncated);
        }
        Ok(())
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    pub fn channel_id(&self) -> RelayChannelId {
        array(&self.buffer.as_ref()[PREFIX_LEN..RELAY_DATA_HEADER_LEN])
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> RelayDataPacket<&'a T> {
    /// The relayed datagram, borrowed for as long as the buffer.
    pub fn payload(&self) -> &'a [u8] {
        &self.buffer.as_ref()[RELAY_DATA_HEADER_LEN..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> RelayDataPacket<T> {
    pub fn set_channel_id(&mut self, id: &RelayChannelId) {
        self.buffer.as_mut()[PREFIX_LEN..RELAY_DATA_HEADER_LEN].copy_from_slice(id);
    }

    /// The region after the header, for sealing the inner datagram in place.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[RELAY_DATA_HEADER_LEN..]
    }
}

/// A parsed `RelayData`. The TRS forwards the received bytes unchanged to the other
/// bound endpoint; it never parses `payload`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayDataRepr<'a> {
    pub channel_id: RelayChannelId,
    pub payload: &'a [u8],
}

impl<'a> RelayDataRepr<'a> {
    pub fn parse<T: AsRef<[u8]> + ?Sized>(
        packet: &RelayDataPacket<&'a T>,
    ) -> Result<Self, WireError> {
        packet.check_len()?;
        Ok(Self {
            channel_id: packet.channel_id(),
            payload: packet.payload(),
        })
    }

    pub fn buffer_len(&self) -> usize {
        RELAY_DATA_HEADER_LEN + self.payload.len()
    }

    pub fn emit(&self, buf: &mut [u8]) -> Result<usize, WireError> {
        if self.payload.len() < PREFIX_LEN {
            return Err(WireError::Malformed("relayed datagram too short"));
        }
        let mut w = Writer::with_len(buf, self.buffer_len())?;
        w.prefix(MessageType::RelayData)?;
        w.bytes(&self.channel_id)?;
        w.bytes(self.payload)?;
        Ok(w.position())
    }

    /// Writes only the 10-byte header, for callers that seal the inner datagram
    /// directly behind it (no copy on the data path).
    pub fn emit_header(channel_id: &RelayChannelId, buf: &mut [u8]) -> Result<(), WireError> {
        let mut w = Writer::with_len(buf, RELAY_DATA_HEADER_LEN)?;
        w.prefix(MessageType::RelayData)?;
        w.bytes(channel_id)
    }
}

// ---------------------------------------------------------------------------------------
// Helpers shared with `wire::node` and `crate::relay`.

/// HMAC-SHA256 over `label || data`.
pub(crate) fn hmac_sha256(key: &[u8], label: &[u8], data: &[&[u8]]) -> [u8; 32] {
    let mut mac =
        <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(label);
    for part in data {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

/// The first [`SHORT_MAC_LEN`] bytes of [`hmac_sha256`].
pub(crate) fn short_mac(key: &[u8], label: &[u8], data: &[u8]) -> [u8; SHORT_MAC_LEN] {
    let full = hmac_sha256(key, label, &[data]);
    array(&full[..SHORT_MAC_LEN])
}

pub(crate) fn ct_check(expected: &[u8], received: &[u8]) -> Result<(), BadMac> {
    if bool::from(expected.ct_eq(received)) {
        Ok(())
    } else {
        Err(BadMac)
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
