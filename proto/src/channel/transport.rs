//! One established channel in one party's hands: the two directional keys (derived
//! from the finished handshake), the send counter, the receive replay window and the
//! channel's lifetime. Node and cloud share this code; only which key seals and which
//! opens differs.

use std::ops::Range;
use std::time::{Duration, Instant};

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Tag};
use zeroize::Zeroizing;

use super::{ChannelError, DropReason, MAX_INNER_LEN, REJECT_AFTER_MESSAGES};
use crate::noise::{self, KEY_LEN, SymmetricState};
use crate::replay::SignalingWindow;
use crate::suite::nonce_for_counter;
use crate::wire::channel::{SIGNAL_HEADER_LEN, SignalPacket, TAG_LEN};

const LABEL_NODE_TO_CLOUD: &[u8] = b"cyphonic node->cloud";
const LABEL_CLOUD_TO_NODE: &[u8] = b"cyphonic cloud->node";

/// Keys of the two directions of a channel.
struct DirectionalKeys {
    node_to_cloud: Zeroizing<[u8; KEY_LEN]>,
    cloud_to_node: Zeroizing<[u8; KEY_LEN]>,
}

impl DirectionalKeys {
    /// The channel keys of a finished handshake, one labelled expansion of its final
    /// chaining key per direction.
    fn derive(handshake: &SymmetricState) -> Self {
        let (node_to_cloud, cloud_to_node) = noise::split_labelled(
            handshake.chaining_key(),
            &[LABEL_NODE_TO_CLOUD],
            &[LABEL_CLOUD_TO_NODE],
        );
        Self {
            node_to_cloud,
            cloud_to_node,
        }
    }
}

/// Which end of the channel this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    Node,
    Cloud,
}

pub(crate) struct Transport {
    /// The index the other side puts in datagrams to us.
    pub(crate) local_index: u32,
    /// The index we put in datagrams to the other side.
    pub(crate) remote_index: u32,
    // ChaCha20Poly1305 zeroizes its key when dropped.
    seal_key: ChaCha20Poly1305,
    open_key: ChaCha20Poly1305,
    send_counter: u64,
    replay: SignalingWindow,
    pub(crate) established: Instant,
    /// Past this instant the channel neither seals nor opens.
    pub(crate) expires: Instant,
    /// When the last datagram authenticated on this channel.
    pub(crate) last_received: Instant,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field("local_index", &self.local_index)
            .field("remote_index", &self.remote_index)
            .field("send_counter", &self.send_counter)
            .field("expires", &self.expires)
            .finish_non_exhaustive()
    }
}

impl Transport {
    /// The channel a finished `handshake` opened.
    pub(crate) fn new(
        role: Role,
        handshake: &SymmetricState,
        local_index: u32,
        remote_index: u32,
        now: Instant,
        lifetime: Duration,
    ) -> Self {
        let keys = DirectionalKeys::derive(handshake);
        let (seal, open) = match role {
            Role::Node => (&keys.node_to_cloud, &keys.cloud_to_node),
            Role::Cloud => (&keys.cloud_to_node, &keys.node_to_cloud),
        };
        Self {
            local_index,
            remote_index,
            seal_key: ChaCha20Poly1305::new((&**seal).into()),
            open_key: ChaCha20Poly1305::new((&**open).into()),
            send_counter: 0,
            replay: SignalingWindow::new(),
            established: now,
            expires: now + lifetime,
            last_received: now,
        }
    }

    pub(crate) fn is_expired(&self, now: Instant) -> bool {
        now >= self.expires
    }

    pub(crate) fn messages_sent(&self) -> u64 {
        self.send_counter
    }

    /// Seals `inner` into a `Signal` datagram in `out`; returns its length.
    pub(crate) fn seal(
        &mut self,
        now: Instant,
        inner: &[u8],
        out: &mut [u8],
    ) -> Result<usize, ChannelError> {
        if inner.len() > MAX_INNER_LEN {
            return Err(ChannelError::TooLong(inner.len()));
        }
        if self.is_expired(now) {
            return Err(ChannelError::NotConnected);
        }
        if self.send_counter >= REJECT_AFTER_MESSAGES {
            return Err(ChannelError::CounterExhausted);
        }
        let len = SIGNAL_HEADER_LEN + inner.len() + TAG_LEN;
        let available = out.len();
        let out = out
            .get_mut(..len)
            .ok_or(crate::wire::WireError::BufferTooSmall {
                needed: len,
                available,
            })?;
        let counter = self.send_counter;
        let mut packet = SignalPacket::new_unchecked(&mut out[..]);
        packet.fill_header(self.remote_index, counter);
        let (header, body) = packet.split_mut();
        let (plain, tag_out) = body.split_at_mut(inner.len());
        plain.copy_from_slice(inner);
        let tag = self
            .seal_key
            .encrypt_in_place_detached(&nonce_for_counter(counter).into(), header, plain)
            .expect("inner messages are far below the AEAD length limit");
        tag_out.copy_from_slice(&tag);
        self.send_counter += 1;
        Ok(len)
    }

    /// Opens a `Signal` addressed to this channel in place; returns where the inner
    /// message now lies in `datagram`. The counter is checked against the replay window
    /// before decrypting (cheap rejection) and recorded only after the tag verified (so
    /// forgeries cannot move the window).
    pub(crate) fn open(
        &mut self,
        now: Instant,
        datagram: &mut [u8],
    ) -> Result<Range<usize>, DropReason> {
        let mut packet = SignalPacket::new_checked(datagram).map_err(|_| DropReason::Malformed)?;
        if packet.reserved() != 0 {
            return Err(DropReason::Malformed);
        }
        if packet.receiver_index() != self.local_index {
            return Err(DropReason::UnknownChannel);
        }
        if self.is_expired(now) {
            return Err(DropReason::Expired);
        }
        let counter = packet.counter();
        if counter >= REJECT_AFTER_MESSAGES || !self.replay.may_accept(counter) {
            return Err(DropReason::Replay);
        }
        let (header, body) = packet.split_mut();
        let plain_len = body.len() - TAG_LEN;
        let (cipher_text, tag) = body.split_at_mut(plain_len);
        self.open_key
            .decrypt_in_place_detached(
                &nonce_for_counter(counter).into(),
                header,
                cipher_text,
                Tag::from_slice(tag),
            )
            .map_err(|_| DropReason::DecryptFailed)?;
        if !self.replay.accept(counter) {
            return Err(DropReason::Replay);
        }
        self.last_received = now;
        Ok(SIGNAL_HEADER_LEN..SIGNAL_HEADER_LEN + plain_len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hkdf::Hkdf;
    use sha2::Sha256;
    use x25519_dalek::{PublicKey, StaticSecret};

    #[test]
    fn both_ends_derive_the_same_directional_keys() {
        let node_s = StaticSecret::from([1u8; 32]);
        let cloud_s = StaticSecret::from([2u8; 32]);
        let cloud = PublicKey::from(&cloud_s).to_bytes();
        let mut node = SymmetricState::initialize(&[b"p"], &cloud);
        let mut m1 = [0u8; noise::MESSAGE1_OVERHEAD];
        node.write_message1(&StaticSecret::from([3u8; 32]), &node_s, &cloud, &mut m1, 0)
            .unwrap();
        let mut server = SymmetricState::initialize(&[b"p"], &cloud);
        let (re, rs, _) = server.read_message1(&cloud_s, &mut m1).unwrap();
        let mut m2 = [0u8; noise::MESSAGE2_PAYLOAD_OFFSET + noise::TAG_LEN];
        server
            .write_message2(&StaticSecret::from([4u8; 32]), &re, &rs, &mut m2, 0)
            .unwrap();
        node.read_message2(&StaticSecret::from([3u8; 32]), &node_s, &mut m2)
            .unwrap();

        let (n, c) = (
            DirectionalKeys::derive(&node),
            DirectionalKeys::derive(&server),
        );
        assert_eq!(*n.node_to_cloud, *c.node_to_cloud);
        assert_eq!(*n.cloud_to_node, *c.cloud_to_node);
        assert_ne!(*n.node_to_cloud, *n.cloud_to_node);
        // HKDF-SHA256(salt = ck, ikm = "", info = label), as docs/protocol.md has it.
        let mut expected = [0u8; 32];
        Hkdf::<Sha256>::new(Some(node.chaining_key()), &[])
            .expand(b"cyphonic node->cloud", &mut expected)
            .unwrap();
        assert_eq!(*n.node_to_cloud, expected);
        Hkdf::<Sha256>::new(Some(node.chaining_key()), &[])
            .expand(b"cyphonic cloud->node", &mut expected)
            .unwrap();
        assert_eq!(*n.cloud_to_node, expected);
    }
}
