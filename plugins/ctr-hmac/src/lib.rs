//! The AES-256-CTR + HMAC-SHA256 crypto suite (suite 3): encrypt-then-MAC, the
//! construction the CYPHONIC paper uses for its per-packet HMAC, for peers that want a
//! conventional hash MAC instead of a polynomial one.
//!
//! Construction (this is a wire format: the fixed vector in `tests/kat.rs` pins it):
//! - Key schedule: the 32-byte suite key is the IKM of HKDF-SHA256 with no salt;
//!   `expand(info = "cyphonic ctr-hmac-sha256 v1 enc", 32)` is the AES-256 key and
//!   `expand(info = "cyphonic ctr-hmac-sha256 v1 mac", 32)` the HMAC-SHA256 key, so the
//!   cipher and the MAC never share a key.
//! - Encryption: AES-256-CTR with the counter block `nonce (12 bytes) || block counter
//!   (u32 big-endian)`, the counter starting at 1 as in GCM. The counter only ever moves
//!   the low 32 bits and a message that would wrap it is refused, so the key streams of
//!   two different nonces never overlap.
//! - Tag: the first 16 bytes of `HMAC-SHA256(mac_key, nonce || aad || ciphertext ||
//!   len(aad) as u64 BE || len(ciphertext) as u64 BE)`. The nonce is authenticated
//!   (as the IV is in RFC 7518's AES-CBC-HMAC-SHA2): otherwise a packet opened under
//!   another nonce would verify and decrypt to garbage. The lengths make the split
//!   between AAD and ciphertext unambiguous. Opening verifies the tag in constant time
//!   before it decrypts anything.

use aes::Aes256Enc;
use aes::cipher::{InnerIvInit, StreamCipher};
use cyphonic_plugin_abi::{CryptoInfo, CryptoSuite, PluginFailure, SUITE_AES_256_CTR_HMAC_SHA256};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::fmt;
use zeroize::Zeroizing;

pub const KEY_LEN: usize = 32;
pub const NONCE_LEN: usize = 12;
pub const TAG_LEN: usize = 16;
/// HKDF `info` labels of the two derived keys.
pub const ENC_KEY_INFO: &[u8] = b"cyphonic ctr-hmac-sha256 v1 enc";
pub const MAC_KEY_INFO: &[u8] = b"cyphonic ctr-hmac-sha256 v1 mac";
/// The block counter of the first key-stream block for each nonce.
pub const FIRST_BLOCK_COUNTER: u32 = 1;

/// A key's hard limit, at a 2^-57 confidentiality margin: AES-CTR leaks after about 2^36
/// key-stream blocks in total, and a data packet is at most ~9 KB (2^9.2 blocks). The
/// 128-bit truncated HMAC tag sets no tighter bound.
pub const MAX_MESSAGES_PER_KEY: u64 = 1 << 26;

/// The AES-256-CTR + HMAC-SHA256 suite, for the plugin ABI.
#[derive(Debug, Clone, Copy, Default)]
pub struct CtrHmac;

impl CryptoSuite for CtrHmac {
    type Key = CtrHmacKey;

    const INFO: CryptoInfo = CryptoInfo::new(
        SUITE_AES_256_CTR_HMAC_SHA256,
        KEY_LEN as u32,
        TAG_LEN as u32,
        MAX_MESSAGES_PER_KEY,
    );

    fn key_new(key: &[u8]) -> Result<CtrHmacKey, PluginFailure> {
        Ok(CtrHmacKey::new(key)?)
    }

    fn seal(
        key: &CtrHmacKey,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        buf: &mut [u8],
        plaintext_len: usize,
    ) -> Result<usize, PluginFailure> {
        Ok(key.seal(nonce, aad, buf, plaintext_len)?)
    }

    fn open(
        key: &CtrHmacKey,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        buf: &mut [u8],
    ) -> Result<usize, PluginFailure> {
        Ok(key.open(nonce, aad, buf)?)
    }
}

cyphonic_plugin_abi::crypto_suite_plugin!(
    name: "ctr-hmac",
    version: env!("CARGO_PKG_VERSION"),
    suite: CtrHmac,
);

/// A key of this suite: the expanded AES key schedule and the HMAC state with the MAC
/// key already absorbed. Immutable after creation, so it can seal and open from several
/// threads at once.
///
/// The AES round keys are zeroized on drop (`aes`' `zeroize` feature); the `hmac` crate
/// offers no zeroization of its precomputed inner/outer hash states.
pub struct CtrHmacKey {
    enc: Aes256Enc,
    mac: HmacSha256,
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
    #[error("message too long for one nonce")]
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

impl CtrHmacKey {
    pub fn new(key: &[u8]) -> Result<Self, Error> {
        if key.len() != KEY_LEN {
            return Err(Error::InvalidKeyLength(key.len()));
        }
        let hkdf = Hkdf::<Sha256>::new(None, key);
        let mut enc_key = Zeroizing::new([0u8; 32]);
        let mut mac_key = Zeroizing::new([0u8; 32]);
        hkdf.expand(ENC_KEY_INFO, enc_key.as_mut())
            .expect("32 bytes is far below HKDF-SHA256's 8160-byte limit");
        hkdf.expand(MAC_KEY_INFO, mac_key.as_mut())
            .expect("32 bytes is far below HKDF-SHA256's 8160-byte limit");
        Ok(Self {
            enc: aes_key(&enc_key),
            mac: HmacSha256::new_from_slice(mac_key.as_ref())
                .expect("HMAC accepts keys of any length"),
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
        self.apply_keystream(nonce, data)?;
        let tag = self.tag(nonce, aad, data);
        rest[..TAG_LEN].copy_from_slice(&tag[..TAG_LEN]);
        Ok(sealed_len)
    }

    /// Verifies and decrypts `buf` (ciphertext followed by the tag) in place; returns
    /// the plaintext length. A buffer shorter than a tag is an authentication failure.
    /// On failure the buffer is left as it was.
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
        self.mac_state(nonce, aad, data)
            .verify_truncated_left(tag)
            .map_err(|_| Error::AuthenticationFailed)?;
        self.apply_keystream(nonce, data)?;
        Ok(plaintext_len)
    }

    fn apply_keystream(&self, nonce: &[u8; NONCE_LEN], data: &mut [u8]) -> Result<(), Error> {
        apply_ctr(&self.enc, &counter_block(nonce, FIRST_BLOCK_COUNTER), data)
    }

    fn tag(&self, nonce: &[u8; NONCE_LEN], aad: &[u8], ciphertext: &[u8]) -> [u8; 32] {
        self.mac_state(nonce, aad, ciphertext)
            .finalize()
            .into_bytes()
            .into()
    }

    /// The HMAC state after absorbing the authenticated input. Cloning the keyed state
    /// copies two SHA-256 midstates: no allocation and no per-packet key hashing.
    fn mac_state(&self, nonce: &[u8; NONCE_LEN], aad: &[u8], ciphertext: &[u8]) -> HmacSha256 {
        let mut mac = self.mac.clone();
        mac.update(nonce);
        mac.update(aad);
        mac.update(ciphertext);
        mac.update(&(aad.len() as u64).to_be_bytes());
        mac.update(&(ciphertext.len() as u64).to_be_bytes());
        mac
    }
}

impl fmt::Debug for CtrHmacKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print key material.
        f.write_str("CtrHmacKey(..)")
    }
}

type HmacSha256 = Hmac<Sha256>;

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

fn aes_key(key: &[u8; 32]) -> Aes256Enc {
    // Scoped import: `KeyInit` and `Mac` both provide `new_from_slice`.
    use aes::cipher::KeyInit;
    Aes256Enc::new(key.into())
}

fn counter_block(nonce: &[u8; NONCE_LEN], counter: u32) -> [u8; 16] {
    let mut block = [0u8; 16];
    block[..NONCE_LEN].copy_from_slice(nonce);
    block[NONCE_LEN..].copy_from_slice(&counter.to_be_bytes());
    block
}

/// AES-256-CTR over `data` from `initial` on, incrementing the low 32 bits big-endian.
/// Borrowing the key schedule avoids copying it per packet.
fn apply_ctr(enc: &Aes256Enc, initial: &[u8; 16], data: &mut [u8]) -> Result<(), Error> {
    let core =
        ctr::CtrCore::<&Aes256Enc, ctr::flavors::Ctr32BE>::inner_iv_init(enc, initial.into());
    let mut ctr = ctr::cipher::StreamCipherCoreWrapper::from_core(core);
    ctr.try_apply_keystream(data)
        .map_err(|_| Error::MessageTooLong)
}

#[cfg(test)]
mod tests {
    //! The components against their published vectors, and the composition against
    //! an independent recomputation from those components.
    use super::*;

    fn unhex(s: &str) -> Vec<u8> {
        hex::decode(s.split_whitespace().collect::<String>()).unwrap()
    }

    #[test]
    fn ctr_matches_sp800_38a_f_5_5() {
        let key = unhex("603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4");
        let initial: [u8; 16] = unhex("f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff")
            .try_into()
            .unwrap();
        let mut data = unhex(
            "6bc1bee22e409f96e93d7e117393172a ae2d8a571e03ac9c9eb76fac45af8e51
             30c81c46a35ce411e5fbc1191a0a52ef f69f2445df4f9b17ad2b417be66c3710",
        );
        let expected = unhex(
            "601ec313775789a5b7a7f504bbf3d228 f443e3ca4d62b59aca84e990cacaf5c5
             2b0930daa23de94ce87017ba2d84988d dfc9c58db67aada613c2dd08457941a6",
        );
        let enc = aes_key(key.as_slice().try_into().unwrap());
        apply_ctr(&enc, &initial, &mut data).unwrap();
        assert_eq!(data, expected);
        // F.5.6 (decryption) is the same operation.
        apply_ctr(&enc, &initial, &mut data).unwrap();
        assert_eq!(data[..16], unhex("6bc1bee22e409f96e93d7e117393172a")[..]);
    }

    #[test]
    fn hmac_matches_rfc4231() {
        let aa131 = vec![0xaa; 131];
        let cases: [(Vec<u8>, Vec<u8>, &str); 6] = [
            (
                vec![0x0b; 20],
                b"Hi There".to_vec(),
                "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7",
            ),
            (
                b"Jefe".to_vec(),
                b"what do ya want for nothing?".to_vec(),
                "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
            ),
            (
                vec![0xaa; 20],
                vec![0xdd; 50],
                "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe",
            ),
            (
                (1..=25).collect(),
                vec![0xcd; 50],
                "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b",
            ),
            (
                aa131.clone(),
                b"Test Using Larger Than Block-Size Key - Hash Key First".to_vec(),
                "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54",
            ),
            (
                aa131,
                b"This is a test using a larger than block-size key and a larger than \
                  block-size data. The key needs to be hashed before being used by the \
                  HMAC algorithm."
                    .to_vec(),
                "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2",
            ),
        ];
        for (i, (key, data, expected)) in cases.iter().enumerate() {
            let mut mac = HmacSha256::new_from_slice(key).unwrap();
            mac.update(data);
            assert_eq!(
                hex::encode(mac.finalize().into_bytes()),
                *expected,
                "RFC 4231 case index {i}"
            );
        }
    }

    #[test]
    fn hkdf_matches_rfc5869_case_3() {
        // Case 3 is the one without salt, as this suite runs HKDF.
        let hkdf = Hkdf::<Sha256>::new(None, &[0x0b; 22]);
        let mut okm = [0u8; 42];
        hkdf.expand(&[], &mut okm).unwrap();
        assert_eq!(
            hex::encode(okm),
            "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8"
        );
    }

    /// Rebuilds a sealed message from the documented construction with separately
    /// keyed primitives, so the composition (labels, counter start, MAC input order and
    /// length encoding, truncation) is checked, not just self-consistency.
    #[test]
    fn seal_is_the_documented_composition() {
        let key: [u8; 32] = core::array::from_fn(|i| i as u8 ^ 0x5c);
        let nonce: [u8; 12] = core::array::from_fn(|i| 0xa0 + i as u8);
        let aad = b"header bytes";
        let plaintext: Vec<u8> = (0..100u8).collect();

        let hkdf = Hkdf::<Sha256>::new(None, &key);
        let (mut enc_key, mut mac_key) = ([0u8; 32], [0u8; 32]);
        hkdf.expand(b"cyphonic ctr-hmac-sha256 v1 enc", &mut enc_key)
            .unwrap();
        hkdf.expand(b"cyphonic ctr-hmac-sha256 v1 mac", &mut mac_key)
            .unwrap();
        let mut expected = plaintext.clone();
        let mut initial = [0u8; 16];
        initial[..12].copy_from_slice(&nonce);
        initial[15] = 1;
        let mut ctr = <ctr::Ctr32BE<aes::Aes256> as aes::cipher::KeyIvInit>::new(
            &enc_key.into(),
            &initial.into(),
        );
        ctr.apply_keystream(&mut expected);
        let mut mac = HmacSha256::new_from_slice(&mac_key).unwrap();
        mac.update(&nonce);
        mac.update(aad);
        mac.update(&expected);
        mac.update(&12u64.to_be_bytes());
        mac.update(&100u64.to_be_bytes());
        expected.extend_from_slice(&mac.finalize().into_bytes()[..16]);

        let suite_key = CtrHmacKey::new(&key).unwrap();
        let mut buf = plaintext.clone();
        buf.resize(100 + TAG_LEN, 0);
        assert_eq!(suite_key.seal(&nonce, aad, &mut buf, 100).unwrap(), 116);
        assert_eq!(buf, expected);
        assert_eq!(suite_key.open(&nonce, aad, &mut buf).unwrap(), 100);
        assert_eq!(buf[..100], plaintext[..]);
    }

    #[test]
    fn failed_open_leaves_the_ciphertext_untouched() {
        let key = CtrHmacKey::new(&[9; 32]).unwrap();
        let mut buf = [0x11u8; 48];
        key.seal(&[1; 12], b"a", &mut buf, 32).unwrap();
        buf[47] ^= 0x80;
        let before = buf;
        assert_eq!(
            key.open(&[1; 12], b"a", &mut buf),
            Err(Error::AuthenticationFailed)
        );
        assert_eq!(buf, before);
    }

    #[test]
    fn counter_block_layout() {
        assert_eq!(
            counter_block(&[0xee; 12], FIRST_BLOCK_COUNTER),
            [
                0xee, 0xee, 0xee, 0xee, 0xee, 0xee, 0xee, 0xee, 0xee, 0xee, 0xee, 0xee, 0, 0, 0, 1
            ]
        );
    }
}
