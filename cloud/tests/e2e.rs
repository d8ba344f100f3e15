//! End-to-end tests with the real `cyphonic-cloud` binary on loopback, the node side
//! played by `cyphonic_host::signaling`.

// The cloud is a Unix service: its process tests check Unix file modes and signals.
#![cfg(unix)]

mod common;

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{
    Cloud, Device, RELAY_BIND_ACK, Settings, eventually, has_metric, has_mode, metric_sum,
    recv_within, relay_datagram, responder, step, tunnel_socket, unix_now,
};
use cyphonic_host::signaling::{LoginOutcome, NmsClient, NmsEvent, relay_bind};
use cyphonic_proto::wire::signal::PeerRoute;
use cyphonic_proto::wire::status::StatusCode;
use cyphonic_proto::wire::{Fqdn, NodeId};
use ed25519_dalek::VerifyingKey;
use ipnet::Ipv4Net;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

fn alice() -> Device {
    Device::new(
        "alice-laptop",
        "laptop.alice.cyphonic",
        "correct horse alice",
    )
}

fn bob() -> Device {
    Device::new("bob-nas", "nas.bob.cyphonic", "correct horse bob")
}

fn node_id(outcome: &LoginOutcome) -> NodeId {
    outcome.credential.credential().node_id
}

fn fqdn(device: &Device) -> Fqdn {
    Fqdn::new(&device.fqdn).expect("test names are valid")
}

/// Two logged-in, registered nodes with a confirmed direction and relay offers.
struct Pair {
    cloud: Cloud,
    pinned: VerifyingKey,
    a: Device,
    b: Device,
    a_out: LoginOutcome,
    b_out: LoginOutcome,
    a_nms: NmsClient,
    b_nms: Arc<NmsClient>,
    /// Kept so the responder keeps confirming.
    _pushes: mpsc::UnboundedReceiver<([u8; 16], Box<PeerRoute>)>,
    a_sock: UdpSocket,
    b_sock: UdpSocket,
    /// What A got (RouteDirectionToInitiator) and what B got (the push).
    a_route: PeerRoute,
    b_route: PeerRoute,
}

impl Pair {
    async fn set_up(settings: Settings) -> Self {
        let (a, b) = (alice(), bob());
        let cloud = Cloud::started(settings, &[&a, &b]);
        let pinned = cloud.key_show();
        let a_out = a.login(&cloud, &pinned).await.expect("A logs in");
        let b_out = b.login(&cloud, &pinned).await.expect("B logs in");
        let (a_sock, b_sock) = (tunnel_socket().await, tunnel_socket().await);
        let a_nms = a.connect_nms(&cloud, &pinned, &a_out).await;
        let mut b_nms = b.connect_nms(&cloud, &pinned, &b_out).await;
        let a_reg = step(a_nms.register(vec![a_sock.local_addr().expect("addr")]))
            .await
            .expect("A registers");
        assert_eq!(
            a_reg.observed,
            Some(a_nms.local_addr()),
            "A's observed address"
        );
        assert!(a_reg.keepalive_secs > 0 && a_reg.presence_ttl_secs > a_reg.keepalive_secs);
        step(b_nms.register(vec![b_sock.local_addr().expect("addr")]))
            .await
            .expect("B registers");
        let events = b_nms.events().expect("first call");
        let b_nms = Arc::new(b_nms);
        let mut pushes = responder(Arc::clone(&b_nms), events);

        let (direction_id, a_route) = step(a_nms.direction(fqdn(&b)))
            .await
            .expect("A's direction request for B");
        let (pushed_id, b_route) = step(pushes.recv()).await.expect("B got the push");
        assert_eq!(direction_id, pushed_id, "both ends name the same direction");
        Self {
            cloud,
            pinned,
            a,
            b,
            a_out,
            b_out,
            a_nms,
            b_nms,
            _pushes: pushes,
            a_sock,
            b_sock,
            a_route,
            b_route: *b_route,
        }
    }

    /// Binds both tunnel sockets at the TRS with their bind keys.
    async fn bind_both(&self) {
        let a_offer = self.a_route.relay.as_ref().expect("A has a relay offer");
        let b_offer = self.b_route.relay.as_ref().expect("B has a relay offer");
        let a_ack = step(relay_bind(
            a_offer.trs_endpoints[0],
            &a_offer.ticket,
            &a_offer.bind_key,
            node_id(&self.a_out),
            &self.a_sock,
        ))
        .await
        .expect("A binds at the TRS");
        assert_eq!(a_ack.observed, self.a_sock.local_addr().expect("addr"));
        let b_ack = step(relay_bind(
            b_offer.trs_endpoints[0],
            &b_offer.ticket,
            &b_offer.bind_key,
            node_id(&self.b_out),
            &self.b_sock,
        ))
        .await
        .expect("B binds at the TRS");
        assert!(
            b_ack.peer_bound,
            "A was bound first, so B's ack says the peer is bound"
        );
    }

    fn trs(&self) -> std::net::SocketAddr {
        self.a_route
            .relay
            .as_ref()
            .expect("relay offer")
            .trs_endpoints[0]
    }

    fn channel_id(&self) -> [u8; 8] {
        self.a_route
            .relay
            .as_ref()
            .expect("relay offer")
            .ticket
            .channel_id()
    }

    /// Sends from `from` through the TRS; returns what `to` received within `within`.
    async fn relay(
        &self,
        from: &UdpSocket,
        to: &UdpSocket,
        len: usize,
        within: Duration,
    ) -> Option<(Vec<u8>, Vec<u8>)> {
        let datagram = relay_datagram(self.channel_id(), len);
        from.send_to(&datagram, self.trs())
            .await
            .expect("send to the TRS");
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let (got, src) = recv_within(to, left).await?;
            // The TRS also tells an earlier binder (with a RelayBindAck) when its peer
            // binds; only relayed data matters here.
            if got.get(1) == Some(&RELAY_BIND_ACK) {
                continue;
            }
            assert_eq!(src, self.trs(), "relayed data comes from the TRS");
            return Some((datagram, got));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_flow_login_register_direction_and_relay() {
    let p = Pair::set_up(Settings::default()).await;
    let now = unix_now();

    // Logins: credentials verify with the pinned key, addresses come from the pools.
    let cgnat: Ipv4Net = "100.64.0.0/10".parse().expect("literal prefix");
    let mut statements = Vec::new();
    for (device, outcome) in [(&p.a, &p.a_out), (&p.b, &p.b_out)] {
        let c = outcome
            .credential
            .verify_for_key(&[p.pinned], now, &device.public())
            .expect("the credential verifies with the pinned key");
        assert_eq!(c.fqdn.as_str(), device.fqdn);
        assert!(cgnat.contains(&c.vip4), "{} not in 100.64.0.0/10", c.vip4);
        assert_eq!(
            c.vip6.segments()[0] & 0xff00,
            0xfd00,
            "{} not a ULA",
            c.vip6
        );
        assert_eq!(outcome.domain.as_str(), "cyphonic");
        assert!(outcome.renew_after > Duration::ZERO);
        assert!(c.not_after.0 + 5 > now.0 + outcome.renew_after.as_secs());
        statements.push(c.clone());
    }
    let (ca, cb) = (&statements[0], &statements[1]);
    assert_ne!(ca.node_id, cb.node_id);
    assert_ne!(ca.vip4, cb.vip4);
    assert_ne!(ca.vip6, cb.vip6);
    assert_eq!(
        ca.vip6.segments()[..3],
        cb.vip6.segments()[..3],
        "one ULA /48"
    );

    // A's route to B: B's credential, endpoints, a plan and a relay offer.
    let r = &p.a_route;
    r.credential
        .verify_for_key(&[p.pinned], now, &p.b.public())
        .expect("B's credential as A received it");
    assert_eq!(r.credential.credential().node_id, cb.node_id);
    assert!(
        r.real.contains(&p.b_sock.local_addr().expect("addr")),
        "{:?}",
        r.real
    );
    assert!(
        r.observed.contains(&p.b_nms.local_addr()),
        "{:?}",
        r.observed
    );
    let a_offer = r.relay.as_ref().expect("A's relay offer");
    assert_eq!(a_offer.trs_endpoints, vec![p.cloud.addrs.trs]);
    // B's push: the same for A.
    let s = &p.b_route;
    s.credential
        .verify_for_key(&[p.pinned], now, &p.a.public())
        .expect("A's credential as B received it");
    assert!(
        s.real.contains(&p.a_sock.local_addr().expect("addr")),
        "{:?}",
        s.real
    );
    assert!(
        s.observed.contains(&p.a_nms.local_addr()),
        "{:?}",
        s.observed
    );
    assert_eq!(r.plan, s.plan, "both ends follow one plan");
    assert_eq!(
        *r.punch_key, *s.punch_key,
        "both ends share the direction's punch key"
    );
    let b_offer = s.relay.as_ref().expect("B's relay offer");
    assert_eq!(a_offer.ticket, b_offer.ticket, "one ticket for the pair");
    let mut ticket_nodes = [a_offer.ticket.node_a, a_offer.ticket.node_b];
    ticket_nodes.sort();
    let mut pair = [ca.node_id, cb.node_id];
    pair.sort();
    assert_eq!(ticket_nodes, pair);
    assert_ne!(
        *a_offer.bind_key, *b_offer.bind_key,
        "bind keys are per node"
    );

    // Relay: bind both, then data both ways, byte for byte.
    p.bind_both().await;
    for len in [64, 1400] {
        let (sent, got) = p
            .relay(&p.a_sock, &p.b_sock, len, Duration::from_secs(10))
            .await
            .expect("B receives A's relayed datagram");
        assert_eq!(sent, got);
        let (sent, got) = p
            .relay(&p.b_sock, &p.a_sock, len, Duration::from_secs(10))
            .await
            .expect("A receives B's relayed datagram");
        assert_eq!(sent, got);
    }

    // Keepalive and address update keep working on the same channel.
    let ack = step(p.a_nms.keepalive()).await.expect("keepalive");
    assert_eq!(ack.observed, p.a_nms.local_addr());
    step(
        p.a_nms
            .address_update(vec![p.a_sock.local_addr().expect("addr")]),
    )
    .await
    .expect("address update");

    // Logout: B is gone for A afterwards.
    step(p.b_nms.finalize()).await.expect("B logs out");
    let err = step(p.a_nms.direction(fqdn(&p.b)))
        .await
        .expect_err("B is offline after its logout");
    assert!(
        matches!(
            err.status(),
            Some(StatusCode::OFFLINE | StatusCode::NOT_FOUND)
        ),
        "{err}"
    );
    step(p.a_nms.finalize()).await.expect("A logs out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_gives_a_fresh_credential_with_the_same_identity() {
    let a = alice();
    let cloud = Cloud::started(Settings::default(), &[&a]);
    let pinned = cloud.key_show();
    let first = a.login(&cloud, &pinned).await.expect("login");
    // Expiries have a resolution of a second.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let renewed = a.renew(&cloud, &pinned, &first).await.expect("renewal");
    let (old, new) = (
        first.credential.credential(),
        renewed.credential.credential(),
    );
    renewed
        .credential
        .verify_for_key(&[pinned], unix_now(), &a.public())
        .expect("the renewed credential verifies");
    assert_eq!(new.node_id, old.node_id);
    assert_eq!(new.vip4, old.vip4);
    assert_eq!(new.vip6, old.vip6);
    assert_eq!(new.fqdn, old.fqdn);
    assert_eq!(new.static_public, old.static_public);
    assert!(
        new.not_after > old.not_after,
        "{:?} !> {:?}",
        new.not_after,
        old.not_after
    );
    assert!(renewed.renew_after > Duration::ZERO);

    // The NMS takes the renewed credential, and the node can renew again with it.
    let nms = a.connect_nms(&cloud, &pinned, &renewed).await;
    step(nms.register(vec![]))
        .await
        .expect("register with the renewed credential");
    a.renew(&cloud, &pinned, &renewed)
        .await
        .expect("second renewal");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_device_is_refused_everywhere() {
    let p = Pair::set_up(Settings::default()).await;
    p.bind_both().await;
    p.relay(&p.a_sock, &p.b_sock, 200, Duration::from_secs(10))
        .await
        .expect("relay works before the removal");

    p.cloud.device_remove(&p.b);
    let removed = Instant::now();

    // NMS: B's presence is gone, so A's direction fails with a clear status.
    let p = &p;
    let status = eventually(Duration::from_secs(15), || async move {
        match p.a_nms.direction(fqdn(&p.b)).await {
            Err(e)
                if matches!(
                    e.status(),
                    Some(StatusCode::NOT_FOUND | StatusCode::OFFLINE)
                ) =>
            {
                e.status()
            }
            _ => None,
        }
    })
    .await
    .expect("A's direction to the removed B fails with NOT_FOUND/OFFLINE");
    eprintln!(
        "presence of the removed device gone after {:?} ({status:?})",
        removed.elapsed()
    );

    // TRS: B's bindings are removed; nothing is forwarded either way.
    eventually(Duration::from_secs(15), || async move {
        let forwarded = p
            .relay(&p.a_sock, &p.b_sock, 100, Duration::from_millis(500))
            .await
            .is_some();
        (!forwarded).then_some(())
    })
    .await
    .expect("the TRS stops forwarding to the removed B");
    assert!(
        p.relay(&p.b_sock, &p.a_sock, 100, Duration::from_secs(1))
            .await
            .is_none(),
        "the TRS forwards data from the removed B"
    );
    eprintln!(
        "relay for the removed device stopped after {:?}",
        removed.elapsed()
    );
    let b_offer = p.b_route.relay.as_ref().expect("offer");
    let rebind = relay_bind(
        b_offer.trs_endpoints[0],
        &b_offer.ticket,
        &b_offer.bind_key,
        node_id(&p.b_out),
        &p.b_sock,
    )
    .await;
    assert!(
        rebind.is_err(),
        "the removed B could bind again: {rebind:?}"
    );

    // AS: no renewal, no login.
    let err =
        p.b.renew(&p.cloud, &p.pinned, &p.b_out)
            .await
            .expect_err("renewal of a removed device");
    assert_eq!(err.status(), Some(StatusCode::REVOKED), "{err}");
    let err =
        p.b.login(&p.cloud, &p.pinned)
            .await
            .expect_err("login of a removed device");
    assert_eq!(
        err.status(),
        Some(StatusCode::AUTHENTICATION_FAILED),
        "{err}"
    );
    // B's NMS channel no longer serves it.
    let keepalive = step(p.b_nms.keepalive()).await;
    assert!(
        keepalive.is_err(),
        "the removed B's keepalive was answered: {keepalive:?}"
    );

    // A is unaffected.
    step(p.a_nms.keepalive()).await.expect("A's keepalive");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_passwords_are_refused_then_rate_limited() {
    let settings = Settings {
        per_device_failures: 3,
        window_secs: 4,
        ..Settings::default()
    };
    let (a, b) = (alice(), bob());
    let cloud = Cloud::started(settings, &[&a, &b]);
    let pinned = cloud.key_show();
    for attempt in 0..3 {
        let err = a
            .login_with(&cloud, &pinned, "not the password")
            .await
            .expect_err("wrong password");
        assert_eq!(
            err.status(),
            Some(StatusCode::AUTHENTICATION_FAILED),
            "attempt {attempt}: {err}"
        );
    }
    // Locked for the window, even with the right password.
    let err = a.login(&cloud, &pinned).await.expect_err("locked out");
    assert_eq!(err.status(), Some(StatusCode::RATE_LIMITED), "{err}");
    let cyphonic_host::signaling::SignalingError::Status(report) = &err else {
        unreachable!("status checked above")
    };
    assert!(
        report.retry_after_secs > 0,
        "RATE_LIMITED without retry_after"
    );
    // Another device from the same address is not affected.
    b.login(&cloud, &pinned)
        .await
        .expect("another device logs in");
    // An unknown device id gets the same answer as a wrong password.
    let stranger = Device::new("nobody", "nobody.cyphonic", "x");
    let err = stranger
        .login(&cloud, &pinned)
        .await
        .expect_err("unknown device");
    assert_eq!(
        err.status(),
        Some(StatusCode::AUTHENTICATION_FAILED),
        "{err}"
    );

    // After the window the right password works again.
    tokio::time::sleep(Duration::from_secs(u64::from(report.retry_after_secs))).await;
    let (a, cloud_ref, pinned_ref) = (&a, &cloud, &pinned);
    eventually(Duration::from_secs(30), || async move {
        a.login(cloud_ref, pinned_ref).await.ok()
    })
    .await
    .expect("login works again after the window");
    let text = cloud.metrics();
    assert!(
        metric_sum(
            &text,
            "cyphonic_as_logins_total",
            &["result=\"rate_limited\""]
        ) >= 1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_devices_addresses_and_the_signing_key() {
    let a = alice();
    let mut cloud = Cloud::started(Settings::default(), &[&a]);
    let pinned = cloud.key_show();
    let before = a.login(&cloud, &pinned).await.expect("login");
    let mut nms = a.connect_nms(&cloud, &pinned, &before).await;
    step(nms.register(vec![])).await.expect("registration");
    let mut events = nms.events().expect("events");
    let addrs_before = cloud.addrs;
    cloud.stop();
    let key_file = cloud
        .data_dir()
        .join(cyphonic_cloud::keys::SIGNING_KEY_FILE);
    assert!(
        has_mode(&key_file, 0o600),
        "{} is not mode 0600",
        key_file.display()
    );

    cloud.start();
    assert_eq!(
        cloud.key_show(),
        pinned,
        "key show prints the same key after a restart"
    );
    let after = a
        .login(&cloud, &pinned)
        .await
        .expect("login after the restart");
    let (old, new) = (
        before.credential.credential(),
        after.credential.credential(),
    );
    assert_eq!(new.node_id, old.node_id);
    assert_eq!(new.vip4, old.vip4);
    assert_eq!(new.vip6, old.vip6);
    assert_eq!(new.fqdn, old.fqdn);
    assert!(has_mode(&key_file, 0o600));

    // The NMS client from before the restart notices the lost channel on its next
    // request, re-handshakes with the old credential (same key) and says so; the node
    // registers again.
    if cloud.addrs == addrs_before {
        let first = step(nms.keepalive()).await;
        eprintln!("first keepalive after the restart: {first:?}");
        let reconnected = step(async {
            loop {
                match events.recv().await {
                    Some(NmsEvent::Reconnected(_)) => return true,
                    Some(_) => continue,
                    None => return false,
                }
            }
        })
        .await;
        assert!(reconnected, "no Reconnected event after the restart");
        step(nms.register(vec![]))
            .await
            .expect("registration on the new channel");
        step(nms.keepalive())
            .await
            .expect("keepalive on the new channel");
    } else {
        // A port was taken while the cloud was down; a fresh connection still proves
        // the old credential works.
        eprintln!("the restarted cloud listens elsewhere; skipping the reconnection check");
        let nms = a.connect_nms(&cloud, &pinned, &before).await;
        step(nms.register(vec![]))
            .await
            .expect("registration after the restart");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_endpoint_serves_prometheus_text() {
    let a = alice();
    let cloud = Cloud::started(Settings::default(), &[&a]);
    let pinned = cloud.key_show();
    a.login(&cloud, &pinned).await.expect("login");
    a.login_with(&cloud, &pinned, "wrong")
        .await
        .expect_err("wrong password");
    // One junk datagram per service, so every drop counter moves.
    let junk = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("socket");
    for (_, addr) in cloud.addrs.services() {
        junk.send_to(b"\x01\x7fjunk", addr).expect("send junk");
    }

    let (head, _) = common::http_get(cloud.addrs.metrics, "/metrics").expect("GET /metrics");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    let cloud_ref = &cloud;
    let text = eventually(Duration::from_secs(10), || async move {
        let text = cloud_ref.metrics();
        ["as", "nms", "trs"]
            .iter()
            .all(|s| metric_sum(&text, &format!("cyphonic_{s}_dropped_total"), &[]) >= 1.0)
            .then_some(text)
    })
    .await
    .unwrap_or_else(|| panic!("drop counters did not move:\n{}", cloud.metrics()));
    assert!(
        text.contains("# TYPE cyphonic_as_logins_total counter"),
        "{text}"
    );
    assert!(metric_sum(&text, "cyphonic_as_logins_total", &["result=\"ok\""]) >= 1.0);
    assert!(metric_sum(&text, "cyphonic_as_logins_total", &["result=\"failed\""]) >= 1.0);
    for service in ["as", "nms", "trs"] {
        let name = format!("cyphonic_{service}_dropped_total");
        assert!(has_metric(&text, &name), "{name} missing:\n{text}");
        assert!(text.contains(&format!("# TYPE {name} counter")), "{text}");
    }
    // Nothing secret leaks into the metrics.
    assert!(!text.contains(&a.password));
    let (head, _) = common::http_get(cloud.addrs.metrics, "/nope").expect("GET /nope");
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
}
