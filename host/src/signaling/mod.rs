//! The node's async cloud client: a thin tokio layer over the sans-IO
//! [`cyphonic_proto::channel::Signaling`] state machine.
//!
//! Each connection to a cloud service is one task that owns one UDP socket (connected
//! to the service, so datagrams from anyone else never reach the state machine) and
//! one `Signaling`. Handles talk to the task over a command channel and get their
//! replies through oneshots; cloud pushes come out of an event channel. The task
//! drives the state machine faithfully: `poll_transmit` until empty after every input,
//! `handle_timeout` at `poll_timeout`, `handle_datagram` for every datagram, and
//! `poll_event` until empty.
//!
//! - [`AuthClient`]: login with device id and password, credential renewal (AS).
//! - [`NmsClient`]: registration, keepalive, address updates, directions, route
//!   confirmations, logout, and pushes ([`NmsEvent`]) on a persistent channel (NMS).
//! - [`relay_bind`] / [`RelayBinder`]: binding a socket to a relay ticket at a TRS.
//!
//! Request ids: the node picks its ids with the top bit clear; the cloud's pushes use
//! ids with the top bit set, so the two spaces never collide.
//!
//! Passwords, keys, punch and bind keys and credentials never reach a log line or a
//! `Debug` output of this module.

mod auth;
mod driver;
mod nms;
mod relay;
#[cfg(test)]
mod tests;

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use cyphonic_proto::channel::{ChannelError, SignalingConfig};
use cyphonic_proto::credential::CredentialError;
use cyphonic_proto::wire::WireError;
use cyphonic_proto::wire::signal::StatusReport;

pub use auth::{AuthClient, LoginOutcome};
pub use nms::{KeepAliveAck, NmsClient, NmsEvent};
pub use relay::{AckError, RELAY_BIND_TIMEOUT, RelayBinder, relay_bind, resolve_relay_endpoint};

/// The first request id of the cloud's space: pushes carry ids at or above it.
pub const PUSH_ID_BIT: u32 = 0x8000_0000;

/// Why a request to the cloud did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum SignalingError {
    /// The cloud answered with a refusal (or a status where a reply was expected).
    #[error("the cloud answered {}", StatusText(.0))]
    Status(StatusReport),
    /// No reply before the request's deadline.
    #[error("no reply from the cloud before the deadline")]
    Timeout,
    /// No channel could be (re)established; the request was abandoned.
    #[error("the channel to the cloud was lost")]
    ChannelLost,
    /// The reply did not make sense for the request.
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    /// The reply did not parse.
    #[error("malformed reply: {0}")]
    Wire(#[from] WireError),
    /// The issued credential does not verify against the pinned key or names another
    /// static key.
    #[error("credential from the cloud rejected: {0}")]
    Credential(#[from] CredentialError),
    /// The channel state machine refused the request (too long, no channel).
    #[error("channel: {0}")]
    Channel(#[from] ChannelError),
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
    /// The connection task has ended (after `finalize`, or all handles dropped).
    #[error("the cloud connection is closed")]
    Closed,
}

impl SignalingError {
    /// The status code when the cloud refused.
    pub fn status(&self) -> Option<cyphonic_proto::wire::status::StatusCode> {
        match self {
            Self::Status(report) => Some(report.status),
            _ => None,
        }
    }
}

struct StatusText<'a>(&'a StatusReport);

impl fmt::Display for StatusText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.status)?;
        if self.0.retry_after_secs > 0 {
            write!(f, " (retry after {} s)", self.0.retry_after_secs)?;
        }
        if !self.0.message.is_empty() {
            write!(f, ": {}", self.0.message)?;
        }
        Ok(())
    }
}

/// Timers and socket options of a cloud connection.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Retransmission, request and handshake timers. `persistent` is set by the client
    /// (the NMS channel stays up for pushes, AS channels do not).
    pub signaling: SignalingConfig,
    /// Local address for the connection's socket; `None` binds the wildcard address of
    /// the service's family on an ephemeral port.
    pub bind: Option<SocketAddr>,
    /// Share `bind`'s port with another socket of this process (SO_REUSEPORT; the other
    /// socket must set it too).
    pub share_port: bool,
    /// First delay before a persistent channel that was lost is tried again; doubles
    /// up to [`Self::max_reconnect_delay`].
    pub reconnect_delay: Duration,
    pub max_reconnect_delay: Duration,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            signaling: SignalingConfig::default(),
            bind: None,
            share_port: false,
            reconnect_delay: Duration::from_secs(1),
            max_reconnect_delay: Duration::from_secs(30),
        }
    }
}

/// The NMS channel's transport when it rides on the tunnel socket (systems without
/// SO_REUSEPORT): sends leave from that socket to the NMS; the data path hands over
/// every datagram that came from the NMS. Made by `DataPlane::cloud_port`.
#[derive(Debug)]
pub struct SharedPort {
    socket: std::net::UdpSocket,
    /// The NMS as the socket addresses it (IPv4-mapped on a dual-stack socket).
    peer: SocketAddr,
    incoming: tokio::sync::Mutex<tokio::sync::mpsc::Receiver<Vec<u8>>>,
}

impl SharedPort {
    pub fn new(
        socket: std::net::UdpSocket,
        peer: SocketAddr,
        incoming: tokio::sync::mpsc::Receiver<Vec<u8>>,
    ) -> Self {
        Self {
            socket,
            peer,
            incoming: tokio::sync::Mutex::new(incoming),
        }
    }
}

/// A cloud connection's datagram transport: its own connected socket, or a share of
/// the tunnel socket.
#[derive(Debug)]
pub(crate) enum CloudSocket {
    Own(tokio::net::UdpSocket),
    Shared(SharedPort),
}

impl CloudSocket {
    pub(crate) async fn send(&self, datagram: &[u8]) -> std::io::Result<()> {
        match self {
            Self::Own(socket) => socket.send(datagram).await.map(drop),
            Self::Shared(port) => {
                // The tunnel socket is non-blocking and shared with the data threads;
                // a full send buffer is rare and brief, and the channel retransmits.
                for _ in 0..20 {
                    match port.socket.send_to(datagram, port.peer) {
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                        }
                        other => return other.map(drop),
                    }
                }
                Err(std::io::ErrorKind::WouldBlock.into())
            }
        }
    }

    /// The next datagram from the service, copied into `buf` (truncated to it).
    pub(crate) async fn recv(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Self::Own(socket) => socket.recv(buf).await,
            Self::Shared(port) => {
                let datagram = port.incoming.lock().await.recv().await.ok_or_else(|| {
                    std::io::Error::new(
                        std::io::ErrorKind::BrokenPipe,
                        "the data path stopped handing over cloud datagrams",
                    )
                })?;
                let len = datagram.len().min(buf.len());
                buf[..len].copy_from_slice(&datagram[..len]);
                Ok(len)
            }
        }
    }

    pub(crate) fn local_addr(&self) -> std::io::Result<SocketAddr> {
        match self {
            Self::Own(socket) => socket.local_addr(),
            Self::Shared(port) => port.socket.local_addr(),
        }
    }
}

/// Binds a UDP socket for talking to `peer` and connects it, so that only the peer's
/// datagrams are received. With `share_port` the socket joins the port of another socket
/// of this process (SO_REUSEPORT): the node's NMS channel leaves from its tunnel port, so
/// the source the NMS observes (through any NAT) is the tunnel port's mapping, and the
/// kernel still hands the NMS's datagrams to this connected socket alone.
async fn connected_socket(
    peer: SocketAddr,
    bind: Option<SocketAddr>,
    share_port: bool,
) -> std::io::Result<tokio::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let local = bind.unwrap_or(match peer {
        SocketAddr::V4(_) => SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 0),
        SocketAddr::V6(_) => SocketAddr::new(IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED), 0),
    });
    // An IPv4 service from a dual-stack IPv6 socket is addressed as mapped.
    let peer = match (local, peer) {
        (SocketAddr::V6(_), SocketAddr::V4(v4)) => {
            SocketAddr::new(IpAddr::V6(v4.ip().to_ipv6_mapped()), v4.port())
        }
        _ => peer,
    };
    let domain = if local.is_ipv6() {
        Domain::IPV6
    } else {
        Domain::IPV4
    };
    let socket = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
    if local.is_ipv6() {
        socket.set_only_v6(false)?;
    }
    if share_port {
        #[cfg(unix)]
        socket.set_reuse_port(true)?;
        #[cfg(not(unix))]
        return Err(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            "sharing a UDP port with SO_REUSEPORT needs a Unix system",
        ));
    }
    socket.set_nonblocking(true)?;
    socket.bind(&local.into())?;
    let socket = tokio::net::UdpSocket::from_std(socket.into())?;
    socket.connect(peer).await?;
    Ok(socket)
}

/// IPv4 peers reaching a dual-stack socket appear as `::ffff:a.b.c.d`; compare them
/// as IPv4.
fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), addr.port()),
            None => addr,
        },
        IpAddr::V4(_) => addr,
    }
}

fn unix_now() -> cyphonic_proto::time::UnixTime {
    cyphonic_proto::time::UnixTime::from_system_time(std::time::SystemTime::now())
}

/// The last Unix second a new connection of this process took for its first hello.
static LAST_HELLO_SECOND: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
/// Most a connection's clock runs ahead to keep hello timestamps apart.
const MAX_HELLO_OFFSET_SECS: u64 = 30;

/// Seconds a new connection adds to the wall clock for its hellos.
///
/// A service refuses a hello whose timestamp is not above the last one it accepted from
/// the same node key, and a fresh `ChannelClient` stamps its first hello with the
/// current second. Two connections from one key within a second (a login followed by
/// a renewal, a reconnect) would see the second one's first hello dropped as a replay
/// and cost a retransmission; giving each connection its own second avoids that. The
/// offset stays far inside the services' acceptance window; past the cap we fall back
/// to the plain clock and the retransmission.
fn hello_clock_offset() -> u64 {
    use std::sync::atomic::Ordering;
    let now = unix_now().0;
    let mut last = LAST_HELLO_SECOND.load(Ordering::Relaxed);
    loop {
        let next = now.max(last.saturating_add(1));
        if next - now > MAX_HELLO_OFFSET_SECS {
            return 0;
        }
        match LAST_HELLO_SECOND.compare_exchange_weak(
            last,
            next,
            Ordering::Relaxed,
            Ordering::Relaxed,
        ) {
            Ok(_) => return next - now,
            Err(current) => last = current,
        }
    }
}
