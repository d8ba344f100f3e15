//! Known-answer test of the composite construction: a fixed vector produced with the
//! OpenSSL command line (`openssl kdf HKDF`, `openssl enc -aes-256-ctr`, `openssl dgst
//! -mac HMAC`) from the construction documented in the crate root, so an accidental
//! change of labels, counter layout or MAC input breaks it. The components' own
//! published vectors (SP 800-38A F.5.5, RFC 4231, RFC 5869) are unit tests in `src/`.
//! Run through the key API, the `CryptoSuite` trait and the statically linked header.

use cyphonic_ctr_hmac_suite::{CtrHmac, CtrHmacKey, Error, TAG_LEN};
use cyphonic_plugin_conformance::kat::{Kat, Plaintext, Vector};

const VECTORS: &[Vector] = &[Vector {
    name: "cyphonic ctr-hmac v1 fixed vector",
    key: "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
    iv: "c0c1c2c3c4c5c6c7c8c9cacb",
    aad: "637970686f6e696320616164", // "cyphonic aad"
    plaintext: Plaintext::Bytes(b"Encrypt-then-MAC, one HMAC per packet."),
    ciphertext: "da615b865ea45cce3ee6defccab16de802c349cb379be6b16e472608e204f6c2fdbb1fc29f52",
    tag: "cf1c927ab9fb8f510ec8c64aba881df3",
}];

const KAT: Kat = Kat {
    vectors: VECTORS,
    tag_len: TAG_LEN,
    plugin_name: "ctr-hmac",
    plugin_version: env!("CARGO_PKG_VERSION"),
    plugin_header: cyphonic_ctr_hmac_suite::plugin_header,
};

#[test]
fn vectors_through_the_key_api() {
    KAT.check(
        &|key, nonce, aad, buf, len| CtrHmacKey::new(key)?.seal(nonce, aad, buf, len),
        &|key, nonce, aad, buf| CtrHmacKey::new(key)?.open(nonce, aad, buf),
    );
}

#[test]
fn vectors_through_the_suite_trait() {
    KAT.check_suite::<CtrHmac>();
}

#[test]
fn vectors_through_the_static_plugin_header() {
    KAT.check_static_plugin::<CtrHmac>();
}

#[test]
fn vectors_through_static_plugin_batches() {
    KAT.check_static_plugin_batches();
}

#[test]
fn key_api_errors() {
    assert_eq!(
        CtrHmacKey::new(&[0; 31]).err(),
        Some(Error::InvalidKeyLength(31))
    );
    let key = CtrHmacKey::new(&[0; 32]).unwrap();
    let mut buf = [0u8; 20];
    assert_eq!(
        key.seal(&[0; 12], b"", &mut buf, 21),
        Err(Error::InvalidLength {
            plaintext_len: 21,
            buf_len: 20
        })
    );
    assert_eq!(
        key.seal(&[0; 12], b"", &mut buf, 5),
        Err(Error::BufferTooSmall {
            needed: 21,
            available: 20
        })
    );
    assert_eq!(
        key.open(&[0; 12], b"", &mut buf[..15]),
        Err(Error::AuthenticationFailed)
    );
}
