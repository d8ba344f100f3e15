//! Known-answer tests: the AES-256 test cases 13-16 of McGrew and Viega, "The Galois/
//! Counter Mode of Operation (GCM)" (also in NIST's gcmEncryptExtIV256 set), run through
//! the key API, the `CryptoSuite` trait and the statically linked plugin header.

use cyphonic_aes_gcm_suite::{AesGcm, AesGcmKey, TAG_LEN};
use cyphonic_plugin_conformance::kat::{Kat, Plaintext, Vector};

const K15: &str = "feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308";
const P15: &str = "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72\
                   1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b391aafd255";
const C15: &str = "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa\
                   8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662898015ad";

const VECTORS: &[Vector] = &[
    Vector {
        name: "test case 13",
        key: "0000000000000000000000000000000000000000000000000000000000000000",
        iv: "000000000000000000000000",
        aad: "",
        plaintext: Plaintext::Hex(""),
        ciphertext: "",
        tag: "530f8afbc74536b9a963b4f1c4cb738b",
    },
    Vector {
        name: "test case 14",
        key: "0000000000000000000000000000000000000000000000000000000000000000",
        iv: "000000000000000000000000",
        aad: "",
        plaintext: Plaintext::Hex("00000000000000000000000000000000"),
        ciphertext: "cea7403d4d606b6e074ec5d3baf39d18",
        tag: "d0d1c8a799996bf0265b98b5d48ab919",
    },
    Vector {
        name: "test case 15",
        key: K15,
        iv: "cafebabefacedbaddecaf888",
        aad: "",
        plaintext: Plaintext::Hex(P15),
        ciphertext: C15,
        tag: "b094dac5d93471bdec1a502270e3cc6c",
    },
    Vector {
        name: "test case 16",
        key: K15,
        iv: "cafebabefacedbaddecaf888",
        aad: "feedfacedeadbeeffeedfacedeadbeefabaddad2",
        // Test case 15's plaintext and ciphertext without their last 4 bytes.
        plaintext: Plaintext::Hex(
            "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72\
                    1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39",
        ),
        ciphertext: "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa\
                     8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662",
        tag: "76fc6ece0f4e1768cddf8853bb2d551b",
    },
];

const KAT: Kat = Kat {
    vectors: VECTORS,
    tag_len: TAG_LEN,
    plugin_name: "aes-gcm",
    plugin_version: env!("CARGO_PKG_VERSION"),
    plugin_header: cyphonic_aes_gcm_suite::plugin_header,
};

#[test]
fn vectors_through_the_key_api() {
    KAT.check(
        &|key, nonce, aad, buf, len| AesGcmKey::new(key)?.seal(nonce, aad, buf, len),
        &|key, nonce, aad, buf| AesGcmKey::new(key)?.open(nonce, aad, buf),
    );
}

#[test]
fn vectors_through_the_suite_trait() {
    KAT.check_suite::<AesGcm>();
}

#[test]
fn vectors_through_the_static_plugin_header() {
    KAT.check_static_plugin::<AesGcm>();
}

#[test]
fn vectors_through_static_plugin_batches() {
    KAT.check_static_plugin_batches();
}
