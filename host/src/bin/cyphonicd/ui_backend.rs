//! The daemon's side of the starter page (`cyphonic_host::ui`): the node as the page's
//! backend (status, login, logout through the same paths as the CLI's requests), and
//! the control handler that answers `cyphonic ui` with a one-time login link.

use std::sync::Arc;

use cyphonic_host::config::{NodeConfig, UiSection};
use cyphonic_host::control::{self, Handler as _, Request, Response};
use cyphonic_host::ui::{self, BoxFuture, Snapshot, UiServer};
use zeroize::Zeroizing;

use crate::node::Node;

/// The starter page as this daemon runs it.
#[derive(Debug)]
pub(crate) enum StarterPage {
    Disabled,
    Running(UiServer),
    /// It could not start (the port is taken, say); the node runs without it.
    Failed(String),
}

impl StarterPage {
    /// Starts the page per `section` with `node` behind it; `config` gives the running
    /// configuration (a reload may change the cloud the login goes to).
    pub(crate) async fn start(
        section: &UiSection,
        node: Arc<Node>,
        config: impl Fn() -> Arc<NodeConfig> + Send + Sync + 'static,
    ) -> Self {
        if !section.enabled {
            return Self::Disabled;
        }
        let backend = Arc::new(NodeBackend { node, config });
        match UiServer::start(section.listen, backend).await {
            Ok(server) => Self::Running(server),
            Err(e) => {
                tracing::error!("{e}; the node runs without it");
                Self::Failed(e.to_string())
            }
        }
    }

    pub(crate) fn failure(&self) -> Option<&str> {
        match self {
            Self::Failed(e) => Some(e),
            _ => None,
        }
    }

    pub(crate) fn stop(&self) {
        if let Self::Running(server) = self {
            server.stop();
        }
    }

    fn login_url(&self) -> Response {
        match self {
            Self::Running(server) => Response::UiUrl {
                url: server.login_url(),
            },
            Self::Disabled => Response::Error {
                message: "the starter page is off (ui.enabled: false)".into(),
            },
            Self::Failed(e) => Response::Error { message: e.clone() },
        }
    }
}

/// The node's control handler with `Request::UiUrl` answered by the page.
pub(crate) fn control_handler(
    node: Arc<Node>,
    page: Arc<StarterPage>,
) -> Arc<dyn control::Handler> {
    Arc::new(WithPage { node, page })
}

struct WithPage {
    node: Arc<Node>,
    page: Arc<StarterPage>,
}

impl control::Handler for WithPage {
    fn handle(&self, request: Request) -> BoxFuture<'_, Response> {
        match request {
            Request::UiUrl => {
                let answer = self.page.login_url();
                Box::pin(async move { answer })
            }
            other => self.node.handle(other),
        }
    }
}

struct NodeBackend<F> {
    node: Arc<Node>,
    config: F,
}

impl<F> ui::Backend for NodeBackend<F>
where
    F: Fn() -> Arc<NodeConfig> + Send + Sync + 'static,
{
    fn snapshot(&self) -> BoxFuture<'_, Result<Snapshot, String>> {
        Box::pin(async move {
            let status = match self.node.handle(Request::Status).await {
                Response::Status(status) => *status,
                other => return Err(unexpected(other)),
            };
            let peers = match self.node.handle(Request::Peers).await {
                Response::Peers { peers } => peers,
                other => return Err(unexpected(other)),
            };
            Ok(Snapshot { status, peers })
        })
    }

    fn login(
        &self,
        device_id: String,
        password: Zeroizing<Vec<u8>>,
    ) -> BoxFuture<'_, Result<String, String>> {
        Box::pin(async move {
            let config = (self.config)();
            let who = cyphonic_host::login::login(&config, &device_id, password)
                .await
                .map_err(|e| e.to_string())?;
            tracing::info!(fqdn = %who.fqdn, "logged in from the starter page");
            // What `cyphonic login` sends: the node picks the credential up.
            self.node.handle(Request::CredentialChanged).await;
            Ok(format!(
                "Logged in as {} ({}, {}); connecting…",
                who.fqdn, who.vip4, who.vip6
            ))
        })
    }

    fn logout(&self) -> BoxFuture<'_, Result<String, String>> {
        Box::pin(async move {
            match self.node.handle(Request::Logout).await {
                Response::Done { message } => Ok(message),
                Response::Error { message } => Err(message),
                other => Err(unexpected(other)),
            }
        })
    }
}

fn unexpected(answer: Response) -> String {
    format!("unexpected answer from the node: {answer:?}")
}
