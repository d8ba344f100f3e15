//! Credentials: the cloud's signed statement of who a node is.
//!
//! The AS issues one after login: it binds a random [`NodeId`], the node's FQDN, its
//! virtual IPv4 and IPv6 addresses and its static X25519 public key for a short validity
//! window, signed with the cloud's Ed25519 key. Nodes present credentials to each other
//! in the tunnel handshake and to the NMS and TRS; everyone verifies them against the
//! pinned cloud public key with the current wall-clock time.
//!
//! Layout (all integers big-endian), total `CREDENTIAL_FIXED_LEN + name length`:
//!
//! ```text
//!  0  format version (1)         1 byte
//!  1  cloud key id               8 bytes  first 8 bytes of SHA-256(cloud public key)
//!  9  node id                   16 bytes
//! 25  not before (unix seconds)  8 bytes
//! 33  not after (unix seconds)   8 bytes
//! 41  static X25519 public key  32 bytes
//! 73  virtual IPv4               4 bytes
//! 77  virtual IPv6              16 bytes
//! 93  FQDN                       1 length byte + name
//!  .. Ed25519 signature         64 bytes over "cyphonic credential v1\0" || bytes 0..sig
//! ```

use std::net::{Ipv4Addr, Ipv6Addr};

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

use crate::time::UnixTime;
use crate::wire::{Fqdn, NodeId, Reader, WireError, Writer};

pub const CREDENTIAL_FORMAT: u8 = 1;
pub const SIGNATURE_LEN: usize = 64;
/// Bytes of a signed credential apart from the name itself (the name's length byte is
/// counted here).
pub const CREDENTIAL_FIXED_LEN: usize = 1 + 8 + 16 + 8 + 8 + 32 + 4 + 16 + 1 + SIGNATURE_LEN;
/// How far a peer's clock may run ahead of ours before its fresh credential looks
/// "not yet valid".
pub const CLOCK_SKEW_SECS: u64 = 120;

const SIGNING_CONTEXT: &[u8] = b"cyphonic credential v1\0";

/// Identifies a cloud signing key: the first 8 bytes of SHA-256 of its public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct CloudKeyId(pub [u8; 8]);

impl CloudKeyId {
    pub fn of(key: &VerifyingKey) -> Self {
        let digest = Sha256::digest(key.as_bytes());
        let mut id = [0u8; 8];
        id.copy_from_slice(&digest[..8]);
        Self(id)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    #[error("malformed credential: {0}")]
    Malformed(#[from] WireError),
    #[error("unsupported credential format {0}")]
    UnknownFormat(u8),
    #[error("credential signed by an unknown cloud key")]
    UnknownCloudKey,
    #[error("credential signature is invalid")]
    BadSignature,
    #[error("credential is not valid before {0:?}")]
    NotYetValid(UnixTime),
    #[error("credential expired at {0:?}")]
    Expired(UnixTime),
    #[error("credential is for another static key")]
    KeyMismatch,
}

/// What a credential states.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    pub cloud_key_id: CloudKeyId,
    pub node_id: NodeId,
    pub not_before: UnixTime,
    pub not_after: UnixTime,
    pub static_public: [u8; 32],
    pub vip4: Ipv4Addr,
    pub vip6: Ipv6Addr,
    pub fqdn: Fqdn,
}

/// A credential with its signature, as it travels. Keeps the exact signed bytes so it
/// can be forwarded (NMS -> peer) without re-encoding.
#[derive(Clone, PartialEq, Eq)]
pub struct SignedCredential {
    credential: Credential,
    bytes: Vec<u8>,
}

impl std::fmt::Debug for SignedCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignedCredential")
            .field("credential", &self.credential)
            .finish_non_exhaustive()
    }
}

impl Credential {
    /// Bytes of the signed encoding of this credential.
    pub fn signed_len(&self) -> usize {
        CREDENTIAL_FIXED_LEN + self.fqdn.as_str().len()
    }

    /// Signs with the cloud key. Only the AS calls this.
    pub fn sign(self, cloud_key: &SigningKey) -> SignedCredential {
        let mut bytes = vec![0u8; self.signed_len()];
        let body_len = bytes.len() - SIGNATURE_LEN;
        let mut w = Writer::new(&mut bytes);
        // The buffer was sized from `signed_len`, so these writes cannot run out of room.
        let body = (|| -> Result<(), WireError> {
            w.u8(CREDENTIAL_FORMAT)?;
            w.bytes(&self.cloud_key_id.0)?;
            w.node_id(&self.node_id)?;
            w.u64(self.not_before.0)?;
            w.u64(self.not_after.0)?;
            w.bytes(&self.static_public)?;
            w.bytes(&self.vip4.octets())?;
            w.bytes(&self.vip6.octets())?;
            w.fqdn(&self.fqdn)
        })();
        debug_assert!(body.is_ok());
        let signature = cloud_key.sign(&signing_input(&bytes[..body_len]));
        bytes[body_len..].copy_from_slice(&signature.to_bytes());
        SignedCredential {
            credential: self,
            bytes,
        }
    }
}

fn signing_input(body: &[u8]) -> Vec<u8> {
    let mut input = Vec::with_capacity(SIGNING_CONTEXT.len() + body.len());
    input.extend_from_slice(SIGNING_CONTEXT);
    input.extend_from_slice(body);
    input
}

impl SignedCredential {
    /// Parses the encoding without checking the signature; call [`Self::verify`] before
    /// trusting anything in it.
    pub fn parse(bytes: &[u8]) -> Result<Self, CredentialError> {
        let mut r = Reader::new(bytes);
        let format = r.u8()?;
        if format != CREDENTIAL_FORMAT {
            return Err(CredentialError::UnknownFormat(format));
        }
        let credential = Credential {
            cloud_key_id: CloudKeyId(r.array()?),
            node_id: r.node_id()?,
            not_before: UnixTime(r.u64()?),
            not_after: UnixTime(r.u64()?),
            static_public: r.array()?,
            vip4: r.ipv4()?,
            vip6: r.ipv6()?,
            fqdn: r.fqdn()?,
        };
        r.bytes(SIGNATURE_LEN)?;
        r.finish()?;
        Ok(Self {
            credential,
            bytes: bytes.to_vec(),
        })
    }

    /// Reads one credential from the front of a longer message (it is self-delimiting).
    pub fn read(r: &mut Reader<'_>) -> Result<Self, CredentialError> {
        // The name length sits at a fixed offset; everything else is fixed size.
        let start = r.clone();
        let mut peek = start.clone();
        peek.bytes(CREDENTIAL_FIXED_LEN - 1 - SIGNATURE_LEN)?;
        let name_len = usize::from(peek.u8()?);
        let total = CREDENTIAL_FIXED_LEN + name_len;
        let bytes = r.bytes(total)?;
        Self::parse(bytes)
    }

    pub fn credential(&self) -> &Credential {
        &self.credential
    }

    /// The exact signed bytes, for embedding in messages.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Checks the signature against the trusted cloud keys and the validity window
    /// against `now`. Returns the statement only when all of it holds.
    pub fn verify(
        &self,
        trusted: &[VerifyingKey],
        now: UnixTime,
    ) -> Result<&Credential, CredentialError> {
        let key = trusted
            .iter()
            .find(|k| CloudKeyId::of(k) == self.credential.cloud_key_id)
            .ok_or(CredentialError::UnknownCloudKey)?;
        let body_len = self.bytes.len() - SIGNATURE_LEN;
        let signature_bytes: [u8; SIGNATURE_LEN] = self.bytes[body_len..]
            .try_into()
            .map_err(|_| CredentialError::BadSignature)?;
        let signature = Signature::from_bytes(&signature_bytes);
        key.verify_strict(&signing_input(&self.bytes[..body_len]), &signature)
            .map_err(|_| CredentialError::BadSignature)?;
        let c = &self.credential;
        if now.0.saturating_add(CLOCK_SKEW_SECS) < c.not_before.0 {
            return Err(CredentialError::NotYetValid(c.not_before));
        }
        if now.0 > c.not_after.0 {
            return Err(CredentialError::Expired(c.not_after));
        }
        Ok(c)
    }

    /// [`Self::verify`], plus a check that the credential is for `static_public` (the
    /// key the peer just proved it holds in a handshake).
    pub fn verify_for_key(
        &self,
        trusted: &[VerifyingKey],
        now: UnixTime,
        static_public: &[u8; 32],
    ) -> Result<&Credential, CredentialError> {
        let c = self.verify(trusted, now)?;
        if !bool::from(subtle::ConstantTimeEq::ct_eq(
            &c.static_public[..],
            &static_public[..],
        )) {
            return Err(CredentialError::KeyMismatch);
        }
        Ok(c)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    pub(crate) fn sample(cloud: &SigningKey, name: &str, static_public: [u8; 32]) -> Credential {
        let mut rng = ChaCha20Rng::seed_from_u64(name.len() as u64);
        Credential {
            cloud_key_id: CloudKeyId::of(&cloud.verifying_key()),
            node_id: NodeId::random(&mut rng),
            not_before: UnixTime(1_000),
            not_after: UnixTime(2_000),
            static_public,
            vip4: Ipv4Addr::new(100, 64, 0, 7),
            vip6: "fd00::7".parse().unwrap(),
            fqdn: Fqdn::new(name).unwrap(),
        }
    }

    #[test]
    fn sign_parse_verify() {
        let cloud = SigningKey::from_bytes(&[1; 32]);
        let signed = sample(&cloud, "laptop.alice.cyphonic", [9; 32]).sign(&cloud);
        let parsed = SignedCredential::parse(signed.as_bytes()).unwrap();
        assert_eq!(parsed, signed);
        let trusted = [cloud.verifying_key()];
        assert!(parsed.verify(&trusted, UnixTime(1_500)).is_ok());
        assert_eq!(
            parsed.verify(&trusted, UnixTime(2_001)),
            Err(CredentialError::Expired(UnixTime(2_000)))
        );
        assert!(matches!(
            parsed.verify(&trusted, UnixTime(10)),
            Err(CredentialError::NotYetValid(_))
        ));
        assert_eq!(
            parsed.verify_for_key(&trusted, UnixTime(1_500), &[8; 32]),
            Err(CredentialError::KeyMismatch)
        );
        let other = SigningKey::from_bytes(&[2; 32]);
        assert_eq!(
            parsed.verify(&[other.verifying_key()], UnixTime(1_500)),
            Err(CredentialError::UnknownCloudKey)
        );
    }

    #[test]
    fn any_flipped_bit_breaks_the_signature() {
        let cloud = SigningKey::from_bytes(&[1; 32]);
        let signed = sample(&cloud, "a.cyphonic", [9; 32]).sign(&cloud);
        let trusted = [cloud.verifying_key()];
        for i in 9..signed.as_bytes().len() {
            let mut bytes = signed.as_bytes().to_vec();
            bytes[i] ^= 0x01;
            if let Ok(c) = SignedCredential::parse(&bytes) {
                assert!(c.verify(&trusted, UnixTime(1_500)).is_err(), "byte {i}");
            }
        }
    }

    #[test]
    fn read_from_longer_message() {
        let cloud = SigningKey::from_bytes(&[1; 32]);
        let signed = sample(&cloud, "b.cyphonic", [9; 32]).sign(&cloud);
        let mut msg = signed.as_bytes().to_vec();
        msg.extend_from_slice(b"tail");
        let mut r = Reader::new(&msg);
        assert_eq!(SignedCredential::read(&mut r).unwrap(), signed);
        assert_eq!(r.rest(), b"tail");
    }
}
