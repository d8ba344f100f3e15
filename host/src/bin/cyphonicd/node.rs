//! The daemon's runtime: brings a logged-in node up (interface, data path, resolver,
//! registration), keeps it up (keepalives, renewals, directions asked by the resolver
//! and by the data path, directions pushed by the NMS), answers the control API, and
//! takes everything down again in reverse order.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, anyhow, bail};
use arc_swap::ArcSwap;

use crate::reload;
use cyphonic_host::config::{self, NodeConfig, SystemDnsMode};
use cyphonic_host::control::{
    self, CloudStatus, NodeState, NodeStatus, PingReport, ReloadReport, Request, Resolved, Response,
};
use cyphonic_host::mobility::{Detector, Source as MobilitySource};
use cyphonic_host::packet::{
    DataPlane, PathKind, PathTimers, PeerPlacement, RelayPath, RelayState,
};
use cyphonic_host::plugins::PluginSet;
use cyphonic_host::resolver::system::{SystemDns, SystemDnsMode as SystemMode};
use cyphonic_host::resolver::{
    self, OverlayAddrs, OverlayError, OverlayResolver, OwnName, Resolver, ResolverConfig,
    ResolverHandle,
};
use cyphonic_host::signaling::{
    AuthClient, ClientConfig, NmsClient, NmsEvent, SignalingError, resolve_relay_endpoint,
};
use cyphonic_host::state::{StateDir, StoredCredential};
use cyphonic_plugin_abi::VifSettings;
use cyphonic_proto::credential::Credential;
use cyphonic_proto::time::UnixTime;
use cyphonic_proto::tunnel::{Endpoint, LocalIdentity, PeerId, TunnelConfig};
use cyphonic_proto::wire::Fqdn;
use cyphonic_proto::wire::signal::{MAX_ENDPOINTS, PathPlan, PeerRoute, RelayOffer};
use cyphonic_proto::wire::status::StatusCode;
use ed25519_dalek::VerifyingKey;
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinHandle;
use x25519_dalek::StaticSecret;

/// How often the daemon looks for a credential while it waits for a login.
const LOGIN_POLL: Duration = Duration::from_secs(2);
/// Keepalive interval until the NMS names its own.
const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(20);
/// How long `cyphonic resolve` and `cyphonic ping` wait for a direction and handshake.
const CLI_LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);
/// How long hole punching may take before the relay is used.
const PUNCH_TIMEOUT: Duration = Duration::from_secs(3);
/// Punches go out this often while punching.
const PUNCH_INTERVAL: Duration = Duration::from_millis(150);
/// How long a relay bind may take (both ends bound).
const RELAY_BIND_TIMEOUT: Duration = Duration::from_secs(4);
const RELAY_REBIND_INTERVAL: Duration = Duration::from_millis(300);
/// Quiet time after a change on disk before the configuration is reloaded.
const RELOAD_QUIET: Duration = Duration::from_millis(300);
/// How long the NMS gets to answer a logout on the way down.
const FINALIZE_TIMEOUT: Duration = Duration::from_secs(1);

pub(crate) async fn run(
    config_path: PathBuf,
    config: NodeConfig,
    log: LogHandle,
    stop: StopSignal,
) -> anyhow::Result<()> {
    // The same pipeline as a reload: config logic, the plugins, then the filter
    // compiled and self-checked.
    let config = apply_config_logic(config).await?;
    let preference = config
        .suite_ids()
        .map_err(|e| anyhow!("tunnel.suites: {e}"))?;
    let plugins = PluginSet::load(
        &config.plugins.interface,
        &config.plugins.crypto,
        config.plugins.mobility.as_deref(),
        &preference,
    )
    .context("loading plugins")?;
    check_filter(&config).await?;
    for info in plugins.infos() {
        tracing::info!(kind = %info.kind, name = %info.name, version = %info.version, path = %info.path, "plugin loaded");
    }
    let cloud_key = config.cloud_key().map_err(|e| anyhow!("cloud.key: {e}"))?;
    let state = StateDir::new(&config.state_dir);
    let static_secret = state.node_key().context("reading the node key")?;
    if config.resolver.system != SystemDnsMode::None {
        resolver::system::recover_after_crash(&config.state_dir, &config.resolver.resolv_conf)
            .context("restoring the system DNS configuration left by an earlier run")?;
    }
    let config_text = std::fs::read_to_string(&config_path).unwrap_or_default();
    let scripts = script_texts(&config);
    let node = Arc::new(Node {
        config: ArcSwap::from_pointee(config),
        config_path,
        state,
        plugins: ArcSwap::from_pointee(plugins),
        log,
        reloads: tokio::sync::Mutex::new(ReloadState {
            config_text,
            scripts,
            last: None,
            failed: None,
            reloads: 0,
            failures: 0,
        }),
        me: std::sync::OnceLock::new(),
        cloud_key,
        static_secret,
        inner: Mutex::new(Inner::default()),
        login_changed: Notify::new(),
        session_end: Notify::new(),
        stop,
    });
    let _ = node.me.set(Arc::downgrade(&node));
    let page = Arc::new(
        crate::ui_backend::StarterPage::start(&node.cfg().ui, Arc::clone(&node), {
            let node = Arc::clone(&node);
            move || node.cfg()
        })
        .await,
    );
    if let Some(e) = page.failure() {
        node.note_error(e.to_owned());
    }
    let control_socket = node.cfg().control.socket.clone();
    let control_task = control::serve(
        &control_socket,
        crate::ui_backend::control_handler(Arc::clone(&node), Arc::clone(&page)),
    )
    .context("opening the control socket")?;
    tracing::info!(socket = %control_socket.display(), config = %node.config_path.display(), "cyphonicd started");
    let watcher = node
        .clone()
        .watch_config()
        .context("watching the configuration")?;

    let result = node.clone().lifecycle().await;
    control_task.abort();
    page.stop();
    drop(watcher);
    #[cfg(unix)]
    let _ = std::fs::remove_file(&control_socket);
    result
}

/// Becomes true once the daemon should stop: SIGTERM/SIGINT on Unix, Ctrl+C or the
/// service control manager's stop on Windows (set by `main`).
pub(crate) type StopSignal = tokio::sync::watch::Receiver<bool>;

/// Resolves when `stop` is raised (or its sender is gone, which also means stop).
async fn stopped(mut stop: StopSignal) {
    let _ = stop.wait_for(|stop| *stop).await;
}

/// Changes the log filter of the running daemon.
pub(crate) type LogHandle =
    tracing_subscriber::reload::Handle<tracing_subscriber::EnvFilter, tracing_subscriber::Registry>;

/// What the last load of the configuration saw, to skip reloads that change nothing
/// and to report the last outcome.
struct ReloadState {
    config_text: String,
    scripts: ScriptTexts,
    last: Option<ReloadReport>,
    /// The file and script contents of the last failed reload, not retried unchanged.
    failed: Option<(String, ScriptTexts)>,
    reloads: u64,
    failures: u64,
}

/// The contents of the scripts a configuration names.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ScriptTexts {
    filter: Option<String>,
    config: Option<String>,
}

fn script_texts(config: &NodeConfig) -> ScriptTexts {
    ScriptTexts {
        filter: std::fs::read_to_string(&config.resolver.filter).ok(),
        config: config
            .config_script
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok()),
    }
}

/// The daemon: configuration, loaded plugins, and the running session when logged in.
pub(crate) struct Node {
    /// The running configuration; a reload publishes a new one.
    config: ArcSwap<NodeConfig>,
    config_path: PathBuf,
    state: StateDir,
    plugins: ArcSwap<PluginSet>,
    log: LogHandle,
    reloads: tokio::sync::Mutex<ReloadState>,
    /// This node, for the control handler (which only gets `&self`) to reach the `Arc`.
    me: std::sync::OnceLock<std::sync::Weak<Node>>,
    cloud_key: VerifyingKey,
    static_secret: StaticSecret,
    inner: Mutex<Inner>,
    /// `cyphonic login` stored a credential, or `cyphonic logout` removed it.
    login_changed: Notify,
    /// Ends the running session (logout).
    session_end: Notify,
    /// Raised when the daemon must stop (signal or service stop).
    stop: StopSignal,
}

#[derive(Default)]
struct Inner {
    state: Option<NodeState>,
    session: Option<Arc<Session>>,
    last_error: Option<String>,
}

/// Everything that exists while the node is logged in and up.
struct Session {
    credential: Credential,
    stored: Mutex<StoredCredential>,
    domain: Fqdn,
    dataplane: DataPlane,
    nms: NmsClient,
    nms_addrs: Vec<SocketAddr>,
    socket_v6: bool,
    /// The NMS sees us at an address that is none of ours.
    behind_nat: AtomicBool,
    ifname: String,
    resolver_addrs: Mutex<Vec<SocketAddr>>,
    resolver_stats: Mutex<Option<resolver::StatsHandle>>,
    /// Restarted by reloads; stopped with the session.
    resolver: tokio::sync::Mutex<Option<ResolverHandle>>,
    mobility: Mutex<Option<Detector>>,
    moves: Mutex<Option<mpsc::UnboundedSender<()>>>,
    cloud: Mutex<CloudStatus>,
    last_contact: Mutex<Option<Instant>>,
}

impl Node {
    fn cfg(&self) -> Arc<NodeConfig> {
        self.config.load_full()
    }

    async fn reload_arc(&self) -> ReloadReport {
        match self.me.get().and_then(std::sync::Weak::upgrade) {
            Some(me) => me.reload(true).await,
            None => ReloadReport {
                error: Some("the daemon is stopping".into()),
                ..ReloadReport::default()
            },
        }
    }

    fn set_state(&self, state: NodeState) {
        self.lock().state = Some(state);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn session(&self) -> Option<Arc<Session>> {
        self.lock().session.clone()
    }

    fn note_error(&self, error: String) {
        self.lock().last_error = Some(error);
    }

    /// Waits for a credential, runs a session until logout or a signal, repeats.
    async fn lifecycle(self: Arc<Self>) -> anyhow::Result<()> {
        loop {
            self.set_state(NodeState::WaitingForLogin);
            let stored = tokio::select! {
                stored = self.wait_for_credential() => stored?,
                _ = stopped(self.stop.clone()) => return Ok(()),
            };
            self.set_state(NodeState::Starting);
            let started = tokio::select! {
                s = self.clone().start_session(stored) => s,
                _ = stopped(self.stop.clone()) => return Ok(()),
            };
            let (session, mut running) = match started {
                Ok(s) => s,
                Err(e) => {
                    // A node that cannot come up (cloud down, credential refused) keeps
                    // trying rather than exiting: it is supervised either way, and the
                    // control API stays up to tell why.
                    tracing::error!("cannot bring the node up: {e:#}");
                    self.note_error(format!("{e:#}"));
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(5)) => continue,
                        _ = stopped(self.stop.clone()) => return Ok(()),
                    }
                }
            };
            self.set_state(NodeState::Running);
            let stop_reason = tokio::select! {
                _ = stopped(self.stop.clone()) => Stop::Signal,
                _ = self.session_end.notified() => Stop::Logout,
            };
            self.set_state(NodeState::Stopping);
            self.lock().session = None;
            // A logout has already told the NMS.
            running
                .stop(&session, matches!(stop_reason, Stop::Signal))
                .await;
            drop(session);
            if matches!(stop_reason, Stop::Signal) {
                tracing::info!("cyphonicd stopped");
                return Ok(());
            }
            tracing::info!("logged out");
        }
    }

    async fn wait_for_credential(&self) -> anyhow::Result<StoredCredential> {
        let mut told = false;
        loop {
            if let Some(stored) = self.state.credential().context("reading the credential")? {
                return Ok(stored);
            }
            if !told {
                tracing::warn!(
                    "no credential: log in with `cyphonic --config {} login`",
                    self.config_path.display()
                );
                told = true;
            }
            tokio::select! {
                _ = self.login_changed.notified() => {}
                _ = tokio::time::sleep(LOGIN_POLL) => {}
            }
        }
    }

    fn as_addr(&self) -> anyhow::Result<SocketAddr> {
        first_addr(&self.cfg().cloud.auth).context("resolving cloud.as")
    }

    /// Renews `stored` at the AS if it is due (or expired), and stores the result.
    async fn renew_if_due(&self, stored: StoredCredential) -> anyhow::Result<StoredCredential> {
        let now = unix_now().0;
        if stored.renew_at() > now {
            return Ok(stored);
        }
        self.renew(&stored).await
    }

    async fn renew(&self, stored: &StoredCredential) -> anyhow::Result<StoredCredential> {
        let outcome = AuthClient::default()
            .renew(
                self.as_addr()?,
                &self.cloud_key,
                &self.static_secret,
                &stored.credential,
            )
            .await
            .context("renewing the credential at the AS")?;
        let renewed = StoredCredential {
            credential: outcome.credential,
            domain: outcome.domain,
            device_id: stored.device_id.clone(),
            obtained_at: unix_now(),
            renew_after_secs: outcome.renew_after.as_secs(),
        };
        self.state
            .store_credential(&renewed)
            .context("storing the renewed credential")?;
        tracing::info!(
            expires = renewed.credential.credential().not_after.0,
            "credential renewed"
        );
        Ok(renewed)
    }

    fn identity(&self, stored: &StoredCredential) -> anyhow::Result<LocalIdentity> {
        let identity = LocalIdentity::new(
            self.static_secret.clone(),
            stored.credential.clone(),
            vec![self.cloud_key],
            self.plugins.load().suites.clone(),
        )
        .context("building the node identity")?;
        identity
            .check_credential(unix_now())
            .context("the stored credential is not valid for this node key and cloud")?;
        Ok(identity)
    }

    /// Brings the node up with `stored`; returns the session and what to stop later.
    async fn start_session(
        self: Arc<Self>,
        stored: StoredCredential,
    ) -> anyhow::Result<(Arc<Session>, Running)> {
        let stored = self.renew_if_due(stored).await?;
        let identity = self.identity(&stored)?;
        let credential = stored.credential.credential().clone();
        tracing::info!(fqdn = %credential.fqdn, vip4 = %credential.vip4, vip6 = %credential.vip6, "logged in");

        let cfg = self.cfg();
        let plugins = self.plugins.load_full();
        let settings = vif_settings(&cfg, &credential);
        let vif = plugins.interface.open(&settings).with_context(|| {
            format!(
                "opening the virtual interface with {}",
                plugins.interface.plugin().path().display()
            )
        })?;
        let details = vif.info().context("reading the virtual interface")?;
        tracing::info!(ifname = %details.ifname, mtu = details.mtu, "virtual interface up");

        let socket = bind_data_socket(cfg.tunnel.listen_port, cfg.tunnel.socket_buffer_bytes)
            .context("binding the tunnel socket")?;
        let socket_v6 = socket.local_addr()?.is_ipv6();
        let listen_port = socket.local_addr()?.port();
        let endpoint = Endpoint::new(TunnelConfig::default(), identity);
        let (needs_tx, needs_rx) = mpsc::unbounded_channel();
        let dataplane = DataPlane::start(
            vif,
            socket,
            endpoint,
            (credential.vip4, credential.vip6),
            details.mtu as usize,
            PathTimers {
                keepalive: Duration::from_secs(cfg.tunnel.keepalive_secs.max(1)),
                ..PathTimers::default()
            },
            needs_tx,
        )
        .context("starting the data path")?;

        let nms_addr = first_addr(&cfg.cloud.nms).context("resolving cloud.nms")?;
        // The NMS channel leaves from the tunnel port: what the NMS observes is then the
        // NAT mapping peers must use to reach our tunnel. On Unix a second socket joins
        // the port (SO_REUSEPORT; the kernel hands the NMS's datagrams to it, the
        // connected one). Windows has no SO_REUSEPORT (its SO_REUSEADDR lets any socket
        // take the port's datagrams), so there the channel rides on the tunnel socket
        // itself and the data path hands the NMS's datagrams over.
        let nms = if cfg!(unix) {
            let client = ClientConfig {
                bind: Some(dataplane.local_addr()?),
                share_port: true,
                ..ClientConfig::default()
            };
            NmsClient::connect_with(
                client,
                nms_addr,
                &self.cloud_key,
                &self.static_secret,
                stored.credential.clone(),
            )
            .await
        } else {
            let port = dataplane
                .cloud_port(nms_addr)
                .context("sharing the tunnel socket with the NMS channel")?;
            NmsClient::connect_shared(
                port,
                ClientConfig::default(),
                nms_addr,
                &self.cloud_key,
                &self.static_secret,
                stored.credential.clone(),
            )
            .await
        };
        let mut nms = nms.with_context(|| format!("connecting to the NMS at {nms_addr}"))?;
        let events = nms
            .events()
            .ok_or_else(|| anyhow!("the NMS client gave no event stream"))?;
        let endpoints = registration_endpoints(listen_port, &details.ifname, socket_v6);
        let registration = nms
            .register(endpoints.clone())
            .await
            .context("registering at the NMS")?;
        let observed = registration
            .observed
            .map_or_else(|| "unknown".to_owned(), |a| a.to_string());
        tracing::info!(%observed, endpoints = ?endpoints, "registered at the NMS");

        let session = Arc::new(Session {
            domain: stored.domain.clone(),
            stored: Mutex::new(stored),
            credential: credential.clone(),
            dataplane,
            nms,
            nms_addrs: vec![nms_addr],
            socket_v6,
            behind_nat: AtomicBool::new(
                registration
                    .observed
                    .is_some_and(|o| !endpoints.contains(&o)),
            ),
            ifname: details.ifname.clone(),
            resolver_addrs: Mutex::new(Vec::new()),
            resolver_stats: Mutex::new(None),
            resolver: tokio::sync::Mutex::new(None),
            mobility: Mutex::new(None),
            moves: Mutex::new(None),
            cloud: Mutex::new(CloudStatus {
                nms: Some(nms_addr),
                registered: true,
                last_contact_secs: Some(0),
                observed: registration.observed,
            }),
            last_contact: Mutex::new(Some(Instant::now())),
        });
        self.lock().session = Some(Arc::clone(&session));
        self.lock().last_error = None;

        let mut running = Running::default();
        let resolver = self
            .start_resolver(&session, &cfg)
            .await
            .context("starting the resolver")?;
        running.system_dns = self
            .install_system_dns(&session, &cfg)
            .context("pointing the system DNS at the resolver")?;
        *session.resolver.lock().await = Some(resolver);

        let keepalive = Duration::from_secs(u64::from(registration.keepalive_secs.max(1)));
        running.tasks.push(tokio::spawn(self.clone().keepalive_loop(
            Arc::clone(&session),
            keepalive,
            endpoints,
        )));
        running.tasks.push(tokio::spawn(
            self.clone().event_loop(Arc::clone(&session), events),
        ));
        running.tasks.push(tokio::spawn(
            self.clone().needs_loop(Arc::clone(&session), needs_rx),
        ));
        running.tasks.push(tokio::spawn(
            self.clone().renewal_loop(Arc::clone(&session)),
        ));
        let (moves_tx, moves_rx) = mpsc::unbounded_channel();
        *lock(&session.moves) = Some(moves_tx);
        self.restart_mobility(&session, &cfg, &plugins)
            .context("starting the mobility detector")?;
        running.tasks.push(tokio::spawn(
            self.clone().mobility_loop(Arc::clone(&session), moves_rx),
        ));
        Ok((session, running))
    }

    async fn start_resolver(
        self: &Arc<Self>,
        session: &Arc<Session>,
        config: &NodeConfig,
    ) -> anyhow::Result<ResolverHandle> {
        let cfg = &config.resolver;
        let mut rc = ResolverConfig::new(session.domain.clone(), cfg.filter.clone());
        rc.listen = if cfg.listen.is_empty() {
            vec![SocketAddr::new(IpAddr::V4(session.credential.vip4), 53)]
        } else {
            cfg.listen.clone()
        };
        rc.upstreams = if cfg.upstreams.is_empty() {
            resolver::system::system_nameservers(&config.state_dir, &cfg.resolv_conf)
                .context("reading the system's nameservers")?
        } else {
            cfg.upstreams.clone()
        };
        rc.block_response = match cfg.block_response {
            config::BlockResponse::Nxdomain => resolver::BlockResponse::NxDomain,
            config::BlockResponse::Refused => resolver::BlockResponse::Refused,
        };
        rc.ttl_secs = cfg.ttl_secs;
        rc.overlay_timeout = Duration::from_millis(cfg.overlay_timeout_ms);
        rc.lua = cyphonic_host::lua::Limits {
            memory_bytes: cfg.lua_memory_bytes,
            instructions: cfg.lua_instruction_budget,
        };
        rc.own = Some(OwnName {
            name: session.credential.fqdn.clone(),
            addrs: OverlayAddrs {
                ipv4: Some(session.credential.vip4),
                ipv6: Some(session.credential.vip6),
            },
        });
        let overlay = Arc::new(OverlayLookup {
            node: Arc::clone(self),
            session: Arc::downgrade(session),
            deadline: rc.overlay_timeout,
        });
        let handle = Resolver::start(rc, overlay).await?;
        *lock(&session.resolver_addrs) = handle.local_addrs().to_vec();
        *lock(&session.resolver_stats) = Some(handle.stats_handle());
        Ok(handle)
    }

    fn install_system_dns(
        &self,
        session: &Session,
        config: &NodeConfig,
    ) -> anyhow::Result<Option<SystemDns>> {
        let cfg = &config.resolver;
        let addrs = lock(&session.resolver_addrs).clone();
        Ok(match (cfg.system, addrs.first()) {
            (SystemDnsMode::None, _) | (_, None) => None,
            (mode, Some(addr)) => Some(SystemDns::install(
                match mode {
                    SystemDnsMode::Auto | SystemDnsMode::None => SystemMode::Auto,
                    SystemDnsMode::Resolved => SystemMode::Resolved,
                    SystemDnsMode::ResolvConf => SystemMode::ResolvConf,
                    SystemDnsMode::Nrpt => SystemMode::Nrpt,
                },
                &session.ifname,
                addr.ip(),
                &session.domain,
                &cfg.resolv_conf,
                &config.state_dir,
            )?),
        })
    }

    /// (Re)starts the address-change detector with the configured plugin or polling.
    fn restart_mobility(
        &self,
        session: &Session,
        config: &NodeConfig,
        plugins: &PluginSet,
    ) -> anyhow::Result<()> {
        let Some(moves) = lock(&session.moves).clone() else {
            return Ok(());
        };
        let interval = Duration::from_millis(config.mobility.poll_interval_ms);
        let source = match &plugins.mobility {
            Some(plugin) => MobilitySource::Plugin(plugin.clone()),
            None => MobilitySource::Poll { interval },
        };
        // The old detector stops before the new one starts.
        drop(lock(&session.mobility).take());
        let detector = Detector::start(source, &session.ifname, interval, moves)?;
        tracing::info!(detector = detector.kind, "watching for address changes");
        *lock(&session.mobility) = Some(detector);
        Ok(())
    }

    async fn keepalive_loop(
        self: Arc<Self>,
        session: Arc<Session>,
        interval: Duration,
        endpoints: Vec<SocketAddr>,
    ) {
        let mut interval = interval;
        loop {
            tokio::time::sleep(interval).await;
            match session.nms.keepalive().await {
                Ok(ack) => {
                    *lock(&session.last_contact) = Some(Instant::now());
                    let mut cloud = lock(&session.cloud);
                    cloud.registered = true;
                    cloud.observed = Some(ack.observed);
                }
                Err(SignalingError::Status(report)) if report.status == StatusCode::OFFLINE => {
                    tracing::info!("the NMS forgot this node; registering again");
                    match session.nms.register(endpoints.clone()).await {
                        Ok(r) => {
                            interval = Duration::from_secs(u64::from(r.keepalive_secs.max(1)));
                            *lock(&session.last_contact) = Some(Instant::now());
                        }
                        Err(e) => self.note_error(format!("registration failed: {e}")),
                    }
                }
                Err(e) => {
                    lock(&session.cloud).registered = false;
                    tracing::warn!(error = %e, "keepalive to the NMS failed");
                    self.note_error(format!("keepalive to the NMS failed: {e}"));
                    interval = DEFAULT_KEEPALIVE.min(interval);
                }
            }
        }
    }

    /// Directions the NMS pushes (someone wants to reach us) and channel changes.
    async fn event_loop(
        self: Arc<Self>,
        session: Arc<Session>,
        mut events: mpsc::Receiver<NmsEvent>,
    ) {
        while let Some(event) = events.recv().await {
            match event {
                NmsEvent::RouteDirectionToResponder { direction_id, peer } => {
                    let fqdn = peer.credential.credential().fqdn.clone();
                    let status = match session.add_route(&peer) {
                        Ok((id, _)) => {
                            // Punch and bind in the background: the initiator waits
                            // for our confirmation before it starts.
                            let session = Arc::clone(&session);
                            tokio::spawn(async move {
                                session.establish_path(id, direction_id, &peer).await;
                                // Behind NAT on a direct plan we must send first: the
                                // initiator's handshake cannot get in before we did.
                                if peer.plan == PathPlan::Direct
                                    && session.behind_nat.load(Ordering::Relaxed)
                                {
                                    session.dataplane.ensure_session(id);
                                }
                            });
                            StatusCode::SUCCESS
                        }
                        Err(e) => {
                            tracing::warn!(peer = %fqdn, error = %e, "refusing a direction");
                            StatusCode::FORBIDDEN
                        }
                    };
                    tracing::debug!(peer = %fqdn, ?status, "direction pushed by the NMS");
                    if let Err(e) = session.nms.confirm(direction_id, status).await {
                        tracing::warn!(error = %e, "confirming a direction failed");
                    }
                }
                NmsEvent::ChannelLost => {
                    lock(&session.cloud).registered = false;
                    tracing::warn!("lost the channel to the NMS; reconnecting");
                }
                NmsEvent::Reconnected(_) => {
                    tracing::info!("channel to the NMS re-established; registering again");
                    let port = session
                        .dataplane
                        .local_addr()
                        .map(|a| a.port())
                        .unwrap_or(0);
                    let endpoints =
                        registration_endpoints(port, &session.ifname, session.socket_v6);
                    match session.nms.register(endpoints).await {
                        Ok(r) => {
                            let mut cloud = lock(&session.cloud);
                            cloud.registered = true;
                            cloud.observed = r.observed;
                            *lock(&session.last_contact) = Some(Instant::now());
                        }
                        Err(e) => self.note_error(format!("registration failed: {e}")),
                    }
                }
            }
        }
    }

    /// Destinations the data path has no peer for: ask the NMS by address.
    async fn needs_loop(
        self: Arc<Self>,
        session: Arc<Session>,
        mut needs: mpsc::UnboundedReceiver<IpAddr>,
    ) {
        while let Some(vip) = needs.recv().await {
            let session = Arc::clone(&session);
            tokio::spawn(async move {
                match session.nms.direction_by_address(vip).await {
                    Ok((direction_id, route)) => match session.add_route(&route) {
                        Ok((id, _)) => {
                            session.establish_path(id, direction_id, &route).await;
                            session.dataplane.flush_pending(id);
                        }
                        Err(e) => {
                            tracing::warn!(%vip, error = %e, "route for a destination refused");
                            session.dataplane.direction_failed(vip, true);
                        }
                    },
                    Err(e) => {
                        let unknown = e.status().is_some_and(|s| {
                            matches!(
                                s,
                                StatusCode::NOT_FOUND | StatusCode::OFFLINE | StatusCode::FORBIDDEN
                            )
                        });
                        tracing::debug!(%vip, error = %e, "no direction for a destination");
                        session.dataplane.direction_failed(vip, unknown);
                    }
                }
            });
        }
    }

    /// The host moved (addresses or default route changed): tell the NMS where we are
    /// now and every peer, over the new path, with an update sealed in its session.
    /// Sessions and virtual addresses stay, so connections inside the overlay survive.
    async fn mobility_loop(
        self: Arc<Self>,
        session: Arc<Session>,
        mut moves: mpsc::UnboundedReceiver<()>,
    ) {
        let port = session
            .dataplane
            .local_addr()
            .map(|a| a.port())
            .unwrap_or(0);
        let mut last = registration_endpoints(port, &session.ifname, session.socket_v6);
        while moves.recv().await.is_some() {
            // A burst of events is one move.
            while moves.try_recv().is_ok() {}
            let endpoints = registration_endpoints(port, &session.ifname, session.socket_v6);
            if endpoints == last {
                continue;
            }
            tracing::info!(from = ?last, to = ?endpoints, "this node moved");
            last = endpoints.clone();
            session.dataplane.announce_move(&endpoints);
            match session.nms.address_update(endpoints.clone()).await {
                Ok(observed) => {
                    session.behind_nat.store(
                        observed.is_some_and(|o| !endpoints.contains(&o)),
                        Ordering::Relaxed,
                    );
                    lock(&session.cloud).observed = observed;
                    *lock(&session.last_contact) = Some(Instant::now());
                }
                Err(e) => {
                    tracing::warn!(error = %e, "telling the NMS about the move failed");
                    self.note_error(format!("address update failed: {e}"));
                }
            }
        }
    }

    /// Watches the configuration's directory and the scripts' directories (editors
    /// save by rename), and SIGHUP on Unix; both lead to [`Node::reload`] after a short
    /// quiet period. (Windows has no SIGHUP: `cyphonic reload` asks over the pipe.)
    fn watch_config(self: Arc<Self>) -> anyhow::Result<notify::RecommendedWatcher> {
        use notify::Watcher;
        let (tx, mut rx) = mpsc::unbounded_channel::<()>();
        let watched_tx = tx.clone();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                if event.is_ok_and(|e| !e.kind.is_access()) {
                    let _ = watched_tx.send(());
                }
            })?;
        let cfg = self.cfg();
        let mut dirs: Vec<PathBuf> = [
            Some(self.config_path.clone()),
            Some(cfg.resolver.filter.clone()),
            cfg.config_script.clone(),
        ]
        .into_iter()
        .flatten()
        .filter_map(|p| p.parent().map(PathBuf::from))
        .collect();
        dirs.sort();
        dirs.dedup();
        for dir in &dirs {
            watcher
                .watch(dir, notify::RecursiveMode::NonRecursive)
                .with_context(|| format!("watching {}", dir.display()))?;
        }
        #[cfg(unix)]
        {
            let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
                .context("installing the SIGHUP handler")?;
            let hangup_tx = tx.clone();
            tokio::spawn(async move {
                while hangup.recv().await.is_some() {
                    if hangup_tx.send(()).is_err() {
                        return;
                    }
                }
            });
        }
        tokio::spawn(async move {
            loop {
                if rx.recv().await.is_none() {
                    return;
                }
                // Editors write in several steps: wait until it is quiet.
                while tokio::time::timeout(RELOAD_QUIET, rx.recv()).await.is_ok() {}
                let report = self.reload(false).await;
                if !report.changed.is_empty() || report.error.is_some() {
                    tracing::info!(changed = ?report.changed, applied = ?report.applied, refused = ?report.refused, error = ?report.error, "configuration reloaded");
                }
            }
        });
        let _ = tx;
        Ok(watcher)
    }

    /// Re-reads the configuration and its scripts: parse, config logic, validation
    /// (plugin files load, scripts compile), then applies what can change live and
    /// publishes the result. Anything invalid keeps the running configuration. `force`
    /// re-applies even when no file changed (`cyphonic reload`).
    async fn reload(self: &Arc<Self>, force: bool) -> ReloadReport {
        let mut state = self.reloads.lock().await;
        let report = match self.prepare_and_apply(&mut state, force).await {
            Ok(report) => report,
            Err(e) => {
                state.failures += 1;
                let message = format!("{e:#}");
                tracing::error!("configuration not reloaded: {message}");
                ReloadReport {
                    error: Some(message),
                    ..ReloadReport::default()
                }
            }
        };
        state.reloads += 1;
        state.last = Some(report.clone());
        report
    }

    async fn prepare_and_apply(
        self: &Arc<Self>,
        state: &mut ReloadState,
        force: bool,
    ) -> anyhow::Result<ReloadReport> {
        let text = std::fs::read_to_string(&self.config_path)
            .with_context(|| format!("reading {}", self.config_path.display()))?;
        let texts_now = (text.clone(), script_texts(&self.cfg()));
        if !force && state.failed.as_ref() == Some(&texts_now) {
            // The same broken content again (an unrelated event in the directory).
            return Ok(state.last.clone().unwrap_or_default());
        }
        state.failed = Some(texts_now);
        let parsed = config::parse(&text, &self.config_path)?;
        let parsed = apply_config_logic(parsed).await?;
        let scripts = script_texts(&parsed);
        if !force && text == state.config_text && scripts == state.scripts {
            return Ok(ReloadReport::default());
        }
        let old = self.cfg();
        let filter_changed = scripts.filter != state.scripts.filter;
        let script_changed = scripts.config != state.scripts.config;
        let changes = reload::changes(&old, &parsed, filter_changed, script_changed);
        // Validate before touching anything.
        check_filter(&parsed).await?;
        let suites = parsed
            .suite_ids()
            .map_err(|e| anyhow!("tunnel.suites: {e}"))?;
        let current = self.plugins.load_full();
        let new_plugins = if changes.iter().any(|c| {
            matches!(
                c,
                reload::Setting::CryptoPlugins
                    | reload::Setting::Suites
                    | reload::Setting::MobilityPlugin
            )
        }) {
            let loaded = PluginSet::load(
                current.interface.plugin().path(),
                &parsed.plugins.crypto,
                parsed.plugins.mobility.as_deref(),
                &suites,
            )
            .context("loading plugins")?;
            Some(Arc::new(loaded))
        } else {
            None
        };
        let new_vif = if changes.contains(&reload::Setting::InterfacePlugin) {
            Some(
                cyphonic_host::plugins::load_vif(&parsed.plugins.interface)
                    .context("loading the new interface plugin")?,
            )
        } else {
            None
        };
        let effective = reload::effective(&old, &parsed);
        let mut report = ReloadReport::default();
        for change in &changes {
            report.changed.push(change.name().to_owned());
            if !change.live() {
                report
                    .refused
                    .push(format!("{}: needs a restart", change.name()));
            }
        }
        // Apply live settings.
        let session = self.session();
        for change in changes.iter().filter(|c| c.live()) {
            let applied = match change {
                reload::Setting::Log => {
                    if std::env::var_os("RUST_LOG").is_none() {
                        let filter = tracing_subscriber::EnvFilter::try_new(&effective.log)
                            .map_err(|e| anyhow!("log: {e}"))?;
                        self.log.reload(filter).map_err(|e| anyhow!("log: {e}"))?;
                    }
                    true
                }
                reload::Setting::Keepalive => {
                    if let Some(s) = &session {
                        s.dataplane.set_timers(PathTimers {
                            keepalive: Duration::from_secs(effective.tunnel.keepalive_secs),
                            ..PathTimers::default()
                        });
                    }
                    true
                }
                reload::Setting::Suites | reload::Setting::CryptoPlugins => {
                    if let Some(plugins) = &new_plugins {
                        self.plugins.store(Arc::clone(plugins));
                        if let Some(s) = &session {
                            // New sessions and rekeys negotiate with the new list;
                            // established sessions keep their keys until then.
                            let stored = lock(&s.stored).clone();
                            s.dataplane.set_identity(self.identity(&stored)?);
                            s.dataplane.rekey_all();
                        }
                    }
                    true
                }
                reload::Setting::MobilityPlugin | reload::Setting::MobilityPoll => {
                    if let Some(plugins) = &new_plugins {
                        self.plugins.store(Arc::clone(plugins));
                    }
                    if let Some(s) = &session {
                        self.restart_mobility(s, &effective, &self.plugins.load())?;
                    }
                    true
                }
                reload::Setting::Resolver
                | reload::Setting::FilterScript
                | reload::Setting::ConfigScript => {
                    if let Some(s) = &session {
                        let mut slot = s.resolver.lock().await;
                        if let Some(old_resolver) = slot.take() {
                            old_resolver.shutdown().await;
                        }
                        match self.start_resolver(s, &effective).await {
                            Ok(r) => *slot = Some(r),
                            Err(e) => {
                                // The running filter was already stopped: bring the
                                // old settings back rather than leave DNS down.
                                tracing::error!("new resolver settings failed: {e:#}");
                                *slot = Some(self.start_resolver(s, &old).await?);
                                return Err(e);
                            }
                        }
                    }
                    true
                }
                reload::Setting::InterfacePlugin | reload::Setting::Interface => {
                    let done = report
                        .applied
                        .iter()
                        .any(|a| a.starts_with("plugins.interface") || a.starts_with("interface"));
                    if let (Some(s), false) = (&session, done) {
                        let previous = self.plugins.load_full();
                        let plugin = new_vif
                            .clone()
                            .unwrap_or_else(|| previous.interface.clone());
                        let settings = vif_settings(&effective, &s.credential);
                        let open = |plugin: &cyphonic_plugin_abi::VifPlugin,
                                    settings: &VifSettings| {
                            let handle = plugin.open(settings)?;
                            let mtu = handle.info()?.mtu as usize;
                            Ok::<_, cyphonic_plugin_abi::PluginError>((handle, mtu))
                        };
                        match s.dataplane.swap_interface(|| open(&plugin, &settings)) {
                            Ok(gap) => {
                                tracing::info!(
                                    gap_ms = gap.as_millis() as u64,
                                    "virtual interface recreated"
                                );
                                report.notes.push(format!(
                                    "the interface was recreated; the data path had none for {} ms",
                                    gap.as_millis()
                                ));
                                let mut set = (*previous).clone();
                                set.interface = plugin;
                                self.plugins.store(Arc::new(set));
                            }
                            Err(e) => {
                                // Back to the interface that worked.
                                let old_settings = vif_settings(&old, &s.credential);
                                s.dataplane
                                    .swap_interface(|| open(&previous.interface, &old_settings))
                                    .context("reopening the previous interface")?;
                                return Err(anyhow!("the new interface did not open: {e}"));
                            }
                        }
                    }
                    true
                }
                _ => false,
            };
            if applied && !report.applied.contains(&change.name().to_owned()) {
                report.applied.push(change.name().to_owned());
            }
        }
        self.config.store(Arc::new(effective));
        state.failed = None;
        state.config_text = text;
        state.scripts = scripts;
        Ok(report)
    }

    /// Renews the credential when due; presents the new one to the NMS and to new
    /// handshakes.
    async fn renewal_loop(self: Arc<Self>, session: Arc<Session>) {
        loop {
            let renew_at = lock(&session.stored).renew_at();
            let wait = renew_at.saturating_sub(unix_now().0);
            tokio::time::sleep(Duration::from_secs(wait)).await;
            let stored = lock(&session.stored).clone();
            match self.renew(&stored).await {
                Ok(renewed) => {
                    match self.identity(&renewed) {
                        Ok(identity) => session.dataplane.set_identity(identity),
                        Err(e) => tracing::error!("renewed credential unusable: {e:#}"),
                    }
                    if let Err(e) = session
                        .nms
                        .update_credential(renewed.credential.clone())
                        .await
                    {
                        tracing::warn!(error = %e, "presenting the renewed credential to the NMS failed");
                    }
                    *lock(&session.stored) = renewed;
                }
                Err(e) => {
                    tracing::warn!("credential renewal failed: {e:#}; retrying in 30 s");
                    self.note_error(format!("{e:#}"));
                    tokio::time::sleep(Duration::from_secs(30)).await;
                }
            }
        }
    }

    /// Resolves an overlay name to a peer with a session (or at least a handshake
    /// under way when the deadline comes first).
    async fn connect_name(
        &self,
        session: &Session,
        name: &Fqdn,
        deadline: Instant,
    ) -> Result<Option<(PeerId, Ipv4Addr, Ipv6Addr)>, OverlayError> {
        if let Some((id, v4, v6, true)) = session.dataplane.peer_by_fqdn(name) {
            return Ok(Some((id, v4, v6)));
        }
        let (direction_id, route) = match session.nms.direction(name.clone()).await {
            Ok(found) => found,
            Err(e) => {
                return match e.status() {
                    Some(StatusCode::NOT_FOUND | StatusCode::OFFLINE | StatusCode::FORBIDDEN) => {
                        Ok(None)
                    }
                    Some(_) => Err(OverlayError::Failed(e.to_string())),
                    None => Err(OverlayError::Unavailable(e.to_string())),
                };
            }
        };
        let (id, mut established) = session
            .add_route(&route)
            .map_err(|e| OverlayError::Failed(e.to_string()))?;
        session.establish_path(id, direction_id, &route).await;
        session.dataplane.flush_pending(id);
        session.dataplane.ensure_session(id);
        let c = route.credential.credential();
        let has_session = |s: &Session| {
            s.dataplane
                .peer_by_fqdn(&c.fqdn)
                .is_some_and(|(_, _, _, up)| up)
        };
        let wait = tokio::time::timeout_at(deadline.into(), async {
            while !has_session(session) {
                if established.changed().await.is_err() {
                    break;
                }
            }
        });
        if wait.await.is_err() {
            tracing::debug!(peer = %c.fqdn, "handshake still under way at the deadline");
        }
        Ok(Some((id, c.vip4, c.vip6)))
    }

    fn status(&self) -> NodeStatus {
        let inner = self.lock();
        let session = inner.session.clone();
        let mut status = NodeStatus {
            state: inner.state.clone().unwrap_or(NodeState::Starting),
            fqdn: None,
            domain: None,
            device_id: None,
            vip4: None,
            vip6: None,
            credential_expires: None,
            interface: None,
            listen: None,
            resolver: Vec::new(),
            cloud: CloudStatus::default(),
            plugins: self.plugins.load().infos(),
            counters: Default::default(),
            last_error: inner.last_error.clone(),
            last_reload: None,
        };
        drop(inner);
        if let Ok(reloads) = self.reloads.try_lock() {
            status.last_reload = reloads.last.clone();
            status
                .counters
                .insert("config_reloads".into(), reloads.reloads);
            status
                .counters
                .insert("config_reload_failures".into(), reloads.failures);
        }
        if let Some(s) = session {
            let stored = lock(&s.stored).clone();
            let c = stored.credential.credential();
            status.fqdn = Some(c.fqdn.to_string());
            status.domain = Some(stored.domain.to_string());
            status.device_id = Some(stored.device_id.clone());
            status.vip4 = Some(c.vip4);
            status.vip6 = Some(c.vip6);
            status.credential_expires = Some(c.not_after.0);
            status.interface = Some(s.ifname.clone());
            status.listen = s.dataplane.local_addr().ok();
            status.resolver = lock(&s.resolver_addrs).clone();
            let mut cloud = lock(&s.cloud).clone();
            cloud.last_contact_secs = lock(&s.last_contact).map(|t| t.elapsed().as_secs());
            status.cloud = cloud;
            for (k, v) in s.dataplane.counters().snapshot() {
                status.counters.insert(k.to_owned(), v);
            }
            for (k, v) in tunnel_counters(&s.dataplane) {
                status.counters.insert(k.to_owned(), v);
            }
            if let Some(stats) = lock(&s.resolver_stats).as_ref() {
                for (k, v) in resolver_counters(&stats.snapshot()) {
                    status.counters.insert(k.to_owned(), v);
                }
            }
        }
        status
    }

    /// The running session and the peer `name` names (qualified with the overlay
    /// domain), set up for traffic; or the error answer for the CLI.
    async fn peer_for_cli(
        &self,
        name: &str,
    ) -> Result<(Arc<Session>, Fqdn, PeerId, Ipv4Addr, Ipv6Addr), Response> {
        let session = self.session().ok_or_else(not_running)?;
        let name = qualify(name, &session.domain).map_err(|message| Response::Error { message })?;
        let deadline = Instant::now() + CLI_LOOKUP_TIMEOUT;
        match self.connect_name(&session, &name, deadline).await {
            Ok(Some((id, v4, v6))) => Ok((session, name, id, v4, v6)),
            Ok(None) => Err(Response::Error {
                message: format!("{name}: no such node (NXDOMAIN)"),
            }),
            Err(e) => Err(Response::Error {
                message: format!("{name}: {e}"),
            }),
        }
    }

    async fn resolve(&self, name: &str) -> Response {
        let (session, name, _, v4, v6) = match self.peer_for_cli(name).await {
            Ok(found) => found,
            Err(answer) => return answer,
        };
        let peer = session.dataplane.peers().into_iter().find(|p| p.vip4 == v4);
        Response::Resolved(Resolved {
            name: name.to_string(),
            vip4: Some(v4),
            vip6: Some(v6),
            path: peer.as_ref().map(|p| path_name(p.path)),
            endpoint: peer.map(|p| p.endpoint),
        })
    }

    async fn ping(&self, name: &str, count: u32, interval_ms: u64) -> Response {
        let (session, name, id, v4, _) = match self.peer_for_cli(name).await {
            Ok(found) => found,
            Err(answer) => return answer,
        };
        let mut rtts = Vec::new();
        for i in 0..count.clamp(1, 1000) {
            if i > 0 {
                tokio::time::sleep(Duration::from_millis(interval_ms.clamp(10, 10_000))).await;
            }
            let rtt = match session.dataplane.probe(id) {
                Some(rx) => tokio::time::timeout(Duration::from_secs(2), rx)
                    .await
                    .ok()
                    .and_then(Result::ok),
                None => None,
            };
            rtts.push(rtt.map(|d| d.as_secs_f64() * 1000.0));
        }
        let peer = session.dataplane.peers().into_iter().find(|p| p.vip4 == v4);
        match peer {
            Some(p) => Response::Ping(PingReport {
                name: name.to_string(),
                vip4: v4,
                path: path_name(p.path),
                endpoint: p.endpoint,
                rtts_ms: rtts,
            }),
            None => Response::Error {
                message: format!("{name}: the peer went away"),
            },
        }
    }

    async fn logout(&self) -> Response {
        if let Some(session) = self.session() {
            match tokio::time::timeout(FINALIZE_TIMEOUT, session.nms.finalize()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "logout at the NMS failed"),
                Err(_) => tracing::warn!("the NMS did not answer the logout"),
            }
        }
        match self.state.remove_credential() {
            Ok(_) => {
                self.session_end.notify_one();
                Response::Done {
                    message: "logged out".into(),
                }
            }
            Err(e) => Response::Error {
                message: format!("removing the credential: {e}"),
            },
        }
    }
}

impl control::Handler for Node {
    fn handle(
        &self,
        request: Request,
    ) -> Pin<Box<dyn std::future::Future<Output = Response> + Send + '_>> {
        Box::pin(self.handle_request(request))
    }
}

impl Node {
    async fn handle_request(&self, request: Request) -> Response {
        match request {
            Request::Status => Response::Status(Box::new(self.status())),
            Request::Peers => match self.session() {
                Some(s) => Response::Peers {
                    peers: s.dataplane.peers(),
                },
                None => Response::Peers { peers: Vec::new() },
            },
            Request::Resolve { name } => self.resolve(&name).await,
            Request::Ping {
                name,
                count,
                interval_ms,
            } => self.ping(&name, count, interval_ms).await,
            Request::CredentialChanged => {
                self.login_changed.notify_one();
                Response::Done {
                    message: "credential noted".into(),
                }
            }
            Request::Logout => self.logout().await,
            Request::Reload => Response::Reloaded(self.reload_arc().await),
            // Answered by the starter page's handler (ui_backend.rs) in front of this one.
            Request::UiUrl => Response::Error {
                message: "the starter page is not running".into(),
            },
        }
    }
}

impl Session {
    /// Adds (or updates) the peer a Route Direction describes, placed at its best
    /// candidate until [`Session::establish_path`] settled the path.
    fn add_route(&self, route: &PeerRoute) -> anyhow::Result<(PeerId, watch::Receiver<u64>)> {
        let placement = placement(route, self.socket_v6);
        if placement.is_none() && route.relay.is_none() {
            bail!("the route offers no endpoint and no relay this node can use");
        }
        // Without a usable endpoint the relay decides; the placeholder is never used
        // for sending before `establish_path` set the relay.
        let placement = placement.unwrap_or(PeerPlacement {
            endpoint: SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0),
            path: PathKind::Relayed,
            candidates: Vec::new(),
        });
        self.dataplane
            .add_peer(route.credential.clone(), placement)
            .map_err(|e| anyhow!("{e}"))
    }

    /// Carries out the route's plan: nothing more for direct and local paths;
    /// simultaneous hole punching for `HolePunch` (both ends run this at once), and the
    /// relay when punching found nothing within [`PUNCH_TIMEOUT`], when the plan is
    /// `Relay`, or when the two nodes share no address family.
    async fn establish_path(&self, id: PeerId, direction_id: [u8; 16], route: &PeerRoute) {
        let peer = route.credential.credential();
        let usable_direct = placement(route, self.socket_v6).is_some();
        let punch = matches!(route.plan, PathPlan::HolePunch) && usable_direct;
        if punch {
            let candidates = punch_candidates(route, self.socket_v6);
            let mut found = self.dataplane.start_punch(
                direction_id,
                id,
                peer.node_id,
                self.credential.node_id,
                &route.punch_key,
            );
            let deadline = tokio::time::Instant::now() + PUNCH_TIMEOUT;
            let mut endpoint = None;
            while tokio::time::Instant::now() < deadline {
                self.dataplane.punch(direction_id, &candidates);
                let step = tokio::time::timeout(PUNCH_INTERVAL, found.changed()).await;
                if let Some(at) = *found.borrow() {
                    endpoint = Some(at);
                    break;
                }
                if matches!(step, Ok(Err(_))) {
                    break;
                }
            }
            // A late punch from the peer still needs an answer for a moment.
            let dataplane_end = direction_id;
            if let Some(at) = endpoint {
                let kind = if route.real.contains(&at) && !route.observed.contains(&at) {
                    PathKind::Local
                } else {
                    PathKind::Punched
                };
                tracing::info!(peer = %peer.fqdn, endpoint = %at, ?kind, "hole punched");
                self.dataplane.set_direct(id, at, kind);
                // Keep answering the peer's punches a little longer.
                tokio::time::sleep(PUNCH_INTERVAL * 4).await;
                self.dataplane.end_punch(&dataplane_end);
                return;
            }
            self.dataplane.end_punch(&dataplane_end);
            tracing::info!(peer = %peer.fqdn, "hole punching found no path");
        }
        if punch || matches!(route.plan, PathPlan::Relay) || !usable_direct {
            if let Some(offer) = &route.relay {
                self.bind_relay(id, offer, peer).await;
            }
        }
    }

    async fn bind_relay(&self, id: PeerId, offer: &RelayOffer, peer: &Credential) {
        let trs = offer
            .trs_endpoints
            .iter()
            .filter_map(|e| resolve_relay_endpoint(*e, &self.nms_addrs))
            .find(|e| self.socket_v6 || e.is_ipv4());
        let Some(trs) = trs else {
            tracing::warn!(peer = %peer.fqdn, trs = %offer.trs_name, "no TRS endpoint in a family this node has");
            return;
        };
        let mut state =
            self.dataplane
                .relay_bind(offer.ticket, &offer.bind_key, self.credential.node_id, trs);
        let deadline = tokio::time::Instant::now() + RELAY_BIND_TIMEOUT;
        while tokio::time::Instant::now() < deadline && *state.borrow() != RelayState::BothBound {
            if tokio::time::timeout(RELAY_REBIND_INTERVAL, state.changed())
                .await
                .is_err()
                && *state.borrow() == RelayState::Unbound
            {
                self.dataplane.relay_rebind(&offer.ticket.ticket_id, trs);
            }
        }
        let reached = *state.borrow();
        if reached == RelayState::Unbound {
            tracing::warn!(peer = %peer.fqdn, %trs, "the TRS did not accept our bind");
            return;
        }
        self.dataplane.set_relay(
            id,
            RelayPath {
                name: offer.trs_name.to_string(),
                trs,
                channel: offer.ticket.channel_id(),
            },
        );
    }
}

/// Runs the config-logic script (if any) off the async workers.
async fn apply_config_logic(config: NodeConfig) -> anyhow::Result<NodeConfig> {
    let (derived, changed) =
        tokio::task::spawn_blocking(move || cyphonic_host::validate::config_logic(config))
            .await
            .map_err(|e| anyhow!("config logic: {e}"))??;
    if !changed.is_empty() {
        tracing::info!(?changed, "config logic changed settings");
    }
    Ok(derived)
}

/// Compiles the DNS filter in a scratch sandbox and runs its self-check.
async fn check_filter(config: &NodeConfig) -> anyhow::Result<()> {
    let config = config.clone();
    tokio::task::spawn_blocking(move || cyphonic_host::validate::filter(&config))
        .await
        .map_err(|e| anyhow!("filter check: {e}"))??;
    Ok(())
}

/// How to open the virtual interface for `credential` under `cfg`.
fn vif_settings(cfg: &NodeConfig, credential: &Credential) -> VifSettings {
    let routes = if cfg.interface.routes.is_empty() {
        config::default_routes(credential.vip6)
    } else {
        cfg.interface
            .routes
            .iter()
            .map(|n| (n.network(), n.prefix_len()))
            .collect()
    };
    VifSettings {
        mtu: cfg.interface.mtu,
        ifname: cfg.interface.name.clone(),
        ipv4: Some((credential.vip4, 32)),
        ipv6: Some((credential.vip6, 128)),
        routes,
        options: cfg.interface.options.clone(),
    }
}

/// Every endpoint of the peer worth a punch: NAT-observed first, then real ones.
fn punch_candidates(route: &PeerRoute, socket_v6: bool) -> Vec<SocketAddr> {
    let mut out: Vec<SocketAddr> = route
        .observed
        .iter()
        .chain(&route.real)
        .filter(|a| socket_v6 || a.is_ipv4())
        .copied()
        .collect();
    out.dedup();
    out
}

/// What a session started besides the data path, stopped in reverse order.
#[derive(Default)]
struct Running {
    system_dns: Option<SystemDns>,
    tasks: Vec<JoinHandle<()>>,
}

impl Running {
    async fn stop(&mut self, session: &Arc<Session>, finalize: bool) {
        for task in self.tasks.drain(..) {
            task.abort();
        }
        drop(lock(&session.mobility).take());
        if let Some(dns) = self.system_dns.take() {
            if let Err(e) = dns.uninstall() {
                tracing::error!("restoring the system DNS configuration: {e}");
            }
        }
        if let Some(resolver) = session.resolver.lock().await.take() {
            resolver.shutdown().await;
        }
        if !finalize {
            return;
        }
        match tokio::time::timeout(FINALIZE_TIMEOUT, session.nms.finalize()).await {
            Ok(Ok(())) => tracing::info!("logged out of the NMS"),
            Ok(Err(e)) => tracing::debug!(error = %e, "NMS logout failed"),
            Err(_) => tracing::debug!("the NMS did not answer the logout"),
        }
    }
}

enum Stop {
    Signal,
    Logout,
}

/// The overlay half of the resolver: names under the domain become peers.
struct OverlayLookup {
    node: Arc<Node>,
    session: std::sync::Weak<Session>,
    deadline: Duration,
}

impl OverlayResolver for OverlayLookup {
    fn resolve(
        &self,
        name: Fqdn,
    ) -> Pin<Box<dyn std::future::Future<Output = Result<Option<OverlayAddrs>, OverlayError>> + Send>>
    {
        let node = Arc::clone(&self.node);
        let session = self.session.upgrade();
        // Leave the resolver a little of its deadline to answer.
        let deadline = Instant::now() + self.deadline.mul_f32(0.8);
        Box::pin(async move {
            let session =
                session.ok_or_else(|| OverlayError::Unavailable("the node is stopping".into()))?;
            let found = node.connect_name(&session, &name, deadline).await?;
            Ok(found.map(|(_, v4, v6)| OverlayAddrs {
                ipv4: Some(v4),
                ipv6: Some(v6),
            }))
        })
    }
}

/// Where to send to a peer, from its route: the real endpoints for direct and local
/// plans, the NAT-observed ones first for hole punching. Endpoints of a family the
/// socket cannot use are skipped; `None` when none is left (a relay must do).
fn placement(route: &PeerRoute, socket_v6: bool) -> Option<PeerPlacement> {
    let usable = |a: &&&SocketAddr| socket_v6 || a.is_ipv4();
    // A peer behind NAT is reached at its mapping (it opens it by sending first), a
    // public one or one on our LAN at its real address.
    let behind_nat = route.observed.iter().any(|o| !route.real.contains(o));
    let candidates: Vec<&SocketAddr> = match route.plan {
        PathPlan::Local => route.real.iter().chain(&route.observed).collect(),
        _ if behind_nat => route.observed.iter().chain(&route.real).collect(),
        _ => route.real.iter().chain(&route.observed).collect(),
    };
    // Prefer the family the peer reaches the cloud with: it is the one that routes.
    let family_v4 = route.observed.first().map(SocketAddr::is_ipv4);
    let endpoint = candidates
        .iter()
        .filter(usable)
        .find(|a| family_v4.is_none_or(|v4| a.is_ipv4() == v4))
        .or_else(|| candidates.iter().find(usable))?;
    let path = match route.plan {
        PathPlan::Direct => PathKind::Direct,
        PathPlan::Local => PathKind::Local,
        PathPlan::HolePunch | PathPlan::Relay => PathKind::Punched,
    };
    Some(PeerPlacement {
        endpoint: **endpoint,
        path,
        candidates: punch_candidates(route, socket_v6),
    })
}

/// Our real endpoints for the NMS: every address of every interface but loopback,
/// link-local, the overlay interface itself, with the tunnel port.
fn registration_endpoints(port: u16, overlay_ifname: &str, socket_v6: bool) -> Vec<SocketAddr> {
    let addrs = cyphonic_host::sys::local_addresses().unwrap_or_default();
    let mut out: Vec<SocketAddr> = addrs
        .into_iter()
        .filter(|a| a.ifname != overlay_ifname)
        .map(|a| a.addr)
        .filter(|ip| match ip {
            IpAddr::V4(v4) => !(v4.is_loopback() || v4.is_link_local() || v4.is_unspecified()),
            IpAddr::V6(v6) => {
                socket_v6
                    && !(v6.is_loopback()
                        || v6.is_unicast_link_local()
                        || v6.is_unspecified()
                        || v6.is_multicast())
            }
        })
        .map(|ip| SocketAddr::new(ip, port))
        .collect();
    out.sort_by_key(|a| a.is_ipv6());
    out.dedup();
    out.truncate(MAX_ENDPOINTS);
    out
}

/// A dual-stack UDP socket on `port` (IPv4-only when the host has no IPv6), open to
/// sharing its port with our NMS channel (SO_REUSEPORT) but never with anyone else: a
/// plain bind first proves the port is free.
fn bind_data_socket(port: u16, buffer: usize) -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let bind = |domain: Domain, addr: SocketAddr, share: bool| {
        let s = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
        if domain == Domain::IPV6 {
            s.set_only_v6(false)?;
        }
        #[cfg(unix)]
        if share {
            s.set_reuse_port(true)?;
        }
        #[cfg(not(unix))]
        let _ = share;
        s.bind(&addr.into())?;
        Ok::<_, std::io::Error>(s)
    };
    let v6 = SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port);
    let v4 = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port);
    let (domain, any) = match bind(Domain::IPV6, v6, false) {
        Ok(probe) => {
            drop(probe);
            (Domain::IPV6, v6)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            return Err(std::io::Error::new(
                e.kind(),
                format!("UDP port {port} is in use (another cyphonicd?)"),
            ));
        }
        Err(e) => {
            tracing::info!(error = %e, "no IPv6 socket; the tunnel uses IPv4 only");
            drop(bind(Domain::IPV4, v4, false)?);
            (Domain::IPV4, v4)
        }
    };
    // With port 0 the probe's port is gone again; any port with sharing on will do.
    let socket = bind(domain, any, true)?;
    // Bursts of a fast TCP stream overflow the default 208 KiB before the receive
    // thread is scheduled again on a busy machine.
    let got = cyphonic_host::sys::set_socket_buffers(&socket, buffer);
    tracing::debug!(
        asked = buffer,
        receive_buffer = got,
        "tunnel socket buffers"
    );
    Ok(socket.into())
}

fn tunnel_counters(dataplane: &DataPlane) -> Vec<(&'static str, u64)> {
    let s = dataplane.tunnel_stats();
    vec![
        ("tunnel_data_sent", s.data_sent),
        ("tunnel_data_received", s.data_received),
        ("tunnel_handshakes_completed", s.handshakes_completed),
        ("tunnel_handshake_timeouts", s.handshake_timeouts),
        ("tunnel_dropped_total", s.dropped_total()),
        ("tunnel_dropped_replay", s.dropped_replay),
        ("tunnel_dropped_tampered", s.dropped_tampered),
        ("tunnel_dropped_malformed", s.dropped_malformed),
        ("tunnel_dropped_truncated", s.dropped_truncated),
        ("tunnel_dropped_not_tunnel", s.dropped_not_tunnel),
        ("tunnel_dropped_unknown_index", s.dropped_unknown_index),
        ("tunnel_dropped_expired", s.dropped_expired),
        ("tunnel_dropped_mac1", s.dropped_mac1),
        ("tunnel_rejected_unknown_peer", s.rejected_unknown_peer),
        ("tunnel_rejected_decrypt", s.rejected_decrypt),
        ("tunnel_rejected_stale_request", s.rejected_stale_request),
        ("tunnel_rejected_bad_credential", s.rejected_bad_credential),
        ("tunnel_queue_dropped", s.queue_dropped),
    ]
}

fn resolver_counters(s: &resolver::ResolverStats) -> Vec<(&'static str, u64)> {
    vec![
        ("resolver_received", s.received),
        ("resolver_malformed", s.malformed),
        ("resolver_dropped", s.dropped),
        ("resolver_overlay", s.overlay),
        ("resolver_forwarded", s.forwarded),
        ("resolver_blocked", s.blocked),
        ("resolver_script_errors", s.script_errors),
        ("resolver_overlay_errors", s.overlay_errors),
        ("resolver_overlay_timeouts", s.overlay_timeouts),
        ("resolver_upstream_failures", s.upstream_failures),
        ("resolver_nxdomain", s.nxdomain),
        ("resolver_servfail", s.servfail),
    ]
}

fn path_name(path: PathKind) -> String {
    match path {
        PathKind::Direct => "direct".into(),
        PathKind::Punched => "punched".into(),
        PathKind::Local => "local".into(),
        PathKind::Relayed => "relayed".into(),
    }
}

fn not_running() -> Response {
    Response::Error {
        message: "the node is not up (run `cyphonic status`)".into(),
    }
}

/// A bare host name gets the overlay domain appended.
fn qualify(name: &str, domain: &Fqdn) -> Result<Fqdn, String> {
    let name = name.trim_end_matches('.');
    let full = if name.contains('.') {
        name.to_owned()
    } else {
        format!("{name}.{domain}")
    };
    Fqdn::new(&full).map_err(|e| format!("{name}: not a valid name: {e}"))
}

fn first_addr(text: &str) -> anyhow::Result<SocketAddr> {
    let addrs = config::resolve_service(text).with_context(|| format!("resolving {text}"))?;
    addrs
        .into_iter()
        .next()
        .ok_or_else(|| anyhow!("{text} resolves to no address"))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn unix_now() -> UnixTime {
    UnixTime::from_system_time(SystemTime::now())
}
