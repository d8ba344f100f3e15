//! Known-answer tests: the AES-256 test cases 13-16 of McGrew and Viega, "The Galois/
//! Counter Mode of Operation (GCM)" (also in NIST's gcmEncryptExtIV256 set), run through
//! the key API, the `CryptoSuite` trait and the statically linked plugin header.

// Shared helpers, not `#[test]` functions: a failed unwrap in them fails the test.
#![allow(clippy::unwrap_used)]

use cyphonic_aes_gcm_suite::{AesGcm, AesGcmKey, Error, TAG_LEN};
use cyphonic_plugin_abi::{CryptoOp, CryptoSuite, CryptoSuitePlugin, Plugin, Status};

struct Vector {
    name: &'static str,
    key: &'static str,
    iv: &'static str,
    aad: &'static str,
    plaintext: &'static str,
    ciphertext: &'static str,
    tag: &'static str,
}

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
        plaintext: "",
        ciphertext: "",
        tag: "530f8afbc74536b9a963b4f1c4cb738b",
    },
    Vector {
        name: "test case 14",
        key: "0000000000000000000000000000000000000000000000000000000000000000",
        iv: "000000000000000000000000",
        aad: "",
        plaintext: "00000000000000000000000000000000",
        ciphertext: "cea7403d4d606b6e074ec5d3baf39d18",
        tag: "d0d1c8a799996bf0265b98b5d48ab919",
    },
    Vector {
        name: "test case 15",
        key: K15,
        iv: "cafebabefacedbaddecaf888",
        aad: "",
        plaintext: P15,
        ciphertext: C15,
        tag: "b094dac5d93471bdec1a502270e3cc6c",
    },
    Vector {
        name: "test case 16",
        key: K15,
        iv: "cafebabefacedbaddecaf888",
        aad: "feedfacedeadbeeffeedfacedeadbeefabaddad2",
        // Test case 15's plaintext and ciphertext without their last 4 bytes.
        plaintext: "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72\
                    1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39",
        ciphertext: "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa\
                     8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662",
        tag: "76fc6ece0f4e1768cddf8853bb2d551b",
    },
];

fn unhex(s: &str) -> Vec<u8> {
    hex::decode(s.split_whitespace().collect::<String>()).unwrap()
}

/// Runs every vector through one implementation given as a seal and an open function
/// (key, nonce, aad, buf[, plaintext_len]), checking the sealed bytes, the round trip
/// and that a flipped tag bit is refused.
fn check_all<S, O, E>(seal: S, open: O)
where
    S: Fn(&[u8], &[u8; 12], &[u8], &mut [u8], usize) -> Result<usize, E>,
    O: Fn(&[u8], &[u8; 12], &[u8], &mut [u8]) -> Result<usize, E>,
    E: std::fmt::Debug,
{
    for v in VECTORS {
        let key = unhex(v.key);
        let nonce: [u8; 12] = unhex(v.iv).try_into().unwrap();
        let aad = unhex(v.aad);
        let plaintext = unhex(v.plaintext);
        let mut expected = unhex(v.ciphertext);
        expected.extend(unhex(v.tag));

        let mut buf = plaintext.clone();
        buf.resize(plaintext.len() + TAG_LEN, 0xee);
        let sealed = seal(&key, &nonce, &aad, &mut buf, plaintext.len()).unwrap();
        assert_eq!(sealed, expected.len(), "{}", v.name);
        assert_eq!(hex::encode(&buf), hex::encode(&expected), "{}", v.name);

        let mut tampered = expected.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert!(
            open(&key, &nonce, &aad, &mut tampered).is_err(),
            "{}: tampered tag accepted",
            v.name
        );

        let opened = open(&key, &nonce, &aad, &mut buf).unwrap();
        assert_eq!(opened, plaintext.len(), "{}", v.name);
        assert_eq!(buf[..opened], plaintext[..], "{}", v.name);
    }
}

#[test]
fn vectors_through_the_key_api() {
    check_all(
        |key, nonce, aad, buf, len| AesGcmKey::new(key)?.seal(nonce, aad, buf, len),
        |key, nonce, aad, buf| AesGcmKey::new(key)?.open(nonce, aad, buf),
    );
}

#[test]
fn key_api_errors() {
    assert_eq!(
        AesGcmKey::new(&[0; 31]).err(),
        Some(Error::InvalidKeyLength(31))
    );
    let key = AesGcmKey::new(&[0; 32]).unwrap();
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

#[test]
fn vectors_through_the_suite_trait() {
    check_all(
        |key, nonce, aad, buf, len| {
            let key = AesGcm::key_new(key)?;
            AesGcm::seal(&key, nonce, aad, buf, len)
        },
        |key, nonce, aad, buf| {
            let key = AesGcm::key_new(key)?;
            AesGcm::open(&key, nonce, aad, buf)
        },
    );
    let key = AesGcm::key_new(&[0; 32]).unwrap();
    let err = AesGcm::open(&key, &[0; 12], b"", &mut [0u8; 16]).unwrap_err();
    assert_eq!(err.status(), Status::AUTH_FAILED);
}

fn static_plugin() -> CryptoSuitePlugin {
    let plugin =
        Plugin::from_static(cyphonic_aes_gcm_suite::plugin_header(), "static:aes-gcm").unwrap();
    assert_eq!(plugin.name(), "aes-gcm");
    assert_eq!(plugin.version(), env!("CARGO_PKG_VERSION"));
    CryptoSuitePlugin::new(plugin).unwrap()
}

#[test]
fn vectors_through_the_static_plugin_header() {
    let suite = static_plugin();
    assert_eq!(suite.info().suite_id, AesGcm::INFO.suite_id);
    check_all(
        |key, nonce, aad, buf, len| suite.key_new(key)?.seal_in_place(nonce, aad, buf, len),
        |key, nonce, aad, buf| suite.key_new(key)?.open_in_place(nonce, aad, buf),
    );
}

#[test]
fn vectors_through_static_plugin_batches() {
    let suite = static_plugin();
    for v in VECTORS {
        let key = suite.key_new(&unhex(v.key)).unwrap();
        // The same vector three times in one batch, each op in its own buffer.
        let nonce: [u8; 12] = unhex(v.iv).try_into().unwrap();
        let aad = unhex(v.aad);
        let plaintext = unhex(v.plaintext);
        let mut expected = unhex(v.ciphertext);
        expected.extend(unhex(v.tag));
        let mut bufs = vec![plaintext.clone(); 3];
        for buf in &mut bufs {
            buf.resize(plaintext.len() + TAG_LEN, 0);
        }
        let mut ops: Vec<CryptoOp<'_>> = bufs
            .iter_mut()
            .map(|buf| CryptoOp::new(&nonce, &aad, buf, plaintext.len()).unwrap())
            .collect();
        key.seal_batch(&mut ops).unwrap();
        assert!(
            ops.iter().all(|op| op.result() == Ok(expected.len())),
            "{ops:?}"
        );
        drop(ops);
        assert!(bufs.iter().all(|buf| *buf == expected), "{}", v.name);

        let mut ops: Vec<CryptoOp<'_>> = bufs
            .iter_mut()
            .map(|buf| {
                let len = buf.len();
                CryptoOp::new(&nonce, &aad, buf, len).unwrap()
            })
            .collect();
        key.open_batch(&mut ops).unwrap();
        assert!(
            ops.iter().all(|op| op.result() == Ok(plaintext.len())),
            "{ops:?}"
        );
        drop(ops);
        assert!(
            bufs.iter()
                .all(|buf| buf[..plaintext.len()] == plaintext[..])
        );
    }
}
