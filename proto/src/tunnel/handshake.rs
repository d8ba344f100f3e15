//! The node-to-node handshake: one round trip of Noise IK that authenticates both
//! nodes with their cloud-signed credentials, negotiates the crypto suite and yields
//! two directional data keys.
//!
//! This module is the message level: build a request, consume it, answer it, consume
//! the answer. It keeps no state between handshakes and decides no policy (replay
//! timestamps, credential validity, who may talk to whom): [`super::Peer`] and
//! [`super::Endpoint`] do that. It is public so that tests, fuzzers and benchmarks can
//! drive single messages.
//!
//! Key schedule after the Noise messages (`ck` = final chaining key):
//!
//! ```text
//! PRK            = HMAC-SHA256(key = ck, "")
//! initiator->resp = HKDF-Expand(PRK, "cyphonic i->r" || suite (u16 BE), 32)
//! resp->initiator = HKDF-Expand(PRK, "cyphonic r->i" || suite (u16 BE), 32)
//! ```

use std::sync::Arc;

use ed25519_dalek::VerifyingKey;
use rand_core::{CryptoRng, RngCore};
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

use crate::cookie;
use crate::credential::{Credential, CredentialError, SignedCredential};
use crate::noise::{
    self, MESSAGE1_PAYLOAD_OFFSET, MESSAGE2_PAYLOAD_OFFSET, NoiseError, SymmetricState,
};
use crate::suite::{AeadKey, KEY_LEN, SuiteError, SuiteId, SuiteProvider, TAG_LEN};
use crate::time::UnixTime;
use crate::wire::handshake::{
    MAC_LEN, REQUEST_PAYLOAD_OFFSET, RESPONSE_PAYLOAD_OFFSET, RequestPayload, ResponsePayload,
    SuiteList, TunnelRequestPacket, TunnelResponsePacket,
};
use crate::wire::{WireError, Writer};

/// Bound into the transcript so that no other protocol's handshake can be replayed
/// into ours; carries the tunnel protocol version.
const PROLOGUE: &[u8] = b"cyphonic tunnel v1";
const LABEL_I2R: &[u8] = b"cyphonic i->r";
const LABEL_R2I: &[u8] = b"cyphonic r->i";
/// Where the Noise message starts in a request (after the 8-byte cleartext header) and
/// in a response (after 12).
const REQUEST_NOISE_OFFSET: usize = REQUEST_PAYLOAD_OFFSET - MESSAGE1_PAYLOAD_OFFSET;
const RESPONSE_NOISE_OFFSET: usize = RESPONSE_PAYLOAD_OFFSET - MESSAGE2_PAYLOAD_OFFSET;

/// Why a handshake message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    #[error("malformed handshake message: {0}")]
    Malformed(#[from] WireError),
    #[error("mac1 is invalid")]
    Mac1,
    #[error("handshake message failed to authenticate")]
    Decrypt,
    #[error("handshake message answers another request")]
    UnexpectedIndex,
    #[error("peer credential rejected: {0}")]
    BadCredential(CredentialError),
    #[error("suite negotiation was tampered with")]
    Downgrade,
    #[error("no crypto suite in common")]
    NoCommonSuite,
    #[error("crypto suite unavailable: {0}")]
    Suite(#[from] SuiteError),
}

impl From<NoiseError> for HandshakeError {
    fn from(e: NoiseError) -> Self {
        match e {
            NoiseError::Decrypt | NoiseError::LowOrderKey => Self::Decrypt,
            NoiseError::Length => Self::Malformed(WireError::Truncated),
        }
    }
}

/// Why a [`LocalIdentity`] could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("no crypto suite configured")]
    NoSuites,
    #[error("suite list invalid: {0}")]
    SuiteList(WireError),
    #[error("suite {0:?} is not offered by the suite provider")]
    UnsupportedSuite(SuiteId),
}

/// Everything a node needs to handshake as itself: its static key, its credential,
/// the cloud keys it trusts and the suites it can seal with, in preference order.
pub struct LocalIdentity {
    static_secret: StaticSecret,
    static_public: [u8; 32],
    credential: SignedCredential,
    trusted_cloud_keys: Vec<VerifyingKey>,
    suites: SuiteList,
    provider: Arc<dyn SuiteProvider + Send + Sync>,
    mac1_key: [u8; 32],
}

impl std::fmt::Debug for LocalIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The static secret is never printed.
        f.debug_struct("LocalIdentity")
            .field("static_public", &noise::KeyFingerprint(&self.static_public))
            .field("credential", &self.credential)
            .field("suites", &self.suites)
            .finish_non_exhaustive()
    }
}

impl LocalIdentity {
    /// Takes the suites from `provider` (its first eight, in its order). The credential
    /// is not checked here (see [`Self::check_credential`]): a node whose credential
    /// does not match its key, or has expired, simply fails every handshake.
    pub fn new(
        static_secret: StaticSecret,
        credential: SignedCredential,
        trusted_cloud_keys: Vec<VerifyingKey>,
        provider: Arc<dyn SuiteProvider + Send + Sync>,
    ) -> Result<Self, IdentityError> {
        let offered = provider.suites();
        if offered.is_empty() {
            return Err(IdentityError::NoSuites);
        }
        let take = offered.len().min(SuiteList::MAX);
        let suites = SuiteList::new(&offered[..take]).map_err(IdentityError::SuiteList)?;
        let static_public = PublicKey::from(&static_secret).to_bytes();
        Ok(Self {
            mac1_key: cookie::mac1_key(&static_public),
            static_secret,
            static_public,
            credential,
            trusted_cloud_keys,
            suites,
            provider,
        })
    }

    /// Restricts and orders the suites this node offers (most preferred first); each
    /// must be one the provider can make keys for.
    pub fn with_suites(mut self, suites: &[SuiteId]) -> Result<Self, IdentityError> {
        let offered = self.provider.suites();
        if let Some(missing) = suites.iter().find(|s| !offered.contains(s)) {
            return Err(IdentityError::UnsupportedSuite(*missing));
        }
        self.suites = SuiteList::new(suites).map_err(IdentityError::SuiteList)?;
        Ok(self)
    }

    /// Verifies our own credential the way peers will: signed by a trusted cloud key,
    /// valid at `unix_now`, and for our static key.
    pub fn check_credential(&self, unix_now: UnixTime) -> Result<&Credential, CredentialError> {
        self.credential
            .verify_for_key(&self.trusted_cloud_keys, unix_now, &self.static_public)
    }

    pub fn static_public(&self) -> &[u8; 32] {
        &self.static_public
    }

    pub fn credential(&self) -> &SignedCredential {
        &self.credential
    }

    pub fn trusted_cloud_keys(&self) -> &[VerifyingKey] {
        &self.trusted_cloud_keys
    }

    pub fn suites(&self) -> &SuiteList {
        &self.suites
    }

    pub fn provider(&self) -> &(dyn SuiteProvider + Send + Sync) {
        &*self.provider
    }

    /// Verifies a peer's credential against our trusted keys and the static key the
    /// peer just proved it holds.
    pub fn verify_peer_credential<'c>(
        &self,
        credential: &'c SignedCredential,
        unix_now: UnixTime,
        proven_static: &[u8; 32],
    ) -> Result<&'c Credential, HandshakeError> {
        credential
            .verify_for_key(&self.trusted_cloud_keys, unix_now, proven_static)
            .map_err(HandshakeError::BadCredential)
    }
}

/// The suite both sides must arrive at: the first suite of the initiator's list
/// that the responder also lists.
pub fn negotiate(initiator: &SuiteList, responder: &SuiteList) -> Option<SuiteId> {
    initiator.first_shared(responder)
}

/// The initiator's check of the responder's answer: the chosen suite must be what
/// [`negotiate`] gives for both lists. Anything else is a downgrade (or a broken
/// responder) and the handshake is abandoned.
pub fn check_negotiation(
    ours: &SuiteList,
    response: &ResponsePayload,
) -> Result<SuiteId, HandshakeError> {
    match negotiate(ours, &response.suites) {
        Some(expected) if expected == response.chosen => Ok(expected),
        _ => Err(HandshakeError::Downgrade),
    }
}

/// The two directional keys of one session, before they are handed to a suite.
pub struct SessionKeys {
    suite: SuiteId,
    initiator_to_responder: Zeroizing<[u8; KEY_LEN]>,
    responder_to_initiator: Zeroizing<[u8; KEY_LEN]>,
}

impl std::fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionKeys")
            .field("suite", &self.suite)
            .finish_non_exhaustive()
    }
}

impl SessionKeys {
    fn derive(chaining_key: &[u8; 32], suite: SuiteId) -> Self {
        let suite_bytes = suite.0.to_be_bytes();
        let (initiator_to_responder, responder_to_initiator) = noise::split_labelled(
            chaining_key,
            &[LABEL_I2R, &suite_bytes],
            &[LABEL_R2I, &suite_bytes],
        );
        Self {
            suite,
            initiator_to_responder,
            responder_to_initiator,
        }
    }

    pub fn suite(&self) -> SuiteId {
        self.suite
    }

    /// Turns the raw keys into suite keys, oriented for our role.
    pub fn into_aead_keys(
        self,
        provider: &dyn SuiteProvider,
        we_initiated: bool,
    ) -> Result<AeadKeyPair, SuiteError> {
        let i2r = provider.new_key(self.suite, &self.initiator_to_responder)?;
        let r2i = provider.new_key(self.suite, &self.responder_to_initiator)?;
        let (send, receive) = if we_initiated { (i2r, r2i) } else { (r2i, i2r) };
        Ok(AeadKeyPair { send, receive })
    }

    #[cfg(test)]
    pub(crate) fn raw(&self) -> (&[u8; KEY_LEN], &[u8; KEY_LEN]) {
        (&self.initiator_to_responder, &self.responder_to_initiator)
    }
}

/// The suite keys of one session, from our point of view.
#[derive(Debug, Clone)]
pub struct AeadKeyPair {
    pub send: Arc<dyn AeadKey>,
    pub receive: Arc<dyn AeadKey>,
}

/// An initiator's handshake in flight: the request has been written; the response is
/// awaited.
pub struct InitiatorHandshake {
    state: SymmetricState,
    ephemeral: StaticSecret,
    responder_static: [u8; 32],
    sender_index: u32,
    mac1: [u8; MAC_LEN],
    timestamp: u64,
}

impl std::fmt::Debug for InitiatorHandshake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InitiatorHandshake")
            .field("sender_index", &self.sender_index)
            .field("timestamp", &self.timestamp)
            .finish_non_exhaustive()
    }
}

impl InitiatorHandshake {
    /// Writes a TunnelRequest to `responder_static` into `out` and returns the
    /// handshake state and the request length. `timestamp` must be greater than any
    /// this identity sent to this responder before; `cookie` is the last cookie the
    /// responder gave us, if it is still fresh.
    pub fn start(
        identity: &LocalIdentity,
        responder_static: &[u8; 32],
        sender_index: u32,
        timestamp: u64,
        cookie: Option<&[u8; 16]>,
        rng: &mut (impl RngCore + CryptoRng),
        out: &mut [u8],
    ) -> Result<(Self, usize), HandshakeError> {
        let credential = identity.credential.as_bytes();
        let payload_len = 8 + identity.suites.wire_len() + credential.len();
        let total = REQUEST_PAYLOAD_OFFSET + payload_len + TAG_LEN + 2 * MAC_LEN;
        let available = out.len();
        let buf = out.get_mut(..total).ok_or(WireError::BufferTooSmall {
            needed: total,
            available,
        })?;
        let mut packet = TunnelRequestPacket::new_unchecked(&mut *buf);
        packet.fill_prefix();
        packet.set_sender_index(sender_index);
        {
            let mut w = Writer::new(&mut packet.encrypted_payload_mut()[..payload_len]);
            w.u64(timestamp)?;
            identity.suites.write(&mut w)?;
            w.bytes(credential)?;
        }
        let ephemeral = StaticSecret::random_from_rng(&mut *rng);
        let mut state = SymmetricState::initialize(&[PROLOGUE], responder_static);
        let mac1_at = packet.mac1_offset();
        state.write_message1(
            &ephemeral,
            &identity.static_secret,
            responder_static,
            &mut buf[REQUEST_NOISE_OFFSET..mac1_at],
            payload_len,
        )?;
        let mac1 = cookie::mac(&cookie::mac1_key(responder_static), &buf[..mac1_at]);
        buf[mac1_at..mac1_at + MAC_LEN].copy_from_slice(&mac1);
        let mac2_at = mac1_at + MAC_LEN;
        let mac2 = cookie::mac2(cookie, &buf[..mac2_at]);
        buf[mac2_at..].copy_from_slice(&mac2);
        Ok((
            Self {
                state,
                ephemeral,
                responder_static: *responder_static,
                sender_index,
                mac1,
                timestamp,
            },
            total,
        ))
    }

    pub fn sender_index(&self) -> u32 {
        self.sender_index
    }

    pub fn timestamp(&self) -> u64 {
        self.timestamp
    }

    /// The mac1 of the request: a cookie reply to it is sealed with this as
    /// associated data.
    pub fn mac1(&self) -> &[u8; MAC_LEN] {
        &self.mac1
    }

    pub fn responder_static(&self) -> &[u8; 32] {
        &self.responder_static
    }

    /// Checks mac1 and decrypts a TunnelResponse in place. Leaves `self` untouched so
    /// that a forged response does not end the handshake. Neither the credential nor
    /// the suite choice is checked here (see [`check_negotiation`]).
    pub fn consume_response(
        &self,
        identity: &LocalIdentity,
        datagram: &mut [u8],
    ) -> Result<ConsumedResponse, HandshakeError> {
        let packet = TunnelResponsePacket::new_checked(&*datagram)?;
        if packet.receiver_index() != self.sender_index {
            return Err(HandshakeError::UnexpectedIndex);
        }
        let mac1_at = packet.mac1_offset();
        if !cookie::mac_matches(&identity.mac1_key, &datagram[..mac1_at], packet.mac1()) {
            return Err(HandshakeError::Mac1);
        }
        if packet.mac2() != [0u8; MAC_LEN] {
            return Err(WireError::Malformed("response mac2 must be zero").into());
        }
        let responder_index = packet.sender_index();
        let mut state = self.state.clone();
        let region = &mut datagram[RESPONSE_NOISE_OFFSET..mac1_at];
        let len = state.read_message2(&self.ephemeral, &identity.static_secret, region)?;
        let payload = ResponsePayload::parse(&region[MESSAGE2_PAYLOAD_OFFSET..][..len])?;
        Ok(ConsumedResponse {
            payload,
            responder_index,
            chaining_key: Zeroizing::new(*state.chaining_key()),
        })
    }
}

/// An authenticated TunnelResponse, as the initiator sees it.
pub struct ConsumedResponse {
    /// The responder's chosen suite, suite list and credential (not yet verified).
    pub payload: ResponsePayload,
    /// The index the responder wants in the data packets we send it.
    pub responder_index: u32,
    chaining_key: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for ConsumedResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsumedResponse")
            .field("payload", &self.payload)
            .field("responder_index", &self.responder_index)
            .finish_non_exhaustive()
    }
}

impl ConsumedResponse {
    /// The session keys for `suite` (normally the result of [`check_negotiation`]).
    pub fn session_keys(&self, suite: SuiteId) -> SessionKeys {
        SessionKeys::derive(&self.chaining_key, suite)
    }
}

/// The first half of consuming a request: `e, es, s` done, the initiator's static key
/// known, `ss` and the payload still encrypted. Lets the endpoint find the peer before
/// it spends the second Diffie-Hellman.
pub(crate) struct PartialRequest {
    state: SymmetricState,
    initiator_ephemeral: [u8; 32],
    initiator_static: [u8; 32],
    sender_index: u32,
}

impl PartialRequest {
    /// Decrypts the static key of a request whose macs the caller already checked.
    pub(crate) fn open(
        identity: &LocalIdentity,
        datagram: &mut [u8],
    ) -> Result<Self, HandshakeError> {
        let packet = TunnelRequestPacket::new_checked(&*datagram)?;
        let sender_index = packet.sender_index();
        let mac1_at = packet.mac1_offset();
        let mut state = SymmetricState::initialize(&[PROLOGUE], &identity.static_public);
        let (initiator_ephemeral, initiator_static) = state.read_message1_static(
            &identity.static_secret,
            &mut datagram[REQUEST_NOISE_OFFSET..mac1_at],
        )?;
        Ok(Self {
            state,
            initiator_ephemeral,
            initiator_static,
            sender_index,
        })
    }

    pub(crate) fn initiator_static(&self) -> &[u8; 32] {
        &self.initiator_static
    }

    /// Spends the second DH and decrypts and parses the payload.
    pub(crate) fn finish(
        mut self,
        identity: &LocalIdentity,
        datagram: &mut [u8],
    ) -> Result<ConsumedRequest, HandshakeError> {
        let mac1_at = TunnelRequestPacket::new_checked(&*datagram)?.mac1_offset();
        let region = &mut datagram[REQUEST_NOISE_OFFSET..mac1_at];
        let len = self.state.read_message1_payload(
            &identity.static_secret,
            &self.initiator_static,
            region,
        )?;
        let payload = RequestPayload::parse(&region[MESSAGE1_PAYLOAD_OFFSET..][..len])?;
        Ok(ConsumedRequest {
            state: self.state.clone(),
            initiator_ephemeral: self.initiator_ephemeral,
            initiator_static: self.initiator_static,
            sender_index: self.sender_index,
            payload,
        })
    }
}

/// Checks mac1 and decrypts a TunnelRequest addressed to `identity`, in place. Does
/// not look at mac2, the timestamp or the credential: those are policy.
pub fn consume_request(
    identity: &LocalIdentity,
    datagram: &mut [u8],
) -> Result<ConsumedRequest, HandshakeError> {
    let packet = TunnelRequestPacket::new_checked(&*datagram)?;
    let mac1_at = packet.mac1_offset();
    if !cookie::mac_matches(&identity.mac1_key, &datagram[..mac1_at], packet.mac1()) {
        return Err(HandshakeError::Mac1);
    }
    PartialRequest::open(identity, datagram)?.finish(identity, datagram)
}

/// An authenticated TunnelRequest, as the responder sees it.
pub struct ConsumedRequest {
    state: SymmetricState,
    initiator_ephemeral: [u8; 32],
    initiator_static: [u8; 32],
    sender_index: u32,
    payload: RequestPayload,
}

impl std::fmt::Debug for ConsumedRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsumedRequest")
            .field("sender_index", &self.sender_index)
            .field("payload", &self.payload)
            .finish_non_exhaustive()
    }
}

impl ConsumedRequest {
    /// The static key the initiator proved it holds.
    pub fn initiator_static(&self) -> &[u8; 32] {
        &self.initiator_static
    }

    /// The initiator's index, to be put in the response and in our data packets.
    pub fn sender_index(&self) -> u32 {
        self.sender_index
    }

    /// Timestamp, suite list and credential (not yet verified).
    pub fn payload(&self) -> &RequestPayload {
        &self.payload
    }

    /// Writes the TunnelResponse into `out` and returns its length and the session
    /// keys for `chosen`. The caller picks `chosen` (normally with [`negotiate`]); an
    /// honest responder never picks anything else, and the initiator checks.
    pub fn respond(
        self,
        identity: &LocalIdentity,
        chosen: SuiteId,
        sender_index: u32,
        rng: &mut (impl RngCore + CryptoRng),
        out: &mut [u8],
    ) -> Result<(usize, SessionKeys), HandshakeError> {
        let Self {
            mut state,
            initiator_ephemeral,
            initiator_static,
            sender_index: receiver_index,
            payload: _,
        } = self;
        let credential = identity.credential.as_bytes();
        let payload_len = 2 + identity.suites.wire_len() + credential.len();
        let total = RESPONSE_PAYLOAD_OFFSET + payload_len + TAG_LEN + 2 * MAC_LEN;
        let available = out.len();
        let buf = out.get_mut(..total).ok_or(WireError::BufferTooSmall {
            needed: total,
            available,
        })?;
        let mut packet = TunnelResponsePacket::new_unchecked(&mut *buf);
        packet.fill_prefix();
        packet.set_sender_index(sender_index);
        packet.set_receiver_index(receiver_index);
        {
            let mut w = Writer::new(&mut packet.encrypted_payload_mut()[..payload_len]);
            w.u16(chosen.0)?;
            identity.suites.write(&mut w)?;
            w.bytes(credential)?;
        }
        let mac1_at = packet.mac1_offset();
        let ephemeral = StaticSecret::random_from_rng(&mut *rng);
        state.write_message2(
            &ephemeral,
            &initiator_ephemeral,
            &initiator_static,
            &mut buf[RESPONSE_NOISE_OFFSET..mac1_at],
            payload_len,
        )?;
        let mac1 = cookie::mac(&cookie::mac1_key(&initiator_static), &buf[..mac1_at]);
        buf[mac1_at..mac1_at + MAC_LEN].copy_from_slice(&mac1);
        buf[mac1_at + MAC_LEN..].fill(0);
        Ok((total, SessionKeys::derive(state.chaining_key(), chosen)))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::credential::{CloudKeyId, Credential};
    use crate::suite::nonce_for_counter;
    use crate::suite::software::SoftwareSuites;
    use crate::wire::{Fqdn, NodeId};
    use ed25519_dalek::SigningKey;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    pub(crate) fn identity(seed: u8, name: &str) -> LocalIdentity {
        let cloud = SigningKey::from_bytes(&[42; 32]);
        let secret = StaticSecret::from([seed; 32]);
        let public = PublicKey::from(&secret).to_bytes();
        let credential = Credential {
            cloud_key_id: CloudKeyId::of(&cloud.verifying_key()),
            node_id: NodeId([seed; 16]),
            not_before: UnixTime(1_000),
            not_after: UnixTime(100_000),
            static_public: public,
            vip4: "100.64.0.9".parse().unwrap(),
            vip6: "fd00::9".parse().unwrap(),
            fqdn: Fqdn::new(name).unwrap(),
        }
        .sign(&cloud);
        LocalIdentity::new(
            secret,
            credential,
            vec![cloud.verifying_key()],
            Arc::new(SoftwareSuites),
        )
        .unwrap()
    }

    fn handshake(
        alice: &LocalIdentity,
        bob: &LocalIdentity,
        rng: &mut ChaCha20Rng,
    ) -> (SessionKeys, SessionKeys) {
        let mut out = [0u8; 1024];
        let (init, len) =
            InitiatorHandshake::start(alice, bob.static_public(), 11, 5, None, rng, &mut out)
                .unwrap();
        let request = consume_request(bob, &mut out[..len]).unwrap();
        assert_eq!(request.initiator_static(), alice.static_public());
        assert_eq!(request.sender_index(), 11);
        assert_eq!(request.payload().timestamp, 5);
        assert_eq!(&request.payload().credential, alice.credential());
        let chosen = negotiate(&request.payload().suites, bob.suites()).unwrap();
        let (len, bob_keys) = request.respond(bob, chosen, 22, rng, &mut out).unwrap();
        let response = init.consume_response(alice, &mut out[..len]).unwrap();
        assert_eq!(response.responder_index, 22);
        assert_eq!(&response.payload.credential, bob.credential());
        let suite = check_negotiation(alice.suites(), &response.payload).unwrap();
        (response.session_keys(suite), bob_keys)
    }

    #[test]
    fn both_sides_derive_the_same_keys() {
        let mut rng = ChaCha20Rng::seed_from_u64(7);
        let alice = identity(1, "alice.cyphonic");
        let bob = identity(2, "bob.cyphonic");
        let (a, b) = handshake(&alice, &bob, &mut rng);
        assert_eq!(a.suite(), SuiteId::AES_256_GCM);
        assert_eq!(a.raw(), b.raw());
        assert_ne!(a.raw().0, a.raw().1);
        // A second handshake gives fresh keys (forward secrecy needs new ephemerals).
        let (c, _) = handshake(&alice, &bob, &mut rng);
        assert_ne!(a.raw(), c.raw());

        let a_send = a.into_aead_keys(&SoftwareSuites, true).unwrap().send;
        let b_recv = b.into_aead_keys(&SoftwareSuites, false).unwrap().receive;
        let mut buf = [0u8; 32];
        buf[..4].copy_from_slice(b"data");
        let n = a_send
            .seal_in_place(&nonce_for_counter(0), b"hdr", &mut buf, 4)
            .unwrap();
        let m = b_recv
            .open_in_place(&nonce_for_counter(0), b"hdr", &mut buf[..n])
            .unwrap();
        assert_eq!(&buf[..m], b"data");
    }

    #[test]
    fn suite_is_bound_into_the_keys() {
        let mut rng = ChaCha20Rng::seed_from_u64(8);
        let alice = identity(1, "alice.cyphonic")
            .with_suites(&[SuiteId::CHACHA20_POLY1305, SuiteId::AES_256_GCM])
            .unwrap();
        let bob = identity(2, "bob.cyphonic");
        let (a, b) = handshake(&alice, &bob, &mut rng);
        assert_eq!(a.suite(), SuiteId::CHACHA20_POLY1305);
        assert_eq!(b.suite(), SuiteId::CHACHA20_POLY1305);
    }

    #[test]
    fn negotiation_follows_the_initiator_and_detects_downgrades() {
        let ours = SuiteList::new(&[SuiteId(2), SuiteId(1)]).unwrap();
        let theirs = SuiteList::new(&[SuiteId(1), SuiteId(2)]).unwrap();
        assert_eq!(negotiate(&ours, &theirs), Some(SuiteId(2)));
        let credential = identity(2, "bob.cyphonic").credential().clone();
        let mut response = ResponsePayload {
            chosen: SuiteId(2),
            suites: theirs,
            credential,
        };
        assert_eq!(check_negotiation(&ours, &response), Ok(SuiteId(2)));
        response.chosen = SuiteId(1);
        assert_eq!(
            check_negotiation(&ours, &response),
            Err(HandshakeError::Downgrade)
        );
        // A chosen suite the responder does not even list is also a downgrade.
        response.suites = SuiteList::new(&[SuiteId(1)]).unwrap();
        response.chosen = SuiteId(2);
        assert_eq!(
            check_negotiation(&ours, &response),
            Err(HandshakeError::Downgrade)
        );
    }

    #[test]
    fn requests_to_another_node_fail_mac1_and_tampering_fails_decryption() {
        let mut rng = ChaCha20Rng::seed_from_u64(9);
        let alice = identity(1, "alice.cyphonic");
        let bob = identity(2, "bob.cyphonic");
        let carol = identity(3, "carol.cyphonic");
        let mut out = [0u8; 1024];
        let (_, len) =
            InitiatorHandshake::start(&alice, bob.static_public(), 1, 1, None, &mut rng, &mut out)
                .unwrap();
        let clean = out[..len].to_vec();
        assert_eq!(
            consume_request(&carol, &mut clean.clone()).unwrap_err(),
            HandshakeError::Mac1
        );
        // A man in the middle who fixes up mac1 (bob's key is public) still cannot
        // change a single byte of the transcript.
        for i in 8..len - 32 {
            let mut m = clean.clone();
            m[i] ^= 0x01;
            let mac1 = cookie::mac(&cookie::mac1_key(bob.static_public()), &m[..len - 32]);
            m[len - 32..len - 16].copy_from_slice(&mac1);
            assert_eq!(
                consume_request(&bob, &mut m).unwrap_err(),
                HandshakeError::Decrypt,
                "byte {i}"
            );
        }
    }

    #[test]
    fn forged_or_foreign_responses_leave_the_handshake_usable() {
        let mut rng = ChaCha20Rng::seed_from_u64(10);
        let alice = identity(1, "alice.cyphonic");
        let bob = identity(2, "bob.cyphonic");
        let mut out = [0u8; 1024];
        let (init, len) =
            InitiatorHandshake::start(&alice, bob.static_public(), 5, 1, None, &mut rng, &mut out)
                .unwrap();
        let request = consume_request(&bob, &mut out[..len]).unwrap();
        let (len, _) = request
            .respond(&bob, SuiteId::AES_256_GCM, 6, &mut rng, &mut out)
            .unwrap();
        let good = out[..len].to_vec();
        let mut wrong_index = good.clone();
        wrong_index[11] ^= 1;
        assert_eq!(
            init.consume_response(&alice, &mut wrong_index).unwrap_err(),
            HandshakeError::UnexpectedIndex
        );
        let mut bad_mac = good.clone();
        bad_mac[len - 20] ^= 1;
        assert_eq!(
            init.consume_response(&alice, &mut bad_mac).unwrap_err(),
            HandshakeError::Mac1
        );
        let mut bad_mac2 = good.clone();
        bad_mac2[len - 1] = 1;
        assert!(matches!(
            init.consume_response(&alice, &mut bad_mac2),
            Err(HandshakeError::Malformed(_))
        ));
        let mut tampered = good.clone();
        tampered[50] ^= 1;
        let mac1 = cookie::mac(
            &cookie::mac1_key(alice.static_public()),
            &tampered[..len - 32],
        );
        tampered[len - 32..len - 16].copy_from_slice(&mac1);
        assert_eq!(
            init.consume_response(&alice, &mut tampered).unwrap_err(),
            HandshakeError::Decrypt
        );
        assert!(init.consume_response(&alice, &mut good.clone()).is_ok());
    }

    #[test]
    fn mac2_carries_the_cookie() {
        let mut rng = ChaCha20Rng::seed_from_u64(11);
        let alice = identity(1, "alice.cyphonic");
        let bob = identity(2, "bob.cyphonic");
        let mut out = [0u8; 1024];
        let (_, len) = InitiatorHandshake::start(
            &alice,
            bob.static_public(),
            1,
            1,
            Some(&[9; 16]),
            &mut rng,
            &mut out,
        )
        .unwrap();
        let expected = cookie::mac(&[9; 16], &out[..len - 16]);
        assert_eq!(&out[len - 16..len], &expected);
    }

    #[test]
    fn debug_never_shows_secrets() {
        let alice = identity(1, "alice.cyphonic");
        let text = format!("{alice:?}");
        assert!(!text.contains(&format!("{:?}", [1u8; 32])));
        assert!(text.contains("alice.cyphonic"));
    }
}
