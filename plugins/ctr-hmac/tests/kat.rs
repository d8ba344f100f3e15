//! Known-answer test of the composite construction: a fixed vector produced with the
//! OpenSSL command line (`openssl kdf HKDF`, `openssl enc -aes-256-ctr`, `openssl dgst
//! -mac HMAC`) from the construction documented in the crate root, so an accidental
//! change of labels, counter layout or MAC input breaks it. The components' own
//! published vectors (SP 800-38A F.5.5, RFC 4231, RFC 5869) are unit tests in `src/`.
//! Run through the key API, the `CryptoSuite` trait and the statically linked header.

// Shared helpers, not `#[test]` functions: a failed unwrap in them fails the test.
#![allow(clippy::unwrap_used)]

use cyphonic_ctr_hmac_suite::{CtrHmac, CtrHmacKey, Error, TAG_LEN};
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

const VECTORS: &[Vector] = &[Vector {
    name: "cyphonic ctr-hmac v1 fixed vector",
    key: "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
    iv: "c0c1c2c3c4c5c6c7c8c9cacb",
    aad: "637970686f6e696320616164", // "cyphonic aad"
    plaintext: b"Encrypt-then-MAC, one HMAC per packet.",
    ciphertext: "da615b865ea45cce3ee6defccab16de802c349cb379be6b16e472608e204f6c2fdbb1fc29f52",
    tag: "cf1c927ab9fb8f510ec8c64aba881df3",
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
        |key, nonce, aad, buf, len| CtrHmacKey::new(key)?.seal(nonce, aad, buf, len),
        |key, nonce, aad, buf| CtrHmacKey::new(key)?.open(nonce, aad, buf),
    );
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

#[test]
fn vectors_through_the_suite_trait() {
    check_all(
        |key, nonce, aad, buf, len| {
            let key = CtrHmac::key_new(key)?;
            CtrHmac::seal(&key, nonce, aad, buf, len)
        },
        |key, nonce, aad, buf| {
            let key = CtrHmac::key_new(key)?;
            CtrHmac::open(&key, nonce, aad, buf)
        },
    );
    let key = CtrHmac::key_new(&[0; 32]).unwrap();
    let err = CtrHmac::open(&key, &[0; 12], b"", &mut [0u8; 16]).unwrap_err();
    assert_eq!(err.status(), Status::AUTH_FAILED);
}

fn static_plugin() -> CryptoSuitePlugin {
    let plugin =
        Plugin::from_static(cyphonic_ctr_hmac_suite::plugin_header(), "static:ctr-hmac").unwrap();
    assert_eq!(plugin.name(), "ctr-hmac");
    assert_eq!(plugin.version(), env!("CARGO_PKG_VERSION"));
    CryptoSuitePlugin::new(plugin).unwrap()
}

#[test]
fn vectors_through_the_static_plugin_header() {
    let suite = static_plugin();
    assert_eq!(suite.info().suite_id, CtrHmac::INFO.suite_id);
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
