//! Handshake flood defence after WireGuard's cookie mechanism, as the tunnel uses it:
//! mac1 on every request and response (one HMAC before any Diffie-Hellman), and while
//! the responder is under load mac2 and 64-byte cookie replies binding a request to its
//! source address. [`CookieChecker`] is the responder's side; `docs/protocol.md` has
//! the formulas. The channel uses the same code (`src/cookie.rs`).
//!
//! What is the tunnel's own: cookies are keyed by the source address's own octets (4
//! for IPv4, 16 for IPv6), an initiator keeps a cookie for [`COOKIE_LIFETIME`], and
//! replies are parsed with [`crate::wire::handshake::CookieReplyPacket`].

use std::time::Duration;

use zeroize::Zeroizing;

use crate::cookie::{COOKIE_LEN, MAC_LEN, open_cookie};
use crate::wire::handshake::CookieReplyPacket;

pub use crate::cookie::{COOKIE_SECRET_LIFETIME, CookieChecker};

/// How long an initiator uses a cookie it received: a little less than the secret's
/// lifetime, so that it is not used just as the responder forgets the secret.
pub const COOKIE_LIFETIME: Duration = Duration::from_secs(115);

/// Opens a CookieReply sealed by `responder_static` for a request whose mac1 was
/// `mac1_sent`. Any failure means the reply is malformed, forged or answers another
/// request.
pub(crate) fn open_cookie_reply(
    responder_static: &[u8; 32],
    reply: &[u8],
    mac1_sent: &[u8; MAC_LEN],
) -> Option<Zeroizing<[u8; COOKIE_LEN]>> {
    let packet = CookieReplyPacket::new_checked(reply).ok()?;
    open_cookie(
        &crate::cookie::cookie_key(responder_static),
        packet.nonce().try_into().ok()?,
        packet.encrypted_cookie().try_into().ok()?,
        mac1_sent,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cookie::tests::message_with_macs;
    use crate::wire::WireError;
    use crate::wire::handshake::COOKIE_REPLY_LEN;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;
    use std::net::SocketAddr;
    use std::time::Instant;

    #[test]
    fn cookie_round_trip() {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let responder = [7u8; 32];
        let mut checker = CookieChecker::new(&responder);
        let now = Instant::now();
        let src: SocketAddr = "192.0.2.10:4500".parse().unwrap();
        let msg = message_with_macs(&responder, None, b"request body");
        let mac2_at = msg.len() - 16;
        assert!(!checker.verify_mac2(now, &mut rng, src, &msg, mac2_at));

        let mac1: [u8; 16] = msg[mac2_at - 16..mac2_at].try_into().unwrap();
        let mut reply = [0u8; COOKIE_REPLY_LEN];
        let n = checker
            .write_cookie_reply(now, &mut rng, src, 42, &mac1, &mut reply)
            .unwrap();
        assert_eq!(n, 64);
        assert_eq!(&reply[..8], &[1, 0x12, 0, 0, 0, 0, 0, 42]);
        let cookie = open_cookie_reply(&responder, &reply, &mac1).unwrap();
        // Bound to the message it answers and to the responder key.
        assert!(open_cookie_reply(&responder, &reply, &[0; 16]).is_none());
        assert!(open_cookie_reply(&[8; 32], &reply, &mac1).is_none());
        let mut tampered = reply;
        tampered[40] ^= 1;
        assert!(open_cookie_reply(&responder, &tampered, &mac1).is_none());
        assert!(open_cookie_reply(&responder, &reply[..63], &mac1).is_none());

        let retry = message_with_macs(&responder, Some(&cookie), b"request body");
        assert!(checker.verify_mac2(now, &mut rng, src, &retry, mac2_at));
        // The cookie is tied to the source address and port.
        let other: SocketAddr = "192.0.2.10:4501".parse().unwrap();
        assert!(!checker.verify_mac2(now, &mut rng, other, &retry, mac2_at));
        let v6: SocketAddr = "[2001:db8::1]:4500".parse().unwrap();
        assert!(!checker.verify_mac2(now, &mut rng, v6, &retry, mac2_at));
        // The tunnel writes the address's own octets: the v4-mapped form is another
        // source.
        let mapped: SocketAddr = "[::ffff:192.0.2.10]:4500".parse().unwrap();
        assert!(!checker.verify_mac2(now, &mut rng, mapped, &retry, mac2_at));
        // And it dies with the secret.
        let later = now + COOKIE_SECRET_LIFETIME;
        assert!(!checker.verify_mac2(later, &mut rng, src, &retry, mac2_at));
    }

    #[test]
    fn cookie_reply_needs_room() {
        let mut rng = ChaCha20Rng::seed_from_u64(2);
        let mut checker = CookieChecker::new(&[7; 32]);
        let src: SocketAddr = "192.0.2.10:4500".parse().unwrap();
        let mut small = [0u8; 63];
        assert!(matches!(
            checker.write_cookie_reply(Instant::now(), &mut rng, src, 1, &[0; 16], &mut small),
            Err(WireError::BufferTooSmall { .. })
        ));
    }
}
