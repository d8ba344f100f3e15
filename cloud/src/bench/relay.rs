//! TRS throughput: two simulated endpoints bind one ticket (minted here with the
//! cloud's relay key, as the NMS would), then one sends `RelayData` datagrams of
//! [`DATAGRAM_LEN`] bytes for a while and the other counts what arrives.

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, bail};
use cyphonic_proto::relay::{RelayKey, bind_key, mint_ticket};
use cyphonic_proto::time::UnixTime;
use cyphonic_proto::wire::relay::{
    RELAY_DATA_HEADER_LEN, RelayBindAckPacket, RelayBindAckRepr, RelayBindRepr, RelayChannelId,
    RelayDataPacket, RelayDataRepr, RelayTicket,
};
use cyphonic_proto::wire::status::StatusCode;
use cyphonic_proto::wire::{MessageType, NodeId, VERSION, classify};
use rand_core::{OsRng, RngCore as _};
use socket2::{Domain, Protocol, Socket, Type};

/// UDP payload of every relayed datagram (RelayData header included).
pub const DATAGRAM_LEN: usize = 1400;
/// Socket buffers of the two endpoints.
const SOCKET_BUFFER: usize = 4 << 20;
/// How long the receiver waits for stragglers after the sender stopped.
const DRAIN: Duration = Duration::from_millis(300);

/// What the relay test measured.
#[derive(Debug, Clone, Default)]
pub struct RelayReport {
    pub sent: u64,
    pub received: u64,
    /// From the first send to the last send.
    pub send_seconds: f64,
    /// From the first send to the last datagram received.
    pub receive_seconds: f64,
}

impl RelayReport {
    pub fn sent_mbit_per_sec(&self) -> f64 {
        mbit(self.sent, self.send_seconds)
    }

    /// UDP payload delivered to the receiving endpoint, in Mbit/s.
    pub fn delivered_mbit_per_sec(&self) -> f64 {
        mbit(self.received, self.receive_seconds)
    }

    pub fn loss_percent(&self) -> f64 {
        if self.sent == 0 {
            0.0
        } else {
            100.0 * self.sent.saturating_sub(self.received) as f64 / self.sent as f64
        }
    }
}

fn mbit(datagrams: u64, seconds: f64) -> f64 {
    if seconds <= 0.0 {
        0.0
    } else {
        datagrams as f64 * DATAGRAM_LEN as f64 * 8.0 / seconds / 1e6
    }
}

/// Binds a fresh ticket from two endpoints at `trs`, then relays for `duration`
/// (paced at `mbit` Mbit/s of UDP payload, or as fast as possible when 0).
pub(super) fn run(
    trs: SocketAddr,
    key: &RelayKey,
    duration: Duration,
    mbit: u64,
) -> anyhow::Result<RelayReport> {
    let (a, b) = (NodeId::random(&mut OsRng), NodeId::random(&mut OsRng));
    let mut ticket_id = [0u8; 16];
    OsRng.fill_bytes(&mut ticket_id);
    let unix = UnixTime::from_system_time(SystemTime::now());
    let ticket = mint_ticket(
        key,
        ticket_id,
        a,
        b,
        unix.saturating_add(Duration::from_secs(3600)),
    );
    let sender = endpoint(trs)?;
    let receiver = endpoint(trs)?;
    bind(&sender, trs, key, &ticket, a).context("binding the sending endpoint")?;
    let ack = bind(&receiver, trs, key, &ticket, b).context("binding the receiving endpoint")?;
    if !ack.peer_bound {
        bail!("the TRS bound both endpoints but says the peer is not bound");
    }

    let channel = ticket.channel_id();
    let stop = AtomicBool::new(false);
    let report = std::thread::scope(|scope| {
        let rx = scope.spawn(|| receive(&receiver, channel, &stop));
        let start = Instant::now();
        let sent = send(&sender, trs, channel, duration, mbit);
        let send_seconds = start.elapsed().as_secs_f64();
        stop.store(true, Ordering::Relaxed);
        let received = rx
            .join()
            .map_err(|_| anyhow::anyhow!("the receiver panicked"))?;
        let (received, last) = received?;
        anyhow::Ok(RelayReport {
            sent: sent?,
            received,
            send_seconds,
            receive_seconds: last.map_or(0.0, |t| t.duration_since(start).as_secs_f64()),
        })
    })?;
    Ok(report)
}

/// A blocking loopback socket with large buffers.
fn endpoint(trs: SocketAddr) -> anyhow::Result<UdpSocket> {
    let domain = if trs.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let socket = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER);
    socket.bind(&SocketAddr::new(trs.ip(), 0).into())?;
    Ok(socket.into())
}

/// Sends a bind for `binder` until an authentic SUCCESS ack arrives (a few tries).
fn bind(
    socket: &UdpSocket,
    trs: SocketAddr,
    key: &RelayKey,
    ticket: &RelayTicket,
    binder: NodeId,
) -> anyhow::Result<RelayBindAckRepr> {
    let bind_key = bind_key(key, ticket, &binder);
    socket.set_read_timeout(Some(Duration::from_millis(500)))?;
    let mut buf = [0u8; 256];
    for _ in 0..5 {
        let timestamp_millis = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let mut bind = RelayBindRepr {
            ticket: *ticket,
            binder,
            timestamp_millis,
            mac: [0; 16],
        };
        bind.seal(&bind_key);
        let len = bind.emit(&mut buf)?;
        socket.send_to(&buf[..len], trs)?;
        let deadline = Instant::now() + Duration::from_millis(500);
        while Instant::now() < deadline {
            let Ok((len, _)) = socket.recv_from(&mut buf) else {
                break;
            };
            let Ok(ack) = RelayBindAckPacket::new_checked(&buf[..len])
                .and_then(|p| RelayBindAckRepr::parse(&p))
            else {
                continue;
            };
            if ack.ticket_id != ticket.ticket_id
                || ack.timestamp_millis != timestamp_millis
                || ack.verify(&bind_key).is_err()
            {
                continue;
            }
            if ack.status != StatusCode::SUCCESS {
                bail!("the TRS refused the bind: status {}", ack.status.0);
            }
            return Ok(ack);
        }
    }
    bail!("no bind ack from the TRS at {trs}")
}

fn send(
    socket: &UdpSocket,
    trs: SocketAddr,
    channel: RelayChannelId,
    duration: Duration,
    mbit: u64,
) -> anyhow::Result<u64> {
    let mut datagram = [0u8; DATAGRAM_LEN];
    RelayDataRepr::emit_header(&channel, &mut datagram)?;
    // A stand-in for a sealed node-to-node datagram: the TRS never looks inside.
    datagram[RELAY_DATA_HEADER_LEN] = VERSION;
    datagram[RELAY_DATA_HEADER_LEN + 1] = MessageType::Capsule as u8;
    let start = Instant::now();
    let bits_per_datagram = (DATAGRAM_LEN * 8) as f64;
    let mut sent = 0u64;
    while start.elapsed() < duration {
        for _ in 0..32 {
            // A full buffer or a transient error is a lost datagram, like on a network.
            if socket.send_to(&datagram, trs).is_ok() {
                sent += 1;
            }
        }
        if mbit > 0 {
            let due =
                Duration::from_secs_f64(sent as f64 * bits_per_datagram / (mbit as f64 * 1e6));
            if let Some(ahead) = due.checked_sub(start.elapsed()) {
                std::thread::sleep(ahead);
            }
        }
    }
    Ok(sent)
}

/// Counts relayed datagrams of `channel` until `stop` and a short quiet period.
fn receive(
    socket: &UdpSocket,
    channel: RelayChannelId,
    stop: &AtomicBool,
) -> anyhow::Result<(u64, Option<Instant>)> {
    socket.set_read_timeout(Some(Duration::from_millis(50)))?;
    let mut buf = [0u8; 2048];
    let mut received = 0u64;
    let mut last = None;
    let mut quiet_since: Option<Instant> = None;
    loop {
        match socket.recv_from(&mut buf) {
            Ok((len, _)) => {
                let ours = matches!(classify(&buf[..len]), Ok(MessageType::RelayData))
                    && len == DATAGRAM_LEN
                    && RelayDataPacket::new_checked(&buf[..len])
                        .is_ok_and(|p| p.channel_id() == channel);
                if ours {
                    received += 1;
                    last = Some(Instant::now());
                }
                quiet_since = None;
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                if stop.load(Ordering::Relaxed) {
                    let since = *quiet_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= DRAIN {
                        return Ok((received, last));
                    }
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
}
