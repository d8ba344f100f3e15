//! The `ring`-backed AEAD key that the AES-256-GCM and ChaCha20-Poly1305 suites share:
//! key expansion with its length check, seal and open in place with the tag after the
//! data, the [`Error`]s and their mapping to [`PluginFailure`], and wiping the key on
//! drop. A suite crate adds only its algorithm (a [`RingAlgorithm`] marker), its
//! limits and its `CryptoSuite` export.
//!
//! Only 256-bit keys, 96-bit nonces and 128-bit tags: the suites' known-answer tests
//! pin those lengths for each algorithm.

use cyphonic_plugin_abi::{PluginFailure, WipeOnDrop};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey};
use std::fmt;
use std::marker::PhantomData;

pub const KEY_LEN: usize = 32;
pub const NONCE_LEN: usize = 12;
pub const TAG_LEN: usize = 16;

/// A `ring` AEAD algorithm, named by a suite's marker type so that the key types of two
/// suites cannot be mixed up.
pub trait RingAlgorithm: 'static {
    /// The algorithm, with a [`KEY_LEN`]-byte key and a [`TAG_LEN`]-byte tag.
    const ALGORITHM: &'static ring::aead::Algorithm;
    /// The name used in errors and `Debug` output, e.g. `"AES-256-GCM"`.
    const NAME: &'static str;
}

/// A key of the algorithm `A`. Immutable after creation, so it can seal and open from
/// several threads at once. `ring` does not wipe its keys, so this type zeroes the
/// whole `ring` key (for AES-GCM the round keys and the GHASH table) in place on drop;
/// temporaries of the key expansion and copies left behind by moves before the key
/// reached its final place are not reached.
pub struct RingAeadKey<A> {
    cipher: WipeOnDrop<LessSafeKey>,
    // `fn() -> A`: the marker is only a name, it must not affect `Send`/`Sync`.
    algorithm: PhantomData<fn() -> A>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("key must be {KEY_LEN} bytes, got {0}")]
    InvalidKeyLength(usize),
    #[error("plaintext length {plaintext_len} exceeds the {buf_len}-byte buffer")]
    InvalidLength {
        plaintext_len: usize,
        buf_len: usize,
    },
    #[error("buffer of {available} bytes cannot hold the {needed}-byte sealed message")]
    BufferTooSmall { needed: usize, available: usize },
    /// The algorithm's name rides along for the message.
    #[error("message or associated data too long for {0}")]
    MessageTooLong(&'static str),
    #[error("authentication failed")]
    AuthenticationFailed,
}

impl From<Error> for PluginFailure {
    fn from(err: Error) -> Self {
        match err {
            // Attackers can trigger this one at line rate: no allocation.
            Error::AuthenticationFailed => PluginFailure::auth_failed(),
            Error::BufferTooSmall { .. } => PluginFailure::buffer_too_small(err.to_string()),
            Error::InvalidKeyLength(_) | Error::InvalidLength { .. } | Error::MessageTooLong(_) => {
                PluginFailure::invalid_argument(err.to_string())
            }
        }
    }
}

impl<A: RingAlgorithm> RingAeadKey<A> {
    pub fn new(key: &[u8]) -> Result<Self, Error> {
        // `ring` refuses only a key of the wrong length.
        let cipher =
            UnboundKey::new(A::ALGORITHM, key).map_err(|_| Error::InvalidKeyLength(key.len()))?;
        Ok(Self {
            cipher: WipeOnDrop::new(LessSafeKey::new(cipher)),
            algorithm: PhantomData,
        })
    }

    /// Encrypts `buf[..plaintext_len]` in place and writes the tag after it; returns the
    /// sealed length `plaintext_len + TAG_LEN`.
    pub fn seal(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        buf: &mut [u8],
        plaintext_len: usize,
    ) -> Result<usize, Error> {
        let sealed_len = sealed_len(buf.len(), plaintext_len)?;
        let (data, rest) = buf.split_at_mut(plaintext_len);
        // `ring` fails a seal only for inputs past the algorithm's limit (GCM: 2^36
        // bytes; ChaCha20: its 32-bit block counter, 256 GiB).
        let tag = self
            .cipher
            .get()
            .seal_in_place_separate_tag(Nonce::assume_unique_for_key(*nonce), Aad::from(aad), data)
            .map_err(|_| Error::MessageTooLong(A::NAME))?;
        rest[..TAG_LEN].copy_from_slice(tag.as_ref());
        Ok(sealed_len)
    }

    /// Verifies and decrypts `buf` (ciphertext followed by the tag) in place; returns
    /// the plaintext length. A buffer shorter than a tag is an authentication failure.
    /// `ring` decrypts and authenticates in one pass, so on failure it zeroes the
    /// ciphertext part of the buffer (no unauthenticated plaintext is left); the tag
    /// bytes stay as they were.
    pub fn open(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        buf: &mut [u8],
    ) -> Result<usize, Error> {
        // `ring` also refuses a buffer shorter than a tag.
        let plaintext = self
            .cipher
            .get()
            .open_in_place(Nonce::assume_unique_for_key(*nonce), Aad::from(aad), buf)
            .map_err(|_| Error::AuthenticationFailed)?;
        Ok(plaintext.len())
    }
}

impl<A: RingAlgorithm> fmt::Debug for RingAeadKey<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print key material.
        write!(f, "RingAeadKey({}, ..)", A::NAME)
    }
}

/// Checks the seal lengths: a `plaintext_len` past the buffer is a caller bug, a buffer
/// without room for the tag is the caller's sizing problem.
fn sealed_len(buf_len: usize, plaintext_len: usize) -> Result<usize, Error> {
    if plaintext_len > buf_len {
        return Err(Error::InvalidLength {
            plaintext_len,
            buf_len,
        });
    }
    let needed = plaintext_len + TAG_LEN;
    if needed > buf_len {
        return Err(Error::BufferTooSmall {
            needed,
            available: buf_len,
        });
    }
    Ok(needed)
}
