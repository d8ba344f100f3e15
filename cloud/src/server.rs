//! `serve`: opens the store, loads the keys, binds every socket, then runs the enabled
//! services and the helpers around them (revocation watcher, metrics endpoint, periodic
//! metrics log) until SIGINT/SIGTERM or until one of them fails.
//!
//! Everything that can fail on a bad configuration (data directory, database, keys,
//! every bind) fails inside [`Server::start`], before any service runs, with an error
//! that names the service and the address.
//!
//! A TRS on another host (`serve --only trs` with `services.trs.relay_key_file` set)
//! needs neither the signing key nor a database: it uses `<data_dir>/cloud.db` for
//! revocations if that file exists (a shared or replicated database), and otherwise an
//! empty in-memory store, so a removed device's relay tickets only stop at their expiry
//! there.

use std::collections::HashMap;
use std::io;
use std::net::{Ipv6Addr, SocketAddr};
#[cfg(unix)]
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use cyphonic_proto::credential::CLOCK_SKEW_SECS;
use cyphonic_proto::time::UnixTime;
use ipnet::Ipv6Net;
use rand_core::{OsRng, RngCore as _};
use tokio::net::UdpSocket;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::{CloudConfig, ServiceKind};
use crate::context::{CloudContext, CloudKeys, Revoked};
use crate::keys::{self, KeyError};
use crate::metrics::Metrics;
use crate::net;
use crate::store::sqlite::SqliteStore;
use crate::store::{Store, StoreError};

/// The database's file name inside the data directory.
pub const DATABASE_FILE: &str = "cloud.db";
/// The settings key the generated ULA prefix is stored under.
pub const ULA_SETTING: &str = "ula_prefix";
/// How often the store is polled for removed devices.
pub const REVOCATION_POLL: Duration = Duration::from_secs(1);
/// How long tasks get to finish after shutdown is requested.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// How often old revocations are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(3_600);

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("no service to run: services.as/nms/trs.enabled are all false (or use --only)")]
    NoServices,
    #[error("data directory {}: {source}", .path.display())]
    DataDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("database {}: {source}", .path.display())]
    OpenDatabase {
        path: PathBuf,
        #[source]
        source: StoreError,
    },
    #[error(transparent)]
    Database(#[from] StoreError),
    #[error(transparent)]
    Keys(#[from] KeyError),
    #[error(
        "services.trs.relay_key_file {} holds relay key {file_key}, but this cloud's \
         signing key derives relay key {own_key}; re-export it with `cyphonic-cloud key export-relay`",
        .path.display()
    )]
    RelayKeyMismatch {
        path: PathBuf,
        file_key: String,
        own_key: String,
    },
    #[error("database setting `{ULA_SETTING}` is not an IPv6 prefix: `{0}`")]
    BadStoredPrefix(String),
    #[error("{service}: cannot listen on {addr}: {source}")]
    Bind {
        service: &'static str,
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("{service} failed: {source}")]
    Service {
        service: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("{0} stopped without being asked to")]
    Stopped(&'static str),
    #[error("{0} panicked")]
    Panicked(&'static str),
    #[error("metrics endpoint: {0}")]
    Metrics(#[source] io::Error),
    #[error("installing signal handlers: {0}")]
    Signals(#[source] io::Error),
}

/// Runs the cloud until SIGINT/SIGTERM (`Ok`) or until a service fails (`Err`).
/// `only` runs that one service whatever `services.*.enabled` say.
pub async fn serve(config: CloudConfig, only: Option<ServiceKind>) -> Result<(), ServeError> {
    let server = Server::start(config, only).await?;
    let shutdown = server.shutdown_token();
    #[cfg(unix)]
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(ServeError::Signals)?;
    #[cfg(not(unix))]
    let mut terminate = NoTerminate;
    let signals = tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
                _ = terminate.recv() => tracing::info!("SIGTERM: shutting down"),
                () = shutdown.cancelled() => return,
            }
            shutdown.cancel();
        }
    });
    let result = server.run().await;
    signals.abort();
    result
}

/// Without SIGTERM (non-Unix builds) only Ctrl+C stops the cloud.
#[cfg(not(unix))]
struct NoTerminate;

#[cfg(not(unix))]
impl NoTerminate {
    async fn recv(&mut self) -> Option<()> {
        std::future::pending().await
    }
}

/// Creates the data directory (mode 0700) if it does not exist.
pub fn prepare_data_dir(dir: &Path) -> Result<(), ServeError> {
    let err = |source| ServeError::DataDir {
        path: dir.to_owned(),
        source,
    };
    #[cfg(not(unix))]
    {
        std::fs::create_dir_all(dir).map_err(err)
    }
    #[cfg(unix)]
    {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(err)?;
        warn_if_open(dir).map_err(err)
    }
}

#[cfg(unix)]
fn warn_if_open(dir: &Path) -> io::Result<()> {
    let mode = std::fs::metadata(dir)?.permissions().mode();
    if mode & 0o022 != 0 {
        tracing::warn!(
            path = %dir.display(),
            mode = format_args!("{:03o}", mode & 0o777),
            "the data directory is writable by others; chmod 700 it"
        );
    }
    Ok(())
}

/// Opens (creating if needed) the database in the data directory.
pub async fn open_store(data_dir: &Path) -> Result<SqliteStore, ServeError> {
    let path = data_dir.join(DATABASE_FILE);
    SqliteStore::open(&path)
        .await
        .map_err(|source| ServeError::OpenDatabase { path, source })
}

/// A started cloud: every socket bound, every task running.
#[derive(Debug)]
pub struct Server {
    ctx: Arc<CloudContext>,
    store: SqliteStore,
    shutdown: CancellationToken,
    tasks: JoinSet<Result<(), ServeError>>,
    task_names: HashMap<tokio::task::Id, &'static str>,
    listening: Vec<(ServiceKind, SocketAddr)>,
    metrics_addr: Option<SocketAddr>,
}

impl Server {
    /// Does everything that can fail on a bad configuration, then starts the tasks.
    /// Listen addresses with port 0 get a free port; `context().config` shows the
    /// bound addresses.
    pub async fn start(
        mut config: CloudConfig,
        only: Option<ServiceKind>,
    ) -> Result<Self, ServeError> {
        let enabled = enabled_services(&config, only);
        if enabled.is_empty() {
            return Err(ServeError::NoServices);
        }
        // The context's configuration says what this process runs: the NMS offers the
        // local TRS only when it really runs here (`--only nms` must not offer it).
        config.services.auth.enabled = enabled.contains(&ServiceKind::Auth);
        config.services.nms.enabled = enabled.contains(&ServiceKind::Nms);
        config.services.trs.enabled = enabled.contains(&ServiceKind::Trs);
        let data_dir = config.data_dir.clone();
        // Only a process running nothing but the TRS can do without the signing key.
        let relay_file = if enabled == [ServiceKind::Trs] {
            config.services.trs.relay_key_file.clone()
        } else {
            None
        };
        let relay_only = relay_file.is_some();

        let (keys, store) = if let Some(file) = relay_file {
            let keys = keys::load_relay_only(&file)?;
            let store = if data_dir.join(DATABASE_FILE).exists() {
                open_store(&data_dir).await?
            } else {
                tracing::info!(
                    "relay-only TRS without {}: revocations are not watched, removed \
                     devices' tickets stop at their expiry",
                    data_dir.join(DATABASE_FILE).display()
                );
                SqliteStore::open_in_memory().await?
            };
            (keys, store)
        } else {
            prepare_data_dir(&data_dir)?;
            let store = open_store(&data_dir).await?;
            let keys = keys::load_or_create(&data_dir)?;
            if enabled.contains(&ServiceKind::Trs) {
                if let Some(file) = &config.services.trs.relay_key_file {
                    check_relay_file(&keys, file)?;
                }
            }
            (keys, store)
        };

        let ipv6_pool = match config.pools.ipv6 {
            Some(pool) => pool,
            None => {
                let stored = store
                    .setting_or_insert(ULA_SETTING, &random_ula().to_string())
                    .await?;
                stored
                    .parse()
                    .map_err(|_| ServeError::BadStoredPrefix(stored.clone()))?
            }
        };

        // Bind everything before starting anything, so a taken port fails the start.
        let mut service_sockets = Vec::new();
        let mut listening = Vec::new();
        for &kind in &enabled {
            let listen = listen_addrs_mut(&mut config, kind);
            let mut sockets = Vec::with_capacity(listen.len());
            for addr in listen.iter_mut() {
                let bind_err = |source| ServeError::Bind {
                    service: service_name(kind),
                    addr: *addr,
                    source,
                };
                let socket = net::bind_udp(*addr).map_err(bind_err)?;
                *addr = socket.local_addr().map_err(bind_err)?;
                listening.push((kind, *addr));
                sockets.push(Arc::new(socket));
            }
            service_sockets.push((kind, sockets));
        }
        let metrics_listener = match config.metrics.listen {
            Some(addr) => {
                let bind_err = |source| ServeError::Bind {
                    service: "metrics",
                    addr,
                    source,
                };
                let listener = tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(bind_err)?;
                let bound = listener.local_addr().map_err(bind_err)?;
                config.metrics.listen = Some(bound);
                Some(listener)
            }
            None => None,
        };
        let metrics_addr = config.metrics.listen;

        log_startup(&config, &keys, &ipv6_pool, &listening, relay_only);

        let ctx = Arc::new(CloudContext {
            config,
            keys,
            store: Arc::new(store.clone()),
            metrics: Metrics::new(),
            revoked: Revoked::new(),
            ipv6_pool,
        });
        // Known revocations are in place before any service takes a datagram.
        let cursor = load_revocations(&ctx).await?;

        let shutdown = CancellationToken::new();
        let mut server = Self {
            ctx: ctx.clone(),
            store: store.clone(),
            shutdown: shutdown.clone(),
            tasks: JoinSet::new(),
            task_names: HashMap::new(),
            listening,
            metrics_addr,
        };
        server.spawn(
            "revocation watcher",
            watch_revocations(ctx.clone(), store, cursor, shutdown.clone()),
        );
        if let Some(listener) = metrics_listener {
            server.spawn(
                "metrics endpoint",
                serve_metrics(listener, ctx.metrics.clone(), shutdown.clone()),
            );
        }
        if ctx.config.metrics.log_interval_secs > 0 {
            server.spawn("metrics log", log_metrics(ctx.clone(), shutdown.clone()));
        }
        for (kind, sockets) in service_sockets {
            server.spawn_service(kind, sockets);
        }
        Ok(server)
    }

    pub fn context(&self) -> &Arc<CloudContext> {
        &self.ctx
    }

    /// The bound UDP addresses of `kind` (empty when this process does not run it).
    pub fn local_addrs(&self, kind: ServiceKind) -> Vec<SocketAddr> {
        self.listening
            .iter()
            .filter(|(k, _)| *k == kind)
            .map(|(_, a)| *a)
            .collect()
    }

    /// The bound metrics endpoint, if enabled.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// Cancelling this token stops the server (`run` then returns `Ok`).
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Waits until shutdown is requested or a task ends; then stops every task (giving
    /// them a few seconds) and closes the database. The first failure is the result.
    pub async fn run(mut self) -> Result<(), ServeError> {
        let mut failure = None;
        loop {
            tokio::select! {
                () = self.shutdown.cancelled() => break,
                joined = self.tasks.join_next_with_id() => {
                    let Some(joined) = joined else { break };
                    if let Some(error) = self.task_outcome(joined) {
                        failure = Some(error);
                        break;
                    }
                }
            }
        }
        if let Some(error) = &failure {
            tracing::error!(%error, "stopping the cloud");
        }
        self.shutdown.cancel();
        let drain = async {
            while let Some(joined) = self.tasks.join_next_with_id().await {
                if let Some(error) = self.task_outcome(joined) {
                    if !matches!(error, ServeError::Stopped(_)) {
                        tracing::warn!(%error, "while shutting down");
                    }
                }
            }
        };
        if tokio::time::timeout(SHUTDOWN_GRACE, drain).await.is_err() {
            tracing::warn!("tasks still running {SHUTDOWN_GRACE:?} after shutdown; aborting them");
            self.tasks.shutdown().await;
        }
        self.store.close().await;
        tracing::info!("cloud stopped");
        failure.map_or(Ok(()), Err)
    }

    /// `None` for a task that ended normally during shutdown.
    fn task_outcome(
        &self,
        joined: Result<(tokio::task::Id, Result<(), ServeError>), tokio::task::JoinError>,
    ) -> Option<ServeError> {
        match joined {
            Ok((_, Err(error))) => Some(error),
            Ok((id, Ok(()))) if !self.shutdown.is_cancelled() => {
                Some(ServeError::Stopped(self.task_name(id)))
            }
            Ok(_) => None,
            Err(e) if e.is_panic() => Some(ServeError::Panicked(self.task_name(e.id()))),
            // Cancelled: only `shutdown` aborts tasks.
            Err(_) => None,
        }
    }

    fn task_name(&self, id: tokio::task::Id) -> &'static str {
        self.task_names.get(&id).copied().unwrap_or("a task")
    }

    fn spawn(
        &mut self,
        name: &'static str,
        task: impl Future<Output = Result<(), ServeError>> + Send + 'static,
    ) {
        let handle = self.tasks.spawn(task);
        self.task_names.insert(handle.id(), name);
    }

    fn spawn_service(&mut self, kind: ServiceKind, sockets: Vec<Arc<UdpSocket>>) {
        let ctx = self.ctx.clone();
        let shutdown = self.shutdown.clone();
        let name = service_name(kind);
        let failed = move |e: Box<dyn std::error::Error + Send + Sync>| ServeError::Service {
            service: name,
            source: e,
        };
        match kind {
            ServiceKind::Auth => self.spawn(name, async move {
                crate::auth::run(ctx, sockets, shutdown)
                    .await
                    .map_err(|e| failed(Box::new(e)))
            }),
            ServiceKind::Nms => self.spawn(name, async move {
                crate::nms::run(ctx, sockets, shutdown)
                    .await
                    .map_err(|e| failed(Box::new(e)))
            }),
            ServiceKind::Trs => self.spawn(name, async move {
                crate::trs::run(ctx, sockets, shutdown)
                    .await
                    .map_err(|e| failed(Box::new(e)))
            }),
        }
    }
}

/// The name logs and errors use for a service.
pub fn service_name(kind: ServiceKind) -> &'static str {
    match kind {
        ServiceKind::Auth => "AS",
        ServiceKind::Nms => "NMS",
        ServiceKind::Trs => "TRS",
    }
}

fn enabled_services(config: &CloudConfig, only: Option<ServiceKind>) -> Vec<ServiceKind> {
    if let Some(kind) = only {
        return vec![kind];
    }
    let s = &config.services;
    [
        (ServiceKind::Auth, s.auth.enabled),
        (ServiceKind::Nms, s.nms.enabled),
        (ServiceKind::Trs, s.trs.enabled),
    ]
    .into_iter()
    .filter_map(|(kind, on)| on.then_some(kind))
    .collect()
}

fn listen_addrs_mut(config: &mut CloudConfig, kind: ServiceKind) -> &mut Vec<SocketAddr> {
    match kind {
        ServiceKind::Auth => &mut config.services.auth.listen,
        ServiceKind::Nms => &mut config.services.nms.listen,
        ServiceKind::Trs => &mut config.services.trs.listen,
    }
}

/// A TRS in the main cloud process given a relay key file too: it must be the same key,
/// or it would refuse every ticket the NMS mints.
fn check_relay_file(keys: &CloudKeys, file: &Path) -> Result<(), ServeError> {
    let from_file = keys::load_relay_only(file)?;
    if from_file.relay.key_id() != keys.relay.key_id() {
        return Err(ServeError::RelayKeyMismatch {
            path: file.to_owned(),
            file_key: hex::encode(from_file.relay.key_id()),
            own_key: hex::encode(keys.relay.key_id()),
        });
    }
    Ok(())
}

/// A random /48 inside fd00::/8: 40 random bits of global ID (RFC 4193 section 3.2).
fn random_ula() -> Ipv6Net {
    let mut bytes = [0u8; 16];
    bytes[0] = 0xfd;
    OsRng.fill_bytes(&mut bytes[1..6]);
    Ipv6Net::new(Ipv6Addr::from(bytes), 48).expect("48 is a valid IPv6 prefix length")
}

fn log_startup(
    config: &CloudConfig,
    keys: &CloudKeys,
    ipv6_pool: &Ipv6Net,
    listening: &[(ServiceKind, SocketAddr)],
    relay_only: bool,
) {
    match keys.signing.as_ref() {
        Some(signing) => tracing::info!(
            data_dir = %config.data_dir.display(),
            key_id = %keys::key_id_text(&signing.verifying_key()),
            "cloud signing key loaded (`cyphonic-cloud key show` prints what nodes pin)"
        ),
        None => tracing::info!(
            relay_key_id = %hex::encode(keys.relay.key_id()),
            relay_only,
            "relay key loaded"
        ),
    }
    if !relay_only {
        tracing::info!(ipv4 = %config.pools.ipv4, ipv6 = %ipv6_pool, domain = %config.domain, "address pools");
    }
    for kind in [ServiceKind::Auth, ServiceKind::Nms, ServiceKind::Trs] {
        let addrs: Vec<String> = listening
            .iter()
            .filter(|(k, _)| *k == kind)
            .map(|(_, a)| a.to_string())
            .collect();
        if !addrs.is_empty() {
            tracing::info!(service = service_name(kind), listen = %addrs.join(", "), "starting");
        }
    }
    if let Some(addr) = config.metrics.listen {
        tracing::info!("metrics endpoint at http://{addr}/metrics");
    }
}

async fn load_revocations(ctx: &CloudContext) -> Result<i64, ServeError> {
    let revocations = ctx.store.revocations_since(0).await?;
    ctx.revoked.extend(revocations.node_ids);
    revoked_gauge(&ctx.metrics).set(gauge_value(ctx.revoked.len()));
    Ok(revocations.cursor)
}

/// Polls the store for removed devices (made by `device remove` in another process or by
/// another instance) and prunes revocations no credential can outlive.
async fn watch_revocations(
    ctx: Arc<CloudContext>,
    store: SqliteStore,
    mut cursor: i64,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    let errors = ctx.metrics.counter(
        "cyphonic_store_errors_total",
        &[("op", "revocations")],
        "Failed database operations",
    );
    let gauge = revoked_gauge(&ctx.metrics);
    let mut poll = tokio::time::interval(REVOCATION_POLL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut prune = tokio::time::interval(PRUNE_EVERY);
    prune.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let keep = Duration::from_secs(
        u64::from(
            ctx.config
                .credentials
                .lifetime_secs
                .max(ctx.config.credentials.ticket_lifetime_secs),
        ) + CLOCK_SKEW_SECS
            + 3_600,
    );
    let mut failing = false;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            _ = poll.tick() => {
                match ctx.store.revocations_since(cursor).await {
                    Ok(revocations) => {
                        if failing {
                            tracing::info!("revocation polling works again");
                            failing = false;
                        }
                        if !revocations.node_ids.is_empty() {
                            tracing::info!(count = revocations.node_ids.len(), "devices revoked");
                            ctx.revoked.extend(revocations.node_ids);
                            gauge.set(gauge_value(ctx.revoked.len()));
                        }
                        cursor = revocations.cursor;
                    }
                    Err(error) => {
                        errors.inc();
                        // Transient (a locked or briefly unavailable database): keep
                        // serving, retry each second, say so once.
                        if !failing {
                            tracing::warn!(%error, "polling revocations failed; retrying");
                            failing = true;
                        }
                    }
                }
            }
            _ = prune.tick() => {
                let before = UnixTime::from_system_time(SystemTime::now()).saturating_sub(keep);
                match store.prune_revocations(before).await {
                    Ok(0) => {}
                    Ok(n) => tracing::debug!(pruned = n, "old revocations pruned"),
                    Err(error) => {
                        errors.inc();
                        tracing::warn!(%error, "pruning revocations failed");
                    }
                }
            }
        }
    }
}

fn revoked_gauge(metrics: &Metrics) -> crate::metrics::Gauge {
    metrics.gauge(
        "cyphonic_revoked_nodes",
        &[],
        "Node ids of removed devices known to this process",
    )
}

fn gauge_value(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// `GET /metrics` in the Prometheus text format; nothing else is served.
async fn serve_metrics(
    listener: tokio::net::TcpListener,
    metrics: Metrics,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    use axum::http::header::CONTENT_TYPE;

    let app = axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(
                |axum::extract::State(metrics): axum::extract::State<Metrics>| async move {
                    (
                        [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
                        metrics.render(),
                    )
                },
            ),
        )
        .with_state(metrics);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
        .map_err(ServeError::Metrics)
}

async fn log_metrics(
    ctx: Arc<CloudContext>,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    let period = Duration::from_secs(u64::from(ctx.config.metrics.log_interval_secs));
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            _ = ticks.tick() => {
                let summary = ctx.metrics.summary();
                tracing::info!(
                    target: "cyphonic_cloud::metrics",
                    "counters: {}",
                    if summary.is_empty() { "all zero" } else { summary.as_str() }
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read as _, Write as _};

    use cyphonic_proto::wire::{Fqdn, NodeId};

    use super::*;
    use crate::store::NewDevice;

    fn test_config(dir: &Path) -> CloudConfig {
        let mut config = CloudConfig {
            data_dir: dir.join("data"),
            ..CloudConfig::default()
        };
        let local: Vec<SocketAddr> = vec!["127.0.0.1:0".parse().unwrap()];
        config.services.auth.listen = local.clone();
        config.services.nms.listen = local.clone();
        config.services.trs.listen = local;
        config.metrics.listen = Some("127.0.0.1:0".parse().unwrap());
        config
    }

    #[test]
    fn example_config_equals_the_defaults() {
        let text = include_str!("../../config/cloud.yaml");
        let parsed = crate::config::parse(text, Path::new("config/cloud.yaml")).unwrap();
        assert_eq!(
            format!("{parsed:#?}"),
            format!("{:#?}", CloudConfig::default())
        );
        // Every key is spelled out, not left to the defaults.
        for key in [
            "data_dir:",
            "domain:",
            "log:",
            "services:",
            "as:",
            "nms:",
            "trs:",
            "enabled:",
            "listen:",
            "keepalive_secs:",
            "presence_ttl_secs:",
            "confirm_timeout_ms:",
            "name:",
            "advertise:",
            "relay_key_file:",
            "rate_bytes_per_sec:",
            "burst_bytes:",
            "idle_secs:",
            "max_bindings:",
            "credentials:",
            "lifetime_secs:",
            "renew_after_secs:",
            "ticket_lifetime_secs:",
            "pools:",
            "ipv4:",
            "ipv6:",
            "login_limits:",
            "per_device_failures:",
            "per_source_failures:",
            "window_secs:",
            "argon2:",
            "memory_kib:",
            "iterations:",
            "parallelism:",
            "policy:",
            "default:",
            "rules:",
            "relays:",
            "metrics:",
            "log_interval_secs:",
        ] {
            assert!(
                text.lines().any(|l| l.trim_start().starts_with(key)),
                "config/cloud.yaml lacks `{key}`"
            );
        }
    }

    #[test]
    fn random_ula_is_a_48_in_fd00() {
        let a = random_ula();
        assert_eq!(a.prefix_len(), 48);
        assert_eq!(a.network().octets()[0], 0xfd);
        assert_eq!(a.network(), a.addr());
        assert_ne!(a, random_ula());
    }

    #[test]
    fn only_overrides_enabled() {
        let mut config = CloudConfig::default();
        assert_eq!(enabled_services(&config, None).len(), 3);
        config.services.nms.enabled = false;
        assert_eq!(
            enabled_services(&config, None),
            vec![ServiceKind::Auth, ServiceKind::Trs]
        );
        assert_eq!(
            enabled_services(&config, Some(ServiceKind::Nms)),
            vec![ServiceKind::Nms]
        );
        config.services.auth.enabled = false;
        config.services.trs.enabled = false;
        assert!(enabled_services(&config, None).is_empty());
    }

    #[tokio::test]
    async fn no_service_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = test_config(dir.path());
        config.services.auth.enabled = false;
        config.services.nms.enabled = false;
        config.services.trs.enabled = false;
        assert!(matches!(
            Server::start(config, None).await,
            Err(ServeError::NoServices)
        ));
    }

    #[tokio::test]
    async fn a_taken_port_names_the_service_and_address() {
        let dir = tempfile::tempdir().unwrap();
        let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let mut config = test_config(dir.path());
        config.services.nms.listen = vec![addr];
        let err = Server::start(config, None).await.unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with(&format!("NMS: cannot listen on {addr}")),
            "{text}"
        );
    }

    #[tokio::test]
    async fn serves_metrics_and_watches_revocations_until_shutdown() {
        let dir = tempfile::tempdir().unwrap();
        let config = test_config(dir.path());
        let server = Server::start(config, Some(ServiceKind::Trs)).await.unwrap();
        let ctx = server.context().clone();
        assert!(server.local_addrs(ServiceKind::Auth).is_empty());
        let trs = server.local_addrs(ServiceKind::Trs);
        assert_eq!(trs.len(), 1);
        assert_ne!(trs[0].port(), 0);
        assert_eq!(ctx.config.services.trs.listen, trs);
        // The ULA prefix was generated and stored.
        let stored = ctx.store.setting(ULA_SETTING).await.unwrap().unwrap();
        assert_eq!(stored, ctx.ipv6_pool.to_string());
        let data = dir.path().join("data");
        #[cfg(unix)]
        assert_eq!(
            std::fs::metadata(&data).unwrap().permissions().mode() & 0o777,
            0o700
        );
        assert!(data.join(keys::SIGNING_KEY_FILE).exists());

        // A removal through another handle (as `device remove` would do) reaches the
        // running process within the poll interval.
        let admin = SqliteStore::open(&data.join(DATABASE_FILE)).await.unwrap();
        let node = NodeId::random(&mut OsRng);
        admin
            .add_device(NewDevice {
                device_id: "gone".into(),
                node_id: node,
                fqdn: Fqdn::new("gone.cyphonic").unwrap(),
                password_hash: "$argon2id$x".into(),
                created_at: UnixTime(1),
            })
            .await
            .unwrap();
        assert!(admin.remove_device("gone").await.unwrap());
        admin.close().await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !ctx.revoked.contains(&node) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "revocation not seen"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        let metrics_addr = server.metrics_addr().unwrap();
        let body = tokio::task::spawn_blocking(move || {
            let get = |path: &str| {
                let mut conn = std::net::TcpStream::connect(metrics_addr).unwrap();
                write!(
                    conn,
                    "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                )
                .unwrap();
                let mut response = String::new();
                conn.read_to_string(&mut response).unwrap();
                response
            };
            (get("/metrics"), get("/other"))
        })
        .await
        .unwrap();
        assert!(body.0.starts_with("HTTP/1.1 200"), "{}", body.0);
        assert!(body.0.contains("text/plain; version=0.0.4"), "{}", body.0);
        assert!(body.0.contains("cyphonic_revoked_nodes 1"), "{}", body.0);
        assert!(body.1.starts_with("HTTP/1.1 404"), "{}", body.1);

        let shutdown = server.shutdown_token();
        let running = tokio::spawn(server.run());
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), running)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn relay_only_trs_needs_no_signing_key_or_database() {
        let dir = tempfile::tempdir().unwrap();
        let main_dir = dir.path().join("main");
        std::fs::create_dir(&main_dir).unwrap();
        let main_keys = keys::load_or_create(&main_dir).unwrap();
        let relay_file = dir.path().join("relay.key");
        keys::write_relay_file(&main_keys, &relay_file).unwrap();

        let mut config = test_config(dir.path());
        config.services.trs.relay_key_file = Some(relay_file.clone());
        config.metrics.listen = None;
        let server = Server::start(config.clone(), Some(ServiceKind::Trs))
            .await
            .unwrap();
        let ctx = server.context().clone();
        assert!(ctx.keys.signing.is_none());
        assert_eq!(ctx.keys.relay.key_id(), main_keys.relay.key_id());
        assert!(
            !config.data_dir.exists(),
            "a relay-only TRS must not create a data dir"
        );
        server.shutdown_token().cancel();
        server.run().await.unwrap();

        // In the main process, a relay key file that is not its own is refused.
        let mut mixed = config;
        mixed.services.trs.relay_key_file = Some(relay_file);
        let err = Server::start(mixed, None).await.unwrap_err();
        assert!(matches!(err, ServeError::RelayKeyMismatch { .. }), "{err}");
    }
}
