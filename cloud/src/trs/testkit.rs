//! Test helpers: a relay key, node ids, tickets, binds and acks as nodes build them, a
//! context without a database.

use std::sync::Arc;

use cyphonic_proto::relay::{self, RelayKey};
use cyphonic_proto::time::UnixTime;
use cyphonic_proto::wire::relay::{
    RelayBindAckPacket, RelayBindAckRepr, RelayBindRepr, RelayChannelId, RelayDataRepr, RelayTicket,
};
use cyphonic_proto::wire::{Fqdn, NodeId};
use ipnet::{Ipv4Net, Ipv6Net};

use crate::config::{CloudConfig, TrsSettings};
use crate::context::{CloudContext, CloudKeys, Revoked};
use crate::metrics::Metrics;
use crate::store::{Device, NewDevice, Revocations, Store, StoreError};

pub(crate) const A: NodeId = NodeId([0xa; 16]);
pub(crate) const B: NodeId = NodeId([0xb; 16]);
pub(crate) const C: NodeId = NodeId([0xc; 16]);

pub(crate) fn relay_key() -> RelayKey {
    RelayKey::derive(b"the TRS tests' cloud secret, 32+ bytes")
}

/// A ticket and the key it was minted with, able to make binds and check acks the way
/// its nodes do.
#[derive(Debug)]
pub(crate) struct Pair {
    key: RelayKey,
    pub(crate) ticket: RelayTicket,
}

impl Pair {
    /// A ticket for A and B under the test key.
    pub(crate) fn new(ticket_id: [u8; 16], not_after: u64) -> Self {
        Self::minted(relay_key(), ticket_id, A, B, not_after)
    }

    pub(crate) fn minted(
        key: RelayKey,
        ticket_id: [u8; 16],
        a: NodeId,
        b: NodeId,
        not_after: u64,
    ) -> Self {
        let ticket = relay::mint_ticket(&key, ticket_id, a, b, UnixTime(not_after));
        Self { key, ticket }
    }

    /// A RelayBind by `node`, MAC'd with its bind key.
    pub(crate) fn bind(&self, node: NodeId, timestamp_millis: u64) -> Vec<u8> {
        let mut bind = RelayBindRepr {
            ticket: self.ticket,
            binder: node,
            timestamp_millis,
            mac: [0; 16],
        };
        bind.seal(&relay::bind_key(&self.key, &self.ticket, &node));
        let mut buf = vec![0u8; bind.buffer_len()];
        bind.emit(&mut buf)
            .expect("the buffer has the bind's length");
        buf
    }

    /// Parses an ack meant for `node`, panicking unless its MAC verifies under that
    /// node's bind key (and only that one) and it names this ticket.
    pub(crate) fn ack(&self, node: NodeId, bytes: &[u8]) -> RelayBindAckRepr {
        let packet = RelayBindAckPacket::new_checked(bytes).expect("a well-formed ack");
        packet
            .verify(&relay::bind_key(&self.key, &self.ticket, &node))
            .expect("the ack is MAC'd with the node's bind key");
        let peer = self.ticket.peer_of(&node).expect("node is in the ticket");
        if peer != node {
            assert!(
                packet
                    .verify(&relay::bind_key(&self.key, &self.ticket, &peer))
                    .is_err()
            );
        }
        let ack = RelayBindAckRepr::parse(&packet).expect("a well-formed ack");
        assert_eq!(ack.ticket_id, self.ticket.ticket_id);
        ack
    }
}

/// A RelayData datagram carrying `inner` (which should look like a datagram: 2+ bytes).
pub(crate) fn data_bytes(channel_id: RelayChannelId, inner: &[u8]) -> Vec<u8> {
    let repr = RelayDataRepr {
        channel_id,
        payload: inner,
    };
    let mut buf = vec![0u8; repr.buffer_len()];
    repr.emit(&mut buf)
        .expect("the buffer has the datagram's length");
    buf
}

/// A context for a TRS-only process: the relay key and no signing key, like a relay on
/// another host.
pub(crate) fn context(trs: TrsSettings) -> Arc<CloudContext> {
    let mut config = CloudConfig::default();
    config.services.trs = trs;
    config.domain = Fqdn::new("test.cyphonic").expect("a valid name");
    Arc::new(CloudContext {
        config,
        keys: CloudKeys {
            signing: None,
            trusted: Vec::new(),
            relay: relay_key(),
        },
        store: Arc::new(NoStore),
        metrics: Metrics::new(),
        revoked: Revoked::new(),
        ipv6_pool: "fd00:1:2::/48".parse().expect("a valid prefix"),
    })
}

/// The TRS never touches the store (revocations reach it through `ctx.revoked`); every
/// call fails so that a test would notice if it did.
#[derive(Debug)]
struct NoStore;

fn no_store() -> StoreError {
    StoreError::Corrupt("the TRS tests run without a store".into())
}

#[async_trait::async_trait]
impl Store for NoStore {
    async fn add_device(&self, _: NewDevice) -> Result<Device, StoreError> {
        Err(no_store())
    }

    async fn device(&self, _: &str) -> Result<Option<Device>, StoreError> {
        Err(no_store())
    }

    async fn device_by_node(&self, _: &NodeId) -> Result<Option<Device>, StoreError> {
        Err(no_store())
    }

    async fn device_by_fqdn(&self, _: &Fqdn) -> Result<Option<Device>, StoreError> {
        Err(no_store())
    }

    async fn devices(&self) -> Result<Vec<Device>, StoreError> {
        Err(no_store())
    }

    async fn remove_device(&self, _: &str) -> Result<bool, StoreError> {
        Err(no_store())
    }

    async fn set_password_hash(&self, _: &str, _: &str) -> Result<bool, StoreError> {
        Err(no_store())
    }

    async fn assign_addresses(
        &self,
        _: &str,
        _: Ipv4Net,
        _: Ipv6Net,
    ) -> Result<(std::net::Ipv4Addr, std::net::Ipv6Addr), StoreError> {
        Err(no_store())
    }

    async fn record_login(&self, _: &str, _: UnixTime) -> Result<(), StoreError> {
        Err(no_store())
    }

    async fn revocations_since(&self, _: i64) -> Result<Revocations, StoreError> {
        Err(no_store())
    }

    async fn setting(&self, _: &str) -> Result<Option<String>, StoreError> {
        Err(no_store())
    }

    async fn setting_or_insert(&self, _: &str, _: &str) -> Result<String, StoreError> {
        Err(no_store())
    }
}
