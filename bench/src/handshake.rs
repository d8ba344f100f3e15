//! Two tunnel endpoints in memory that run complete node-to-node handshakes through the
//! public `proto::tunnel` API, as a node does: initiator request -> responder (credential
//! check, response) -> initiator (credential check, session). No network, no loss.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use cyphonic_proto::credential::{CloudKeyId, Credential};
use cyphonic_proto::suite::software::SoftwareSuites;
use cyphonic_proto::time::UnixTime;
use cyphonic_proto::tunnel::handshake::LocalIdentity;
use cyphonic_proto::tunnel::{Decapsulated, Endpoint, PeerId, TunnelConfig};
use cyphonic_proto::wire::handshake::MAX_HANDSHAKE_LEN;
use cyphonic_proto::wire::{Fqdn, NodeId};
use ed25519_dalek::SigningKey;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use x25519_dalek::{PublicKey, StaticSecret};

const UNIX_NOW: u64 = 1_800_000_000;

#[derive(Debug, thiserror::Error)]
pub enum HandshakeBenchError {
    #[error("set-up failed: {0}")]
    Setup(String),
    #[error("handshake step failed: {0}")]
    Step(String),
}

/// An initiator and a responder that know each other's credentials.
pub struct HandshakePair {
    initiator: Endpoint,
    responder: Endpoint,
    initiator_peer: PeerId,
    initiator_addr: SocketAddr,
    responder_addr: SocketAddr,
    rng: ChaCha20Rng,
    now: Instant,
    request: Vec<u8>,
    response: Vec<u8>,
}

impl std::fmt::Debug for HandshakePair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HandshakePair").finish_non_exhaustive()
    }
}

impl HandshakePair {
    pub fn new() -> Result<Self, HandshakeBenchError> {
        let cloud = SigningKey::from_bytes(&[0x11; 32]);
        let unix = UnixTime(UNIX_NOW);
        let (initiator_identity, initiator_credential) =
            identity(&cloud, 0x21, "a.bench.cyphonic")?;
        let (responder_identity, responder_credential) =
            identity(&cloud, 0x22, "b.bench.cyphonic")?;
        let mut initiator = Endpoint::new(TunnelConfig::default(), initiator_identity);
        let mut responder = Endpoint::new(TunnelConfig::default(), responder_identity);
        let initiator_peer = initiator
            .add_peer(responder_credential, unix)
            .map_err(|e| HandshakeBenchError::Setup(e.to_string()))?;
        responder
            .add_peer(initiator_credential, unix)
            .map_err(|e| HandshakeBenchError::Setup(e.to_string()))?;
        Ok(Self {
            initiator,
            responder,
            initiator_peer,
            initiator_addr: "192.0.2.1:4500".parse().expect("literal address"),
            responder_addr: "198.51.100.1:4500".parse().expect("literal address"),
            rng: ChaCha20Rng::seed_from_u64(7),
            now: Instant::now(),
            request: vec![0u8; MAX_HANDSHAKE_LEN],
            response: vec![0u8; MAX_HANDSHAKE_LEN],
        })
    }

    /// One complete handshake: request, response, established on both sides.
    pub fn handshake(&mut self) -> Result<(), HandshakeBenchError> {
        let unix = UnixTime(UNIX_NOW);
        let step = |e: &dyn std::fmt::Display| HandshakeBenchError::Step(e.to_string());
        let len = self
            .initiator
            .peer_mut(self.initiator_peer)
            .ok_or_else(|| HandshakeBenchError::Step("initiator lost its peer".into()))?
            .initiate_handshake(self.now, unix, &mut self.rng, &mut self.request)
            .map_err(|e| step(&e))?;
        let answer = self
            .responder
            .decapsulate(
                self.now,
                unix,
                &mut self.rng,
                self.initiator_addr,
                &mut self.request[..len],
                &mut self.response,
            )
            .map_err(|e| step(&e))?;
        let Decapsulated::WriteToNetwork { len, .. } = answer else {
            return Err(HandshakeBenchError::Step(format!(
                "responder did not answer: {answer:?}"
            )));
        };
        let done = self
            .initiator
            .decapsulate(
                self.now,
                unix,
                &mut self.rng,
                self.responder_addr,
                &mut self.response[..len],
                &mut self.request,
            )
            .map_err(|e| step(&e))?;
        match done {
            Decapsulated::Established { .. } => Ok(()),
            other => Err(HandshakeBenchError::Step(format!(
                "initiator did not establish: {other:?}"
            ))),
        }
    }
}

fn identity(
    cloud: &SigningKey,
    seed: u8,
    name: &str,
) -> Result<(LocalIdentity, cyphonic_proto::credential::SignedCredential), HandshakeBenchError> {
    let secret = StaticSecret::from([seed; 32]);
    let credential = Credential {
        cloud_key_id: CloudKeyId::of(&cloud.verifying_key()),
        node_id: NodeId([seed; 16]),
        not_before: UnixTime(UNIX_NOW - 60),
        not_after: UnixTime(UNIX_NOW + 3_600),
        static_public: PublicKey::from(&secret).to_bytes(),
        vip4: std::net::Ipv4Addr::new(100, 64, 0, seed),
        vip6: std::net::Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, u16::from(seed)),
        fqdn: Fqdn::new(name).map_err(|e| HandshakeBenchError::Setup(e.to_string()))?,
    }
    .sign(cloud);
    let identity = LocalIdentity::new(
        secret,
        credential.clone(),
        vec![cloud.verifying_key()],
        Arc::new(SoftwareSuites),
    )
    .map_err(|e| HandshakeBenchError::Setup(e.to_string()))?;
    Ok((identity, credential))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshakes_complete_repeatedly() {
        let mut pair = HandshakePair::new().unwrap();
        for _ in 0..5 {
            pair.handshake().unwrap();
        }
    }
}
