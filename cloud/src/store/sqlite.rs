//! The embedded [`Store`]: one SQLite file (WAL mode) in the data directory, with the
//! schema in `cloud/migrations/` applied at open.
//!
//! Queries are built at run time (`sqlx::query` + `bind`), so building needs no
//! database. The SQL sticks to what PostgreSQL also accepts (plain types, `ON CONFLICT
//! DO NOTHING`, no SQLite functions); the only SQLite-specific parts are the `?`
//! placeholders (PostgreSQL: `$n`), `BEGIN IMMEDIATE` (PostgreSQL: `SELECT ... FOR
//! UPDATE` on the pool row) and `AUTOINCREMENT` in the schema.
//!
//! Virtual addresses are handed out next-fit: each pool has a row with the slot (host
//! offset) to try next, and allocation walks forward from it, skipping taken addresses
//! and wrapping around once, inside a write-locked transaction. So allocation is O(1)
//! in the common case, concurrent logins (in this or any other process on the same
//! file) never get the same address, and an address freed by `device remove` is only
//! reused after the pool has wrapped. IPv4 pools skip the network (slot 0) and broadcast
//! (last) addresses; IPv6 pools skip the subnet-router anycast address (slot 0).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
#[cfg(unix)]
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use cyphonic_proto::time::UnixTime;
use cyphonic_proto::wire::{Fqdn, NodeId};
use ipnet::{Ipv4Net, Ipv6Net};
use sqlx::Row;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};

use super::{Device, NewDevice, Revocations, Store, StoreError};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// How long a statement waits for another connection's (or process's) write lock. Long
/// enough for an `device add` racing a burst of first logins; short enough that a stuck
/// lock surfaces as an error rather than a hang.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// SQLite serialises writers anyway; a few connections let reads proceed alongside.
const MAX_CONNECTIONS: u32 = 4;

macro_rules! select_device {
    ($where:literal) => {
        concat!(
            "SELECT device_id, node_id, fqdn, password_hash, vip4, vip6, created_at, last_login ",
            "FROM devices ",
            $where
        )
    };
}

/// The SQLite store. Cheap to clone (a connection pool handle).
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and applies pending migrations.
    /// A new file is created with mode 0600 (it holds password hashes), and a missing
    /// parent directory with mode 0700; SQLite gives its `-wal`/`-shm` files the mode of
    /// the database file.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        create_private_file(path)?;
        let options = SqliteConnectOptions::new()
            .filename(path)
            .journal_mode(SqliteJournalMode::Wal)
            // NORMAL is durable against process crashes in WAL mode, and avoids an
            // fsync per login; a power cut may lose the last few `last_login` stamps.
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .connect_with(options)
            .await?;
        MIGRATOR.run(&pool).await?;
        Ok(Self { pool })
    }

    /// A private database that lives as long as this value: for a TRS on another host
    /// that has no database file (it then learns no revocations; its tickets expire).
    pub async fn open_in_memory() -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str("sqlite::memory:")?.foreign_keys(true);
        // Every connection to `:memory:` is its own database: keep exactly one, forever.
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(options)
            .await?;
        MIGRATOR.run(&pool).await?;
        Ok(Self { pool })
    }

    /// Deletes revocations recorded before `older_than`; returns how many. Only safe
    /// once every credential issued before then has expired (the server prunes after
    /// the credential lifetime plus clock skew). Cursors stay valid: ids are never
    /// reused.
    pub async fn prune_revocations(&self, older_than: UnixTime) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM revocations WHERE revoked_at < ?")
            .bind(db_time(older_than))
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    /// Waits for in-flight queries and closes every connection (checkpointing the WAL).
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

#[async_trait::async_trait]
impl Store for SqliteStore {
    async fn add_device(&self, device: NewDevice) -> Result<Device, StoreError> {
        let inserted = sqlx::query(
            "INSERT INTO devices (device_id, node_id, fqdn, password_hash, created_at) \
             VALUES (?, ?, ?, ?, ?)",
        )
        .bind(&device.device_id)
        .bind(device.node_id.to_string())
        .bind(device.fqdn.as_str())
        .bind(&device.password_hash)
        .bind(db_time(device.created_at))
        .execute(&self.pool)
        .await;
        match inserted {
            Ok(_) => Ok(Device {
                device_id: device.device_id,
                node_id: device.node_id,
                fqdn: device.fqdn,
                password_hash: device.password_hash,
                vip4: None,
                vip6: None,
                created_at: device.created_at,
                last_login: None,
            }),
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                // Which constraint failed is reported differently by every database;
                // asking is portable. (A node id collision, 2^-128, stays a database
                // error.)
                if self.device(&device.device_id).await?.is_some() {
                    Err(StoreError::DuplicateDevice(device.device_id))
                } else if self.device_by_fqdn(&device.fqdn).await?.is_some() {
                    Err(StoreError::DuplicateName(device.fqdn.to_string()))
                } else {
                    Err(StoreError::Database(sqlx::Error::Database(e)))
                }
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn device(&self, device_id: &str) -> Result<Option<Device>, StoreError> {
        sqlx::query(select_device!("WHERE device_id = ?"))
            .bind(device_id)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(device_from_row)
            .transpose()
    }

    async fn device_by_node(&self, node_id: &NodeId) -> Result<Option<Device>, StoreError> {
        sqlx::query(select_device!("WHERE node_id = ?"))
            .bind(node_id.to_string())
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(device_from_row)
            .transpose()
    }

    async fn device_by_fqdn(&self, fqdn: &Fqdn) -> Result<Option<Device>, StoreError> {
        sqlx::query(select_device!("WHERE fqdn = ?"))
            .bind(fqdn.as_str())
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(device_from_row)
            .transpose()
    }

    async fn devices(&self) -> Result<Vec<Device>, StoreError> {
        sqlx::query(select_device!("ORDER BY device_id"))
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(device_from_row)
            .collect()
    }

    async fn remove_device(&self, device_id: &str) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let node: Option<String> =
            sqlx::query_scalar("SELECT node_id FROM devices WHERE device_id = ?")
                .bind(device_id)
                .fetch_optional(&mut *tx)
                .await?;
        let Some(node) = node else {
            tx.rollback().await?;
            return Ok(false);
        };
        sqlx::query("DELETE FROM devices WHERE device_id = ?")
            .bind(device_id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("INSERT INTO revocations (node_id, revoked_at) VALUES (?, ?)")
            .bind(node)
            .bind(db_time(UnixTime::from_system_time(SystemTime::now())))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn set_password_hash(&self, device_id: &str, hash: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("UPDATE devices SET password_hash = ? WHERE device_id = ?")
            .bind(hash)
            .bind(device_id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn assign_addresses(
        &self,
        device_id: &str,
        ipv4_pool: Ipv4Net,
        ipv6_pool: Ipv6Net,
    ) -> Result<(Ipv4Addr, Ipv6Addr), StoreError> {
        // Every login after the first takes this read-only path.
        let stored = self.stored_addresses(&self.pool, device_id).await?;
        if let (Some(v4), Some(v6)) = stored {
            return Ok((v4, v6));
        }

        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        // Another login of the same device (maybe in another process) may have won.
        let (v4, v6) = self.stored_addresses(&mut *tx, device_id).await?;
        let v4 = match v4 {
            Some(v4) => v4,
            None => match allocate(&mut tx, &SlotPool::v4(ipv4_pool)).await? {
                IpAddr::V4(v4) => v4,
                IpAddr::V6(_) => return Err(StoreError::Corrupt("IPv4 pool gave IPv6".into())),
            },
        };
        let v6 = match v6 {
            Some(v6) => v6,
            None => match allocate(&mut tx, &SlotPool::v6(ipv6_pool)).await? {
                IpAddr::V6(v6) => v6,
                IpAddr::V4(_) => return Err(StoreError::Corrupt("IPv6 pool gave IPv4".into())),
            },
        };
        sqlx::query("UPDATE devices SET vip4 = ?, vip6 = ? WHERE device_id = ?")
            .bind(v4.to_string())
            .bind(v6.to_string())
            .bind(device_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok((v4, v6))
    }

    async fn record_login(&self, device_id: &str, at: UnixTime) -> Result<(), StoreError> {
        let done = sqlx::query("UPDATE devices SET last_login = ? WHERE device_id = ?")
            .bind(db_time(at))
            .bind(device_id)
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NoSuchDevice(device_id.to_owned()));
        }
        Ok(())
    }

    async fn revocations_since(&self, cursor: i64) -> Result<Revocations, StoreError> {
        let rows = sqlx::query("SELECT id, node_id FROM revocations WHERE id > ? ORDER BY id")
            .bind(cursor)
            .fetch_all(&self.pool)
            .await?;
        let mut out = Revocations {
            cursor,
            node_ids: Vec::with_capacity(rows.len()),
        };
        for row in &rows {
            out.cursor = row.try_get("id")?;
            out.node_ids
                .push(parse_node_id(&row.try_get::<String, _>("node_id")?)?);
        }
        Ok(out)
    }

    async fn setting(&self, key: &str) -> Result<Option<String>, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT value FROM settings WHERE key = ?")
                .bind(key)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    async fn setting_or_insert(&self, key: &str, value: &str) -> Result<String, StoreError> {
        // Settings are never updated, so whatever row exists after the insert is final.
        sqlx::query("INSERT INTO settings (key, value) VALUES (?, ?) ON CONFLICT (key) DO NOTHING")
            .bind(key)
            .bind(value)
            .execute(&self.pool)
            .await?;
        self.setting(key)
            .await?
            .ok_or_else(|| StoreError::Corrupt(format!("setting `{key}` vanished after insert")))
    }
}

impl SqliteStore {
    async fn stored_addresses<'e, E>(
        &self,
        executor: E,
        device_id: &str,
    ) -> Result<(Option<Ipv4Addr>, Option<Ipv6Addr>), StoreError>
    where
        E: sqlx::Executor<'e, Database = sqlx::Sqlite>,
    {
        let row: Option<(Option<String>, Option<String>)> =
            sqlx::query_as("SELECT vip4, vip6 FROM devices WHERE device_id = ?")
                .bind(device_id)
                .fetch_optional(executor)
                .await?;
        let Some((v4, v6)) = row else {
            return Err(StoreError::NoSuchDevice(device_id.to_owned()));
        };
        Ok((
            v4.as_deref().map(parse_addr::<Ipv4Addr>).transpose()?,
            v6.as_deref().map(parse_addr::<Ipv6Addr>).transpose()?,
        ))
    }
}

/// A pool as a range of slots (host offsets from the network address).
#[derive(Debug)]
struct SlotPool {
    /// The pool's text, keying its row in `address_pools`.
    key: String,
    /// `devices` column the pool's addresses go to.
    column: Column,
    network: IpAddr,
    first: u64,
    /// Inclusive.
    last: u64,
}

#[derive(Debug, Clone, Copy)]
enum Column {
    Vip4,
    Vip6,
}

impl SlotPool {
    fn v4(pool: Ipv4Net) -> Self {
        let pool = pool.trunc();
        let size = 1u64 << (32 - u32::from(pool.prefix_len()));
        Self {
            key: pool.to_string(),
            column: Column::Vip4,
            network: IpAddr::V4(pool.network()),
            first: 1,
            // Config validation keeps pools at /30 or larger; a /31 or /32 here would
            // give an empty range, which `allocate` reports as exhausted.
            last: size.saturating_sub(2),
        }
    }

    fn v6(pool: Ipv6Net) -> Self {
        let pool = pool.trunc();
        let host_bits = 128 - u32::from(pool.prefix_len());
        // Slots are stored as BIGINT: cap huge pools at i64::MAX slots, which no
        // deployment will ever exhaust.
        let last = if host_bits >= 63 {
            i64::MAX as u64
        } else {
            (1u64 << host_bits) - 1
        };
        Self {
            key: pool.to_string(),
            column: Column::Vip6,
            network: IpAddr::V6(pool.network()),
            first: 1,
            last,
        }
    }

    fn address(&self, slot: u64) -> IpAddr {
        match self.network {
            IpAddr::V4(net) => {
                // `last` < 2^32 for IPv4, so the slot fits.
                IpAddr::V4(Ipv4Addr::from(u32::from(net).wrapping_add(slot as u32)))
            }
            IpAddr::V6(net) => IpAddr::V6(Ipv6Addr::from(
                u128::from(net).wrapping_add(u128::from(slot)),
            )),
        }
    }

    fn next(&self, slot: u64) -> u64 {
        if slot >= self.last {
            self.first
        } else {
            slot + 1
        }
    }

    fn taken_query(&self) -> &'static str {
        match self.column {
            Column::Vip4 => "SELECT 1 FROM devices WHERE vip4 = ?",
            Column::Vip6 => "SELECT 1 FROM devices WHERE vip6 = ?",
        }
    }
}

/// Finds the next free address of `pool` and advances the pool's cursor. Must run in a
/// write-locked transaction.
async fn allocate(
    tx: &mut sqlx::Transaction<'static, sqlx::Sqlite>,
    pool: &SlotPool,
) -> Result<IpAddr, StoreError> {
    if pool.last < pool.first {
        return Err(StoreError::PoolExhausted(pool.key.clone()));
    }
    sqlx::query(
        "INSERT INTO address_pools (pool, next_slot) VALUES (?, ?) ON CONFLICT (pool) DO NOTHING",
    )
    .bind(&pool.key)
    .bind(db_slot(pool.first))
    .execute(&mut **tx)
    .await?;
    let next: i64 = sqlx::query_scalar("SELECT next_slot FROM address_pools WHERE pool = ?")
        .bind(&pool.key)
        .fetch_one(&mut **tx)
        .await?;
    let mut slot = u64::try_from(next)
        .ok()
        .filter(|s| (pool.first..=pool.last).contains(s))
        .unwrap_or(pool.first);
    let capacity = pool.last - pool.first + 1;
    for _ in 0..capacity {
        let address = pool.address(slot);
        let taken: Option<i64> = sqlx::query_scalar(pool.taken_query())
            .bind(address.to_string())
            .fetch_optional(&mut **tx)
            .await?;
        if taken.is_none() {
            sqlx::query("UPDATE address_pools SET next_slot = ? WHERE pool = ?")
                .bind(db_slot(pool.next(slot)))
                .bind(&pool.key)
                .execute(&mut **tx)
                .await?;
            return Ok(address);
        }
        slot = pool.next(slot);
    }
    Err(StoreError::PoolExhausted(pool.key.clone()))
}

fn device_from_row(row: &SqliteRow) -> Result<Device, StoreError> {
    let fqdn: String = row.try_get("fqdn")?;
    let vip4: Option<String> = row.try_get("vip4")?;
    let vip6: Option<String> = row.try_get("vip6")?;
    let last_login: Option<i64> = row.try_get("last_login")?;
    Ok(Device {
        device_id: row.try_get("device_id")?,
        node_id: parse_node_id(&row.try_get::<String, _>("node_id")?)?,
        fqdn: Fqdn::new(&fqdn).map_err(|e| StoreError::Corrupt(format!("fqdn `{fqdn}`: {e}")))?,
        password_hash: row.try_get("password_hash")?,
        vip4: vip4.as_deref().map(parse_addr).transpose()?,
        vip6: vip6.as_deref().map(parse_addr).transpose()?,
        created_at: unix_time(row.try_get("created_at")?)?,
        last_login: last_login.map(unix_time).transpose()?,
    })
}

fn parse_node_id(text: &str) -> Result<NodeId, StoreError> {
    let mut id = [0u8; NodeId::LEN];
    hex::decode_to_slice(text, &mut id)
        .map_err(|e| StoreError::Corrupt(format!("node id `{text}`: {e}")))?;
    Ok(NodeId(id))
}

fn parse_addr<A: FromStr>(text: &str) -> Result<A, StoreError>
where
    A::Err: std::fmt::Display,
{
    text.parse()
        .map_err(|e| StoreError::Corrupt(format!("address `{text}`: {e}")))
}

fn unix_time(secs: i64) -> Result<UnixTime, StoreError> {
    u64::try_from(secs)
        .map(UnixTime)
        .map_err(|_| StoreError::Corrupt(format!("negative time {secs}")))
}

/// Times past year 292 billion do not occur; clamp rather than fail.
fn db_time(time: UnixTime) -> i64 {
    i64::try_from(time.0).unwrap_or(i64::MAX)
}

/// Slots never exceed `i64::MAX` (see [`SlotPool::v6`]).
fn db_slot(slot: u64) -> i64 {
    i64::try_from(slot).unwrap_or(i64::MAX)
}

fn create_private_file(path: &Path) -> Result<(), StoreError> {
    let io_error = |what: &str, e: std::io::Error| {
        StoreError::Database(sqlx::Error::Io(std::io::Error::new(
            e.kind(),
            format!("{what} {}: {e}", path.display()),
        )))
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        if !parent.exists() {
            let mut builder = std::fs::DirBuilder::new();
            builder.recursive(true);
            #[cfg(unix)]
            builder.mode(0o700);
            builder
                .create(parent)
                .map_err(|e| io_error("creating the directory of", e))?;
        }
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    options.mode(0o600);
    match options.open(path) {
        Ok(_) => Ok(()),
        #[cfg(not(unix))]
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        #[cfg(unix)]
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let mode = std::fs::metadata(path)
                .map_err(|e| io_error("reading", e))?
                .permissions()
                .mode();
            if mode & 0o077 != 0 {
                tracing::warn!(
                    path = %path.display(),
                    mode = format_args!("{:o}", mode & 0o777),
                    "the database holds password hashes but is readable by others; \
                     chmod 600 it"
                );
            }
            Ok(())
        }
        Err(e) => Err(io_error("creating", e)),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rand_core::OsRng;

    use super::*;

    fn new_device(id: &str, fqdn: &str) -> NewDevice {
        NewDevice {
            device_id: id.into(),
            node_id: NodeId::random(&mut OsRng),
            fqdn: Fqdn::new(fqdn).unwrap(),
            password_hash: format!("$argon2id$hash-of-{id}"),
            created_at: UnixTime(1_700_000_000),
        }
    }

    fn pools() -> (Ipv4Net, Ipv6Net) {
        (
            "100.64.0.0/10".parse().unwrap(),
            "fd12:3456:789a::/48".parse().unwrap(),
        )
    }

    async fn temp_store() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("data/cloud.db"))
            .await
            .unwrap();
        (dir, store)
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn creates_private_files() {
        let (dir, store) = temp_store().await;
        let data = dir.path().join("data");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&data), 0o700);
        assert_eq!(mode(&data.join("cloud.db")), 0o600);
        store
            .add_device(new_device("a", "a.cyphonic"))
            .await
            .unwrap();
        // WAL files inherit the database file's mode.
        assert_eq!(mode(&data.join("cloud.db-wal")), 0o600);
        store.close().await;
    }

    #[tokio::test]
    async fn add_and_look_up_devices() {
        let (_dir, store) = temp_store().await;
        let b = store
            .add_device(new_device("b-dev", "b.cyphonic"))
            .await
            .unwrap();
        let a = store
            .add_device(new_device("a-dev", "a.lab.cyphonic"))
            .await
            .unwrap();
        assert_eq!(b.vip4, None);
        assert_eq!(store.device("a-dev").await.unwrap(), Some(a.clone()));
        assert_eq!(
            store.device_by_node(&b.node_id).await.unwrap(),
            Some(b.clone())
        );
        assert_eq!(
            store
                .device_by_fqdn(&Fqdn::new("A.Lab.Cyphonic").unwrap())
                .await
                .unwrap(),
            Some(a.clone())
        );
        assert_eq!(store.device("c-dev").await.unwrap(), None);
        assert_eq!(store.device_by_node(&NodeId([7; 16])).await.unwrap(), None);
        let all = store.devices().await.unwrap();
        assert_eq!(all, vec![a, b]);

        let dup_id = store
            .add_device(new_device("a-dev", "other.cyphonic"))
            .await
            .unwrap_err();
        assert!(
            matches!(&dup_id, StoreError::DuplicateDevice(id) if id == "a-dev"),
            "{dup_id}"
        );
        let dup_name = store
            .add_device(new_device("c-dev", "b.cyphonic"))
            .await
            .unwrap_err();
        assert!(
            matches!(&dup_name, StoreError::DuplicateName(n) if n == "b.cyphonic"),
            "{dup_name}"
        );
        assert_eq!(store.devices().await.unwrap().len(), 2);
    }

    #[tokio::test]
    async fn password_and_login_updates() {
        let (_dir, store) = temp_store().await;
        store
            .add_device(new_device("a", "a.cyphonic"))
            .await
            .unwrap();
        assert!(store.set_password_hash("a", "$argon2id$new").await.unwrap());
        assert!(
            !store
                .set_password_hash("nobody", "$argon2id$new")
                .await
                .unwrap()
        );
        store
            .record_login("a", UnixTime(1_800_000_000))
            .await
            .unwrap();
        let a = store.device("a").await.unwrap().unwrap();
        assert_eq!(a.password_hash, "$argon2id$new");
        assert_eq!(a.last_login, Some(UnixTime(1_800_000_000)));
        assert!(matches!(
            store.record_login("nobody", UnixTime(1)).await,
            Err(StoreError::NoSuchDevice(_))
        ));
    }

    #[tokio::test]
    async fn addresses_are_stable_and_inside_the_pools() {
        let (_dir, store) = temp_store().await;
        let (v4pool, v6pool) = pools();
        store
            .add_device(new_device("a", "a.cyphonic"))
            .await
            .unwrap();
        store
            .add_device(new_device("b", "b.cyphonic"))
            .await
            .unwrap();
        let a = store.assign_addresses("a", v4pool, v6pool).await.unwrap();
        assert_eq!(
            a,
            (
                "100.64.0.1".parse().unwrap(),
                "fd12:3456:789a::1".parse().unwrap()
            )
        );
        assert_eq!(
            store.assign_addresses("a", v4pool, v6pool).await.unwrap(),
            a
        );
        let b = store.assign_addresses("b", v4pool, v6pool).await.unwrap();
        assert_eq!(
            b,
            (
                "100.64.0.2".parse().unwrap(),
                "fd12:3456:789a::2".parse().unwrap()
            )
        );
        // Even a changed pool never moves an assigned device.
        let other = ("10.0.0.0/8".parse().unwrap(), "fd00::/64".parse().unwrap());
        assert_eq!(
            store.assign_addresses("a", other.0, other.1).await.unwrap(),
            a
        );
        let stored = store.device("a").await.unwrap().unwrap();
        assert_eq!((stored.vip4, stored.vip6), (Some(a.0), Some(a.1)));
        assert!(matches!(
            store.assign_addresses("nobody", v4pool, v6pool).await,
            Err(StoreError::NoSuchDevice(_))
        ));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_assignments_across_two_instances_are_distinct() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cloud.db");
        // Two stores on one file behave like two cloud processes.
        let one = Arc::new(SqliteStore::open(&path).await.unwrap());
        let two = Arc::new(SqliteStore::open(&path).await.unwrap());
        let (v4pool, v6pool) = pools();
        for i in 0..50 {
            one.add_device(new_device(&format!("d{i}"), &format!("d{i}.cyphonic")))
                .await
                .unwrap();
        }
        let mut tasks = Vec::new();
        for i in 0..50 {
            let store = if i % 2 == 0 { one.clone() } else { two.clone() };
            tasks.push(tokio::spawn(async move {
                let id = format!("d{i}");
                let first = store.assign_addresses(&id, v4pool, v6pool).await.unwrap();
                let again = store.assign_addresses(&id, v4pool, v6pool).await.unwrap();
                assert_eq!(first, again);
                first
            }));
        }
        let mut v4 = std::collections::HashSet::new();
        let mut v6 = std::collections::HashSet::new();
        for task in tasks {
            let (a4, a6) = task.await.unwrap();
            assert!(v4pool.contains(&a4) && v6pool.contains(&a6));
            v4.insert(a4);
            v6.insert(a6);
        }
        assert_eq!((v4.len(), v6.len()), (50, 50));
        // Next-fit from slot 1 with no gaps: exactly the first 50 addresses.
        assert!(v4.contains(&"100.64.0.1".parse::<Ipv4Addr>().unwrap()));
        assert!(v4.contains(&"100.64.0.50".parse::<Ipv4Addr>().unwrap()));
        one.close().await;
        two.close().await;
    }

    #[tokio::test]
    async fn tiny_pool_is_exhausted_and_freed_addresses_come_back() {
        let (_dir, store) = temp_store().await;
        let v4pool: Ipv4Net = "192.0.2.0/30".parse().unwrap();
        let v6pool: Ipv6Net = "fd00::/64".parse().unwrap();
        for id in ["a", "b", "c"] {
            store
                .add_device(new_device(id, &format!("{id}.cyphonic")))
                .await
                .unwrap();
        }
        let a = store.assign_addresses("a", v4pool, v6pool).await.unwrap();
        let b = store.assign_addresses("b", v4pool, v6pool).await.unwrap();
        // Network (.0) and broadcast (.3) are skipped.
        assert_eq!(a.0, Ipv4Addr::new(192, 0, 2, 1));
        assert_eq!(b.0, Ipv4Addr::new(192, 0, 2, 2));
        let err = store
            .assign_addresses("c", v4pool, v6pool)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, StoreError::PoolExhausted(p) if p == "192.0.2.0/30"),
            "{err}"
        );
        // The failed attempt assigned nothing, not even the IPv6 half.
        let c = store.device("c").await.unwrap().unwrap();
        assert_eq!((c.vip4, c.vip6), (None, None));
        // A removed device's address is reused once the pool wraps.
        assert!(store.remove_device("a").await.unwrap());
        let c = store.assign_addresses("c", v4pool, v6pool).await.unwrap();
        assert_eq!(c.0, Ipv4Addr::new(192, 0, 2, 1));
        assert_ne!(c.1, a.1);
    }

    #[tokio::test]
    async fn tiny_ipv6_pool_is_exhausted() {
        let (_dir, store) = temp_store().await;
        let (v4pool, _) = pools();
        let v6pool: Ipv6Net = "fd00::/127".parse().unwrap();
        store
            .add_device(new_device("a", "a.cyphonic"))
            .await
            .unwrap();
        store
            .add_device(new_device("b", "b.cyphonic"))
            .await
            .unwrap();
        let a = store.assign_addresses("a", v4pool, v6pool).await.unwrap();
        assert_eq!(a.1, "fd00::1".parse::<Ipv6Addr>().unwrap());
        assert!(matches!(
            store.assign_addresses("b", v4pool, v6pool).await,
            Err(StoreError::PoolExhausted(_))
        ));
    }

    #[tokio::test]
    async fn revocations_follow_a_cursor_and_survive_pruning() {
        let (_dir, store) = temp_store().await;
        let mut nodes = Vec::new();
        for id in ["a", "b", "c"] {
            nodes.push(
                store
                    .add_device(new_device(id, &format!("{id}.cyphonic")))
                    .await
                    .unwrap()
                    .node_id,
            );
        }
        assert_eq!(
            store.revocations_since(0).await.unwrap(),
            Revocations::default()
        );
        assert!(store.remove_device("a").await.unwrap());
        assert!(store.remove_device("b").await.unwrap());
        assert!(!store.remove_device("a").await.unwrap());
        assert!(!store.remove_device("nobody").await.unwrap());
        assert_eq!(store.device("a").await.unwrap(), None);

        let first = store.revocations_since(0).await.unwrap();
        assert_eq!(first.node_ids, vec![nodes[0], nodes[1]]);
        let none = store.revocations_since(first.cursor).await.unwrap();
        assert_eq!(
            none,
            Revocations {
                cursor: first.cursor,
                node_ids: vec![]
            }
        );

        // Pruning everything must not let ids be reused below the cursor.
        let future =
            UnixTime::from_system_time(SystemTime::now()).saturating_add(Duration::from_secs(10));
        assert_eq!(store.prune_revocations(future).await.unwrap(), 2);
        assert!(store.remove_device("c").await.unwrap());
        let next = store.revocations_since(first.cursor).await.unwrap();
        assert_eq!(next.node_ids, vec![nodes[2]]);
        assert!(next.cursor > first.cursor);
        // Pruning by age keeps recent ones.
        assert_eq!(store.prune_revocations(UnixTime(1)).await.unwrap(), 0);
        // A re-added device id gets a fresh node id, not the revoked one.
        let again = store
            .add_device(new_device("a", "a.cyphonic"))
            .await
            .unwrap();
        assert_ne!(again.node_id, nodes[0]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn setting_or_insert_agrees_under_races() {
        let (_dir, store) = temp_store().await;
        assert_eq!(store.setting("ula_prefix").await.unwrap(), None);
        let store = Arc::new(store);
        let tasks: Vec<_> = (0..20)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move {
                    store
                        .setting_or_insert("ula_prefix", &format!("value-{i}"))
                        .await
                        .unwrap()
                })
            })
            .collect();
        let mut values = std::collections::HashSet::new();
        for task in tasks {
            values.insert(task.await.unwrap());
        }
        assert_eq!(values.len(), 1, "{values:?}");
        let winner = values.into_iter().next().unwrap();
        assert_eq!(
            store.setting("ula_prefix").await.unwrap(),
            Some(winner.clone())
        );
        assert_eq!(
            store.setting_or_insert("ula_prefix", "late").await.unwrap(),
            winner
        );
    }

    #[tokio::test]
    async fn reopening_keeps_everything() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cloud.db");
        let (v4pool, v6pool) = pools();
        let (a, addrs, cursor) = {
            let store = SqliteStore::open(&path).await.unwrap();
            let a = store
                .add_device(new_device("a", "a.cyphonic"))
                .await
                .unwrap();
            store
                .add_device(new_device("gone", "gone.cyphonic"))
                .await
                .unwrap();
            let addrs = store.assign_addresses("a", v4pool, v6pool).await.unwrap();
            store
                .assign_addresses("gone", v4pool, v6pool)
                .await
                .unwrap();
            store.remove_device("gone").await.unwrap();
            store
                .setting_or_insert("ula_prefix", "fd11::/48")
                .await
                .unwrap();
            let cursor = store.revocations_since(0).await.unwrap().cursor;
            store.close().await;
            (a, addrs, cursor)
        };
        let store = SqliteStore::open(&path).await.unwrap();
        let stored = store.device("a").await.unwrap().unwrap();
        assert_eq!(stored.node_id, a.node_id);
        assert_eq!((stored.vip4, stored.vip6), (Some(addrs.0), Some(addrs.1)));
        assert_eq!(
            store.assign_addresses("a", v4pool, v6pool).await.unwrap(),
            addrs
        );
        assert_eq!(
            store.setting("ula_prefix").await.unwrap().as_deref(),
            Some("fd11::/48")
        );
        let revoked = store.revocations_since(0).await.unwrap();
        assert_eq!((revoked.cursor, revoked.node_ids.len()), (cursor, 1));
        // The pool cursor survived too: the next device does not reuse the freed .2.
        store
            .add_device(new_device("b", "b.cyphonic"))
            .await
            .unwrap();
        let b = store.assign_addresses("b", v4pool, v6pool).await.unwrap();
        assert_eq!(b.0, Ipv4Addr::new(100, 64, 0, 3));
        store.close().await;
    }

    #[tokio::test]
    async fn in_memory_store_works() {
        let store = SqliteStore::open_in_memory().await.unwrap();
        store
            .add_device(new_device("a", "a.cyphonic"))
            .await
            .unwrap();
        assert!(store.remove_device("a").await.unwrap());
        assert_eq!(store.revocations_since(0).await.unwrap().node_ids.len(), 1);
    }
}
