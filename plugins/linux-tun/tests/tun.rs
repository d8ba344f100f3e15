//! End-to-end tests of the TUN plugin, each in a network namespace of its own: the
//! interface's configuration as `ip` sees it, packets both ways (UDP out of a socket,
//! ICMP and ICMPv6 echo answered by the kernel), `wake`, drops, removal on close; through
//! the statically linked header, the loaded `libcyphonic_linux_tun.so`, and the Rust type.
//!
//! They need root (CI runs them as root) and skip only when `/dev/net/tun` is missing.

// Network namespaces, TUN devices and netlink: Linux only.
#![cfg(target_os = "linux")]
#![allow(unsafe_code)]
// Helpers outside `#[test]` functions unwrap too; a panic is a test failure.
#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use cyphonic_linux_tun::LinuxTun;
use cyphonic_plugin_abi::{
    Packet, Plugin, PluginFailure, Status, VifHandle, VifPlugin, VifSettings, VirtualInterface,
};

const HEADROOM: usize = 48;
const SENTINEL: u8 = 0xa5;

#[test]
fn static_plugin_end_to_end() {
    if skip() {
        return;
    }
    let plugin = Plugin::from_static(cyphonic_linux_tun::plugin_header(), "static:linux-tun")
        .expect("the static header validates");
    exercise(
        &VifPlugin::new(plugin).expect("a virtual-interface plugin"),
        "static",
    );
}

#[test]
fn loaded_plugin_end_to_end() {
    if skip() {
        return;
    }
    let so = profile_dir().join("libcyphonic_linux_tun.so");
    let plugin = if so.is_file() {
        Plugin::load(&so).expect("load libcyphonic_linux_tun.so")
    } else {
        eprintln!(
            "{} is not built (build the workspace first); using the static header",
            so.display()
        );
        Plugin::from_static(cyphonic_linux_tun::plugin_header(), "static:linux-tun")
            .expect("the static header validates")
    };
    assert_eq!(plugin.name(), "linux-tun");
    exercise(
        &VifPlugin::new(plugin).expect("a virtual-interface plugin"),
        "dyn",
    );
}

/// The full life of one interface through the plugin ABI.
fn exercise(vif: &VifPlugin, tag: &str) {
    let ns = Netns::new(tag);
    let name = "cyphtest0";
    let settings = VifSettings {
        mtu: 1420,
        ifname: Some(name.into()),
        ipv4: Some((Ipv4Addr::new(100, 64, 7, 1), 24)),
        ipv6: Some(("fd00:7::1".parse().unwrap(), 64)),
        routes: vec![
            (IpAddr::V4(Ipv4Addr::new(100, 64, 8, 0)), 24),
            (IpAddr::V6("fd00:8::".parse().unwrap()), 64),
            // The connected prefix: skipped, the kernel already routes it.
            (IpAddr::V4(Ipv4Addr::new(100, 64, 7, 0)), 24),
        ],
        options: None,
    };
    ns.run(|| {
        // Otherwise the kernel sends router solicitations out of the interface at
        // random times; every read below must see only the test's traffic.
        std::fs::write("/proc/sys/net/ipv6/conf/default/accept_ra", "0")
            .expect("turn router solicitations off in the namespace");
        let handle = vif.open(&settings).expect("open the interface");
        let info = handle.info().expect("info");
        assert_eq!((info.ifname.as_str(), info.mtu), (name, 1420));
        let fd = handle
            .pollable_fd()
            .expect("pollable_fd")
            .expect("a descriptor");
        assert!(fd >= 0);

        let link = ns.ip(&["-d", "link", "show", "dev", name]);
        assert!(
            link.starts_with(&format!("{}: {name}:", info.ifindex)),
            "{link}"
        );
        for needle in ["mtu 1420", "qlen 1000", "UP", "tun type tun pi off"] {
            assert!(link.contains(needle), "`{needle}` missing from:\n{link}");
        }
        let addrs = ns.ip(&["addr", "show", "dev", name]);
        for needle in ["inet 100.64.7.1/24", "inet6 fd00:7::1/64"] {
            assert!(addrs.contains(needle), "`{needle}` missing from:\n{addrs}");
        }
        assert!(!addrs.contains("tentative"), "{addrs}");
        let routes4 = ns.ip(&["-4", "route", "show", "dev", name]);
        assert!(routes4.contains("100.64.8.0/24 proto static"), "{routes4}");
        assert!(routes4.contains("100.64.7.0/24 proto kernel"), "{routes4}");
        let routes6 = ns.ip(&["-6", "route", "show", "dev", name]);
        assert!(routes6.contains("fd00:8::/64 proto static"), "{routes6}");
        assert!(routes6.contains("fd00:7::/64 proto kernel"), "{routes6}");

        let io = AbiIo(&handle);
        udp_comes_out(&io);
        icmp_echo_round_trip(&io);
        icmpv6_echo_round_trip(&io);
        wake_unblocks_a_blocked_read(handle);
    });
    ns.assert_gone(name);
}

#[test]
fn direct_type_queue_length_option_drops_and_duplicates() {
    if skip() {
        return;
    }
    let ns = Netns::new("direct");
    let ifname = ns.run(|| {
        // No IPv6 on this interface, so the kernel sends nothing of its own out of it
        // (MLD, router solicitations) and every packet read below is ours.
        std::fs::write("/proc/sys/net/ipv6/conf/default/disable_ipv6", "1")
            .expect("disable IPv6 for new interfaces in the namespace");
        let settings = VifSettings {
            mtu: 1400,
            ifname: None,
            ipv4: Some((Ipv4Addr::new(100, 64, 9, 1), 24)),
            ipv6: None,
            routes: vec![(IpAddr::V4(Ipv4Addr::new(100, 64, 10, 77)), 24)],
            options: Some("# queue\ntxqueuelen=2000\n".into()),
        };
        let tun = LinuxTun::open(&settings).expect("open the interface");
        let info = tun.info().expect("info");
        assert!(info.ifname.starts_with("tun"), "{info:?}");
        assert_eq!(info.mtu, 1400);
        let link = ns.ip(&["-d", "link", "show", "dev", &info.ifname]);
        for needle in ["mtu 1400", "qlen 2000"] {
            assert!(link.contains(needle), "`{needle}` missing from:\n{link}");
        }
        let routes = ns.ip(&["-4", "route", "show", "dev", &info.ifname]);
        assert!(routes.contains("100.64.10.0/24"), "{routes}");

        // A name in use is refused; the first interface is untouched.
        let mut again = settings.clone();
        again.ifname = Some(info.ifname.clone());
        let err = LinuxTun::open(&again).expect_err("the name is taken");
        assert!(err.message().contains("exists"), "{err}");
        assert!(ns.ip(&["link", "show", "dev", &info.ifname]).contains("UP"));

        let io = DirectIo(&tun);
        // Longer than the slot's room: dropped and counted, the slot reused.
        let sock = UdpSocket::bind("0.0.0.0:0").unwrap();
        sock.send_to(&[7u8; 300], "100.64.10.5:9").unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while tun.stats().rx_dropped == 0 {
            assert!(
                Instant::now() < deadline,
                "the oversized packet never showed"
            );
            let got = read_some(&io, 100, 200);
            assert!(got.is_empty(), "an oversized packet came out: {got:?}");
        }
        assert_eq!(tun.stats().rx_dropped, 1);
        sock.send_to(b"small", "100.64.10.5:9").unwrap();
        let pkt = read_until(&io, "the small datagram", |p| {
            udp_payload(p) == Some(b"small")
        });
        assert_eq!(pkt.len(), 20 + 8 + 5);

        // Not IP: the kernel refuses it alone; it counts as written and dropped.
        let echo = ipv4_packet(
            Ipv4Addr::new(100, 64, 10, 5),
            Ipv4Addr::new(100, 64, 9, 1),
            1,
            &icmp_echo(8, 0x77, 3, b"after-garbage"),
        );
        assert_eq!(io.write(&[&[0u8; 40], &echo]), 2);
        assert_eq!(tun.stats().tx_dropped, 1);
        read_until(&io, "the echo reply after garbage", |p| {
            v4(p).is_some_and(|(proto, src, _, payload)| {
                proto == 1 && src == Ipv4Addr::new(100, 64, 9, 1) && payload[0] == 0
            })
        });

        // A wake while nobody reads makes the next read return nothing at once, even
        // with a packet queued; the read after that gets the packet.
        tun.wake().unwrap();
        sock.send_to(b"queued", "100.64.10.5:9").unwrap();
        std::thread::sleep(Duration::from_millis(50));
        let start = Instant::now();
        assert_eq!(read_some(&io, 1500, 5000).len(), 0);
        assert!(start.elapsed() < Duration::from_secs(1));
        read_until(&io, "the queued datagram", |p| {
            udp_payload(p) == Some(b"queued")
        });

        // Timeouts: 0 does not block, a positive timeout waits about that long.
        let start = Instant::now();
        assert!(read_some(&io, 1500, 0).is_empty());
        assert!(start.elapsed() < Duration::from_millis(100));
        let start = Instant::now();
        assert!(read_some(&io, 1500, 200).is_empty());
        let waited = start.elapsed();
        assert!(
            waited >= Duration::from_millis(190) && waited < Duration::from_secs(2),
            "{waited:?}"
        );

        // A slot without room cannot hold a packet.
        let mut buf = [0u8; 8];
        let mut slots = [Packet::empty(&mut buf, 8).unwrap()];
        let err = tun.read_batch(&mut slots, 0).expect_err("no room");
        assert_eq!(err.status(), Status::INVALID_ARGUMENT);

        drop(tun);
        info.ifname
    });
    ns.assert_gone(&ifname);
}

#[test]
fn bad_settings_fail_before_anything_is_created() {
    if skip() {
        return;
    }
    let plugin = Plugin::from_static(cyphonic_linux_tun::plugin_header(), "static:linux-tun")
        .expect("the static header validates");
    let vif = VifPlugin::new(plugin).unwrap();
    let ns = Netns::new("bad");
    let base = VifSettings {
        mtu: 1420,
        ifname: Some("cyphbad0".into()),
        ipv4: Some((Ipv4Addr::new(100, 64, 11, 1), 24)),
        ipv6: Some(("fd00:11::1".parse().unwrap(), 64)),
        routes: vec![],
        options: None,
    };
    type Case = (fn(&mut VifSettings), &'static str);
    let cases: [Case; 4] = [
        (
            |s| s.options = Some("txqueuelen=1000\nmultiqueue=1".into()),
            "`multiqueue`",
        ),
        (
            |s| s.options = Some("txqueuelen=many".into()),
            "`txqueuelen`",
        ),
        (
            |s| s.ifname = Some("much-too-long-name".into()),
            "at most 15 bytes",
        ),
        (|s| s.mtu = 1000, "IPv6"),
    ];
    ns.run(|| {
        for (edit, needle) in cases {
            let mut settings = base.clone();
            edit(&mut settings);
            let err = vif.open(&settings).expect_err("bad settings");
            assert_eq!(err.status(), Status::INVALID_ARGUMENT, "{err}");
            assert!(err.message().contains(needle), "{err}");
        }
        let links = ns.ip(&["-o", "link", "show"]);
        assert_eq!(links.lines().count(), 1, "only lo: {links}");
    });
}

// ---- the scenario's steps --------------------------------------------------------------

/// A datagram from a socket in the namespace, routed into the interface, comes out of
/// `read_batch` whole, after the slot's headroom.
fn udp_comes_out(io: &dyn Io) {
    let sock = UdpSocket::bind("0.0.0.0:0").unwrap();
    sock.send_to(b"hello-tun", "100.64.8.9:9").unwrap();
    let pkt = read_until(io, "the UDP datagram", |p| {
        udp_payload(p) == Some(b"hello-tun")
    });
    let (proto, src, dst, payload) = v4(&pkt).expect("an IPv4 packet");
    assert_eq!(proto, 17);
    assert_eq!(
        (src, dst),
        (Ipv4Addr::new(100, 64, 7, 1), Ipv4Addr::new(100, 64, 8, 9))
    );
    assert_eq!(
        u16::from_be_bytes([payload[2], payload[3]]),
        9,
        "destination port"
    );
    assert_eq!(checksum(&[&pkt[..20]]), 0, "IPv4 header checksum");
}

/// An echo request written to the interface from a routed peer address gets the kernel's
/// reply back out of it. The batch starts with a non-IP packet, which is dropped.
fn icmp_echo_round_trip(io: &dyn Io) {
    let (peer, local) = (Ipv4Addr::new(100, 64, 8, 9), Ipv4Addr::new(100, 64, 7, 1));
    let request = ipv4_packet(peer, local, 1, &icmp_echo(8, 0x1234, 1, b"cyphonic-ping"));
    assert_eq!(io.write(&[&[0u8; 20], &request]), 2);
    let reply = read_until(io, "the ICMP echo reply", |p| {
        v4(p).is_some_and(|(proto, src, dst, icmp)| {
            proto == 1 && src == local && dst == peer && icmp[0] == 0
        })
    });
    let (_, _, _, icmp) = v4(&reply).unwrap();
    assert_eq!(checksum(&[&reply[..20]]), 0, "IPv4 header checksum");
    assert_eq!(checksum(&[icmp]), 0, "ICMP checksum");
    assert_eq!(&icmp[4..8], &[0x12, 0x34, 0, 1], "identifier and sequence");
    assert_eq!(&icmp[8..], b"cyphonic-ping");
}

fn icmpv6_echo_round_trip(io: &dyn Io) {
    let peer: Ipv6Addr = "fd00:8::9".parse().unwrap();
    let local: Ipv6Addr = "fd00:7::1".parse().unwrap();
    let request = ipv6_echo(peer, local, 128, 0x4321, 2, b"cyphonic-ping6");
    assert_eq!(io.write(&[&request]), 1);
    let reply = read_until(io, "the ICMPv6 echo reply", |p| {
        v6(p).is_some_and(|(next, src, dst, icmp)| {
            next == 58 && src == local && dst == peer && icmp[0] == 129
        })
    });
    let (_, _, _, icmp) = v6(&reply).unwrap();
    let pseudo = v6_pseudo_header(local, peer, icmp.len());
    assert_eq!(checksum(&[&pseudo, icmp]), 0, "ICMPv6 checksum");
    assert_eq!(&icmp[4..8], &[0x43, 0x21, 0, 2], "identifier and sequence");
    assert_eq!(&icmp[8..], b"cyphonic-ping6");
}

/// `wake` from another thread ends a `read_batch(-1)`; the handle is dropped after.
fn wake_unblocks_a_blocked_read(handle: VifHandle) {
    let handle = Arc::new(handle);
    let (done_tx, done_rx) = mpsc::channel();
    let reader = {
        let handle = Arc::clone(&handle);
        std::thread::spawn(move || {
            let got = read_some(&AbiIo(&handle), 1500, -1);
            done_tx.send(got.len()).unwrap();
        })
    };
    std::thread::sleep(Duration::from_millis(150));
    handle.wake().unwrap();
    let got = done_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("wake did not end the blocked read_batch");
    assert_eq!(got, 0, "a woken read returns no packets");
    reader.join().unwrap();
    drop(Arc::into_inner(handle).expect("the reader let go of the handle"));
}

// ---- reading and writing -----------------------------------------------------------------

/// The plugin through the ABI or directly: the same tests for both.
trait Io {
    fn read(&self, pkts: &mut [Packet<'_>], timeout_ms: i32) -> Result<usize, String>;
    fn write_batch(&self, pkts: &[Packet<'_>]) -> Result<usize, String>;

    /// Writes `packets` (each behind some headroom) in one batch; returns how many were
    /// consumed.
    fn write(&self, packets: &[&[u8]]) -> usize {
        let mut bufs: Vec<Vec<u8>> = packets
            .iter()
            .map(|p| {
                let mut buf = vec![0xee; 16];
                buf.extend_from_slice(p);
                buf
            })
            .collect();
        let slots: Vec<Packet<'_>> = bufs
            .iter_mut()
            .map(|b| {
                let len = b.len() - 16;
                Packet::new(b, 16, len).unwrap()
            })
            .collect();
        self.write_batch(&slots).expect("write_batch")
    }
}

struct AbiIo<'a>(&'a VifHandle);

impl Io for AbiIo<'_> {
    fn read(&self, pkts: &mut [Packet<'_>], timeout_ms: i32) -> Result<usize, String> {
        self.0
            .read_batch(pkts, timeout_ms)
            .map_err(|e| e.to_string())
    }
    fn write_batch(&self, pkts: &[Packet<'_>]) -> Result<usize, String> {
        self.0.write_batch(pkts).map_err(|e| e.to_string())
    }
}

struct DirectIo<'a>(&'a LinuxTun);

impl Io for DirectIo<'_> {
    fn read(&self, pkts: &mut [Packet<'_>], timeout_ms: i32) -> Result<usize, String> {
        self.0
            .read_batch(pkts, timeout_ms)
            .map_err(|e: PluginFailure| e.to_string())
    }
    fn write_batch(&self, pkts: &[Packet<'_>]) -> Result<usize, String> {
        self.0.write_batch(pkts).map_err(|e| e.to_string())
    }
}

/// One `read_batch` into 8 slots with `room` bytes after [`HEADROOM`]; the packets read.
/// Checks that the headroom and the bytes past each packet are untouched.
fn read_some(io: &dyn Io, room: usize, timeout_ms: i32) -> Vec<Vec<u8>> {
    let mut bufs = vec![vec![SENTINEL; HEADROOM + room]; 8];
    let mut slots: Vec<Packet<'_>> = bufs
        .iter_mut()
        .map(|b| Packet::empty(b, HEADROOM).unwrap())
        .collect();
    let n = io.read(&mut slots, timeout_ms).expect("read_batch");
    assert!(n <= slots.len());
    let lens: Vec<usize> = slots.iter().map(Packet::len).collect();
    assert!(
        lens[n..].iter().all(|&l| l == 0),
        "lengths past the filled slots: {lens:?}"
    );
    drop(slots);
    bufs.iter()
        .zip(&lens)
        .take(n)
        .map(|(buf, &len)| {
            assert!(len > 0);
            assert!(
                buf[..HEADROOM].iter().all(|&b| b == SENTINEL),
                "headroom written"
            );
            assert!(
                buf[HEADROOM + len..].iter().all(|&b| b == SENTINEL),
                "tail written"
            );
            buf[HEADROOM..HEADROOM + len].to_vec()
        })
        .collect()
}

/// Reads until a packet matches `wanted` (others are skipped), for at most 5 seconds.
fn read_until(io: &dyn Io, what: &str, wanted: impl Fn(&[u8]) -> bool) -> Vec<u8> {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Some(pkt) = read_some(io, 1500, 200).into_iter().find(|p| wanted(p)) {
            return pkt;
        }
    }
    panic!("{what} did not come out of the interface within 5 s");
}

// ---- packets -----------------------------------------------------------------------------

/// The one's-complement checksum of the concatenated `parts` (each of even length but
/// the last); 0 when the parts include a correct checksum.
fn checksum(parts: &[&[u8]]) -> u16 {
    let bytes: Vec<u8> = parts.concat();
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn ipv4_packet(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, payload: &[u8]) -> Vec<u8> {
    let total = (20 + payload.len()) as u16;
    let mut pkt = vec![0x45, 0];
    pkt.extend_from_slice(&total.to_be_bytes());
    pkt.extend_from_slice(&[0, 1, 0x40, 0, 64, proto, 0, 0]); // id 1, DF, TTL 64
    pkt.extend_from_slice(&src.octets());
    pkt.extend_from_slice(&dst.octets());
    let sum = checksum(&[&pkt]);
    pkt[10..12].copy_from_slice(&sum.to_be_bytes());
    pkt.extend_from_slice(payload);
    pkt
}

fn icmp_echo(ty: u8, id: u16, seq: u16, data: &[u8]) -> Vec<u8> {
    let mut msg = vec![ty, 0, 0, 0];
    msg.extend_from_slice(&id.to_be_bytes());
    msg.extend_from_slice(&seq.to_be_bytes());
    msg.extend_from_slice(data);
    let sum = checksum(&[&msg]);
    msg[2..4].copy_from_slice(&sum.to_be_bytes());
    msg
}

fn v6_pseudo_header(src: Ipv6Addr, dst: Ipv6Addr, len: usize) -> Vec<u8> {
    let mut pseudo = Vec::with_capacity(40);
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&(len as u32).to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, 58]);
    pseudo
}

fn ipv6_echo(src: Ipv6Addr, dst: Ipv6Addr, ty: u8, id: u16, seq: u16, data: &[u8]) -> Vec<u8> {
    let mut icmp = vec![ty, 0, 0, 0];
    icmp.extend_from_slice(&id.to_be_bytes());
    icmp.extend_from_slice(&seq.to_be_bytes());
    icmp.extend_from_slice(data);
    let sum = checksum(&[&v6_pseudo_header(src, dst, icmp.len()), &icmp]);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    let mut pkt = vec![0x60, 0, 0, 0];
    pkt.extend_from_slice(&(icmp.len() as u16).to_be_bytes());
    pkt.extend_from_slice(&[58, 64]); // next header ICMPv6, hop limit
    pkt.extend_from_slice(&src.octets());
    pkt.extend_from_slice(&dst.octets());
    pkt.extend_from_slice(&icmp);
    pkt
}

/// (protocol, source, destination, payload) of a well-formed option-less IPv4 packet.
fn v4(pkt: &[u8]) -> Option<(u8, Ipv4Addr, Ipv4Addr, &[u8])> {
    if pkt.len() < 20 || pkt[0] != 0x45 {
        return None;
    }
    let total = usize::from(u16::from_be_bytes([pkt[2], pkt[3]]));
    if total != pkt.len() {
        return None;
    }
    let addr = |at: usize| Ipv4Addr::new(pkt[at], pkt[at + 1], pkt[at + 2], pkt[at + 3]);
    Some((pkt[9], addr(12), addr(16), &pkt[20..]))
}

/// (next header, source, destination, payload) of a well-formed IPv6 packet.
fn v6(pkt: &[u8]) -> Option<(u8, Ipv6Addr, Ipv6Addr, &[u8])> {
    if pkt.len() < 40 || pkt[0] >> 4 != 6 {
        return None;
    }
    if 40 + usize::from(u16::from_be_bytes([pkt[4], pkt[5]])) != pkt.len() {
        return None;
    }
    let addr = |at: usize| Ipv6Addr::from(<[u8; 16]>::try_from(&pkt[at..at + 16]).unwrap());
    Some((pkt[6], addr(8), addr(24), &pkt[40..]))
}

fn udp_payload(pkt: &[u8]) -> Option<&[u8]> {
    let (proto, _, _, udp) = v4(pkt)?;
    (proto == 17 && udp.len() >= 8).then(|| &udp[8..])
}

// ---- namespaces --------------------------------------------------------------------------

fn skip() -> bool {
    let missing = !Path::new("/dev/net/tun").exists();
    if missing {
        eprintln!("skipping: /dev/net/tun is missing");
    }
    missing
}

/// A network namespace for one test, deleted on drop (also when the test fails).
struct Netns {
    name: String,
}

impl Netns {
    fn new(tag: &str) -> Self {
        // Concurrent `ip netns add` can race on the first mount of /run/netns.
        static CREATE: Mutex<()> = Mutex::new(());
        let _serial = CREATE.lock().unwrap_or_else(|e| e.into_inner());
        let name = format!("cyph-tuntest-{}-{tag}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        let out = Command::new("ip")
            .args(["netns", "add", &name])
            .output()
            .expect("run ip netns add");
        assert!(
            out.status.success(),
            "ip netns add {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self { name }
    }

    /// Runs `f` on a thread that has entered the namespace (threads switch network
    /// namespace on their own); a panic in `f` fails the caller.
    fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = PathBuf::from("/run/netns").join(&self.name);
        std::thread::scope(|s| {
            s.spawn(|| {
                let file = std::fs::File::open(&path).expect("open the namespace file");
                // SAFETY: a valid namespace descriptor; only this thread switches.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
                f()
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// `ip args...` inside the namespace; its stdout. Fails the test if `ip` fails.
    fn ip(&self, args: &[&str]) -> String {
        let (ok, out) = self.try_ip(args);
        assert!(ok, "ip {args:?} failed: {out}");
        out
    }

    fn try_ip(&self, args: &[&str]) -> (bool, String) {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.name, "ip"])
            .args(args)
            .output()
            .expect("run ip netns exec");
        let text = if out.status.success() {
            out.stdout
        } else {
            out.stderr
        };
        (
            out.status.success(),
            String::from_utf8_lossy(&text).into_owned(),
        )
    }

    /// The interface, its addresses and its routes are gone.
    fn assert_gone(&self, name: &str) {
        let deadline = Instant::now() + Duration::from_secs(2);
        while self.try_ip(&["link", "show", "dev", name]).0 {
            assert!(Instant::now() < deadline, "{name} still exists after close");
            std::thread::sleep(Duration::from_millis(10));
        }
        let addrs = self.ip(&["addr", "show"]);
        assert!(
            !addrs.contains("100.64.") && !addrs.contains("fd00:"),
            "{addrs}"
        );
        let routes = self.ip(&["-4", "route", "show", "table", "all"]);
        assert!(!routes.contains("100.64."), "{routes}");
        let routes = self.ip(&["-6", "route", "show", "table", "all"]);
        assert!(!routes.contains("fd00:"), "{routes}");
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// `target/<profile>/`, where Cargo puts cdylibs; test executables live in its `deps/`.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable knows its path");
    let dir = exe.parent().expect("the executable is in a directory");
    if dir.file_name().is_some_and(|name| name == "deps") {
        dir.parent().expect("deps/ has a parent").to_path_buf()
    } else {
        dir.to_path_buf()
    }
}
