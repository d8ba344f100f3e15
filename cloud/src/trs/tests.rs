//! The TRS over real loopback sockets, driven like nodes drive it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use cyphonic_proto::relay::RelayKey;
use cyphonic_proto::wire::NodeId;
use cyphonic_proto::wire::relay::RelayBindAckRepr;
use cyphonic_proto::wire::status::StatusCode;
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::testkit::{A, B, C, Pair, context, data_bytes};
use super::{TrsError, run};
use crate::config::TrsSettings;
use crate::context::CloudContext;
use crate::net;

/// A TRS running on its own sockets.
struct Trs {
    ctx: Arc<CloudContext>,
    /// The addresses nodes send to, one per socket.
    addrs: Vec<SocketAddr>,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), TrsError>>,
}

impl Trs {
    async fn start(settings: TrsSettings, listen: &[&str]) -> Self {
        let ctx = context(settings);
        let mut sockets = Vec::new();
        let mut addrs = Vec::new();
        for addr in listen {
            let socket = net::bind_udp(addr.parse().unwrap()).unwrap();
            let mut local = socket.local_addr().unwrap();
            if local.ip().is_unspecified() {
                // A dual-stack wildcard: nodes reach it on loopback.
                local.set_ip("::1".parse().unwrap());
            }
            addrs.push(local);
            sockets.push(Arc::new(socket));
        }
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(run(ctx.clone(), sockets, shutdown.clone()));
        Self {
            ctx,
            addrs,
            shutdown,
            task,
        }
    }

    /// The address of socket `i`, as a node of `family` (4 or 6) reaches it.
    fn addr(&self, i: usize, family: u8) -> SocketAddr {
        let mut addr = self.addrs[i];
        if family == 4 && addr.is_ipv6() {
            addr.set_ip("127.0.0.1".parse().unwrap());
        }
        addr
    }

    fn dropped(&self, reason: &str) -> u64 {
        self.ctx
            .metrics
            .counter("cyphonic_trs_dropped_total", &[("reason", reason)], "")
            .value()
    }

    fn binds(&self, result: &str) -> u64 {
        self.ctx
            .metrics
            .counter("cyphonic_trs_binds_total", &[("result", result)], "")
            .value()
    }

    fn relayed_packets(&self) -> u64 {
        self.ctx
            .metrics
            .counter("cyphonic_trs_relayed_packets_total", &[], "")
            .value()
    }

    fn bindings(&self) -> i64 {
        self.ctx
            .metrics
            .gauge("cyphonic_trs_bindings", &[], "")
            .value()
    }

    async fn stop(self) {
        self.shutdown.cancel();
        let result = tokio::time::timeout(Duration::from_secs(5), self.task)
            .await
            .expect("the TRS stops on shutdown")
            .expect("the TRS task does not panic");
        assert!(result.is_ok(), "{result:?}");
    }
}

/// A node's socket, talking to one TRS address.
struct Node {
    socket: UdpSocket,
    trs: SocketAddr,
}

impl Node {
    async fn new(local: &str, trs: SocketAddr) -> Self {
        Self {
            socket: UdpSocket::bind(local).await.unwrap(),
            trs,
        }
    }

    fn addr(&self) -> SocketAddr {
        self.socket.local_addr().unwrap()
    }

    async fn send(&self, bytes: &[u8]) {
        self.socket.send_to(bytes, self.trs).await.unwrap();
    }

    async fn recv(&self) -> Vec<u8> {
        let mut buf = vec![0u8; 1 << 16];
        let (len, from) =
            tokio::time::timeout(Duration::from_secs(3), self.socket.recv_from(&mut buf))
                .await
                .expect("a datagram arrives")
                .unwrap();
        assert_eq!(
            from, self.trs,
            "datagrams come from the address the node sends to"
        );
        buf.truncate(len);
        buf
    }

    async fn silent(&self) {
        let mut buf = [0u8; 2048];
        if let Ok(received) =
            tokio::time::timeout(Duration::from_millis(250), self.socket.recv_from(&mut buf)).await
        {
            panic!("unexpected datagram: {received:?}");
        }
    }

    /// Binds `node` of `pair` and returns the (verified) ack.
    async fn bind(&self, pair: &Pair, node: NodeId, ts: u64) -> RelayBindAckRepr {
        self.send(&pair.bind(node, ts)).await;
        pair.ack(node, &self.recv().await)
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn in_an_hour() -> u64 {
    now_ms() / 1000 + 3600
}

async fn wait_for(what: &str, cond: impl Fn() -> bool) {
    for _ in 0..300 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

/// Binds A on `a` and B on `b`, checking every ack, including A's news that B is bound.
async fn bind_pair(pair: &Pair, a: &Node, b: &Node, ts: u64) {
    let ack = a.bind(pair, A, ts).await;
    assert_eq!(ack.status, StatusCode::SUCCESS);
    assert!(!ack.peer_bound);
    assert_eq!(ack.timestamp_millis, ts);
    assert_eq!(ack.observed, a.addr());
    let ack = b.bind(pair, B, ts).await;
    assert_eq!(ack.status, StatusCode::SUCCESS);
    assert!(ack.peer_bound);
    assert_eq!(ack.observed, b.addr());
    let news = pair.ack(A, &a.recv().await);
    assert_eq!(news.status, StatusCode::SUCCESS);
    assert!(news.peer_bound);
    assert_eq!(news.timestamp_millis, ts);
}

/// A sends to B and B to A; both get exactly the bytes sent.
async fn relay_both_ways(pair: &Pair, a: &Node, b: &Node, inner: &[u8]) {
    let data = data_bytes(pair.ticket.channel_id(), inner);
    a.send(&data).await;
    assert_eq!(b.recv().await, data);
    b.send(&data).await;
    assert_eq!(a.recv().await, data);
}

#[tokio::test]
async fn binds_and_relays_both_ways() {
    let trs = Trs::start(TrsSettings::default(), &["127.0.0.1:0"]).await;
    let pair = Pair::new([1; 16], in_an_hour());
    let a = Node::new("127.0.0.1:0", trs.addr(0, 4)).await;
    let b = Node::new("127.0.0.1:0", trs.addr(0, 4)).await;
    bind_pair(&pair, &a, &b, now_ms()).await;
    assert_eq!(trs.bindings(), 1);
    let mut inner = vec![0u8; 1400];
    ChaCha8Rng::seed_from_u64(1).fill_bytes(&mut inner);
    inner[..2].copy_from_slice(&[1, 0x13]);
    relay_both_ways(&pair, &a, &b, &inner).await;
    relay_both_ways(&pair, &a, &b, &[1, 0x14]).await;
    // A large datagram passes whole (the default burst is far above it).
    relay_both_ways(&pair, &a, &b, &vec![7u8; 60_000]).await;
    assert_eq!(trs.relayed_packets(), 6);
    let text = trs.ctx.metrics.render();
    assert!(
        text.contains("cyphonic_trs_binds_total{result=\"ok\"} 2"),
        "{text}"
    );
    assert!(
        text.contains("cyphonic_trs_relayed_bytes_total 122864"),
        "{text}"
    );
    assert!(text.contains("cyphonic_trs_bindings 1"), "{text}");
    a.silent().await;
    b.silent().await;
    trs.stop().await;
}

#[tokio::test]
async fn bridges_ipv4_and_ipv6_on_one_dual_stack_socket() {
    let trs = Trs::start(TrsSettings::default(), &["[::]:0"]).await;
    let pair = Pair::new([2; 16], in_an_hour());
    let a = Node::new("127.0.0.1:0", trs.addr(0, 4)).await;
    let b = Node::new("[::1]:0", trs.addr(0, 6)).await;
    // The IPv4 node is seen as IPv4 (not as an IPv4-mapped IPv6 address).
    bind_pair(&pair, &a, &b, now_ms()).await;
    relay_both_ways(&pair, &a, &b, b"\x01\x13 over both families").await;
    trs.stop().await;
}

#[tokio::test]
async fn bridges_separate_ipv4_and_ipv6_sockets() {
    let trs = Trs::start(TrsSettings::default(), &["127.0.0.1:0", "[::1]:0"]).await;
    let pair = Pair::new([3; 16], in_an_hour());
    let a = Node::new("127.0.0.1:0", trs.addr(0, 4)).await;
    let b = Node::new("[::1]:0", trs.addr(1, 6)).await;
    // `Node::recv` checks that each node hears from the socket it talks to.
    bind_pair(&pair, &a, &b, now_ms()).await;
    relay_both_ways(&pair, &a, &b, b"\x01\x13 v4 <-> v6").await;
    trs.stop().await;
}

#[tokio::test]
async fn forged_expired_and_replayed_binds_change_nothing() {
    let trs = Trs::start(TrsSettings::default(), &["127.0.0.1:0"]).await;
    let pair = Pair::new([4; 16], in_an_hour());
    let a = Node::new("127.0.0.1:0", trs.addr(0, 4)).await;
    let b = Node::new("127.0.0.1:0", trs.addr(0, 4)).await;
    let attacker = Node::new("127.0.0.1:0", trs.addr(0, 4)).await;
    let ts = now_ms();
    let bind_a = pair.bind(A, ts);
    a.send(&bind_a).await;
    pair.ack(A, &a.recv().await);
    b.bind(&pair, B, ts).await;
    a.recv().await; // peer bound

    // A ticket from another cloud's relay key.
    let foreign = Pair::minted(
        RelayKey::derive(b"not this cloud's secret"),
        [4; 16],
        A,
        B,
        in_an_hour(),
    );
    attacker.send(&foreign.bind(A, ts + 1)).await;
    // A bind MAC that does not verify.
    let mut bad_mac = pair.bind(A, ts + 2);
    *bad_mac.last_mut().unwrap() ^= 1;
    attacker.send(&bad_mac).await;
    // A node that is not in the ticket (with the bind key it would need).
    attacker.send(&pair.bind(C, ts + 3)).await;
    // The captured bind of A, replayed from the attacker's address.
    attacker.send(&bind_a).await;
    attacker.silent().await;
    assert_eq!(trs.dropped("forged"), 2);
    assert_eq!(trs.dropped("not_in_ticket"), 1);
    assert_eq!(trs.dropped("replay"), 1);
    assert_eq!(trs.binds("replay"), 1);

    // An expired ticket: the binder is authenticated, so it learns why.
    let expired = Pair::new([5; 16], now_ms() / 1000 - 1);
    let ack = attacker.bind(&expired, A, ts).await;
    assert_eq!(ack.status, StatusCode::EXPIRED);
    assert_eq!(trs.binds("expired"), 1);
    assert_eq!(trs.bindings(), 1);

    // The binding still joins A and B, and the attacker hears nothing.
    relay_both_ways(&pair, &a, &b, b"\x01\x13 still here").await;
    attacker
        .send(&data_bytes(pair.ticket.channel_id(), b"\x01\x13"))
        .await;
    attacker.silent().await;
    a.silent().await;
    b.silent().await;
    assert_eq!(trs.dropped("unbound"), 1);
    trs.stop().await;
}

#[tokio::test]
async fn newer_bind_from_a_new_address_moves_the_side() {
    let trs = Trs::start(TrsSettings::default(), &["[::]:0"]).await;
    let pair = Pair::new([6; 16], in_an_hour());
    let a = Node::new("127.0.0.1:0", trs.addr(0, 4)).await;
    let b = Node::new("127.0.0.1:0", trs.addr(0, 4)).await;
    let ts = now_ms();
    bind_pair(&pair, &a, &b, ts).await;

    // A changed networks (and family).
    let moved = Node::new("[::1]:0", trs.addr(0, 6)).await;
    let ack = moved.bind(&pair, A, ts + 1).await;
    assert_eq!(ack.status, StatusCode::SUCCESS);
    assert!(ack.peer_bound);
    assert_eq!(ack.observed, moved.addr());
    assert_eq!(trs.binds("moved"), 1);
    b.silent().await;
    relay_both_ways(&pair, &moved, &b, b"\x01\x13 after the move").await;
    // The old address no longer relays.
    a.send(&data_bytes(pair.ticket.channel_id(), b"\x01\x13"))
        .await;
    b.silent().await;
    assert_eq!(trs.dropped("unbound"), 1);
    trs.stop().await;
}

#[tokio::test]
async fn data_needs_a_bound_source_and_a_bound_peer() {
    let trs = Trs::start(TrsSettings::default(), &["127.0.0.1:0"]).await;
    let pair = Pair::new([7; 16], in_an_hour());
    let a = Node::new("127.0.0.1:0", trs.addr(0, 4)).await;
    let stranger = Node::new("127.0.0.1:0", trs.addr(0, 4)).await;
    let ack = a.bind(&pair, A, now_ms()).await;
    assert!(!ack.peer_bound);
    let data = data_bytes(pair.ticket.channel_id(), b"\x01\x13");
    a.send(&data).await;
    stranger.send(&data).await;
    wait_for("both drops", || {
        trs.dropped("peer_unbound") == 1 && trs.dropped("unbound") == 1
    })
    .await;
    a.silent().await;
    stranger.silent().await;
    assert_eq!(trs.relayed_packets(), 0);
    trs.stop().await;
}

#[tokio::test]
async fn rate_limit_drops_the_excess() {
    let settings = TrsSettings {
        rate_bytes_per_sec: 1_000,
        burst_bytes: 3_000,
        ..TrsSettings::default()
    };
    let trs = Trs::start(settings, &["127.0.0.1:0"]).await;
    let pair = Pair::new([8; 16], in_an_hour());
    let a = Node::new("127.0.0.1:0", trs.addr(0, 4)).await;
    let b = Node::new("127.0.0.1:0", trs.addr(0, 4)).await;
    bind_pair(&pair, &a, &b, now_ms()).await;
    let data = data_bytes(pair.ticket.channel_id(), &[1u8; 990]); // 1000 bytes
    for _ in 0..10 {
        a.send(&data).await;
    }
    wait_for("all ten handled", || {
        trs.relayed_packets() + trs.dropped("rate_limited") == 10
    })
    .await;
    let relayed = trs.relayed_packets();
    // The burst, plus what trickled in at 1 kB/s while the ten were sent.
    assert!((3..=4).contains(&relayed), "{relayed} relayed");
    for _ in 0..relayed {
        assert_eq!(b.recv().await, data);
    }
    b.silent().await;
    trs.stop().await;
}

#[tokio::test]
async fn idle_bindings_expire() {
    let settings = TrsSettings {
        idle_secs: 1,
        ..TrsSettings::default()
    };
    let trs = Trs::start(settings, &["127.0.0.1:0"]).await;
    let pair = Pair::new([9; 16], in_an_hour());
    let a = Node::new("127.0.0.1:0", trs.addr(0, 4)).await;
    let b = Node::new("127.0.0.1:0", trs.addr(0, 4)).await;
    let ts = now_ms();
    bind_pair(&pair, &a, &b, ts).await;
    relay_both_ways(&pair, &a, &b, b"\x01\x13").await;
    assert_eq!(trs.bindings(), 1);
    // Idle for more than 1 s, swept every 0.5 s: gone within 1.5 s, not before 1 s.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(trs.bindings(), 1);
    wait_for("the idle binding to go", || trs.bindings() == 0).await;
    a.send(&data_bytes(pair.ticket.channel_id(), b"\x01\x13"))
        .await;
    b.silent().await;
    assert_eq!(trs.dropped("unbound"), 1);
    // The node's next bind brings it back; A's old bind cannot.
    a.send(&pair.bind(A, ts)).await;
    a.silent().await;
    let ack = a.bind(&pair, A, ts + 2_000).await;
    assert_eq!(ack.status, StatusCode::SUCCESS);
    assert!(!ack.peer_bound);
    trs.stop().await;
}

#[tokio::test]
async fn revocation_removes_bindings_at_once() {
    let trs = Trs::start(TrsSettings::default(), &["127.0.0.1:0"]).await;
    let pair = Pair::new([10; 16], in_an_hour());
    let a = Node::new("127.0.0.1:0", trs.addr(0, 4)).await;
    let b = Node::new("127.0.0.1:0", trs.addr(0, 4)).await;
    let ts = now_ms();
    bind_pair(&pair, &a, &b, ts).await;
    trs.ctx.revoked.extend([A]);
    wait_for("the binding to go", || trs.bindings() == 0).await;
    b.send(&data_bytes(pair.ticket.channel_id(), b"\x01\x13"))
        .await;
    a.silent().await;
    // Both sides are now told REVOKED when they bind.
    let ack = b.bind(&pair, B, ts + 1).await;
    assert_eq!(ack.status, StatusCode::REVOKED);
    let ack = a.bind(&pair, A, ts + 1).await;
    assert_eq!(ack.status, StatusCode::REVOKED);
    assert_eq!(trs.bindings(), 0);
    assert_eq!(trs.binds("revoked"), 2);
    trs.stop().await;
}

#[tokio::test]
async fn garbage_is_counted_while_relaying_continues() {
    let trs = Trs::start(TrsSettings::default(), &["[::]:0"]).await;
    let pair = Pair::new([11; 16], in_an_hour());
    let a = Node::new("127.0.0.1:0", trs.addr(0, 4)).await;
    let b = Node::new("[::1]:0", trs.addr(0, 6)).await;
    let junk = Node::new("127.0.0.1:0", trs.addr(0, 4)).await;
    bind_pair(&pair, &a, &b, now_ms()).await;

    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let mut sent = 0u64;
    for i in 0..200 {
        let mut bytes = vec![0u8; (rng.next_u32() % 1500) as usize];
        rng.fill_bytes(&mut bytes);
        // Keep the random ones from accidentally being well-formed binds or data.
        if bytes.len() >= 2 {
            bytes[0] = 1 + (i % 2) as u8 * 7;
            if matches!(bytes[1], 0x20 | 0x22) {
                bytes[1] = 0x7f;
            }
        }
        junk.send(&bytes).await;
        sent += 1;
        if i % 50 == 0 {
            relay_both_ways(&pair, &a, &b, b"\x01\x13 meanwhile").await;
        }
    }
    let bind = pair.bind(A, now_ms() + 1);
    for len in [0, 1, 2, 10, 100, bind.len() - 1] {
        junk.send(&bind[..len]).await;
        sent += 1;
    }
    let data = data_bytes(pair.ticket.channel_id(), b"\x01\x13");
    junk.send(&data[..11]).await;
    sent += 1;
    let mut huge = vec![0u8; 65_000];
    rng.fill_bytes(&mut huge);
    huge[0] = 0xff;
    junk.send(&huge).await;
    huge[..2].copy_from_slice(&[1, 0x20]);
    junk.send(&huge).await;
    sent += 2;
    // Well-formed but from nowhere: an oversized RelayData on the right channel, an ack.
    huge[..10].copy_from_slice(&data[..10]);
    junk.send(&huge).await;
    junk.send(&[1, 0x21, 0, 0]).await;

    wait_for("every datagram counted", || {
        trs.dropped("malformed") + trs.dropped("unexpected_type") == sent + 1
            && trs.dropped("unbound") == 1
    })
    .await;
    relay_both_ways(&pair, &a, &b, b"\x01\x13 still relaying").await;
    junk.silent().await;
    a.silent().await;
    b.silent().await;
    assert_eq!(trs.bindings(), 1);
    trs.stop().await;
}

#[tokio::test]
async fn full_table_answers_unavailable() {
    let settings = TrsSettings {
        max_bindings: 1,
        ..TrsSettings::default()
    };
    let trs = Trs::start(settings, &["127.0.0.1:0"]).await;
    let first = Pair::new([12; 16], in_an_hour());
    let second = Pair::new([13; 16], in_an_hour());
    let a = Node::new("127.0.0.1:0", trs.addr(0, 4)).await;
    assert_eq!(
        a.bind(&first, A, now_ms()).await.status,
        StatusCode::SUCCESS
    );
    let ack = a.bind(&second, A, now_ms()).await;
    assert_eq!(ack.status, StatusCode::UNAVAILABLE);
    assert_eq!(trs.bindings(), 1);
    assert_eq!(trs.binds("full"), 1);
    trs.stop().await;
}

#[tokio::test]
async fn needs_a_socket() {
    let ctx = context(TrsSettings::default());
    let result = run(ctx, Vec::new(), CancellationToken::new()).await;
    assert!(matches!(result, Err(TrsError::NoSockets)), "{result:?}");
}

/// Not a test: relay throughput for 1400-byte datagrams over loopback, one ticket, one
/// direction. `cargo test --release -p cyphonic-cloud --lib trs::tests::throughput --
/// --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a test"]
async fn throughput() {
    let settings = TrsSettings {
        rate_bytes_per_sec: 1 << 40,
        burst_bytes: 1 << 30,
        ..TrsSettings::default()
    };
    let trs = Trs::start(settings, &["127.0.0.1:0"]).await;
    let pair = Pair::new([14; 16], in_an_hour());
    let a = Node::new("127.0.0.1:0", trs.addr(0, 4)).await;
    let b = Node::new("127.0.0.1:0", trs.addr(0, 4)).await;
    bind_pair(&pair, &a, &b, now_ms()).await;
    let data = data_bytes(pair.ticket.channel_id(), &[0x13; 1390]); // 1400 bytes
    let receiver = tokio::spawn(async move {
        let mut buf = vec![0u8; 2048];
        let mut count = 0u64;
        while let Ok(Ok(_)) =
            tokio::time::timeout(Duration::from_millis(300), b.socket.recv_from(&mut buf)).await
        {
            count += 1;
        }
        count
    });
    const SENT: u64 = 300_000;
    let start = std::time::Instant::now();
    for i in 0..SENT {
        a.send(&data).await;
        if i % 64 == 0 {
            tokio::task::yield_now().await;
        }
    }
    // The TRS is done when its counter stops moving.
    let (mut relayed, mut done) = (trs.relayed_packets(), std::time::Instant::now());
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = trs.relayed_packets();
        if now == relayed {
            break;
        }
        (relayed, done) = (now, std::time::Instant::now());
    }
    let secs = (done - start).as_secs_f64();
    let received = receiver.await.unwrap();
    eprintln!(
        "sent {SENT} in {:.2} s; the TRS relayed {relayed} in {secs:.2} s: {:.0} datagrams/s, \
         {:.0} Mbit/s of 1400-byte datagrams; {received} reached the receiver",
        start.elapsed().as_secs_f64(),
        relayed as f64 / secs,
        relayed as f64 * 1400.0 * 8.0 / secs / 1e6
    );
    trs.stop().await;
}
