//! The key API's error cases and its failed-open buffer behaviour, for both algorithms
//! the suites use (their known-answer tests are in the suite crates).

use cyphonic_ring_aead::{Error, RingAeadKey, RingAlgorithm, TAG_LEN};

struct Gcm;
impl RingAlgorithm for Gcm {
    const ALGORITHM: &'static ring::aead::Algorithm = &ring::aead::AES_256_GCM;
    const NAME: &'static str = "AES-256-GCM";
}

struct ChaCha;
impl RingAlgorithm for ChaCha {
    const ALGORITHM: &'static ring::aead::Algorithm = &ring::aead::CHACHA20_POLY1305;
    const NAME: &'static str = "ChaCha20-Poly1305";
}

#[test]
fn key_api_errors() {
    check_key_api_errors::<Gcm>();
    check_key_api_errors::<ChaCha>();
}

/// `ring` decrypts while it authenticates; a failed open must not leave unauthenticated
/// plaintext behind (the key API documents that the ciphertext is zeroed).
#[test]
fn failed_open_leaves_no_plaintext() {
    check_failed_open::<Gcm>();
    check_failed_open::<ChaCha>();
}

#[test]
fn debug_hides_the_key() {
    let key = RingAeadKey::<Gcm>::new(&[0x5a; 32]).expect("32-byte key");
    assert_eq!(format!("{key:?}"), "RingAeadKey(AES-256-GCM, ..)");
}

fn check_key_api_errors<A: RingAlgorithm>() {
    assert_eq!(
        RingAeadKey::<A>::new(&[0; 31]).err(),
        Some(Error::InvalidKeyLength(31)),
        "{}",
        A::NAME
    );
    let key = RingAeadKey::<A>::new(&[0; 32]).expect("32-byte key");
    let mut buf = [0u8; 20];
    assert_eq!(
        key.seal(&[0; 12], b"", &mut buf, 21),
        Err(Error::InvalidLength {
            plaintext_len: 21,
            buf_len: 20
        }),
        "{}",
        A::NAME
    );
    assert_eq!(
        key.seal(&[0; 12], b"", &mut buf, 5),
        Err(Error::BufferTooSmall {
            needed: 21,
            available: 20
        }),
        "{}",
        A::NAME
    );
    assert_eq!(
        key.open(&[0; 12], b"", &mut buf[..15]),
        Err(Error::AuthenticationFailed),
        "{}",
        A::NAME
    );
}

fn check_failed_open<A: RingAlgorithm>() {
    let key = RingAeadKey::<A>::new(&[7; 32]).expect("32-byte key");
    let nonce = [9; 12];
    let plaintext = [0x42u8; 64];
    let mut sealed = plaintext.to_vec();
    sealed.resize(plaintext.len() + TAG_LEN, 0);
    let len = key
        .seal(&nonce, b"aad", &mut sealed, plaintext.len())
        .expect("seal");
    assert_eq!(len, plaintext.len() + TAG_LEN, "{}", A::NAME);
    let ct_len = plaintext.len();
    // Otherwise the zero check below could not fail.
    assert!(sealed[..ct_len].iter().any(|&b| b != 0), "{}", A::NAME);

    *sealed.last_mut().expect("a tag") ^= 1;
    let tag = sealed[ct_len..].to_vec();
    assert_eq!(
        key.open(&nonce, b"aad", &mut sealed),
        Err(Error::AuthenticationFailed),
        "{}",
        A::NAME
    );
    assert!(
        sealed[..ct_len].iter().all(|&b| b == 0),
        "{}: {sealed:02x?}",
        A::NAME
    );
    assert_eq!(sealed[ct_len..], tag[..], "{}", A::NAME);
}
