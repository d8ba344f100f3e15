//! The local control API between `cyphonicd` and the `cyphonic` CLI (and later the
//! local web page): one JSON request and one JSON response per line. On Unix over a
//! Unix socket that only root may open (mode 0600 in a 0700 directory); on Windows over
//! a named pipe whose DACL admits only SYSTEM and Administrators
//! (`crate::windows::pipe`). The configured `control.socket` is the socket path or the
//! pipe name (`\\.\pipe\cyphonic`).
//!
//! The types here are the whole protocol; the daemon implements [`Handler`], the CLI
//! calls [`request`].

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};

use crate::packet::PeerStatus;
use crate::plugins::PluginInfo;

/// Longest request line accepted; requests are tiny.
const MAX_REQUEST: usize = 64 << 10;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "kebab-case")]
pub enum Request {
    Status,
    Peers,
    /// Resolve an overlay name (Direction Request + handshake, like a DNS query).
    Resolve {
        name: String,
    },
    /// Overlay-level ping: probes through the tunnel, answered by the peer's daemon.
    Ping {
        name: String,
        count: u32,
        interval_ms: u64,
    },
    /// `cyphonic login` stored a new credential.
    CredentialChanged,
    /// Log out at the NMS, forget the credential, take the interface down.
    Logout,
    /// Re-read the configuration and scripts now (also on file change and SIGHUP).
    Reload,
    /// A one-time login link to the starter page (`cyphonic ui`): valid 60 s, once.
    UiUrl,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "kebab-case")]
pub enum Response {
    Status(Box<NodeStatus>),
    Peers { peers: Vec<PeerStatus> },
    Resolved(Resolved),
    Ping(PingReport),
    Reloaded(ReloadReport),
    Done { message: String },
    UiUrl { url: String },
    Error { message: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NodeState {
    /// No credential: run `cyphonic login`.
    WaitingForLogin,
    Starting,
    Running,
    Stopping,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeStatus {
    pub state: NodeState,
    pub fqdn: Option<String>,
    pub domain: Option<String>,
    pub device_id: Option<String>,
    pub vip4: Option<Ipv4Addr>,
    pub vip6: Option<Ipv6Addr>,
    /// Unix second the credential expires.
    pub credential_expires: Option<u64>,
    pub interface: Option<String>,
    pub listen: Option<SocketAddr>,
    pub resolver: Vec<SocketAddr>,
    pub cloud: CloudStatus,
    pub plugins: Vec<PluginInfo>,
    /// Data-path and tunnel counters (drops by reason among them).
    pub counters: BTreeMap<String, u64>,
    /// The last error worth showing (e.g. why the cloud is unreachable).
    pub last_error: Option<String>,
    /// What the last configuration reload did.
    pub last_reload: Option<ReloadReport>,
}

/// The outcome of a configuration reload.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadReport {
    /// Settings that differ from the running configuration.
    pub changed: Vec<String>,
    /// Of those, the ones now in effect.
    pub applied: Vec<String>,
    /// Of those, the ones not applied, and why (a restart is needed).
    pub refused: Vec<String>,
    /// Why nothing was applied (the running configuration stays), with file, line and
    /// column when the YAML or a script is at fault.
    pub error: Option<String>,
    /// What applying cost, e.g. how long a recreated interface was gone.
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CloudStatus {
    pub nms: Option<SocketAddr>,
    pub registered: bool,
    /// Seconds since the NMS last answered.
    pub last_contact_secs: Option<u64>,
    /// Our address as the NMS sees it.
    pub observed: Option<SocketAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resolved {
    pub name: String,
    pub vip4: Option<Ipv4Addr>,
    pub vip6: Option<Ipv6Addr>,
    pub path: Option<String>,
    pub endpoint: Option<SocketAddr>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PingReport {
    pub name: String,
    pub vip4: Ipv4Addr,
    pub path: String,
    pub endpoint: SocketAddr,
    /// Round-trip times in milliseconds; `None` for a probe without an answer.
    pub rtts_ms: Vec<Option<f64>>,
}

/// What the daemon does with requests.
pub trait Handler: Send + Sync + 'static {
    fn handle(
        &self,
        request: Request,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Response> + Send + '_>>;
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("{}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot reach cyphonicd at {} (is it running?)", .path.display())]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("bad answer from cyphonicd: {0}")]
    Protocol(String),
}

/// Binds the control socket or pipe (replacing a stale socket) and serves it until the
/// returned task is aborted.
pub fn serve(
    path: &Path,
    handler: Arc<dyn Handler>,
) -> Result<tokio::task::JoinHandle<()>, ControlError> {
    let io = |source| ControlError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut listener = transport::Listener::bind(path).map_err(io)?;
    Ok(tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok(stream) => stream,
                Err(e) => {
                    tracing::debug!(error = %e, "control accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let handler = Arc::clone(&handler);
            tokio::spawn(async move {
                if let Err(e) = serve_connection(stream, handler).await {
                    tracing::debug!(error = %e, "control connection ended");
                }
            });
        }
    }))
}

async fn serve_connection(
    stream: impl AsyncRead + AsyncWrite,
    handler: Arc<dyn Handler>,
) -> std::io::Result<()> {
    let (read, mut write) = tokio::io::split(stream);
    let mut lines = BufReader::new(read.take(MAX_REQUEST as u64)).lines();
    while let Some(line) = lines.next_line().await? {
        let response = match serde_json::from_str::<Request>(&line) {
            Ok(request) => handler.handle(request).await,
            Err(e) => Response::Error {
                message: format!("bad request: {e}"),
            },
        };
        let mut text = serde_json::to_string(&response).map_err(std::io::Error::other)?;
        text.push('\n');
        write.write_all(text.as_bytes()).await?;
        write.flush().await?;
    }
    Ok(())
}

/// Sends one request to the daemon and waits for its answer.
pub async fn request(path: &Path, request: &Request) -> Result<Response, ControlError> {
    let stream = transport::connect(path)
        .await
        .map_err(|source| ControlError::Connect {
            path: path.to_path_buf(),
            source,
        })?;
    let io = |source| ControlError::Io {
        path: path.to_path_buf(),
        source,
    };
    let (read, mut write) = tokio::io::split(stream);
    let mut text =
        serde_json::to_string(request).map_err(|e| ControlError::Protocol(e.to_string()))?;
    text.push('\n');
    write.write_all(text.as_bytes()).await.map_err(io)?;
    write.flush().await.map_err(io)?;
    let mut lines = BufReader::new(read).lines();
    let line = lines
        .next_line()
        .await
        .map_err(io)?
        .ok_or_else(|| ControlError::Protocol("connection closed without an answer".into()))?;
    serde_json::from_str(&line).map_err(|e| ControlError::Protocol(e.to_string()))
}

#[cfg(unix)]
mod transport {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    use std::path::Path;

    use tokio::net::{UnixListener, UnixStream};

    #[derive(Debug)]
    pub(super) struct Listener(UnixListener);

    impl Listener {
        pub(super) fn bind(path: &Path) -> std::io::Result<Self> {
            if let Some(dir) = path.parent() {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(dir)?;
            }
            match std::fs::remove_file(path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            let listener = UnixListener::bind(path)?;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
            Ok(Self(listener))
        }

        pub(super) async fn accept(&mut self) -> std::io::Result<UnixStream> {
            self.0.accept().await.map(|(stream, _)| stream)
        }
    }

    pub(super) async fn connect(path: &Path) -> std::io::Result<UnixStream> {
        UnixStream::connect(path).await
    }
}

#[cfg(windows)]
mod transport {
    use std::path::Path;

    use tokio::net::windows::named_pipe::{NamedPipeClient, NamedPipeServer};

    use crate::windows::pipe::PipeListener;

    #[derive(Debug)]
    pub(super) struct Listener(PipeListener);

    impl Listener {
        pub(super) fn bind(path: &Path) -> std::io::Result<Self> {
            PipeListener::bind(&pipe_name(path)?).map(Self)
        }

        pub(super) async fn accept(&mut self) -> std::io::Result<NamedPipeServer> {
            self.0.accept().await
        }
    }

    pub(super) async fn connect(path: &Path) -> std::io::Result<NamedPipeClient> {
        crate::windows::pipe::connect(&pipe_name(path)?).await
    }

    fn pipe_name(path: &Path) -> std::io::Result<String> {
        let name = path.to_str().ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "the control pipe name is not valid Unicode",
            )
        })?;
        if !name.starts_with(r"\\.\pipe\") {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(r"control.socket must be a named pipe like \\.\pipe\cyphonic, not {name}"),
            ));
        }
        Ok(name.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo;

    impl Handler for Echo {
        fn handle(
            &self,
            request: Request,
        ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Response> + Send + '_>> {
            Box::pin(async move {
                Response::Done {
                    message: format!("{request:?}"),
                }
            })
        }
    }

    #[tokio::test]
    async fn request_and_answer_over_a_private_channel() {
        let dir = tempfile::tempdir().unwrap();
        #[cfg(unix)]
        let (path, missing) = (
            dir.path().join("run/cyphonicd.sock"),
            dir.path().join("nope.sock"),
        );
        #[cfg(windows)]
        let (path, missing) = {
            let _ = &dir;
            let pid = std::process::id();
            (
                PathBuf::from(format!(r"\\.\pipe\cyphonic-control-test-{pid}")),
                PathBuf::from(format!(r"\\.\pipe\cyphonic-control-missing-{pid}")),
            )
        };
        let task = serve(&path, Arc::new(Echo)).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let answer = request(
            &path,
            &Request::Resolve {
                name: "b.cyphonic".into(),
            },
        )
        .await
        .unwrap();
        match answer {
            Response::Done { message } => assert!(message.contains("b.cyphonic")),
            other => panic!("{other:?}"),
        }
        // Garbage gets an error answer, not a dropped connection or a crash.
        let stream = transport::connect(&path).await.unwrap();
        let (read, mut write) = tokio::io::split(stream);
        write.write_all(b"{\"cmd\":\"fly\"}\n").await.unwrap();
        write.flush().await.unwrap();
        let mut lines = BufReader::new(read).lines();
        let line = lines.next_line().await.unwrap().unwrap();
        assert!(line.contains("bad request"), "{line}");
        task.abort();
        let missing = request(&missing, &Request::Status).await;
        assert!(matches!(missing, Err(ControlError::Connect { .. })));
    }
}
