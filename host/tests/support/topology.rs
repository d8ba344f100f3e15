//! Test topologies for NAT traversal, relay, address-family interop and mobility: an
//! "internet" namespace whose bridge carries the public underlay, the cloud and a second
//! TRS host on it, and nodes either directly on it or behind router namespaces doing NAPT
//! with nftables. Owns the address plan, the NAT and firewall rules, node moves and the
//! rules that block the direct path between two nodes.
//!
//! Address plan (TEST-NET and 2001:db8::/32 only; the internet namespace has no uplink):
//! - internet bridge `br0`: 203.0.113.0/24 and 2001:db8:ff::/64; the internet namespace
//!   itself is the gateway at 203.0.113.254 / 2001:db8:ff::254 and routes the routers'
//!   IPv6 prefixes; cloud 203.0.113.1 / 2001:db8:ff::1, second TRS 203.0.113.2 /
//!   2001:db8:ff::2; public nodes and router WANs get 203.0.113.n / 2001:db8:ff::n for
//!   n = 10, 11, … (the IPv6 address spells n in the same digits).
//! - router r (0-based): IPv4 LAN 192.0.2.16r/28 for r < 16, then 198.51.100.16(r-16)/28,
//!   router at .1 of it, nodes from .2; IPv6 LAN 2001:db8:<r+1 in hex>::/64, router ::1,
//!   nodes ::2…
//!
//! NAT: IPv4 only. Behind a router IPv6 is routed, not translated (no NAT66): a node's
//! IPv6 address is public, but the router keeps a stateful firewall (RFC 6092 style:
//! inbound TCP/UDP only for conntrack-established flows), so IPv6 between routed nodes
//! still needs a simultaneous punch, which always works because ports are preserved.
//! `NatKind` therefore only changes IPv4 behaviour.
//!
//! Every router drops new inbound TCP/UDP on its WAN in `input` too, so an early punch
//! packet that reaches a NAT before its own node has sent does not leave a conntrack
//! entry behind that would make the NAT pick another port for the node's own packet.
#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::process::{Command, Stdio};

use super::Lab;

pub const GATEWAY_V4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 254);
pub const GATEWAY_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xff, 0, 0, 0, 0, 0x254);
pub const CLOUD_V4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
pub const CLOUD_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xff, 0, 0, 0, 0, 1);
pub const TRS2_V4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);
pub const TRS2_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xff, 0, 0, 0, 0, 2);

/// How a router maps a node's IPv4 flows (RFC 4787 terms). Filtering is conntrack's in
/// both: address-and-port-dependent, so a peer gets in only after the node sent to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NatKind {
    /// Endpoint-independent mapping: `masquerade` keeps the source port and reuses it
    /// for every destination. Punchable.
    Cone,
    /// Address-and-port-dependent mapping: `masquerade fully-random`, a new random port
    /// per destination. Not punchable.
    Symmetric,
}

/// Where a node's underlay link goes. The families say which of IPv4 and IPv6 the node
/// has at all: a family it lacks has neither an address nor a default route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Site {
    /// On the internet bridge with public addresses.
    Public { v4: bool, v6: bool },
    /// Behind a new router of its own.
    Nat { kind: NatKind, v4: bool, v6: bool },
    /// Behind an existing router, on its LAN, with the router's families.
    SharedNat(RouterId),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HostId(pub usize);

/// Routers are numbered in creation order from 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RouterId(pub usize);

#[derive(Debug)]
pub struct Host {
    pub name: String,
    pub ns: String,
    /// The underlay device inside `ns`: `eth0`, then `eth1`, … after each move.
    pub dev: String,
    /// `None`: on the internet bridge.
    pub router: Option<RouterId>,
    /// The node's own addresses (public, or LAN / routed behind a router).
    pub v4: Option<Ipv4Addr>,
    pub v6: Option<Ipv6Addr>,
    /// The bridge port of its link: in the internet namespace or the router's.
    port: String,
    moves: u32,
}

#[derive(Debug)]
pub struct Router {
    pub ns: String,
    pub kind: NatKind,
    /// WAN addresses on the internet bridge.
    pub wan_v4: Option<Ipv4Addr>,
    pub wan_v6: Option<Ipv6Addr>,
    /// LAN gateway addresses (prefixes /28 and /64).
    pub lan_v4: Option<Ipv4Addr>,
    pub lan_v6: Option<Ipv6Addr>,
    next_host: u8,
}

/// The lab plus everything on it. Dropping it drops the lab: namespaces (with their
/// links and nftables tables) and processes go away.
pub struct Topology {
    pub lab: Lab,
    pub internet_ns: String,
    pub cloud_ns: String,
    /// Namespace for a second `cyphonic-cloud serve --only trs`.
    pub trs_ns: String,
    hosts: Vec<Host>,
    routers: Vec<Router>,
    blocked: Vec<(HostId, HostId)>,
    next_public: u8,
}

impl Topology {
    /// The internet namespace with its bridge, the cloud's and the second TRS host's
    /// namespaces on it. Panics if `nft` is missing.
    pub fn new(mut lab: Lab) -> Self {
        require_nft();
        let internet_ns = netns(&mut lab, "inet");
        let cloud_ns = netns(&mut lab, "cloud");
        let trs_ns = netns(&mut lab, "trs");
        lab.bridge(
            &internet_ns,
            "br0",
            &[&format!("{GATEWAY_V4}/24"), &format!("{GATEWAY_V6}/64")],
        );
        forwarding(&lab, &internet_ns);
        let t = Self {
            lab,
            internet_ns,
            cloud_ns,
            trs_ns,
            hosts: Vec::new(),
            routers: Vec::new(),
            blocked: Vec::new(),
            next_public: 10,
        };
        for (ns, port, v4, v6) in [
            (t.cloud_ns.clone(), "cloud", CLOUD_V4, CLOUD_V6),
            (t.trs_ns.clone(), "trs", TRS2_V4, TRS2_V6),
        ] {
            t.attach_public(&ns, port, "eth0", Some(v4), Some(v6));
        }
        t.write_blocks();
        t
    }

    /// Adds a node namespace at `site`.
    pub fn add_host(&mut self, name: &str, site: Site) -> HostId {
        let id = HostId(self.hosts.len());
        let clean: String = name.chars().filter(char::is_ascii_alphanumeric).collect();
        let ns = netns(&mut self.lab, &format!("h{}{clean}", id.0));
        self.hosts.push(Host {
            name: name.to_owned(),
            ns,
            dev: String::new(),
            router: None,
            v4: None,
            v6: None,
            port: String::new(),
            moves: 0,
        });
        self.attach(id, site);
        self.write_blocks();
        id
    }

    /// A router on the internet with the given families, without nodes yet.
    pub fn add_router(&mut self, kind: NatKind, v4: bool, v6: bool) -> RouterId {
        assert!(v4 || v6, "a router needs IPv4 or IPv6");
        let id = RouterId(self.routers.len());
        let r = id.0;
        assert!(r < 32, "the address plan has room for 32 routers");
        let ns = netns(&mut self.lab, &format!("r{r}"));
        let (wan_v4, wan_v6) = self.next_public(v4, v6);
        let internet_ns = self.internet_ns.clone();
        self.lab
            .link(&internet_ns, &format!("r{r}"), &ns, "wan", Some("br0"));
        self.lab.bridge(&ns, "lan", &[]);
        let lan_v4 = v4.then(|| lan_v4_base(id) + 1).map(Ipv4Addr::from);
        let lan_v6 = v6.then(|| lan_v6_addr(id, 1));
        if let Some(a) = wan_v4 {
            self.lab.add_addr(&ns, "wan", &format!("{a}/24"));
            self.lab.ip(
                &ns,
                &["route", "add", "default", "via", &GATEWAY_V4.to_string()],
            );
        }
        if let Some(a) = lan_v4 {
            self.lab.add_addr(&ns, "lan", &format!("{a}/28"));
        }
        if let (Some(wan), Some(lan)) = (wan_v6, lan_v6) {
            self.lab.add_addr(&ns, "wan", &format!("{wan}/64"));
            self.lab.add_addr(&ns, "lan", &format!("{lan}/64"));
            self.lab.ip(
                &ns,
                &[
                    "-6",
                    "route",
                    "add",
                    "default",
                    "via",
                    &GATEWAY_V6.to_string(),
                ],
            );
            self.lab.ip(
                &internet_ns,
                &[
                    "-6",
                    "route",
                    "add",
                    &format!("{}/64", lan_v6_addr(id, 0)),
                    "via",
                    &wan.to_string(),
                ],
            );
        } else {
            no_ipv6(&self.lab, &ns, "wan");
            no_ipv6(&self.lab, &ns, "lan");
        }
        forwarding(&self.lab, &ns);
        let masquerade = match kind {
            NatKind::Cone => "masquerade",
            NatKind::Symmetric => "masquerade fully-random",
        };
        nft(
            &self.lab,
            &ns,
            &format!(
                "table ip nat {{
  chain post {{
    type nat hook postrouting priority srcnat; policy accept;
    oifname \"wan\" {masquerade}
  }}
}}
table inet firewall {{
  chain input {{
    type filter hook input priority filter; policy accept;
    iifname \"wan\" ct state new meta l4proto {{ tcp, udp }} drop
  }}
  chain forward {{
    type filter hook forward priority filter; policy accept;
    iifname \"wan\" ct state established,related accept
    iifname \"wan\" meta l4proto {{ tcp, udp }} drop
  }}
}}
"
            ),
        );
        self.routers.push(Router {
            ns,
            kind,
            wan_v4,
            wan_v6,
            lan_v4,
            lan_v6,
            next_host: 2,
        });
        self.write_blocks();
        id
    }

    pub fn host(&self, id: HostId) -> &Host {
        &self.hosts[id.0]
    }

    pub fn router(&self, id: RouterId) -> &Router {
        &self.routers[id.0]
    }

    /// The router `id` sits behind, if any.
    pub fn router_of(&self, id: HostId) -> Option<RouterId> {
        self.hosts[id.0].router
    }

    /// The node's namespace.
    pub fn ns(&self, id: HostId) -> &str {
        &self.hosts[id.0].ns
    }

    /// The IPv4 address the internet sees the node's packets from: its own when public,
    /// its router's WAN address when behind a NAT.
    pub fn external_v4(&self, id: HostId) -> Option<Ipv4Addr> {
        let h = &self.hosts[id.0];
        h.v4?;
        match h.router {
            None => h.v4,
            Some(r) => self.routers[r.0].wan_v4,
        }
    }

    /// The IPv6 address the internet sees: always the node's own (no NAT66).
    pub fn external_v6(&self, id: HostId) -> Option<Ipv6Addr> {
        self.hosts[id.0].v6
    }

    /// Moves the node's underlay to `to`, make before break: a new link (`eth<n>`) with
    /// fresh addresses comes up, default routes switch to it, then the old link is
    /// deleted. Moving to the node's current kind of site re-addresses it (a `Nat` site
    /// is always a new router; `SharedNat` of its current router keeps the router).
    pub fn move_node(&mut self, id: HostId, to: Site) {
        let old_dev = self.hosts[id.0].dev.clone();
        let ns = self.hosts[id.0].ns.clone();
        self.hosts[id.0].moves += 1;
        self.attach(id, to);
        self.lab.ip(&ns, &["link", "del", &old_dev]);
        self.write_blocks();
    }

    /// Drops UDP between `a` and `b` on the direct path (their own and external
    /// addresses, either direction), at the bridge port where each one's link enters its
    /// segment, so the daemons see loss, not send errors. Traffic to the cloud or a TRS
    /// is untouched. The block follows the nodes when they move. Behind a NAT the
    /// external IPv4 address is the router's: traffic from the other node to further
    /// nodes behind the same NAT is blocked too.
    pub fn block_direct(&mut self, a: HostId, b: HostId) {
        let pair = (a.min(b), a.max(b));
        if !self.blocked.contains(&pair) {
            self.blocked.push(pair);
        }
        self.write_blocks();
    }

    pub fn unblock_direct(&mut self, a: HostId, b: HostId) {
        let pair = (a.min(b), a.max(b));
        self.blocked.retain(|p| *p != pair);
        self.write_blocks();
    }

    /// Links `id` to `site`, as device `eth<moves>`, with addresses and default routes.
    fn attach(&mut self, id: HostId, site: Site) {
        let router = match site {
            Site::Public { v4, v6 } => {
                assert!(v4 || v6, "a node needs IPv4 or IPv6");
                None
            }
            Site::Nat { kind, v4, v6 } => Some(self.add_router(kind, v4, v6)),
            Site::SharedNat(r) => Some(r),
        };
        let ns = self.hosts[id.0].ns.clone();
        let dev = format!("eth{}", self.hosts[id.0].moves);
        let port = format!("h{}m{}", id.0, self.hosts[id.0].moves);
        let (v4, v6) = match (site, router) {
            (Site::Public { v4, v6 }, _) => {
                let (a4, a6) = self.next_public(v4, v6);
                self.attach_public(&ns, &port, &dev, a4, a6);
                (a4, a6)
            }
            (_, Some(r)) => self.attach_lan(r, &ns, &port, &dev),
            (_, None) => unreachable!("a NAT site always has a router"),
        };
        let h = &mut self.hosts[id.0];
        h.dev = dev;
        h.port = port;
        h.router = router;
        h.v4 = v4;
        h.v6 = v6;
    }

    /// A link from `ns` to the internet bridge with the given public addresses and
    /// default routes through the internet gateway.
    fn attach_public(
        &self,
        ns: &str,
        port: &str,
        dev: &str,
        v4: Option<Ipv4Addr>,
        v6: Option<Ipv6Addr>,
    ) {
        self.lab.link(&self.internet_ns, port, ns, dev, Some("br0"));
        self.address(
            ns,
            dev,
            v4.map(|a| (a, 24, GATEWAY_V4)),
            v6.map(|a| (a, GATEWAY_V6)),
        );
    }

    fn attach_lan(
        &mut self,
        r: RouterId,
        ns: &str,
        port: &str,
        dev: &str,
    ) -> (Option<Ipv4Addr>, Option<Ipv6Addr>) {
        let router = &mut self.routers[r.0];
        let n = router.next_host;
        assert!(n <= 14, "router {r:?} has no LAN addresses left");
        router.next_host += 1;
        let v4 = router
            .lan_v4
            .map(|gw| (Ipv4Addr::from(lan_v4_base(r) + u32::from(n)), 28, gw));
        let v6 = router.lan_v6.map(|gw| (lan_v6_addr(r, n.into()), gw));
        let router_ns = router.ns.clone();
        self.lab.link(&router_ns, port, ns, dev, Some("lan"));
        self.address(ns, dev, v4, v6);
        (v4.map(|(a, _, _)| a), v6.map(|(a, _)| a))
    }

    /// Addresses `dev` and points the default routes through it; a family left out
    /// gets nothing, and IPv6 is switched off on the device.
    fn address(
        &self,
        ns: &str,
        dev: &str,
        v4: Option<(Ipv4Addr, u8, Ipv4Addr)>,
        v6: Option<(Ipv6Addr, Ipv6Addr)>,
    ) {
        if let Some((a, len, gw)) = v4 {
            self.lab.add_addr(ns, dev, &format!("{a}/{len}"));
            self.lab.ip(
                ns,
                &[
                    "route",
                    "replace",
                    "default",
                    "via",
                    &gw.to_string(),
                    "dev",
                    dev,
                ],
            );
        }
        match v6 {
            Some((a, gw)) => {
                self.lab.add_addr(ns, dev, &format!("{a}/64"));
                self.lab.ip(
                    ns,
                    &[
                        "-6",
                        "route",
                        "replace",
                        "default",
                        "via",
                        &gw.to_string(),
                        "dev",
                        dev,
                    ],
                );
            }
            None => no_ipv6(&self.lab, ns, dev),
        }
    }

    fn next_public(&mut self, v4: bool, v6: bool) -> (Option<Ipv4Addr>, Option<Ipv6Addr>) {
        let n = self.next_public;
        assert!(n < 254, "the internet bridge is full");
        self.next_public += 1;
        let v6_addr: Ipv6Addr = format!("2001:db8:ff::{n}")
            .parse()
            .expect("decimal digits are hex digits");
        (
            v4.then(|| Ipv4Addr::new(203, 0, 113, n)),
            v6.then_some(v6_addr),
        )
    }

    /// Rewrites the `bridge cyblock` table of the internet namespace and of every router
    /// from `blocked` and the nodes' current addresses.
    fn write_blocks(&self) {
        let mut rules: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        rules.insert(&self.internet_ns, Vec::new());
        for r in &self.routers {
            rules.insert(&r.ns, Vec::new());
        }
        for &(a, b) in &self.blocked {
            for (from, to) in [(a, b), (b, a)] {
                let h = &self.hosts[from.0];
                let ns = match h.router {
                    None => self.internet_ns.as_str(),
                    Some(r) => self.routers[r.0].ns.as_str(),
                };
                let peer = &self.hosts[to.0];
                let mut v4: Vec<IpAddr> = Vec::new();
                v4.extend(peer.v4.map(IpAddr::V4));
                v4.extend(self.external_v4(to).map(IpAddr::V4));
                let v6: Vec<IpAddr> = peer.v6.map(IpAddr::V6).into_iter().collect();
                for (family, addrs) in [("ip", v4), ("ip6", v6)] {
                    if addrs.is_empty() {
                        continue;
                    }
                    let set: Vec<String> = addrs.iter().map(IpAddr::to_string).collect();
                    rules.entry(ns).or_default().push(format!(
                        "    iifname \"{}\" {family} daddr {{ {} }} meta l4proto udp drop",
                        h.port,
                        set.join(", ")
                    ));
                }
            }
        }
        for (ns, rules) in rules {
            nft(
                &self.lab,
                ns,
                &format!(
                    "table bridge cyblock
delete table bridge cyblock
table bridge cyblock {{
  chain prerouting {{
    type filter hook prerouting priority -200; policy accept;
{}
  }}
}}
",
                    rules.join("\n")
                ),
            );
        }
    }
}

fn lan_v4_base(r: RouterId) -> u32 {
    let (net, i) = if r.0 < 16 {
        ([192, 0, 2, 0], r.0)
    } else {
        ([198, 51, 100, 0], r.0 - 16)
    };
    u32::from(Ipv4Addr::from(net)) + 16 * i as u32
}

fn lan_v6_addr(r: RouterId, host: u16) -> Ipv6Addr {
    let net = u16::try_from(r.0 + 1).expect("at most 32 routers");
    Ipv6Addr::new(0x2001, 0xdb8, net, 0, 0, 0, 0, host)
}

fn require_nft() {
    let ok = Command::new("nft")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "`nft` is required for the topology tests: install the Debian package nftables \
         (scripts/test.sh does)"
    );
}

/// Loads an nftables script into `ns`, atomically.
fn nft(lab: &Lab, ns: &str, script: &str) {
    let mut child = lab
        .cmd(ns, "nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("nft in {ns}: {e}"));
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(script.as_bytes())
        .expect("nft script");
    let out = child.wait_with_output().expect("nft");
    assert!(
        out.status.success(),
        "nft in {ns} failed: {}\n{script}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A namespace whose links skip IPv6 duplicate address detection: while a link-local
/// address is tentative the kernel sends no neighbour solicitation for forwarded
/// packets, which would stall the first packets through a router for a second.
fn netns(lab: &mut Lab, suffix: &str) -> String {
    let ns = lab.netns(suffix);
    sysctl(lab, &ns, "net/ipv6/conf/all/accept_dad", "0");
    sysctl(lab, &ns, "net/ipv6/conf/default/accept_dad", "0");
    ns
}

fn forwarding(lab: &Lab, ns: &str) {
    sysctl(lab, ns, "net/ipv4/ip_forward", "1");
    sysctl(lab, ns, "net/ipv6/conf/all/forwarding", "1");
}

fn no_ipv6(lab: &Lab, ns: &str, dev: &str) {
    sysctl(lab, ns, &format!("net/ipv6/conf/{dev}/disable_ipv6"), "1");
}

/// Writes `/proc/sys/<key>` from a thread inside `ns` (net sysctls are per namespace).
fn sysctl(lab: &Lab, ns: &str, key: &str, value: &str) {
    let path = format!("/proc/sys/{key}");
    let value = value.to_owned();
    lab.in_ns(ns, move || {
        std::fs::write(&path, value).map_err(|e| format!("{path}: {e}"))
    })
    .join()
    .expect("sysctl thread")
    .unwrap_or_else(|e| panic!("sysctl in {ns}: {e}"));
}
