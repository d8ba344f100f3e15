//! Reconfiguring running nodes: YAML edits, a replaced DNS filter, a new crypto suite
//! list and a broken file, all while a TCP transfer runs through the overlay. Needs
//! root, iproute2, nftables, iperf3 (scripts/test.sh installs them).
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
    std::thread::sleep(Duration::from_millis(500));
    let mut client = p.topo.lab.cmd(&p.a.ns, "iperf3");
    client
        .args(["-c"])
        .arg(vip_b.to_string())
        .args(["-t", "14", "-J", "-b", "100M"]);
    p.topo.lab.spawn("iperf3-client", client);
    std::thread::sleep(Duration::from_secs(1));

    let last_reload = |p: &support::pair::Pair| p.a.status(&p.topo.lab)["last_reload"].clone();
    let applied = |r: &serde_json::Value, key: &str| {
        r["applied"]
            .as_array()
            .is_some_and(|a| a.iter().any(|k| k == key))
    };

    // Log level and keepalive apply live; an interface change needs a restart and is
    // refused, not half-applied.
    let config = p.a.config.clone();
    edit(&config, |t| {
        t.replace("log: debug", "log: info")
            .replace(
                "  listen_port: 7400",
                "  listen_port: 7400\n  keepalive_secs: 10",
            )
            .replace("  mtu: 1420", "  mtu: 1400")
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
            .any(|k| k.as_str().unwrap().starts_with("interface")),
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
        intervals.len() >= 13,
        "the transfer stopped early: {report}"
    );
    assert!(
        intervals
            .iter()
            .all(|i| i["sum"]["bytes"].as_u64().unwrap_or(0) > 0),
        "a second without traffic: {report}"
    );
    assert_eq!(p.a.counter(&p.topo.lab, "config_reload_failures"), 1);
    p.reach();
}
