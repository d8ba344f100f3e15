//! The crypto-suite contract, run against each built plugin file (loaded by absolute
//! path with `Plugin::load`) and cross-checked against the same suite linked statically.

// The checks are shared helpers rather than `#[test]` functions; a failed unwrap in
// them is a failed test all the same.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use cyphonic_plugin_abi::{
    CryptoKey, CryptoOp, CryptoSuitePlugin, LoadError, NONCE_LEN, Plugin, PluginHeader, PluginKind,
    Status,
};
use cyphonic_plugin_conformance::c_host::{self, Answer, Misuse};
use cyphonic_plugin_conformance::{
    AES_GCM, BAD_ABI, CHACHA20_POLY1305, CTR_HMAC, PluginArtifact, profile_dir,
};

const SIZES: [usize; 8] = [0, 1, 15, 16, 17, 64, 1400, 9000];
const TAG_LEN: usize = 16;
const KEY: [u8; 32] = [0x42; 32];
const AAD: &[u8] = b"cyphonic header as aad";

/// One plugin under test: the file, and what it must say about itself.
struct Subject {
    artifact: PluginArtifact,
    name: &'static str,
    suite_id: u32,
    static_header: fn() -> &'static PluginHeader,
}

impl Subject {
    fn dynamic(&self) -> CryptoSuitePlugin {
        let path = self.artifact.locate();
        let plugin = Plugin::load(&path).unwrap_or_else(|e| panic!("{e}"));
        CryptoSuitePlugin::new(plugin).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    fn statically_linked(&self) -> CryptoSuitePlugin {
        let plugin = Plugin::from_static((self.static_header)(), self.name).unwrap();
        CryptoSuitePlugin::new(plugin).unwrap()
    }
}

macro_rules! crypto_plugin_conformance {
    ($module:ident: $subject:expr) => {
        mod $module {
            use super::*;

            const SUBJECT: Subject = $subject;

            #[test]
            fn loads_as_a_sane_crypto_suite() {
                super::loads_as_a_sane_crypto_suite(&SUBJECT);
            }

            #[test]
            fn round_trips_at_every_size() {
                super::round_trips_at_every_size(&SUBJECT);
            }

            #[test]
            fn round_trips_in_batches() {
                super::round_trips_in_batches(&SUBJECT);
            }

            #[test]
            fn rejects_tampering() {
                super::rejects_tampering(&SUBJECT);
            }

            #[test]
            fn rejects_the_wrong_key_and_nonce() {
                super::rejects_the_wrong_key_and_nonce(&SUBJECT);
            }

            #[test]
            fn refuses_bad_sizes_and_garbage() {
                super::refuses_bad_sizes_and_garbage(&SUBJECT);
            }

            #[test]
            fn matches_the_statically_linked_suite() {
                super::matches_the_statically_linked_suite(&SUBJECT);
            }

            #[test]
            fn shares_a_key_across_threads() {
                super::shares_a_key_across_threads(&SUBJECT);
            }
        }
    };
}

crypto_plugin_conformance!(aes_gcm: Subject {
    artifact: AES_GCM,
    name: "aes-gcm",
    suite_id: cyphonic_plugin_abi::SUITE_AES_256_GCM,
    static_header: cyphonic_aes_gcm_suite::plugin_header,
});

crypto_plugin_conformance!(chacha20_poly1305: Subject {
    artifact: CHACHA20_POLY1305,
    name: "chacha20-poly1305",
    suite_id: cyphonic_plugin_abi::SUITE_CHACHA20_POLY1305,
    static_header: cyphonic_chacha20_poly1305_suite::plugin_header,
});

crypto_plugin_conformance!(ctr_hmac: Subject {
    artifact: CTR_HMAC,
    name: "ctr-hmac",
    suite_id: cyphonic_plugin_abi::SUITE_AES_256_CTR_HMAC_SHA256,
    static_header: cyphonic_ctr_hmac_suite::plugin_header,
});

const SUBJECTS: [&str; 3] = [
    "cyphonic_aes_gcm",
    "cyphonic_chacha20_poly1305",
    "cyphonic_ctr_hmac",
];

/// Every crypto-suite plugin file in the target directory is one this file tests, so a
/// new suite cannot ship without conformance coverage.
#[test]
fn every_built_crypto_plugin_is_covered() {
    for artifact in [AES_GCM, CHACHA20_POLY1305, CTR_HMAC] {
        artifact.locate();
    }
    let dir = profile_dir();
    let (prefix, suffix) = (std::env::consts::DLL_PREFIX, std::env::consts::DLL_SUFFIX);
    let mut seen = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let Some(lib) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix(prefix)?.strip_suffix(suffix))
        else {
            continue;
        };
        if !lib.starts_with("cyphonic_") {
            continue;
        }
        // Files that are not ABI 1 plugins (the bad-ABI fixture) are other tests' business.
        let Ok(plugin) = Plugin::load(&path) else {
            continue;
        };
        if plugin.kind() == PluginKind::CryptoSuite {
            assert!(
                SUBJECTS.contains(&lib),
                "{} has no conformance tests",
                path.display()
            );
            seen.push(lib.to_owned());
        }
    }
    seen.sort();
    assert_eq!(seen, SUBJECTS, "crypto plugins found in {}", dir.display());
}

#[test]
fn a_plugin_for_another_abi_is_refused_naming_file_and_versions() {
    let path = BAD_ABI.locate();
    let err = Plugin::load(&path).expect_err("an ABI 2.0 plugin must not load");
    assert!(
        matches!(
            err,
            LoadError::AbiMismatch {
                plugin_major: 2,
                plugin_minor: Some(0),
                ..
            }
        ),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(message.contains(&path.display().to_string()), "{message}");
    assert!(
        message.contains("2.0") && message.contains("1.0"),
        "{message}"
    );
}

fn loads_as_a_sane_crypto_suite(subject: &Subject) {
    let suite = subject.dynamic();
    let plugin = suite.plugin();
    assert!(plugin.path().is_absolute());
    assert_eq!(plugin.kind(), PluginKind::CryptoSuite);
    assert_eq!(plugin.name(), subject.name);
    assert_eq!(plugin.version(), env!("CARGO_PKG_VERSION"));
    assert_eq!((plugin.abi().major, plugin.abi().minor), (1, 0));
    let info = suite.info();
    assert_eq!(info.suite_id, subject.suite_id);
    assert_eq!(info.key_len, 32);
    assert_eq!(info.nonce_len as usize, NONCE_LEN);
    assert_eq!(info.tag_len as usize, TAG_LEN);
    assert!(info.max_messages_per_key >= 1 << 20, "{info:?}");
    assert!(info.struct_size as usize >= size_of::<cyphonic_plugin_abi::CryptoInfo>());
}

fn nonce(i: u64) -> [u8; NONCE_LEN] {
    let mut n = [0u8; NONCE_LEN];
    n[4..].copy_from_slice(&i.to_be_bytes());
    n
}

fn plaintext(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}

/// Seals `plaintext(size)` into a fresh buffer of exactly the sealed size.
fn seal(key: &CryptoKey, nonce: &[u8; NONCE_LEN], aad: &[u8], size: usize) -> Vec<u8> {
    let mut buf = plaintext(size, 0);
    buf.resize(size + TAG_LEN, 0);
    let n = key.seal_in_place(nonce, aad, &mut buf, size).unwrap();
    assert_eq!(n, size + TAG_LEN);
    buf
}

fn round_trips_at_every_size(subject: &Subject) {
    let key = subject.dynamic().key_new(&KEY).unwrap();
    for (i, size) in SIZES.into_iter().enumerate() {
        let mut sealed = seal(&key, &nonce(i as u64), AAD, size);
        if size >= 8 {
            assert_ne!(
                sealed[..size],
                plaintext(size, 0)[..],
                "size {size} not encrypted"
            );
        }
        // Extra capacity after the message must not matter.
        let mut roomy = plaintext(size, 0);
        roomy.resize(size + TAG_LEN + 100, 0xcc);
        assert_eq!(
            key.seal_in_place(&nonce(i as u64), AAD, &mut roomy, size),
            Ok(size + TAG_LEN)
        );
        assert_eq!(roomy[..size + TAG_LEN], sealed[..], "size {size}");
        assert!(
            roomy[size + TAG_LEN..].iter().all(|&b| b == 0xcc),
            "wrote past the tag"
        );

        assert_eq!(
            key.open_in_place(&nonce(i as u64), AAD, &mut sealed),
            Ok(size)
        );
        assert_eq!(sealed[..size], plaintext(size, 0)[..], "size {size}");
        // Empty AAD works too.
        let mut sealed = seal(&key, &nonce(i as u64), b"", size);
        assert_eq!(
            key.open_in_place(&nonce(i as u64), b"", &mut sealed),
            Ok(size)
        );
    }
}

fn round_trips_in_batches(subject: &Subject) {
    let key = subject.dynamic().key_new(&KEY).unwrap();
    const OPS: usize = 64;
    let sizes: Vec<usize> = (0..OPS).map(|i| SIZES[i % SIZES.len()]).collect();
    let mut bufs: Vec<Vec<u8>> = sizes
        .iter()
        .enumerate()
        .map(|(i, &size)| {
            let mut buf = plaintext(size, i as u8);
            buf.resize(size + TAG_LEN, 0);
            buf
        })
        .collect();
    let nonces: Vec<_> = (0..OPS as u64).map(|i| nonce(1000 + i)).collect();

    let mut ops: Vec<CryptoOp<'_>> = bufs
        .iter_mut()
        .zip(&sizes)
        .zip(&nonces)
        .map(|((buf, &size), n)| CryptoOp::new(n, AAD, buf, size).unwrap())
        .collect();
    key.seal_batch(&mut ops).unwrap();
    for (op, &size) in ops.iter().zip(&sizes) {
        assert_eq!(op.result(), Ok(size + TAG_LEN));
    }
    drop(ops);
    // A batch seals exactly like single calls.
    for (i, (buf, &size)) in bufs.iter().zip(&sizes).enumerate() {
        let mut single = plaintext(size, i as u8);
        single.resize(size + TAG_LEN, 0);
        key.seal_in_place(&nonces[i], AAD, &mut single, size)
            .unwrap();
        assert_eq!(*buf, single, "op {i}");
    }

    // Corrupt every third op: the others must still open, each op has its own status.
    for buf in bufs.iter_mut().step_by(3) {
        let last = buf.len() - 1;
        buf[last] ^= 0x01;
    }
    let mut ops: Vec<CryptoOp<'_>> = bufs
        .iter_mut()
        .zip(&nonces)
        .map(|(buf, n)| {
            let len = buf.len();
            CryptoOp::new(n, AAD, buf, len).unwrap()
        })
        .collect();
    key.open_batch(&mut ops).unwrap();
    for (i, (op, &size)) in ops.iter().zip(&sizes).enumerate() {
        if i % 3 == 0 {
            assert_eq!(op.result(), Err(Status::AUTH_FAILED), "op {i}");
        } else {
            assert_eq!(op.result(), Ok(size), "op {i}");
        }
    }
    drop(ops);
    for (i, (buf, &size)) in bufs
        .iter()
        .zip(&sizes)
        .enumerate()
        .filter(|(i, _)| i % 3 != 0)
    {
        assert_eq!(buf[..size], plaintext(size, i as u8)[..], "op {i}");
    }
}

fn assert_auth_failed(result: Result<usize, cyphonic_plugin_abi::PluginError>, what: &str) {
    match result {
        Err(e) => assert_eq!(e.status, Status::AUTH_FAILED, "{what}: {e}"),
        Ok(n) => panic!("{what}: opened ({n} bytes)"),
    }
}

fn rejects_tampering(subject: &Subject) {
    let key = subject.dynamic().key_new(&KEY).unwrap();
    for size in SIZES {
        let n = nonce(7);
        let sealed = seal(&key, &n, AAD, size);
        let positions = [0, size / 2, size.saturating_sub(1)];
        for pos in positions.into_iter().filter(|_| size > 0) {
            let mut tampered = sealed.clone();
            tampered[pos] ^= 0x04;
            assert_auth_failed(
                key.open_in_place(&n, AAD, &mut tampered),
                &format!("size {size}: ciphertext bit at {pos}"),
            );
        }
        for pos in [size, size + TAG_LEN - 1] {
            let mut tampered = sealed.clone();
            tampered[pos] ^= 0x80;
            assert_auth_failed(
                key.open_in_place(&n, AAD, &mut tampered),
                &format!("size {size}: tag bit at {pos}"),
            );
        }
        let mut aad = AAD.to_vec();
        aad[3] ^= 0x01;
        assert_auth_failed(
            key.open_in_place(&n, &aad, &mut sealed.clone()),
            &format!("size {size}: aad bit"),
        );
        assert_auth_failed(
            key.open_in_place(&n, &AAD[1..], &mut sealed.clone()),
            &format!("size {size}: aad shortened"),
        );
        assert_auth_failed(
            key.open_in_place(&n, AAD, &mut sealed.clone()[..size + TAG_LEN - 1]),
            &format!("size {size}: truncated"),
        );
        let mut extended = sealed.clone();
        extended.push(0);
        assert_auth_failed(
            key.open_in_place(&n, AAD, &mut extended),
            &format!("size {size}: extended"),
        );
    }
    // Shorter than a tag.
    assert_auth_failed(
        key.open_in_place(&nonce(7), AAD, &mut [0u8; 15]),
        "15 bytes",
    );
    assert_auth_failed(key.open_in_place(&nonce(7), AAD, &mut []), "0 bytes");
}

fn rejects_the_wrong_key_and_nonce(subject: &Subject) {
    let suite = subject.dynamic();
    let key = suite.key_new(&KEY).unwrap();
    let mut other_key_bytes = KEY;
    other_key_bytes[31] ^= 0x01;
    let other_key = suite.key_new(&other_key_bytes).unwrap();
    for size in SIZES {
        let sealed = seal(&key, &nonce(9), AAD, size);
        assert_ne!(
            sealed,
            seal(&other_key, &nonce(9), AAD, size),
            "size {size}: the key does not matter"
        );
        assert_auth_failed(
            other_key.open_in_place(&nonce(9), AAD, &mut sealed.clone()),
            &format!("size {size}: wrong key"),
        );
        for wrong in [nonce(10), nonce(9 | 1 << 63), [0xff; NONCE_LEN]] {
            assert_auth_failed(
                key.open_in_place(&wrong, AAD, &mut sealed.clone()),
                &format!("size {size}: wrong nonce {wrong:02x?}"),
            );
        }
    }
}

fn refuses_bad_sizes_and_garbage(subject: &Subject) {
    let suite = subject.dynamic();
    for len in [0, 16, 31, 33, 64] {
        let err = suite.key_new(&vec![1; len]).unwrap_err();
        assert_eq!(
            err.status,
            Status::INVALID_ARGUMENT,
            "{len}-byte key: {err}"
        );
    }
    let key = suite.key_new(&KEY).unwrap();
    for size in SIZES {
        for room in [0, 1, TAG_LEN - 1] {
            let mut buf = plaintext(size, 0);
            buf.resize(size + room, 0);
            let err = key
                .seal_in_place(&nonce(1), AAD, &mut buf, size)
                .unwrap_err();
            assert_eq!(
                err.status,
                Status::BUFFER_TOO_SMALL,
                "size {size}, room {room}: {err}"
            );
        }
    }
    // The same through a batch: the op fails, the others do not.
    let (mut small, mut fine) = ([0u8; 20], [0u8; 36]);
    let mut ops = [
        CryptoOp::new(&nonce(1), AAD, &mut small, 10).unwrap(),
        CryptoOp::new(&nonce(2), AAD, &mut fine, 20).unwrap(),
    ];
    key.seal_batch(&mut ops).unwrap();
    assert_eq!(ops[0].result(), Err(Status::BUFFER_TOO_SMALL));
    assert_eq!(ops[1].result(), Ok(36));

    // What the safe wrappers cannot express, through the raw vtable.
    let plugin = suite.plugin();
    for misuse in Misuse::ALL {
        let answer = c_host::misuse(plugin, &KEY, misuse);
        let expected = match misuse {
            Misuse::SealNullOps | Misuse::OpenNullKey => Answer {
                call: Status::INVALID_ARGUMENT,
                op: None,
            },
            _ => Answer {
                call: Status::OK,
                op: Some(Status::INVALID_ARGUMENT),
            },
        };
        assert_eq!(answer, expected, "{misuse:?}");
    }
}

fn matches_the_statically_linked_suite(subject: &Subject) {
    let dynamic = subject.dynamic();
    let linked = subject.statically_linked();
    assert_eq!(dynamic.info(), linked.info());
    let (dyn_key, static_key) = (
        dynamic.key_new(&KEY).unwrap(),
        linked.key_new(&KEY).unwrap(),
    );
    for (i, size) in SIZES.into_iter().enumerate() {
        let n = nonce(500 + i as u64);
        let mut sealed = seal(&dyn_key, &n, AAD, size);
        assert_eq!(sealed, seal(&static_key, &n, AAD, size), "size {size}");
        assert_eq!(static_key.open_in_place(&n, AAD, &mut sealed), Ok(size));
    }
}

fn shares_a_key_across_threads(subject: &Subject) {
    let key = Arc::new(subject.dynamic().key_new(&KEY).unwrap());
    let reference = subject.statically_linked().key_new(&KEY).unwrap();
    const PER_THREAD: u64 = 300;
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let key = Arc::clone(&key);
            std::thread::spawn(move || {
                (0..PER_THREAD)
                    .map(|i| {
                        let size = SIZES[(i as usize + t as usize) % SIZES.len()];
                        let n = nonce(t * PER_THREAD + i);
                        (n, size, seal(&key, &n, AAD, size))
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    for thread in threads {
        for (n, size, mut sealed) in thread.join().unwrap() {
            assert_eq!(sealed, seal(&reference, &n, AAD, size));
            assert_eq!(key.open_in_place(&n, AAD, &mut sealed), Ok(size));
        }
    }
}
