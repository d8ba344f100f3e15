//! Two logged-in, running nodes on a [`Topology`], with the cloud on the internet
//! namespace: the fixture of the path, mobility and reload tests.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::net::IpAddr;

use super::fleet::{Cloud, Node, NodeOptions};
use super::topology::{CLOUD_V4, CLOUD_V6, HostId, Site, Topology};
use super::{Lab, run};

pub struct Pair {
    pub topo: Topology,
    pub a: Node,
    pub b: Node,
    pub hosts: [HostId; 2],
}

/// A cloud and two logged-in, running nodes at `sites` (the second may share the
/// first's router with `shared`).
pub fn pair(tag: &str, site_a: Site, site_b: Option<Site>, block: bool) -> Option<Pair> {
    pair_with(tag, site_a, site_b, block, NodeOptions::default())
}

pub fn pair_with(
    tag: &str,
    site_a: Site,
    site_b: Option<Site>,
    block: bool,
    b_options: NodeOptions,
) -> Option<Pair> {
    let lab = Lab::new(tag)?;
    let mut topo = Topology::new(lab);
    let ha = topo.add_host("a", site_a);
    let site_b = site_b.unwrap_or_else(|| {
        Site::SharedNat(
            topo.router_of(ha)
                .expect("the first node is behind a router"),
        )
    });
    let hb = topo.add_host("b", site_b);
    if block {
        topo.block_direct(ha, hb);
    }
    let cloud_ns = topo.cloud_ns.clone();
    let cloud = Cloud::new(&mut topo.lab, &cloud_ns, &CLOUD_V4.to_string());
    cloud.add_device("node-a");
    cloud.add_device("node-b");
    cloud.serve(&mut topo.lab);
    let mut nodes = Vec::new();
    let mut options = [NodeOptions::default(), b_options].into_iter();
    for (name, host) in [("node-a", ha), ("node-b", hb)] {
        // A node without IPv4 reaches the cloud over IPv6.
        let cloud_addr = if topo.host(host).v4.is_some() {
            CLOUD_V4.to_string()
        } else {
            format!("[{CLOUD_V6}]")
        };
        let view = Cloud {
            ns: cloud.ns.clone(),
            config: cloud.config.clone(),
            pin: cloud.pin.clone(),
            addr: cloud_addr.clone(),
        };
        let ns = topo.ns(host).to_owned();
        let upstream = cloud_addr.trim_matches(['[', ']']).to_owned();
        let node = Node::configure(
            &mut topo.lab,
            &view,
            name,
            &ns,
            &upstream,
            options.next().unwrap_or_default(),
        );
        nodes.push(node);
    }
    let b = nodes.pop().unwrap();
    let a = nodes.pop().unwrap();
    a.login(&topo.lab);
    b.login(&topo.lab);
    a.start(&mut topo.lab);
    b.start(&mut topo.lab);
    a.wait_running(&mut topo.lab);
    b.wait_running(&mut topo.lab);
    Some(Pair {
        topo,
        a,
        b,
        hosts: [ha, hb],
    })
}

impl Pair {
    /// Overlay probes from A to B succeed; returns A's view of B.
    pub fn reach(&self) -> serde_json::Value {
        let lab = &self.topo.lab;
        let (ok, report) = self.a.cli(lab, &["ping", "node-b", "-c", "3", "-i", "200"]);
        assert!(
            ok,
            "{report}\n--- node-a ---\n{}\n--- node-b ---\n{}",
            lab.log("node-a"),
            lab.log("node-b")
        );
        // Kernel traffic through both TUN devices as well.
        let vip: IpAddr = self.b.status(lab)["vip4"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        run(lab
            .cmd(&self.a.ns, "ping")
            .args(["-c", "3", "-i", "0.2", "-W", "2"])
            .arg(vip.to_string()));
        self.peer_b()
    }

    pub fn peer_b(&self) -> serde_json::Value {
        let (ok, peers) = self.a.cli(&self.topo.lab, &["peers"]);
        assert!(ok, "{peers}");
        peers["peers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["fqdn"] == "node-b.cyphonic")
            .cloned()
            .unwrap_or_else(|| panic!("node-b not among A's peers: {peers}"))
    }
}
