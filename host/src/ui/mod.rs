//! The starter page: a small web page the daemon serves on a loopback address, with a
//! login form (device ID and password) and then the node's status: name and virtual
//! addresses, cloud reachability, peers with their path and traffic, recent errors,
//! and a log-out button. Plain HTML, CSS and JavaScript (`assets/`), compiled in.
//!
//! Who may use it: only a browser opened with a one-time link from `cyphonic ui`, which
//! gets it over the root-only control socket ([`UiServer::login_url`]). The link's token
//! becomes a session cookie plus a CSRF token kept in the tab; see [`security`] for the
//! rules and why. Every request must name us in its Host header (DNS rebinding fails),
//! and no response carries CORS headers.
//!
//! The daemon plugs its node in through [`Backend`].

mod handlers;
mod security;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;
use zeroize::Zeroizing;

use crate::control::NodeStatus;
use crate::packet::PeerStatus;

pub use security::TOKEN_TTL;

/// A boxed future, as [`Backend`] returns them.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What the page shows and does, provided by the daemon.
pub trait Backend: Send + Sync + 'static {
    /// The node's status and its peers; `Err`: why the node cannot tell.
    fn snapshot(&self) -> BoxFuture<'_, Result<Snapshot, String>>;
    /// Logs the device in at the AS, stores the credential and wakes the node (as
    /// `cyphonic login` does). `Ok`: a line for the page; `Err`: why not, for the form
    /// (the AS's answer for a wrong password).
    fn login(
        &self,
        device_id: String,
        password: Zeroizing<Vec<u8>>,
    ) -> BoxFuture<'_, Result<String, String>>;
    /// Logs the device out (as `cyphonic logout` does).
    fn logout(&self) -> BoxFuture<'_, Result<String, String>>;
}

/// The node as the page shows it: the control API's own types.
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    pub status: NodeStatus,
    pub peers: Vec<PeerStatus>,
}

#[derive(Debug, thiserror::Error)]
pub enum UiError {
    #[error("the starter page cannot listen on {addr}: {error}")]
    Bind {
        addr: SocketAddr,
        error: std::io::Error,
    },
    #[error("ui.listen {0} is not a loopback address")]
    NotLoopback(SocketAddr),
}

/// The running page; stops when dropped.
#[derive(Debug)]
pub struct UiServer {
    addr: SocketAddr,
    gate: Arc<security::Gate>,
    task: tokio::task::JoinHandle<()>,
}

impl UiServer {
    /// Binds `listen` (a loopback address; port 0 picks one) and serves the page on the
    /// current tokio runtime.
    pub async fn start(listen: SocketAddr, backend: Arc<dyn Backend>) -> Result<Self, UiError> {
        if !listen.ip().is_loopback() {
            return Err(UiError::NotLoopback(listen));
        }
        let bind_error = |error| UiError::Bind {
            addr: listen,
            error,
        };
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(bind_error)?;
        let addr = listener.local_addr().map_err(bind_error)?;
        let gate = Arc::new(security::Gate::new(addr));
        let app = handlers::router(Arc::clone(&gate), backend);
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(error = %e, "the starter page stopped");
            }
        });
        tracing::info!(%addr, "starter page listening (open it with `cyphonic ui`)");
        Ok(Self { addr, gate, task })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// A new one-time login link, valid for [`TOKEN_TTL`].
    pub fn login_url(&self) -> String {
        let token = self.gate.issue_token(Instant::now());
        format!("{}/?token={token}", self.gate.origin())
    }

    /// Stops serving (also on drop).
    pub fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for UiServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests;
