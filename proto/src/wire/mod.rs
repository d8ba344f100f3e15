//! Wire formats of every datagram cyphonic sends.
//!
//! Each message comes in two shapes, after smoltcp's `wire` module:
//! - a checked zero-copy view `XxxPacket<T: AsRef<[u8]>>` whose `new_checked` validates
//!   every length before any accessor can index, and
//! - a parsed representation `XxxRepr` with `parse(&XxxPacket<&T>)`, `buffer_len()` and
//!   `emit(&self, &mut [u8])`.
//!
//! Every datagram starts with the same two bytes: the protocol [`VERSION`] and a
//! [`MessageType`]. A receiver that meets another version or an unknown type drops the
//! datagram, counts it and never answers (an answer would make us an amplifier and tell
//! a scanner what we run). `docs/protocol.md` has every layout byte by byte.
//!
//! Integers are big-endian. Names travel as a length byte followed by the lower-case
//! ASCII name; socket addresses as a family byte (4 or 6), the port and the address.

pub mod channel;
pub mod data;
pub mod handshake;
pub mod node;
pub mod relay;
pub mod signal;
pub mod status;

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The protocol version every datagram carries in its first byte.
pub const VERSION: u8 = 1;

/// Length of the version + type prefix every datagram starts with.
pub const PREFIX_LEN: usize = 2;

/// Errors found while reading or writing a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("datagram truncated")]
    Truncated,
    #[error("unsupported protocol version {0}")]
    UnknownVersion(u8),
    #[error("unknown message type 0x{0:02x}")]
    UnknownType(u8),
    #[error("message has the wrong type for this parser")]
    WrongType,
    #[error("malformed field: {0}")]
    Malformed(&'static str),
    #[error("{0} trailing bytes after the message")]
    TrailingBytes(usize),
    #[error("output buffer too small: need {needed} bytes, have {available}")]
    BufferTooSmall { needed: usize, available: usize },
}

/// What the second byte of a datagram says it is.
///
/// Node <-> cloud traffic is [`ChannelHello`](Self::ChannelHello) /
/// [`ChannelAccept`](Self::ChannelAccept) once, then [`Signal`](Self::Signal) datagrams
/// whose sealed body carries a [`signal::SignalType`]. Node <-> node traffic is the
/// tunnel handshake, then [`Capsule`](Self::Capsule) (an inner IP packet) and
/// [`Control`](Self::Control) (a sealed [`node::ControlType`] message) under the session
/// keys. TRS traffic is the relay binding and relayed datagrams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum MessageType {
    ChannelHello = 0x01,
    ChannelAccept = 0x02,
    Signal = 0x03,
    TunnelRequest = 0x10,
    TunnelResponse = 0x11,
    CookieReply = 0x12,
    Capsule = 0x13,
    Control = 0x14,
    HolePunching = 0x15,
    RelayBind = 0x20,
    RelayBindAck = 0x21,
    RelayData = 0x22,
}

impl MessageType {
    pub const ALL: [MessageType; 12] = [
        Self::ChannelHello,
        Self::ChannelAccept,
        Self::Signal,
        Self::TunnelRequest,
        Self::TunnelResponse,
        Self::CookieReply,
        Self::Capsule,
        Self::Control,
        Self::HolePunching,
        Self::RelayBind,
        Self::RelayBindAck,
        Self::RelayData,
    ];
}

impl TryFrom<u8> for MessageType {
    type Error = WireError;

    fn try_from(value: u8) -> Result<Self, WireError> {
        Self::ALL
            .into_iter()
            .find(|t| *t as u8 == value)
            .ok_or(WireError::UnknownType(value))
    }
}

/// Reads the version and type of a datagram without looking further.
pub fn classify(datagram: &[u8]) -> Result<MessageType, WireError> {
    let [version, kind, ..] = datagram else {
        return Err(WireError::Truncated);
    };
    if *version != VERSION {
        return Err(WireError::UnknownVersion(*version));
    }
    MessageType::try_from(*kind)
}

/// Checks that `datagram` starts with our version and `expected`.
pub fn check_prefix(datagram: &[u8], expected: MessageType) -> Result<(), WireError> {
    if classify(datagram)? != expected {
        return Err(WireError::WrongType);
    }
    Ok(())
}

/// A node's identity: 16 random bytes chosen by the AS, never derived from public names
/// (the original CYPHONIC used UUIDv5 of the FQDN, which anyone could compute).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct NodeId(pub [u8; 16]);

impl NodeId {
    pub const LEN: usize = 16;

    pub fn random(rng: &mut (impl rand_core::RngCore + rand_core::CryptoRng)) -> Self {
        let mut id = [0u8; 16];
        rng.fill_bytes(&mut id);
        Self(id)
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({self})")
    }
}

/// A fully qualified name in the overlay domain, e.g. `laptop.alice.cyphonic`.
///
/// Parse, don't validate: a value of this type is lower-case letters, digits and hyphens
/// in dot-separated labels of 1..=63 bytes, no leading or trailing hyphen, at most 253
/// bytes in all, without a trailing dot.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Fqdn(String);

impl Fqdn {
    pub const MAX_LEN: usize = 253;

    /// Accepts upper case and a single trailing dot, and stores the canonical form.
    pub fn new(name: &str) -> Result<Self, WireError> {
        let name = name.strip_suffix('.').unwrap_or(name);
        if name.is_empty() || name.len() > Self::MAX_LEN {
            return Err(WireError::Malformed("name length"));
        }
        for label in name.split('.') {
            let bytes = label.as_bytes();
            if bytes.is_empty() || bytes.len() > 63 {
                return Err(WireError::Malformed("name label length"));
            }
            if bytes[0] == b'-' || bytes[bytes.len() - 1] == b'-' {
                return Err(WireError::Malformed("name label hyphen"));
            }
            if !bytes
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || *b == b'-')
            {
                return Err(WireError::Malformed("name character"));
            }
        }
        Ok(Self(name.to_ascii_lowercase()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// True when this name is `domain` itself or lies under it.
    pub fn is_within(&self, domain: &Fqdn) -> bool {
        self.0 == domain.0
            || (self.0.len() > domain.0.len()
                && self.0.ends_with(domain.0.as_str())
                && self.0.as_bytes()[self.0.len() - domain.0.len() - 1] == b'.')
    }

    /// Bytes this name takes on the wire (length byte + name).
    pub fn wire_len(&self) -> usize {
        1 + self.0.len()
    }
}

impl fmt::Display for Fqdn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Fqdn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fqdn({})", self.0)
    }
}

#[cfg(feature = "serde")]
impl<'de> serde::Deserialize<'de> for Fqdn {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Fqdn::new(&text).map_err(|e| serde::de::Error::custom(format!("`{text}`: {e}")))
    }
}

impl std::str::FromStr for Fqdn {
    type Err = WireError;

    fn from_str(s: &str) -> Result<Self, WireError> {
        Self::new(s)
    }
}

/// Bytes a socket address takes on the wire: family (1) + port (2) + 4 or 16.
pub fn endpoint_len(endpoint: &SocketAddr) -> usize {
    match endpoint {
        SocketAddr::V4(_) => 1 + 2 + 4,
        SocketAddr::V6(_) => 1 + 2 + 16,
    }
}

/// Bounds-checked cursor over a received message. Every read either returns the bytes
/// or [`WireError::Truncated`]; nothing here can panic on hostile input.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    pub fn position(&self) -> usize {
        self.pos
    }

    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub fn bytes(&mut self, len: usize) -> Result<&'a [u8], WireError> {
        let end = self.pos.checked_add(len).ok_or(WireError::Truncated)?;
        let out = self.buf.get(self.pos..end).ok_or(WireError::Truncated)?;
        self.pos = end;
        Ok(out)
    }

    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.bytes(N)?);
        Ok(out)
    }

    pub fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.array::<1>()?[0])
    }

    pub fn u16(&mut self) -> Result<u16, WireError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    pub fn u32(&mut self) -> Result<u32, WireError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    pub fn u64(&mut self) -> Result<u64, WireError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    pub fn node_id(&mut self) -> Result<NodeId, WireError> {
        Ok(NodeId(self.array()?))
    }

    /// A length byte followed by that many bytes.
    pub fn short_bytes(&mut self) -> Result<&'a [u8], WireError> {
        let len = self.u8()?;
        self.bytes(usize::from(len))
    }

    /// A `u16` length followed by that many bytes.
    pub fn long_bytes(&mut self) -> Result<&'a [u8], WireError> {
        let len = self.u16()?;
        self.bytes(usize::from(len))
    }

    pub fn fqdn(&mut self) -> Result<Fqdn, WireError> {
        let raw = self.short_bytes()?;
        let text = std::str::from_utf8(raw).map_err(|_| WireError::Malformed("name encoding"))?;
        let name = Fqdn::new(text)?;
        // Only the canonical form is accepted so that a name has exactly one encoding
        // and signatures over it cannot be malleated.
        if name.as_str() != text {
            return Err(WireError::Malformed("name not canonical"));
        }
        Ok(name)
    }

    pub fn ipv4(&mut self) -> Result<Ipv4Addr, WireError> {
        Ok(Ipv4Addr::from(self.array::<4>()?))
    }

    pub fn ipv6(&mut self) -> Result<Ipv6Addr, WireError> {
        Ok(Ipv6Addr::from(self.array::<16>()?))
    }

    pub fn endpoint(&mut self) -> Result<SocketAddr, WireError> {
        match self.u8()? {
            4 => {
                let port = self.u16()?;
                Ok(SocketAddr::new(IpAddr::V4(self.ipv4()?), port))
            }
            6 => {
                let port = self.u16()?;
                Ok(SocketAddr::new(IpAddr::V6(self.ipv6()?), port))
            }
            _ => Err(WireError::Malformed("address family")),
        }
    }

    /// Everything not read yet.
    pub fn rest(&mut self) -> &'a [u8] {
        let out = &self.buf[self.pos..];
        self.pos = self.buf.len();
        out
    }

    /// Fails unless every byte was consumed: a message has exactly one encoding.
    pub fn finish(&self) -> Result<(), WireError> {
        match self.remaining() {
            0 => Ok(()),
            n => Err(WireError::TrailingBytes(n)),
        }
    }
}

/// Bounds-checked cursor for emitting a message into a caller-owned buffer.
#[derive(Debug)]
pub struct Writer<'a> {
    buf: &'a mut [u8],
    pos: usize,
}

impl<'a> Writer<'a> {
    pub fn new(buf: &'a mut [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    /// Fails up front when `needed` bytes do not fit, so that later puts cannot fail
    /// halfway through a message.
    pub fn with_len(buf: &'a mut [u8], needed: usize) -> Result<Self, WireError> {
        if buf.len() < needed {
            return Err(WireError::BufferTooSmall {
                needed,
                available: buf.len(),
            });
        }
        Ok(Self::new(buf))
    }

    pub fn position(&self) -> usize {
        self.pos
    }

    pub fn bytes(&mut self, data: &[u8]) -> Result<(), WireError> {
        let end = self.pos + data.len();
        let available = self.buf.len();
        let dst = self
            .buf
            .get_mut(self.pos..end)
            .ok_or(WireError::BufferTooSmall {
                needed: end,
                available,
            })?;
        dst.copy_from_slice(data);
        self.pos = end;
        Ok(())
    }

    pub fn u8(&mut self, v: u8) -> Result<(), WireError> {
        self.bytes(&[v])
    }

    pub fn u16(&mut self, v: u16) -> Result<(), WireError> {
        self.bytes(&v.to_be_bytes())
    }

    pub fn u32(&mut self, v: u32) -> Result<(), WireError> {
        self.bytes(&v.to_be_bytes())
    }

    pub fn u64(&mut self, v: u64) -> Result<(), WireError> {
        self.bytes(&v.to_be_bytes())
    }

    pub fn prefix(&mut self, kind: MessageType) -> Result<(), WireError> {
        self.bytes(&[VERSION, kind as u8])
    }

    pub fn node_id(&mut self, id: &NodeId) -> Result<(), WireError> {
        self.bytes(&id.0)
    }

    pub fn short_bytes(&mut self, data: &[u8]) -> Result<(), WireError> {
        let len = u8::try_from(data.len()).map_err(|_| WireError::Malformed("field too long"))?;
        self.u8(len)?;
        self.bytes(data)
    }

    pub fn long_bytes(&mut self, data: &[u8]) -> Result<(), WireError> {
        let len = u16::try_from(data.len()).map_err(|_| WireError::Malformed("field too long"))?;
        self.u16(len)?;
        self.bytes(data)
    }

    pub fn fqdn(&mut self, name: &Fqdn) -> Result<(), WireError> {
        self.short_bytes(name.as_str().as_bytes())
    }

    pub fn endpoint(&mut self, endpoint: &SocketAddr) -> Result<(), WireError> {
        match endpoint {
            SocketAddr::V4(a) => {
                self.u8(4)?;
                self.u16(a.port())?;
                self.bytes(&a.ip().octets())
            }
            SocketAddr::V6(a) => {
                self.u8(6)?;
                self.u16(a.port())?;
                self.bytes(&a.ip().octets())
            }
        }
    }

    /// The mutable rest of the buffer, for callers that fill a region in place (sealed
    /// bodies); advance past it with [`Writer::advance`].
    pub fn tail(&mut self) -> &mut [u8] {
        &mut self.buf[self.pos..]
    }

    pub fn advance(&mut self, len: usize) -> Result<(), WireError> {
        let end = self.pos + len;
        if end > self.buf.len() {
            return Err(WireError::BufferTooSmall {
                needed: end,
                available: self.buf.len(),
            });
        }
        self.pos = end;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify_rejects_other_versions_and_types() {
        assert_eq!(classify(&[]), Err(WireError::Truncated));
        assert_eq!(classify(&[1]), Err(WireError::Truncated));
        assert_eq!(classify(&[2, 0x10]), Err(WireError::UnknownVersion(2)));
        assert_eq!(classify(&[1, 0x7f]), Err(WireError::UnknownType(0x7f)));
        assert_eq!(classify(&[1, 0x13, 9]), Ok(MessageType::Capsule));
    }

    #[test]
    fn fqdn_is_canonical() {
        assert_eq!(
            Fqdn::new("Laptop.Alice.cyphonic.").unwrap().as_str(),
            "laptop.alice.cyphonic"
        );
        for bad in [
            "",
            ".",
            "a..b",
            "-a.b",
            "a-.b",
            "a_b.c",
            "ä.b",
            &"a".repeat(64),
        ] {
            assert!(Fqdn::new(bad).is_err(), "{bad:?}");
        }
        let domain = Fqdn::new("alice.cyphonic").unwrap();
        assert!(
            Fqdn::new("laptop.alice.cyphonic")
                .unwrap()
                .is_within(&domain)
        );
        assert!(Fqdn::new("alice.cyphonic").unwrap().is_within(&domain));
        assert!(!Fqdn::new("xalice.cyphonic").unwrap().is_within(&domain));
    }

    #[test]
    fn reader_never_panics_on_short_input() {
        let mut r = Reader::new(&[6, 0, 1, 2]);
        assert_eq!(r.endpoint(), Err(WireError::Truncated));
        let mut r = Reader::new(&[200]);
        assert_eq!(r.short_bytes(), Err(WireError::Truncated));
    }

    #[test]
    fn endpoint_round_trip() {
        for ep in ["192.0.2.1:4500", "[2001:db8::1]:65535"] {
            let ep: SocketAddr = ep.parse().unwrap();
            let mut buf = [0u8; 19];
            let mut w = Writer::new(&mut buf);
            w.endpoint(&ep).unwrap();
            let len = w.position();
            assert_eq!(len, endpoint_len(&ep));
            assert_eq!(Reader::new(&buf[..len]).endpoint().unwrap(), ep);
        }
    }
}
