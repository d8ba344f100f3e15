//! Binding a node's socket to a relay ticket at a TRS.
//!
//! [`RelayBinder`] is the sans-IO half (build binds with strictly increasing
//! timestamps, check acks), so a daemon can bind from its data-path loop; [`relay_bind`]
//! is the one-shot async form.

use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cyphonic_proto::relay::RelayTicket;
use cyphonic_proto::wire::NodeId;
use cyphonic_proto::wire::relay::{
    RelayBindAckPacket, RelayBindAckRepr, RelayBindPacket, RelayBindRepr,
};
use cyphonic_proto::wire::signal::StatusReport;
use tokio::net::UdpSocket;
use zeroize::Zeroizing;

use super::{SignalingError, canonical};

/// Bind timestamps remembered for matching acks (retransmissions use fresh ones).
const SENT_MEMORY: usize = 8;
const FIRST_RTO: Duration = Duration::from_millis(500);
const MAX_RTO: Duration = Duration::from_secs(4);
/// [`relay_bind`] gives up after this long without a genuine ack.
pub const RELAY_BIND_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a datagram is not the ack to one of our binds. Such datagrams are ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AckError {
    #[error("not a well-formed RelayBindAck")]
    Malformed,
    #[error("ack for another ticket")]
    OtherTicket,
    #[error("ack MAC does not verify")]
    BadMac,
    #[error("ack echoes a timestamp we did not send")]
    Stale,
}

/// Where to send to a TRS endpoint from a relay offer. An unspecified address in an
/// offer means "the address you reach the NMS at, in that family" (a single-host cloud
/// whose TRS listens on a wildcard address cannot know its public address): it takes
/// the IP of the NMS address of the same family, or is unusable (`None`) without one.
pub fn resolve_relay_endpoint(offered: SocketAddr, nms_addrs: &[SocketAddr]) -> Option<SocketAddr> {
    if !offered.ip().is_unspecified() {
        return Some(offered);
    }
    nms_addrs
        .iter()
        .find(|nms| nms.is_ipv4() == offered.is_ipv4())
        .map(|nms| SocketAddr::new(nms.ip(), offered.port()))
}

/// Builds binds for one (ticket, node) and recognises the TRS's genuine answers.
pub struct RelayBinder {
    ticket: RelayTicket,
    bind_key: Zeroizing<[u8; 32]>,
    node_id: NodeId,
    sent: Vec<u64>,
    last_timestamp: u64,
}

impl fmt::Debug for RelayBinder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RelayBinder")
            .field("node_id", &self.node_id)
            .field("channel_id", &self.ticket.channel_id())
            .finish_non_exhaustive()
    }
}

impl RelayBinder {
    pub fn new(ticket: RelayTicket, bind_key: &[u8; 32], node_id: NodeId) -> Self {
        Self {
            ticket,
            bind_key: Zeroizing::new(*bind_key),
            node_id,
            sent: Vec::new(),
            last_timestamp: 0,
        }
    }

    /// Writes a fresh `RelayBind` into `buf` (at least [`RelayBindPacket::LEN`] bytes).
    /// Its timestamp is `unix_millis`, raised if needed above the previous bind's: the
    /// TRS refuses a timestamp it has already accepted.
    pub fn bind(
        &mut self,
        unix_millis: u64,
        buf: &mut [u8],
    ) -> Result<usize, cyphonic_proto::wire::WireError> {
        let timestamp = unix_millis.max(self.last_timestamp.saturating_add(1));
        let mut bind = RelayBindRepr {
            ticket: self.ticket,
            binder: self.node_id,
            timestamp_millis: timestamp,
            mac: [0; 16],
        };
        bind.seal(&self.bind_key);
        let len = bind.emit(buf)?;
        self.last_timestamp = timestamp;
        if self.sent.len() == SENT_MEMORY {
            self.sent.remove(0);
        }
        self.sent.push(timestamp);
        Ok(len)
    }

    /// Checks that `datagram` is the TRS's authenticated answer to one of our binds.
    pub fn handle_ack(&self, datagram: &[u8]) -> Result<RelayBindAckRepr, AckError> {
        let packet = RelayBindAckPacket::new_checked(datagram).map_err(|_| AckError::Malformed)?;
        if packet.ticket_id() != self.ticket.ticket_id {
            return Err(AckError::OtherTicket);
        }
        packet
            .verify(&self.bind_key)
            .map_err(|_| AckError::BadMac)?;
        let ack = RelayBindAckRepr::parse(&packet).map_err(|_| AckError::Malformed)?;
        if !self.sent.contains(&ack.timestamp_millis) {
            return Err(AckError::Stale);
        }
        Ok(ack)
    }
}

/// Binds `socket` to `ticket` at the TRS `trs_addr` and waits for the TRS's
/// authenticated ack (MAC under the bind key, echoing one of our timestamps).
/// Retransmits with fresh timestamps; other datagrams arriving on `socket` meanwhile
/// are discarded. A refusal (`EXPIRED`, `CONFLICT`, `RATE_LIMITED`, ...) is
/// `SignalingError::Status`.
pub async fn relay_bind(
    trs_addr: SocketAddr,
    ticket: &RelayTicket,
    bind_key: &[u8; 32],
    node_id: NodeId,
    socket: &UdpSocket,
) -> Result<RelayBindAckRepr, SignalingError> {
    let mut binder = RelayBinder::new(*ticket, bind_key, node_id);
    let mut out = [0u8; RelayBindPacket::<&[u8]>::LEN];
    let mut buf = vec![0u8; 2048];
    let target = send_address(socket, trs_addr)?;
    let give_up = tokio::time::Instant::now() + RELAY_BIND_TIMEOUT;
    let mut rto = FIRST_RTO;
    loop {
        let len = binder.bind(unix_millis(), &mut out)?;
        socket.send_to(&out[..len], target).await?;
        let retry = (tokio::time::Instant::now() + rto).min(give_up);
        rto = (rto * 2).min(MAX_RTO);
        loop {
            let received = tokio::time::timeout_at(retry, socket.recv_from(&mut buf)).await;
            let Ok(received) = received else {
                break;
            };
            let (n, from) = match received {
                Ok(r) => r,
                Err(e) => {
                    tracing::debug!(error = %e, "receive while binding failed");
                    continue;
                }
            };
            if canonical(from) != canonical(trs_addr) {
                continue;
            }
            match binder.handle_ack(&buf[..n]) {
                Ok(ack) if ack.status.is_success() => return Ok(ack),
                Ok(ack) => {
                    return Err(SignalingError::Status(StatusReport {
                        status: ack.status,
                        retry_after_secs: 0,
                        message: "relay bind refused".into(),
                    }));
                }
                Err(e) => tracing::trace!(error = %e, "ignored a datagram while binding"),
            }
        }
        if tokio::time::Instant::now() >= give_up {
            return Err(SignalingError::Timeout);
        }
    }
}

/// The address to send to from `socket`: an IPv6 socket reaches IPv4 through the
/// mapped form.
fn send_address(socket: &UdpSocket, peer: SocketAddr) -> std::io::Result<SocketAddr> {
    Ok(match (socket.local_addr()?, peer) {
        (SocketAddr::V6(_), SocketAddr::V4(v4)) => {
            SocketAddr::new(v4.ip().to_ipv6_mapped().into(), v4.port())
        }
        _ => peer,
    })
}

fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod resolve_tests {
    use super::*;

    #[test]
    fn unspecified_offers_take_the_nms_address_of_their_family() {
        let ep = |s: &str| -> SocketAddr { s.parse().unwrap() };
        let nms = [ep("198.51.100.7:7302"), ep("[2001:db8::7]:7302")];
        assert_eq!(
            resolve_relay_endpoint(ep("0.0.0.0:7303"), &nms),
            Some(ep("198.51.100.7:7303"))
        );
        assert_eq!(
            resolve_relay_endpoint(ep("[::]:7303"), &nms),
            Some(ep("[2001:db8::7]:7303"))
        );
        assert_eq!(
            resolve_relay_endpoint(ep("203.0.113.1:7303"), &nms),
            Some(ep("203.0.113.1:7303"))
        );
        assert_eq!(resolve_relay_endpoint(ep("[::]:7303"), &nms[..1]), None);
    }
}
