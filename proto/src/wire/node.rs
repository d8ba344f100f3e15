//! Node <-> node messages outside the tunnel handshake: the control messages sealed
//! inside `Control` data packets, and the `HolePunching` datagram.
//!
//! - [`ControlRepr`] is plaintext that the data path seals under the session keys (the
//!   outer header and the sealing belong to [`super::data`]); it starts with a
//!   [`ControlType`] byte. Path probes validate a candidate path before traffic moves to
//!   it; address updates tell the peer "I moved" (the peer probes the new path before
//!   switching, so an update alone can never redirect traffic).
//! - [`HolePunchingRepr`] travels before any session exists, so it carries its own
//!   truncated HMAC under the per-direction punch key the NMS gave both nodes. A node
//!   answers a valid punch with a punch of kind [`PunchKind::Ack`] echoing the nonce, so
//!   both ends learn the path works.

use std::net::SocketAddr;

use super::relay::{BadMac, SHORT_MAC_LEN, ct_check, short_mac};
use super::{MessageType, NodeId, Reader, WireError, Writer, check_prefix, endpoint_len};

/// Most endpoints one address update may list.
pub const MAX_CONTROL_ENDPOINTS: usize = 16;

/// The first byte of a control message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ControlType {
    PathProbe = 0x01,
    PathProbeAck = 0x02,
    AddressUpdate = 0x03,
    AddressUpdateAck = 0x04,
    KeepAlive = 0x05,
}

impl ControlType {
    pub const ALL: [ControlType; 5] = [
        Self::PathProbe,
        Self::PathProbeAck,
        Self::AddressUpdate,
        Self::AddressUpdateAck,
        Self::KeepAlive,
    ];
}

impl TryFrom<u8> for ControlType {
    type Error = WireError;

    fn try_from(value: u8) -> Result<Self, WireError> {
        Self::ALL
            .into_iter()
            .find(|t| *t as u8 == value)
            .ok_or(WireError::UnknownType(value))
    }
}

/// A checked view of a control message: its type byte and body.
#[derive(Debug, Clone)]
pub struct ControlPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> ControlPacket<T> {
    pub const HEADER_LEN: usize = 1;

    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    pub fn check_len(&self) -> Result<(), WireError> {
        if self.buffer.as_ref().is_empty() {
            return Err(WireError::Truncated);
        }
        Ok(())
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// The type byte; unknown values are an error (a newer peer's message we ignore).
    pub fn control_type(&self) -> Result<ControlType, WireError> {
        ControlType::try_from(self.buffer.as_ref()[0])
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> ControlPacket<&'a T> {
    pub fn body(&self) -> &'a [u8] {
        &self.buffer.as_ref()[Self::HEADER_LEN..]
    }
}

/// A parsed control message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlRepr {
    /// "Can you hear me on this path?" `path_tag` names the candidate path the sender
    /// used (its own numbering), so it can tell which probe came back.
    PathProbe {
        probe_id: u64,
        path_tag: u8,
    },
    /// Answer to a probe, sent back on the path it arrived on.
    PathProbeAck {
        probe_id: u64,
        observed: SocketAddr,
    },
    /// The sender's new endpoints after a move. `sequence` only goes up, so a delayed
    /// older update cannot undo a newer one.
    AddressUpdate {
        sequence: u64,
        endpoints: Vec<SocketAddr>,
    },
    AddressUpdateAck {
        sequence: u64,
    },
    KeepAlive,
}

impl ControlRepr {
    pub fn control_type(&self) -> ControlType {
        match self {
            Self::PathProbe { .. } => ControlType::PathProbe,
            Self::PathProbeAck { .. } => ControlType::PathProbeAck,
            Self::AddressUpdate { .. } => ControlType::AddressUpdate,
            Self::AddressUpdateAck { .. } => ControlType::AddressUpdateAck,
            Self::KeepAlive => ControlType::KeepAlive,
        }
    }

    pub fn parse<T: AsRef<[u8]> + ?Sized>(packet: &ControlPacket<&T>) -> Result<Self, WireError> {
        packet.check_len()?;
        let mut r = Reader::new(packet.body());
        let repr = match packet.control_type()? {
            ControlType::PathProbe => Self::PathProbe {
                probe_id: r.u64()?,
                path_tag: r.u8()?,
            },
            ControlType::PathProbeAck => Self::PathProbeAck {
                probe_id: r.u64()?,
                observed: r.endpoint()?,
            },
            ControlType::AddressUpdate => Self::AddressUpdate {
                sequence: r.u64()?,
                endpoints: read_endpoints(&mut r, MAX_CONTROL_ENDPOINTS)?,
            },
            ControlType::AddressUpdateAck => Self::AddressUpdateAck { sequence: r.u64()? },
            ControlType::KeepAlive => Self::KeepAlive,
        };
        r.finish()?;
        Ok(repr)
    }

    pub fn buffer_len(&self) -> usize {
        1 + match self {
            Self::PathProbe { .. } => 8 + 1,
            Self::PathProbeAck { observed, .. } => 8 + endpoint_len(observed),
            Self::AddressUpdate { endpoints, .. } => 8 + endpoints_len(endpoints),
            Self::AddressUpdateAck { .. } => 8,
            Self::KeepAlive => 0,
        }
    }

    pub fn emit(&self, buf: &mut [u8]) -> Result<usize, WireError> {
        let mut w = Writer::with_len(buf, self.buffer_len())?;
        w.u8(self.control_type() as u8)?;
        match self {
            Self::PathProbe { probe_id, path_tag } => {
                w.u64(*probe_id)?;
                w.u8(*path_tag)?;
            }
            Self::PathProbeAck { probe_id, observed } => {
                w.u64(*probe_id)?;
                w.endpoint(observed)?;
            }
            Self::AddressUpdate {
                sequence,
                endpoints,
            } => {
                w.u64(*sequence)?;
                write_endpoints(&mut w, endpoints, MAX_CONTROL_ENDPOINTS)?;
            }
            Self::AddressUpdateAck { sequence } => w.u64(*sequence)?,
            Self::KeepAlive => {}
        }
        Ok(w.position())
    }
}

// ---------------------------------------------------------------------------------------
// HolePunching

/// Whether a hole-punching datagram opens a path or answers one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum PunchKind {
    /// Sent by both ends toward every candidate endpoint of the other.
    Punch = 0,
    /// Sent back to the source of a valid punch, echoing its nonce.
    Ack = 1,
}

mod punch_field {
    use std::ops::Range;

    pub(super) const DIRECTION_ID: Range<usize> = 2..18;
    pub(super) const SENDER: Range<usize> = 18..34;
    pub(super) const KIND: usize = 34;
    pub(super) const NONCE: Range<usize> = 35..43;
    pub(super) const MAC: Range<usize> = 43..43 + super::SHORT_MAC_LEN;
}

const PUNCH_LABEL: &[u8] = b"cyphonic punch v1";

/// A checked view of a `HolePunching` datagram (fixed size, [`Self::LEN`] bytes).
#[derive(Debug, Clone)]
pub struct HolePunchingPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> HolePunchingPacket<T> {
    pub const LEN: usize = punch_field::MAC.end;

    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// Checks the prefix and the exact length.
    pub fn check_len(&self) -> Result<(), WireError> {
        let data = self.buffer.as_ref();
        check_prefix(data, MessageType::HolePunching)?;
        match data.len() {
            n if n < Self::LEN => Err(WireError::Truncated),
            n if n > Self::LEN => Err(WireError::TrailingBytes(n - Self::LEN)),
            _ => Ok(()),
        }
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    pub fn direction_id(&self) -> [u8; 16] {
        array(&self.buffer.as_ref()[punch_field::DIRECTION_ID])
    }

    pub fn sender(&self) -> NodeId {
        NodeId(array(&self.buffer.as_ref()[punch_field::SENDER]))
    }

    /// The raw kind byte; [`HolePunchingRepr::parse`] accepts only 0 and 1.
    pub fn kind(&self) -> u8 {
        self.buffer.as_ref()[punch_field::KIND]
    }

    pub fn nonce(&self) -> u64 {
        u64::from_be_bytes(array(&self.buffer.as_ref()[punch_field::NONCE]))
    }

    pub fn mac(&self) -> [u8; SHORT_MAC_LEN] {
        array(&self.buffer.as_ref()[punch_field::MAC])
    }

    /// Checks the MAC over the received bytes in constant time.
    pub fn verify(&self, punch_key: &[u8; 32]) -> Result<(), BadMac> {
        let data = self.buffer.as_ref();
        let expected = short_mac(punch_key, PUNCH_LABEL, &data[..punch_field::MAC.start]);
        ct_check(&expected, &data[punch_field::MAC])
    }
}

/// A parsed `HolePunching` datagram.
///
/// `mac` is the first 16 bytes of HMAC-SHA256(punch_key, "cyphonic punch v1" || every
/// byte before the MAC). Build one with [`Self::sealed`]; check a received one with
/// [`Self::verify`] (or [`HolePunchingPacket::verify`]) before acting on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HolePunchingRepr {
    /// The NMS's id of the direction both nodes were told about.
    pub direction_id: [u8; 16],
    pub sender: NodeId,
    pub kind: PunchKind,
    /// Random per punch; an ack echoes the punch's nonce.
    pub nonce: u64,
    pub mac: [u8; SHORT_MAC_LEN],
}

impl HolePunchingRepr {
    pub const LEN: usize = HolePunchingPacket::<&[u8]>::LEN;

    /// A datagram with its MAC computed under `punch_key`.
    pub fn sealed(
        direction_id: [u8; 16],
        sender: NodeId,
        kind: PunchKind,
        nonce: u64,
        punch_key: &[u8; 32],
    ) -> Self {
        let mut repr = Self {
            direction_id,
            sender,
            kind,
            nonce,
            mac: [0; SHORT_MAC_LEN],
        };
        repr.seal(punch_key);
        repr
    }

    /// The acknowledgement `me` sends back for this (verified) punch.
    pub fn ack(&self, me: NodeId, punch_key: &[u8; 32]) -> Self {
        Self::sealed(self.direction_id, me, PunchKind::Ack, self.nonce, punch_key)
    }

    /// Sets `mac` for the other fields.
    pub fn seal(&mut self, punch_key: &[u8; 32]) {
        self.mac = self.expected_mac(punch_key);
    }

    /// Checks `mac` in constant time.
    pub fn verify(&self, punch_key: &[u8; 32]) -> Result<(), BadMac> {
        ct_check(&self.expected_mac(punch_key), &self.mac)
    }

    pub fn parse<T: AsRef<[u8]> + ?Sized>(
        packet: &HolePunchingPacket<&T>,
    ) -> Result<Self, WireError> {
        packet.check_len()?;
        let kind = match packet.kind() {
            0 => PunchKind::Punch,
            1 => PunchKind::Ack,
            _ => return Err(WireError::Malformed("punch kind")),
        };
        Ok(Self {
            direction_id: packet.direction_id(),
            sender: packet.sender(),
            kind,
            nonce: packet.nonce(),
            mac: packet.mac(),
        })
    }

    pub fn buffer_len(&self) -> usize {
        Self::LEN
    }

    pub fn emit(&self, buf: &mut [u8]) -> Result<usize, WireError> {
        let mut w = Writer::with_len(buf, Self::LEN)?;
        w.prefix(MessageType::HolePunching)?;
        w.bytes(&self.direction_id)?;
        w.node_id(&self.sender)?;
        w.u8(self.kind as u8)?;
        w.u64(self.nonce)?;
        w.bytes(&self.mac)?;
        Ok(w.position())
    }

    fn expected_mac(&self, punch_key: &[u8; 32]) -> [u8; SHORT_MAC_LEN] {
        let mut buf = [0u8; Self::LEN];
        // The buffer has the fixed length of every punch, so emitting cannot fail.
        let _ = self.emit(&mut buf);
        short_mac(punch_key, PUNCH_LABEL, &buf[..punch_field::MAC.start])
    }
}

// ---------------------------------------------------------------------------------------
// Endpoint lists, shared with `wire::signal`.

/// A count byte followed by that many endpoints; more than `max` is malformed.
pub(crate) fn read_endpoints(r: &mut Reader<'_>, max: usize) -> Result<Vec<SocketAddr>, WireError> {
    let count = usize::from(r.u8()?);
    if count > max {
        return Err(WireError::Malformed("too many endpoints"));
    }
    // Each endpoint takes at least 7 bytes: refuse early instead of allocating for a
    // count the message cannot hold.
    if count * 7 > r.remaining() {
        return Err(WireError::Truncated);
    }
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        out.push(r.endpoint()?);
    }
    Ok(out)
}

/// Writes a list for [`read_endpoints`]; refuses (never truncates) more than `max`.
pub(crate) fn write_endpoints(
    w: &mut Writer<'_>,
    endpoints: &[SocketAddr],
    max: usize,
) -> Result<(), WireError> {
    if endpoints.len() > max {
        return Err(WireError::Malformed("too many endpoints"));
    }
    // `max` is at most 255 for every list, checked by the callers' constants.
    w.u8(u8::try_from(endpoints.len()).map_err(|_| WireError::Malformed("too many endpoints"))?)?;
    for endpoint in endpoints {
        w.endpoint(endpoint)?;
    }
    Ok(())
}

/// Bytes of a list written by [`write_endpoints`].
pub(crate) fn endpoints_len(endpoints: &[SocketAddr]) -> usize {
    1 + endpoints.iter().map(endpoint_len).sum::<usize>()
}

fn array<const N: usize>(bytes: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(bytes);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(repr: &ControlRepr) -> Vec<u8> {
        let mut buf = vec![0u8; repr.buffer_len()];
        assert_eq!(repr.emit(&mut buf).unwrap(), buf.len());
        let packet = ControlPacket::new_checked(&buf[..]).unwrap();
        assert_eq!(&ControlRepr::parse(&packet).unwrap(), repr);
        buf
    }

    #[test]
    fn control_round_trips_and_limits() {
        round_trip(&ControlRepr::KeepAlive);
        let bytes = round_trip(&ControlRepr::PathProbe {
            probe_id: 0x0102030405060708,
            path_tag: 9,
        });
        assert_eq!(bytes, [1, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
        round_trip(&ControlRepr::PathProbeAck {
            probe_id: 1,
            observed: "[::1]:5".parse().unwrap(),
        });
        let many: Vec<SocketAddr> = (0..16)
            .map(|i| SocketAddr::from(([192, 0, 2, i], 4500)))
            .collect();
        let full = ControlRepr::AddressUpdate {
            sequence: 3,
            endpoints: many.clone(),
        };
        let mut bytes = round_trip(&full);
        let mut too_many = many;
        too_many.push("192.0.2.99:1".parse().unwrap());
        let over = ControlRepr::AddressUpdate {
            sequence: 3,
            endpoints: too_many,
        };
        assert!(over.emit(&mut [0u8; 512]).is_err());
        // A count of 17 is refused on parse as well.
        bytes[9] = 17;
        let packet = ControlPacket::new_checked(&bytes[..]).unwrap();
        assert!(ControlRepr::parse(&packet).is_err());
        // Trailing bytes and unknown types are refused.
        let packet = ControlPacket::new_checked(&[5u8, 0][..]).unwrap();
        assert_eq!(
            ControlRepr::parse(&packet),
            Err(WireError::TrailingBytes(1))
        );
        let packet = ControlPacket::new_checked(&[0x66u8][..]).unwrap();
        assert_eq!(
            ControlRepr::parse(&packet),
            Err(WireError::UnknownType(0x66))
        );
    }

    #[test]
    fn punch_seal_verify_ack() {
        let key = [3u8; 32];
        let punch = HolePunchingRepr::sealed([1; 16], NodeId([2; 16]), PunchKind::Punch, 77, &key);
        let mut buf = [0u8; HolePunchingRepr::LEN];
        assert_eq!(punch.emit(&mut buf).unwrap(), 59);
        let packet = HolePunchingPacket::new_checked(&buf[..]).unwrap();
        assert_eq!(packet.verify(&key), Ok(()));
        assert_eq!(packet.verify(&[4; 32]), Err(BadMac));
        let parsed = HolePunchingRepr::parse(&packet).unwrap();
        assert_eq!(parsed, punch);
        assert_eq!(parsed.verify(&key), Ok(()));

        let ack = parsed.ack(NodeId([5; 16]), &key);
        assert_eq!(ack.kind, PunchKind::Ack);
        assert_eq!(ack.nonce, 77);
        assert_eq!(ack.verify(&key), Ok(()));

        // Any flipped bit breaks the MAC or the parse.
        for i in 2..buf.len() {
            let mut bad = buf;
            bad[i] ^= 1;
            let packet = HolePunchingPacket::new_checked(&bad[..]).unwrap();
            assert!(packet.verify(&key).is_err(), "byte {i}");
        }
        assert!(HolePunchingPacket::new_checked(&buf[..58]).is_err());
        let mut kind2 = buf;
        kind2[34] = 2;
        let packet = HolePunchingPacket::new_checked(&kind2[..]).unwrap();
        assert!(HolePunchingRepr::parse(&packet).is_err());
    }
}
