//! End to end with the real binaries: a cloud and two nodes in their own network
//! namespaces on one underlay bridge, real TUN devices, the resolver in front of the
//! namespaces' resolv.conf. Needs root, iproute2, iputils ping, iperf3 and tcpdump
//! (scripts/test.sh installs them).

// Network namespaces, TUN devices and netlink: Linux only.
#![cfg(target_os = "linux")]
#![allow(clippy::unwrap_used)]

mod support;

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::process::Command;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use support::fleet::{Cloud, Node, NodeOptions};
use support::{Lab, built, run, udp_payloads, wait_for};

const CLOUD_IP: &str = "198.51.100.1";
const UPSTREAM_ANSWER: [u8; 4] = [192, 0, 2, 55];
const SECRET: &[u8] = b"CYPHONIC-KNOWN-PLAINTEXT-7f3a9c";

struct Overlay {
    lab: Lab,
    cloud_ns: String,
    a: Node,
    b: Node,
}

/// Cloud namespace with a bridge; two node namespaces hanging off it.
fn overlay(tag: &str, b_filter: Option<String>) -> Option<Overlay> {
    let mut lab = Lab::new(tag)?;
    let cloud_ns = lab.netns("c");
    let ns_a = lab.netns("a");
    let ns_b = lab.netns("b");
    lab.bridge(&cloud_ns, "br0", &["198.51.100.1/24", "2001:db8:100::1/64"]);
    for (ns, host, dev) in [(&ns_a, 2, "va"), (&ns_b, 3, "vb")] {
        lab.link(&cloud_ns, dev, ns, "eth0", Some("br0"));
        lab.add_addr(ns, "eth0", &format!("198.51.100.{host}/24"));
        lab.add_addr(ns, "eth0", &format!("2001:db8:100::{host}/64"));
    }
    let cloud = Cloud::new(&mut lab, &cloud_ns, CLOUD_IP);
    cloud.add_device("node-a");
    cloud.add_device("node-b");
    cloud.serve(&mut lab);
    let default_filter = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/dns_filter.lua"),
    )
    .unwrap();
    let a_filter = default_filter.replacen("DENY = {", "DENY = {\n  \"blocked.example.com\",", 1);
    assert_ne!(
        a_filter, default_filter,
        "the default filter has a DENY list"
    );
    let a = Node::configure(
        &mut lab,
        &cloud,
        "node-a",
        &ns_a,
        CLOUD_IP,
        NodeOptions {
            filter: Some(a_filter),
            ..NodeOptions::default()
        },
    );
    let b = Node::configure(
        &mut lab,
        &cloud,
        "node-b",
        &ns_b,
        CLOUD_IP,
        NodeOptions {
            filter: b_filter,
            ..NodeOptions::default()
        },
    );
    // The cloud may still be starting: the first login retries inside the client.
    a.login(&lab);
    b.login(&lab);
    a.start(&mut lab);
    b.start(&mut lab);
    a.wait_running(&mut lab);
    b.wait_running(&mut lab);
    Some(Overlay {
        lab,
        cloud_ns,
        a,
        b,
    })
}

#[test]
fn two_nodes_reach_each_other_by_name_end_to_end_encrypted() {
    let looping = "function filter(name, qtype, ctx)\n  while true do end\nend\n".to_owned();
    let Some(mut o) = overlay("e", Some(looping)) else {
        return;
    };
    let upstream = start_upstream(&o.lab, &o.cloud_ns);
    let status_b = o.b.status(&o.lab);
    let vip4_b: IpAddr = status_b["vip4"].as_str().unwrap().parse().unwrap();
    let vip6_b: IpAddr = status_b["vip6"].as_str().unwrap().parse().unwrap();
    let status_a = o.a.status(&o.lab);
    let vip4_a: IpAddr = status_a["vip4"].as_str().unwrap().parse().unwrap();
    let first_expiry = status_a["credential_expires"].as_u64().unwrap();
    let plugins: Vec<String> = status_a["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_owned())
        .collect();
    // Interface, two crypto suites, mobility detector.
    assert_eq!(plugins.len(), 4, "{status_a}");

    // Ping by name: resolv.conf -> our resolver -> NMS direction -> handshake.
    let ping = o
        .lab
        .cmd(&o.a.ns, "ping")
        .args(["-c", "5", "-i", "0.2", "-W", "2"])
        .arg(o.b.fqdn())
        .output()
        .unwrap();
    assert!(
        ping.status.success(),
        "ping by name failed:\n{}\n{}\n--- node-a log ---\n{}",
        String::from_utf8_lossy(&ping.stdout),
        String::from_utf8_lossy(&ping.stderr),
        o.lab.log("node-a")
    );

    // Both address families through the system resolver.
    let getent = run(o.lab.cmd(&o.a.ns, "getent").args(["ahosts", &o.b.fqdn()]));
    let text = String::from_utf8_lossy(&getent.stdout);
    assert!(text.contains(&vip4_b.to_string()), "{text}");
    assert!(text.contains(&vip6_b.to_string()), "{text}");

    // The inner IPv6 path works too.
    run(o
        .lab
        .cmd(&o.a.ns, "ping")
        .args(["-6", "-c", "2", "-i", "0.2", "-W", "2"])
        .arg(vip6_b.to_string()));

    // Peers table: direct path, negotiated suite, real endpoint.
    let (ok, peers) = o.a.cli(&o.lab, &["peers"]);
    assert!(ok, "{peers}");
    let peer = &peers["peers"][0];
    assert_eq!(peer["fqdn"], o.b.fqdn(), "{peers}");
    assert_eq!(peer["path"], "direct", "{peers}");
    assert_eq!(peer["suite"], "aes-256-gcm", "{peers}");
    assert_eq!(peer["endpoint"], "198.51.100.3:7400", "{peers}");
    assert!(peer["last_handshake"].as_u64().is_some(), "{peers}");

    // Overlay-level ping through the daemons.
    let (ok, report) = o.a.cli(&o.lab, &["ping", "node-b", "-c", "3", "-i", "100"]);
    assert!(ok, "{report}");
    assert_eq!(report["path"], "direct");
    assert!(
        report["rtts_ms"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r.is_f64()),
        "{report}"
    );

    // TCP over the overlay.
    let mut server = o.lab.cmd(&o.b.ns, "iperf3");
    server.args(["-s", "-1", "-B"]).arg(vip4_b.to_string());
    o.lab.spawn("iperf3-server", server);
    // iperf3 -J exits 0 even when it could not connect (the server may still be
    // starting): the report says so.
    let report = wait_for("iperf3 client", Duration::from_secs(20), || {
        let out = o
            .lab
            .cmd(&o.a.ns, "iperf3")
            .args(["-c"])
            .arg(vip4_b.to_string())
            .args(["-t", "2", "-J"])
            .output()
            .unwrap();
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        (out.status.success() && report.get("error").is_none()).then_some(report)
    });
    let received = report["end"]["sum_received"]["bytes"]
        .as_u64()
        .unwrap_or_else(|| panic!("iperf3 report without a sum: {report}"));
    assert!(received > 1_000_000, "iperf3 moved only {received} bytes");

    // DNS: forward, block, unknown overlay name, looping filter.
    let forwarded = dns(&o.lab, &o.a.ns, vip4_a, "www.example.com", RecordType::A);
    assert_eq!(forwarded.response_code(), ResponseCode::NoError);
    assert!(
        forwarded
            .answers()
            .iter()
            .any(|r| matches!(r.data(), RData::A(a) if a.0.octets() == UPSTREAM_ANSWER)),
        "{forwarded:?}"
    );
    let blocked = dns(
        &o.lab,
        &o.a.ns,
        vip4_a,
        "blocked.example.com",
        RecordType::A,
    );
    assert_eq!(blocked.response_code(), ResponseCode::NXDomain);
    let started = Instant::now();
    let unknown = dns(&o.lab, &o.a.ns, vip4_a, "nosuch.cyphonic", RecordType::A);
    assert_eq!(unknown.response_code(), ResponseCode::NXDomain);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    let vip4_b_resolver = vip4_b;
    let started = Instant::now();
    let looped = dns(
        &o.lab,
        &o.b.ns,
        vip4_b_resolver,
        "node-a.cyphonic",
        RecordType::A,
    );
    assert_eq!(looped.response_code(), ResponseCode::ServFail);
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(o.lab.alive("node-b"));
    assert!(o.b.counter(&o.lab, "resolver_script_errors") >= 1);

    // A virtual address no node has: ICMP unreachable, not silence.
    let unreachable = o
        .lab
        .cmd(&o.a.ns, "ping")
        .args(["-c", "1", "-W", "3", "100.127.200.200"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&unreachable.stdout);
    assert!(!unreachable.status.success());
    assert!(
        text.contains("Unreachable"),
        "{text}\n--- node-a log ---\n{}",
        o.lab.log("node-a")
    );

    // The underlay carries no plaintext; replayed, tampered and forged datagrams are
    // dropped and counted, and the session keeps working.
    let capture = o.lab.path("underlay.pcap");
    let mut tcpdump = o.lab.cmd(&o.cloud_ns, "tcpdump");
    tcpdump
        // The bridge port towards B: learned unicast frames never reach br0 itself.
        .args(["-i", "vb", "-U", "--immediate-mode", "-n", "-w"])
        .arg(&capture)
        .args(["udp", "port", "7400"]);
    o.lab.spawn("tcpdump", tcpdump);
    wait_for("tcpdump to listen", Duration::from_secs(20), || {
        o.lab.log("tcpdump").contains("listening on").then_some(())
    });
    send_secret(&o.lab, &o.a.ns, &o.b.ns, vip4_b);
    std::thread::sleep(Duration::from_millis(500));
    o.lab.stop("tcpdump");
    let datagrams = udp_payloads(&std::fs::read(&capture).unwrap(), [198, 51, 100, 3]);
    assert!(!datagrams.is_empty(), "the capture saw no tunnel traffic");
    let pcap = std::fs::read(&capture).unwrap();
    assert!(
        !pcap.windows(SECRET.len()).any(|w| w == SECRET),
        "plaintext on the underlay"
    );

    let replay_before = o.b.counter(&o.lab, "tunnel_dropped_replay");
    let tamper_before = o.b.counter(&o.lab, "tunnel_dropped_tampered");
    let target: SocketAddr = "198.51.100.3:7400".parse().unwrap();
    let attack = datagrams.clone();
    o.lab
        .in_ns(&o.cloud_ns, move || {
            let socket = UdpSocket::bind("198.51.100.1:0").unwrap();
            for d in &attack {
                socket.send_to(d, target).unwrap();
                // A fresh counter (so the replay window lets it through to the
                // AEAD) on a flipped ciphertext byte.
                let mut tampered = d.clone();
                if tampered.len() > 32 {
                    tampered[8..16].copy_from_slice(&(1u64 << 20).to_be_bytes());
                    tampered[20] ^= 0x5a;
                    socket.send_to(&tampered, target).unwrap();
                }
            }
            for len in [0usize, 1, 17, 60, 148, 1500] {
                let junk: Vec<u8> = (0..len).map(|i| (i * 31 + 7) as u8).collect();
                socket.send_to(&junk, target).unwrap();
            }
        })
        .join()
        .unwrap();
    let counted = wait_for_ok(Duration::from_secs(5), || {
        let replay = o.b.counter(&o.lab, "tunnel_dropped_replay");
        let tamper = o.b.counter(&o.lab, "tunnel_dropped_tampered");
        replay > replay_before && tamper > tamper_before
    });
    assert!(
        counted,
        "drops not counted ({} datagrams replayed): {}",
        datagrams.len(),
        o.b.status(&o.lab)["counters"]
    );
    assert!(o.b.counter(&o.lab, "tunnel_dropped_total") >= 6);
    run(o
        .lab
        .cmd(&o.a.ns, "ping")
        .args(["-c", "2", "-i", "0.2", "-W", "2"])
        .arg(o.b.fqdn()));
    assert!(o.lab.alive("node-a") && o.lab.alive("node-b"));

    // The credential was renewed meanwhile (renew_after_secs is a few seconds) without
    // disturbing anything above.
    wait_for("a renewed credential", Duration::from_secs(20), || {
        let expiry = o.a.status(&o.lab)["credential_expires"].as_u64()?;
        (expiry > first_expiry).then_some(())
    });

    // Logout: the node leaves the overlay and waits for a login; its name is gone.
    let (ok, answer) = o.b.cli(&o.lab, &["logout"]);
    assert!(ok, "{answer}");
    wait_for(
        "node-b to wait for a login",
        Duration::from_secs(10),
        || (o.b.status(&o.lab)["state"] == "waiting-for-login").then_some(()),
    );
    let links = run(o.lab.cmd(&o.b.ns, "ip").args(["link", "show"]));
    assert!(!String::from_utf8_lossy(&links.stdout).contains("cyph0"));
    assert!(!o.b.dir.join("state/credential.json").exists());

    // A crash leaves the managed resolv.conf behind; the next start restores it before
    // managing it again, and a clean stop restores it and removes the interface.
    let resolv_path = format!("/etc/netns/{}/resolv.conf", o.a.ns);
    o.lab.kill("node-a");
    let left = std::fs::read_to_string(&resolv_path).unwrap();
    assert!(left.contains(&vip4_a.to_string()), "{left}");
    o.a.start(&mut o.lab);
    o.a.wait_running(&mut o.lab);
    let managed = std::fs::read_to_string(&resolv_path).unwrap();
    assert!(managed.contains(&vip4_a.to_string()), "{managed}");
    assert!(!managed.contains(CLOUD_IP), "{managed}");
    let status = o.lab.stop("node-a").unwrap();
    assert!(status.success(), "{status}\n{}", o.lab.log("node-a"));
    let resolv = std::fs::read_to_string(&resolv_path).unwrap();
    assert_eq!(resolv, format!("nameserver {CLOUD_IP}\n"));
    let links = run(o.lab.cmd(&o.a.ns, "ip").args(["link", "show"]));
    assert!(!String::from_utf8_lossy(&links.stdout).contains("cyph0"));
    drop(upstream);
}

#[test]
fn missing_and_wrong_abi_plugins_are_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let base = |interface: &str| {
        format!(
            "state_dir: {state}
cloud: {{as: \"192.0.2.1:7301\", nms: \"192.0.2.1:7302\", key: \"cyphonic1:3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c\"}}
plugins:
  interface: \"{interface}\"
  crypto: [\"{crypto}\"]
control: {{socket: {sock}}}
",
            state = dir.path().join("state").display(),
            crypto = built("libcyphonic_aes_gcm.so").display(),
            sock = dir.path().join("ctl.sock").display(),
        )
    };
    let cases = [
        (
            dir.path().join("nope.so").display().to_string(),
            "nope.so",
            "cannot read plugin file",
        ),
        (
            built("libcyphonic_test_bad_abi_plugin.so")
                .display()
                .to_string(),
            "libcyphonic_test_bad_abi_plugin.so",
            "ABI",
        ),
    ];
    for (plugin, names, says) in cases {
        let config = dir.path().join("node.yaml");
        std::fs::write(&config, base(&plugin)).unwrap();
        let started = Instant::now();
        let out = Command::new(built("cyphonicd"))
            .arg("--config")
            .arg(&config)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{stderr}");
        assert!(stderr.contains(names) && stderr.contains(says), "{stderr}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }
    // Broken YAML names the line.
    let config = dir.path().join("broken.yaml");
    std::fs::write(&config, "cloud:\n  as: [\n").unwrap();
    let out = Command::new(built("cyphonicd"))
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("broken.yaml") && stderr.contains("line"),
        "{stderr}"
    );
}

fn wait_for_ok(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

/// A DNS server in `ns` on 198.51.100.1:53 that answers A www.example.com with
/// 192.0.2.55 and NXDOMAIN for everything else.
fn start_upstream(lab: &Lab, ns: &str) -> std::thread::JoinHandle<()> {
    lab.in_ns(ns, || {
        let socket = UdpSocket::bind("198.51.100.1:53").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(300);
        let mut buf = [0u8; 1500];
        while Instant::now() < deadline {
            let Ok((len, from)) = socket.recv_from(&mut buf) else {
                continue;
            };
            let Ok(query) = Message::from_vec(&buf[..len]) else {
                continue;
            };
            let mut answer = Message::new();
            answer
                .set_id(query.id())
                .set_message_type(MessageType::Response)
                .set_op_code(OpCode::Query)
                .set_recursion_desired(true)
                .set_recursion_available(true);
            answer.add_queries(query.queries().to_vec());
            match query.queries().first() {
                Some(q)
                    if q.name().to_ascii().trim_end_matches('.') == "www.example.com"
                        && q.query_type() == RecordType::A =>
                {
                    let rdata = RData::A(std::net::Ipv4Addr::from(UPSTREAM_ANSWER).into());
                    answer.add_answer(hickory_proto::rr::Record::from_rdata(
                        q.name().clone(),
                        60,
                        rdata,
                    ));
                }
                Some(q) if q.name().to_ascii().trim_end_matches('.') == "www.example.com" => {}
                _ => {
                    answer.set_response_code(ResponseCode::NXDomain);
                }
            }
            let _ = socket.send_to(&answer.to_vec().unwrap(), from);
        }
    })
}

/// Asks the resolver at `server`:53 from inside `ns`.
fn dns(lab: &Lab, ns: &str, server: IpAddr, name: &str, qtype: RecordType) -> Message {
    let name = Name::from_ascii(name).unwrap();
    lab.in_ns(ns, move || {
        let socket = UdpSocket::bind("0.0.0.0:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut query = Message::new();
        query
            .set_id(0x4242)
            .set_message_type(MessageType::Query)
            .set_op_code(OpCode::Query)
            .set_recursion_desired(true)
            .add_query(Query::query(name, qtype));
        socket
            .send_to(&query.to_vec().unwrap(), SocketAddr::new(server, 53))
            .unwrap();
        let mut buf = [0u8; 4096];
        let (len, _) = socket.recv_from(&mut buf).expect("no DNS answer");
        let answer = Message::from_vec(&buf[..len]).unwrap();
        assert_eq!(answer.id(), 0x4242);
        answer
    })
    .join()
    .unwrap()
}

/// Sends [`SECRET`] from `from_ns` to `to`:9999 over the overlay and checks it arrives.
fn send_secret(lab: &Lab, from_ns: &str, to_ns: &str, to: IpAddr) {
    let receiver = lab.in_ns(to_ns, move || {
        let socket = UdpSocket::bind(SocketAddr::new(to, 9999)).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut buf = [0u8; 256];
        let (len, _) = socket.recv_from(&mut buf).expect("secret not delivered");
        buf[..len].to_vec()
    });
    std::thread::sleep(Duration::from_millis(200));
    lab.in_ns(from_ns, move || {
        let socket = UdpSocket::bind("0.0.0.0:0").unwrap();
        for _ in 0..3 {
            socket.send_to(SECRET, SocketAddr::new(to, 9999)).unwrap();
        }
    })
    .join()
    .unwrap();
    assert_eq!(receiver.join().unwrap(), SECRET);
}
