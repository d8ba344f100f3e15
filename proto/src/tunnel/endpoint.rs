//! The tunnel endpoint: the node's side of every tunnel at once.
//!
//! It owns the [`Peer`]s in a slab whose slot number is the [`PeerId`] and the upper
//! 24 bits of every session index that peer hands out, so a data packet, a response
//! or a cookie reply reaches its peer with one shift and one array access — no
//! allocation, no hashing. A TunnelRequest carries no index of ours; it is checked
//! (mac1, then mac2 under load), its static key decrypted, and the peer looked up by
//! that key before the second Diffie-Hellman is spent.
//!
//! Authorisation: the endpoint answers only nodes the host added with
//! [`Endpoint::add_peer`] (after the NMS directed the two nodes to each other), and
//! only when the credential they present verifies for the static key they proved. A
//! request from anyone else is dropped after one DH, without an answer.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use rand_core::{CryptoRng, RngCore};

use super::cookie::CookieChecker;
use super::handshake::{LocalIdentity, PartialRequest};
use super::{
    Decapsulated, DropReason, EncapsulateError, Peer, PeerEvent, PeerId, TunnelConfig, TunnelStats,
};
use crate::credential::{CredentialError, SignedCredential};
use crate::time::UnixTime;
use crate::wire::data::DataPacket;
use crate::wire::handshake::{CookieReplyPacket, TunnelRequestPacket, TunnelResponsePacket};
use crate::wire::{MessageType, classify};

/// Peers one endpoint can hold: the slot must fit in the upper 24 bits of an index.
pub const MAX_PEERS: usize = 1 << 24;

/// Why a peer could not be added.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddPeerError {
    #[error("peer credential rejected: {0}")]
    Credential(#[from] CredentialError),
    #[error("a peer with this static key already exists ({0})")]
    AlreadyKnown(PeerId),
    #[error("the credential is our own")]
    OwnKey,
    #[error("too many peers")]
    TooManyPeers,
}

/// All tunnels of one node. See the module documentation.
#[derive(Debug)]
pub struct Endpoint {
    config: TunnelConfig,
    identity: Arc<LocalIdentity>,
    cookies: CookieChecker,
    under_load: bool,
    peers: Vec<Option<Peer>>,
    free: Vec<u32>,
    by_key: HashMap<[u8; 32], u32>,
    retired: HashMap<[u8; 32], (u64, u64)>,
    stats: TunnelStats,
}

impl Endpoint {
    pub fn new(config: TunnelConfig, identity: LocalIdentity) -> Self {
        Self {
            cookies: CookieChecker::new(identity.static_public()),
            identity: Arc::new(identity),
            config,
            under_load: false,
            peers: Vec::new(),
            free: Vec::new(),
            by_key: HashMap::new(),
            retired: HashMap::new(),
            stats: TunnelStats::default(),
        }
    }

    pub fn config(&self) -> &TunnelConfig {
        &self.config
    }

    pub fn identity(&self) -> &LocalIdentity {
        &self.identity
    }

    /// Replaces our identity, e.g. with a renewed credential. Sessions stay up; new
    /// handshakes use the new identity.
    pub fn set_identity(&mut self, identity: LocalIdentity) {
        self.cookies = CookieChecker::new(identity.static_public());
        self.identity = Arc::new(identity);
        for peer in self.peers.iter_mut().flatten() {
            peer.set_identity(self.identity.clone());
        }
    }

    /// While true, TunnelRequests need a valid mac2 (a cookie bound to their source
    /// address); others get a CookieReply instead of a Diffie-Hellman. The host sets
    /// this from its own measure of load (e.g. handshakes per second).
    pub fn set_under_load(&mut self, under_load: bool) {
        self.under_load = under_load;
    }

    pub fn is_under_load(&self) -> bool {
        self.under_load
    }

    /// Adds a remote node from its credential (normally from the NMS's Route
    /// Direction), verified against our trusted cloud keys at `unix_now`.
    pub fn add_peer(
        &mut self,
        credential: SignedCredential,
        unix_now: UnixTime,
    ) -> Result<PeerId, AddPeerError> {
        let key = credential
            .verify(self.identity.trusted_cloud_keys(), unix_now)?
            .static_public;
        if &key == self.identity.static_public() {
            return Err(AddPeerError::OwnKey);
        }
        if let Some(slot) = self.by_key.get(&key) {
            return Err(AddPeerError::AlreadyKnown(PeerId(*slot)));
        }
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None if self.peers.len() < MAX_PEERS => {
                self.peers.push(None);
                (self.peers.len() - 1) as u32
            }
            None => return Err(AddPeerError::TooManyPeers),
        };
        let id = PeerId(slot);
        let mut peer = Peer::new(id, self.config.clone(), self.identity.clone(), credential);
        if let Some(timestamps) = self.retired.remove(&key) {
            peer.restore_timestamps(timestamps);
        }
        self.peers[slot as usize] = Some(peer);
        self.by_key.insert(key, slot);
        Ok(id)
    }

    /// Forgets a peer and all its sessions. Its handshake timestamps are kept, so a
    /// recorded request cannot be replayed if the peer is added again.
    pub fn remove_peer(&mut self, id: PeerId) -> bool {
        let Some(peer) = self.peers.get_mut(id.0 as usize).and_then(Option::take) else {
            return false;
        };
        self.by_key.remove(peer.static_public());
        self.retired
            .insert(*peer.static_public(), peer.timestamps());
        self.stats.merge(peer.stats());
        self.free.push(id.0);
        true
    }

    pub fn peer(&self, id: PeerId) -> Option<&Peer> {
        self.peers.get(id.0 as usize)?.as_ref()
    }

    pub fn peer_mut(&mut self, id: PeerId) -> Option<&mut Peer> {
        self.peers.get_mut(id.0 as usize)?.as_mut()
    }

    pub fn peer_by_static_key(&self, key: &[u8; 32]) -> Option<PeerId> {
        self.by_key.get(key).map(|slot| PeerId(*slot))
    }

    pub fn peers(&self) -> impl Iterator<Item = &Peer> {
        self.peers.iter().flatten()
    }

    /// Handles one received tunnel datagram from `source`, in place. Data comes back
    /// as a range of `datagram`; anything to answer is written to `out` (give it
    /// [`crate::wire::handshake::MAX_HANDSHAKE_LEN`] bytes). Every drop is counted.
    pub fn decapsulate(
        &mut self,
        now: Instant,
        unix_now: UnixTime,
        rng: &mut (impl RngCore + CryptoRng),
        source: SocketAddr,
        datagram: &mut [u8],
        out: &mut [u8],
    ) -> Result<Decapsulated, DropReason> {
        match self.dispatch(now, unix_now, rng, source, datagram, out) {
            Ok(result) => Ok(result),
            Err((slot, reason)) => {
                match slot.and_then(|s| self.peers.get_mut(s as usize)?.as_mut()) {
                    Some(peer) => peer.record_drop(&reason),
                    None => self.stats.record_drop(&reason),
                }
                Err(reason)
            }
        }
    }

    /// The earliest [`Peer::poll_timeout`] of all peers.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.peers().filter_map(Peer::poll_timeout).min()
    }

    /// Runs every peer's due timers.
    pub fn handle_timeout(&mut self, now: Instant) {
        for peer in self.peers.iter_mut().flatten() {
            if peer.poll_timeout().is_some_and(|t| t <= now) {
                peer.handle_timeout(now);
            }
        }
    }

    /// The next datagram any peer wants sent, and to which peer.
    pub fn poll_transmit(
        &mut self,
        now: Instant,
        unix_now: UnixTime,
        rng: &mut (impl RngCore + CryptoRng),
        out: &mut [u8],
    ) -> Result<Option<(PeerId, usize)>, EncapsulateError> {
        for peer in self.peers.iter_mut().flatten() {
            if let Some(len) = peer.poll_transmit(now, unix_now, rng, out)? {
                return Ok(Some((peer.id(), len)));
            }
        }
        Ok(None)
    }

    pub fn poll_event(&mut self) -> Option<(PeerId, PeerEvent)> {
        self.peers
            .iter_mut()
            .flatten()
            .find_map(|peer| peer.poll_event().map(|e| (peer.id(), e)))
    }

    /// Everything counted so far: the endpoint's own drops (datagrams no peer could
    /// be blamed for), every peer's counters and those of removed peers.
    pub fn stats(&self) -> TunnelStats {
        let mut total = self.stats;
        for peer in self.peers() {
            total.merge(peer.stats());
        }
        total
    }

    #[allow(clippy::type_complexity)]
    fn dispatch(
        &mut self,
        now: Instant,
        unix_now: UnixTime,
        rng: &mut (impl RngCore + CryptoRng),
        source: SocketAddr,
        datagram: &mut [u8],
        out: &mut [u8],
    ) -> Result<Decapsulated, (Option<u32>, DropReason)> {
        let kind = classify(datagram).map_err(|e| (None, e.into()))?;
        match kind {
            MessageType::Capsule | MessageType::Control => {
                let index = DataPacket::new_checked(&*datagram)
                    .map_err(|e| (None, e.into()))?
                    .receiver_index();
                let (slot, peer) = self.route(index)?;
                peer.receive_data(now, datagram)
                    .map_err(|e| (Some(slot), e))
            }
            MessageType::TunnelResponse => {
                let index = TunnelResponsePacket::new_checked(&*datagram)
                    .map_err(|e| (None, e.into()))?
                    .receiver_index();
                let (slot, peer) = self.route(index)?;
                peer.receive_response(now, unix_now, datagram)
                    .map_err(|e| (Some(slot), e))
            }
            MessageType::CookieReply => {
                let index = CookieReplyPacket::new_checked(&*datagram)
                    .map_err(|e| (None, e.into()))?
                    .receiver_index();
                let (slot, peer) = self.route(index)?;
                peer.receive_cookie_reply(now, unix_now, rng, datagram, out)
                    .map_err(|e| (Some(slot), e))
            }
            MessageType::TunnelRequest => {
                self.receive_request(now, unix_now, rng, source, datagram, out)
            }
            other => Err((None, DropReason::NotTunnel(other))),
        }
    }

    fn route(&mut self, index: u32) -> Result<(u32, &mut Peer), (Option<u32>, DropReason)> {
        let slot = index >> 8;
        match self.peers.get_mut(slot as usize).and_then(Option::as_mut) {
            Some(peer) => Ok((slot, peer)),
            None => Err((None, DropReason::UnknownIndex)),
        }
    }

    fn receive_request(
        &mut self,
        now: Instant,
        unix_now: UnixTime,
        rng: &mut (impl RngCore + CryptoRng),
        source: SocketAddr,
        datagram: &mut [u8],
        out: &mut [u8],
    ) -> Result<Decapsulated, (Option<u32>, DropReason)> {
        let packet = TunnelRequestPacket::new_checked(&*datagram).map_err(|e| (None, e.into()))?;
        let (mac1_at, mac2_at) = (packet.mac1_offset(), packet.mac2_offset());
        if !self.cookies.verify_mac1(datagram, mac1_at) {
            return Err((None, DropReason::Mac1));
        }
        if self.under_load
            && !self
                .cookies
                .verify_mac2(now, rng, source, datagram, mac2_at)
        {
            let sender = packet.sender_index();
            let mut mac1 = [0u8; 16];
            mac1.copy_from_slice(packet.mac1());
            let len = self
                .cookies
                .write_cookie_reply(now, rng, source, sender, &mac1, out)
                .map_err(|e| (None, e.into()))?;
            self.stats.cookie_replies_sent += 1;
            return Ok(Decapsulated::WriteToNetwork { peer: None, len });
        }
        let identity = self.identity.clone();
        let partial = PartialRequest::open(&identity, datagram).map_err(|e| (None, e.into()))?;
        let slot = *self
            .by_key
            .get(partial.initiator_static())
            .ok_or((None, DropReason::UnknownPeer))?;
        let request = partial
            .finish(&identity, datagram)
            .map_err(|e| (Some(slot), e.into()))?;
        let peer = self
            .peers
            .get_mut(slot as usize)
            .and_then(Option::as_mut)
            .ok_or((None, DropReason::UnknownPeer))?;
        let len = peer
            .accept_request(now, unix_now, rng, request, out)
            .map_err(|e| (Some(slot), e))?;
        Ok(Decapsulated::WriteToNetwork {
            peer: Some(PeerId(slot)),
            len,
        })
    }
}
