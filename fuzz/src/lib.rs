//! The checks behind every fuzz target, shared so that `datagram` can dispatch to them.
//!
//! Each check parses the input and, when parsing succeeds, asserts that emitting the
//! parsed value gives back exactly the input bytes (every message has exactly one
//! encoding) and that `buffer_len` predicted the emitted length. Checks of views whose
//! `parse` re-validates also parse the unchecked view and require the same answer. A
//! panic anywhere, including in the parser, is a finding.

use cyphonic_proto::credential::SignedCredential;
use cyphonic_proto::wire::channel::{
    AcceptPayload, ChannelAcceptPacket, ChannelAcceptRepr, ChannelCookiePacket, ChannelCookieRepr,
    ChannelHelloPacket, ChannelHelloRepr, HELLO_HEADER_LEN, HELLO_PAYLOAD_OFFSET, HelloPayload,
    SIGNAL_HEADER_LEN, SignalPacket as ChannelSignalPacket, SignalRepr as ChannelSignalRepr,
};
use cyphonic_proto::wire::data::{DATA_HEADER_LEN, DATA_OVERHEAD, DataHeaderRepr, DataPacket};
use cyphonic_proto::wire::handshake::{
    CookieReplyPacket, CookieReplyRepr, MAC_LEN, REQUEST_PAYLOAD_OFFSET, RESPONSE_PAYLOAD_OFFSET,
    RequestPayload, ResponsePayload, SuiteList, TunnelRequestPacket, TunnelRequestRepr,
    TunnelResponsePacket, TunnelResponseRepr,
};
use cyphonic_proto::wire::node::{
    ControlPacket, ControlRepr, HolePunchingPacket, HolePunchingRepr,
};
use cyphonic_proto::wire::relay::{
    RelayBindAckPacket, RelayBindAckRepr, RelayBindPacket, RelayBindRepr, RelayDataPacket,
    RelayDataRepr, RelayTicket,
};
use cyphonic_proto::wire::signal::{SignalPacket, SignalRepr};
use cyphonic_proto::wire::{self, MessageType, WireError};

/// How deep `datagram` follows relayed datagrams inside `RelayData`.
const MAX_RELAY_DEPTH: usize = 4;

/// Asserts that `emit` writes exactly `expected` in `len` bytes.
fn assert_reemits(
    expected: &[u8],
    len: usize,
    emit: impl FnOnce(&mut [u8]) -> Result<usize, WireError>,
) {
    let mut out = vec![0u8; len];
    let written = emit(&mut out).expect("a parsed message must emit");
    assert_eq!(written, len, "buffer_len disagrees with emit");
    assert_eq!(
        out, expected,
        "re-emitted bytes differ from the parsed input"
    );
}

/// The sealed body of a `Signal` datagram (node <-> cloud signaling).
pub fn signal(data: &[u8]) {
    let Ok(packet) = SignalPacket::new_checked(data) else {
        return;
    };
    if let Ok(repr) = SignalRepr::parse(&packet) {
        assert_reemits(data, repr.buffer_len(), |b| repr.emit(b));
    }
}

/// The sealed plaintext of a `Control` data packet.
pub fn control(data: &[u8]) {
    let Ok(packet) = ControlPacket::new_checked(data) else {
        return;
    };
    if let Ok(repr) = ControlRepr::parse(&packet) {
        assert_reemits(data, repr.buffer_len(), |b| repr.emit(b));
    }
}

pub fn hole_punching(data: &[u8]) {
    let Ok(packet) = HolePunchingPacket::new_checked(data) else {
        return;
    };
    // Verifying under some key must never panic, whatever the bytes.
    let _ = packet.verify(&[0u8; 32]);
    if let Ok(repr) = HolePunchingRepr::parse(&packet) {
        assert_reemits(data, repr.buffer_len(), |b| repr.emit(b));
        assert_eq!(
            repr.verify(&[0u8; 32]).is_ok(),
            packet.verify(&[0u8; 32]).is_ok()
        );
    }
}

pub fn relay_bind(data: &[u8]) {
    let Ok(packet) = RelayBindPacket::new_checked(data) else {
        return;
    };
    if let Ok(repr) = RelayBindRepr::parse(&packet) {
        assert_reemits(data, repr.buffer_len(), |b| repr.emit(b));
        assert_eq!(
            repr.verify(&[1u8; 32]).is_ok(),
            packet.verify(&[1u8; 32]).is_ok()
        );
    }
}

pub fn relay_bind_ack(data: &[u8]) {
    let Ok(packet) = RelayBindAckPacket::new_checked(data) else {
        return;
    };
    let _ = packet.verify(&[2u8; 32]);
    if let Ok(repr) = RelayBindAckRepr::parse(&packet) {
        assert_reemits(data, repr.buffer_len(), |b| repr.emit(b));
        assert_eq!(
            repr.verify(&[2u8; 32]).is_ok(),
            packet.verify(&[2u8; 32]).is_ok()
        );
    }
}

pub fn relay_data(data: &[u8]) {
    relay_data_at(data, 0);
}

/// A relay ticket on its own (it is fixed size: any 96 bytes parse).
pub fn relay_ticket(data: &[u8]) {
    if let Ok(ticket) = RelayTicket::parse(data) {
        assert_eq!(&ticket.to_bytes()[..], data);
        let mut out = [0u8; RelayTicket::LEN];
        ticket
            .write(&mut wire::Writer::new(&mut out))
            .expect("a ticket fits its own length");
        assert_eq!(&out[..], data);
    }
}

/// A signed credential (signature not checked: parsing must be safe before it is).
pub fn credential(data: &[u8]) {
    if let Ok(credential) = SignedCredential::parse(data) {
        assert_eq!(credential.as_bytes(), data);
        assert_eq!(credential.credential().signed_len(), data.len());
    }
    // The self-delimiting reader must agree with the whole-buffer parser.
    let mut r = wire::Reader::new(data);
    if let Ok(credential) = SignedCredential::read(&mut r) {
        assert_eq!(credential.as_bytes(), &data[..r.position()]);
    }
}

/// A whole datagram as it arrives on a socket: classify it, then hand it to the parser
/// of its type.
pub fn datagram(data: &[u8]) {
    datagram_at(data, 0);
}

fn datagram_at(data: &[u8], depth: usize) {
    let Ok(kind) = wire::classify(data) else {
        return;
    };
    match kind {
        MessageType::HolePunching => hole_punching(data),
        MessageType::RelayBind => relay_bind(data),
        MessageType::RelayBindAck => relay_bind_ack(data),
        MessageType::RelayData => relay_data_at(data, depth),
        MessageType::ChannelHello => channel_hello(data),
        MessageType::ChannelAccept => channel_accept(data),
        // The body is sealed under the channel keys, so the inner signaling message
        // (the `signal` target) cannot be reached from here.
        MessageType::Signal => channel_signal(data),
        MessageType::TunnelRequest => tunnel_request(data),
        MessageType::TunnelResponse => tunnel_response(data),
        // The tunnel and the channel share this type byte: `cookie_reply` runs both.
        MessageType::CookieReply => cookie_reply(data),
        MessageType::Capsule | MessageType::Control => data_header(data),
    }
}

/// A tunnel handshake request; the Noise ciphertexts are opaque here.
pub fn tunnel_request(data: &[u8]) {
    // `parse` re-checks, so it must be safe on an unchecked view too, and agree.
    let unchecked = TunnelRequestRepr::parse(&TunnelRequestPacket::new_unchecked(data));
    let Ok(packet) = TunnelRequestPacket::new_checked(data) else {
        assert!(
            unchecked.is_err(),
            "parse accepted what new_checked refused"
        );
        return;
    };
    assert_eq!(packet.len(), data.len());
    assert_eq!(packet.mac1_offset() + 2 * MAC_LEN, data.len());
    assert_eq!(packet.mac2(), &data[packet.mac2_offset()..]);
    let _ = (
        packet.sender_index(),
        packet.ephemeral(),
        packet.encrypted_static(),
    );
    let _ = packet.mac1();
    let repr = TunnelRequestRepr::parse(&packet);
    assert_eq!(repr, unchecked);
    if let Ok(repr) = repr {
        assert_eq!(repr.encrypted_payload, packet.encrypted_payload());
        assert_eq!(
            REQUEST_PAYLOAD_OFFSET + repr.encrypted_payload.len(),
            packet.mac1_offset()
        );
        assert_reemits(data, repr.buffer_len(), |b| repr.emit(b));
    }
}

/// A tunnel handshake response.
pub fn tunnel_response(data: &[u8]) {
    let unchecked = TunnelResponseRepr::parse(&TunnelResponsePacket::new_unchecked(data));
    let Ok(packet) = TunnelResponsePacket::new_checked(data) else {
        assert!(
            unchecked.is_err(),
            "parse accepted what new_checked refused"
        );
        return;
    };
    assert_eq!(packet.len(), data.len());
    assert_eq!(packet.mac1_offset() + 2 * MAC_LEN, data.len());
    assert_eq!(packet.mac2(), &data[packet.mac2_offset()..]);
    let _ = (
        packet.sender_index(),
        packet.receiver_index(),
        packet.ephemeral(),
    );
    let _ = packet.mac1();
    let repr = TunnelResponseRepr::parse(&packet);
    assert_eq!(repr, unchecked);
    if let Ok(repr) = repr {
        assert_eq!(repr.encrypted_payload, packet.encrypted_payload());
        assert_eq!(
            RESPONSE_PAYLOAD_OFFSET + repr.encrypted_payload.len(),
            packet.mac1_offset()
        );
        assert_reemits(data, repr.buffer_len(), |b| repr.emit(b));
    }
}

/// `MessageType::CookieReply`, which the tunnel and the channel share with the same
/// layout: both parsers must accept exactly the same datagrams and read the same
/// fields, or a node would answer one kind of cookie differently from the other.
pub fn cookie_reply(data: &[u8]) {
    let tunnel = CookieReplyRepr::parse(&CookieReplyPacket::new_unchecked(data));
    let channel = ChannelCookieRepr::parse(&ChannelCookiePacket::new_unchecked(data));
    if let Ok(packet) = CookieReplyPacket::new_checked(data) {
        let _ = (
            packet.receiver_index(),
            packet.nonce(),
            packet.encrypted_cookie(),
        );
        assert_eq!(CookieReplyRepr::parse(&packet), tunnel);
    } else {
        assert!(tunnel.is_err(), "parse accepted what new_checked refused");
    }
    if let Ok(packet) = ChannelCookiePacket::new_checked(data) {
        let _ = (packet.reserved(), packet.receiver_index(), packet.nonce());
        let _ = packet.encrypted_cookie();
        assert_eq!(ChannelCookieRepr::parse(&packet), channel);
    } else {
        assert!(channel.is_err(), "parse accepted what new_checked refused");
    }
    match (&tunnel, &channel) {
        (Ok(t), Ok(c)) => {
            assert_eq!(t.receiver_index, c.receiver_index);
            assert_eq!(t.nonce, c.nonce);
            assert_eq!(t.encrypted_cookie, c.encrypted_cookie);
        }
        (Err(_), Err(_)) => {}
        _ => panic!("tunnel and channel cookie parsers disagree: {tunnel:?} vs {channel:?}"),
    }
    if let Ok(repr) = tunnel {
        assert_reemits(data, repr.buffer_len(), |b| repr.emit(b));
    }
    if let Ok(repr) = channel {
        assert_reemits(data, repr.buffer_len(), |b| repr.emit(b));
    }
}

/// The cleartext header of a `Capsule` or `Control` data packet; the rest is sealed.
pub fn data_header(data: &[u8]) {
    let unchecked = DataHeaderRepr::parse(&DataPacket::new_unchecked(data));
    let Ok(packet) = DataPacket::new_checked(data) else {
        assert!(
            unchecked.is_err(),
            "parse accepted what new_checked refused"
        );
        return;
    };
    assert_eq!(packet.plaintext_len() + DATA_OVERHEAD, data.len());
    assert_eq!(packet.header(), &data[..DATA_HEADER_LEN]);
    assert_eq!(packet.sealed_payload(), &data[DATA_HEADER_LEN..]);
    let repr = DataHeaderRepr::parse(&packet);
    assert_eq!(repr, unchecked);
    if let Ok(repr) = repr {
        assert_eq!(repr.kind, packet.kind());
        assert_eq!(repr.kind as u8, data[1]);
        assert_eq!(repr.receiver_index, packet.receiver_index());
        assert_eq!(repr.counter, packet.counter());
        // Only the header is the repr's; the sealed payload follows it untouched.
        assert_reemits(&data[..DATA_HEADER_LEN], repr.buffer_len(), |b| {
            repr.emit(b)
        });
    }
}

/// A channel hello (node -> cloud).
pub fn channel_hello(data: &[u8]) {
    let unchecked = ChannelHelloRepr::parse(&ChannelHelloPacket::new_unchecked(data));
    let Ok(packet) = ChannelHelloPacket::new_checked(data) else {
        assert!(
            unchecked.is_err(),
            "parse accepted what new_checked refused"
        );
        return;
    };
    assert_eq!(packet.header(), &data[..HELLO_HEADER_LEN]);
    assert_eq!(packet.noise_range().end + 2 * MAC_LEN, data.len());
    assert_eq!(
        packet.mac1_input().len() + MAC_LEN,
        packet.mac2_input().len()
    );
    assert_eq!(&packet.mac2()[..], &data[data.len() - MAC_LEN..]);
    let _ = (packet.service(), packet.reserved(), packet.sender_index());
    let _ = (packet.ephemeral(), packet.encrypted_static(), packet.mac1());
    let repr = ChannelHelloRepr::parse(&packet);
    assert_eq!(repr, unchecked);
    if let Ok(repr) = repr {
        assert_eq!(repr.encrypted_payload, packet.encrypted_payload());
        assert_eq!(
            HELLO_PAYLOAD_OFFSET + repr.encrypted_payload.len(),
            packet.mac1_input().len()
        );
        assert_reemits(data, repr.buffer_len(), |b| repr.emit(b));
    }
}

/// A channel accept (cloud -> node).
pub fn channel_accept(data: &[u8]) {
    let unchecked = ChannelAcceptRepr::parse(&ChannelAcceptPacket::new_unchecked(data));
    let Ok(packet) = ChannelAcceptPacket::new_checked(data) else {
        assert!(
            unchecked.is_err(),
            "parse accepted what new_checked refused"
        );
        return;
    };
    assert_eq!(packet.noise_range().end, data.len());
    let _ = (
        packet.reserved(),
        packet.sender_index(),
        packet.receiver_index(),
    );
    let _ = (
        packet.header(),
        packet.ephemeral(),
        packet.encrypted_payload(),
    );
    let repr = ChannelAcceptRepr::parse(&packet);
    assert_eq!(repr, unchecked);
    if let Ok(repr) = repr {
        assert_reemits(data, repr.buffer_len(), |b| repr.emit(b));
    }
}

/// The outer `Signal` datagram of the channel: cleartext header, sealed body.
pub fn channel_signal(data: &[u8]) {
    let unchecked = ChannelSignalRepr::parse(&ChannelSignalPacket::new_unchecked(data));
    let Ok(packet) = ChannelSignalPacket::new_checked(data) else {
        assert!(
            unchecked.is_err(),
            "parse accepted what new_checked refused"
        );
        return;
    };
    assert_eq!(packet.header(), &data[..SIGNAL_HEADER_LEN]);
    assert_eq!(packet.sealed_body(), &data[SIGNAL_HEADER_LEN..]);
    let _ = (packet.reserved(), packet.receiver_index(), packet.counter());
    let repr = ChannelSignalRepr::parse(&packet);
    assert_eq!(repr, unchecked);
    if let Ok(repr) = repr {
        assert_reemits(data, repr.buffer_len(), |b| repr.emit(b));
    }
}

/// The plaintexts inside the tunnel handshake: request payload, response payload and
/// the suite list both carry.
pub fn tunnel_payloads(data: &[u8]) {
    if let Ok(payload) = RequestPayload::parse(data) {
        assert_reemits(data, payload.buffer_len(), |b| payload.emit(b));
    }
    if let Ok(payload) = ResponsePayload::parse(data) {
        assert_reemits(data, payload.buffer_len(), |b| payload.emit(b));
    }
    let mut r = wire::Reader::new(data);
    if let Ok(suites) = SuiteList::read(&mut r) {
        let used = r.position();
        assert_eq!(suites.wire_len(), used, "wire_len disagrees with read");
        let mut out = vec![0u8; used];
        let mut w = wire::Writer::new(&mut out);
        suites.write(&mut w).expect("a read suite list writes");
        assert_eq!(w.position(), used);
        assert_eq!(&out[..], &data[..used]);
        assert_eq!(SuiteList::new(suites.as_slice()), Ok(suites));
    }
}

/// The plaintexts inside the channel handshake: hello payload and accept payload.
pub fn channel_payloads(data: &[u8]) {
    if let Ok(payload) = HelloPayload::parse(data) {
        assert_reemits(data, payload.buffer_len(), |b| payload.emit(b));
    }
    if let Ok(payload) = AcceptPayload::parse(data) {
        assert_ne!(payload.lifetime_secs, 0);
        assert_reemits(data, payload.buffer_len(), |b| payload.emit(b));
    }
}

fn relay_data_at(data: &[u8], depth: usize) {
    let Ok(packet) = RelayDataPacket::new_checked(data) else {
        return;
    };
    if let Ok(repr) = RelayDataRepr::parse(&packet) {
        assert_reemits(data, repr.buffer_len(), |b| repr.emit(b));
        if depth < MAX_RELAY_DEPTH {
            datagram_at(repr.payload, depth + 1);
        }
    }
}
