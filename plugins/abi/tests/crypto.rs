//! A toy crypto suite exported with `crypto_suite_plugin!` and linked statically, driven
//! through the host's safe wrappers: round trips, per-op statuses, panics, bad lengths
//! on both sides of the boundary, key lifetime, threads.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use cyphonic_plugin_abi::{
    CryptoInfo, CryptoOp, CryptoSuite, CryptoSuitePlugin, Plugin, PluginFailure, PluginKind, Status,
};

const TAG_LEN: usize = 16;

/// XOR with a key/nonce stream and a checksum "tag". Not cryptography: a toy whose
/// results are easy to check. Special aad values trigger misbehaviour for the tests.
struct XorSuite;

/// Drops of keys made from [`MARKED_KEY`] (only one test uses it; tests run in parallel).
static MARKED_DROPS: AtomicUsize = AtomicUsize::new(0);
const MARKED_KEY: [u8; 32] = [3; 32];

struct XorKey([u8; 32]);

impl Drop for XorKey {
    fn drop(&mut self) {
        if self.0 == MARKED_KEY {
            MARKED_DROPS.fetch_add(1, Ordering::SeqCst);
        }
    }
}

fn stream_byte(key: &XorKey, nonce: &[u8; 12], i: usize) -> u8 {
    key.0[i % 32] ^ nonce[i % 12] ^ (i as u8)
}

fn tag(key: &XorKey, aad: &[u8], ciphertext: &[u8]) -> [u8; TAG_LEN] {
    let mut t = [0u8; TAG_LEN];
    for (i, b) in aad.iter().chain(ciphertext).enumerate() {
        t[i % TAG_LEN] = t[i % TAG_LEN]
            .wrapping_mul(31)
            .wrapping_add(*b ^ key.0[i % 32]);
    }
    t
}

impl CryptoSuite for XorSuite {
    type Key = XorKey;
    const INFO: CryptoInfo = CryptoInfo::new(0x7e57, 32, TAG_LEN as u32, 1 << 20);

    fn key_new(key: &[u8]) -> Result<XorKey, PluginFailure> {
        if key[0] == 0xff {
            return Err(PluginFailure::invalid_argument("x".repeat(1000)));
        }
        let mut k = [0u8; 32];
        k.copy_from_slice(key);
        Ok(XorKey(k))
    }

    fn seal(
        key: &XorKey,
        nonce: &[u8; 12],
        aad: &[u8],
        buf: &mut [u8],
        plaintext_len: usize,
    ) -> Result<usize, PluginFailure> {
        match aad {
            b"panic" => panic!("boom"),
            b"overlong" => return Ok(buf.len() + 1),
            _ => {}
        }
        for (i, b) in buf[..plaintext_len].iter_mut().enumerate() {
            *b ^= stream_byte(key, nonce, i);
        }
        let t = tag(key, aad, &buf[..plaintext_len]);
        buf[plaintext_len..plaintext_len + TAG_LEN].copy_from_slice(&t);
        Ok(plaintext_len + TAG_LEN)
    }

    fn open(
        key: &XorKey,
        nonce: &[u8; 12],
        aad: &[u8],
        buf: &mut [u8],
    ) -> Result<usize, PluginFailure> {
        let n = buf.len() - TAG_LEN;
        if tag(key, aad, &buf[..n]) != buf[n..] {
            return Err(PluginFailure::auth_failed());
        }
        for (i, b) in buf[..n].iter_mut().enumerate() {
            *b ^= stream_byte(key, nonce, i);
        }
        Ok(n)
    }
}

mod xor_plugin {
    cyphonic_plugin_abi::crypto_suite_plugin!(
        name: "xor-toy",
        version: env!("CARGO_PKG_VERSION"),
        suite: super::XorSuite,
    );
}

fn suite() -> CryptoSuitePlugin {
    let plugin =
        Plugin::from_static(xor_plugin::plugin_header(), "static:xor-toy").expect("valid header");
    CryptoSuitePlugin::new(plugin).expect("a crypto suite")
}

const KEY: [u8; 32] = [7; 32];
const NONCE: [u8; 12] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12];

#[test]
fn static_plugin_reports_its_identity() {
    let suite = suite();
    let plugin = suite.plugin();
    assert_eq!(plugin.name(), "xor-toy");
    assert_eq!(plugin.version(), env!("CARGO_PKG_VERSION"));
    assert_eq!(plugin.kind(), PluginKind::CryptoSuite);
    assert_eq!(plugin.abi().to_string(), "1.0");
    assert_eq!(plugin.path().to_str(), Some("static:xor-toy"));
    let info = suite.info();
    assert_eq!(
        (info.suite_id, info.key_len, info.nonce_len, info.tag_len),
        (0x7e57, 32, 12, 16)
    );
    assert_eq!(info.max_messages_per_key, 1 << 20);
}

#[test]
fn seal_then_open_in_place_round_trips() {
    let key = suite().key_new(&KEY).expect("key");
    let plaintext = b"hello, overlay";
    let mut buf = [0u8; 64];
    buf[..plaintext.len()].copy_from_slice(plaintext);
    let sealed = key
        .seal_in_place(&NONCE, b"hdr", &mut buf, plaintext.len())
        .expect("seal");
    assert_eq!(sealed, plaintext.len() + TAG_LEN);
    assert_ne!(&buf[..plaintext.len()], plaintext);

    let opened = key
        .open_in_place(&NONCE, b"hdr", &mut buf[..sealed])
        .expect("open");
    assert_eq!(&buf[..opened], plaintext);
}

#[test]
fn a_bad_tag_is_auth_failed() {
    let key = suite().key_new(&KEY).expect("key");
    let mut buf = [0u8; 40];
    let sealed = key
        .seal_in_place(&NONCE, b"hdr", &mut buf, 20)
        .expect("seal");
    buf[3] ^= 1;
    let err = key
        .open_in_place(&NONCE, b"hdr", &mut buf[..sealed])
        .unwrap_err();
    assert_eq!(err.status, Status::AUTH_FAILED);
    assert_eq!(err.message(), "authentication failed");

    // Shorter than a tag: refused by the glue before the suite sees it.
    let err = key
        .open_in_place(&NONCE, b"hdr", &mut buf[..5])
        .unwrap_err();
    assert_eq!(err.status, Status::AUTH_FAILED);
}

#[test]
fn batches_carry_a_status_per_op() {
    let key = suite().key_new(&KEY).expect("key");
    let mut a = [0x11u8; 48];
    let mut b = [0x22u8; 20]; // 10 bytes of plaintext, no room for the tag
    let mut c = [0x33u8; 48];
    {
        let mut ops = [
            CryptoOp::new(&NONCE, b"a", &mut a, 32).expect("op"),
            CryptoOp::new(&NONCE, b"b", &mut b, 10).expect("op"),
            CryptoOp::new(&[9; 12], b"c", &mut c, 0).expect("op"),
        ];
        key.seal_batch(&mut ops).expect("batch processed");
        assert_eq!(ops[0].result(), Ok(48));
        assert_eq!(ops[1].result(), Err(Status::BUFFER_TOO_SMALL));
        assert_eq!(ops[2].result(), Ok(16));
    }
    let mut ops = [
        CryptoOp::new(&NONCE, b"a", &mut a, 48).expect("op"),
        CryptoOp::new(&[9; 12], b"wrong aad", &mut c, 16).expect("op"),
    ];
    key.open_batch(&mut ops).expect("batch processed");
    assert_eq!(ops[0].result(), Ok(32));
    assert_eq!(ops[1].status(), Status::AUTH_FAILED);
    assert_eq!(a[..32], [0x11; 32]);
}

#[test]
fn op_constructor_refuses_a_length_past_the_buffer() {
    let mut buf = [0u8; 8];
    let err = CryptoOp::new(&NONCE, b"", &mut buf, 9).unwrap_err();
    assert_eq!(err.status(), Status::INVALID_ARGUMENT);
}

#[test]
fn a_panic_becomes_the_panic_status_with_its_message() {
    let key = suite().key_new(&KEY).expect("key");
    let mut buf = [0u8; 40];
    let err = key
        .seal_in_place(&NONCE, b"panic", &mut buf, 8)
        .unwrap_err();
    assert_eq!(err.status, Status::PANIC);
    assert_eq!(err.message(), "panicked: boom");

    // The key and plugin keep working afterwards.
    assert_eq!(key.seal_in_place(&NONCE, b"fine", &mut buf, 8), Ok(24));
}

#[test]
fn a_suite_length_past_the_buffer_is_caught_by_the_glue() {
    let key = suite().key_new(&KEY).expect("key");
    let mut buf = [0u8; 40];
    let err = key
        .seal_in_place(&NONCE, b"overlong", &mut buf, 8)
        .unwrap_err();
    assert_eq!(err.status, Status::INTERNAL);
    assert!(err.message().contains("past buf_cap"), "{err}");
}

#[test]
fn wrong_key_length_is_invalid_argument_and_long_messages_arrive_whole() {
    let suite = suite();
    let err = suite.key_new(&[1; 5]).unwrap_err();
    assert_eq!(err.status, Status::INVALID_ARGUMENT);
    assert_eq!(err.message(), "key must be 32 bytes, got 5");

    let err = suite.key_new(&[0xff; 32]).unwrap_err();
    assert_eq!(err.message(), "x".repeat(1000));
}

#[test]
fn keys_are_freed_on_drop_and_shared_across_threads() {
    let suite = suite();
    let key = Arc::new(suite.key_new(&MARKED_KEY).expect("key"));
    let threads: Vec<_> = (0..4u8)
        .map(|t| {
            let key = Arc::clone(&key);
            std::thread::spawn(move || {
                for i in 0..200u8 {
                    let mut buf = [t ^ i; 64];
                    let nonce = [t, i, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
                    let n = key.seal_in_place(&nonce, &[t], &mut buf, 40).expect("seal");
                    let m = key
                        .open_in_place(&nonce, &[t], &mut buf[..n])
                        .expect("open");
                    assert_eq!(buf[..m], [t ^ i; 40]);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("thread");
    }
    let key = Arc::try_unwrap(key).expect("last reference");
    assert_eq!(MARKED_DROPS.load(Ordering::SeqCst), 0);
    drop(key);
    assert_eq!(MARKED_DROPS.load(Ordering::SeqCst), 1);
}

/// A hand-written plugin that violates the ABI: it reports success with impossible
/// lengths. The host wrappers must turn that into errors, never out-of-bounds slices.
#[allow(unsafe_code)]
mod garbage_plugin {
    use std::ffi::c_void;

    use cyphonic_plugin_abi::{CryptoInfo, CryptoOp, CryptoVtable, PluginHeader};

    unsafe extern "C" fn info(out: *mut CryptoInfo) -> i32 {
        // SAFETY: the host passes a writable, full-size `CryptoInfo`.
        unsafe { out.write(CryptoInfo::new(99, 32, 16, 1)) };
        0
    }

    unsafe extern "C" fn key_new(_key: *const u8, _len: usize, out: *mut *mut c_void) -> i32 {
        // SAFETY: the host passes a writable out-pointer. A dangling, never-dereferenced
        // handle is fine: this plugin ignores its keys.
        unsafe { out.write(std::ptr::NonNull::<u64>::dangling().as_ptr().cast()) };
        0
    }

    unsafe extern "C" fn key_free(_key: *mut c_void) {}

    /// Claims every op grew to `usize::MAX / 2` bytes, and succeeded.
    unsafe extern "C" fn garbage_batch(
        _key: *const c_void,
        ops: *mut CryptoOp<'_>,
        count: usize,
    ) -> i32 {
        // SAFETY: the host passes `count` ops. This is the only write path to the raw
        // fields outside the ABI crate: `CryptoOp` is `repr(C)` with `len` at offset 48
        // and `status` at 56 (checked by the C header test).
        unsafe {
            for i in 0..count {
                let op = ops.add(i).cast::<u8>();
                op.add(48).cast::<usize>().write(usize::MAX / 2);
                op.add(56).cast::<i32>().write(0);
            }
        }
        0
    }

    static VTABLE: CryptoVtable = CryptoVtable {
        struct_size: size_of::<CryptoVtable>() as u32,
        reserved: 0,
        info: Some(info),
        key_new: Some(key_new),
        key_free: Some(key_free),
        seal_batch: Some(garbage_batch),
        open_batch: Some(garbage_batch),
    };

    pub(crate) static HEADER: PluginHeader =
        PluginHeader::crypto_suite(c"garbage", c"0", &VTABLE, None);
}

#[test]
fn a_plugin_returning_a_garbage_length_is_caught() {
    let plugin =
        Plugin::from_static(&garbage_plugin::HEADER, "static:garbage").expect("valid header");
    let key = CryptoSuitePlugin::new(plugin)
        .expect("suite")
        .key_new(&KEY)
        .expect("key");
    let mut buf = [0u8; 64];
    let err = key.seal_in_place(&NONCE, b"", &mut buf, 10).unwrap_err();
    assert_eq!(err.status, Status::INTERNAL);
    assert!(err.message().contains("length"), "{err}");
    let err = key.open_in_place(&NONCE, b"", &mut buf[..40]).unwrap_err();
    assert_eq!(err.status, Status::INTERNAL);

    let mut other = [0u8; 64];
    let mut ops = [
        CryptoOp::new(&NONCE, b"", &mut buf, 10).expect("op"),
        CryptoOp::new(&NONCE, b"", &mut other, 10).expect("op"),
    ];
    let err = key.seal_batch(&mut ops).unwrap_err();
    assert_eq!(err.status, Status::INTERNAL);
    assert_eq!(ops[0].result(), Err(Status::INTERNAL));
    assert_eq!(ops[1].result(), Err(Status::INTERNAL));
}
