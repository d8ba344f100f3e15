//! The ChaCha20-Poly1305 crypto suite (suite 2, RFC 8439), on `ring`'s AEAD.
//!
//! The software suite for CPUs without AES instructions: constant time and fast in plain
//! SIMD. `ring` runs BoringSSL's assembly and picks the code at run time (on x86-64 the
//! stitched ChaCha20-Poly1305 loop, in its AVX2 form where AVX2 and BMI2 are present, else
//! SSE4.1; NEON on ARMv8), with portable constant-time code elsewhere. It seals and
//! opens 1400-byte packets about 3.5x and 64-byte ones about 8x faster than RustCrypto
//! `chacha20poly1305` 0.10 or 0.11 on an AVX2 x86-64.

use cyphonic_plugin_abi::{CryptoInfo, CryptoSuite, PluginFailure, SUITE_CHACHA20_POLY1305};
use cyphonic_ring_aead::{RingAeadKey, RingAlgorithm};

pub use cyphonic_ring_aead::{Error, KEY_LEN, NONCE_LEN, TAG_LEN};

/// A key's hard limit: ChaCha20 has no birthday bound on its key stream, so the limit is
/// only there to stay far from the 64-bit nonce counter (WireGuard's is similar).
pub const MAX_MESSAGES_PER_KEY: u64 = 1 << 60;

/// The ChaCha20-Poly1305 suite, for the plugin ABI.
#[derive(Debug, Clone, Copy, Default)]
pub struct ChaChaPoly;

/// A key of this suite: the ChaCha20 key itself (each nonce derives its own Poly1305
/// key), wiped on drop (see [`RingAeadKey`] for what the wipe reaches).
pub type ChaChaPolyKey = RingAeadKey<ChaChaPoly>;

impl RingAlgorithm for ChaChaPoly {
    const ALGORITHM: &'static ring::aead::Algorithm = &ring::aead::CHACHA20_POLY1305;
    const NAME: &'static str = "ChaCha20-Poly1305";
}

impl CryptoSuite for ChaChaPoly {
    type Key = ChaChaPolyKey;

    const INFO: CryptoInfo = CryptoInfo::new(
        SUITE_CHACHA20_POLY1305,
        KEY_LEN as u32,
        TAG_LEN as u32,
        MAX_MESSAGES_PER_KEY,
    );

    fn key_new(key: &[u8]) -> Result<ChaChaPolyKey, PluginFailure> {
        Ok(ChaChaPolyKey::new(key)?)
    }

    fn seal(
        key: &ChaChaPolyKey,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        buf: &mut [u8],
        plaintext_len: usize,
    ) -> Result<usize, PluginFailure> {
        Ok(key.seal(nonce, aad, buf, plaintext_len)?)
    }

    fn open(
        key: &ChaChaPolyKey,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        buf: &mut [u8],
    ) -> Result<usize, PluginFailure> {
        Ok(key.open(nonce, aad, buf)?)
    }
}

cyphonic_plugin_abi::crypto_suite_plugin!(
    name: "chacha20-poly1305",
    version: env!("CARGO_PKG_VERSION"),
    suite: ChaChaPoly,
);
