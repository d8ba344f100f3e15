//! The AEAD the data path seals with, as the protocol core sees it.
//!
//! The protocol decides *what* is sealed (header as associated data, nonce from the
//! packet counter); a crypto-suite plugin decides *how*. The host adapts its loaded
//! plugins to [`AeadKey`]; tests and the cloud use the software implementations in
//! [`software`].

use std::fmt;

/// Every suite in this protocol uses 256-bit keys, 96-bit nonces and 128-bit tags.
pub const KEY_LEN: usize = 32;
pub const NONCE_LEN: usize = 12;
pub const TAG_LEN: usize = 16;

/// The registered number of a crypto suite, as negotiated in the handshake.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SuiteId(pub u16);

impl SuiteId {
    pub const AES_256_GCM: SuiteId = SuiteId(1);
    pub const CHACHA20_POLY1305: SuiteId = SuiteId(2);
    pub const AES_256_CTR_HMAC_SHA256: SuiteId = SuiteId(3);

    pub fn name(self) -> &'static str {
        match self {
            Self::AES_256_GCM => "aes-256-gcm",
            Self::CHACHA20_POLY1305 => "chacha20-poly1305",
            Self::AES_256_CTR_HMAC_SHA256 => "aes-256-ctr-hmac-sha256",
            _ => "unknown",
        }
    }
}

impl fmt::Debug for SuiteId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SuiteId({}: {})", self.0, self.name())
    }
}

impl fmt::Display for SuiteId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The nonce for a packet counter: four zero bytes, then the counter big-endian.
/// Counters never repeat under one key (see `tunnel::session`), so nonces never do.
pub fn nonce_for_counter(counter: u64) -> [u8; NONCE_LEN] {
    let mut nonce = [0u8; NONCE_LEN];
    nonce[4..].copy_from_slice(&counter.to_be_bytes());
    nonce
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SuiteError {
    #[error("authentication failed")]
    AuthenticationFailed,
    #[error("buffer too small for the sealed message")]
    BufferTooSmall,
    #[error("suite {0:?} is not available")]
    Unsupported(SuiteId),
    #[error("crypto plugin failed: {0}")]
    Plugin(String),
}

/// A data key of one suite and one direction. Immutable once made, usable from several
/// threads at once.
pub trait AeadKey: Send + Sync + fmt::Debug {
    fn suite(&self) -> SuiteId;

    /// Seals `buf[..plaintext_len]` in place and appends the tag; returns the sealed
    /// length (`plaintext_len + TAG_LEN`).
    fn seal_in_place(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        buf: &mut [u8],
        plaintext_len: usize,
    ) -> Result<usize, SuiteError>;

    /// Opens `buf` (ciphertext followed by the tag) in place; returns the plaintext
    /// length. On failure the buffer content is unspecified.
    fn open_in_place(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        buf: &mut [u8],
    ) -> Result<usize, SuiteError>;
}

/// Makes keys for the suites a node has loaded.
pub trait SuiteProvider: fmt::Debug {
    /// The suites this provider can make keys for, most preferred first.
    fn suites(&self) -> Vec<SuiteId>;

    fn new_key(
        &self,
        suite: SuiteId,
        key: &[u8; KEY_LEN],
    ) -> Result<std::sync::Arc<dyn AeadKey>, SuiteError>;
}

/// RustCrypto implementations of the two AEAD suites, for the cloud, tests and fuzzing.
/// Nodes seal data with their crypto plugins instead.
pub mod software {
    use super::*;
    use aes_gcm::Aes256Gcm;
    use aes_gcm::aead::{AeadInPlace, KeyInit};
    use chacha20poly1305::ChaCha20Poly1305;
    use std::sync::Arc;

    #[derive(Debug, Default, Clone)]
    pub struct SoftwareSuites;

    impl SuiteProvider for SoftwareSuites {
        fn suites(&self) -> Vec<SuiteId> {
            vec![SuiteId::AES_256_GCM, SuiteId::CHACHA20_POLY1305]
        }

        fn new_key(
            &self,
            suite: SuiteId,
            key: &[u8; KEY_LEN],
        ) -> Result<Arc<dyn AeadKey>, SuiteError> {
            match suite {
                SuiteId::AES_256_GCM => Ok(Arc::new(SoftwareKey {
                    suite,
                    cipher: Cipher::AesGcm(Box::new(Aes256Gcm::new(key.into()))),
                })),
                SuiteId::CHACHA20_POLY1305 => Ok(Arc::new(SoftwareKey {
                    suite,
                    cipher: Cipher::ChaCha(Box::new(ChaCha20Poly1305::new(key.into()))),
                })),
                other => Err(SuiteError::Unsupported(other)),
            }
        }
    }

    enum Cipher {
        AesGcm(Box<Aes256Gcm>),
        ChaCha(Box<ChaCha20Poly1305>),
    }

    pub struct SoftwareKey {
        suite: SuiteId,
        cipher: Cipher,
    }

    impl fmt::Debug for SoftwareKey {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            // Never print key material.
            write!(f, "SoftwareKey({})", self.suite)
        }
    }

    impl AeadKey for SoftwareKey {
        fn suite(&self) -> SuiteId {
            self.suite
        }

        fn seal_in_place(
            &self,
            nonce: &[u8; NONCE_LEN],
            aad: &[u8],
            buf: &mut [u8],
            plaintext_len: usize,
        ) -> Result<usize, SuiteError> {
            let sealed_len = plaintext_len + TAG_LEN;
            if buf.len() < sealed_len {
                return Err(SuiteError::BufferTooSmall);
            }
            let (plain, rest) = buf.split_at_mut(plaintext_len);
            let tag = match &self.cipher {
                Cipher::AesGcm(c) => c.encrypt_in_place_detached(nonce.into(), aad, plain),
                Cipher::ChaCha(c) => c.encrypt_in_place_detached(nonce.into(), aad, plain),
            }
            .map_err(|_| SuiteError::BufferTooSmall)?;
            rest[..TAG_LEN].copy_from_slice(&tag);
            Ok(sealed_len)
        }

        fn open_in_place(
            &self,
            nonce: &[u8; NONCE_LEN],
            aad: &[u8],
            buf: &mut [u8],
        ) -> Result<usize, SuiteError> {
            let plain_len = buf
                .len()
                .checked_sub(TAG_LEN)
                .ok_or(SuiteError::AuthenticationFailed)?;
            let (cipher_text, tag) = buf.split_at_mut(plain_len);
            let tag = aes_gcm::Tag::from_slice(tag);
            match &self.cipher {
                Cipher::AesGcm(c) => {
                    c.decrypt_in_place_detached(nonce.into(), aad, cipher_text, tag)
                }
                Cipher::ChaCha(c) => {
                    c.decrypt_in_place_detached(nonce.into(), aad, cipher_text, tag)
                }
            }
            .map_err(|_| SuiteError::AuthenticationFailed)?;
            Ok(plain_len)
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn seal_open_round_trip_and_tamper() {
            for suite in SoftwareSuites.suites() {
                let key = SoftwareSuites.new_key(suite, &[7; KEY_LEN]).unwrap();
                let nonce = nonce_for_counter(5);
                let mut buf = [0u8; 64];
                buf[..10].copy_from_slice(b"0123456789");
                let n = key.seal_in_place(&nonce, b"hdr", &mut buf, 10).unwrap();
                assert_eq!(n, 26);
                let mut tampered = buf;
                tampered[3] ^= 1;
                assert!(
                    key.open_in_place(&nonce, b"hdr", &mut tampered[..n])
                        .is_err()
                );
                let mut wrong_aad = buf;
                assert!(
                    key.open_in_place(&nonce, b"hdx", &mut wrong_aad[..n])
                        .is_err()
                );
                let m = key.open_in_place(&nonce, b"hdr", &mut buf[..n]).unwrap();
                assert_eq!(&buf[..m], b"0123456789");
            }
        }
    }
}
