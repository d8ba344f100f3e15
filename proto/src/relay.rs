//! Relay tickets: how stateless TRS instances learn, without asking anyone, that two
//! nodes may meet through them.
//!
//! Every cloud instance derives the same [`RelayKey`] from the cloud secret. The NMS
//! mints a [`RelayTicket`] naming the two nodes and an expiry and MACs it with that key;
//! it also gives each node, privately inside its authenticated channel, that node's
//! [`bind_key`] (an HMAC of the ticket and the node id under the relay key). A node
//! proves to the TRS that it is one of the two by MACing its `RelayBind` with its bind
//! key; the TRS recomputes the bind key from the ticket, so it stores nothing per
//! ticket apart from anti-replay state. A node cannot bind for its peer (it does not
//! know the peer's bind key), and nobody without the relay key can mint or stretch a
//! ticket.
//!
//! Wire layouts live in [`crate::wire::relay`].

use std::fmt;

use hkdf::Hkdf;
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::time::UnixTime;
use crate::wire::NodeId;
pub use crate::wire::relay::RelayTicket;
use crate::wire::relay::{RelayBindRepr, ct_check, hmac_sha256};
use crate::wire::status::StatusCode;

/// How far a bind's timestamp may lie from the TRS clock, either way. Matches the skew
/// credentials tolerate; replays inside the window are stopped by the TRS's
/// per-(ticket, node) "timestamps only go up" rule.
pub const BIND_MAX_SKEW_SECS: u64 = crate::credential::CLOCK_SKEW_SECS;

const KEY_LABEL: &[u8] = b"cyphonic relay key v1";
const KEY_ID_LABEL: &[u8] = b"cyphonic relay key id v1";
const TICKET_LABEL: &[u8] = b"cyphonic ticket v1";
const BIND_KEY_LABEL: &[u8] = b"cyphonic bind key v1";

/// Why a ticket or bind was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RelayError {
    #[error("relay ticket was made with another relay key")]
    UnknownKey,
    #[error("relay ticket MAC does not verify")]
    BadTicketMac,
    #[error("node is not one of the ticket's two nodes")]
    NotInTicket,
    #[error("relay bind MAC does not verify")]
    BadBindMac,
    #[error("relay ticket expired at {0:?}")]
    Expired(UnixTime),
    #[error("relay bind timestamp is more than {BIND_MAX_SKEW_SECS} s away from now")]
    StaleBind,
}

impl RelayError {
    /// The status a TRS answers with in a `RelayBindAck`, or `None` when it must drop
    /// the bind without answering (the binder is not proven to hold the bind key, so an
    /// answer could not be authenticated and would only help a scanner).
    pub fn ack_status(&self) -> Option<StatusCode> {
        match self {
            Self::Expired(_) | Self::StaleBind => Some(StatusCode::EXPIRED),
            Self::UnknownKey | Self::BadTicketMac | Self::NotInTicket | Self::BadBindMac => None,
        }
    }
}

/// The symmetric key tickets and bind keys are derived from. Shared by every NMS and
/// TRS instance of one cloud; zeroized on drop and never printed.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct RelayKey {
    key: [u8; 32],
}

impl RelayKey {
    pub const LEN: usize = 32;

    /// Derives the relay key from the cloud secret (at least 32 bytes of secret key
    /// material) with HKDF-SHA256, so that it is independent of every other use of that
    /// secret.
    pub fn derive(cloud_secret: &[u8]) -> Self {
        let hkdf = Hkdf::<Sha256>::new(Some(KEY_LABEL), cloud_secret);
        let mut key = [0u8; 32];
        hkdf.expand(KEY_LABEL, &mut key)
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        Self { key }
    }

    pub fn from_bytes(key: [u8; 32]) -> Self {
        Self { key }
    }

    /// Names this key in tickets, so a TRS holding the current and the previous key
    /// during a rotation can pick the right one. Reveals nothing about the key.
    pub fn key_id(&self) -> [u8; 8] {
        let digest = Sha256::new()
            .chain_update(KEY_ID_LABEL)
            .chain_update(self.key)
            .finalize();
        let mut id = [0u8; 8];
        id.copy_from_slice(&digest[..8]);
        id
    }
}

impl fmt::Debug for RelayKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let id = self.key_id();
        write!(f, "RelayKey {{ key_id: ")?;
        for b in id {
            write!(f, "{b:02x}")?;
        }
        write!(f, ", .. }}")
    }
}

/// Mints the ticket that lets `a` and `b` meet at any TRS of this cloud until
/// `not_after`. `ticket_id` must be fresh random bytes (the NMS's RNG).
pub fn mint_ticket(
    key: &RelayKey,
    ticket_id: [u8; 16],
    a: NodeId,
    b: NodeId,
    not_after: UnixTime,
) -> RelayTicket {
    let mut ticket = RelayTicket {
        ticket_id,
        node_a: a,
        node_b: b,
        not_after,
        key_id: key.key_id(),
        mac: [0; 32],
    };
    ticket.mac = ticket_mac(key, &ticket);
    ticket
}

/// Checks that `ticket` was minted with `key` (constant-time MAC compare) and has not
/// expired at `now`.
pub fn verify_ticket(
    key: &RelayKey,
    ticket: &RelayTicket,
    now: UnixTime,
) -> Result<(), RelayError> {
    authenticate_ticket(key, ticket)?;
    if now > ticket.not_after {
        return Err(RelayError::Expired(ticket.not_after));
    }
    Ok(())
}

/// The key `node` MACs its binds to `ticket` with. The NMS sends it to that node only;
/// the TRS recomputes it. It does not check that `node` is in the ticket.
pub fn bind_key(key: &RelayKey, ticket: &RelayTicket, node: &NodeId) -> Zeroizing<[u8; 32]> {
    // The whole ticket, MAC included, goes in: a bind key exists only for a genuine ticket.
    Zeroizing::new(hmac_sha256(
        &key.key,
        BIND_KEY_LABEL,
        &[&ticket.to_bytes(), &node.0],
    ))
}

/// Everything a TRS checks about a bind that needs no state: the ticket is genuine,
/// the binder is one of its nodes, the bind MAC verifies under the binder's bind key,
/// the ticket has not expired and the timestamp is within [`BIND_MAX_SKEW_SECS`] of
/// `now`. Returns the bind key for MACing the ack.
///
/// The TRS must still refuse a timestamp not greater than the last one it accepted for
/// (ticket id, binder). On an error whose [`RelayError::ack_status`] is `Some`, it
/// answers with that status, MAC'd with [`bind_key`]; on the others it stays silent.
pub fn verify_bind(
    key: &RelayKey,
    bind: &RelayBindRepr,
    now: UnixTime,
) -> Result<Zeroizing<[u8; 32]>, RelayError> {
    authenticate_ticket(key, &bind.ticket)?;
    if bind.ticket.peer_of(&bind.binder).is_none() {
        return Err(RelayError::NotInTicket);
    }
    let bind_key = bind_key(key, &bind.ticket, &bind.binder);
    bind.verify(&bind_key).map_err(|_| RelayError::BadBindMac)?;
    if now > bind.ticket.not_after {
        return Err(RelayError::Expired(bind.ticket.not_after));
    }
    let now_millis = now.0.saturating_mul(1000);
    if bind.timestamp_millis.abs_diff(now_millis) > BIND_MAX_SKEW_SECS * 1000 {
        return Err(RelayError::StaleBind);
    }
    Ok(bind_key)
}

fn authenticate_ticket(key: &RelayKey, ticket: &RelayTicket) -> Result<(), RelayError> {
    if ticket.key_id != key.key_id() {
        return Err(RelayError::UnknownKey);
    }
    ct_check(&ticket_mac(key, ticket), &ticket.mac).map_err(|_| RelayError::BadTicketMac)
}

fn ticket_mac(key: &RelayKey, ticket: &RelayTicket) -> [u8; 32] {
    let bytes = ticket.to_bytes();
    hmac_sha256(
        &key.key,
        TICKET_LABEL,
        &[&bytes[..RelayTicket::MAC_INPUT_LEN]],
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::relay::{RelayBindAckPacket, RelayBindAckRepr, RelayBindPacket};

    const A: NodeId = NodeId([0xa; 16]);
    const B: NodeId = NodeId([0xb; 16]);
    const C: NodeId = NodeId([0xc; 16]);

    fn key() -> RelayKey {
        RelayKey::derive(b"an example cloud secret of 32+ bytes")
    }

    #[test]
    fn derive_is_deterministic_and_labelled() {
        assert_eq!(key().key_id(), key().key_id());
        assert_ne!(key().key_id(), RelayKey::derive(b"another secret").key_id());
        // The relay key is not the secret itself.
        let raw = RelayKey::from_bytes(*b"an example cloud secret of 32+ b");
        assert_ne!(key().key_id(), raw.key_id());
        let shown = format!("{:?}", key());
        assert!(shown.starts_with("RelayKey { key_id: "), "{shown}");
        assert!(!shown.contains(&format!("{:?}", key().key)));
    }

    #[test]
    fn mint_and_verify() {
        let k = key();
        let t = mint_ticket(&k, [7; 16], A, B, UnixTime(1_000));
        assert_eq!(verify_ticket(&k, &t, UnixTime(1_000)), Ok(()));
        assert_eq!(
            verify_ticket(&k, &t, UnixTime(1_001)),
            Err(RelayError::Expired(UnixTime(1_000)))
        );
        let other = RelayKey::derive(b"other");
        assert_eq!(
            verify_ticket(&other, &t, UnixTime(10)),
            Err(RelayError::UnknownKey)
        );
        // Every bit of the ticket is covered by the MAC or the key id check.
        let bytes = t.to_bytes();
        for i in 0..RelayTicket::LEN {
            let mut forged = bytes;
            forged[i] ^= 0x40;
            let forged = RelayTicket::parse(&forged).unwrap();
            assert!(
                verify_ticket(&k, &forged, UnixTime(10)).is_err(),
                "byte {i}"
            );
        }
    }

    #[test]
    fn bind_keys_differ_per_node_and_ticket() {
        let k = key();
        let t = mint_ticket(&k, [7; 16], A, B, UnixTime(1_000));
        let t2 = mint_ticket(&k, [8; 16], A, B, UnixTime(1_000));
        assert_ne!(*bind_key(&k, &t, &A), *bind_key(&k, &t, &B));
        assert_ne!(*bind_key(&k, &t, &A), *bind_key(&k, &t2, &A));
        assert_eq!(*bind_key(&k, &t, &A), *bind_key(&key(), &t, &A));
    }

    fn bind(k: &RelayKey, binder: NodeId, ts: u64) -> RelayBindRepr {
        let ticket = mint_ticket(k, [7; 16], A, B, UnixTime(1_000));
        let mut bind = RelayBindRepr {
            ticket,
            binder,
            timestamp_millis: ts,
            mac: [0; 16],
        };
        bind.seal(&bind_key(k, &ticket, &binder));
        bind
    }

    #[test]
    fn verify_bind_checks_everything() {
        let k = key();
        let now = UnixTime(900);
        let good = bind(&k, A, 900_000);
        let bk = verify_bind(&k, &good, now).unwrap();
        assert_eq!(*bk, *bind_key(&k, &good.ticket, &A));

        // Round trip through the wire and the packet-level verify.
        let mut buf = [0u8; 200];
        let len = good.emit(&mut buf).unwrap();
        let packet = RelayBindPacket::new_checked(&buf[..len]).unwrap();
        assert_eq!(packet.verify(&bk), Ok(()));
        assert_eq!(RelayBindRepr::parse(&packet).unwrap(), good);

        // B's key cannot make a bind for A.
        let mut forged = good;
        forged.seal(&bind_key(&k, &good.ticket, &B));
        assert_eq!(verify_bind(&k, &forged, now), Err(RelayError::BadBindMac));

        let outsider = bind(&k, C, 900_000);
        assert_eq!(
            verify_bind(&k, &outsider, now),
            Err(RelayError::NotInTicket)
        );

        let late = verify_bind(&k, &good, UnixTime(1_001)).unwrap_err();
        assert_eq!(late, RelayError::Expired(UnixTime(1_000)));
        assert_eq!(late.ack_status(), Some(StatusCode::EXPIRED));

        let old = bind(&k, A, (900 - BIND_MAX_SKEW_SECS - 1) * 1000);
        assert_eq!(verify_bind(&k, &old, now), Err(RelayError::StaleBind));
        let future = bind(&k, A, (900 + BIND_MAX_SKEW_SECS) * 1000 + 1);
        assert_eq!(verify_bind(&k, &future, now), Err(RelayError::StaleBind));
        let edge = bind(&k, A, (900 - BIND_MAX_SKEW_SECS) * 1000);
        assert!(verify_bind(&k, &edge, now).is_ok());

        // A bind re-timed by an attacker no longer verifies.
        let mut retimed = good;
        retimed.timestamp_millis += 1;
        assert_eq!(verify_bind(&k, &retimed, now), Err(RelayError::BadBindMac));
        assert_eq!(RelayError::BadBindMac.ack_status(), None);
    }

    #[test]
    fn ack_is_authenticated() {
        let k = key();
        let good = bind(&k, A, 900_000);
        let bk = verify_bind(&k, &good, UnixTime(900)).unwrap();
        let mut ack = RelayBindAckRepr {
            ticket_id: good.ticket.ticket_id,
            status: StatusCode::SUCCESS,
            timestamp_millis: good.timestamp_millis,
            peer_bound: true,
            observed: "[2001:db8::5]:4242".parse().unwrap(),
            mac: [0; 16],
        };
        ack.seal(&bk);
        assert_eq!(ack.verify(&bk), Ok(()));
        let mut buf = [0u8; RelayBindAckRepr::MAX_LEN];
        let len = ack.emit(&mut buf).unwrap();
        let packet = RelayBindAckPacket::new_checked(&buf[..len]).unwrap();
        assert_eq!(packet.verify(&bk), Ok(()));
        assert!(packet.verify(&bind_key(&k, &good.ticket, &B)).is_err());
        let mut flipped = ack;
        flipped.peer_bound = false;
        assert!(flipped.verify(&bk).is_err());
    }
}
