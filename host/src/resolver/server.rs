//! The UDP and TCP listeners.
//!
//! Each listener owns a `JoinSet` of its query tasks, so stopping (or aborting) a
//! listener also ends every query it started.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::ResolverError;
use super::query::Shared;
use super::stats::bump;

/// Queries in flight per UDP listener beyond which new ones are dropped.
const MAX_UDP_IN_FLIGHT: usize = 512;
/// Open TCP connections per listener beyond which new ones are closed at once.
const MAX_TCP_CONNECTIONS: usize = 64;
/// A TCP connection with no complete query for this long is closed (RFC 7766 asks
/// for seconds, not minutes).
const TCP_IDLE: Duration = Duration::from_secs(10);
/// Attempts at finding an ephemeral port free for both UDP and TCP.
const PORT_ATTEMPTS: usize = 16;

/// A UDP socket and a TCP listener on the same address and port.
#[derive(Debug)]
pub(super) struct SocketPair {
    pub(super) addr: SocketAddr,
    pub(super) udp: UdpSocket,
    pub(super) tcp: TcpListener,
}

/// Binds UDP and TCP on `addr`; with port 0, on one ephemeral port free for both.
pub(super) async fn bind_pair(addr: SocketAddr) -> Result<SocketPair, ResolverError> {
    let bind_error = |source| ResolverError::Bind { addr, source };
    let mut attempt = 0;
    loop {
        attempt += 1;
        let udp = UdpSocket::bind(addr).await.map_err(bind_error)?;
        let bound = udp.local_addr().map_err(bind_error)?;
        match TcpListener::bind(bound).await {
            Ok(tcp) => {
                return Ok(SocketPair {
                    addr: bound,
                    udp,
                    tcp,
                });
            }
            Err(e)
                if addr.port() == 0
                    && e.kind() == std::io::ErrorKind::AddrInUse
                    && attempt < PORT_ATTEMPTS => {}
            Err(e) => return Err(bind_error(e)),
        }
    }
}

pub(super) async fn serve_udp(
    socket: UdpSocket,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let socket = Arc::new(socket);
    let mut in_flight = JoinSet::new();
    let mut buf = vec![0u8; 65_535];
    loop {
        let (len, client) = tokio::select! {
            received = socket.recv_from(&mut buf) => match received {
                Ok(received) => received,
                Err(e) => {
                    // ICMP errors from earlier sends surface here on Linux; keep serving.
                    tracing::debug!("resolver UDP receive: {e}");
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        while in_flight.try_join_next().is_some() {}
        if in_flight.len() >= MAX_UDP_IN_FLIGHT {
            bump(&shared.stats.received);
            bump(&shared.stats.dropped);
            continue;
        }
        let query = buf[..len].to_vec();
        let socket = Arc::clone(&socket);
        let shared = Arc::clone(&shared);
        in_flight.spawn(async move {
            if let Some(answer) = shared.handle(&query, client.ip(), false).await {
                if let Err(e) = socket.send_to(&answer, client).await {
                    tracing::debug!(%client, "resolver UDP send: {e}");
                }
            }
        });
    }
}

pub(super) async fn serve_tcp(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut connections = JoinSet::new();
    loop {
        let (stream, client) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::debug!("resolver TCP accept: {e}");
                    // Out of descriptors and the like: do not spin.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        while connections.try_join_next().is_some() {}
        if connections.len() >= MAX_TCP_CONNECTIONS {
            tracing::debug!(%client, "too many resolver TCP connections");
            continue;
        }
        let shared = Arc::clone(&shared);
        connections.spawn(async move {
            if let Err(e) = serve_connection(stream, client, &shared).await {
                tracing::debug!(%client, "resolver TCP connection: {e}");
            }
        });
    }
}

/// Length-prefixed queries on one connection, answered in order.
async fn serve_connection(
    mut stream: TcpStream,
    client: SocketAddr,
    shared: &Shared,
) -> std::io::Result<()> {
    loop {
        let len = match tokio::time::timeout(TCP_IDLE, stream.read_u16()).await {
            Ok(Ok(len)) => len,
            // Idle, or the client closed: both end the connection quietly.
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Ok(Err(e)) => return Err(e),
            Err(_) => return Ok(()),
        };
        let mut query = vec![0u8; usize::from(len)];
        tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut query))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "partial query"))??;
        let Some(answer) = shared.handle(&query, client.ip(), true).await else {
            // Nothing sensible to say: the stream may be out of sync, so close it.
            return Ok(());
        };
        let Ok(answer_len) = u16::try_from(answer.len()) else {
            return Ok(());
        };
        let mut framed = Vec::with_capacity(2 + answer.len());
        framed.extend_from_slice(&answer_len.to_be_bytes());
        framed.extend_from_slice(&answer);
        stream.write_all(&framed).await?;
    }
}
