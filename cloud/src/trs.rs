//! The Tunnel Relay Service (TRS): a UDP relay between two nodes that cannot reach each
//! other directly, bridging IPv4 and IPv6.
//!
//! The TRS is stateless with respect to the rest of the cloud: it needs only the relay
//! key (`ctx.keys.relay`) to check tickets and binds, and `ctx.revoked` to refuse removed
//! devices. A node proves with a `RelayBind` that it is one side of a ticket; once both
//! sides are bound, `RelayData` datagrams from one bound endpoint are forwarded
//! unchanged to the other (the TRS cannot read them: they carry sealed node-to-node
//! datagrams). See docs/protocol.md, section "Relay".
//!
//! Decisions:
//! - **Replayed binds**: a bind must carry a timestamp strictly above the last one
//!   accepted for (ticket, node); anything else is dropped unanswered and counted
//!   (`reason="replay"`), from whatever source. A newer bind from another address moves
//!   that node's side there (that is how a node that changed networks rebinds). Bindings
//!   removed for idleness leave their timestamps behind until those leave the ±120 s bind
//!   window, so a captured bind cannot recreate a binding at an attacker's address.
//! - **Refusals a node can use are answered** with an ack MAC'd with its bind key:
//!   `EXPIRED` (ticket expired, timestamp out of window, as `RelayError::ack_status`
//!   says), `REVOKED` (the binder or its peer was removed), `CONFLICT` (the endpoint
//!   already sends for another ticket with the same channel id), `UNAVAILABLE` (table
//!   full). Binds that fail authentication are never answered.
//! - **A full table refuses new tickets** (`max_bindings`, ack `UNAVAILABLE`) rather
//!   than evicting the most idle binding: refusing is O(1), cannot be used to push
//!   other nodes' live bindings out, and bound nodes keep working; idle bindings leave
//!   on their own after `idle_secs`.
//! - **The peer learns when the relay is ready**: when the second side binds, the first
//!   gets an unsolicited SUCCESS ack with `peer_bound = 1`, echoing the timestamp of
//!   its own latest bind (so its replay check accepts it).
//! - **Replies leave from the socket the node talks to**: each side remembers the
//!   socket its bind arrived on, and acks and relayed data for it are sent from there
//!   (a NAT in front of the node only admits datagrams from the address the node sent
//!   to). With one dual-stack `[::]` socket that is the only socket; with separate IPv4
//!   and IPv6 sockets each node gets its own family, which is the bridging.
//! - **Rate limit**: one token bucket per ticket (`rate_bytes_per_sec`, capacity
//!   `burst_bytes`, starts full) charged with the UDP payload size of every relayed
//!   datagram in either direction.
//! - **Hot path**: one receive buffer, one hash lookup by (channel id, source), the
//!   received bytes sent as they are; no allocation per datagram.
//!
//! Metrics: `cyphonic_trs_binds_total{result}`, `cyphonic_trs_relayed_packets_total`,
//! `cyphonic_trs_relayed_bytes_total`, `cyphonic_trs_dropped_total{reason}`,
//! `cyphonic_trs_bindings`.

mod table;
#[cfg(test)]
mod testkit;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use cyphonic_proto::time::UnixTime;
use tokio::io::ReadBuf;
use tokio::net::UdpSocket;
use tokio::sync::broadcast::error::RecvError;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use crate::context::CloudContext;
use crate::net;
use table::{Action, DropReason, RelayTable, TrsMetrics};

/// Why the TRS could not start. Once running it only stops on `shutdown`: a bad
/// datagram or a failed send is counted, never fatal.
#[derive(Debug, thiserror::Error)]
pub enum TrsError {
    #[error("the TRS was given no socket to serve on")]
    NoSockets,
    #[error("TRS socket has no local address")]
    LocalAddr(#[source] io::Error),
}

/// Serves the relay on `sockets` until `shutdown` is cancelled.
pub async fn run(
    ctx: Arc<CloudContext>,
    sockets: Vec<Arc<UdpSocket>>,
    shutdown: CancellationToken,
) -> Result<(), TrsError> {
    if sockets.is_empty() {
        return Err(TrsError::NoSockets);
    }
    let locals = sockets
        .iter()
        .map(|s| s.local_addr())
        .collect::<Result<Vec<_>, _>>()
        .map_err(TrsError::LocalAddr)?;
    let settings = &ctx.config.services.trs;
    tracing::info!(
        listen = ?locals,
        rate_bytes_per_sec = settings.rate_bytes_per_sec,
        idle_secs = settings.idle_secs,
        max_bindings = settings.max_bindings,
        "TRS serving"
    );
    let metrics = TrsMetrics::register(&ctx.metrics);
    let mut service = Service {
        table: RelayTable::new(ctx.keys.relay.clone(), settings, metrics.clone()),
        metrics,
        ctx: ctx.clone(),
        sockets,
        locals,
    };
    let mut revocations = ctx.revoked.subscribe();
    let mut revocations_open = true;
    let mut sweep = tokio::time::interval(SWEEP_INTERVAL);
    sweep.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut buf = vec![0u8; RECV_BUFFER_LEN].into_boxed_slice();
    let mut next_socket = 0;

    loop {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            event = revocations.recv(), if revocations_open => match event {
                Ok(node) => service.table.revoke(&node, wall_now()),
                // Missed some: check every binding against the authoritative set.
                Err(RecvError::Lagged(_)) => service.table.revoke_all(&ctx.revoked, wall_now()),
                Err(RecvError::Closed) => revocations_open = false,
            },
            _ = sweep.tick() => service.table.sweep(Instant::now(), wall_now()),
            (socket, received) = recv_any(&service.sockets, &mut buf, &mut next_socket) => {
                service.serve_batch(socket, received, &mut buf).await;
            }
        }
    }
    tracing::info!(bindings = service.table.len(), "TRS stopped");
    Ok(())
}

/// Larger than any UDP payload, so the kernel never truncates a datagram into
/// something that parses.
const RECV_BUFFER_LEN: usize = 1 << 16;

/// How often idle and expired bindings are looked for; bounds how long past
/// `idle_secs` or the ticket's `not after` a binding may live.
const SWEEP_INTERVAL: Duration = Duration::from_millis(500);

/// Datagrams read from one socket without going back through `select!` (which also
/// watches shutdown, revocations and the sweep timer).
const BATCH: usize = 64;

/// The relay table and the sockets it answers on.
struct Service {
    table: RelayTable,
    metrics: TrsMetrics,
    ctx: Arc<CloudContext>,
    sockets: Vec<Arc<UdpSocket>>,
    locals: Vec<SocketAddr>,
}

impl Service {
    /// Serves the datagram `recv_any` produced on `socket`, then whatever else that
    /// socket has queued, up to [`BATCH`].
    async fn serve_batch(
        &mut self,
        socket: usize,
        mut received: io::Result<(usize, SocketAddr)>,
        buf: &mut [u8],
    ) {
        for _ in 0..BATCH {
            match received {
                Ok((len, src)) => self.serve(socket, src, &buf[..len]).await,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return,
                Err(error) => {
                    tracing::debug!(%error, socket = %self.locals[socket], "TRS receive failed");
                    self.metrics.dropped(DropReason::RecvError);
                    return;
                }
            }
            received = self.sockets[socket].try_recv_from(buf);
        }
    }

    async fn serve(&mut self, socket: usize, src: SocketAddr, datagram: &[u8]) {
        let action = self.table.handle(
            socket,
            net::canonical(src),
            datagram,
            Instant::now(),
            wall_now(),
            &self.ctx.revoked,
        );
        match action {
            Action::Drop => {}
            Action::Forward { socket, to } => self.send(socket, datagram, to).await,
            Action::Reply(replies) => {
                for reply in replies.iter() {
                    self.send(reply.socket, reply.bytes(), reply.to).await;
                }
            }
        }
    }

    /// Sends `bytes` to `to` from socket `socket` (the one `to` talks to), or from the
    /// first socket able to reach it if that one cannot.
    async fn send(&self, socket: usize, bytes: &[u8], to: SocketAddr) {
        let locals = &self.locals;
        let chosen = if locals.get(socket).is_some_and(|l| net::can_reach(*l, to)) {
            Some(socket)
        } else {
            locals.iter().position(|l| net::can_reach(*l, to))
        };
        let Some(i) = chosen else {
            self.metrics.dropped(DropReason::SendFailed);
            return;
        };
        if let Err(error) = self.sockets[i]
            .send_to(bytes, net::for_socket(to, locals[i]))
            .await
        {
            tracing::trace!(%error, %to, "TRS send failed");
            self.metrics.dropped(DropReason::SendFailed);
        }
    }
}

/// Waits for a datagram on any socket; returns the socket's index with it. Starts with
/// the socket after the last one served so that a busy socket cannot starve the others.
fn recv_any<'a>(
    sockets: &'a [Arc<UdpSocket>],
    buf: &'a mut [u8],
    next: &'a mut usize,
) -> impl Future<Output = (usize, io::Result<(usize, SocketAddr)>)> + 'a {
    std::future::poll_fn(move |cx: &mut Context<'_>| {
        let count = sockets.len();
        for k in 0..count {
            let i = (*next + k) % count;
            let mut read = ReadBuf::new(buf);
            if let Poll::Ready(result) = sockets[i].poll_recv_from(cx, &mut read) {
                *next = (i + 1) % count;
                return Poll::Ready((i, result.map(|src| (read.filled().len(), src))));
            }
        }
        Poll::Pending
    })
}

fn wall_now() -> UnixTime {
    UnixTime::from_system_time(SystemTime::now())
}

#[cfg(test)]
mod tests;
