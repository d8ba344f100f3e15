//! The AES-256-GCM crypto suite (suite 1, the default), on `ring`'s AEAD.
//!
//! `ring` runs BoringSSL's assembly and picks the code at run time: VAES with VPCLMULQDQ
//! (AVX2), or AES-NI with PCLMULQDQ, AVX and MOVBE (the stitched AES-GCM loop), or
//! ARMv8 AES and PMULL; without those, constant-time software (vector-permute or
//! bitsliced AES, and a constant-time GHASH). So one portable build is fast on modern
//! CPUs and correct, in constant time, on old ones. It seals and opens 1400-byte
//! packets 3-4x faster than RustCrypto `aes-gcm` 0.10 or 0.11 on a VAES x86-64.

use cyphonic_plugin_abi::{CryptoInfo, CryptoSuite, PluginFailure, SUITE_AES_256_GCM};
use cyphonic_ring_aead::{RingAeadKey, RingAlgorithm};

pub use cyphonic_ring_aead::{Error, KEY_LEN, NONCE_LEN, TAG_LEN};

/// A key's hard limit, at a 2^-57 confidentiality margin: AES-GCM leaks after about
/// 2^36 key-stream blocks in total, and a data packet is at most ~9 KB (2^9.2 blocks).
/// The host rekeys long before (by time as well).
pub const MAX_MESSAGES_PER_KEY: u64 = 1 << 26;

/// The AES-256-GCM suite, for the plugin ABI.
#[derive(Debug, Clone, Copy, Default)]
pub struct AesGcm;

/// A key of this suite: the expanded AES key schedule and the GHASH key table, wiped on
/// drop (see [`RingAeadKey`] for what the wipe reaches).
pub type AesGcmKey = RingAeadKey<AesGcm>;

impl RingAlgorithm for AesGcm {
    const ALGORITHM: &'static ring::aead::Algorithm = &ring::aead::AES_256_GCM;
    const NAME: &'static str = "AES-256-GCM";
}

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
