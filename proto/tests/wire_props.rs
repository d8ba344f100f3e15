//! Property tests for the wire formats of signaling, node control, hole punching, the
//! relay, credentials, the tunnel handshake and data header, and the node <-> cloud
//! channel (hello, accept, outer `Signal`, cookie reply): every value round-trips, `buffer_len` is exact, and no byte
//! string (random, truncated or mutated) makes a parser panic. Whatever parses must
//! re-emit to the very same bytes (each message has exactly one encoding).
//!
//! Also keeps the committed fuzz seed corpus (`fuzz/corpus/<target>/seed-N`) in step
//! with the formats; regenerate it with `CYPHONIC_BLESS_FUZZ_CORPUS=1 cargo test -p
//! cyphonic-proto --test wire_props`.

// Test helpers outside `#[test]` functions build fixed, known-good values.
#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::RangeInclusive;
use std::path::PathBuf;

use cyphonic_proto::credential::{CloudKeyId, Credential, SignedCredential};
use cyphonic_proto::relay::{RelayKey, bind_key, mint_ticket};
use cyphonic_proto::suite::{SuiteId, TAG_LEN};
use cyphonic_proto::time::UnixTime;
use cyphonic_proto::wire::channel::{
    ACCEPT_LEN, AcceptPayload, COOKIE_REPLY_LEN as CHANNEL_COOKIE_LEN, ChannelAcceptPacket,
    ChannelAcceptRepr, ChannelCookiePacket, ChannelCookieRepr, ChannelHelloPacket,
    ChannelHelloRepr, HELLO_MAX_LEN, HELLO_MIN_LEN, HELLO_PAYLOAD_MAX_LEN, HELLO_PAYLOAD_MIN_LEN,
    HelloPayload, HelloPurpose, SIGNAL_MIN_LEN, Service, SignalPacket as ChannelSignalPacket,
    SignalRepr as ChannelSignalRepr,
};
use cyphonic_proto::wire::data::{DATA_HEADER_LEN, DATA_MIN_LEN, DataHeaderRepr, DataPacket};
use cyphonic_proto::wire::handshake::{
    COOKIE_REPLY_LEN, CookieReplyPacket, CookieReplyRepr, ENCRYPTED_STATIC_LEN, KEY_LEN, MAC_LEN,
    REQUEST_MAX_LEN, REQUEST_MIN_LEN, REQUEST_PAYLOAD_MAX_LEN, RESPONSE_MAX_LEN, RESPONSE_MIN_LEN,
    RESPONSE_PAYLOAD_MAX_LEN, RequestPayload, ResponsePayload, SuiteList, TunnelRequestPacket,
    TunnelRequestRepr, TunnelResponsePacket, TunnelResponseRepr,
};
use cyphonic_proto::wire::node::{
    ControlPacket, ControlRepr, HolePunchingPacket, HolePunchingRepr, PunchKind,
};
use cyphonic_proto::wire::relay::{
    RelayBindAckPacket, RelayBindAckRepr, RelayBindPacket, RelayBindRepr, RelayDataPacket,
    RelayDataRepr, RelayTicket,
};
use cyphonic_proto::wire::signal::{
    LoginRequest, LoginResponse, PathPlan, PeerRoute, RegistrationRequest, RegistrationResponse,
    RelayOffer, SignalMessage, SignalPacket, SignalRepr, StatusReport,
};
use cyphonic_proto::wire::status::StatusCode;
use cyphonic_proto::wire::{Fqdn, MessageType, NodeId, Reader, VERSION, WireError, Writer};
use ed25519_dalek::SigningKey;
use proptest::collection::vec;
use proptest::prelude::*;
use zeroize::Zeroizing;

// ---------------------------------------------------------------------------------------
// Strategies

fn endpoint() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<[u8; 4]>(), any::<u16>())
            .prop_map(|(ip, port)| SocketAddr::new(IpAddr::V4(Ipv4Addr::from(ip)), port)),
        (any::<[u8; 16]>(), any::<u16>())
            .prop_map(|(ip, port)| SocketAddr::new(IpAddr::V6(Ipv6Addr::from(ip)), port)),
    ]
}

fn ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<[u8; 4]>().prop_map(|ip| IpAddr::V4(Ipv4Addr::from(ip))),
        any::<[u8; 16]>().prop_map(|ip| IpAddr::V6(Ipv6Addr::from(ip))),
    ]
}

fn endpoints(max: usize) -> impl Strategy<Value = Vec<SocketAddr>> {
    vec(endpoint(), 0..=max)
}

fn fqdn() -> impl Strategy<Value = Fqdn> {
    vec("[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?", 1..=3)
        .prop_map(|labels| Fqdn::new(&labels.join(".")).expect("strategy builds valid names"))
}

fn node_id() -> impl Strategy<Value = NodeId> {
    any::<[u8; 16]>().prop_map(NodeId)
}

prop_compose! {
    fn signed_credential()(
        cloud in any::<[u8; 32]>(),
        node_id in node_id(),
        not_before in any::<u64>(),
        not_after in any::<u64>(),
        static_public in any::<[u8; 32]>(),
        vip4 in any::<[u8; 4]>(),
        vip6 in any::<[u8; 16]>(),
        fqdn in fqdn(),
    ) -> SignedCredential {
        let cloud = SigningKey::from_bytes(&cloud);
        Credential {
            cloud_key_id: CloudKeyId::of(&cloud.verifying_key()),
            node_id,
            not_before: UnixTime(not_before),
            not_after: UnixTime(not_after),
            static_public,
            vip4: Ipv4Addr::from(vip4),
            vip6: Ipv6Addr::from(vip6),
            fqdn,
        }
        .sign(&cloud)
    }
}

prop_compose! {
    fn relay_ticket()(
        ticket_id in any::<[u8; 16]>(),
        node_a in node_id(),
        node_b in node_id(),
        not_after in any::<u64>(),
        key_id in any::<[u8; 8]>(),
        mac in any::<[u8; 32]>(),
    ) -> RelayTicket {
        RelayTicket { ticket_id, node_a, node_b, not_after: UnixTime(not_after), key_id, mac }
    }
}

fn status_code() -> impl Strategy<Value = StatusCode> {
    prop_oneof![
        proptest::sample::select(StatusCode::KNOWN.to_vec()),
        any::<u16>().prop_map(StatusCode),
    ]
}

prop_compose! {
    fn relay_offer()(
        trs_name in fqdn(),
        trs_endpoints in vec(endpoint(), 1..=4),
        ticket in relay_ticket(),
        bind_key in any::<[u8; 32]>(),
    ) -> RelayOffer {
        RelayOffer { trs_name, trs_endpoints, ticket, bind_key: Zeroizing::new(bind_key) }
    }
}

fn path_plan() -> impl Strategy<Value = PathPlan> {
    proptest::sample::select(vec![
        PathPlan::Direct,
        PathPlan::HolePunch,
        PathPlan::Local,
        PathPlan::Relay,
    ])
}

prop_compose! {
    fn peer_route()(
        credential in signed_credential(),
        real in endpoints(16),
        observed in endpoints(2),
        plan in path_plan(),
        punch_key in any::<[u8; 32]>(),
        relay in proptest::option::of(relay_offer()),
    ) -> Box<PeerRoute> {
        // A relay plan always comes with an offer; other plans may carry one as fallback.
        let plan = if relay.is_none() && plan == PathPlan::Relay { PathPlan::Direct } else { plan };
        Box::new(PeerRoute { credential, real, observed, plan, punch_key: Zeroizing::new(punch_key), relay })
    }
}

fn signal_message() -> impl Strategy<Value = SignalMessage> {
    prop_oneof![
        (
            "[!-~]{1,64}",
            vec(any::<u8>(), 1..=1024),
            any::<[u8; 32]>(),
            "[ -~]{0,64}"
        )
            .prop_map(|(device_id, password, static_public, client)| {
                SignalMessage::LoginRequest(LoginRequest {
                    device_id,
                    password: Zeroizing::new(password),
                    static_public,
                    client,
                })
            }),
        (signed_credential(), any::<u32>(), fqdn()).prop_map(
            |(credential, renew_after_secs, domain)| {
                SignalMessage::LoginResponse(LoginResponse {
                    credential,
                    renew_after_secs,
                    domain,
                })
            }
        ),
        Just(SignalMessage::RenewRequest),
        (signed_credential(), endpoints(16)).prop_map(|(credential, endpoints)| {
            SignalMessage::RegistrationRequest(RegistrationRequest {
                credential,
                endpoints,
            })
        }),
        (proptest::option::of(endpoint()), any::<u16>(), any::<u16>()).prop_map(
            |(observed, keepalive_secs, presence_ttl_secs)| {
                SignalMessage::RegistrationResponse(RegistrationResponse {
                    observed,
                    keepalive_secs,
                    presence_ttl_secs,
                })
            }
        ),
        any::<u64>().prop_map(|sequence| SignalMessage::KeepAlive { sequence }),
        (any::<u64>(), endpoint())
            .prop_map(|(sequence, observed)| SignalMessage::KeepAliveAck { sequence, observed }),
        endpoints(16).prop_map(|endpoints| SignalMessage::AddressUpdate { endpoints }),
        proptest::option::of(endpoint())
            .prop_map(|observed| SignalMessage::AddressUpdateAck { observed }),
        fqdn().prop_map(|target| SignalMessage::DirectionRequest { target }),
        ip().prop_map(|target| SignalMessage::DirectionRequestByAddress { target }),
        (any::<[u8; 16]>(), peer_route()).prop_map(|(direction_id, peer)| {
            SignalMessage::RouteDirectionToResponder { direction_id, peer }
        }),
        (any::<[u8; 16]>(), status_code()).prop_map(|(direction_id, status)| {
            SignalMessage::RouteDirectionConfirmation {
                direction_id,
                status,
            }
        }),
        (any::<[u8; 16]>(), peer_route()).prop_map(|(direction_id, peer)| {
            SignalMessage::RouteDirectionToInitiator { direction_id, peer }
        }),
        Just(SignalMessage::FinalizationRequest),
        Just(SignalMessage::FinalizationResponse),
        (status_code(), any::<u16>(), "\\PC{0,50}").prop_map(
            |(status, retry_after_secs, message)| {
                SignalMessage::Status(StatusReport {
                    status,
                    retry_after_secs,
                    message,
                })
            }
        ),
    ]
}

fn signal_repr() -> impl Strategy<Value = SignalRepr> {
    (any::<u32>(), signal_message()).prop_map(|(request_id, message)| SignalRepr {
        request_id,
        message,
    })
}

fn control_repr() -> impl Strategy<Value = ControlRepr> {
    prop_oneof![
        (any::<u64>(), any::<u8>())
            .prop_map(|(probe_id, path_tag)| ControlRepr::PathProbe { probe_id, path_tag }),
        (any::<u64>(), endpoint())
            .prop_map(|(probe_id, observed)| ControlRepr::PathProbeAck { probe_id, observed }),
        (any::<u64>(), endpoints(16)).prop_map(|(sequence, endpoints)| {
            ControlRepr::AddressUpdate {
                sequence,
                endpoints,
            }
        }),
        any::<u64>().prop_map(|sequence| ControlRepr::AddressUpdateAck { sequence }),
        Just(ControlRepr::KeepAlive),
    ]
}

prop_compose! {
    fn hole_punching_repr()(
        direction_id in any::<[u8; 16]>(),
        sender in node_id(),
        ack in any::<bool>(),
        nonce in any::<u64>(),
        mac in any::<[u8; 16]>(),
    ) -> HolePunchingRepr {
        let kind = if ack { PunchKind::Ack } else { PunchKind::Punch };
        HolePunchingRepr { direction_id, sender, kind, nonce, mac }
    }
}

prop_compose! {
    fn relay_bind_repr()(
        ticket in relay_ticket(),
        binder in node_id(),
        timestamp_millis in any::<u64>(),
        mac in any::<[u8; 16]>(),
    ) -> RelayBindRepr {
        RelayBindRepr { ticket, binder, timestamp_millis, mac }
    }
}

prop_compose! {
    fn relay_bind_ack_repr()(
        ticket_id in any::<[u8; 16]>(),
        status in status_code(),
        timestamp_millis in any::<u64>(),
        peer_bound in any::<bool>(),
        observed in endpoint(),
        mac in any::<[u8; 16]>(),
    ) -> RelayBindAckRepr {
        RelayBindAckRepr { ticket_id, status, timestamp_millis, peer_bound, observed, mac }
    }
}

fn suite_id() -> impl Strategy<Value = SuiteId> {
    // Mostly the ids that exist, so that lists share suites and hold duplicates.
    prop_oneof![3 => 1u16..=4, 1 => any::<u16>()].prop_map(SuiteId)
}

fn suite_list() -> impl Strategy<Value = SuiteList> {
    vec(suite_id(), 1..=SuiteList::MAX).prop_map(|ids| {
        let mut unique: Vec<SuiteId> = Vec::with_capacity(ids.len());
        for id in ids {
            if !unique.contains(&id) {
                unique.push(id);
            }
        }
        SuiteList::new(&unique).expect("1..=8 distinct suites")
    })
}

prop_compose! {
    fn request_payload()(
        timestamp in any::<u64>(),
        suites in suite_list(),
        credential in signed_credential(),
    ) -> RequestPayload {
        RequestPayload { timestamp, suites, credential }
    }
}

prop_compose! {
    fn response_payload()(
        chosen in suite_id(),
        suites in suite_list(),
        credential in signed_credential(),
    ) -> ResponsePayload {
        ResponsePayload { chosen, suites, credential }
    }
}

fn hello_payload() -> impl Strategy<Value = HelloPayload> {
    (any::<u64>(), proptest::option::of(signed_credential())).prop_map(
        |(timestamp_millis, credential)| HelloPayload {
            timestamp_millis,
            purpose: match credential {
                None => HelloPurpose::Login,
                Some(credential) => HelloPurpose::Credential(credential),
            },
        },
    )
}

prop_compose! {
    fn accept_payload()(server_unix_millis in any::<u64>(), lifetime_secs in 1..=u32::MAX)
        -> AcceptPayload {
        AcceptPayload { server_unix_millis, lifetime_secs }
    }
}

/// The fields of a [`TunnelRequestRepr`], owning what the repr borrows.
#[derive(Debug, Clone)]
struct RequestParts {
    sender_index: u32,
    ephemeral: [u8; KEY_LEN],
    encrypted_static: [u8; ENCRYPTED_STATIC_LEN],
    encrypted_payload: Vec<u8>,
    mac1: [u8; MAC_LEN],
    mac2: [u8; MAC_LEN],
}

impl RequestParts {
    fn repr(&self) -> TunnelRequestRepr<'_> {
        TunnelRequestRepr {
            sender_index: self.sender_index,
            ephemeral: self.ephemeral,
            encrypted_static: self.encrypted_static,
            encrypted_payload: &self.encrypted_payload,
            mac1: self.mac1,
            mac2: self.mac2,
        }
    }
}

prop_compose! {
    fn request_parts()(
        sender_index in any::<u32>(),
        ephemeral in any::<[u8; KEY_LEN]>(),
        encrypted_static in any::<[u8; ENCRYPTED_STATIC_LEN]>(),
        encrypted_payload in vec(any::<u8>(), TAG_LEN..=TAG_LEN + REQUEST_PAYLOAD_MAX_LEN),
        mac1 in any::<[u8; MAC_LEN]>(),
        mac2 in any::<[u8; MAC_LEN]>(),
    ) -> RequestParts {
        RequestParts { sender_index, ephemeral, encrypted_static, encrypted_payload, mac1, mac2 }
    }
}

/// The fields of a [`TunnelResponseRepr`], owning what the repr borrows.
#[derive(Debug, Clone)]
struct ResponseParts {
    sender_index: u32,
    receiver_index: u32,
    ephemeral: [u8; KEY_LEN],
    encrypted_payload: Vec<u8>,
    mac1: [u8; MAC_LEN],
    mac2: [u8; MAC_LEN],
}

impl ResponseParts {
    fn repr(&self) -> TunnelResponseRepr<'_> {
        TunnelResponseRepr {
            sender_index: self.sender_index,
            receiver_index: self.receiver_index,
            ephemeral: self.ephemeral,
            encrypted_payload: &self.encrypted_payload,
            mac1: self.mac1,
            mac2: self.mac2,
        }
    }
}

prop_compose! {
    fn response_parts()(
        sender_index in any::<u32>(),
        receiver_index in any::<u32>(),
        ephemeral in any::<[u8; KEY_LEN]>(),
        encrypted_payload in vec(any::<u8>(), TAG_LEN..=TAG_LEN + RESPONSE_PAYLOAD_MAX_LEN),
        mac1 in any::<[u8; MAC_LEN]>(),
        mac2 in any::<[u8; MAC_LEN]>(),
    ) -> ResponseParts {
        ResponseParts { sender_index, receiver_index, ephemeral, encrypted_payload, mac1, mac2 }
    }
}

prop_compose! {
    fn cookie_reply_repr()(
        receiver_index in any::<u32>(),
        nonce in any::<[u8; 24]>(),
        encrypted_cookie in any::<[u8; 32]>(),
    ) -> CookieReplyRepr {
        CookieReplyRepr { receiver_index, nonce, encrypted_cookie }
    }
}

fn data_kind() -> impl Strategy<Value = MessageType> {
    proptest::sample::select(vec![MessageType::Capsule, MessageType::Control])
}

prop_compose! {
    fn data_header_repr()(kind in data_kind(), receiver_index in any::<u32>(), counter in any::<u64>())
        -> DataHeaderRepr {
        DataHeaderRepr { kind, receiver_index, counter }
    }
}

fn service() -> impl Strategy<Value = Service> {
    proptest::sample::select(vec![Service::Auth, Service::NodeManagement, Service::Relay])
}

/// The fields of a [`ChannelHelloRepr`], owning what the repr borrows.
#[derive(Debug, Clone)]
struct HelloParts {
    service: Service,
    sender_index: u32,
    ephemeral: [u8; KEY_LEN],
    encrypted_static: Vec<u8>,
    encrypted_payload: Vec<u8>,
    mac1: [u8; MAC_LEN],
    mac2: [u8; MAC_LEN],
}

impl HelloParts {
    fn repr(&self) -> ChannelHelloRepr<'_> {
        ChannelHelloRepr {
            service: self.service,
            sender_index: self.sender_index,
            ephemeral: self.ephemeral,
            encrypted_static: &self.encrypted_static,
            encrypted_payload: &self.encrypted_payload,
            mac1: self.mac1,
            mac2: self.mac2,
        }
    }
}

prop_compose! {
    fn hello_parts()(
        service in service(),
        sender_index in any::<u32>(),
        ephemeral in any::<[u8; KEY_LEN]>(),
        encrypted_static in vec(any::<u8>(), KEY_LEN + TAG_LEN),
        encrypted_payload in vec(
            any::<u8>(),
            HELLO_PAYLOAD_MIN_LEN + TAG_LEN..=HELLO_PAYLOAD_MAX_LEN + TAG_LEN,
        ),
        mac1 in any::<[u8; MAC_LEN]>(),
        mac2 in any::<[u8; MAC_LEN]>(),
    ) -> HelloParts {
        HelloParts {
            service, sender_index, ephemeral, encrypted_static, encrypted_payload, mac1, mac2,
        }
    }
}

prop_compose! {
    fn channel_accept_repr()(
        sender_index in any::<u32>(),
        receiver_index in any::<u32>(),
        ephemeral in any::<[u8; KEY_LEN]>(),
        encrypted_payload in any::<[u8; 28]>(),
    ) -> ChannelAcceptRepr {
        ChannelAcceptRepr { sender_index, receiver_index, ephemeral, encrypted_payload }
    }
}

/// Random datagrams for one parser: raw bytes, bytes behind the version and type, or
/// bytes behind `header` (the prefix and the fixed fields the parser checks first), of
/// any length up to `max` or exactly one of `edges` (where the parser's answer flips).
fn framed_bytes(
    header: impl Strategy<Value = Vec<u8>>,
    max: usize,
    edges: Vec<usize>,
) -> impl Strategy<Value = Vec<u8>> {
    let len = prop_oneof![0..=max, proptest::sample::select(edges)];
    (0u8..3, header, len.prop_flat_map(|n| vec(any::<u8>(), n))).prop_map(
        |(mode, header, mut bytes)| {
            let keep = match mode {
                0 => 0,
                1 => 2,
                _ => header.len(),
            }
            .min(bytes.len());
            bytes[..keep].copy_from_slice(&header[..keep]);
            bytes
        },
    )
}

/// The common 4-byte header `version | type | reserved u16 = 0`.
fn zero_reserved_header(kind: MessageType) -> impl Strategy<Value = Vec<u8>> {
    Just(vec![VERSION, kind as u8, 0, 0])
}

/// Lengths around a valid range `min..=max`.
fn edges(min: usize, max: usize) -> Vec<usize> {
    vec![min - 1, min, min + 1, max - 1, max, max + 1]
}

// ---------------------------------------------------------------------------------------
// Codecs as byte functions

fn signal_parse(bytes: &[u8]) -> Result<SignalRepr, WireError> {
    SignalRepr::parse(&SignalPacket::new_checked(bytes)?)
}

fn control_parse(bytes: &[u8]) -> Result<ControlRepr, WireError> {
    ControlRepr::parse(&ControlPacket::new_checked(bytes)?)
}

fn punch_parse(bytes: &[u8]) -> Result<HolePunchingRepr, WireError> {
    HolePunchingRepr::parse(&HolePunchingPacket::new_checked(bytes)?)
}

fn bind_parse(bytes: &[u8]) -> Result<RelayBindRepr, WireError> {
    RelayBindRepr::parse(&RelayBindPacket::new_checked(bytes)?)
}

fn ack_parse(bytes: &[u8]) -> Result<RelayBindAckRepr, WireError> {
    RelayBindAckRepr::parse(&RelayBindAckPacket::new_checked(bytes)?)
}

fn data_parse(bytes: &[u8]) -> Result<RelayDataRepr<'_>, WireError> {
    RelayDataRepr::parse(&RelayDataPacket::new_checked(bytes)?)
}

fn credential_parse(bytes: &[u8]) -> Result<SignedCredential, WireError> {
    SignedCredential::parse(bytes).map_err(|_| WireError::Malformed("credential"))
}

fn request_parse(bytes: &[u8]) -> Result<TunnelRequestRepr<'_>, WireError> {
    TunnelRequestRepr::parse(&TunnelRequestPacket::new_checked(bytes)?)
}

fn response_parse(bytes: &[u8]) -> Result<TunnelResponseRepr<'_>, WireError> {
    TunnelResponseRepr::parse(&TunnelResponsePacket::new_checked(bytes)?)
}

fn cookie_parse(bytes: &[u8]) -> Result<CookieReplyRepr, WireError> {
    CookieReplyRepr::parse(&CookieReplyPacket::new_checked(bytes)?)
}

fn data_header_parse(bytes: &[u8]) -> Result<DataHeaderRepr, WireError> {
    DataHeaderRepr::parse(&DataPacket::new_checked(bytes)?)
}

fn hello_parse(bytes: &[u8]) -> Result<ChannelHelloRepr<'_>, WireError> {
    ChannelHelloRepr::parse(&ChannelHelloPacket::new_checked(bytes)?)
}

fn accept_parse(bytes: &[u8]) -> Result<ChannelAcceptRepr, WireError> {
    ChannelAcceptRepr::parse(&ChannelAcceptPacket::new_checked(bytes)?)
}

fn channel_signal_parse(bytes: &[u8]) -> Result<ChannelSignalRepr<'_>, WireError> {
    ChannelSignalRepr::parse(&ChannelSignalPacket::new_checked(bytes)?)
}

fn channel_cookie_parse(bytes: &[u8]) -> Result<ChannelCookieRepr, WireError> {
    ChannelCookieRepr::parse(&ChannelCookiePacket::new_checked(bytes)?)
}

/// Emits with `buffer_len`, checking that the length is exact and that a buffer one
/// byte short is refused (never truncated into).
fn emit_with(
    len: usize,
    emit: impl Fn(&mut [u8]) -> Result<usize, WireError>,
) -> Result<Vec<u8>, TestCaseError> {
    let mut buf = vec![0u8; len];
    let written = emit(&mut buf).map_err(|e| TestCaseError::fail(format!("emit: {e}")))?;
    prop_assert_eq!(written, len, "buffer_len disagrees with emit");
    if len > 0 {
        let mut short = vec![0u8; len - 1];
        let refused = matches!(emit(&mut short), Err(WireError::BufferTooSmall { .. }));
        prop_assert!(refused, "a short buffer was not refused");
    }
    Ok(buf)
}

fn signal_emit(repr: &SignalRepr) -> Result<Vec<u8>, TestCaseError> {
    emit_with(repr.buffer_len(), |b| repr.emit(b))
}

fn control_emit(repr: &ControlRepr) -> Result<Vec<u8>, TestCaseError> {
    emit_with(repr.buffer_len(), |b| repr.emit(b))
}

fn punch_emit(repr: &HolePunchingRepr) -> Result<Vec<u8>, TestCaseError> {
    emit_with(repr.buffer_len(), |b| repr.emit(b))
}

fn bind_emit(repr: &RelayBindRepr) -> Result<Vec<u8>, TestCaseError> {
    emit_with(repr.buffer_len(), |b| repr.emit(b))
}

fn ack_emit(repr: &RelayBindAckRepr) -> Result<Vec<u8>, TestCaseError> {
    emit_with(repr.buffer_len(), |b| repr.emit(b))
}

fn data_emit(repr: &RelayDataRepr<'_>) -> Result<Vec<u8>, TestCaseError> {
    emit_with(repr.buffer_len(), |b| repr.emit(b))
}

fn credential_emit(credential: &SignedCredential) -> Result<Vec<u8>, TestCaseError> {
    Ok(credential.as_bytes().to_vec())
}

fn request_emit(repr: &TunnelRequestRepr<'_>) -> Result<Vec<u8>, TestCaseError> {
    emit_with(repr.buffer_len(), |b| repr.emit(b))
}

fn response_emit(repr: &TunnelResponseRepr<'_>) -> Result<Vec<u8>, TestCaseError> {
    emit_with(repr.buffer_len(), |b| repr.emit(b))
}

fn cookie_emit(repr: &CookieReplyRepr) -> Result<Vec<u8>, TestCaseError> {
    emit_with(repr.buffer_len(), |b| repr.emit(b))
}

fn hello_emit(repr: &ChannelHelloRepr<'_>) -> Result<Vec<u8>, TestCaseError> {
    emit_with(repr.buffer_len(), |b| repr.emit(b))
}

fn accept_emit(repr: &ChannelAcceptRepr) -> Result<Vec<u8>, TestCaseError> {
    emit_with(repr.buffer_len(), |b| repr.emit(b))
}

fn channel_signal_emit(repr: &ChannelSignalRepr<'_>) -> Result<Vec<u8>, TestCaseError> {
    emit_with(repr.buffer_len(), |b| repr.emit(b))
}

fn channel_cookie_emit(repr: &ChannelCookieRepr) -> Result<Vec<u8>, TestCaseError> {
    emit_with(repr.buffer_len(), |b| repr.emit(b))
}

fn request_payload_emit(payload: &RequestPayload) -> Result<Vec<u8>, TestCaseError> {
    emit_with(payload.buffer_len(), |b| payload.emit(b))
}

fn response_payload_emit(payload: &ResponsePayload) -> Result<Vec<u8>, TestCaseError> {
    emit_with(payload.buffer_len(), |b| payload.emit(b))
}

fn hello_payload_emit(payload: &HelloPayload) -> Result<Vec<u8>, TestCaseError> {
    emit_with(payload.buffer_len(), |b| payload.emit(b))
}

fn accept_payload_emit(payload: &AcceptPayload) -> Result<Vec<u8>, TestCaseError> {
    emit_with(payload.buffer_len(), |b| payload.emit(b))
}

/// A data packet's header re-emitted in front of its (untouched) sealed payload.
fn data_emit_packet(repr: &DataHeaderRepr, sealed: &[u8]) -> Result<Vec<u8>, TestCaseError> {
    let mut bytes = emit_with(repr.buffer_len(), |b| repr.emit(b))?;
    prop_assert_eq!(bytes.len(), DATA_HEADER_LEN);
    bytes.extend_from_slice(sealed);
    Ok(bytes)
}

/// Parses `bytes` and re-emits what parsed; `None` when it does not parse. This is
/// how the checks below treat reprs that borrow from their input.
type Reemitted = Result<Option<Vec<u8>>, TestCaseError>;

fn reemit<R>(
    parsed: Result<R, WireError>,
    emit: impl Fn(&R) -> Result<Vec<u8>, TestCaseError>,
) -> Reemitted {
    match parsed {
        Ok(repr) => emit(&repr).map(Some),
        Err(_) => Ok(None),
    }
}

fn request_reemit(bytes: &[u8]) -> Reemitted {
    reemit(request_parse(bytes), request_emit)
}

fn response_reemit(bytes: &[u8]) -> Reemitted {
    reemit(response_parse(bytes), response_emit)
}

fn hello_reemit(bytes: &[u8]) -> Reemitted {
    reemit(hello_parse(bytes), hello_emit)
}

fn channel_signal_reemit(bytes: &[u8]) -> Reemitted {
    reemit(channel_signal_parse(bytes), channel_signal_emit)
}

fn data_header_reemit(bytes: &[u8]) -> Reemitted {
    reemit(data_header_parse(bytes), |repr| {
        data_emit_packet(repr, &bytes[DATA_HEADER_LEN..])
    })
}

/// Whatever parses re-emits to the same bytes; returns whether it parsed.
fn check_reemits(bytes: &[u8], reemit: impl Fn(&[u8]) -> Reemitted) -> Result<bool, TestCaseError> {
    match reemit(bytes)? {
        Some(out) => {
            prop_assert_eq!(out, bytes, "two encodings of one message");
            Ok(true)
        }
        None => Ok(false),
    }
}

/// For messages that end in an opaque, variable-length field (ciphertexts, MACs at the
/// end): the encoding `bytes` of a valid value, each truncation and a one-byte
/// extension parse exactly when their length lies in `valid`, and then canonically; a
/// byte mutation parses canonically or not at all.
fn check_opaque_tail(
    bytes: &[u8],
    valid: RangeInclusive<usize>,
    reemit: impl Fn(&[u8]) -> Reemitted,
    mutation: (prop::sample::Index, u8),
) -> Result<(), TestCaseError> {
    prop_assert!(
        check_reemits(bytes, &reemit)?,
        "a valid encoding does not parse"
    );
    for cut in 0..bytes.len() {
        let parsed = check_reemits(&bytes[..cut], &reemit)?;
        prop_assert_eq!(parsed, valid.contains(&cut), "prefix of {} bytes", cut);
    }
    let mut extended = bytes.to_vec();
    extended.push(0);
    let parsed = check_reemits(&extended, &reemit)?;
    prop_assert_eq!(parsed, valid.contains(&extended.len()), "one byte longer");
    let (index, xor) = mutation;
    let mut mutated = bytes.to_vec();
    let at = index.index(mutated.len());
    mutated[at] ^= xor.max(1);
    check_reemits(&mutated, &reemit)?;
    Ok(())
}

/// Whatever parses re-emits to the same bytes; nothing panics.
fn check_canonical<R: std::fmt::Debug>(
    bytes: &[u8],
    parse: impl Fn(&[u8]) -> Result<R, WireError>,
    emit: impl Fn(&R) -> Result<Vec<u8>, TestCaseError>,
) -> Result<(), TestCaseError> {
    if let Ok(repr) = parse(bytes) {
        prop_assert_eq!(emit(&repr)?, bytes, "{:?} has two encodings", repr);
    }
    Ok(())
}

/// Round trip, then every truncation fails and a byte mutation parses canonically
/// or not at all.
fn check_valid<R: std::fmt::Debug + PartialEq>(
    repr: &R,
    parse: impl Fn(&[u8]) -> Result<R, WireError>,
    emit: impl Fn(&R) -> Result<Vec<u8>, TestCaseError>,
    mutation: (prop::sample::Index, u8),
) -> Result<(), TestCaseError> {
    let bytes = emit(repr)?;
    prop_assert_eq!(
        &parse(&bytes).map_err(|e| TestCaseError::fail(e.to_string()))?,
        repr
    );
    for cut in 0..bytes.len() {
        // The encodings are self-delimiting, so no proper prefix is a message.
        prop_assert!(
            parse(&bytes[..cut]).is_err(),
            "prefix of {} bytes parsed",
            cut
        );
    }
    let mut extended = bytes.clone();
    extended.push(0);
    prop_assert!(parse(&extended).is_err(), "trailing byte accepted");
    let (index, xor) = mutation;
    let mut mutated = bytes.clone();
    let at = index.index(mutated.len());
    mutated[at] ^= xor.max(1);
    check_canonical(&mutated, &parse, &emit)
}

fn mutation() -> impl Strategy<Value = (prop::sample::Index, u8)> {
    (any::<prop::sample::Index>(), any::<u8>())
}

/// Random bytes, half of the time behind the datagram prefix of `kind` so that the
/// parser gets past its first check.
fn datagram_bytes(kind: MessageType) -> impl Strategy<Value = Vec<u8>> {
    (any::<bool>(), vec(any::<u8>(), 0..300)).prop_map(move |(prefixed, mut bytes)| {
        if prefixed {
            bytes.splice(0..0, [VERSION, kind as u8]);
        }
        bytes
    })
}

fn config() -> ProptestConfig {
    ProptestConfig::with_cases(256)
}

// ---------------------------------------------------------------------------------------
// Properties

proptest! {
    #![proptest_config(config())]

    #[test]
    fn signal_round_trips(repr in signal_repr(), m in mutation()) {
        check_valid(&repr, signal_parse, signal_emit, m)?;
    }

    #[test]
    fn signal_never_panics(
        kind in proptest::sample::select(vec![0x01u8, 0x02, 0x10, 0x11, 0x13, 0x14, 0x15, 0x20, 0x21, 0x22, 0x23, 0x24, 0x7f, 0x99]),
        mut bytes in vec(any::<u8>(), 0..600),
        raw in vec(any::<u8>(), 0..64),
    ) {
        check_canonical(&raw, signal_parse, signal_emit)?;
        if !bytes.is_empty() {
            bytes[0] = kind;
        }
        check_canonical(&bytes, signal_parse, signal_emit)?;
    }

    #[test]
    fn control_round_trips(repr in control_repr(), m in mutation()) {
        check_valid(&repr, control_parse, control_emit, m)?;
    }

    #[test]
    fn control_never_panics(kind in 0u8..7, mut bytes in vec(any::<u8>(), 0..300)) {
        check_canonical(&bytes, control_parse, control_emit)?;
        if !bytes.is_empty() {
            bytes[0] = kind;
        }
        check_canonical(&bytes, control_parse, control_emit)?;
    }

    #[test]
    fn hole_punching_round_trips(repr in hole_punching_repr(), m in mutation()) {
        check_valid(&repr, punch_parse, punch_emit, m)?;
    }

    #[test]
    fn hole_punching_mac(repr in hole_punching_repr(), key in any::<[u8; 32]>(), m in mutation()) {
        let sealed = HolePunchingRepr::sealed(repr.direction_id, repr.sender, repr.kind, repr.nonce, &key);
        prop_assert!(sealed.verify(&key).is_ok());
        let mut bytes = punch_emit(&sealed)?;
        prop_assert!(HolePunchingPacket::new_checked(&bytes[..]).unwrap().verify(&key).is_ok());
        let at = 2 + m.0.index(bytes.len() - 2);
        bytes[at] ^= m.1.max(1);
        if let Ok(packet) = HolePunchingPacket::new_checked(&bytes[..]) {
            prop_assert!(packet.verify(&key).is_err());
        }
    }

    #[test]
    fn hole_punching_never_panics(bytes in datagram_bytes(MessageType::HolePunching)) {
        check_canonical(&bytes, punch_parse, punch_emit)?;
        if let Ok(packet) = HolePunchingPacket::new_checked(&bytes[..]) {
            let _ = packet.verify(&[0; 32]);
        }
    }

    #[test]
    fn relay_bind_round_trips(repr in relay_bind_repr(), m in mutation()) {
        check_valid(&repr, bind_parse, bind_emit, m)?;
    }

    #[test]
    fn relay_bind_never_panics(bytes in datagram_bytes(MessageType::RelayBind)) {
        check_canonical(&bytes, bind_parse, bind_emit)?;
    }

    #[test]
    fn relay_bind_ack_round_trips(repr in relay_bind_ack_repr(), m in mutation()) {
        check_valid(&repr, ack_parse, ack_emit, m)?;
    }

    #[test]
    fn relay_bind_ack_never_panics(bytes in datagram_bytes(MessageType::RelayBindAck)) {
        check_canonical(&bytes, ack_parse, ack_emit)?;
        if let Ok(packet) = RelayBindAckPacket::new_checked(&bytes[..]) {
            let _ = packet.verify(&[0; 32]);
        }
    }

    #[test]
    fn relay_data_round_trips(channel_id in any::<[u8; 8]>(), payload in vec(any::<u8>(), 2..300), cut in any::<prop::sample::Index>()) {
        let repr = RelayDataRepr { channel_id, payload: &payload };
        let bytes = data_emit(&repr)?;
        prop_assert_eq!(bytes.len(), payload.len() + 10);
        prop_assert_eq!(data_parse(&bytes).unwrap(), repr);
        // The payload runs to the end, so a truncation is a shorter payload, down to the
        // inner datagram's own 2-byte prefix.
        let cut = cut.index(bytes.len());
        match data_parse(&bytes[..cut]) {
            Ok(short) => {
                prop_assert!(cut >= 12);
                prop_assert_eq!(short.payload, &payload[..cut - 10]);
            }
            Err(_) => prop_assert!(cut < 12),
        }
        let mut header = [0u8; 10];
        RelayDataRepr::emit_header(&channel_id, &mut header).unwrap();
        prop_assert_eq!(&header[..], &bytes[..10]);
    }

    #[test]
    fn relay_data_never_panics(bytes in datagram_bytes(MessageType::RelayData)) {
        if let Ok(repr) = data_parse(&bytes) {
            prop_assert_eq!(data_emit(&repr)?, bytes);
        }
    }

    #[test]
    fn relay_ticket_round_trips(ticket in relay_ticket(), bytes in vec(any::<u8>(), 0..200)) {
        let encoded = ticket.to_bytes();
        prop_assert_eq!(RelayTicket::parse(&encoded).unwrap(), ticket);
        let mut via_writer = [0u8; RelayTicket::LEN];
        ticket.write(&mut Writer::new(&mut via_writer)).unwrap();
        prop_assert_eq!(via_writer, encoded);
        match RelayTicket::parse(&bytes) {
            Ok(t) => prop_assert_eq!(&t.to_bytes()[..], &bytes[..]),
            Err(_) => prop_assert_ne!(bytes.len(), RelayTicket::LEN),
        }
    }

    #[test]
    fn minted_tickets_verify_and_resist_forgery(
        secret in vec(any::<u8>(), 32..64),
        id in any::<[u8; 16]>(),
        a in node_id(),
        b in node_id(),
        not_after in any::<u64>(),
        m in mutation(),
    ) {
        let key = RelayKey::derive(&secret);
        let ticket = mint_ticket(&key, id, a, b, UnixTime(not_after));
        prop_assert!(cyphonic_proto::relay::verify_ticket(&key, &ticket, UnixTime(not_after)).is_ok());
        let mut bytes = ticket.to_bytes();
        let at = m.0.index(bytes.len());
        bytes[at] ^= m.1.max(1);
        let forged = RelayTicket::parse(&bytes).unwrap();
        prop_assert!(cyphonic_proto::relay::verify_ticket(&key, &forged, UnixTime(0)).is_err());
        prop_assert_ne!(*bind_key(&key, &ticket, &a), *bind_key(&key, &forged, &a));
    }

    #[test]
    fn credential_round_trips(credential in signed_credential(), m in mutation()) {
        check_valid(&credential, credential_parse, credential_emit, m)?;
        let mut longer = credential.as_bytes().to_vec();
        longer.extend_from_slice(b"rest");
        let mut r = Reader::new(&longer);
        prop_assert_eq!(&SignedCredential::read(&mut r).unwrap(), &credential);
        prop_assert_eq!(r.remaining(), 4);
    }

    #[test]
    fn credential_never_panics(bytes in vec(any::<u8>(), 0..400)) {
        check_canonical(&bytes, credential_parse, credential_emit)?;
        let _ = SignedCredential::read(&mut Reader::new(&bytes));
    }

    #[test]
    fn endpoint_and_fqdn_codecs(ep in endpoint(), name in fqdn(), bytes in vec(any::<u8>(), 0..40)) {
        let mut buf = [0u8; 300];
        let mut w = Writer::new(&mut buf);
        w.endpoint(&ep).unwrap();
        w.fqdn(&name).unwrap();
        let len = w.position();
        prop_assert_eq!(len, cyphonic_proto::wire::endpoint_len(&ep) + name.wire_len());
        let mut r = Reader::new(&buf[..len]);
        prop_assert_eq!(r.endpoint().unwrap(), ep);
        prop_assert_eq!(r.fqdn().unwrap(), name);
        prop_assert!(r.finish().is_ok());
        // Arbitrary bytes: whatever reads re-writes identically.
        let mut r = Reader::new(&bytes);
        if let Ok(ep) = r.endpoint() {
            let used = r.position();
            let mut out = [0u8; 19];
            let mut w = Writer::new(&mut out);
            w.endpoint(&ep).unwrap();
            let written = w.position();
            prop_assert_eq!(&out[..written], &bytes[..used]);
        }
        let mut r = Reader::new(&bytes);
        if let Ok(name) = r.fqdn() {
            prop_assert_eq!(name.as_str().as_bytes(), &bytes[1..r.position()]);
        }
    }

    #[test]
    fn status_codes_round_trip(code in any::<u16>()) {
        let mut buf = [0u8; 2];
        StatusCode(code).write(&mut Writer::new(&mut buf)).unwrap();
        prop_assert_eq!(StatusCode::read(&mut Reader::new(&buf)).unwrap(), StatusCode(code));
        let shown = StatusCode(code).to_string();
        prop_assert_eq!(StatusCode(code).is_known(), !shown.starts_with("status "));
    }
}

// ---------------------------------------------------------------------------------------
// Properties: tunnel handshake, data header, channel

proptest! {
    #![proptest_config(config())]

    #[test]
    fn tunnel_request_round_trips(parts in request_parts(), m in mutation()) {
        let repr = parts.repr();
        let bytes = request_emit(&repr)?;
        prop_assert_eq!(&bytes[..4], &[VERSION, MessageType::TunnelRequest as u8, 0, 0][..]);
        prop_assert_eq!(request_parse(&bytes).unwrap(), repr);
        let packet = TunnelRequestPacket::new_checked(&bytes[..]).unwrap();
        prop_assert_eq!(packet.encrypted_payload(), &parts.encrypted_payload[..]);
        prop_assert_eq!(packet.mac1(), &parts.mac1[..]);
        prop_assert_eq!(packet.mac2(), &parts.mac2[..]);
        check_opaque_tail(&bytes, REQUEST_MIN_LEN..=REQUEST_MAX_LEN, request_reemit, m)?;
    }

    #[test]
    fn tunnel_request_never_panics(
        bytes in framed_bytes(
            zero_reserved_header(MessageType::TunnelRequest),
            700,
            edges(REQUEST_MIN_LEN, REQUEST_MAX_LEN),
        ),
    ) {
        let parsed = check_reemits(&bytes, request_reemit)?;
        // Every field is opaque: whatever passes the view's checks parses.
        prop_assert_eq!(parsed, TunnelRequestPacket::new_checked(&bytes[..]).is_ok());
        let unchecked = TunnelRequestRepr::parse(&TunnelRequestPacket::new_unchecked(&bytes[..]));
        prop_assert_eq!(unchecked, request_parse(&bytes));
    }

    #[test]
    fn tunnel_response_round_trips(parts in response_parts(), m in mutation()) {
        let repr = parts.repr();
        let bytes = response_emit(&repr)?;
        prop_assert_eq!(&bytes[..4], &[VERSION, MessageType::TunnelResponse as u8, 0, 0][..]);
        prop_assert_eq!(response_parse(&bytes).unwrap(), repr);
        let packet = TunnelResponsePacket::new_checked(&bytes[..]).unwrap();
        prop_assert_eq!(packet.receiver_index(), parts.receiver_index);
        prop_assert_eq!(packet.encrypted_payload(), &parts.encrypted_payload[..]);
        prop_assert_eq!(packet.mac2(), &parts.mac2[..]);
        check_opaque_tail(&bytes, RESPONSE_MIN_LEN..=RESPONSE_MAX_LEN, response_reemit, m)?;
    }

    #[test]
    fn tunnel_response_never_panics(
        bytes in framed_bytes(
            zero_reserved_header(MessageType::TunnelResponse),
            700,
            edges(RESPONSE_MIN_LEN, RESPONSE_MAX_LEN),
        ),
    ) {
        let parsed = check_reemits(&bytes, response_reemit)?;
        prop_assert_eq!(parsed, TunnelResponsePacket::new_checked(&bytes[..]).is_ok());
        let unchecked = TunnelResponseRepr::parse(&TunnelResponsePacket::new_unchecked(&bytes[..]));
        prop_assert_eq!(unchecked, response_parse(&bytes));
    }

    /// Emit refuses exactly the lengths parse would refuse, and never writes anything
    /// that does not parse back.
    #[test]
    fn handshake_emit_checks_lengths(
        payload in vec(any::<u8>(), 0..700),
        static_len in prop_oneof![Just(KEY_LEN + TAG_LEN), 0usize..64],
        request in request_parts(),
        response in response_parts(),
        hello in hello_parts(),
    ) {
        let mut buf = vec![0u8; 1024];

        let repr = TunnelRequestRepr { encrypted_payload: &payload, ..request.repr() };
        let fits = (REQUEST_MIN_LEN..=REQUEST_MAX_LEN).contains(&repr.buffer_len());
        let emitted = repr.emit(&mut buf);
        prop_assert_eq!(emitted.is_ok(), fits, "request: {:?}", emitted);
        if let Ok(n) = emitted {
            prop_assert_eq!(&request_parse(&buf[..n]).unwrap(), &repr);
        }

        let repr = TunnelResponseRepr { encrypted_payload: &payload, ..response.repr() };
        let fits = (RESPONSE_MIN_LEN..=RESPONSE_MAX_LEN).contains(&repr.buffer_len());
        let emitted = repr.emit(&mut buf);
        prop_assert_eq!(emitted.is_ok(), fits, "response: {:?}", emitted);
        if let Ok(n) = emitted {
            prop_assert_eq!(&response_parse(&buf[..n]).unwrap(), &repr);
        }

        let encrypted_static = vec![0x5a; static_len];
        let repr = ChannelHelloRepr {
            encrypted_static: &encrypted_static,
            encrypted_payload: &payload,
            ..hello.repr()
        };
        let fits = static_len == KEY_LEN + TAG_LEN
            && (HELLO_MIN_LEN..=HELLO_MAX_LEN).contains(&repr.buffer_len());
        let emitted = repr.emit(&mut buf);
        prop_assert_eq!(emitted.is_ok(), fits, "hello: {:?}", emitted);
        if let Ok(n) = emitted {
            prop_assert_eq!(&hello_parse(&buf[..n]).unwrap(), &repr);
        }

        let repr = ChannelSignalRepr { receiver_index: 1, counter: 2, sealed_body: &payload };
        let fits = repr.buffer_len() >= SIGNAL_MIN_LEN;
        let emitted = repr.emit(&mut buf);
        prop_assert_eq!(emitted.is_ok(), fits, "signal: {:?}", emitted);
        if let Ok(n) = emitted {
            prop_assert_eq!(&channel_signal_parse(&buf[..n]).unwrap(), &repr);
        }
    }

    /// The tunnel's and the channel's cookie replies share type 0x12 and their layout.
    #[test]
    fn cookie_reply_round_trips(repr in cookie_reply_repr(), m in mutation()) {
        check_valid(&repr, cookie_parse, cookie_emit, m)?;
        let channel = ChannelCookieRepr {
            receiver_index: repr.receiver_index,
            nonce: repr.nonce,
            encrypted_cookie: repr.encrypted_cookie,
        };
        check_valid(&channel, channel_cookie_parse, channel_cookie_emit, m)?;
        prop_assert_eq!(cookie_emit(&repr)?, channel_cookie_emit(&channel)?);
        prop_assert_eq!(COOKIE_REPLY_LEN, CHANNEL_COOKIE_LEN);
    }

    #[test]
    fn cookie_parsers_agree(
        bytes in framed_bytes(
            zero_reserved_header(MessageType::CookieReply),
            100,
            edges(COOKIE_REPLY_LEN, COOKIE_REPLY_LEN),
        ),
    ) {
        check_canonical(&bytes, cookie_parse, cookie_emit)?;
        check_canonical(&bytes, channel_cookie_parse, channel_cookie_emit)?;
        match (cookie_parse(&bytes), channel_cookie_parse(&bytes)) {
            (Ok(t), Ok(c)) => prop_assert_eq!(
                (t.receiver_index, t.nonce, t.encrypted_cookie),
                (c.receiver_index, c.nonce, c.encrypted_cookie)
            ),
            (Err(_), Err(_)) => {}
            (t, c) => prop_assert!(false, "cookie parsers disagree: {:?} vs {:?}", t, c),
        }
        prop_assert_eq!(
            CookieReplyRepr::parse(&CookieReplyPacket::new_unchecked(&bytes[..])),
            cookie_parse(&bytes)
        );
        prop_assert_eq!(
            ChannelCookieRepr::parse(&ChannelCookiePacket::new_unchecked(&bytes[..])),
            channel_cookie_parse(&bytes)
        );
    }

    #[test]
    fn data_header_round_trips(
        repr in data_header_repr(),
        sealed in vec(any::<u8>(), TAG_LEN..200),
        m in mutation(),
    ) {
        let bytes = data_emit_packet(&repr, &sealed)?;
        prop_assert_eq!(&bytes[..4], &[VERSION, repr.kind as u8, 0, 0][..]);
        prop_assert_eq!(data_header_parse(&bytes).unwrap(), repr);
        let packet = DataPacket::new_checked(&bytes[..]).unwrap();
        prop_assert_eq!(packet.header(), &bytes[..DATA_HEADER_LEN]);
        prop_assert_eq!(packet.sealed_payload(), &sealed[..]);
        prop_assert_eq!(packet.plaintext_len(), sealed.len() - TAG_LEN);
        check_opaque_tail(&bytes, DATA_MIN_LEN..=usize::MAX, data_header_reemit, m)?;
    }

    #[test]
    fn data_header_never_panics(
        bytes in framed_bytes(
            data_kind().prop_map(|kind| vec![VERSION, kind as u8, 0, 0]),
            100,
            edges(DATA_MIN_LEN, DATA_MIN_LEN),
        ),
        kind in proptest::sample::select(MessageType::ALL.to_vec()),
    ) {
        let parsed = check_reemits(&bytes, data_header_reemit)?;
        prop_assert_eq!(parsed, DataPacket::new_checked(&bytes[..]).is_ok());
        let unchecked = DataHeaderRepr::parse(&DataPacket::new_unchecked(&bytes[..]));
        prop_assert_eq!(unchecked, data_header_parse(&bytes));
        // Only Capsule and Control share this header.
        let repr = DataHeaderRepr { kind, receiver_index: 1, counter: 2 };
        let is_data = matches!(kind, MessageType::Capsule | MessageType::Control);
        prop_assert_eq!(repr.emit(&mut [0u8; DATA_HEADER_LEN]).is_ok(), is_data);
    }

    #[test]
    fn channel_hello_round_trips(parts in hello_parts(), m in mutation()) {
        let repr = parts.repr();
        let bytes = hello_emit(&repr)?;
        prop_assert_eq!(
            &bytes[..4],
            &[VERSION, MessageType::ChannelHello as u8, parts.service as u8, 0][..]
        );
        prop_assert_eq!(hello_parse(&bytes).unwrap(), repr);
        let packet = ChannelHelloPacket::new_checked(&bytes[..]).unwrap();
        prop_assert_eq!(packet.encrypted_payload(), &parts.encrypted_payload[..]);
        prop_assert_eq!(packet.mac1(), parts.mac1);
        prop_assert_eq!(packet.mac2(), parts.mac2);
        prop_assert_eq!(packet.mac1_input().len(), bytes.len() - 2 * MAC_LEN);
        prop_assert_eq!(packet.mac2_input().len(), bytes.len() - MAC_LEN);
        check_opaque_tail(&bytes, HELLO_MIN_LEN..=HELLO_MAX_LEN, hello_reemit, m)?;
    }

    #[test]
    fn channel_hello_never_panics(
        bytes in framed_bytes(
            (0u8..=4).prop_map(|service| vec![VERSION, MessageType::ChannelHello as u8, service, 0]),
            700,
            edges(HELLO_MIN_LEN, HELLO_MAX_LEN),
        ),
    ) {
        let parsed = check_reemits(&bytes, hello_reemit)?;
        if let Ok(packet) = ChannelHelloPacket::new_checked(&bytes[..]) {
            let fields_ok = packet.reserved() == 0 && Service::try_from(packet.service()).is_ok();
            prop_assert_eq!(parsed, fields_ok);
        } else {
            prop_assert!(!parsed);
        }
        let unchecked = ChannelHelloRepr::parse(&ChannelHelloPacket::new_unchecked(&bytes[..]));
        prop_assert_eq!(unchecked, hello_parse(&bytes));
    }

    #[test]
    fn channel_accept_round_trips(repr in channel_accept_repr(), m in mutation()) {
        check_valid(&repr, accept_parse, accept_emit, m)?;
        let bytes = accept_emit(&repr)?;
        prop_assert_eq!(bytes.len(), ACCEPT_LEN);
        let packet = ChannelAcceptPacket::new_checked(&bytes[..]).unwrap();
        prop_assert_eq!(packet.noise_range(), 12..ACCEPT_LEN);
        prop_assert_eq!(packet.encrypted_payload(), &repr.encrypted_payload[..]);
    }

    #[test]
    fn channel_accept_never_panics(
        bytes in framed_bytes(
            zero_reserved_header(MessageType::ChannelAccept),
            100,
            edges(ACCEPT_LEN, ACCEPT_LEN),
        ),
    ) {
        check_canonical(&bytes, accept_parse, accept_emit)?;
        let unchecked = ChannelAcceptRepr::parse(&ChannelAcceptPacket::new_unchecked(&bytes[..]));
        prop_assert_eq!(unchecked, accept_parse(&bytes));
    }

    #[test]
    fn channel_signal_round_trips(
        receiver_index in any::<u32>(),
        counter in any::<u64>(),
        body in vec(any::<u8>(), TAG_LEN..300),
        m in mutation(),
    ) {
        let repr = ChannelSignalRepr { receiver_index, counter, sealed_body: &body };
        let bytes = channel_signal_emit(&repr)?;
        prop_assert_eq!(&bytes[..4], &[VERSION, MessageType::Signal as u8, 0, 0][..]);
        prop_assert_eq!(channel_signal_parse(&bytes).unwrap(), repr);
        let packet = ChannelSignalPacket::new_checked(&bytes[..]).unwrap();
        prop_assert_eq!(packet.sealed_body(), &body[..]);
        check_opaque_tail(&bytes, SIGNAL_MIN_LEN..=usize::MAX, channel_signal_reemit, m)?;
    }

    #[test]
    fn channel_signal_never_panics(
        bytes in framed_bytes(
            zero_reserved_header(MessageType::Signal),
            100,
            edges(SIGNAL_MIN_LEN, SIGNAL_MIN_LEN),
        ),
    ) {
        let parsed = check_reemits(&bytes, channel_signal_reemit)?;
        if let Ok(packet) = ChannelSignalPacket::new_checked(&bytes[..]) {
            prop_assert_eq!(parsed, packet.reserved() == 0);
        } else {
            prop_assert!(!parsed);
        }
        let unchecked = ChannelSignalRepr::parse(&ChannelSignalPacket::new_unchecked(&bytes[..]));
        prop_assert_eq!(unchecked, channel_signal_parse(&bytes));
    }

    #[test]
    fn suite_list_codec(
        ids in vec(suite_id(), 0..=10),
        list in suite_list(),
        other in suite_list(),
        bytes in vec(any::<u8>(), 0..24),
    ) {
        let distinct = ids.iter().enumerate().all(|(i, id)| !ids[..i].contains(id));
        let valid = distinct && (1..=SuiteList::MAX).contains(&ids.len());
        match SuiteList::new(&ids) {
            Ok(made) => {
                prop_assert!(valid);
                prop_assert_eq!(made.as_slice(), &ids[..]);
            }
            Err(_) => prop_assert!(!valid),
        }

        let mut buf = [0u8; 1 + 2 * SuiteList::MAX];
        let mut w = Writer::new(&mut buf);
        list.write(&mut w).unwrap();
        let n = w.position();
        prop_assert_eq!(n, list.wire_len());
        let mut r = Reader::new(&buf[..n]);
        prop_assert_eq!(SuiteList::read(&mut r).unwrap(), list);
        prop_assert!(r.finish().is_ok());
        for cut in 0..n {
            prop_assert!(SuiteList::read(&mut Reader::new(&buf[..cut])).is_err());
        }

        // Negotiation: the first of our suites that the peer also lists.
        let expected = list.as_slice().iter().copied().find(|s| other.as_slice().contains(s));
        prop_assert_eq!(list.first_shared(&other), expected);
        prop_assert_eq!(list.first_shared(&list), Some(list.as_slice()[0]));

        let mut r = Reader::new(&bytes);
        if let Ok(read) = SuiteList::read(&mut r) {
            let used = r.position();
            prop_assert_eq!(used, read.wire_len());
            let mut out = [0u8; 1 + 2 * SuiteList::MAX];
            read.write(&mut Writer::new(&mut out)).unwrap();
            prop_assert_eq!(&out[..used], &bytes[..used]);
        }
    }

    #[test]
    fn request_payload_round_trips(payload in request_payload(), m in mutation()) {
        prop_assert!(payload.buffer_len() <= REQUEST_PAYLOAD_MAX_LEN);
        check_valid(&payload, RequestPayload::parse, request_payload_emit, m)?;
    }

    #[test]
    fn response_payload_round_trips(payload in response_payload(), m in mutation()) {
        prop_assert!(payload.buffer_len() <= RESPONSE_PAYLOAD_MAX_LEN);
        check_valid(&payload, ResponsePayload::parse, response_payload_emit, m)?;
    }

    #[test]
    fn hello_payload_round_trips(payload in hello_payload(), m in mutation()) {
        prop_assert!(
            (HELLO_PAYLOAD_MIN_LEN..=HELLO_PAYLOAD_MAX_LEN).contains(&payload.buffer_len())
        );
        check_valid(&payload, HelloPayload::parse, hello_payload_emit, m)?;
    }

    #[test]
    fn accept_payload_round_trips(payload in accept_payload(), m in mutation()) {
        check_valid(&payload, AcceptPayload::parse, accept_payload_emit, m)?;
        let mut zero = accept_payload_emit(&payload)?;
        zero[8..].fill(0);
        prop_assert!(AcceptPayload::parse(&zero).is_err(), "zero lifetime accepted");
    }

    /// Random plaintexts, half of the time with the first discriminating bytes (suite
    /// count, hello purpose) set to something plausible.
    #[test]
    fn handshake_payloads_never_panic(
        steer in any::<bool>(),
        small in 0u8..=9,
        mut bytes in vec(any::<u8>(), 0..400),
    ) {
        if steer {
            for at in [2, 8] {
                if let Some(b) = bytes.get_mut(at) {
                    *b = small;
                }
            }
        }
        check_canonical(&bytes, RequestPayload::parse, request_payload_emit)?;
        check_canonical(&bytes, ResponsePayload::parse, response_payload_emit)?;
        check_canonical(&bytes, HelloPayload::parse, hello_payload_emit)?;
        check_canonical(&bytes, AcceptPayload::parse, accept_payload_emit)?;
    }
}

// ---------------------------------------------------------------------------------------
// Fuzz seed corpus

/// A few valid encodings per fuzz target, built from fixed inputs (Ed25519 signing and
/// the MACs are deterministic, so the bytes are too).
fn fuzz_seeds() -> Vec<(&'static str, Vec<Vec<u8>>)> {
    let cloud = SigningKey::from_bytes(&[0x11; 32]);
    let credential = |name: &str, id: u8| {
        Credential {
            cloud_key_id: CloudKeyId::of(&cloud.verifying_key()),
            node_id: NodeId([id; 16]),
            not_before: UnixTime(1_700_000_000),
            not_after: UnixTime(1_700_086_400),
            static_public: [id ^ 0x55; 32],
            vip4: Ipv4Addr::new(100, 64, 0, id),
            vip6: Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, u16::from(id)),
            fqdn: Fqdn::new(name).unwrap(),
        }
        .sign(&cloud)
    };
    let alice = credential("laptop.alice.cyphonic", 1);
    let bob = credential("nas.bob.cyphonic", 2);
    let (a, b) = (alice.credential().node_id, bob.credential().node_id);
    let v4: SocketAddr = "198.51.100.7:61000".parse().unwrap();
    let v6: SocketAddr = "[2001:db8::7]:4500".parse().unwrap();
    let relay_key = RelayKey::derive(b"fuzz seed cloud secret, 32 bytes+");
    let ticket = mint_ticket(&relay_key, [0x42; 16], a, b, UnixTime(1_700_003_600));
    let offer = RelayOffer {
        trs_name: Fqdn::new("trs1.cyphonic").unwrap(),
        trs_endpoints: vec!["203.0.113.10:4600".parse().unwrap(), v6],
        ticket,
        bind_key: bind_key(&relay_key, &ticket, &a),
    };
    let route = |plan, relay| {
        Box::new(PeerRoute {
            credential: bob.clone(),
            real: vec!["10.0.0.2:4500".parse().unwrap(), v6],
            observed: vec![v4],
            plan,
            punch_key: Zeroizing::new([0x33; 32]),
            relay,
        })
    };
    let signals = [
        SignalMessage::LoginRequest(LoginRequest {
            device_id: "alice-laptop".into(),
            password: Zeroizing::new(b"correct horse".to_vec()),
            static_public: [0x54; 32],
            client: "cyphonicd 0.1.0".into(),
        }),
        SignalMessage::LoginResponse(LoginResponse {
            credential: alice.clone(),
            renew_after_secs: 43_200,
            domain: Fqdn::new("cyphonic").unwrap(),
        }),
        SignalMessage::RegistrationRequest(RegistrationRequest {
            credential: alice.clone(),
            endpoints: vec!["192.168.1.20:4500".parse().unwrap(), v6],
        }),
        SignalMessage::RegistrationResponse(RegistrationResponse {
            observed: Some(v4),
            keepalive_secs: 5,
            presence_ttl_secs: 30,
        }),
        SignalMessage::KeepAliveAck {
            sequence: 7,
            observed: v4,
        },
        SignalMessage::DirectionRequest {
            target: Fqdn::new("nas.bob.cyphonic").unwrap(),
        },
        SignalMessage::RouteDirectionToResponder {
            direction_id: [0x21; 16],
            peer: route(PathPlan::HolePunch, None),
        },
        SignalMessage::RouteDirectionConfirmation {
            direction_id: [0x21; 16],
            status: StatusCode::SUCCESS,
        },
        SignalMessage::RouteDirectionToInitiator {
            direction_id: [0x21; 16],
            peer: route(PathPlan::Relay, Some(offer)),
        },
        SignalMessage::AddressUpdate {
            endpoints: vec![v4],
        },
        SignalMessage::FinalizationRequest,
        SignalMessage::Status(StatusReport {
            status: StatusCode::OFFLINE,
            retry_after_secs: 10,
            message: "nas.bob.cyphonic is not registered".into(),
        }),
        SignalMessage::DirectionRequestByAddress {
            target: IpAddr::V4(Ipv4Addr::new(100, 64, 0, 2)),
        },
        SignalMessage::DirectionRequestByAddress {
            target: IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2)),
        },
    ];
    let signal_seeds: Vec<Vec<u8>> = signals
        .into_iter()
        .enumerate()
        .map(|(i, message)| {
            let repr = SignalRepr {
                request_id: 100 + i as u32,
                message,
            };
            let mut buf = vec![0u8; repr.buffer_len()];
            repr.emit(&mut buf).unwrap();
            buf
        })
        .collect();

    let controls = [
        ControlRepr::PathProbe {
            probe_id: 1,
            path_tag: 2,
        },
        ControlRepr::PathProbeAck {
            probe_id: 1,
            observed: v6,
        },
        ControlRepr::AddressUpdate {
            sequence: 3,
            endpoints: vec![v4, v6],
        },
        ControlRepr::AddressUpdateAck { sequence: 3 },
        ControlRepr::KeepAlive,
    ];
    let control_seeds: Vec<Vec<u8>> = controls
        .iter()
        .map(|repr| {
            let mut buf = vec![0u8; repr.buffer_len()];
            repr.emit(&mut buf).unwrap();
            buf
        })
        .collect();

    let emit = |len: usize, f: &dyn Fn(&mut [u8]) -> Result<usize, WireError>| {
        let mut buf = vec![0u8; len];
        f(&mut buf).unwrap();
        buf
    };
    let punch = HolePunchingRepr::sealed([0x21; 16], a, PunchKind::Punch, 99, &[0x33; 32]);
    let punch_ack = punch.ack(b, &[0x33; 32]);
    let punches: Vec<Vec<u8>> = [punch, punch_ack]
        .iter()
        .map(|p| emit(p.buffer_len(), &|buf| p.emit(buf)))
        .collect();

    let mut bind = RelayBindRepr {
        ticket,
        binder: a,
        timestamp_millis: 1_700_000_000_123,
        mac: [0; 16],
    };
    bind.seal(&bind_key(&relay_key, &ticket, &a));
    let binds = vec![emit(bind.buffer_len(), &|buf| bind.emit(buf))];

    let acks: Vec<Vec<u8>> = [
        (v4, true, StatusCode::SUCCESS),
        (v6, false, StatusCode::EXPIRED),
    ]
    .into_iter()
    .map(|(observed, peer_bound, status)| {
        let mut ack = RelayBindAckRepr {
            ticket_id: ticket.ticket_id,
            status,
            timestamp_millis: bind.timestamp_millis,
            peer_bound,
            observed,
            mac: [0; 16],
        };
        ack.seal(&bind_key(&relay_key, &ticket, &a));
        emit(ack.buffer_len(), &|buf| ack.emit(buf))
    })
    .collect();

    let capsule_like = [VERSION, MessageType::Capsule as u8, 0, 0, 0, 1, 0xaa, 0xbb];
    let relayed: Vec<Vec<u8>> = [&punches[0][..], &capsule_like[..]]
        .into_iter()
        .map(|payload| {
            let repr = RelayDataRepr {
                channel_id: ticket.channel_id(),
                payload,
            };
            emit(repr.buffer_len(), &|buf| repr.emit(buf))
        })
        .collect();

    let tickets = vec![
        ticket.to_bytes().to_vec(),
        mint_ticket(&relay_key, [0x43; 16], b, a, UnixTime(u64::MAX))
            .to_bytes()
            .to_vec(),
    ];
    let credentials = vec![alice.as_bytes().to_vec(), bob.as_bytes().to_vec()];

    // The handshakes' ciphertexts hold the plaintext a real handshake would seal, then
    // a stand-in tag, so that lengths and inner structure are realistic.
    let tag = [0xee; TAG_LEN];
    let sealed = |plain: &[u8]| [plain, &tag[..]].concat();
    let preferred = SuiteList::new(&[SuiteId::CHACHA20_POLY1305, SuiteId::AES_256_GCM]).unwrap();
    let all_suites = SuiteList::new(&[
        SuiteId::AES_256_GCM,
        SuiteId::CHACHA20_POLY1305,
        SuiteId::AES_256_CTR_HMAC_SHA256,
    ])
    .unwrap();
    let request_payload = RequestPayload {
        timestamp: 1_700_000_000_123,
        suites: preferred,
        credential: alice.clone(),
    };
    let response_payload = ResponsePayload {
        chosen: SuiteId::CHACHA20_POLY1305,
        suites: all_suites,
        credential: bob.clone(),
    };
    let request_plain = emit(request_payload.buffer_len(), &|buf| {
        request_payload.emit(buf)
    });
    let response_plain = emit(response_payload.buffer_len(), &|buf| {
        response_payload.emit(buf)
    });
    let mut suite_bytes = vec![0u8; all_suites.wire_len()];
    all_suites
        .write(&mut Writer::new(&mut suite_bytes))
        .unwrap();
    let tunnel_payloads = vec![request_plain.clone(), response_plain.clone(), suite_bytes];

    let request_payload_sealed = sealed(&request_plain);
    let requests: Vec<Vec<u8>> = [
        (&request_payload_sealed[..], [0; 16]),
        (&tag[..], [0x64; 16]),
    ]
    .into_iter()
    .map(|(encrypted_payload, mac2)| {
        let repr = TunnelRequestRepr {
            sender_index: 0x0a0b_0c0d,
            ephemeral: [0x61; 32],
            encrypted_static: [0x62; 48],
            encrypted_payload,
            mac1: [0x63; 16],
            mac2,
        };
        emit(repr.buffer_len(), &|buf| repr.emit(buf))
    })
    .collect();
    let response_payload_sealed = sealed(&response_plain);
    let response = TunnelResponseRepr {
        sender_index: 0x1a1b_1c1d,
        receiver_index: 0x0a0b_0c0d,
        ephemeral: [0x71; 32],
        encrypted_payload: &response_payload_sealed,
        mac1: [0x73; 16],
        mac2: [0; 16],
    };
    let responses = vec![emit(response.buffer_len(), &|buf| response.emit(buf))];

    let tunnel_cookie = CookieReplyRepr {
        receiver_index: 0x0a0b_0c0d,
        nonce: [0x81; 24],
        encrypted_cookie: [0x82; 32],
    };
    let channel_cookie = ChannelCookieRepr {
        receiver_index: 0x2a2b_2c2d,
        nonce: [0x83; 24],
        encrypted_cookie: [0x84; 32],
    };
    let cookies = vec![
        emit(tunnel_cookie.buffer_len(), &|buf| tunnel_cookie.emit(buf)),
        emit(channel_cookie.buffer_len(), &|buf| channel_cookie.emit(buf)),
    ];

    let ipv4_header = [
        0x45, 0, 0, 20, 0, 0, 0x40, 0, 64, 17, 0, 0, 100, 64, 0, 1, 100, 64, 0, 2,
    ];
    let data_packets: Vec<Vec<u8>> = [
        (MessageType::Capsule, 0, &[][..]),
        (MessageType::Capsule, 1, &ipv4_header[..]),
        (MessageType::Control, 2, &control_seeds[0][..]),
    ]
    .into_iter()
    .map(|(kind, counter, plain)| {
        let repr = DataHeaderRepr {
            kind,
            receiver_index: 0x1a1b_1c1d,
            counter,
        };
        let mut packet = emit(repr.buffer_len(), &|buf| repr.emit(buf));
        packet.extend_from_slice(&sealed(plain));
        packet
    })
    .collect();

    let hello_login = HelloPayload {
        timestamp_millis: 1_700_000_000_456,
        purpose: HelloPurpose::Login,
    };
    let hello_credential = HelloPayload {
        timestamp_millis: 1_700_000_000_789,
        purpose: HelloPurpose::Credential(alice.clone()),
    };
    let accept_payload = AcceptPayload {
        server_unix_millis: 1_700_000_000_999,
        lifetime_secs: 3600,
    };
    let channel_payloads = vec![
        emit(hello_login.buffer_len(), &|buf| hello_login.emit(buf)),
        emit(hello_credential.buffer_len(), &|buf| {
            hello_credential.emit(buf)
        }),
        emit(accept_payload.buffer_len(), &|buf| accept_payload.emit(buf)),
    ];
    let encrypted_static = [0x91; 48];
    let hellos: Vec<Vec<u8>> = [
        (Service::Auth, &channel_payloads[0], [0; 16]),
        (Service::NodeManagement, &channel_payloads[1], [0x94; 16]),
    ]
    .into_iter()
    .map(|(service, plain, mac2)| {
        let encrypted_payload = sealed(plain);
        let repr = ChannelHelloRepr {
            service,
            sender_index: 0x2a2b_2c2d,
            ephemeral: [0x90; 32],
            encrypted_static: &encrypted_static,
            encrypted_payload: &encrypted_payload,
            mac1: [0x93; 16],
            mac2,
        };
        emit(repr.buffer_len(), &|buf| repr.emit(buf))
    })
    .collect();
    let accept = ChannelAcceptRepr {
        sender_index: 0x3a3b_3c3d,
        receiver_index: 0x2a2b_2c2d,
        ephemeral: [0xa0; 32],
        encrypted_payload: sealed(&channel_payloads[2]).try_into().unwrap(),
    };
    let accepts = vec![emit(accept.buffer_len(), &|buf| accept.emit(buf))];
    let channel_signals: Vec<Vec<u8>> = [&signal_seeds[0][..], &signal_seeds[4][..], &[][..]]
        .into_iter()
        .enumerate()
        .map(|(counter, inner)| {
            let sealed_body = sealed(inner);
            let repr = ChannelSignalRepr {
                receiver_index: 0x3a3b_3c3d,
                counter: counter as u64,
                sealed_body: &sealed_body,
            };
            emit(repr.buffer_len(), &|buf| repr.emit(buf))
        })
        .collect();

    // The first four predate the handshake and channel targets; new seeds go after.
    let datagrams = vec![
        punches[0].clone(),
        binds[0].clone(),
        acks[0].clone(),
        relayed[0].clone(),
        hellos[1].clone(),
        accepts[0].clone(),
        channel_signals[0].clone(),
        requests[0].clone(),
        responses[0].clone(),
        cookies[0].clone(),
        data_packets[1].clone(),
        data_packets[2].clone(),
    ];

    vec![
        ("signal", signal_seeds),
        ("control", control_seeds),
        ("hole_punching", punches),
        ("relay_bind", binds),
        ("relay_bind_ack", acks),
        ("relay_data", relayed),
        ("relay_ticket", tickets),
        ("credential", credentials),
        ("datagram", datagrams),
        ("tunnel_request", requests),
        ("tunnel_response", responses),
        ("cookie_reply", cookies),
        ("data_header", data_packets),
        ("channel_hello", hellos),
        ("channel_accept", accepts),
        ("channel_signal", channel_signals),
        ("tunnel_payloads", tunnel_payloads),
        ("channel_payloads", channel_payloads),
    ]
}

/// Each seed is accepted by its target's parser.
fn seed_parses(target: &str, seed: &[u8]) -> bool {
    match target {
        "signal" => signal_parse(seed).is_ok(),
        "control" => control_parse(seed).is_ok(),
        "hole_punching" => punch_parse(seed).is_ok(),
        "relay_bind" => bind_parse(seed).is_ok(),
        "relay_bind_ack" => ack_parse(seed).is_ok(),
        "relay_data" => data_parse(seed).is_ok(),
        "relay_ticket" => RelayTicket::parse(seed).is_ok(),
        "credential" => SignedCredential::parse(seed).is_ok(),
        "datagram" => cyphonic_proto::wire::classify(seed).is_ok(),
        "tunnel_request" => request_parse(seed).is_ok(),
        "tunnel_response" => response_parse(seed).is_ok(),
        // Type 0x12 is shared: every cookie seed must suit both parsers.
        "cookie_reply" => cookie_parse(seed).is_ok() && channel_cookie_parse(seed).is_ok(),
        "data_header" => data_header_parse(seed).is_ok(),
        "channel_hello" => hello_parse(seed).is_ok(),
        "channel_accept" => accept_parse(seed).is_ok(),
        "channel_signal" => channel_signal_parse(seed).is_ok(),
        "tunnel_payloads" => {
            let mut r = Reader::new(seed);
            RequestPayload::parse(seed).is_ok()
                || ResponsePayload::parse(seed).is_ok()
                || (SuiteList::read(&mut r).is_ok() && r.finish().is_ok())
        }
        "channel_payloads" => {
            HelloPayload::parse(seed).is_ok() || AcceptPayload::parse(seed).is_ok()
        }
        _ => false,
    }
}

#[test]
fn fuzz_seed_corpus_is_current() {
    let fuzz = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let root = fuzz.join("corpus");
    let bless = std::env::var_os("CYPHONIC_BLESS_FUZZ_CORPUS").is_some();
    let targets = std::fs::read_dir(fuzz.join("fuzz_targets"))
        .expect("fuzz/fuzz_targets exists")
        .map(|entry| {
            let path = entry.unwrap().path();
            path.file_stem().unwrap().to_string_lossy().into_owned()
        })
        .collect::<std::collections::BTreeSet<_>>();
    for (target, seeds) in fuzz_seeds() {
        assert!(targets.contains(target), "no fuzz target {target}");
        assert!(!seeds.is_empty());
        let dir = root.join(target);
        for (i, seed) in seeds.iter().enumerate() {
            assert!(
                seed_parses(target, seed),
                "{target} seed-{i} does not parse"
            );
            let path = dir.join(format!("seed-{i}"));
            if bless {
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::write(&path, seed).unwrap();
            } else {
                let on_disk = std::fs::read(&path).unwrap_or_default();
                assert!(
                    on_disk == *seed,
                    "{} is stale; rerun with CYPHONIC_BLESS_FUZZ_CORPUS=1",
                    path.display()
                );
            }
        }
    }
}
