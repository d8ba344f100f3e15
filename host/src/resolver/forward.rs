//! Relaying queries to the upstream resolvers.
//!
//! Each attempt uses its own socket with a fresh ephemeral port, connected to the
//! upstream, and a fresh random message id: an off-path attacker has to guess both to
//! spoof an answer. Apart from the id, the query and answer bytes pass unchanged.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use rand_core::{OsRng, RngCore};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

/// How the client asked, which decides how we ask upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Transport {
    /// Over UDP; answers longer than `max_payload` cannot be relayed.
    Udp {
        max_payload: u16,
    },
    Tcp,
}

#[derive(Debug)]
pub(super) struct Forwarder {
    upstreams: Vec<SocketAddr>,
    timeout: Duration,
}

/// Largest DNS message (TCP length prefix, UDP datagram).
const MAX_MESSAGE: usize = 65_535;
/// Header bit: this is a response.
const QR: u8 = 0x80;
/// Header bit: the answer was truncated.
const TC: u8 = 0x02;

impl Forwarder {
    pub(super) fn new(upstreams: Vec<SocketAddr>, timeout: Duration) -> Self {
        Self { upstreams, timeout }
    }

    /// The upstream's answer with the client's id, or `None` when no upstream
    /// answered in time.
    pub(super) async fn forward(&self, query: &[u8], transport: Transport) -> Option<Vec<u8>> {
        if query.len() < 12 {
            return None;
        }
        let client_id = [query[0], query[1]];
        let mut outgoing = query.to_vec();
        let id = random_id();
        outgoing[..2].copy_from_slice(&id.to_be_bytes());
        for upstream in &self.upstreams {
            let answer = match transport {
                Transport::Tcp => self.tcp(*upstream, &outgoing, id).await,
                Transport::Udp { max_payload } => {
                    self.udp_then_tcp(*upstream, &outgoing, id, max_payload)
                        .await
                }
            };
            match answer {
                Ok(mut answer) => {
                    answer[..2].copy_from_slice(&client_id);
                    return Some(answer);
                }
                Err(e) => tracing::debug!(%upstream, "upstream attempt failed: {e}"),
            }
        }
        None
    }

    /// UDP; a truncated answer is retried over TCP and the full answer used when it
    /// fits the client's UDP payload size, otherwise the client gets the truncated one
    /// and retries over TCP itself.
    async fn udp_then_tcp(
        &self,
        upstream: SocketAddr,
        query: &[u8],
        id: u16,
        max_payload: u16,
    ) -> std::io::Result<Vec<u8>> {
        let answer = self.udp(upstream, query, id).await?;
        if answer[2] & TC == 0 {
            return Ok(answer);
        }
        match self.tcp(upstream, query, id).await {
            Ok(full) if full.len() <= usize::from(max_payload) => Ok(full),
            Ok(_) => Ok(answer),
            Err(e) => {
                tracing::debug!(%upstream, "TCP retry of a truncated answer failed: {e}");
                Ok(answer)
            }
        }
    }

    async fn udp(&self, upstream: SocketAddr, query: &[u8], id: u16) -> std::io::Result<Vec<u8>> {
        let local = match upstream {
            SocketAddr::V4(_) => SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
            SocketAddr::V6(_) => SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0),
        };
        let socket = UdpSocket::bind(local).await?;
        socket.connect(upstream).await?;
        socket.send(query).await?;
        let mut buf = vec![0u8; MAX_MESSAGE];
        let exchange = async {
            loop {
                let len = socket.recv(&mut buf).await?;
                // Stray datagrams (a late answer to nothing of ours) are skipped.
                if is_answer_to(&buf[..len], id) {
                    return Ok::<_, std::io::Error>(len);
                }
            }
        };
        let len = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| timed_out())??;
        buf.truncate(len);
        Ok(buf)
    }

    async fn tcp(&self, upstream: SocketAddr, query: &[u8], id: u16) -> std::io::Result<Vec<u8>> {
        let exchange = async {
            let mut stream = TcpStream::connect(upstream).await?;
            let len = u16::try_from(query.len()).map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::InvalidInput, "query too long")
            })?;
            let mut framed = Vec::with_capacity(2 + query.len());
            framed.extend_from_slice(&len.to_be_bytes());
            framed.extend_from_slice(query);
            stream.write_all(&framed).await?;
            let len = stream.read_u16().await?;
            let mut answer = vec![0u8; usize::from(len)];
            stream.read_exact(&mut answer).await?;
            Ok::<_, std::io::Error>(answer)
        };
        let answer = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| timed_out())??;
        if !is_answer_to(&answer, id) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "the upstream's TCP answer does not match the query",
            ));
        }
        Ok(answer)
    }
}

fn is_answer_to(message: &[u8], id: u16) -> bool {
    message.len() >= 12 && message[..2] == id.to_be_bytes() && message[2] & QR != 0
}

fn timed_out() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "no answer before the deadline",
    )
}

fn random_id() -> u16 {
    let mut id = [0u8; 2];
    OsRng.fill_bytes(&mut id);
    u16::from_be_bytes(id)
}
