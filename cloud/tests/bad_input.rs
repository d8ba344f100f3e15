//! Bad input to every service port of the real binary (AS, NMS, TRS): truncated,
//! oversized, random, replayed, forged and unknown-version/type datagrams, interleaved
//! with a good client that logs in, registers, asks for a direction and relays in the
//! same test and must keep working. Afterwards the drops are counted per service, the
//! process is alive, and no attacker socket ever got an answer.

// The cloud is a Unix service: its process tests check Unix file modes and signals.
#![cfg(unix)]

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{
    Cloud, Device, RELAY_BIND_ACK, Settings, eventually, metric_sum, random_bytes, recv_within,
    relay_datagram, responder, step, tunnel_socket,
};
use cyphonic_host::signaling::{AuthClient, NmsClient, RelayBinder, relay_bind};
use cyphonic_proto::wire::Fqdn;
use cyphonic_proto::wire::channel::SIGNAL_HEADER_LEN;
use cyphonic_proto::wire::signal::PeerRoute;
use tokio::net::UdpSocket;
use zeroize::Zeroizing;

/// The largest UDP payload over IPv4.
const MAX_UDP: usize = 65_507;
const HELLO: u8 = 0x01;
const SIGNAL: u8 = 0x03;
const RELAY_BIND: u8 = 0x20;
const RELAY_DATA: u8 = 0x22;

/// A UDP proxy between one client and a service that records what the client sent.
/// Its back socket is the client's address as the service sees it, so replays sent
/// through [`Tap::inject`] come from the genuine source.
struct Tap {
    front: SocketAddr,
    back: Arc<UdpSocket>,
    captured: Arc<Mutex<Vec<Vec<u8>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Tap {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Tap {
    async fn new(service: SocketAddr) -> Self {
        let front = Arc::new(
            UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
                .await
                .expect("bind"),
        );
        let back = Arc::new(
            UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
                .await
                .expect("bind"),
        );
        back.connect(service).await.expect("connect");
        let captured = Arc::new(Mutex::new(Vec::new()));
        let front_addr = front.local_addr().expect("addr");
        let task = tokio::spawn({
            let (front, back, captured) = (front.clone(), back.clone(), captured.clone());
            async move {
                let mut client = None;
                let mut up = vec![0u8; 65_536];
                let mut down = vec![0u8; 65_536];
                loop {
                    tokio::select! {
                        r = front.recv_from(&mut up) => if let Ok((n, from)) = r {
                            client = Some(from);
                            captured.lock().expect("lock").push(up[..n].to_vec());
                            let _ = back.send(&up[..n]).await;
                        },
                        r = back.recv(&mut down) => if let (Ok(n), Some(to)) = (r, client) {
                            let _ = front.send_to(&down[..n], to).await;
                        },
                    }
                }
            }
        });
        Self {
            front: front_addr,
            back,
            captured,
            task,
        }
    }

    /// Captured client datagrams of message type `kind`.
    fn captured(&self, kind: u8) -> Vec<Vec<u8>> {
        self.captured
            .lock()
            .expect("lock")
            .iter()
            .filter(|d| d.get(1) == Some(&kind))
            .cloned()
            .collect()
    }

    /// Sends from the client's address as the service knows it.
    async fn inject(&self, datagram: &[u8]) {
        let _ = self.back.send(datagram).await;
    }
}

/// Every kind of bad datagram derived from `valid` (genuine datagrams this service
/// accepted) plus context-free junk.
fn bad_datagrams(valid: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let mut bad = Vec::new();
    // Truncated.
    for d in valid {
        for cut in [
            0,
            1,
            2,
            3,
            4,
            5,
            8,
            16,
            31,
            d.len() / 2,
            d.len().saturating_sub(17),
            d.len() - 1,
        ] {
            if cut < d.len() {
                bad.push(d[..cut].to_vec());
            }
        }
    }
    // Oversized: junk, and a genuine datagram padded to the largest UDP payload.
    bad.push(random_bytes(MAX_UDP));
    for d in valid.iter().take(2) {
        let mut padded = d.clone();
        padded.resize(MAX_UDP, 0);
        bad.push(padded);
    }
    // Random, of many lengths, with and without a plausible prefix.
    for len in [1, 2, 7, 33, 64, 100, 145, 200, 556, 1000, 1232, 1500, 9000] {
        bad.push(random_bytes(len));
        let mut prefixed = random_bytes(len.max(2));
        prefixed[0] = 1;
        bad.push(prefixed);
    }
    for kind in [
        HELLO, 0x02, SIGNAL, 0x10, 0x11, 0x12, 0x13, 0x14, 0x15, RELAY_BIND, 0x21, RELAY_DATA,
    ] {
        let mut d = random_bytes(150);
        d[0] = 1;
        d[1] = kind;
        bad.push(d);
    }
    // Forged: single flipped bits across every part of genuine datagrams.
    for d in valid {
        for at in [
            2,
            3,
            4,
            7,
            8,
            12,
            20,
            40,
            d.len() / 2,
            d.len() - 17,
            d.len() - 1,
        ] {
            if at < d.len() {
                let mut forged = d.clone();
                forged[at] ^= 0x01;
                bad.push(forged);
            }
        }
        // A genuine header with a garbage body.
        if d.get(1) == Some(&SIGNAL) && d.len() > SIGNAL_HEADER_LEN {
            let mut garbage = d[..SIGNAL_HEADER_LEN].to_vec();
            garbage.extend(random_bytes(d.len() - SIGNAL_HEADER_LEN));
            bad.push(garbage);
        }
    }
    // Unknown versions and types on otherwise genuine datagrams.
    for d in valid.iter().take(3) {
        for version in [0u8, 2, 0xff] {
            let mut v = d.clone();
            v[0] = version;
            bad.push(v);
        }
        for kind in [0x00u8, 0x04, 0x30, 0x7f, 0x99, 0xff] {
            let mut t = d.clone();
            t[1] = kind;
            bad.push(t);
        }
    }
    bad
}

/// Sends every datagram from `socket` to `target`, pacing a little so the kernel's
/// receive buffer (not the service) is never what drops them.
async fn flood(socket: &UdpSocket, target: SocketAddr, datagrams: &[Vec<u8>]) {
    for (i, d) in datagrams.iter().enumerate() {
        // An empty datagram is a valid UDP datagram too.
        let _ = socket.send_to(d, target).await;
        if i % 32 == 31 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

fn fqdn(device: &Device) -> Fqdn {
    Fqdn::new(&device.fqdn).expect("valid name")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_datagrams_to_every_port_are_dropped_while_a_good_client_works() {
    let a = Device::new(
        "alice-laptop",
        "laptop.alice.cyphonic",
        "correct horse alice",
    );
    let b = Device::new("bob-nas", "nas.bob.cyphonic", "correct horse bob");
    let mut cloud = Cloud::started(Settings::default(), &[&a, &b]);
    let pinned = cloud.key_show();
    let attacker = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .expect("bind");
    let addrs = cloud.addrs;

    // --- AS: a good login through a tap, then everything bad, then log in again.
    let as_tap = Tap::new(addrs.auth).await;
    let login = |via: SocketAddr| {
        let (a, pinned) = (a.clone(), pinned);
        async move {
            step(AuthClient::new(common::client_config()).login(
                via,
                &pinned,
                &a.key,
                &a.id,
                Zeroizing::new(a.password.as_bytes().to_vec()),
            ))
            .await
        }
    };
    let a_out = login(as_tap.front)
        .await
        .expect("A logs in through the tap");
    let b_out = b.login(&cloud, &pinned).await.expect("B logs in");
    let as_valid: Vec<Vec<u8>> = [as_tap.captured(HELLO), as_tap.captured(SIGNAL)].concat();
    assert!(as_valid.len() >= 2, "captured a hello and a login");
    let bad = bad_datagrams(&as_valid);
    flood(&attacker, addrs.auth, &bad).await;
    for d in &as_valid {
        as_tap.inject(d).await; // replays from the genuine source
        let _ = attacker.send_to(d, addrs.auth).await; // and from elsewhere
    }
    login(addrs.auth)
        .await
        .expect("login still works after the AS flood");

    // --- NMS: connect and register through a tap; flood; the client keeps working.
    let (a_sock, b_sock) = (tunnel_socket().await, tunnel_socket().await);
    let nms_tap = Tap::new(addrs.nms).await;
    let a_nms = step(NmsClient::connect_with(
        common::client_config(),
        nms_tap.front,
        &pinned,
        &a.key,
        a_out.credential.clone(),
    ))
    .await
    .expect("A connects to the NMS through the tap");
    step(a_nms.register(vec![a_sock.local_addr().expect("addr")]))
        .await
        .expect("A registers");
    let mut b_nms = b.connect_nms(&cloud, &pinned, &b_out).await;
    step(b_nms.register(vec![b_sock.local_addr().expect("addr")]))
        .await
        .expect("B registers");
    let b_events = b_nms.events().expect("events");
    let b_nms = Arc::new(b_nms);
    let mut pushes = responder(b_nms.clone(), b_events);
    step(a_nms.keepalive()).await.expect("keepalive");
    let nms_valid: Vec<Vec<u8>> = [nms_tap.captured(HELLO), nms_tap.captured(SIGNAL)].concat();
    assert!(
        nms_valid.len() >= 3,
        "captured a hello, a registration and a keepalive"
    );
    let mut bad = bad_datagrams(&nms_valid);
    bad.extend(as_valid.iter().cloned()); // AS datagrams at the NMS
    flood(&attacker, addrs.nms, &bad).await;
    for d in &nms_valid {
        nms_tap.inject(d).await;
        let _ = attacker.send_to(d, addrs.nms).await;
    }
    step(a_nms.keepalive())
        .await
        .expect("keepalive still works after the NMS flood");
    let (_, a_route) = step(a_nms.direction(fqdn(&b)))
        .await
        .expect("direction after the NMS flood");
    let (_, b_route) = step(pushes.recv()).await.expect("B got the push");

    // --- TRS: bind (capturing A's bind), relay, flood, relay again.
    let (trs, a_bind, a_data) =
        bind_and_relay(&a_route, &b_route, &a_out, &b_out, &a_sock, &b_sock).await;
    let mut trs_valid = vec![a_bind.clone(), a_data.clone()];
    trs_valid.extend(nms_valid.iter().take(1).cloned()); // an NMS hello at the TRS
    let mut bad = bad_datagrams(&trs_valid);
    // A bind with a genuine ticket and a wrong MAC, and one for a node not in it.
    let mut wrong_mac = a_bind.clone();
    let last = wrong_mac.len() - 1;
    wrong_mac[last] ^= 0x80;
    bad.push(wrong_mac);
    flood(&attacker, trs, &bad).await;
    // Replayed bind and data from elsewhere must not steal A's binding.
    let _ = attacker.send_to(&a_bind, trs).await;
    let _ = attacker.send_to(&a_data, trs).await;
    // A replayed bind from A's own address, and junk from a bound endpoint.
    let _ = a_sock.send_to(&a_bind, trs).await;
    flood(&a_sock, trs, &bad_datagrams(std::slice::from_ref(&a_bind))).await;
    let channel_id = a_route.relay.as_ref().expect("offer").ticket.channel_id();
    relay_ok(&a_sock, &b_sock, trs, channel_id).await;
    relay_ok(&b_sock, &a_sock, trs, channel_id).await;

    // --- Everything still works end to end.
    step(a_nms.keepalive()).await.expect("keepalive at the end");
    a.renew(&cloud, &pinned, &a_out)
        .await
        .expect("renewal at the end");
    login(addrs.auth).await.expect("login at the end");
    assert!(cloud.is_alive(), "the cloud process died");

    // Nothing was ever answered to the attacker.
    assert!(
        recv_within(&attacker, Duration::from_secs(1))
            .await
            .is_none(),
        "the cloud answered an attacker datagram"
    );

    // Every service counted its drops, replays included.
    let cloud_ref = &cloud;
    let text = eventually(Duration::from_secs(10), || async move {
        let text = cloud_ref.metrics();
        ["as", "nms", "trs"]
            .iter()
            .all(|s| {
                let name = format!("cyphonic_{s}_dropped_total");
                metric_sum(&text, &name, &[]) >= 20.0
                    && metric_sum(&text, &name, &["reason=\"replay\""]) >= 1.0
            })
            .then_some(text)
    })
    .await
    .unwrap_or_else(|| panic!("drops not counted:\n{}", cloud.metrics()));
    for service in ["as", "nms", "trs"] {
        let name = format!("cyphonic_{service}_dropped_total");
        let by_reason: Vec<String> = text
            .lines()
            .filter(|l| l.starts_with(&name) && !l.ends_with(" 0"))
            .map(|l| l.trim_start_matches(&name).to_owned())
            .collect();
        eprintln!("{service} drops: {}", by_reason.join(" "));
    }
    assert!(cloud.is_alive(), "the cloud process died");
    cloud.stop();
}

/// Binds A (by hand, to capture the bind) and B, relays one datagram A -> B, and
/// returns the TRS address, A's accepted bind and A's relayed datagram.
async fn bind_and_relay(
    a_route: &PeerRoute,
    b_route: &PeerRoute,
    a_out: &cyphonic_host::signaling::LoginOutcome,
    b_out: &cyphonic_host::signaling::LoginOutcome,
    a_sock: &UdpSocket,
    b_sock: &UdpSocket,
) -> (SocketAddr, Vec<u8>, Vec<u8>) {
    let a_offer = a_route.relay.as_ref().expect("A's relay offer");
    let b_offer = b_route.relay.as_ref().expect("B's relay offer");
    let trs = a_offer.trs_endpoints[0];
    let mut binder = RelayBinder::new(
        a_offer.ticket,
        &a_offer.bind_key,
        a_out.credential.credential().node_id,
    );
    let mut bind = [0u8; 256];
    let deadline = Instant::now() + common::STEP;
    let a_bind = 'bound: loop {
        assert!(Instant::now() < deadline, "A's bind was never acknowledged");
        let millis = u64::try_from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("clock after 1970")
                .as_millis(),
        )
        .expect("millis fit");
        let len = binder.bind(millis, &mut bind).expect("bind fits");
        a_sock.send_to(&bind[..len], trs).await.expect("send bind");
        while let Some((ack, _)) = recv_within(a_sock, Duration::from_millis(500)).await {
            if binder
                .handle_ack(&ack)
                .is_ok_and(|ack| ack.status.is_success())
            {
                break 'bound bind[..len].to_vec();
            }
        }
    };
    let ack = step(relay_bind(
        trs,
        &b_offer.ticket,
        &b_offer.bind_key,
        b_out.credential.credential().node_id,
        b_sock,
    ))
    .await
    .expect("B binds");
    assert!(ack.peer_bound);
    let a_data = relay_ok(a_sock, b_sock, trs, a_offer.ticket.channel_id()).await;
    (trs, a_bind, a_data)
}

/// Relays a fresh datagram from `from` to `to` and checks it arrives unchanged.
async fn relay_ok(
    from: &UdpSocket,
    to: &UdpSocket,
    trs: SocketAddr,
    channel_id: [u8; 8],
) -> Vec<u8> {
    let datagram = relay_datagram(channel_id, 300);
    from.send_to(&datagram, trs).await.expect("send relay data");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let (got, src) = recv_within(to, left).await.expect("relayed data arrives");
        if got.get(1) == Some(&RELAY_BIND_ACK) {
            continue;
        }
        assert_eq!(src, trs);
        assert_eq!(got, datagram, "relayed bytes differ");
        return datagram;
    }
}
