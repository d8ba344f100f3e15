//! The AES-256-GCM crypto suite (suite 1, the default), on RustCrypto `aes-gcm`.
//!
//! `aes` and `polyval` pick AES-NI and CLMUL (or ARMv8 AES and PMULL) at run time, so
//! one build runs fast on modern CPUs and correctly, in constant time, on old ones.

use aes_gcm::Aes256Gcm;
use aes_gcm::aead::{AeadInPlace, KeyInit};
use cyphonic_plugin_abi::{CryptoInfo, CryptoSuite, PluginFailure, SUITE_AES_256_GCM};
use std::fmt;

pub const KEY_LEN: usize = 32;
pub const NONCE_LEN: usize = 12;
pub const TAG_LEN: usize = 16;

/// A key's hard limit, at a 2^-57 confidentiality margin: AES-GCM leaks after about
/// 2^36 key-stream blocks in total, and a data packet is at most ~9 KB (2^9.2 blocks).
/// The host rekeys long before (by time as well).
pub const MAX_MESSAGES_PER_KEY: u64 = 1 << 26;

/// The AES-256-GCM suite, for the plugin ABI.
#[derive(Debug, Clone, Copy, Default)]
pub struct AesGcm;

impl CryptoSuite for AesGcm {
    type Key = AesGcmKey;

    const INFO: CryptoInfo = CryptoInfo::new(
        SUITE_AES_256_GCM,
        KEY_LEN as u32,
        TAG_LEN as u32,
        MAX_MESSAGES_PER_KEY,
    );

    fn key_new(key: &[u8]) -> Result<AesGcmKey, PluginFailure> {
        Ok(AesGcmKey::new(key)?)
    }

    fn seal(
        key: &AesGcmKey,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        buf: &mut [u8],
        plaintext_len: usize,
    ) -> Result<usize, PluginFailure> {
        Ok(key.seal(nonce, aad, buf, plaintext_len)?)
    }

    fn open(
        key: &AesGcmKey,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        buf: &mut [u8],
    ) -> Result<usize, PluginFailure> {
        Ok(key.open(nonce, aad, buf)?)
    }
}

cyphonic_plugin_abi::crypto_suite_plugin!(
    name: "aes-gcm",
    version: env!("CARGO_PKG_VERSION"),
    suite: AesGcm,
);

/// A key of this suite (the expanded AES key schedule and the GHASH key). Immutable
/// after creation, so it can seal and open from several threads at once. The AES round
/// keys are zeroized on drop; the GHASH key is not (`polyval`'s run-time dispatching
/// backend has no zeroizing `Drop`).
pub struct AesGcmKey {
    cipher: Aes256Gcm,
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
    #[error("message or associated data too long for AES-GCM")]
    MessageTooLong,
    #[error("authentication failed")]
    AuthenticationFailed,
}

impl From<Error> for PluginFailure {
    fn from(err: Error) -> Self {
        match err {
            // Attackers can trigger this one at line rate: no allocation.
            Error::AuthenticationFailed => PluginFailure::auth_failed(),
            Error::BufferTooSmall { .. } => PluginFailure::buffer_too_small(err.to_string()),
            Error::InvalidKeyLength(_) | Error::InvalidLength { .. } | Error::MessageTooLong => {
                PluginFailure::invalid_argument(err.to_string())
            }
        }
    }
}

impl AesGcmKey {
    pub fn new(key: &[u8]) -> Result<Self, Error> {
        let cipher =
            Aes256Gcm::new_from_slice(key).map_err(|_| Error::InvalidKeyLength(key.len()))?;
        Ok(Self { cipher })
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
        let tag = self
            .cipher
            .encrypt_in_place_detached(nonce.into(), aad, data)
            .map_err(|_| Error::MessageTooLong)?;
        rest[..TAG_LEN].copy_from_slice(&tag);
        Ok(sealed_len)
    }

    /// Verifies and decrypts `buf` (ciphertext followed by the tag) in place; returns
    /// the plaintext length. A buffer shorter than a tag is an authentication failure.
    /// The tag is checked before decryption, so on failure the buffer is unchanged.
    pub fn open(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        buf: &mut [u8],
    ) -> Result<usize, Error> {
        let plaintext_len = buf
            .len()
            .checked_sub(TAG_LEN)
            .ok_or(Error::AuthenticationFailed)?;
        let (data, tag) = buf.split_at_mut(plaintext_len);
        self.cipher
            .decrypt_in_place_detached(nonce.into(), aad, data, (&*tag).into())
            .map_err(|_| Error::AuthenticationFailed)?;
        Ok(plaintext_len)
    }
}

impl fmt::Debug for AesGcmKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print key material.
        f.write_str("AesGcmKey(..)")
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
