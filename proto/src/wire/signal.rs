//! Signaling messages between a node and the cloud (AS and NMS).
//!
//! These travel inside the sealed body of a [`MessageType::Signal`](super::MessageType)
//! datagram; the channel that seals them (see [`super::channel`]) treats them as opaque
//! bytes. So they carry no VERSION/type prefix of their own: each starts with a
//! [`SignalType`] byte and a `u32` request id. Whoever sends a request picks the id
//! (the node for its requests, the NMS for `RouteDirectionToResponder`); the reply
//! echoes it, so the requester can match replies and retransmit. Any request may be
//! answered with [`SignalMessage::Status`] instead of its normal reply.
//!
//! Flows (names from the original CYPHONIC):
//! - login: `LoginRequest` -> `LoginResponse` (AS); later `RenewRequest` ->
//!   `LoginResponse`.
//! - presence: `RegistrationRequest` -> `RegistrationResponse`, then `KeepAlive` ->
//!   `KeepAliveAck`; `AddressUpdate` -> `AddressUpdateAck` after a move (NMS).
//! - direction: initiator `DirectionRequest` (by name) or `DirectionRequestByAddress`
//!   (by virtual IP address) -> NMS; NMS `RouteDirectionToResponder`
//!   -> responder; responder `RouteDirectionConfirmation` (same request id) -> NMS; NMS
//!   `RouteDirectionToInitiator` (the initiator's request id) -> initiator, or `Status`
//!   when the target is unknown, offline, forbidden or refused.
//! - logout: `FinalizationRequest` -> `FinalizationResponse`.
//!
//! Lists carry a count byte and have maxima, enforced when parsing and when emitting
//! (emit refuses, it never truncates). Optional fields carry a presence byte (0 or 1).

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use zeroize::Zeroizing;

use super::node::{endpoints_len, read_endpoints, write_endpoints};
use super::relay::RelayTicket;
use super::status::StatusCode;
use super::{Fqdn, Reader, WireError, Writer, endpoint_len};
use crate::credential::{CredentialError, SignedCredential};

/// Most real endpoints a node may announce (registration, address update, peer route).
pub const MAX_ENDPOINTS: usize = 16;
/// Most NAT-observed endpoints in a peer route (one IPv4, one IPv6).
pub const MAX_OBSERVED: usize = 2;
/// Most endpoints of one TRS in a relay offer.
pub const MAX_TRS_ENDPOINTS: usize = 4;
pub const MAX_DEVICE_ID_LEN: usize = 64;
pub const MAX_PASSWORD_LEN: usize = 1024;
pub const MAX_CLIENT_LEN: usize = 64;
pub const MAX_STATUS_MESSAGE_LEN: usize = 200;

/// The first byte of a signaling message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum SignalType {
    LoginRequest = 0x01,
    LoginResponse = 0x02,
    RenewRequest = 0x03,
    RegistrationRequest = 0x10,
    RegistrationResponse = 0x11,
    KeepAlive = 0x12,
    KeepAliveAck = 0x13,
    AddressUpdate = 0x14,
    AddressUpdateAck = 0x15,
    DirectionRequest = 0x20,
    RouteDirectionToResponder = 0x21,
    RouteDirectionConfirmation = 0x22,
    RouteDirectionToInitiator = 0x23,
    DirectionRequestByAddress = 0x24,
    FinalizationRequest = 0x30,
    FinalizationResponse = 0x31,
    Status = 0x7f,
}

impl SignalType {
    pub const ALL: [SignalType; 17] = [
        Self::LoginRequest,
        Self::LoginResponse,
        Self::RenewRequest,
        Self::RegistrationRequest,
        Self::RegistrationResponse,
        Self::KeepAlive,
        Self::KeepAliveAck,
        Self::AddressUpdate,
        Self::AddressUpdateAck,
        Self::DirectionRequest,
        Self::RouteDirectionToResponder,
        Self::RouteDirectionConfirmation,
        Self::RouteDirectionToInitiator,
        Self::DirectionRequestByAddress,
        Self::FinalizationRequest,
        Self::FinalizationResponse,
        Self::Status,
    ];
}

impl TryFrom<u8> for SignalType {
    type Error = WireError;

    fn try_from(value: u8) -> Result<Self, WireError> {
        Self::ALL
            .into_iter()
            .find(|t| *t as u8 == value)
            .ok_or(WireError::UnknownType(value))
    }
}

/// A checked view of a signaling message: type byte, request id, body.
///
/// The type is returned as a `Result` rather than checked up front, so that a service
/// can still read the request id of a message type it does not know and answer it with
/// `Status { UNSUPPORTED_VERSION }`.
#[derive(Debug, Clone)]
pub struct SignalPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> SignalPacket<T> {
    /// Type byte + request id.
    pub const HEADER_LEN: usize = 5;

    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    pub fn check_len(&self) -> Result<(), WireError> {
        if self.buffer.as_ref().len() < Self::HEADER_LEN {
            return Err(WireError::Truncated);
        }
        Ok(())
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    pub fn signal_type(&self) -> Result<SignalType, WireError> {
        SignalType::try_from(self.buffer.as_ref()[0])
    }

    pub fn request_id(&self) -> u32 {
        let data = self.buffer.as_ref();
        u32::from_be_bytes([data[1], data[2], data[3], data[4]])
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> SignalPacket<&'a T> {
    pub fn body(&self) -> &'a [u8] {
        &self.buffer.as_ref()[Self::HEADER_LEN..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> SignalPacket<T> {
    pub fn set_request_id(&mut self, id: u32) {
        self.buffer.as_mut()[1..5].copy_from_slice(&id.to_be_bytes());
    }
}

/// A parsed signaling message with its request id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignalRepr {
    pub request_id: u32,
    pub message: SignalMessage,
}

/// What a signaling message says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignalMessage {
    /// Node -> AS.
    LoginRequest(LoginRequest),
    /// AS -> node, for a login or a renewal.
    LoginResponse(LoginResponse),
    /// Node -> AS: a fresh credential for the static key that authenticated the channel.
    RenewRequest,
    /// Node -> NMS.
    RegistrationRequest(RegistrationRequest),
    /// NMS -> node.
    RegistrationResponse(RegistrationResponse),
    /// Node -> NMS, every `keepalive_secs`; keeps presence and the NAT mapping alive.
    KeepAlive {
        sequence: u64,
    },
    /// NMS -> node; `observed` lets the node notice a NAT rebinding.
    KeepAliveAck {
        sequence: u64,
        observed: SocketAddr,
    },
    /// Node -> NMS: the node moved; these are its new real endpoints.
    AddressUpdate {
        endpoints: Vec<SocketAddr>,
    },
    /// NMS -> node.
    AddressUpdateAck {
        observed: Option<SocketAddr>,
    },
    /// Initiator -> NMS: "I want to talk to `target`".
    DirectionRequest {
        target: Fqdn,
    },
    /// Initiator -> NMS: "I want to talk to the node whose virtual address is `target`"
    /// (a packet to an overlay address needs no name lookup first). Answered exactly
    /// like [`DirectionRequest`](Self::DirectionRequest) for that node's name.
    DirectionRequestByAddress {
        target: IpAddr,
    },
    /// NMS -> responder: who wants to talk to you and how to reach them.
    RouteDirectionToResponder {
        direction_id: [u8; 16],
        peer: Box<PeerRoute>,
    },
    /// Responder -> NMS: `SUCCESS` to accept, any other status to refuse.
    RouteDirectionConfirmation {
        direction_id: [u8; 16],
        status: StatusCode,
    },
    /// NMS -> initiator: the responder accepted; how to reach it.
    RouteDirectionToInitiator {
        direction_id: [u8; 16],
        peer: Box<PeerRoute>,
    },
    /// Node -> cloud: log out (drop presence, forget the channel).
    FinalizationRequest,
    FinalizationResponse,
    /// The generic answer to any request that failed (or needs no other reply).
    Status(StatusReport),
}

/// Node -> AS: log in with device id and password.
#[derive(Clone, PartialEq, Eq)]
pub struct LoginRequest {
    /// 1..=64 bytes of printable ASCII without spaces.
    pub device_id: String,
    /// 1..=1024 bytes, sent as-is inside the forward-secret channel; the AS hashes it
    /// with Argon2id. Zeroized on drop, never printed.
    pub password: Zeroizing<Vec<u8>>,
    /// The node's static X25519 key the credential will certify.
    pub static_public: [u8; 32],
    /// The node software and version, at most 64 bytes of printable ASCII.
    pub client: String,
}

impl fmt::Debug for LoginRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoginRequest")
            .field("device_id", &self.device_id)
            .field("password", &"<redacted>")
            .field("static_public", &Hex(&self.static_public))
            .field("client", &self.client)
            .finish()
    }
}

/// AS -> node: the credential and when to renew it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginResponse {
    pub credential: SignedCredential,
    /// Renew this many seconds after receipt (before the credential expires).
    pub renew_after_secs: u32,
    /// The overlay domain; names under it resolve through the cloud.
    pub domain: Fqdn,
}

/// Node -> NMS: "I am online at these addresses".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrationRequest {
    pub credential: SignedCredential,
    /// The node's real addresses and ports, at most [`MAX_ENDPOINTS`]. The NAT-observed
    /// address is the datagram's source, not part of the body.
    pub endpoints: Vec<SocketAddr>,
}

/// NMS -> node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrationResponse {
    /// The registration's source address as the NMS saw it (absent when the NMS sits
    /// behind a proxy that hides it).
    pub observed: Option<SocketAddr>,
    /// How often to send `KeepAlive`.
    pub keepalive_secs: u16,
    /// How long the NMS keeps the node's presence without a keepalive.
    pub presence_ttl_secs: u16,
}

/// How the NMS tells the two ends to build their path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum PathPlan {
    /// Send straight to the peer's real endpoint.
    Direct = 1,
    /// Both send `HolePunching` to the peer's observed (and real) endpoints at once.
    HolePunch = 2,
    /// Both behind the same NAT: use the peer's real (local) endpoints.
    Local = 3,
    /// Meet at the TRS of the relay offer.
    Relay = 4,
}

impl TryFrom<u8> for PathPlan {
    type Error = WireError;

    fn try_from(value: u8) -> Result<Self, WireError> {
        match value {
            1 => Ok(Self::Direct),
            2 => Ok(Self::HolePunch),
            3 => Ok(Self::Local),
            4 => Ok(Self::Relay),
            _ => Err(WireError::Malformed("path plan")),
        }
    }
}

/// Everything one end of a direction needs to reach the other.
#[derive(Clone, PartialEq, Eq)]
pub struct PeerRoute {
    /// The other end's credential (the tunnel handshake verifies its static key).
    pub credential: SignedCredential,
    /// The other end's real endpoints, at most [`MAX_ENDPOINTS`].
    pub real: Vec<SocketAddr>,
    /// The other end's NAT-observed endpoints, at most [`MAX_OBSERVED`].
    pub observed: Vec<SocketAddr>,
    pub plan: PathPlan,
    /// Authenticates `HolePunching` between the two ends of this direction only. Fresh
    /// per direction; never a data key. Zeroized on drop, never printed.
    pub punch_key: Zeroizing<[u8; 32]>,
    /// Present when `plan` is `Relay`, and optionally as a fallback for the others.
    pub relay: Option<RelayOffer>,
}

impl fmt::Debug for PeerRoute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerRoute")
            .field("credential", &self.credential)
            .field("real", &self.real)
            .field("observed", &self.observed)
            .field("plan", &self.plan)
            .field("punch_key", &"<redacted>")
            .field("relay", &self.relay)
            .finish()
    }
}

/// Where and how to meet the peer at a TRS.
#[derive(Clone, PartialEq, Eq)]
pub struct RelayOffer {
    pub trs_name: Fqdn,
    /// The TRS's endpoints (IPv4 and/or IPv6), 1..=[`MAX_TRS_ENDPOINTS`].
    pub trs_endpoints: Vec<SocketAddr>,
    pub ticket: RelayTicket,
    /// This node's bind key for `ticket` (see [`crate::relay::bind_key`]). Zeroized on
    /// drop, never printed.
    pub bind_key: Zeroizing<[u8; 32]>,
}

impl fmt::Debug for RelayOffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RelayOffer")
            .field("trs_name", &self.trs_name)
            .field("trs_endpoints", &self.trs_endpoints)
            .field("ticket", &self.ticket)
            .field("bind_key", &"<redacted>")
            .finish()
    }
}

/// The generic error (or bare success) answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusReport {
    pub status: StatusCode,
    /// 0, or how long to wait before retrying (rate limits, overload).
    pub retry_after_secs: u16,
    /// Human text for logs, at most 200 bytes of UTF-8 without control characters.
    /// Never carries secrets.
    pub message: String,
}

impl SignalMessage {
    pub fn signal_type(&self) -> SignalType {
        match self {
            Self::LoginRequest(_) => SignalType::LoginRequest,
            Self::LoginResponse(_) => SignalType::LoginResponse,
            Self::RenewRequest => SignalType::RenewRequest,
            Self::RegistrationRequest(_) => SignalType::RegistrationRequest,
            Self::RegistrationResponse(_) => SignalType::RegistrationResponse,
            Self::KeepAlive { .. } => SignalType::KeepAlive,
            Self::KeepAliveAck { .. } => SignalType::KeepAliveAck,
            Self::AddressUpdate { .. } => SignalType::AddressUpdate,
            Self::AddressUpdateAck { .. } => SignalType::AddressUpdateAck,
            Self::DirectionRequest { .. } => SignalType::DirectionRequest,
            Self::DirectionRequestByAddress { .. } => SignalType::DirectionRequestByAddress,
            Self::RouteDirectionToResponder { .. } => SignalType::RouteDirectionToResponder,
            Self::RouteDirectionConfirmation { .. } => SignalType::RouteDirectionConfirmation,
            Self::RouteDirectionToInitiator { .. } => SignalType::RouteDirectionToInitiator,
            Self::FinalizationRequest => SignalType::FinalizationRequest,
            Self::FinalizationResponse => SignalType::FinalizationResponse,
            Self::Status(_) => SignalType::Status,
        }
    }
}

impl SignalRepr {
    pub fn parse<T: AsRef<[u8]> + ?Sized>(packet: &SignalPacket<&T>) -> Result<Self, WireError> {
        packet.check_len()?;
        let mut r = Reader::new(packet.body());
        let message = match packet.signal_type()? {
            SignalType::LoginRequest => SignalMessage::LoginRequest(LoginRequest::read(&mut r)?),
            SignalType::LoginResponse => SignalMessage::LoginResponse(LoginResponse::read(&mut r)?),
            SignalType::RenewRequest => SignalMessage::RenewRequest,
            SignalType::RegistrationRequest => {
                SignalMessage::RegistrationRequest(RegistrationRequest {
                    credential: read_credential(&mut r)?,
                    endpoints: read_endpoints(&mut r, MAX_ENDPOINTS)?,
                })
            }
            SignalType::RegistrationResponse => {
                SignalMessage::RegistrationResponse(RegistrationResponse {
                    observed: read_optional_endpoint(&mut r)?,
                    keepalive_secs: r.u16()?,
                    presence_ttl_secs: r.u16()?,
                })
            }
            SignalType::KeepAlive => SignalMessage::KeepAlive { sequence: r.u64()? },
            SignalType::KeepAliveAck => SignalMessage::KeepAliveAck {
                sequence: r.u64()?,
                observed: r.endpoint()?,
            },
            SignalType::AddressUpdate => SignalMessage::AddressUpdate {
                endpoints: read_endpoints(&mut r, MAX_ENDPOINTS)?,
            },
            SignalType::AddressUpdateAck => SignalMessage::AddressUpdateAck {
                observed: read_optional_endpoint(&mut r)?,
            },
            SignalType::DirectionRequest => SignalMessage::DirectionRequest { target: r.fqdn()? },
            SignalType::DirectionRequestByAddress => SignalMessage::DirectionRequestByAddress {
                target: read_ip(&mut r)?,
            },
            SignalType::RouteDirectionToResponder => SignalMessage::RouteDirectionToResponder {
                direction_id: r.array()?,
                peer: Box::new(PeerRoute::read(&mut r)?),
            },
            SignalType::RouteDirectionConfirmation => SignalMessage::RouteDirectionConfirmation {
                direction_id: r.array()?,
                status: StatusCode::read(&mut r)?,
            },
            SignalType::RouteDirectionToInitiator => SignalMessage::RouteDirectionToInitiator {
                direction_id: r.array()?,
                peer: Box::new(PeerRoute::read(&mut r)?),
            },
            SignalType::FinalizationRequest => SignalMessage::FinalizationRequest,
            SignalType::FinalizationResponse => SignalMessage::FinalizationResponse,
            SignalType::Status => SignalMessage::Status(StatusReport::read(&mut r)?),
        };
        r.finish()?;
        Ok(Self {
            request_id: packet.request_id(),
            message,
        })
    }

    /// Bytes [`Self::emit`] writes. Does not check field rules; `emit` does.
    pub fn buffer_len(&self) -> usize {
        SignalPacket::<&[u8]>::HEADER_LEN
            + match &self.message {
                SignalMessage::LoginRequest(m) => m.wire_len(),
                SignalMessage::LoginResponse(m) => m.wire_len(),
                SignalMessage::RegistrationRequest(m) => {
                    m.credential.as_bytes().len() + endpoints_len(&m.endpoints)
                }
                SignalMessage::RegistrationResponse(m) => optional_endpoint_len(&m.observed) + 4,
                SignalMessage::KeepAlive { .. } => 8,
                SignalMessage::KeepAliveAck { observed, .. } => 8 + endpoint_len(observed),
                SignalMessage::AddressUpdate { endpoints } => endpoints_len(endpoints),
                SignalMessage::AddressUpdateAck { observed } => optional_endpoint_len(observed),
                SignalMessage::DirectionRequest { target } => target.wire_len(),
                SignalMessage::DirectionRequestByAddress { target } => ip_len(target),
                SignalMessage::RouteDirectionToResponder { peer, .. }
                | SignalMessage::RouteDirectionToInitiator { peer, .. } => 16 + peer.wire_len(),
                SignalMessage::RouteDirectionConfirmation { .. } => 16 + StatusCode::LEN,
                SignalMessage::Status(m) => StatusCode::LEN + 2 + 1 + m.message.len(),
                SignalMessage::RenewRequest
                | SignalMessage::FinalizationRequest
                | SignalMessage::FinalizationResponse => 0,
            }
    }

    /// Writes the message, or refuses with [`WireError::Malformed`] when a field breaks
    /// its rule (too long, too many entries, bad characters) and with
    /// [`WireError::BufferTooSmall`] when `buf` is short. Never truncates.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize, WireError> {
        let mut w = Writer::with_len(buf, self.buffer_len())?;
        w.u8(self.message.signal_type() as u8)?;
        w.u32(self.request_id)?;
        match &self.message {
            SignalMessage::LoginRequest(m) => m.write(&mut w)?,
            SignalMessage::LoginResponse(m) => m.write(&mut w)?,
            SignalMessage::RegistrationRequest(m) => {
                w.bytes(m.credential.as_bytes())?;
                write_endpoints(&mut w, &m.endpoints, MAX_ENDPOINTS)?;
            }
            SignalMessage::RegistrationResponse(m) => {
                write_optional_endpoint(&mut w, &m.observed)?;
                w.u16(m.keepalive_secs)?;
                w.u16(m.presence_ttl_secs)?;
            }
            SignalMessage::KeepAlive { sequence } => w.u64(*sequence)?,
            SignalMessage::KeepAliveAck { sequence, observed } => {
                w.u64(*sequence)?;
                w.endpoint(observed)?;
            }
            SignalMessage::AddressUpdate { endpoints } => {
                write_endpoints(&mut w, endpoints, MAX_ENDPOINTS)?;
            }
            SignalMessage::AddressUpdateAck { observed } => {
                write_optional_endpoint(&mut w, observed)?;
            }
            SignalMessage::DirectionRequest { target } => w.fqdn(target)?,
            SignalMessage::DirectionRequestByAddress { target } => write_ip(&mut w, target)?,
            SignalMessage::RouteDirectionToResponder { direction_id, peer }
            | SignalMessage::RouteDirectionToInitiator { direction_id, peer } => {
                w.bytes(direction_id)?;
                peer.write(&mut w)?;
            }
            SignalMessage::RouteDirectionConfirmation {
                direction_id,
                status,
            } => {
                w.bytes(direction_id)?;
                status.write(&mut w)?;
            }
            SignalMessage::Status(m) => m.write(&mut w)?,
            SignalMessage::RenewRequest
            | SignalMessage::FinalizationRequest
            | SignalMessage::FinalizationResponse => {}
        }
        Ok(w.position())
    }
}

impl LoginRequest {
    fn read(r: &mut Reader<'_>) -> Result<Self, WireError> {
        let device_id = read_text(r, 1, MAX_DEVICE_ID_LEN, is_device_id_char, "device id")?;
        let password = r.long_bytes()?;
        if password.is_empty() || password.len() > MAX_PASSWORD_LEN {
            return Err(WireError::Malformed("password length"));
        }
        Ok(Self {
            device_id,
            password: Zeroizing::new(password.to_vec()),
            static_public: r.array()?,
            client: read_text(r, 0, MAX_CLIENT_LEN, is_client_char, "client")?,
        })
    }

    fn wire_len(&self) -> usize {
        1 + self.device_id.len() + 2 + self.password.len() + 32 + 1 + self.client.len()
    }

    fn write(&self, w: &mut Writer<'_>) -> Result<(), WireError> {
        check_text(
            &self.device_id,
            1,
            MAX_DEVICE_ID_LEN,
            is_device_id_char,
            "device id",
        )?;
        check_text(&self.client, 0, MAX_CLIENT_LEN, is_client_char, "client")?;
        if self.password.is_empty() || self.password.len() > MAX_PASSWORD_LEN {
            return Err(WireError::Malformed("password length"));
        }
        w.short_bytes(self.device_id.as_bytes())?;
        w.long_bytes(&self.password)?;
        w.bytes(&self.static_public)?;
        w.short_bytes(self.client.as_bytes())
    }
}

impl LoginResponse {
    fn read(r: &mut Reader<'_>) -> Result<Self, WireError> {
        Ok(Self {
            credential: read_credential(r)?,
            renew_after_secs: r.u32()?,
            domain: r.fqdn()?,
        })
    }

    fn wire_len(&self) -> usize {
        self.credential.as_bytes().len() + 4 + self.domain.wire_len()
    }

    fn write(&self, w: &mut Writer<'_>) -> Result<(), WireError> {
        w.bytes(self.credential.as_bytes())?;
        w.u32(self.renew_after_secs)?;
        w.fqdn(&self.domain)
    }
}

impl PeerRoute {
    fn read(r: &mut Reader<'_>) -> Result<Self, WireError> {
        let route = Self {
            credential: read_credential(r)?,
            plan: PathPlan::try_from(r.u8()?)?,
            punch_key: Zeroizing::new(r.array()?),
            real: read_endpoints(r, MAX_ENDPOINTS)?,
            observed: read_endpoints(r, MAX_OBSERVED)?,
            relay: match read_presence(r)? {
                false => None,
                true => Some(RelayOffer::read(r)?),
            },
        };
        route.check()?;
        Ok(route)
    }

    fn wire_len(&self) -> usize {
        self.credential.as_bytes().len()
            + 1
            + 32
            + endpoints_len(&self.real)
            + endpoints_len(&self.observed)
            + 1
            + self.relay.as_ref().map_or(0, RelayOffer::wire_len)
    }

    fn write(&self, w: &mut Writer<'_>) -> Result<(), WireError> {
        self.check()?;
        w.bytes(self.credential.as_bytes())?;
        w.u8(self.plan as u8)?;
        w.bytes(&self.punch_key[..])?;
        write_endpoints(w, &self.real, MAX_ENDPOINTS)?;
        write_endpoints(w, &self.observed, MAX_OBSERVED)?;
        match &self.relay {
            None => w.u8(0),
            Some(offer) => {
                w.u8(1)?;
                offer.write(w)
            }
        }
    }

    fn check(&self) -> Result<(), WireError> {
        if self.plan == PathPlan::Relay && self.relay.is_none() {
            return Err(WireError::Malformed("relay plan without relay offer"));
        }
        Ok(())
    }
}

impl RelayOffer {
    fn read(r: &mut Reader<'_>) -> Result<Self, WireError> {
        let offer = Self {
            trs_name: r.fqdn()?,
            trs_endpoints: read_endpoints(r, MAX_TRS_ENDPOINTS)?,
            ticket: RelayTicket::read(r)?,
            bind_key: Zeroizing::new(r.array()?),
        };
        offer.check()?;
        Ok(offer)
    }

    fn wire_len(&self) -> usize {
        self.trs_name.wire_len() + endpoints_len(&self.trs_endpoints) + RelayTicket::LEN + 32
    }

    fn write(&self, w: &mut Writer<'_>) -> Result<(), WireError> {
        self.check()?;
        w.fqdn(&self.trs_name)?;
        write_endpoints(w, &self.trs_endpoints, MAX_TRS_ENDPOINTS)?;
        self.ticket.write(w)?;
        w.bytes(&self.bind_key[..])
    }

    fn check(&self) -> Result<(), WireError> {
        if self.trs_endpoints.is_empty() {
            return Err(WireError::Malformed("relay offer without endpoints"));
        }
        Ok(())
    }
}

impl StatusReport {
    fn read(r: &mut Reader<'_>) -> Result<Self, WireError> {
        Ok(Self {
            status: StatusCode::read(r)?,
            retry_after_secs: r.u16()?,
            message: read_text(
                r,
                0,
                MAX_STATUS_MESSAGE_LEN,
                is_message_char,
                "status message",
            )?,
        })
    }

    fn write(&self, w: &mut Writer<'_>) -> Result<(), WireError> {
        check_text(
            &self.message,
            0,
            MAX_STATUS_MESSAGE_LEN,
            is_message_char,
            "status message",
        )?;
        self.status.write(w)?;
        w.u16(self.retry_after_secs)?;
        w.short_bytes(self.message.as_bytes())
    }
}

// ---------------------------------------------------------------------------------------
// Field helpers

fn read_credential(r: &mut Reader<'_>) -> Result<SignedCredential, WireError> {
    SignedCredential::read(r).map_err(|e| match e {
        CredentialError::Malformed(wire) => wire,
        _ => WireError::Malformed("credential"),
    })
}

fn read_presence(r: &mut Reader<'_>) -> Result<bool, WireError> {
    match r.u8()? {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(WireError::Malformed("presence flag")),
    }
}

fn read_optional_endpoint(r: &mut Reader<'_>) -> Result<Option<SocketAddr>, WireError> {
    Ok(match read_presence(r)? {
        false => None,
        true => Some(r.endpoint()?),
    })
}

fn write_optional_endpoint(
    w: &mut Writer<'_>,
    endpoint: &Option<SocketAddr>,
) -> Result<(), WireError> {
    match endpoint {
        None => w.u8(0),
        Some(endpoint) => {
            w.u8(1)?;
            w.endpoint(endpoint)
        }
    }
}

fn optional_endpoint_len(endpoint: &Option<SocketAddr>) -> usize {
    1 + endpoint.as_ref().map_or(0, endpoint_len)
}

/// An IP address without a port: family byte (4 or 6), then 4 or 16 address bytes. The
/// shared `endpoint` codec carries a port, which a bare address has no use for.
fn read_ip(r: &mut Reader<'_>) -> Result<IpAddr, WireError> {
    match r.u8()? {
        4 => Ok(IpAddr::V4(r.ipv4()?)),
        6 => Ok(IpAddr::V6(r.ipv6()?)),
        _ => Err(WireError::Malformed("address family")),
    }
}

fn write_ip(w: &mut Writer<'_>, ip: &IpAddr) -> Result<(), WireError> {
    match ip {
        IpAddr::V4(a) => {
            w.u8(4)?;
            w.bytes(&a.octets())
        }
        IpAddr::V6(a) => {
            w.u8(6)?;
            w.bytes(&a.octets())
        }
    }
}

fn ip_len(ip: &IpAddr) -> usize {
    match ip {
        IpAddr::V4(_) => 1 + 4,
        IpAddr::V6(_) => 1 + 16,
    }
}

fn is_device_id_char(c: char) -> bool {
    c.is_ascii_graphic()
}

fn is_client_char(c: char) -> bool {
    c == ' ' || c.is_ascii_graphic()
}

fn is_message_char(c: char) -> bool {
    !c.is_control()
}

/// A length byte and UTF-8 text of `min..=max` bytes whose every char passes `allowed`.
fn read_text(
    r: &mut Reader<'_>,
    min: usize,
    max: usize,
    allowed: fn(char) -> bool,
    what: &'static str,
) -> Result<String, WireError> {
    let raw = r.short_bytes()?;
    let text = std::str::from_utf8(raw).map_err(|_| WireError::Malformed(what))?;
    check_text(text, min, max, allowed, what)?;
    Ok(text.to_owned())
}

fn check_text(
    text: &str,
    min: usize,
    max: usize,
    allowed: fn(char) -> bool,
    what: &'static str,
) -> Result<(), WireError> {
    if text.len() < min || text.len() > max || !text.chars().all(allowed) {
        return Err(WireError::Malformed(what));
    }
    Ok(())
}

struct Hex<'a>(&'a [u8]);

impl fmt::Debug for Hex<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
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
        let cloud = SigningKey::from_bytes(&[1; 32]);
        Credential {
            cloud_key_id: CloudKeyId::of(&cloud.verifying_key()),
            node_id: NodeId([4; 16]),
            not_before: UnixTime(1),
            not_after: UnixTime(2),
            static_public: [5; 32],
            vip4: "100.64.0.1".parse().unwrap(),
            vip6: "fd00::1".parse().unwrap(),
            fqdn: Fqdn::new(name).unwrap(),
        }
        .sign(&cloud)
    }

    fn round_trip(message: SignalMessage) -> Vec<u8> {
        let repr = SignalRepr {
            request_id: 0xdead_beef,
            message,
        };
        let mut buf = vec![0u8; repr.buffer_len()];
        assert_eq!(repr.emit(&mut buf).unwrap(), buf.len());
        let packet = SignalPacket::new_checked(&buf[..]).unwrap();
        assert_eq!(packet.request_id(), 0xdead_beef);
        assert_eq!(SignalRepr::parse(&packet).unwrap(), repr);
        buf
    }

    fn login(device_id: &str, password: &[u8], client: &str) -> SignalMessage {
        SignalMessage::LoginRequest(LoginRequest {
            device_id: device_id.into(),
            password: Zeroizing::new(password.to_vec()),
            static_public: [7; 32],
            client: client.into(),
        })
    }

    fn emit_err(message: SignalMessage) -> WireError {
        let repr = SignalRepr {
            request_id: 1,
            message,
        };
        repr.emit(&mut [0u8; 4096]).unwrap_err()
    }

    #[test]
    fn login_request_layout_and_rules() {
        let bytes = round_trip(login("dev-1", b"pw", "cyphonicd 0.1"));
        assert_eq!(&bytes[..5], &[0x01, 0xde, 0xad, 0xbe, 0xef]);
        assert_eq!(&bytes[5..11], b"\x05dev-1");
        assert_eq!(&bytes[11..15], b"\x00\x02pw");

        for bad in ["", "has space", "tab\t", "ü", &"x".repeat(65)] {
            assert!(
                matches!(emit_err(login(bad, b"pw", "c")), WireError::Malformed(_)),
                "{bad:?}"
            );
        }
        assert!(matches!(
            emit_err(login("d", b"", "c")),
            WireError::Malformed(_)
        ));
        assert!(matches!(
            emit_err(login("d", &[0; 1025], "c")),
            WireError::Malformed(_)
        ));
        round_trip(login(&"x".repeat(64), &[0; 1024], &"c".repeat(64)));
        assert!(matches!(
            emit_err(login("d", b"p", &"c".repeat(65))),
            WireError::Malformed(_)
        ));
    }

    #[test]
    fn password_is_never_printed() {
        let SignalMessage::LoginRequest(req) = login("dev", b"hunter2", "c") else {
            unreachable!()
        };
        let shown = format!("{req:?}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("104, 117"),
            "{shown}"
        );
    }

    fn offer() -> RelayOffer {
        RelayOffer {
            trs_name: Fqdn::new("trs1.cyphonic").unwrap(),
            trs_endpoints: vec!["192.0.2.9:4600".parse().unwrap()],
            ticket: crate::relay::mint_ticket(
                &crate::relay::RelayKey::from_bytes([9; 32]),
                [1; 16],
                NodeId([2; 16]),
                NodeId([3; 16]),
                UnixTime(99),
            ),
            bind_key: Zeroizing::new([0x5a; 32]),
        }
    }

    fn route(plan: PathPlan, relay: Option<RelayOffer>) -> Box<PeerRoute> {
        Box::new(PeerRoute {
            credential: credential("peer.alice.cyphonic"),
            real: vec!["10.0.0.2:4500".parse().unwrap()],
            observed: vec![
                "198.51.100.7:61000".parse().unwrap(),
                "[2001:db8::7]:4500".parse().unwrap(),
            ],
            plan,
            punch_key: Zeroizing::new([0x77; 32]),
            relay,
        })
    }

    #[test]
    fn every_message_round_trips() {
        let cred = credential("laptop.alice.cyphonic");
        let ep: SocketAddr = "[2001:db8::1]:4500".parse().unwrap();
        let messages = vec![
            SignalMessage::LoginResponse(LoginResponse {
                credential: cred.clone(),
                renew_after_secs: 3600,
                domain: Fqdn::new("cyphonic").unwrap(),
            }),
            SignalMessage::RenewRequest,
            SignalMessage::RegistrationRequest(RegistrationRequest {
                credential: cred,
                endpoints: vec![ep, "192.0.2.1:1".parse().unwrap()],
            }),
            SignalMessage::RegistrationResponse(RegistrationResponse {
                observed: Some(ep),
                keepalive_secs: 5,
                presence_ttl_secs: 30,
            }),
            SignalMessage::RegistrationResponse(RegistrationResponse {
                observed: None,
                keepalive_secs: 5,
                presence_ttl_secs: 30,
            }),
            SignalMessage::KeepAlive { sequence: 9 },
            SignalMessage::KeepAliveAck {
                sequence: 9,
                observed: ep,
            },
            SignalMessage::AddressUpdate { endpoints: vec![] },
            SignalMessage::AddressUpdateAck { observed: None },
            SignalMessage::DirectionRequest {
                target: Fqdn::new("nas.bob.cyphonic").unwrap(),
            },
            SignalMessage::DirectionRequestByAddress {
                target: "100.64.0.7".parse().unwrap(),
            },
            SignalMessage::DirectionRequestByAddress {
                target: "fd00::7".parse().unwrap(),
            },
            SignalMessage::RouteDirectionToResponder {
                direction_id: [6; 16],
                peer: route(PathPlan::HolePunch, None),
            },
            SignalMessage::RouteDirectionConfirmation {
                direction_id: [6; 16],
                status: StatusCode::FORBIDDEN,
            },
            SignalMessage::RouteDirectionToInitiator {
                direction_id: [6; 16],
                peer: route(PathPlan::Relay, Some(offer())),
            },
            SignalMessage::FinalizationRequest,
            SignalMessage::FinalizationResponse,
            SignalMessage::Status(StatusReport {
                status: StatusCode::RATE_LIMITED,
                retry_after_secs: 30,
                message: "slow down — please".into(),
            }),
        ];
        for m in messages {
            round_trip(m);
        }
    }

    #[test]
    fn route_rules() {
        let relay_without_offer = SignalMessage::RouteDirectionToInitiator {
            direction_id: [0; 16],
            peer: route(PathPlan::Relay, None),
        };
        assert!(matches!(
            emit_err(relay_without_offer),
            WireError::Malformed(_)
        ));
        let mut empty = offer();
        empty.trs_endpoints.clear();
        let no_endpoints = SignalMessage::RouteDirectionToInitiator {
            direction_id: [0; 16],
            peer: route(PathPlan::Direct, Some(empty)),
        };
        assert!(matches!(emit_err(no_endpoints), WireError::Malformed(_)));
        let mut three = route(PathPlan::Direct, None);
        three.observed.push("192.0.2.3:3".parse().unwrap());
        assert!(matches!(
            emit_err(SignalMessage::RouteDirectionToResponder {
                direction_id: [0; 16],
                peer: three,
            }),
            WireError::Malformed(_)
        ));
        // Secrets stay out of Debug.
        let shown = format!("{:?}", route(PathPlan::Relay, Some(offer())));
        assert!(
            !shown.contains("119, 119") && !shown.contains("90, 90"),
            "{shown}"
        );
    }

    #[test]
    fn status_message_rules() {
        let status = |message: String| {
            SignalMessage::Status(StatusReport {
                status: StatusCode(4242),
                retry_after_secs: 0,
                message,
            })
        };
        round_trip(status("x".repeat(200)));
        round_trip(status(String::new()));
        assert!(matches!(
            emit_err(status("x".repeat(201))),
            WireError::Malformed(_)
        ));
        assert!(matches!(
            emit_err(status("a\nb".into())),
            WireError::Malformed(_)
        ));
    }

    #[test]
    fn direction_by_address_layout_and_rules() {
        let v4 = round_trip(SignalMessage::DirectionRequestByAddress {
            target: "100.64.0.7".parse().unwrap(),
        });
        assert_eq!(v4, [0x24, 0xde, 0xad, 0xbe, 0xef, 4, 100, 64, 0, 7]);
        let v6 = round_trip(SignalMessage::DirectionRequestByAddress {
            target: "fd00::7".parse().unwrap(),
        });
        assert_eq!(&v6[..7], &[0x24, 0xde, 0xad, 0xbe, 0xef, 6, 0xfd]);
        assert_eq!(v6.len(), 5 + 1 + 16);
        assert_eq!(v6[21], 7);

        let parse = |bytes: &[u8]| SignalRepr::parse(&SignalPacket::new_checked(bytes).unwrap());
        let mut trailing = v4.clone();
        trailing.push(0);
        assert_eq!(parse(&trailing), Err(WireError::TrailingBytes(1)));
        assert_eq!(parse(&v4[..v4.len() - 1]), Err(WireError::Truncated));
        assert_eq!(parse(&v6[..v6.len() - 1]), Err(WireError::Truncated));
        assert_eq!(parse(&v4[..5]), Err(WireError::Truncated));
        // An IPv4 family byte in front of 16 bytes leaves 12 over; an IPv6 one in front
        // of 4 bytes is short; any other family is malformed.
        let mut v4_family = v6.clone();
        v4_family[5] = 4;
        assert_eq!(parse(&v4_family), Err(WireError::TrailingBytes(12)));
        let mut v6_family = v4.clone();
        v6_family[5] = 6;
        assert_eq!(parse(&v6_family), Err(WireError::Truncated));
        for family in [0, 5, 41, 0xff] {
            let mut bad = v4.clone();
            bad[5] = family;
            assert_eq!(
                parse(&bad),
                Err(WireError::Malformed("address family")),
                "{family}"
            );
        }
    }

    #[test]
    fn unknown_type_keeps_request_id_readable() {
        let bytes = [0x55, 0, 0, 0, 42];
        let packet = SignalPacket::new_checked(&bytes[..]).unwrap();
        assert_eq!(packet.request_id(), 42);
        assert_eq!(
            SignalRepr::parse(&packet),
            Err(WireError::UnknownType(0x55))
        );
        assert_eq!(
            SignalPacket::new_checked(&bytes[..4]).unwrap_err(),
            WireError::Truncated
        );
        // Trailing bytes are refused.
        let bytes = [0x03, 0, 0, 0, 1, 0];
        let packet = SignalPacket::new_checked(&bytes[..]).unwrap();
        assert_eq!(SignalRepr::parse(&packet), Err(WireError::TrailingBytes(1)));
    }
}
