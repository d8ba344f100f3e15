//! The tunnel data packet: an inner IP packet ([`MessageType::Capsule`]) or a sealed
//! control message ([`MessageType::Control`]) under a session key.
//!
//! ```text
//!  0  version (1)                 1 byte
//!  1  type (0x13 Capsule | 0x14 Control)
//!  2  reserved, zero              2 bytes
//!  4  receiver session index      4 bytes  chosen by the receiver in the handshake
//!  8  counter                     8 bytes  nonce = 4 zero bytes || counter
//! 16  ciphertext                  n bytes
//! 16+n tag                        16 bytes
//! ```
//!
//! The 16 header bytes are the AEAD's associated data, so none of them can be changed
//! in flight. An empty Capsule (32 bytes in all) is a keepalive.

use super::{MessageType, VERSION, WireError};
use crate::suite::TAG_LEN;

/// Bytes of the cleartext header, which is also the associated data.
pub const DATA_HEADER_LEN: usize = 16;
/// Bytes a data packet adds to the inner packet inside the UDP payload: header + tag.
pub const DATA_OVERHEAD: usize = DATA_HEADER_LEN + TAG_LEN;
/// The shortest valid data packet: an empty Capsule (keepalive).
pub const DATA_MIN_LEN: usize = DATA_OVERHEAD;

mod field {
    use core::ops::Range;

    pub(super) const VERSION: usize = 0;
    pub(super) const TYPE: usize = 1;
    pub(super) const RESERVED: Range<usize> = 2..4;
    pub(super) const RECEIVER: Range<usize> = 4..8;
    pub(super) const COUNTER: Range<usize> = 8..16;
}

/// A checked zero-copy view of a data packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> DataPacket<T> {
    /// Wraps a buffer without any check; accessors may panic on short input.
    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// Wraps a buffer after checking the version, the type, the reserved field and that
    /// there is room for the header and the tag.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let packet = Self::new_unchecked(buffer);
        packet.check()?;
        Ok(packet)
    }

    fn check(&self) -> Result<(), WireError> {
        let data = self.buffer.as_ref();
        let kind = super::classify(data)?;
        if !matches!(kind, MessageType::Capsule | MessageType::Control) {
            return Err(WireError::WrongType);
        }
        if data.len() < DATA_MIN_LEN {
            return Err(WireError::Truncated);
        }
        if data[field::RESERVED] != [0, 0] {
            return Err(WireError::Malformed("data reserved field"));
        }
        Ok(())
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    pub fn kind(&self) -> MessageType {
        if self.buffer.as_ref()[field::TYPE] == MessageType::Control as u8 {
            MessageType::Control
        } else {
            MessageType::Capsule
        }
    }

    pub fn receiver_index(&self) -> u32 {
        let mut raw = [0u8; 4];
        raw.copy_from_slice(&self.buffer.as_ref()[field::RECEIVER]);
        u32::from_be_bytes(raw)
    }

    pub fn counter(&self) -> u64 {
        let mut raw = [0u8; 8];
        raw.copy_from_slice(&self.buffer.as_ref()[field::COUNTER]);
        u64::from_be_bytes(raw)
    }

    /// The 16 header bytes: the associated data of the AEAD.
    pub fn header(&self) -> &[u8] {
        &self.buffer.as_ref()[..DATA_HEADER_LEN]
    }

    /// Ciphertext followed by the tag.
    pub fn sealed_payload(&self) -> &[u8] {
        &self.buffer.as_ref()[DATA_HEADER_LEN..]
    }

    /// Length of the plaintext this packet carries.
    pub fn plaintext_len(&self) -> usize {
        self.buffer.as_ref().len() - DATA_OVERHEAD
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> DataPacket<T> {
    /// Splits the packet into the header (associated data) and the sealed payload so
    /// that the payload can be opened in place.
    pub fn header_and_payload_mut(&mut self) -> (&[u8], &mut [u8]) {
        let (header, payload) = self.buffer.as_mut().split_at_mut(DATA_HEADER_LEN);
        (header, payload)
    }
}

/// The parsed data header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataHeaderRepr {
    /// [`MessageType::Capsule`] or [`MessageType::Control`].
    pub kind: MessageType,
    pub receiver_index: u32,
    pub counter: u64,
}

impl DataHeaderRepr {
    pub fn parse<T: AsRef<[u8]> + ?Sized>(packet: &DataPacket<&T>) -> Result<Self, WireError> {
        packet.check()?;
        Ok(Self {
            kind: packet.kind(),
            receiver_index: packet.receiver_index(),
            counter: packet.counter(),
        })
    }

    /// Bytes the header takes; the sealed payload follows it.
    pub const fn buffer_len(&self) -> usize {
        DATA_HEADER_LEN
    }

    /// Writes the 16 header bytes at the front of `buf`.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize, WireError> {
        if !matches!(self.kind, MessageType::Capsule | MessageType::Control) {
            return Err(WireError::WrongType);
        }
        let Some(header) = buf.get_mut(..DATA_HEADER_LEN) else {
            return Err(WireError::BufferTooSmall {
                needed: DATA_HEADER_LEN,
                available: buf.len(),
            });
        };
        header[field::VERSION] = VERSION;
        header[field::TYPE] = self.kind as u8;
        header[field::RESERVED].copy_from_slice(&[0, 0]);
        header[field::RECEIVER].copy_from_slice(&self.receiver_index.to_be_bytes());
        header[field::COUNTER].copy_from_slice(&self.counter.to_be_bytes());
        Ok(DATA_HEADER_LEN)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let mut buf = vec![0u8; DATA_MIN_LEN + 5];
        let repr = DataHeaderRepr {
            kind: MessageType::Capsule,
            receiver_index: 0x0102_0304,
            counter: 0x1122_3344_5566_7788,
        };
        assert_eq!(repr.emit(&mut buf).unwrap(), 16);
        buf
    }

    #[test]
    fn layout_is_byte_exact() {
        let buf = sample();
        assert_eq!(
            &buf[..16],
            &[
                1, 0x13, 0, 0, 1, 2, 3, 4, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88
            ]
        );
        let packet = DataPacket::new_checked(&buf[..]).unwrap();
        assert_eq!(packet.kind(), MessageType::Capsule);
        assert_eq!(packet.receiver_index(), 0x0102_0304);
        assert_eq!(packet.counter(), 0x1122_3344_5566_7788);
        assert_eq!(packet.plaintext_len(), 5);
        assert_eq!(packet.sealed_payload().len(), 5 + TAG_LEN);
        let repr = DataHeaderRepr::parse(&packet).unwrap();
        assert_eq!(repr.counter, 0x1122_3344_5566_7788);
    }

    #[test]
    fn rejects_bad_input() {
        let buf = sample();
        assert_eq!(
            DataPacket::new_checked(&buf[..31]).unwrap_err(),
            WireError::Truncated
        );
        let mut reserved = buf.clone();
        reserved[3] = 1;
        assert!(matches!(
            DataPacket::new_checked(&reserved[..]),
            Err(WireError::Malformed(_))
        ));
        let mut kind = buf.clone();
        kind[1] = MessageType::TunnelRequest as u8;
        assert_eq!(
            DataPacket::new_checked(&kind[..]).unwrap_err(),
            WireError::WrongType
        );
        let mut version = buf;
        version[0] = 9;
        assert_eq!(
            DataPacket::new_checked(&version[..]).unwrap_err(),
            WireError::UnknownVersion(9)
        );
        let bad = DataHeaderRepr {
            kind: MessageType::Signal,
            receiver_index: 0,
            counter: 0,
        };
        assert_eq!(bad.emit(&mut [0u8; 16]), Err(WireError::WrongType));
        let ok = DataHeaderRepr {
            kind: MessageType::Control,
            receiver_index: 0,
            counter: 0,
        };
        assert!(matches!(
            ok.emit(&mut [0u8; 15]),
            Err(WireError::BufferTooSmall { .. })
        ));
    }

    #[test]
    fn never_panics_on_arbitrary_input() {
        for len in 0..40 {
            for fill in [0u8, 1, 0x13, 0x14, 0xff] {
                let mut buf = vec![fill; len];
                if len > 1 {
                    buf[0] = VERSION;
                }
                if let Ok(p) = DataPacket::new_checked(&buf[..]) {
                    let _ = (p.kind(), p.receiver_index(), p.counter(), p.header());
                    let _ = DataHeaderRepr::parse(&p);
                }
            }
        }
    }
}
