//! The virtual-interface contract, run against each built plugin file (loaded by absolute
//! path with `Plugin::load`) inside a fresh network namespace: configuration as asked and
//! as the kernel sees it, an idle interface reads nothing, `wake` ends a blocked read, an
//! echo request written to the interface's own address is answered through it, garbage
//! writes do no harm, bad settings are refused by the plugin itself, closing removes the
//! interface. The namespace tests need root and skip (saying so) without it.

// Network namespaces, TUN devices and netlink: Linux only.
#![cfg(target_os = "linux")]
// `poll` on the plugin's descriptor.
#![allow(unsafe_code)]
// The checks are shared helpers rather than `#[test]` functions; a failed unwrap in
// them is a failed test all the same.
#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, Mutex, MutexGuard, mpsc};
use std::time::{Duration, Instant};

use cyphonic_plugin_abi::{
    Packet, Plugin, PluginError, PluginKind, Status, VifHandle, VifPlugin, VifSettings,
};
use cyphonic_plugin_conformance::c_host::{self, OpenAnswer};
use cyphonic_plugin_conformance::netns::{Netns, skip_unless_root};
use cyphonic_plugin_conformance::{BROKEN_VIF, LINUX_TUN, PluginArtifact, UDP_VIF, assert_covered};

const IFNAME: &str = "cyphconf0";
const MTU: u32 = 1400;
/// The interface's own address, in a /24.
const LOCAL: Ipv4Addr = Ipv4Addr::new(100, 64, 77, 1);
/// A peer behind the interface: in the routed prefix below, so replies go back into it.
const PEER: Ipv4Addr = Ipv4Addr::new(100, 64, 78, 9);
const ROUTED: (Ipv4Addr, u8) = (Ipv4Addr::new(100, 64, 78, 0), 24);
const HEADROOM: usize = 48;
const SENTINEL: u8 = 0xa5;
/// An option no plugin knows.
const UNKNOWN_OPTION: &str = "cyphonic_conformance_unknown_option=1";

/// One plugin under test: the file, and what it must say about itself.
struct Subject {
    artifact: PluginArtifact,
    name: &'static str,
}

impl Subject {
    fn dynamic(&self) -> VifPlugin {
        let path = self.artifact.locate();
        let plugin = Plugin::load(&path).unwrap_or_else(|e| panic!("{e}"));
        VifPlugin::new(plugin).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }
}

macro_rules! vif_plugin_conformance {
    ($module:ident: $subject:expr) => {
        mod $module {
            use super::*;

            const SUBJECT: Subject = $subject;

            #[test]
            fn loads_as_a_virtual_interface() {
                let _serial = serial();
                super::loads_as_a_virtual_interface(&SUBJECT);
            }

            #[test]
            fn configures_exchanges_packets_and_closes() {
                let _serial = serial();
                if skip_unless_root(concat!(stringify!($module), ": the vif contract")) {
                    return;
                }
                super::configures_exchanges_packets_and_closes(&SUBJECT, stringify!($module));
            }

            #[test]
            fn refuses_bad_settings() {
                let _serial = serial();
                if skip_unless_root(concat!(stringify!($module), ": bad vif settings")) {
                    return;
                }
                super::refuses_bad_settings(&SUBJECT, stringify!($module));
            }
        }
    };
}

vif_plugin_conformance!(linux_tun: Subject {
    artifact: LINUX_TUN,
    name: "linux-tun",
});

/// Every virtual-interface plugin file in the target directory is one this file tests
/// (or a known broken fixture, which the containment tests use), so a new interface
/// plugin cannot ship without conformance coverage.
#[test]
fn every_built_vif_plugin_is_covered() {
    let _serial = serial();
    assert_covered(
        PluginKind::VirtualInterface,
        &[LINUX_TUN],
        &[BROKEN_VIF, UDP_VIF],
    );
}

/// The tests of this file one at a time: they count the process's descriptors.
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn loads_as_a_virtual_interface(subject: &Subject) {
    let vif = subject.dynamic();
    let plugin = vif.plugin();
    assert!(plugin.path().is_absolute());
    assert_eq!(plugin.kind(), PluginKind::VirtualInterface);
    assert_eq!(plugin.name(), subject.name);
    assert_eq!(plugin.version(), env!("CARGO_PKG_VERSION"));
    assert_eq!((plugin.abi().major, plugin.abi().minor), (1, 0));
}

fn settings() -> VifSettings {
    VifSettings {
        mtu: MTU,
        ifname: Some(IFNAME.into()),
        ipv4: Some((LOCAL, 24)),
        ipv6: None,
        routes: vec![(IpAddr::V4(ROUTED.0), ROUTED.1)],
        options: None,
    }
}

/// The whole life of one interface.
fn configures_exchanges_packets_and_closes(subject: &Subject, tag: &str) {
    let vif = subject.dynamic();
    let ns = Netns::new(&format!("vif-{tag}"));
    ns.run(|| {
        // No IPv6 in the namespace: the kernel then sends nothing of its own out of the
        // interface (router solicitations, MLD), so an idle interface is really idle.
        ns.sysctl("net/ipv6/conf/default/disable_ipv6", "1");
        let fds_before = open_descriptors();
        let handle = Arc::new(vif.open(&settings()).expect("open the interface"));

        // info() says what was asked, twice the same, and the kernel agrees.
        let info = handle.info().expect("info");
        assert!(!info.ifname.is_empty(), "{info:?}");
        assert_eq!((info.ifname.as_str(), info.mtu), (IFNAME, MTU), "{info:?}");
        assert_eq!(handle.info().expect("info again"), info);
        let link = ns.ip(&["-o", "link", "show", "dev", IFNAME]);
        assert!(
            link.starts_with(&format!("{}: {IFNAME}:", info.ifindex)),
            "ifindex {} vs {link}",
            info.ifindex
        );
        for needle in [&format!("mtu {MTU}") as &str, "UP"] {
            assert!(link.contains(needle), "`{needle}` missing from {link}");
        }
        let addrs = ns.ip(&["-4", "addr", "show", "dev", IFNAME]);
        assert!(addrs.contains(&format!("inet {LOCAL}/24")), "{addrs}");
        let routes = ns.ip(&["-4", "route", "show", "dev", IFNAME]);
        assert!(
            routes.contains(&format!("{}/{}", ROUTED.0, ROUTED.1)),
            "{routes}"
        );

        // Idle: a read that does not wait returns nothing, at once.
        for _ in 0..3 {
            let start = Instant::now();
            assert!(read_some(&handle, 0).is_empty(), "an idle interface read");
            assert!(start.elapsed() < Duration::from_millis(250));
        }
        let fd = handle.pollable_fd().expect("pollable_fd");
        if let Some(fd) = fd {
            assert!(fd >= 0, "pollable_fd {fd}");
            assert!(!readable(fd, 0), "the descriptor polls readable while idle");
        }

        wake_unblocks_a_blocked_read(&handle);
        // A wake while nobody reads ends the next read at once.
        handle.wake().expect("wake");
        let start = Instant::now();
        assert!(read_some(&handle, 5000).is_empty());
        assert!(start.elapsed() < Duration::from_secs(1));

        // The kernel answers an echo request written to the interface's own address.
        let request = echo_request(1);
        assert_eq!(write(&handle, &request), Ok(1), "the echo request");
        if let Some(fd) = fd {
            assert!(
                readable(fd, 2000),
                "the reply never made the descriptor readable"
            );
        }
        expect_echo_reply(&handle, 1);

        // Garbage: consumed (and dropped) or refused, never a crash; still working after.
        let mut truncated_header = request[..12].to_vec();
        truncated_header[0] = 0x45;
        let mut lying_length = request.clone();
        lying_length[2..4].copy_from_slice(&1400u16.to_be_bytes());
        let garbage: [(&str, &[u8]); 4] = [
            ("40 zero bytes (not IP)", &[0; 40]),
            ("an empty packet", &[]),
            ("a truncated IPv4 header", &truncated_header),
            ("an IPv4 length past the packet", &lying_length),
        ];
        for (what, packet) in garbage {
            match write(&handle, packet) {
                Ok(1) => {}
                Err(e) => eprintln!("{tag}: {what} refused: {e}"),
                Ok(n) => panic!("{what}: write_batch consumed {n} of 1 packets without error"),
            }
        }
        assert_eq!(write(&handle, &echo_request(2)), Ok(1));
        expect_echo_reply(&handle, 2);

        // Closing removes the interface, its address and its route.
        drop(Arc::into_inner(handle).expect("no reader holds the handle"));
        assert!(
            ns.link_gone_within(IFNAME, Duration::from_secs(2)),
            "{IFNAME} still exists after close"
        );
        let addrs = ns.ip(&["-4", "addr", "show"]);
        assert!(!addrs.contains("100.64.7"), "{addrs}");
        let routes = ns.ip(&["-4", "route", "show", "table", "all"]);
        assert!(!routes.contains("100.64.7"), "{routes}");
        assert_eq!(
            open_descriptors(),
            fds_before,
            "descriptors leaked by open + close"
        );
    });
}

fn refuses_bad_settings(subject: &Subject, tag: &str) {
    let vif = subject.dynamic();
    let ns = Netns::new(&format!("vifbad-{tag}"));
    let v6: Ipv6Addr = "fd00:77::1".parse().unwrap();
    type Edit = fn(&mut VifSettings);
    let past_the_width: [(&str, Edit); 4] = [
        ("IPv4 prefix 33", |s| s.ipv4 = Some((LOCAL, 33))),
        ("IPv4 route prefix 33", |s| {
            s.routes = vec![(IpAddr::V4(ROUTED.0), 33)]
        }),
        ("IPv6 prefix 129", |s| {
            s.ipv6 = Some(("fd00:77::1".parse().unwrap(), 129))
        }),
        ("IPv6 route prefix 129", |s| {
            s.routes = vec![(IpAddr::V6("fd00:78::".parse().unwrap()), 129)]
        }),
    ];
    ns.run(|| {
        for (what, edit) in past_the_width {
            let mut bad = settings();
            edit(&mut bad);
            // The plugin itself refuses, not only the host's wrapper.
            assert_eq!(
                c_host::vif_open_unvalidated(vif.plugin(), &bad),
                OpenAnswer {
                    status: Status::INVALID_ARGUMENT,
                    handle: false
                },
                "{what}"
            );
            let err = vif.open(&bad).expect_err(what);
            assert_eq!(err.status, Status::INVALID_ARGUMENT, "{what}: {err}");
        }
        let mut unknown = settings();
        unknown.ipv6 = Some((v6, 64));
        unknown.options = Some(UNKNOWN_OPTION.into());
        let err = vif.open(&unknown).expect_err("an unknown option");
        assert_eq!(err.status, Status::INVALID_ARGUMENT, "{err}");
        assert_eq!(
            ns.links(),
            ["lo"],
            "a refused open left an interface behind"
        );
    });
}

/// `wake` from this thread ends a `read_batch(-1)` on another within 1 s, with nothing.
fn wake_unblocks_a_blocked_read(handle: &Arc<VifHandle>) {
    let (done_tx, done_rx) = mpsc::channel();
    let reader = {
        let handle = Arc::clone(handle);
        std::thread::spawn(move || {
            let mut buf = vec![SENTINEL; HEADROOM + 1500];
            let mut slots = [Packet::empty(&mut buf, HEADROOM).unwrap()];
            done_tx.send(handle.read_batch(&mut slots, -1)).unwrap();
        })
    };
    std::thread::sleep(Duration::from_millis(150));
    let woke = Instant::now();
    handle.wake().expect("wake");
    let got = done_rx
        .recv_timeout(Duration::from_secs(1))
        .expect("wake did not end the blocked read_batch(-1) within 1 s");
    assert!(woke.elapsed() < Duration::from_secs(1));
    assert_eq!(got, Ok(0), "a woken read returns no packets");
    reader.join().unwrap();
}

// ---- reading and writing -----------------------------------------------------------------

/// Writes one packet behind some headroom.
fn write(handle: &VifHandle, packet: &[u8]) -> Result<usize, PluginError> {
    let mut buf = vec![0xee; 16];
    buf.extend_from_slice(packet);
    let slots = [Packet::new(&mut buf, 16, packet.len()).unwrap()];
    handle.write_batch(&slots)
}

/// One `read_batch` into 8 slots of 1500 bytes after [`HEADROOM`]; the packets read.
/// Checks that the headroom, the bytes past each packet and the unfilled slots are
/// untouched.
fn read_some(handle: &VifHandle, timeout_ms: i32) -> Vec<Vec<u8>> {
    let mut bufs = vec![vec![SENTINEL; HEADROOM + 1500]; 8];
    let mut slots: Vec<Packet<'_>> = bufs
        .iter_mut()
        .map(|b| Packet::empty(b, HEADROOM).unwrap())
        .collect();
    let n = handle
        .read_batch(&mut slots, timeout_ms)
        .expect("read_batch");
    let lens: Vec<usize> = slots.iter().map(Packet::len).collect();
    assert!(
        lens[n..].iter().all(|&l| l == 0),
        "lengths past the {n} filled slots: {lens:?}"
    );
    drop(slots);
    for (i, (buf, &len)) in bufs.iter().zip(&lens).enumerate() {
        assert!(i >= n || len > 0, "slot {i} filled with an empty packet");
        assert!(
            buf[..HEADROOM].iter().all(|&b| b == SENTINEL),
            "slot {i}: headroom written"
        );
        assert!(
            buf[HEADROOM + len..].iter().all(|&b| b == SENTINEL),
            "slot {i}: written past the packet"
        );
    }
    bufs.iter()
        .zip(&lens)
        .take(n)
        .map(|(buf, &len)| buf[HEADROOM..HEADROOM + len].to_vec())
        .collect()
}

/// Reads until the kernel's echo reply with sequence number `seq` comes out (other
/// packets are skipped), for at most 5 seconds; checks it.
fn expect_echo_reply(handle: &VifHandle, seq: u16) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        for pkt in read_some(handle, 200) {
            let Some((1, src, dst, icmp)) = v4(&pkt) else {
                continue;
            };
            if (src, dst) != (LOCAL, PEER) || icmp.first() != Some(&0) || icmp.len() < 8 {
                continue;
            }
            if u16::from_be_bytes([icmp[6], icmp[7]]) != seq {
                continue;
            }
            assert_eq!(checksum(&[&pkt[..20]]), 0, "IPv4 header checksum");
            assert_eq!(checksum(&[icmp]), 0, "ICMP checksum");
            assert_eq!(&icmp[4..6], &ECHO_ID.to_be_bytes(), "identifier");
            assert_eq!(&icmp[8..], ECHO_DATA);
            return;
        }
    }
    panic!("no echo reply {seq} came out of the interface within 5 s");
}

/// Whether `fd` polls readable within `timeout_ms`.
fn readable(fd: i64, timeout_ms: i32) -> bool {
    let mut pfd = libc::pollfd {
        fd: fd as i32,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid `pollfd`; the descriptor is the plugin's and stays open.
    let n = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
    assert!(n >= 0, "poll: {}", std::io::Error::last_os_error());
    n == 1 && pfd.revents & libc::POLLIN != 0
}

/// How many descriptors the process has open.
fn open_descriptors() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

// ---- packets -----------------------------------------------------------------------------

const ECHO_ID: u16 = 0xc0f0;
const ECHO_DATA: &[u8] = b"cyphonic-conformance";

/// An ICMP echo request from [`PEER`] to [`LOCAL`].
fn echo_request(seq: u16) -> Vec<u8> {
    let mut icmp = vec![8, 0, 0, 0];
    icmp.extend_from_slice(&ECHO_ID.to_be_bytes());
    icmp.extend_from_slice(&seq.to_be_bytes());
    icmp.extend_from_slice(ECHO_DATA);
    let sum = checksum(&[&icmp]);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());

    let total = (20 + icmp.len()) as u16;
    let mut pkt = vec![0x45, 0];
    pkt.extend_from_slice(&total.to_be_bytes());
    pkt.extend_from_slice(&[0, seq as u8, 0x40, 0, 64, 1, 0, 0]); // DF, TTL 64, ICMP
    pkt.extend_from_slice(&PEER.octets());
    pkt.extend_from_slice(&LOCAL.octets());
    let sum = checksum(&[&pkt]);
    pkt[10..12].copy_from_slice(&sum.to_be_bytes());
    pkt.extend_from_slice(&icmp);
    pkt
}

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

/// (protocol, source, destination, payload) of a well-formed option-less IPv4 packet.
fn v4(pkt: &[u8]) -> Option<(u8, Ipv4Addr, Ipv4Addr, &[u8])> {
    if pkt.len() < 20 || pkt[0] != 0x45 {
        return None;
    }
    if usize::from(u16::from_be_bytes([pkt[2], pkt[3]])) != pkt.len() {
        return None;
    }
    let addr = |at: usize| Ipv4Addr::new(pkt[at], pkt[at + 1], pkt[at + 2], pkt[at + 3]);
    Some((pkt[9], addr(12), addr(16), &pkt[20..]))
}
