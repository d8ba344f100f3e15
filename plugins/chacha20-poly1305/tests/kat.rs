//! Known-answer tests: the AEAD_CHACHA20_POLY1305 vector of RFC 8439 section 2.8.2,
//! run through the key API, the `CryptoSuite` trait and the statically linked plugin
//! header.

// Shared helpers, not `#[test]` functions: a failed unwrap in them fails the test.
#![allow(clippy::unwrap_used)]

use cyphonic_chacha20_poly1305_suite::{ChaChaPoly, ChaChaPolyKey, Error, TAG_LEN};
use cyphonic_plugin_abi::{CryptoOp, CryptoSuite, CryptoSuitePlugin, Plugin, Status};

struct Vector {
    name: &'static str,
    key: &'static str,
    iv: &'static str,
    aad: &'static str,
    plaintext: &'static [u8],
    ciphertext: &'static str,
    tag: &'static str,
}

const SUNSCREEN: &str = "Ladies and Gentlemen of the class of '99: If I could offer you only one \
                         tip for the future, sunscreen would be it.";

const VECTORS: &[Vector] = &[Vector {
    name: "RFC 8439 2.8.2",
    key: "808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f",
    iv: "070000004041424344454647",
    aad: "50515253c0c1c2c3c4c5c6c7",
    plaintext: SUNSCREEN.as_bytes(),
    ciphertext: "d31a8d34648e60db7b86afbc53ef7ec2a4aded51296e08fea9e2b5a736ee62d6\
                 3dbea45e8ca9671282fafb69da92728b1a71de0a9e060b2905d6a5b67ecd3b36\
                 92ddbd7f2d778b8c9803aee328091b58fab324e4fad675945585808b4831d7bc\
                 3ff4def08e4b7a9de576d26586cec64b6116",
    tag: "1ae10b594f09e26a7e902ecbd0600691",
}];

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
        let plaintext = v.plaintext.to_vec();
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
        |key, nonce, aad, buf, len| ChaChaPolyKey::new(key)?.seal(nonce, aad, buf, len),
        |key, nonce, aad, buf| ChaChaPolyKey::new(key)?.open(nonce, aad, buf),
    );
}

#[test]
fn key_api_errors() {
    assert_eq!(
        ChaChaPolyKey::new(&[0; 31]).err(),
        Some(Error::InvalidKeyLength(31))
    );
    let key = ChaChaPolyKey::new(&[0; 32]).unwrap();
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
            let key = ChaChaPoly::key_new(key)?;
            ChaChaPoly::seal(&key, nonce, aad, buf, len)
        },
        |key, nonce, aad, buf| {
            let key = ChaChaPoly::key_new(key)?;
            ChaChaPoly::open(&key, nonce, aad, buf)
        },
    );
    let key = ChaChaPoly::key_new(&[0; 32]).unwrap();
    let err = ChaChaPoly::open(&key, &[0; 12], b"", &mut [0u8; 16]).unwrap_err();
    assert_eq!(err.status(), Status::AUTH_FAILED);
}

fn static_plugin() -> CryptoSuitePlugin {
    let plugin = Plugin::from_static(
        cyphonic_chacha20_poly1305_suite::plugin_header(),
        "static:chacha20-poly1305",
    )
    .unwrap();
    assert_eq!(plugin.name(), "chacha20-poly1305");
    assert_eq!(plugin.version(), env!("CARGO_PKG_VERSION"));
    CryptoSuitePlugin::new(plugin).unwrap()
}

#[test]
fn vectors_through_the_static_plugin_header() {
    let suite = static_plugin();
    assert_eq!(suite.info().suite_id, ChaChaPoly::INFO.suite_id);
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
        let plaintext = v.plaintext.to_vec();
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
