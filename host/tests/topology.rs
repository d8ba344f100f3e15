//! The test-topology harness itself (support/topology.rs), with plain UDP sockets and no
//! cyphonic daemons: NAT mapping and filtering behaviour, hole punching, address
//! families, two nodes behind one NAT, blocking the direct path and moving a node.
//! Needs root, iproute2 and nftables (scripts/test.sh installs them).

// Network namespaces, TUN devices and netlink: Linux only.
#![cfg(target_os = "linux")]
#![allow(clippy::unwrap_used)]

mod support;

use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use support::topology::{CLOUD_V4, CLOUD_V6, HostId, NatKind, Site, Topology};
use support::{Lab, run};

const PORT: u16 = 7000;
const ARRIVES: Duration = Duration::from_secs(2);
/// How long a packet that must not arrive gets; the lab's links deliver in microseconds.
const BLOCKED: Duration = Duration::from_millis(400);

#[test]
fn cone_keeps_mapping_and_filters_symmetric_remaps_and_cannot_be_punched() {
    let Some(lab) = Lab::new("tn") else {
        return;
    };
    let mut t = Topology::new(lab);
    let p1 = t.add_host("p1", Site::Public { v4: true, v6: true });
    let p2 = t.add_host(
        "p2",
        Site::Public {
            v4: true,
            v6: false,
        },
    );
    let cone = t.add_host("cone", nat(NatKind::Cone, true, false));
    let cone2 = t.add_host("cone2", nat(NatKind::Cone, true, true));
    let sym = t.add_host("sym", nat(NatKind::Symmetric, true, false));
    assert_ne!(t.router_of(cone), t.router_of(cone2));

    // Three places on the internet: both public hosts and the cloud's namespace.
    let cloud_ns = t.cloud_ns.clone();
    let servers = [
        udp(&t, t.ns(p1), "[::]:7000"),
        udp(&t, t.ns(p2), "0.0.0.0:7000"),
        udp(&t, &cloud_ns, "0.0.0.0:7000"),
    ];
    let server_addrs = [
        v4(t.external_v4(p1).unwrap().into(), PORT),
        v4(t.external_v4(p2).unwrap().into(), PORT),
        v4(CLOUD_V4.into(), PORT),
    ];
    let observe = |s: &UdpSocket| -> Vec<SocketAddr> {
        servers
            .iter()
            .zip(server_addrs)
            .map(|(server, to)| deliver(s, to, server, ARRIVES).expect("reaches the internet"))
            .collect()
    };

    let cone_sock = udp(&t, t.ns(cone), "0.0.0.0:0");
    let seen = observe(&cone_sock);
    let cone_wan = t.external_v4(cone).unwrap();
    assert_ne!(Some(cone_wan), t.host(cone).v4, "behind a NAT");
    assert!(
        seen.iter()
            .all(|a| *a == seen[0] && a.ip() == IpAddr::from(cone_wan)),
        "cone NAT: one mapping for every destination: {seen:?}"
    );

    let sym_sock = udp(&t, t.ns(sym), "0.0.0.0:0");
    let seen = observe(&sym_sock);
    let sym_wan = IpAddr::from(t.external_v4(sym).unwrap());
    assert!(seen.iter().all(|a| a.ip() == sym_wan), "{seen:?}");
    assert!(
        seen.iter().any(|a| a.port() != seen[0].port()),
        "symmetric NAT: another port per destination: {seen:?}"
    );

    // Filtering: the mapping made towards p2 does not let p1 in until cone2 sent to p1,
    // and then p1 sees that same mapping.
    let c2 = udp(&t, t.ns(cone2), "0.0.0.0:0");
    let mapping = deliver(&c2, server_addrs[1], &servers[1], ARRIVES).unwrap();
    let probe = udp(&t, t.ns(p1), "0.0.0.0:0");
    let probe_addr = v4(
        t.external_v4(p1).unwrap().into(),
        probe.local_addr().unwrap().port(),
    );
    assert_eq!(
        deliver(&probe, mapping, &c2, BLOCKED),
        None,
        "unsolicited packet passed the cone NAT"
    );
    assert_eq!(deliver(&c2, probe_addr, &probe, ARRIVES), Some(mapping));
    assert_eq!(deliver(&probe, mapping, &c2, ARRIVES), Some(probe_addr));

    // Two cone NATs: learn the mappings from p1, then both send at once.
    let a = udp(&t, t.ns(cone), "0.0.0.0:0");
    let b = udp(&t, t.ns(cone2), "0.0.0.0:0");
    let ma = deliver(&a, server_addrs[0], &servers[0], ARRIVES).unwrap();
    let mb = deliver(&b, server_addrs[0], &servers[0], ARRIVES).unwrap();
    assert_eq!(punch(&a, ma, &b, mb, ARRIVES), (true, true), "cone to cone");

    // A symmetric NAT sends the punch from another port than p1 saw: nothing gets in.
    let s = udp(&t, t.ns(sym), "0.0.0.0:0");
    let c = udp(&t, t.ns(cone), "0.0.0.0:0");
    let ms = deliver(&s, server_addrs[0], &servers[0], ARRIVES).unwrap();
    let mc = deliver(&c, server_addrs[0], &servers[0], ARRIVES).unwrap();
    assert_eq!(
        punch(&s, ms, &c, mc, Duration::from_secs(1)),
        (false, false),
        "symmetric to cone must not punch"
    );
}

#[test]
fn families_shared_nat_blocking_and_moves() {
    let Some(lab) = Lab::new("tf") else {
        return;
    };
    let mut t = Topology::new(lab);
    let p1 = t.add_host("p1", Site::Public { v4: true, v6: true });
    let dual = t.add_host("dual", nat(NatKind::Cone, true, true));
    let router = t.router_of(dual).unwrap();
    let mate = t.add_host("mate", Site::SharedNat(router));
    let only6 = t.add_host("only6", nat(NatKind::Cone, false, true));
    let only4 = t.add_host(
        "only4",
        Site::Public {
            v4: true,
            v6: false,
        },
    );
    let cloud_ns = t.cloud_ns.clone();
    let server = udp(&t, t.ns(p1), "[::]:7000");
    let cloud = udp(&t, &cloud_ns, "[::]:7000");
    let p1_v4 = v4(t.external_v4(p1).unwrap().into(), PORT);
    let p1_v6 = v6(t.external_v6(p1).unwrap().into(), PORT);
    let cloud_v4 = v4(CLOUD_V4.into(), PORT);
    let cloud_v6 = v6(CLOUD_V6.into(), PORT);

    // IPv6-only behind a router: no IPv4 address or route; IPv6 is routed, not NATed,
    // and the router's firewall lets a peer in only after the node sent to it.
    assert!(t.host(only6).v4.is_none());
    let ns6 = t.ns(only6).to_owned();
    assert_eq!(
        ip_out(&t, &ns6, &["-4", "-o", "addr", "show", "scope", "global"]),
        ""
    );
    assert_eq!(ip_out(&t, &ns6, &["-4", "route", "show", "default"]), "");
    let s6 = udp(&t, &ns6, "[::]:0");
    assert_eq!(
        udp(&t, &ns6, "0.0.0.0:0")
            .connect(cloud_v4)
            .unwrap_err()
            .kind(),
        ErrorKind::NetworkUnreachable
    );
    let own6 = v6(
        t.host(only6).v6.unwrap().into(),
        s6.local_addr().unwrap().port(),
    );
    assert_eq!(
        deliver(&s6, p1_v6, &server, ARRIVES),
        Some(own6),
        "no NAT66"
    );
    assert_eq!(deliver(&s6, cloud_v6, &cloud, ARRIVES), Some(own6));
    let probe6 = udp(&t, t.ns(p1), "[::]:0");
    let probe6_addr = v6(
        t.external_v6(p1).unwrap().into(),
        probe6.local_addr().unwrap().port(),
    );
    assert_eq!(deliver(&probe6, own6, &s6, BLOCKED), None, "IPv6 firewall");
    assert_eq!(deliver(&s6, probe6_addr, &probe6, ARRIVES), Some(own6));
    assert_eq!(deliver(&probe6, own6, &s6, ARRIVES), Some(probe6_addr));

    // IPv4-only: no IPv6 at all.
    let ns4 = t.ns(only4).to_owned();
    assert_eq!(
        ip_out(&t, &ns4, &["-6", "-o", "addr", "show", "scope", "global"]),
        ""
    );
    assert_eq!(
        udp(&t, &ns4, "[::]:0")
            .connect(cloud_v6)
            .unwrap_err()
            .kind(),
        ErrorKind::NetworkUnreachable
    );
    let s4 = udp(&t, &ns4, "0.0.0.0:0");
    assert!(deliver(&s4, cloud_v4, &cloud, ARRIVES).is_some());

    // Two nodes behind one NAT reach each other on their LAN addresses, both families.
    let d4 = udp(&t, t.ns(dual), "0.0.0.0:0");
    let d6 = udp(&t, t.ns(dual), "[::]:0");
    let m4 = udp(&t, t.ns(mate), "0.0.0.0:0");
    let m6 = udp(&t, t.ns(mate), "[::]:0");
    assert_eq!(t.router_of(mate), Some(router));
    assert_eq!(
        deliver(&m4, lan(&t, &d4, dual), &d4, ARRIVES),
        Some(lan(&t, &m4, mate))
    );
    assert_eq!(
        deliver(&d6, lan(&t, &m6, mate), &m6, ARRIVES),
        Some(lan(&t, &d6, dual))
    );

    // Blocking the direct path between p1 and dual: UDP both ways and both families is
    // dropped, the cloud still answers, and unblocking restores it.
    let wan = t.external_v4(dual).unwrap();
    assert_eq!(
        deliver(&d4, p1_v4, &server, ARRIVES).map(|a| a.ip()),
        Some(wan.into())
    );
    t.block_direct(p1, dual);
    assert_eq!(deliver(&d4, p1_v4, &server, BLOCKED), None);
    assert_eq!(deliver(&d6, p1_v6, &server, BLOCKED), None);
    let probe = udp(&t, t.ns(p1), "[::]:0");
    assert_eq!(deliver(&probe, lan(&t, &d6, dual), &d6, BLOCKED), None);
    assert!(deliver(&d4, cloud_v4, &cloud, ARRIVES).is_some());
    assert!(deliver(&d6, cloud_v6, &cloud, ARRIVES).is_some());

    // Moving dual onto the internet, IPv4 only: new link and address, the old link and
    // IPv6 are gone, and the block follows it.
    let ns_dual = t.ns(dual).to_owned();
    t.move_node(
        dual,
        Site::Public {
            v4: true,
            v6: false,
        },
    );
    let host = t.host(dual);
    assert_eq!(host.dev, "eth1");
    assert_eq!(host.router, None);
    assert!(host.v6.is_none());
    let moved = host.v4.unwrap();
    assert_eq!(t.external_v4(dual), Some(moved));
    assert!(
        !ip_ok(&t, &ns_dual, &["link", "show", "eth0"]),
        "old link still there"
    );
    assert_eq!(
        d6.connect(p1_v6).unwrap_err().kind(),
        ErrorKind::NetworkUnreachable
    );
    assert_eq!(deliver(&d4, p1_v4, &server, BLOCKED), None, "block follows");
    assert_eq!(
        deliver(&d4, cloud_v4, &cloud, ARRIVES).map(|a| a.ip()),
        Some(moved.into())
    );
    t.unblock_direct(dual, p1);
    assert_eq!(
        deliver(&d4, p1_v4, &server, ARRIVES),
        Some(v4(moved.into(), d4.local_addr().unwrap().port()))
    );

    // And back behind the router its mate is behind: NATed again, on the LAN.
    t.move_node(dual, Site::SharedNat(router));
    assert_eq!(t.host(dual).dev, "eth2");
    assert_eq!(
        deliver(&d4, p1_v4, &server, ARRIVES).map(|a| a.ip()),
        Some(wan.into())
    );
    let d4_new = lan(&t, &d4, dual);
    assert_eq!(deliver(&m4, d4_new, &d4, ARRIVES), Some(lan(&t, &m4, mate)));
}

/// `s`'s port at `h`'s own address of `s`'s family.
fn lan(t: &Topology, s: &UdpSocket, h: HostId) -> SocketAddr {
    let port = s.local_addr().unwrap().port();
    match s.local_addr().unwrap() {
        SocketAddr::V4(_) => v4(t.host(h).v4.unwrap().into(), port),
        SocketAddr::V6(_) => v6(t.host(h).v6.unwrap().into(), port),
    }
}

fn nat(kind: NatKind, v4: bool, v6: bool) -> Site {
    Site::Nat { kind, v4, v6 }
}

fn v4(ip: IpAddr, port: u16) -> SocketAddr {
    assert!(ip.is_ipv4());
    SocketAddr::new(ip, port)
}

fn v6(ip: IpAddr, port: u16) -> SocketAddr {
    assert!(ip.is_ipv6());
    SocketAddr::new(ip, port)
}

/// A UDP socket created (and so living) in `ns`; usable from any thread.
fn udp(t: &Topology, ns: &str, bind: &str) -> UdpSocket {
    let bind = bind.to_owned();
    let s = t
        .lab
        .in_ns(ns, move || UdpSocket::bind(&bind))
        .join()
        .unwrap()
        .unwrap();
    s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
    s
}

static TOKEN: AtomicU64 = AtomicU64::new(0);

/// Sends a fresh token from `from` to `to` every 20 ms until `at` receives it or `within`
/// passes; returns the source address `at` saw it from.
fn deliver(
    from: &UdpSocket,
    to: SocketAddr,
    at: &UdpSocket,
    within: Duration,
) -> Option<SocketAddr> {
    let token = TOKEN.fetch_add(1, Ordering::Relaxed).to_be_bytes();
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        // A send error (no route) counts as not delivered.
        let _ = from.send_to(&token, to);
        if let Some(src) = receive(at, &token) {
            return Some(src);
        }
    }
    None
}

/// Both sides send to each other's mapping at once; whether each received the other's.
fn punch(
    a: &UdpSocket,
    a_mapped: SocketAddr,
    b: &UdpSocket,
    b_mapped: SocketAddr,
    within: Duration,
) -> (bool, bool) {
    let ta = TOKEN.fetch_add(1, Ordering::Relaxed).to_be_bytes();
    let tb = TOKEN.fetch_add(1, Ordering::Relaxed).to_be_bytes();
    let (mut a_got, mut b_got) = (false, false);
    let deadline = Instant::now() + within;
    while Instant::now() < deadline && !(a_got && b_got) {
        a.send_to(&ta, b_mapped).unwrap();
        b.send_to(&tb, a_mapped).unwrap();
        a_got |= receive(a, &tb).is_some_and(|src| src == b_mapped);
        b_got |= receive(b, &ta).is_some_and(|src| src == a_mapped);
    }
    (a_got, b_got)
}

/// Reads until `token` arrives or one read times out; other datagrams are stale.
fn receive(at: &UdpSocket, token: &[u8]) -> Option<SocketAddr> {
    let mut buf = [0u8; 64];
    while let Ok((n, src)) = at.recv_from(&mut buf) {
        if &buf[..n] == token {
            return Some(SocketAddr::new(src.ip().to_canonical(), src.port()));
        }
    }
    None
}

fn ip_out(t: &Topology, ns: &str, args: &[&str]) -> String {
    let out = run(t.lab.cmd(ns, "ip").args(args));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn ip_ok(t: &Topology, ns: &str, args: &[&str]) -> bool {
    t.lab
        .cmd(ns, "ip")
        .args(args)
        .output()
        .unwrap()
        .status
        .success()
}
