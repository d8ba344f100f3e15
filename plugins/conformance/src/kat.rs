//! The known-answer harness of the crypto-suite crates (`tests/kat.rs` of each): runs a
//! suite's vectors through its key API, its `CryptoSuite` impl and its statically
//! linked plugin header (single ops and batches), checking the sealed bytes, the round
//! trip and that a flipped tag bit is refused. Panics on any mismatch, so a failed
//! check fails the calling test.
//!
//! Built from this crate's lib for the `ring` suites and included by path (no Cargo
//! dependency) for ctr-hmac, so it names only `cyphonic_plugin_abi` and `hex`.

use cyphonic_plugin_abi::{CryptoOp, CryptoSuite, CryptoSuitePlugin, Plugin, PluginHeader, Status};

/// One known-answer vector; every field but `name` and `plaintext` is hex (whitespace
/// is ignored, so long values can be split across lines).
#[derive(Debug)]
pub struct Vector {
    pub name: &'static str,
    pub key: &'static str,
    pub iv: &'static str,
    pub aad: &'static str,
    pub plaintext: Plaintext,
    pub ciphertext: &'static str,
    pub tag: &'static str,
}

/// A vector's plaintext, as its source publishes it.
#[derive(Debug)]
pub enum Plaintext {
    Hex(&'static str),
    Bytes(&'static [u8]),
}

/// The suite under test: its vectors and what its static plugin header must say.
#[derive(Debug)]
pub struct Kat {
    pub vectors: &'static [Vector],
    /// The crate's `TAG_LEN`, which the sealed vectors must agree with.
    pub tag_len: usize,
    pub plugin_name: &'static str,
    /// The crate's `CARGO_PKG_VERSION`.
    pub plugin_version: &'static str,
    pub plugin_header: fn() -> &'static PluginHeader,
}

/// A seal function: (key, nonce, aad, buf, plaintext_len) to the sealed length.
pub type SealFn<'a, E> = dyn Fn(&[u8], &[u8; 12], &[u8], &mut [u8], usize) -> Result<usize, E> + 'a;
/// An open function: (key, nonce, aad, buf) to the plaintext length.
pub type OpenFn<'a, E> = dyn Fn(&[u8], &[u8; 12], &[u8], &mut [u8]) -> Result<usize, E> + 'a;

impl Kat {
    /// Runs every vector through one implementation given as a seal and an open function.
    pub fn check<E: std::fmt::Debug>(&self, seal: &SealFn<'_, E>, open: &OpenFn<'_, E>) {
        for v in self.vectors {
            let key = unhex(v.key);
            let (nonce, aad, plaintext, expected) = v.decode();

            let mut buf = plaintext.clone();
            buf.resize(plaintext.len() + self.tag_len, 0xee);
            let sealed = seal(&key, &nonce, &aad, &mut buf, plaintext.len())
                .unwrap_or_else(|e| panic!("{}: seal: {e:?}", v.name));
            assert_eq!(sealed, expected.len(), "{}", v.name);
            assert_eq!(hex::encode(&buf), hex::encode(&expected), "{}", v.name);

            let mut tampered = expected.clone();
            *tampered.last_mut().expect("a sealed vector has a tag") ^= 1;
            assert!(
                open(&key, &nonce, &aad, &mut tampered).is_err(),
                "{}: tampered tag accepted",
                v.name
            );

            let opened = open(&key, &nonce, &aad, &mut buf)
                .unwrap_or_else(|e| panic!("{}: open: {e:?}", v.name));
            assert_eq!(opened, plaintext.len(), "{}", v.name);
            assert_eq!(buf[..opened], plaintext[..], "{}", v.name);
        }
    }

    /// The vectors through `S`'s `CryptoSuite` impl, and a garbage open through it is
    /// `AUTH_FAILED`.
    pub fn check_suite<S: CryptoSuite>(&self) {
        self.check(
            &|key, nonce, aad, buf, len| S::seal(&S::key_new(key)?, nonce, aad, buf, len),
            &|key, nonce, aad, buf| S::open(&S::key_new(key)?, nonce, aad, buf),
        );
        let key = S::key_new(&[0; 32]).expect("an all-zero key is a key");
        let err = S::open(&key, &[0; 12], b"", &mut [0u8; 16])
            .expect_err("an all-zero message does not authenticate");
        assert_eq!(err.status(), Status::AUTH_FAILED);
    }

    /// The static plugin header: its name, version and suite id (that of `S`), then the
    /// vectors through `seal_in_place`/`open_in_place`.
    pub fn check_static_plugin<S: CryptoSuite>(&self) {
        let suite = self.static_plugin();
        assert_eq!(suite.info().suite_id, S::INFO.suite_id);
        self.check(
            &|key, nonce, aad, buf, len| suite.key_new(key)?.seal_in_place(nonce, aad, buf, len),
            &|key, nonce, aad, buf| suite.key_new(key)?.open_in_place(nonce, aad, buf),
        );
    }

    /// Every vector three times in one batch, each op in its own buffer, sealed and then
    /// opened through the static plugin header.
    pub fn check_static_plugin_batches(&self) {
        let suite = self.static_plugin();
        for v in self.vectors {
            let key = suite.key_new(&unhex(v.key)).expect("vector keys are valid");
            let (nonce, aad, plaintext, expected) = v.decode();
            let mut bufs = vec![plaintext.clone(); 3];
            for buf in &mut bufs {
                buf.resize(plaintext.len() + self.tag_len, 0);
            }
            let mut ops: Vec<CryptoOp<'_>> = bufs
                .iter_mut()
                .map(|buf| CryptoOp::new(&nonce, &aad, buf, plaintext.len()).expect("valid op"))
                .collect();
            key.seal_batch(&mut ops).expect("the batch runs");
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
                    CryptoOp::new(&nonce, &aad, buf, len).expect("valid op")
                })
                .collect();
            key.open_batch(&mut ops).expect("the batch runs");
            assert!(
                ops.iter().all(|op| op.result() == Ok(plaintext.len())),
                "{ops:?}"
            );
            drop(ops);
            assert!(
                bufs.iter()
                    .all(|buf| buf[..plaintext.len()] == plaintext[..]),
                "{}",
                v.name
            );
        }
    }

    /// Loads the static header and checks its name and version.
    fn static_plugin(&self) -> CryptoSuitePlugin {
        let label = format!("static:{}", self.plugin_name);
        let plugin = Plugin::from_static((self.plugin_header)(), &label)
            .unwrap_or_else(|e| panic!("{label}: {e}"));
        assert_eq!(plugin.name(), self.plugin_name);
        assert_eq!(plugin.version(), self.plugin_version);
        CryptoSuitePlugin::new(plugin).unwrap_or_else(|e| panic!("{label}: {e}"))
    }
}

impl Vector {
    /// (nonce, aad, plaintext, ciphertext followed by the tag).
    pub fn decode(&self) -> ([u8; 12], Vec<u8>, Vec<u8>, Vec<u8>) {
        let nonce = unhex(self.iv)
            .try_into()
            .unwrap_or_else(|iv| panic!("{}: a 12-byte IV, not {iv:02x?}", self.name));
        let plaintext = match self.plaintext {
            Plaintext::Hex(hex) => unhex(hex),
            Plaintext::Bytes(bytes) => bytes.to_vec(),
        };
        let mut sealed = unhex(self.ciphertext);
        sealed.extend(unhex(self.tag));
        (nonce, unhex(self.aad), plaintext, sealed)
    }
}

/// Decodes hex, ignoring whitespace.
pub fn unhex(s: &str) -> Vec<u8> {
    hex::decode(s.split_whitespace().collect::<String>())
        .unwrap_or_else(|e| panic!("bad hex in a vector ({e}): {s}"))
}
