//! What every service of one cloud process shares: configuration, keys, the store, the
//! metrics registry and the set of revoked node ids.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};

use cyphonic_proto::relay::RelayKey;
use cyphonic_proto::wire::NodeId;
use ed25519_dalek::{SigningKey, VerifyingKey};
use ipnet::Ipv6Net;
use tokio::sync::broadcast;

use crate::config::CloudConfig;
use crate::metrics::Metrics;
use crate::store::Store;

/// Shared by all services of a process; cheap to clone through an `Arc`.
#[derive(Debug)]
pub struct CloudContext {
    pub config: CloudConfig,
    pub keys: CloudKeys,
    pub store: Arc<dyn Store>,
    pub metrics: Metrics,
    pub revoked: Revoked,
    /// The IPv6 pool in force: the configured one or the ULA /48 stored at first start.
    pub ipv6_pool: Ipv6Net,
}

/// The cloud's keys. A TRS on another host has only the relay key.
pub struct CloudKeys {
    /// Signs credentials; its Montgomery form is the channel key nodes pin.
    pub signing: Option<SigningKey>,
    /// Keys accepted on credentials (the signing key's public half first).
    pub trusted: Vec<VerifyingKey>,
    /// MACs relay tickets; derived from the signing key, or read from a file.
    pub relay: RelayKey,
}

impl std::fmt::Debug for CloudKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("CloudKeys")
            .field("has_signing_key", &self.signing.is_some())
            .field("trusted", &self.trusted.len())
            .field("relay", &self.relay)
            .finish()
    }
}

/// Node ids whose device was removed. Filled from the store by a watcher task that
/// polls about once a second, so a removal by `cyphonic-cloud device remove` (another
/// process) takes effect in every running service within that second; services that
/// hold state for a node (NMS presence, TRS bindings) subscribe to act at once.
#[derive(Debug, Clone)]
pub struct Revoked {
    set: Arc<RwLock<HashSet<NodeId>>>,
    events: broadcast::Sender<NodeId>,
}

impl Default for Revoked {
    fn default() -> Self {
        Self::new()
    }
}

impl Revoked {
    pub fn new() -> Self {
        let (events, _) = broadcast::channel(1024);
        Self {
            set: Arc::new(RwLock::new(HashSet::new())),
            events,
        }
    }

    pub fn contains(&self, node: &NodeId) -> bool {
        self.set
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(node)
    }

    /// Records revocations and tells subscribers about the new ones.
    pub fn extend(&self, nodes: impl IntoIterator<Item = NodeId>) {
        let mut set = self.set.write().unwrap_or_else(|p| p.into_inner());
        for node in nodes {
            if set.insert(node) {
                // No subscriber is fine: the set is still authoritative.
                let _ = self.events.send(node);
            }
        }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<NodeId> {
        self.events.subscribe()
    }

    pub fn len(&self) -> usize {
        self.set.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
