//! Persistent state of the cloud behind one trait: devices (ID, FQDN, password hash,
//! node id, virtual addresses), revocations, and a few settings (the ULA prefix).
//!
//! Only what must survive a restart lives here. Presence, channels, rate-limit windows
//! and relay bindings are in memory in the services. [`sqlite::SqliteStore`] is the
//! embedded default; the SQL is kept portable so that a PostgreSQL implementation can
//! serve several cloud instances from one database.

pub mod sqlite;

use std::net::{Ipv4Addr, Ipv6Addr};

use cyphonic_proto::time::UnixTime;
use cyphonic_proto::wire::{Fqdn, NodeId};
use ipnet::{Ipv4Net, Ipv6Net};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("device `{0}` already exists")]
    DuplicateDevice(String),
    #[error("name `{0}` is already taken by another device")]
    DuplicateName(String),
    #[error("no device `{0}`")]
    NoSuchDevice(String),
    #[error("address pool {0} is exhausted")]
    PoolExhausted(String),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("database migration: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    #[error("stored value is corrupt: {0}")]
    Corrupt(String),
}

/// A registered device. Never carries the password itself, only its Argon2id PHC hash.
#[derive(Clone, PartialEq, Eq)]
pub struct Device {
    pub device_id: String,
    /// Random, chosen when the device is added; never derived from its names.
    pub node_id: NodeId,
    pub fqdn: Fqdn,
    pub password_hash: String,
    /// Assigned at the first successful login, then never changed.
    pub vip4: Option<Ipv4Addr>,
    pub vip6: Option<Ipv6Addr>,
    pub created_at: UnixTime,
    pub last_login: Option<UnixTime>,
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Device")
            .field("device_id", &self.device_id)
            .field("node_id", &self.node_id)
            .field("fqdn", &self.fqdn)
            .field("vip4", &self.vip4)
            .field("vip6", &self.vip6)
            .finish_non_exhaustive()
    }
}

/// What `device add` stores.
#[derive(Clone)]
pub struct NewDevice {
    pub device_id: String,
    pub node_id: NodeId,
    pub fqdn: Fqdn,
    pub password_hash: String,
    pub created_at: UnixTime,
}

impl std::fmt::Debug for NewDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewDevice")
            .field("device_id", &self.device_id)
            .field("fqdn", &self.fqdn)
            .finish_non_exhaustive()
    }
}

/// Node ids revoked after a cursor, and the cursor to ask from next time. Services poll
/// this (cheaply, about once a second) so a removed device stops working everywhere at
/// once, also in other processes sharing the database.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Revocations {
    pub cursor: i64,
    pub node_ids: Vec<NodeId>,
}

#[async_trait::async_trait]
pub trait Store: Send + Sync + std::fmt::Debug + 'static {
    /// Fails with `DuplicateDevice` / `DuplicateName` when the ID or FQDN is taken.
    async fn add_device(&self, device: NewDevice) -> Result<Device, StoreError>;

    async fn device(&self, device_id: &str) -> Result<Option<Device>, StoreError>;

    async fn device_by_node(&self, node_id: &NodeId) -> Result<Option<Device>, StoreError>;

    async fn device_by_fqdn(&self, fqdn: &Fqdn) -> Result<Option<Device>, StoreError>;

    /// All devices, ordered by device ID.
    async fn devices(&self) -> Result<Vec<Device>, StoreError>;

    /// Removes the device and records its node id as revoked. False if there was none.
    async fn remove_device(&self, device_id: &str) -> Result<bool, StoreError>;

    /// Replaces the password hash. False if there is no such device.
    async fn set_password_hash(&self, device_id: &str, hash: &str) -> Result<bool, StoreError>;

    /// The device's virtual addresses: the stored ones, or (first login) the next free
    /// ones from the pools, stored in the same transaction so concurrent logins of
    /// different devices never get the same address.
    async fn assign_addresses(
        &self,
        device_id: &str,
        ipv4_pool: Ipv4Net,
        ipv6_pool: Ipv6Net,
    ) -> Result<(Ipv4Addr, Ipv6Addr), StoreError>;

    async fn record_login(&self, device_id: &str, at: UnixTime) -> Result<(), StoreError>;

    /// Node ids revoked after `cursor` (0: from the beginning).
    async fn revocations_since(&self, cursor: i64) -> Result<Revocations, StoreError>;

    async fn setting(&self, key: &str) -> Result<Option<String>, StoreError>;

    /// Stores `value` unless the key exists; returns the value now stored. Lets several
    /// instances agree on a generated value (the ULA prefix) without a race.
    async fn setting_or_insert(&self, key: &str, value: &str) -> Result<String, StoreError>;
}
