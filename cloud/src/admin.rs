//! The `device` and `key` commands as library functions: the CLI in `main.rs` only
//! parses arguments, reads passwords and prints.
//!
//! They work on the data directory directly (the same SQLite file a running `serve`
//! uses, safely: WAL mode and a busy timeout), so a device added or removed here takes
//! effect in the running cloud at once; removals reach every service within the
//! revocation poll interval (about a second).

use std::time::SystemTime;

use cyphonic_proto::time::UnixTime;
use cyphonic_proto::wire::signal::MAX_DEVICE_ID_LEN;
use cyphonic_proto::wire::{Fqdn, NodeId};
use rand_core::OsRng;
use zeroize::Zeroizing;

use crate::config::CloudConfig;
use crate::keys::{self, KeyError};
use crate::password::{self, PasswordError};
use crate::server::{self, ServeError};
use crate::store::sqlite::SqliteStore;
use crate::store::{Device, NewDevice, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error(
        "device id `{0}` is invalid: use 1..={MAX_DEVICE_ID_LEN} printable ASCII characters, no spaces"
    )]
    BadDeviceId(String),
    #[error("name `{name}` is invalid: {reason}")]
    BadName { name: String, reason: String },
    #[error("no device `{0}` (see `cyphonic-cloud device list`)")]
    NoSuchDevice(String),
    #[error("device `{0}` already exists (remove it first, or pick another id)")]
    DuplicateDevice(String),
    #[error("name `{0}` already belongs to another device")]
    DuplicateName(String),
    #[error(transparent)]
    Store(StoreError),
    #[error(transparent)]
    Setup(#[from] ServeError),
    #[error(transparent)]
    Keys(#[from] KeyError),
    #[error(transparent)]
    Password(#[from] PasswordError),
    #[error("password hashing thread failed")]
    HashingThread,
}

impl From<StoreError> for AdminError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::DuplicateDevice(id) => Self::DuplicateDevice(id),
            StoreError::DuplicateName(name) => Self::DuplicateName(name),
            StoreError::NoSuchDevice(id) => Self::NoSuchDevice(id),
            other => Self::Store(other),
        }
    }
}

/// What `key show` prints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyInfo {
    /// The text nodes pin (`cloud_public_key`), see [`keys::public_key_text`].
    pub pin: String,
    /// The id credentials name, 16 hex digits.
    pub key_id: String,
}

/// The device commands, on the database in the configured data directory.
#[derive(Debug)]
pub struct Admin {
    config: CloudConfig,
    store: SqliteStore,
}

impl Admin {
    /// Opens (creating if needed) the data directory and the database.
    pub async fn open(config: CloudConfig) -> Result<Self, AdminError> {
        server::prepare_data_dir(&config.data_dir)?;
        let store = server::open_store(&config.data_dir).await?;
        Ok(Self { config, store })
    }

    /// Validates a new device's id and name and checks neither is taken, so the CLI can
    /// refuse before asking for a password. Returns the canonical name.
    pub async fn check_new_device(&self, device_id: &str, fqdn: &str) -> Result<Fqdn, AdminError> {
        validate_device_id(device_id)?;
        let fqdn = parse_device_fqdn(fqdn, &self.config.domain)?;
        if self.store.device(device_id).await?.is_some() {
            return Err(AdminError::DuplicateDevice(device_id.to_owned()));
        }
        if self.store.device_by_fqdn(&fqdn).await?.is_some() {
            return Err(AdminError::DuplicateName(fqdn.to_string()));
        }
        Ok(fqdn)
    }

    /// Adds a device with a random node id; the password is hashed with the configured
    /// Argon2id cost.
    pub async fn add_device(
        &self,
        device_id: &str,
        fqdn: &str,
        password: &[u8],
    ) -> Result<Device, AdminError> {
        let fqdn = self.check_new_device(device_id, fqdn).await?;
        let password_hash = self.hash(password).await?;
        // The store re-checks both uniqueness rules atomically.
        Ok(self
            .store
            .add_device(NewDevice {
                device_id: device_id.to_owned(),
                node_id: NodeId::random(&mut OsRng),
                fqdn,
                password_hash,
                created_at: UnixTime::from_system_time(SystemTime::now()),
            })
            .await?)
    }

    /// All devices, ordered by id.
    pub async fn devices(&self) -> Result<Vec<Device>, AdminError> {
        Ok(self.store.devices().await?)
    }

    pub async fn device(&self, device_id: &str) -> Result<Device, AdminError> {
        self.store
            .device(device_id)
            .await?
            .ok_or_else(|| AdminError::NoSuchDevice(device_id.to_owned()))
    }

    /// Removes the device and revokes its node id: its credential stops working at the
    /// NMS and TRS within a second.
    pub async fn remove_device(&self, device_id: &str) -> Result<(), AdminError> {
        if self.store.remove_device(device_id).await? {
            Ok(())
        } else {
            Err(AdminError::NoSuchDevice(device_id.to_owned()))
        }
    }

    /// Replaces the password. A logged-in node keeps its credential until it expires;
    /// its next login needs the new password.
    pub async fn set_password(&self, device_id: &str, password: &[u8]) -> Result<(), AdminError> {
        // Fail fast on a typo before spending the hashing time.
        self.device(device_id).await?;
        let hash = self.hash(password).await?;
        if self.store.set_password_hash(device_id, &hash).await? {
            Ok(())
        } else {
            Err(AdminError::NoSuchDevice(device_id.to_owned()))
        }
    }

    /// Closes the database cleanly (checkpointing its write-ahead log).
    pub async fn close(self) {
        self.store.close().await;
    }

    async fn hash(&self, password: &[u8]) -> Result<String, AdminError> {
        let password = Zeroizing::new(password.to_vec());
        let settings = self.config.argon2.clone();
        tokio::task::spawn_blocking(move || password::hash(&password, &settings))
            .await
            .map_err(|_| AdminError::HashingThread)?
            .map_err(AdminError::from)
    }
}

/// The signing key's pin text and id, creating the key (and data directory) if this is
/// the first use, so a cloud can be provisioned before it first starts.
pub fn key_info(config: &CloudConfig) -> Result<KeyInfo, AdminError> {
    let keys = signing_keys(config)?;
    let public = keys.trusted.first().ok_or(KeyError::NoSigningKey)?;
    Ok(KeyInfo {
        pin: keys::public_key_text(public),
        key_id: keys::key_id_text(public),
    })
}

/// The relay key in hex (`key export-relay`). Secret.
pub fn export_relay(config: &CloudConfig) -> Result<Zeroizing<String>, AdminError> {
    Ok(keys::export_relay(&signing_keys(config)?)?)
}

/// Writes the relay key to a new file with mode 0600 (`key export-relay --output`).
pub fn write_relay_file(config: &CloudConfig, path: &std::path::Path) -> Result<(), AdminError> {
    Ok(keys::write_relay_file(&signing_keys(config)?, path)?)
}

/// The rule `LoginRequest` enforces on the wire: 1..=64 bytes of printable ASCII
/// without spaces.
pub fn validate_device_id(device_id: &str) -> Result<(), AdminError> {
    let ok = (1..=MAX_DEVICE_ID_LEN).contains(&device_id.len())
        && device_id.chars().all(|c| c.is_ascii_graphic());
    if ok {
        Ok(())
    } else {
        Err(AdminError::BadDeviceId(
            device_id.escape_debug().to_string(),
        ))
    }
}

/// A device name: a valid FQDN strictly below the overlay domain.
pub fn parse_device_fqdn(name: &str, domain: &Fqdn) -> Result<Fqdn, AdminError> {
    let bad = |reason: String| AdminError::BadName {
        name: name.escape_debug().to_string(),
        reason,
    };
    let fqdn = Fqdn::new(name).map_err(|e| {
        bad(format!(
            "{e} (use letters, digits and hyphens in dot-separated labels)"
        ))
    })?;
    if !fqdn.is_within(domain) || &fqdn == domain {
        let first = fqdn.as_str().split('.').next().unwrap_or("laptop");
        return Err(bad(format!(
            "it must lie within the domain `{domain}`, e.g. `{first}.{domain}`"
        )));
    }
    Ok(fqdn)
}

fn signing_keys(config: &CloudConfig) -> Result<crate::context::CloudKeys, AdminError> {
    server::prepare_data_dir(&config.data_dir)?;
    Ok(keys::load_or_create(&config.data_dir)?)
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::config::Argon2Settings;

    fn test_config(dir: &std::path::Path) -> CloudConfig {
        CloudConfig {
            data_dir: dir.join("cloud"),
            domain: Fqdn::new("corp.example").unwrap(),
            // Cheap hashing keeps the test fast; the cost does not change the logic.
            argon2: Argon2Settings {
                memory_kib: 64,
                iterations: 1,
                parallelism: 1,
            },
            ..CloudConfig::default()
        }
    }

    #[test]
    fn device_ids_follow_the_login_rule() {
        for good in ["a", "laptop-01", "x@y.z", &"d".repeat(64), "!~"] {
            validate_device_id(good).unwrap();
        }
        for bad in ["", "with space", "tab\t", "ü", &"d".repeat(65), "new\nline"] {
            let err = validate_device_id(bad).unwrap_err();
            assert!(matches!(err, AdminError::BadDeviceId(_)), "{bad:?}");
        }
    }

    #[test]
    fn names_must_lie_below_the_domain() {
        let domain = Fqdn::new("corp.example").unwrap();
        assert_eq!(
            parse_device_fqdn("Laptop.Alice.corp.example.", &domain)
                .unwrap()
                .as_str(),
            "laptop.alice.corp.example"
        );
        for bad in [
            "corp.example",
            "laptop.example",
            "laptop",
            "laptop.corp.example.org",
            "bad_name.corp.example",
            "-x.corp.example",
            "",
        ] {
            let err = parse_device_fqdn(bad, &domain).unwrap_err();
            assert!(matches!(err, AdminError::BadName { .. }), "{bad}: {err}");
        }
        let hint = parse_device_fqdn("laptop", &domain)
            .unwrap_err()
            .to_string();
        assert!(hint.contains("laptop.corp.example"), "{hint}");
    }

    #[tokio::test]
    async fn device_lifecycle() {
        let dir = tempfile::tempdir().unwrap();
        let config = test_config(dir.path());
        let admin = Admin::open(config.clone()).await.unwrap();

        let added = admin
            .add_device("alice-laptop", "laptop.alice.corp.example", b"pw one")
            .await
            .unwrap();
        assert_eq!(added.fqdn.as_str(), "laptop.alice.corp.example");
        assert!(password::verify(b"pw one", &added.password_hash));
        let bob = admin
            .add_device("bob", "bob.corp.example", b"pw bob")
            .await
            .unwrap();
        assert_ne!(added.node_id, bob.node_id);

        let dup = admin
            .add_device("alice-laptop", "other.corp.example", b"x")
            .await
            .unwrap_err();
        assert!(matches!(dup, AdminError::DuplicateDevice(_)), "{dup}");
        let dup = admin
            .add_device("carol", "BOB.corp.example", b"x")
            .await
            .unwrap_err();
        assert!(
            matches!(dup, AdminError::DuplicateName(ref n) if n == "bob.corp.example"),
            "{dup}"
        );
        let outside = admin
            .add_device("carol", "carol.other.example", b"x")
            .await
            .unwrap_err();
        assert!(matches!(outside, AdminError::BadName { .. }), "{outside}");
        let bad_id = admin
            .add_device("carol smith", "carol.corp.example", b"x")
            .await
            .unwrap_err();
        assert!(matches!(bad_id, AdminError::BadDeviceId(_)), "{bad_id}");
        let empty = admin
            .add_device("carol", "carol.corp.example", b"")
            .await
            .unwrap_err();
        assert!(
            matches!(empty, AdminError::Password(PasswordError::BadLength)),
            "{empty}"
        );

        let ids: Vec<_> = admin
            .devices()
            .await
            .unwrap()
            .into_iter()
            .map(|d| d.device_id)
            .collect();
        assert_eq!(ids, ["alice-laptop", "bob"]);

        admin.set_password("bob", b"pw two").await.unwrap();
        let bob_now = admin.device("bob").await.unwrap();
        assert!(password::verify(b"pw two", &bob_now.password_hash));
        assert!(!password::verify(b"pw bob", &bob_now.password_hash));
        assert!(matches!(
            admin.set_password("nobody", b"x").await,
            Err(AdminError::NoSuchDevice(_))
        ));

        // Addresses assigned at login survive in the listing.
        let store = SqliteStore::open(&config.data_dir.join(server::DATABASE_FILE))
            .await
            .unwrap();
        let (v4, _) = store
            .assign_addresses("bob", config.pools.ipv4, "fd00::/48".parse().unwrap())
            .await
            .unwrap();
        assert_eq!(v4, Ipv4Addr::new(100, 64, 0, 1));
        assert_eq!(admin.device("bob").await.unwrap().vip4, Some(v4));

        admin.remove_device("bob").await.unwrap();
        assert!(matches!(
            admin.remove_device("bob").await,
            Err(AdminError::NoSuchDevice(_))
        ));
        let revoked = store.revocations_since(0).await.unwrap();
        assert_eq!(revoked.node_ids, vec![bob.node_id]);
        assert_eq!(admin.devices().await.unwrap().len(), 1);
        // The name is free again.
        admin
            .add_device("bob2", "bob.corp.example", b"pw")
            .await
            .unwrap();
        store.close().await;
        admin.close().await;
    }

    #[test]
    fn key_info_is_stable_and_relay_export_matches() {
        let dir = tempfile::tempdir().unwrap();
        let config = test_config(dir.path());
        let first = key_info(&config).unwrap();
        assert!(first.pin.starts_with(keys::PUBLIC_KEY_PREFIX));
        assert_eq!(first.key_id.len(), 16);
        assert_eq!(key_info(&config).unwrap(), first);
        let public = keys::parse_public_key_text(&first.pin).unwrap();
        assert_eq!(keys::key_id_text(&public), first.key_id);

        let relay_hex = export_relay(&config).unwrap();
        let path = dir.path().join("relay.key");
        write_relay_file(&config, &path).unwrap();
        let remote = keys::load_relay_only(&path).unwrap();
        let main = keys::load_or_create(&config.data_dir).unwrap();
        assert_eq!(remote.relay.key_id(), main.relay.key_id());
        assert_eq!(relay_hex.len(), 64);
    }
}
