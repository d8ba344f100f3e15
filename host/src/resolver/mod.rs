//! The node's CYPHONIC resolver: a small DNS server that answers names of the overlay
//! domain with virtual addresses obtained from the NMS and forwards everything else to
//! the system's upstream resolvers.
//!
//! Every query goes through an operator script (`scripts/dns_filter.lua`, see
//! docs/scripting.md) that decides `overlay`, `forward` or `block`; the script runs on
//! a [`ScriptThread`](crate::lua::ScriptThread), never on an async worker.
//!
//! - Overlay: the node's own name is answered locally; other names go to the
//!   [`OverlayResolver`] the daemon implements (Direction Request to the NMS). `A` and
//!   `AAAA` are answered with the returned addresses, `ANY` with both; other types get
//!   NOERROR without answers and do not reach the NMS (browsers ask for HTTPS records
//!   next to every A query; that must not trigger directions). A name the NMS does not
//!   know is NXDOMAIN (no SOA in the authority section, so nobody caches the negative
//!   answer for long: the node may come up a minute later). An overlay error or no
//!   answer within [`ResolverConfig::overlay_timeout`] is SERVFAIL.
//! - Forward: the query bytes go unchanged (apart from a fresh random id) to the
//!   upstreams in order, UDP first, the next upstream after a timeout; TCP for TCP
//!   queries and when the UDP answer is truncated. The answer bytes are relayed
//!   unchanged with the client's id restored.
//! - Block: NXDOMAIN or REFUSED ([`BlockResponse`]).
//! - A script error, a script over its budget or a script that does not answer within
//!   [`ResolverConfig::script_timeout`] is SERVFAIL, a warning naming the script, and
//!   a count in [`ResolverStats::script_errors`].
//!
//! [`system`] points the operating system's DNS configuration at the resolver.

mod forward;
mod query;
mod server;
mod stats;
pub mod system;
#[cfg(test)]
mod tests;

use std::future::Future;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use cyphonic_proto::wire::Fqdn;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::lua::{Limits, Script, ScriptError, ScriptThread};

pub use stats::{ResolverStats, StatsHandle};

/// Looks names of the overlay up at the NMS; implemented by the daemon.
pub trait OverlayResolver: Send + Sync + 'static {
    /// `Ok(None)`: the NMS does not know the name.
    fn resolve(
        &self,
        name: Fqdn,
    ) -> Pin<Box<dyn Future<Output = Result<Option<OverlayAddrs>, OverlayError>> + Send>>;
}

/// The virtual addresses of an overlay node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OverlayAddrs {
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
}

/// Why an overlay name could not be resolved; the client gets SERVFAIL either way.
#[derive(Debug, Clone, thiserror::Error)]
pub enum OverlayError {
    /// The NMS could not be asked (no channel, no reply).
    #[error("the NMS is unavailable: {0}")]
    Unavailable(String),
    /// The NMS answered with an error.
    #[error("overlay resolution failed: {0}")]
    Failed(String),
}

/// What a blocked name is answered with.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum BlockResponse {
    #[default]
    NxDomain,
    Refused,
}

/// The node's own name, answered without asking the NMS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnName {
    pub name: Fqdn,
    pub addrs: OverlayAddrs,
}

/// Settings of the resolver, filled by the daemon from the `resolver:` section.
#[derive(Debug, Clone)]
pub struct ResolverConfig {
    /// Addresses to serve UDP and TCP on (port 0: one ephemeral port shared by both).
    pub listen: Vec<SocketAddr>,
    /// Upstream resolvers, tried in order. Upstreams equal to a listen address are
    /// dropped (a loop).
    pub upstreams: Vec<SocketAddr>,
    /// The overlay domain, given to the filter as `ctx.domain`.
    pub domain: Fqdn,
    /// The filter script (`filter(name, qtype, ctx)`).
    pub filter: PathBuf,
    pub block_response: BlockResponse,
    /// TTL of overlay answers.
    pub ttl_secs: u32,
    /// Deadline for an overlay lookup (the NMS round trip).
    pub overlay_timeout: Duration,
    /// Deadline for one upstream attempt; the next upstream is tried after it.
    pub upstream_timeout: Duration,
    /// Deadline for the filter's decision, including the wait in the script queue.
    pub script_timeout: Duration,
    /// Limits of the filter's Lua sandbox.
    pub lua: Limits,
    pub own: Option<OwnName>,
}

impl ResolverConfig {
    /// A configuration with the documented defaults; `listen` and `upstreams` are empty.
    pub fn new(domain: Fqdn, filter: PathBuf) -> Self {
        Self {
            listen: Vec::new(),
            upstreams: Vec::new(),
            domain,
            filter,
            block_response: BlockResponse::default(),
            ttl_secs: 5,
            overlay_timeout: Duration::from_secs(1),
            upstream_timeout: Duration::from_secs(2),
            script_timeout: Duration::from_secs(1),
            lua: Limits::default(),
            own: None,
        }
    }
}

/// Why the resolver did not start.
#[derive(Debug, thiserror::Error)]
pub enum ResolverError {
    #[error("DNS filter: {0}")]
    Script(#[from] ScriptError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("the resolver has no listen address")]
    NoListen,
}

/// The resolver entry point.
#[derive(Debug)]
pub struct Resolver;

impl Resolver {
    /// Loads the filter (on its script thread) and runs its `self_check()`, binds every listen address for UDP and
    /// TCP and starts serving. Must be called inside a tokio runtime.
    pub async fn start(
        config: ResolverConfig,
        overlay: Arc<dyn OverlayResolver>,
    ) -> Result<ResolverHandle, ResolverError> {
        if config.listen.is_empty() {
            return Err(ResolverError::NoListen);
        }
        let script = Script::from_file(&config.filter)?;
        let limits = config.lua;
        let filter = tokio::task::spawn_blocking(move || -> Result<_, ScriptError> {
            let thread = ScriptThread::spawn(script, limits)?;
            thread.call_blocking(|sb| {
                if !sb.has_function("filter") {
                    return Err(ScriptError::MissingFunction {
                        script: sb.script_name().to_owned(),
                        function: String::from("filter"),
                    });
                }
                sb.self_check()
            })?;
            Ok(thread)
        })
        .await
        .map_err(|e| ScriptError::Setup(format!("script loader: {e}")))??;

        let mut sockets = Vec::with_capacity(config.listen.len());
        for addr in &config.listen {
            sockets.push(server::bind_pair(*addr).await?);
        }
        let local_addrs: Vec<SocketAddr> = sockets.iter().map(|pair| pair.addr).collect();
        let upstreams: Vec<SocketAddr> = config
            .upstreams
            .iter()
            .copied()
            .filter(|upstream| {
                let ours = local_addrs.contains(upstream) || config.listen.contains(upstream);
                if ours {
                    tracing::warn!(%upstream, "ignoring an upstream that is the resolver itself");
                }
                !ours
            })
            .collect();
        if upstreams.is_empty() {
            tracing::warn!("the resolver has no upstream: forwarded queries get SERVFAIL");
        }

        let shared = Arc::new(query::Shared::new(&config, upstreams, filter, overlay));
        let (shutdown, shutdown_rx) = watch::channel(false);
        let mut tasks = Vec::with_capacity(sockets.len() * 2);
        for pair in sockets {
            tasks.push(tokio::spawn(server::serve_udp(
                pair.udp,
                Arc::clone(&shared),
                shutdown_rx.clone(),
            )));
            tasks.push(tokio::spawn(server::serve_tcp(
                pair.tcp,
                Arc::clone(&shared),
                shutdown_rx.clone(),
            )));
        }
        tracing::info!(listen = ?local_addrs, domain = %config.domain, "resolver started");
        Ok(ResolverHandle {
            shared,
            local_addrs,
            tasks,
            shutdown,
        })
    }
}

/// A running resolver. Dropping it stops its tasks.
#[derive(Debug)]
pub struct ResolverHandle {
    shared: Arc<query::Shared>,
    local_addrs: Vec<SocketAddr>,
    tasks: Vec<JoinHandle<()>>,
    shutdown: watch::Sender<bool>,
}

impl ResolverHandle {
    /// Counters since the start.
    pub fn stats(&self) -> ResolverStats {
        self.shared.stats.snapshot()
    }

    /// A cheap clonable reader of the counters, for the control API.
    pub fn stats_handle(&self) -> StatsHandle {
        self.shared.stats_handle()
    }

    /// The bound addresses (UDP and TCP), in the order of [`ResolverConfig::listen`].
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.local_addrs
    }

    /// Stops accepting queries and waits for the listeners to end; queries in flight
    /// are abandoned.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        for task in std::mem::take(&mut self.tasks) {
            let _ = task.await;
        }
        tracing::info!("resolver stopped");
    }
}

impl Drop for ResolverHandle {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}
