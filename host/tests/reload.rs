//! Reconfiguring running nodes: YAML edits, a replaced DNS filter, a new crypto suite
//! list and a broken file, all while a TCP transfer runs through the overlay. Needs
//! root, iproute2, nftables, iperf3 (scripts/test.sh installs them).

// Network namespaces, TUN devices and netlink: Linux only.
#![cfg(target_os = "linux")]
#![allow(clippy::unwrap_used)]

mod support;

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use support::pair::pair;
use support::topology::Site;
use support::wait_for;

const V4: Site = Site::Public {
    v4: true,
    v6: false,
};

/// Replaces a file the way editors do: write a new one beside it, rename over it.
fn save(path: &Path, content: &str) {
    let tmp = path.with_extension("swp");
    std::fs::write(&tmp, content).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn edit(path: &Path, f: impl FnOnce(String) -> String) {
    let old = std::fs::read_to_string(path).unwrap();
    let new = f(old.clone());
    assert_ne!(old, new, "the edit changed nothing");
    save(path, &new);
}

#[test]
fn a_running_node_reconfigures_without_dropping_its_tunnels() {
    let Some(mut p) = pair("rl", V4, Some(V4), false) else {
        return;
    };
    p.reach();
    assert_eq!(p.peer_b()["suite"], "aes-256-gcm");
    let vip_b: IpAddr = p.b.status(&p.topo.lab)["vip4"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let mut server = p.topo.lab.cmd(&p.b.ns, "iperf3");
    server.args(["-s", "-1", "-B"]).arg(vip_b.to_string());
    p.topo.lab.spawn("iperf3-server", server);
    p.topo.lab.wait_tcp_listen(&p.b.ns, 5201);
    let mut client = p.topo.lab.cmd(&p.a.ns, "iperf3");
    client
        .args(["-c"])
        .arg(vip_b.to_string())
        .args(["-t", "20", "-J", "-b", "100M"]);
    p.topo.lab.spawn("iperf3-client", client);
    std::thread::sleep(Duration::from_secs(1));

    let last_reload = |p: &support::pair::Pair| p.a.status(&p.topo.lab)["last_reload"].clone();
    let applied = |r: &serde_json::Value, key: &str| {
        r["applied"]
            .as_array()
            .is_some_and(|a| a.iter().any(|k| k == key))
    };

    // Log level and keepalive apply live; a new tunnel port needs a restart and is
    // refused, not half-applied.
    let config = p.a.config.clone();
    edit(&config, |t| {
        t.replace("log: debug", "log: info")
            .replace(
                "  listen_port: 7400",
                "  listen_port: 7400\n  keepalive_secs: 10",
            )
            .replace("  listen_port: 7400", "  listen_port: 7401")
    });
    let r = wait_for("log and keepalive applied", Duration::from_secs(10), || {
        let r = last_reload(&p);
        (applied(&r, "log") && applied(&r, "tunnel.keepalive_secs")).then_some(r)
    });
    assert!(
        r["refused"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k.as_str().unwrap().starts_with("tunnel.listen_port")),
        "{r}"
    );

    // A new DNS filter replaces the running one.
    let filter = p.a.dir.join("dns_filter.lua");
    edit(&filter, |t| {
        t.replacen("DENY = {", "DENY = {\n  \"blocked.reload.test\",", 1)
    });
    wait_for("the new filter", Duration::from_secs(10), || {
        applied(&last_reload(&p), "resolver.filter").then_some(())
    });
    // The restarted resolver still answers overlay names.
    support::run(
        p.topo
            .lab
            .cmd(&p.a.ns, "getent")
            .args(["ahosts", "node-b.cyphonic"]),
    );

    // Another suite: new handshakes negotiate it, the transfer goes on.
    edit(&config, |t| {
        t.replace("  suites: []", "  suites: [chacha20-poly1305]")
    });
    wait_for("the new suite", Duration::from_secs(15), || {
        (p.peer_b()["suite"] == "chacha20-poly1305").then_some(())
    });

    // Filters that escape the sandbox, loop or allocate without bound are refused by
    // the reload's scratch compile; the running filter stays.
    let good_filter = std::fs::read_to_string(&filter).unwrap();
    for (bad, says) in [
        ("os.execute(\"touch /tmp/cyphonic-escaped\")\n", "os"),
        ("while true do end\n", "budget"),
        (
            "local t = {} while true do t[#t + 1] = string.rep(\"x\", 4096) end\n",
            "memory",
        ),
        ("local f = io.open(\"/etc/passwd\")\n", "io"),
        ("require(\"os\")\n", "require"),
    ] {
        let failures = p.a.counter(&p.topo.lab, "config_reload_failures");
        save(&filter, &format!("{good_filter}\n{bad}"));
        let r = wait_for("the filter to be refused", Duration::from_secs(15), || {
            (p.a.counter(&p.topo.lab, "config_reload_failures") > failures).then(|| last_reload(&p))
        });
        let error = r["error"].as_str().unwrap_or_default().to_owned();
        assert!(
            error.contains("dns_filter.lua") && error.contains(says),
            "{bad}: {r}"
        );
    }
    assert!(!Path::new("/tmp/cyphonic-escaped").exists());
    save(&filter, &good_filter);

    // Another build of the interface plugin, under another name, with another MTU:
    // the interface is recreated and traffic resumes.
    let second = p.a.dir.join("libcyphonic_linux_tun_second.so");
    std::fs::copy(support::built("libcyphonic_linux_tun.so"), &second).unwrap();
    let first = support::built("libcyphonic_linux_tun.so")
        .display()
        .to_string();
    edit(&config, |t| {
        t.replace(&first, &second.display().to_string())
            .replace("  mtu: 1420", "  mtu: 1380")
    });
    let r = wait_for("the interface swap", Duration::from_secs(15), || {
        let r = last_reload(&p);
        applied(&r, "plugins.interface").then_some(r)
    });
    eprintln!("interface swap: {}", r["notes"]);
    let link = support::run(
        p.topo
            .lab
            .cmd(&p.a.ns, "ip")
            .args(["link", "show", "cyph0"]),
    );
    assert!(String::from_utf8_lossy(&link.stdout).contains("mtu 1380"));
    support::run(
        p.topo
            .lab
            .cmd(&p.a.ns, "ping")
            .args(["-c", "2", "-W", "2"])
            .arg(vip_b.to_string()),
    );

    // A broken file keeps the running configuration and says where it broke.
    edit(&config, |t| format!("{t}tunnel: [\n"));
    let r = wait_for("the error", Duration::from_secs(10), || {
        let r = last_reload(&p);
        r["error"].as_str().map(str::to_owned)
    });
    assert!(r.contains("node.yaml") && r.contains("line"), "{r}");
    assert_eq!(p.a.status(&p.topo.lab)["state"], "running");
    assert_eq!(p.peer_b()["suite"], "chacha20-poly1305");

    wait_for("the transfer to end", Duration::from_secs(30), || {
        (!p.topo.lab.alive("iperf3-client")).then_some(())
    });
    let report: serde_json::Value = serde_json::from_str(&p.topo.lab.log("iperf3-client"))
        .unwrap_or_else(|e| panic!("{e}: {}", p.topo.lab.log("iperf3-client")));
    assert!(report.get("error").is_none(), "{report}");
    let intervals = report["intervals"].as_array().unwrap();
    assert!(
        intervals.len() >= 19,
        "the transfer stopped early: {report}"
    );
    // The interface swap is the only moment without an interface; TCP retransmits
    // over it and goes on.
    let silent = intervals
        .iter()
        .filter(|i| i["sum"]["bytes"].as_u64().unwrap_or(0) == 0)
        .count();
    assert!(silent <= 1, "{silent} seconds without traffic: {report}");
    assert!(p.a.counter(&p.topo.lab, "config_reload_failures") >= 6);
    p.reach();
}

/// Not a test: the reload figures of docs/benchmarks.md. Run with
/// `cargo test -p cyphonic-host --release --test reload -- --ignored --nocapture`.
#[test]
#[ignore = "benchmark; run by hand"]
fn reload_benchmark() {
    let Some(p) = pair("rb", V4, Some(V4), false) else {
        return;
    };
    p.reach();
    let config = p.a.config.clone();
    let reloads = |p: &support::pair::Pair| p.a.counter(&p.topo.lab, "config_reloads");

    // Save -> new setting in effect, 20 times (keepalive alternating 10/11 s).
    let mut latencies = Vec::new();
    for i in 0..20 {
        let before = reloads(&p);
        let text = std::fs::read_to_string(&config).unwrap();
        let next = format!("  keepalive_secs: {}", 10 + (i % 2));
        let text = if text.contains("  keepalive_secs:") {
            text.lines()
                .map(|l| {
                    if l.starts_with("  keepalive_secs:") {
                        next.clone()
                    } else {
                        l.to_owned()
                    }
                })
                .collect::<Vec<_>>()
                .join("\n")
                + "\n"
        } else {
            text.replace(
                "  listen_port: 7400",
                &format!("  listen_port: 7400\n{next}"),
            )
        };
        let started = std::time::Instant::now();
        save(&config, &text);
        while reloads(&p) == before {
            std::thread::sleep(Duration::from_millis(5));
        }
        latencies.push(started.elapsed());
    }
    latencies.sort();
    eprintln!(
        "save -> in effect: median {:?} (min {:?}, max {:?}; includes the 300 ms quiet period and ~10 ms of CLI polling)",
        latencies[10], latencies[0], latencies[19]
    );

    // Interface swap gap, 5 times (MTU alternating).
    let mut gaps = Vec::new();
    for i in 0..5 {
        let before = reloads(&p);
        let mtu = if i % 2 == 0 { "1380" } else { "1420" };
        let text = std::fs::read_to_string(&config).unwrap();
        let text = text
            .lines()
            .map(|l| {
                if l.starts_with("  mtu:") {
                    format!("  mtu: {mtu}")
                } else {
                    l.to_owned()
                }
            })
            .collect::<Vec<_>>()
            .join("\n")
            + "\n";
        save(&config, &text);
        let r = wait_for("the swap", Duration::from_secs(10), || {
            (reloads(&p) > before).then(|| p.a.status(&p.topo.lab)["last_reload"].clone())
        });
        gaps.push(r["notes"].to_string());
    }
    eprintln!("interface swap: {gaps:?}");

    // DNS filter cost: queries per second for the node's own name (answered locally
    // after the filter), with the shipped filter and with a one-line filter.
    let vip_a: std::net::IpAddr = p.a.status(&p.topo.lab)["vip4"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let qps = |p: &support::pair::Pair| {
        p.topo
            .lab
            .in_ns(&p.a.ns, move || {
                use hickory_proto::op::{Message, MessageType, OpCode, Query};
                use hickory_proto::rr::{Name, RecordType};
                let socket = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
                socket
                    .set_read_timeout(Some(Duration::from_secs(2)))
                    .unwrap();
                socket.connect((vip_a, 53)).unwrap();
                let mut q = Message::new();
                q.set_id(7)
                    .set_message_type(MessageType::Query)
                    .set_op_code(OpCode::Query)
                    .add_query(Query::query(
                        Name::from_ascii("node-a.cyphonic.").unwrap(),
                        RecordType::A,
                    ));
                let bytes = q.to_vec().unwrap();
                let mut buf = [0u8; 512];
                let n = 3000;
                let started = std::time::Instant::now();
                for _ in 0..n {
                    socket.send(&bytes).unwrap();
                    socket.recv(&mut buf).unwrap();
                }
                n as f64 / started.elapsed().as_secs_f64()
            })
            .join()
            .unwrap()
    };
    let shipped = qps(&p);
    let filter = p.a.dir.join("dns_filter.lua");
    let before = reloads(&p);
    save(
        &filter,
        "function filter(name, qtype, ctx)\n  return \"overlay\"\nend\n",
    );
    wait_for("the minimal filter", Duration::from_secs(10), || {
        (reloads(&p) > before).then_some(())
    });
    std::thread::sleep(Duration::from_millis(300));
    let minimal = qps(&p);
    eprintln!(
        "resolver: {shipped:.0} queries/s with the shipped filter, {minimal:.0} with a one-line filter (sequential, one client)"
    );
}
