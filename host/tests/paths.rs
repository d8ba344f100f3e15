//! Path selection end to end on real namespace topologies: nodes on the public
//! underlay, behind cone and symmetric NATs, behind the same NAT, on different address
//! families. Each test asserts the path kind `cyphonic peers --json` reports and that
//! traffic flows (overlay-level probes and kernel pings over the TUN devices). Needs
//! root, iproute2, nftables, iputils ping (scripts/test.sh installs them).

// Network namespaces, TUN devices and netlink: Linux only.
#![cfg(target_os = "linux")]
#![allow(clippy::unwrap_used)]

mod support;

use std::net::IpAddr;
use std::time::Duration;

use support::fleet::NodeOptions;
use support::pair::{pair, pair_with};
use support::topology::{NatKind, Site};
use support::{run, udp_payloads, wait_for};

const V4: Site = Site::Public {
    v4: true,
    v6: false,
};

#[test]
fn public_to_public_is_direct() {
    let Some(p) = pair("pd", V4, Some(V4), false) else {
        return;
    };
    let peer = p.reach();
    assert_eq!(peer["path"], "direct", "{peer}");
}

#[test]
fn cone_nat_to_public_is_direct() {
    let cone = Site::Nat {
        kind: NatKind::Cone,
        v4: true,
        v6: false,
    };
    let Some(p) = pair("cp", V4, Some(cone), false) else {
        return;
    };
    let peer = p.reach();
    assert_eq!(peer["path"], "direct", "{peer}");
    // A reaches B at B's NAT mapping, not at its private address.
    let external = p.topo.external_v4(p.hosts[1]).unwrap();
    assert!(
        peer["endpoint"]
            .as_str()
            .unwrap()
            .starts_with(&external.to_string()),
        "{peer}"
    );
}

#[test]
fn cone_nat_to_cone_nat_is_punched() {
    let cone = Site::Nat {
        kind: NatKind::Cone,
        v4: true,
        v6: false,
    };
    let Some(p) = pair("cc", cone, Some(cone), false) else {
        return;
    };
    let peer = p.reach();
    assert_eq!(peer["path"], "punched", "{peer}");
}

#[test]
fn symmetric_nat_to_symmetric_nat_is_relayed() {
    let symmetric = Site::Nat {
        kind: NatKind::Symmetric,
        v4: true,
        v6: false,
    };
    let Some(p) = pair("ss", symmetric, Some(symmetric), false) else {
        return;
    };
    let peer = p.reach();
    assert_eq!(peer["path"], "relayed", "{peer}");
    assert_eq!(peer["relay"], "trs1", "{peer}");
}

#[test]
fn same_nat_is_local() {
    let cone = Site::Nat {
        kind: NatKind::Cone,
        v4: true,
        v6: false,
    };
    let Some(p) = pair("sn", cone, None, false) else {
        return;
    };
    let peer = p.reach();
    assert_eq!(peer["path"], "local", "{peer}");
    let lan = p.topo.host(p.hosts[1]).v4.unwrap();
    assert!(
        peer["endpoint"]
            .as_str()
            .unwrap()
            .starts_with(&lan.to_string()),
        "{peer}"
    );
}

#[test]
fn ipv4_only_to_ipv6_only_is_relayed_across_families() {
    let v6 = Site::Public {
        v4: false,
        v6: true,
    };
    let Some(p) = pair("46", V4, Some(v6), false) else {
        return;
    };
    let peer = p.reach();
    assert_eq!(peer["path"], "relayed", "{peer}");
}

#[test]
fn relayed_path_moves_to_direct_once_the_block_is_lifted() {
    let cone = Site::Nat {
        kind: NatKind::Cone,
        v4: true,
        v6: false,
    };
    let Some(mut p) = pair("up", cone, Some(cone), true) else {
        return;
    };
    let peer = p.reach();
    assert_eq!(peer["path"], "relayed", "{peer}");
    let [ha, hb] = p.hosts;
    p.topo.unblock_direct(ha, hb);
    // Traffic keeps flowing while the probes find the direct path.
    let lab_ns = p.a.ns.clone();
    let vip: IpAddr = p.b.status(&p.topo.lab)["vip4"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let mut pinger = p.topo.lab.cmd(&lab_ns, "ping");
    pinger
        .args(["-c", "100", "-i", "0.2", "-W", "1"])
        .arg(vip.to_string());
    p.topo.lab.spawn("pinger", pinger);
    let upgraded = wait_for("the direct path", Duration::from_secs(20), || {
        let peer = p.peer_b();
        (peer["path"] == "punched").then_some(peer)
    });
    assert_eq!(upgraded["relay"], serde_json::Value::Null, "{upgraded}");
    p.reach();
}

#[test]
fn a_moving_node_keeps_its_tcp_connection_and_forged_updates_are_ignored() {
    moving_node("mv", NodeOptions::default());
}

/// The same move seen by the polling detector (no netlink plugin configured).
#[test]
fn a_move_is_noticed_by_polling_where_netlink_is_not_used() {
    moving_node(
        "mp",
        NodeOptions {
            mobility: None,
            ..NodeOptions::default()
        },
    );
}

fn moving_node(tag: &str, b_options: NodeOptions) {
    let Some(mut p) = pair_with(tag, V4, Some(V4), false, b_options) else {
        return;
    };
    p.reach();
    let lab = &p.topo.lab;
    let vip_a: IpAddr = p.a.status(lab)["vip4"].as_str().unwrap().parse().unwrap();
    let vip_b: IpAddr = p.b.status(lab)["vip4"].as_str().unwrap().parse().unwrap();
    let a_ns = p.a.ns.clone();
    let b_ns = p.b.ns.clone();
    let old_endpoint = p.peer_b()["endpoint"].as_str().unwrap().to_owned();

    // A forged update: a datagram in B's session (a captured one) turned into a
    // Control message with a fresh counter and a body we cannot seal, sent from the
    // internet. It must not move B anywhere.
    let capture = p.topo.lab.path("a.pcap");
    let mut tcpdump = p.topo.lab.cmd(&a_ns, "tcpdump");
    tcpdump
        .args(["-i", "eth0", "-U", "--immediate-mode", "-n", "-w"])
        .arg(&capture)
        .args(["udp", "port", "7400"]);
    p.topo.lab.spawn("tcpdump", tcpdump);
    wait_for("tcpdump to listen", Duration::from_secs(20), || {
        p.topo
            .lab
            .log("tcpdump")
            .contains("listening on")
            .then_some(())
    });
    run(p
        .topo
        .lab
        .cmd(&b_ns, "ping")
        .args(["-c", "3", "-i", "0.2"])
        .arg(vip_a.to_string()));
    std::thread::sleep(Duration::from_millis(300));
    p.topo.lab.stop("tcpdump");
    let a_public = p.topo.host(p.hosts[0]).v4.unwrap();
    let captured = udp_payloads(&std::fs::read(&capture).unwrap(), a_public.octets());
    let sample = captured
        .iter()
        .find(|d| d.len() > 32 && d[1] == 0x13)
        .expect("a captured data packet")
        .clone();
    let dropped_before = p.a.counter(&p.topo.lab, "tunnel_dropped_tampered");
    let internet = p.topo.internet_ns.clone();
    p.topo
        .lab
        .in_ns(&internet, move || {
            let socket = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
            let mut forged = sample;
            forged[1] = 0x14;
            // Ahead of the window but within the session's message limit.
            let counter = u64::from_be_bytes(forged[8..16].try_into().unwrap()) + 1000;
            forged[8..16].copy_from_slice(&counter.to_be_bytes());
            for b in &mut forged[16..] {
                *b ^= 0xa5;
            }
            socket
                .send_to(&forged, std::net::SocketAddr::new(a_public.into(), 7400))
                .unwrap();
        })
        .join()
        .unwrap();
    let dropped = (0..50).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        p.a.counter(&p.topo.lab, "tunnel_dropped_tampered") > dropped_before
    });
    assert!(
        dropped,
        "forgery not counted ({} captured): {}",
        captured.len(),
        p.a.status(&p.topo.lab)["counters"]
    );
    assert_eq!(p.peer_b()["endpoint"], old_endpoint.as_str());

    // A TCP transfer and a ping across B's move to another address.
    let mut server = p.topo.lab.cmd(&a_ns, "iperf3");
    server.args(["-s", "-1", "-B"]).arg(vip_a.to_string());
    p.topo.lab.spawn("iperf3-server", server);
    p.topo.lab.wait_tcp_listen(&a_ns, 5201);
    let mut client = p.topo.lab.cmd(&b_ns, "iperf3");
    client
        .args(["-c"])
        .arg(vip_a.to_string())
        .args(["-t", "8", "-J", "-b", "50M"]);
    p.topo.lab.spawn("iperf3-client", client);
    let mut pinger = p.topo.lab.cmd(&a_ns, "ping");
    pinger
        .args(["-c", "40", "-i", "0.2", "-W", "1"])
        .arg(vip_b.to_string());
    p.topo.lab.spawn("pinger", pinger);
    std::thread::sleep(Duration::from_millis(2500));
    let hb = p.hosts[1];
    p.topo.move_node(hb, V4);
    let new_b = p.topo.host(hb).v4.unwrap();
    wait_for("the transfer to end", Duration::from_secs(30), || {
        (!p.topo.lab.alive("iperf3-client")).then_some(())
    });
    let report: serde_json::Value = serde_json::from_str(&p.topo.lab.log("iperf3-client"))
        .unwrap_or_else(|e| panic!("{e}: {}", p.topo.lab.log("iperf3-client")));
    assert!(report.get("error").is_none(), "{report}");
    let intervals = report["intervals"].as_array().unwrap();
    assert!(intervals.len() >= 7, "{report}");
    let last = &intervals[intervals.len() - 1]["sum"]["bytes"];
    assert!(
        last.as_u64().unwrap() > 0,
        "no bytes after the move: {report}"
    );
    wait_for("the pings to end", Duration::from_secs(20), || {
        (!p.topo.lab.alive("pinger")).then_some(())
    });
    let ping_log = p.topo.lab.log("pinger");
    let received: u32 = ping_log
        .lines()
        .find_map(|l| {
            let (_, rest) = l.split_once("transmitted, ")?;
            rest.split_whitespace().next()?.parse().ok()
        })
        .unwrap_or_else(|| panic!("{ping_log}"));
    assert!(
        received >= 35,
        "lost {} of 40 pings across the move\n{ping_log}",
        40 - received
    );
    let peer = p.peer_b();
    assert!(
        peer["endpoint"]
            .as_str()
            .unwrap()
            .starts_with(&new_b.to_string()),
        "{peer}"
    );
    assert!(p.a.counter(&p.topo.lab, "address_updates") >= 1);
}
