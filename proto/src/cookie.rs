//! Handshake flood defence after WireGuard's cookie mechanism, shared by the tunnel
//! (TunnelRequest / TunnelResponse) and the channel (ChannelHello). "Receiver" below is
//! whoever a handshake message is addressed to: a node for the tunnel, the cloud's
//! channel key for the channel.
//!
//! - **mac1** = HMAC-SHA256(SHA-256("mac1----" || receiver static public), message up
//!   to mac1)[..16]. Anyone who knows the receiver's public key can compute it, so it
//!   proves nothing about the sender; it lets a receiver drop junk and scans for the
//!   price of one HMAC, before any Diffie-Hellman.
//! - **mac2** = HMAC-SHA256(cookie, message up to mac2)[..16], or zeros without a
//!   cookie. Only checked while the host says the receiver is under load; a message
//!   without a valid mac2 then gets a 64-byte cookie reply instead of a DH.
//! - **cookie** = HMAC-SHA256(secret, source address || source port)[..16], where the
//!   secret is fresh random bytes every two minutes. Only someone who receives packets
//!   at the source address can learn it, so a flood from spoofed addresses stops at
//!   the cookie reply. How the address is written differs per protocol
//!   ([`AddressForm`]).
//! - The cookie travels XChaCha20-Poly1305-sealed under SHA-256("cookie--" || receiver
//!   static public) with the mac1 of the message it answers as associated data, so an
//!   off-path attacker can neither read it nor inject a reply for a message it did not
//!   see.
//!
//! The two cookie replies have the same 64-byte layout; each protocol writes and
//! parses it with its own wire type and uses [`CookieChecker::seal_cookie`] and
//! [`open_cookie`] for the cryptography.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{Tag, XChaCha20Poly1305};
use hmac::{Hmac, Mac};
use rand_core::{CryptoRng, RngCore};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::suite::TAG_LEN;
use crate::wire::WireError;
use crate::wire::handshake::{COOKIE_REPLY_LEN, CookieReplyRepr};

/// Bytes of mac1, mac2 and of a cookie.
pub(crate) const MAC_LEN: usize = 16;
pub(crate) const COOKIE_LEN: usize = MAC_LEN;
/// Bytes of the XChaCha20 nonce of a cookie reply.
pub(crate) const COOKIE_NONCE_LEN: usize = 24;
/// Bytes of a sealed cookie: the cookie and its tag.
pub(crate) const SEALED_COOKIE_LEN: usize = COOKIE_LEN + TAG_LEN;

// Both cookie replies and both handshake layouts use these sizes.
const _: () = {
    use crate::wire::{channel, handshake};
    assert!(MAC_LEN == handshake::MAC_LEN && MAC_LEN == channel::MAC_LEN);
    assert!(COOKIE_LEN == handshake::COOKIE_LEN);
    assert!(COOKIE_NONCE_LEN == handshake::COOKIE_NONCE_LEN);
    assert!(COOKIE_NONCE_LEN == channel::COOKIE_NONCE_LEN);
    assert!(COOKIE_REPLY_LEN == channel::COOKIE_REPLY_LEN);
};

/// How long a receiver's cookie secret lives before it is replaced.
pub const COOKIE_SECRET_LIFETIME: Duration = Duration::from_secs(120);

const MAC1_LABEL: &[u8] = b"mac1----";
const COOKIE_LABEL: &[u8] = b"cookie--";

type HmacSha256 = Hmac<Sha256>;

/// The key mac1 is computed with for messages addressed to `receiver_static`.
pub(crate) fn mac1_key(receiver_static: &[u8; 32]) -> [u8; 32] {
    labelled_key(MAC1_LABEL, receiver_static)
}

/// The key cookie replies from `receiver_static` are sealed with.
pub(crate) fn cookie_key(receiver_static: &[u8; 32]) -> [u8; 32] {
    labelled_key(COOKIE_LABEL, receiver_static)
}

/// HMAC-SHA256 truncated to 16 bytes: mac1, mac2 and cookies.
pub(crate) fn mac(key: &[u8], data: &[u8]) -> [u8; MAC_LEN] {
    let mut hmac =
        <HmacSha256 as Mac>::new_from_slice(key).expect("HMAC accepts keys of any length");
    hmac.update(data);
    truncate(hmac)
}

/// mac2 of `covered` (the message up to mac2): zeros when the sender holds no cookie.
pub(crate) fn mac2(cookie: Option<&[u8; COOKIE_LEN]>, covered: &[u8]) -> [u8; MAC_LEN] {
    cookie.map_or([0; MAC_LEN], |c| mac(c, covered))
}

/// Compares in constant time: a timing difference would let an attacker find a valid
/// MAC byte by byte.
pub(crate) fn mac_matches(key: &[u8], data: &[u8], expected: &[u8]) -> bool {
    bool::from(mac(key, data).ct_eq(expected))
}

/// Opens a cookie sealed by [`CookieChecker::seal_cookie`] under `cookie_key` for a
/// message whose mac1 was `mac1_sent`. `None` means the reply is forged or answers
/// another message.
pub(crate) fn open_cookie(
    cookie_key: &[u8; 32],
    nonce: &[u8; COOKIE_NONCE_LEN],
    sealed: &[u8; SEALED_COOKIE_LEN],
    mac1_sent: &[u8; MAC_LEN],
) -> Option<Zeroizing<[u8; COOKIE_LEN]>> {
    let mut cookie = Zeroizing::new([0u8; COOKIE_LEN]);
    cookie.copy_from_slice(&sealed[..COOKIE_LEN]);
    XChaCha20Poly1305::new(cookie_key.into())
        .decrypt_in_place_detached(
            nonce.into(),
            mac1_sent,
            &mut cookie[..],
            Tag::from_slice(&sealed[COOKIE_LEN..]),
        )
        .ok()?;
    Some(cookie)
}

/// A cookie a sender received, kept to compute mac2 for its next handshake messages
/// to the same receiver.
pub(crate) struct ReceivedCookie {
    value: Zeroizing<[u8; COOKIE_LEN]>,
    received: Instant,
}

impl std::fmt::Debug for ReceivedCookie {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReceivedCookie")
            .field("received", &self.received)
            .finish_non_exhaustive()
    }
}

impl ReceivedCookie {
    pub(crate) fn new(value: Zeroizing<[u8; COOKIE_LEN]>, received: Instant) -> Self {
        Self { value, received }
    }

    /// The cookie, while it is younger than `lifetime` (each protocol keeps it for a
    /// little less than, or as long as, the receiver's secret lives).
    pub(crate) fn fresh(&self, now: Instant, lifetime: Duration) -> Option<&[u8; COOKIE_LEN]> {
        (now.saturating_duration_since(self.received) < lifetime).then_some(&*self.value)
    }
}

/// How a source address is written into the cookie MAC (see `docs/protocol.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AddressForm {
    /// The address's own octets: 4 for IPv4, 16 for IPv6 (the tunnel).
    Octets,
    /// Always 16 octets, IPv4 as IPv4-mapped IPv6 (the channel), so that a dual-stack
    /// socket reporting either form gives the same cookie.
    V4Mapped,
}

/// A cookie sealed for a cookie reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SealedCookie {
    pub(crate) nonce: [u8; COOKIE_NONCE_LEN],
    pub(crate) encrypted_cookie: [u8; SEALED_COOKIE_LEN],
}

/// The receiver's side of the cookie mechanism: checks mac1 and mac2 and seals cookie
/// replies. One per static key (it is keyed by it).
pub struct CookieChecker {
    mac1_key: [u8; 32],
    cookie_key: [u8; 32],
    address_form: AddressForm,
    secret: Zeroizing<[u8; 32]>,
    secret_born: Option<Instant>,
}

impl std::fmt::Debug for CookieChecker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CookieChecker")
            .field("address_form", &self.address_form)
            .field("secret_born", &self.secret_born)
            .finish_non_exhaustive()
    }
}

impl CookieChecker {
    /// The tunnel's checker for the node whose static key is `static_public`.
    pub fn new(static_public: &[u8; 32]) -> Self {
        Self::with_address_form(static_public, AddressForm::Octets)
    }

    pub(crate) fn with_address_form(static_public: &[u8; 32], address_form: AddressForm) -> Self {
        Self {
            mac1_key: mac1_key(static_public),
            cookie_key: cookie_key(static_public),
            address_form,
            secret: Zeroizing::new([0; 32]),
            secret_born: None,
        }
    }

    /// True when `message[mac1_offset..mac1_offset + 16]` is the mac1 of the bytes
    /// before it, computed for our static key.
    pub fn verify_mac1(&self, message: &[u8], mac1_offset: usize) -> bool {
        verify_at(&self.mac1_key, message, mac1_offset)
    }

    /// True when `message[mac2_offset..mac2_offset + 16]` is the mac2 of the bytes
    /// before it under the cookie we would give `source` right now.
    pub fn verify_mac2(
        &mut self,
        now: Instant,
        rng: &mut (impl RngCore + CryptoRng),
        source: SocketAddr,
        message: &[u8],
        mac2_offset: usize,
    ) -> bool {
        let cookie = self.cookie_for(now, rng, source);
        verify_at(&cookie[..], message, mac2_offset)
    }

    /// Writes a tunnel CookieReply for a message from `source` whose mac1 was `mac1`
    /// and whose sender index was `receiver_index`; returns its length (64).
    pub fn write_cookie_reply(
        &mut self,
        now: Instant,
        rng: &mut (impl RngCore + CryptoRng),
        source: SocketAddr,
        receiver_index: u32,
        mac1: &[u8],
        out: &mut [u8],
    ) -> Result<usize, WireError> {
        // Checked before sealing so that a short buffer costs no randomness.
        if out.len() < COOKIE_REPLY_LEN {
            return Err(WireError::BufferTooSmall {
                needed: COOKIE_REPLY_LEN,
                available: out.len(),
            });
        }
        let SealedCookie {
            nonce,
            encrypted_cookie,
        } = self.seal_cookie(now, rng, source, mac1);
        CookieReplyRepr {
            receiver_index,
            nonce,
            encrypted_cookie,
        }
        .emit(out)
    }

    /// Seals the cookie for `source` for a reply to a message whose mac1 was `mac1`,
    /// under a fresh random nonce.
    pub(crate) fn seal_cookie(
        &mut self,
        now: Instant,
        rng: &mut (impl RngCore + CryptoRng),
        source: SocketAddr,
        mac1: &[u8],
    ) -> SealedCookie {
        let cookie = self.cookie_for(now, rng, source);
        let mut nonce = [0u8; COOKIE_NONCE_LEN];
        rng.fill_bytes(&mut nonce);
        let mut encrypted_cookie = [0u8; SEALED_COOKIE_LEN];
        let (plain, tag_out) = encrypted_cookie.split_at_mut(COOKIE_LEN);
        plain.copy_from_slice(&cookie[..]);
        let tag = XChaCha20Poly1305::new((&self.cookie_key).into())
            .encrypt_in_place_detached((&nonce).into(), mac1, plain)
            .expect("a cookie is far below the AEAD length limit");
        tag_out.copy_from_slice(&tag);
        SealedCookie {
            nonce,
            encrypted_cookie,
        }
    }

    fn cookie_for(
        &mut self,
        now: Instant,
        rng: &mut (impl RngCore + CryptoRng),
        source: SocketAddr,
    ) -> Zeroizing<[u8; COOKIE_LEN]> {
        let stale = self
            .secret_born
            .is_none_or(|born| now.saturating_duration_since(born) >= COOKIE_SECRET_LIFETIME);
        if stale {
            rng.fill_bytes(&mut self.secret[..]);
            self.secret_born = Some(now);
        }
        let mut hmac = <HmacSha256 as Mac>::new_from_slice(&self.secret[..])
            .expect("HMAC accepts keys of any length");
        match (self.address_form, source.ip()) {
            (AddressForm::Octets, IpAddr::V4(ip)) => hmac.update(&ip.octets()),
            (AddressForm::V4Mapped, IpAddr::V4(ip)) => hmac.update(&ip.to_ipv6_mapped().octets()),
            (_, IpAddr::V6(ip)) => hmac.update(&ip.octets()),
        }
        hmac.update(&source.port().to_be_bytes());
        Zeroizing::new(truncate(hmac))
    }
}

fn labelled_key(label: &[u8], static_public: &[u8; 32]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(label);
    hasher.update(static_public);
    hasher.finalize().into()
}

fn truncate(hmac: HmacSha256) -> [u8; MAC_LEN] {
    let full = hmac.finalize().into_bytes();
    let mut out = [0u8; MAC_LEN];
    out.copy_from_slice(&full[..MAC_LEN]);
    out
}

/// True when `message[offset..offset + 16]` is the MAC under `key` of the bytes before
/// it; false when the message is too short.
fn verify_at(key: &[u8], message: &[u8], offset: usize) -> bool {
    match (message.get(..offset), message.get(offset..)) {
        (Some(covered), Some(rest)) if rest.len() >= MAC_LEN => {
            mac_matches(key, covered, &rest[..MAC_LEN])
        }
        _ => false,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    /// `body || mac1 || mac2` as a sender to `receiver_static` holding `cookie` writes it.
    pub(crate) fn message_with_macs(
        receiver_static: &[u8; 32],
        cookie: Option<&[u8; 16]>,
        body: &[u8],
    ) -> Vec<u8> {
        let mut msg = body.to_vec();
        let m1 = mac(&mac1_key(receiver_static), &msg);
        msg.extend_from_slice(&m1);
        let m2 = mac2(cookie, &msg);
        msg.extend_from_slice(&m2);
        msg
    }

    #[test]
    fn mac1_is_bound_to_the_receiver_and_the_bytes() {
        let checker = CookieChecker::new(&[1; 32]);
        let msg = message_with_macs(&[1; 32], None, b"hello handshake");
        let at = msg.len() - 32;
        assert!(checker.verify_mac1(&msg, at));
        assert_eq!(&msg[at + 16..], &[0; 16], "no cookie, zero mac2");
        let other = message_with_macs(&[2; 32], None, b"hello handshake");
        assert!(!checker.verify_mac1(&other, at));
        for i in 0..at + 16 {
            let mut m = msg.clone();
            m[i] ^= 1;
            assert!(!checker.verify_mac1(&m, at), "byte {i}");
        }
        assert!(!checker.verify_mac1(&msg[..10], at));
        assert!(!checker.verify_mac1(&msg[..at + 15], at));
    }

    #[test]
    fn sealed_cookies_open_only_for_their_message_and_key() {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let receiver = [7u8; 32];
        let mut checker = CookieChecker::new(&receiver);
        let now = Instant::now();
        let src: SocketAddr = "192.0.2.10:4500".parse().unwrap();
        let mac1 = [5u8; 16];
        let sealed = checker.seal_cookie(now, &mut rng, src, &mac1);
        let key = cookie_key(&receiver);
        let cookie = open_cookie(&key, &sealed.nonce, &sealed.encrypted_cookie, &mac1).unwrap();
        let msg = message_with_macs(&receiver, Some(&cookie), b"retry");
        assert!(checker.verify_mac2(now, &mut rng, src, &msg, msg.len() - 16));

        assert!(open_cookie(&key, &sealed.nonce, &sealed.encrypted_cookie, &[0; 16]).is_none());
        let other_key = cookie_key(&[8; 32]);
        assert!(open_cookie(&other_key, &sealed.nonce, &sealed.encrypted_cookie, &mac1).is_none());
        for i in 0..SEALED_COOKIE_LEN {
            let mut tampered = sealed.encrypted_cookie;
            tampered[i] ^= 1;
            assert!(open_cookie(&key, &sealed.nonce, &tampered, &mac1).is_none());
        }
        let mut nonce = sealed.nonce;
        nonce[0] ^= 1;
        assert!(open_cookie(&key, &nonce, &sealed.encrypted_cookie, &mac1).is_none());
    }

    #[test]
    fn cookies_are_bound_to_the_source_and_die_with_the_secret() {
        let mut rng = ChaCha20Rng::seed_from_u64(3);
        let now = Instant::now();
        let v4: SocketAddr = "192.0.2.10:4500".parse().unwrap();
        let mapped: SocketAddr = "[::ffff:192.0.2.10]:4500".parse().unwrap();
        for form in [AddressForm::Octets, AddressForm::V4Mapped] {
            let mut checker = CookieChecker::with_address_form(&[7; 32], form);
            let cookie = checker.cookie_for(now, &mut rng, v4);
            assert_eq!(checker.cookie_for(now, &mut rng, v4), cookie);
            let other_port: SocketAddr = "192.0.2.10:4501".parse().unwrap();
            assert_ne!(checker.cookie_for(now, &mut rng, other_port), cookie);
            let v6: SocketAddr = "[2001:db8::1]:4500".parse().unwrap();
            assert_ne!(checker.cookie_for(now, &mut rng, v6), cookie);
            let same_for_mapped = checker.cookie_for(now, &mut rng, mapped) == cookie;
            assert_eq!(same_for_mapped, form == AddressForm::V4Mapped);
            let just_before = now + COOKIE_SECRET_LIFETIME - Duration::from_millis(1);
            assert_eq!(checker.cookie_for(just_before, &mut rng, v4), cookie);
            let later = now + COOKIE_SECRET_LIFETIME;
            assert_ne!(checker.cookie_for(later, &mut rng, v4), cookie);
        }
    }

    #[test]
    fn cookie_derivation_is_hmac_of_address_and_port() {
        // The secret is the first 32 bytes the checker draws.
        let mut rng = ChaCha20Rng::seed_from_u64(4);
        let mut secret = [0u8; 32];
        rng.clone().fill_bytes(&mut secret);
        let now = Instant::now();
        let src: SocketAddr = "192.0.2.10:4500".parse().unwrap();
        let mut octets = CookieChecker::with_address_form(&[7; 32], AddressForm::Octets);
        let mut mapped = CookieChecker::with_address_form(&[7; 32], AddressForm::V4Mapped);
        let a = octets.cookie_for(now, &mut rng.clone(), src);
        let b = mapped.cookie_for(now, &mut rng, src);
        assert_eq!(*a, mac(&secret, &[192, 0, 2, 10, 0x11, 0x94]));
        let mut v4_mapped = vec![0u8; 10];
        v4_mapped.extend_from_slice(&[0xff, 0xff, 192, 0, 2, 10, 0x11, 0x94]);
        assert_eq!(*b, mac(&secret, &v4_mapped));
    }

    #[test]
    fn received_cookies_expire() {
        let now = Instant::now();
        let lifetime = Duration::from_secs(115);
        let cookie = ReceivedCookie::new(Zeroizing::new([4; 16]), now);
        assert_eq!(cookie.fresh(now, lifetime), Some(&[4; 16]));
        let almost = now + lifetime - Duration::from_millis(1);
        assert_eq!(cookie.fresh(almost, lifetime), Some(&[4; 16]));
        assert_eq!(cookie.fresh(now + lifetime, lifetime), None);
        assert!(!format!("{cookie:?}").contains("4, 4"));
    }
}
