//! Known-answer tests: the AEAD_CHACHA20_POLY1305 vector of RFC 8439 section 2.8.2,
//! run through the key API, the `CryptoSuite` trait and the statically linked plugin
//! header.

use cyphonic_chacha20_poly1305_suite::{ChaChaPoly, ChaChaPolyKey, TAG_LEN};
use cyphonic_plugin_conformance::kat::{Kat, Plaintext, Vector};

const SUNSCREEN: &str = "Ladies and Gentlemen of the class of '99: If I could offer you only one \
                         tip for the future, sunscreen would be it.";

const VECTORS: &[Vector] = &[Vector {
    name: "RFC 8439 2.8.2",
    key: "808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f",
    iv: "070000004041424344454647",
    aad: "50515253c0c1c2c3c4c5c6c7",
    plaintext: Plaintext::Bytes(SUNSCREEN.as_bytes()),
    ciphertext: "d31a8d34648e60db7b86afbc53ef7ec2a4aded51296e08fea9e2b5a736ee62d6\
                 3dbea45e8ca9671282fafb69da92728b1a71de0a9e060b2905d6a5b67ecd3b36\
                 92ddbd7f2d778b8c9803aee328091b58fab324e4fad675945585808b4831d7bc\
                 3ff4def08e4b7a9de576d26586cec64b6116",
    tag: "1ae10b594f09e26a7e902ecbd0600691",
}];

const KAT: Kat = Kat {
    vectors: VECTORS,
    tag_len: TAG_LEN,
    plugin_name: "chacha20-poly1305",
    plugin_version: env!("CARGO_PKG_VERSION"),
    plugin_header: cyphonic_chacha20_poly1305_suite::plugin_header,
};

#[test]
fn vectors_through_the_key_api() {
    KAT.check(
        &|key, nonce, aad, buf, len| ChaChaPolyKey::new(key)?.seal(nonce, aad, buf, len),
        &|key, nonce, aad, buf| ChaChaPolyKey::new(key)?.open(nonce, aad, buf),
    );
}

#[test]
fn vectors_through_the_suite_trait() {
    KAT.check_suite::<ChaChaPoly>();
}

#[test]
fn vectors_through_the_static_plugin_header() {
    KAT.check_static_plugin::<ChaChaPoly>();
}

#[test]
fn vectors_through_static_plugin_batches() {
    KAT.check_static_plugin_batches();
}
