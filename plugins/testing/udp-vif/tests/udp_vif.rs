//! The test-only UDP virtual interface, loaded from the library Cargo built next to this
//! test (`libcyphonic_test_udp_vif.so`, or `cyphonic_test_udp_vif.dll` when the tests run under
//! Wine), with a plain UDP socket of the test playing "the OS" on the other side.

#![allow(clippy::unwrap_used)]

use std::net::{SocketAddr, UdpSocket};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use cyphonic_plugin_abi::{
    Packet, Plugin, PluginKind, Status, VifHandle, VifPlugin, VifSettings, VirtualInterface,
};
use cyphonic_test_udp_vif::{MAX_DATAGRAM, UdpVif, UdpVifStats};

const HEADROOM: usize = 16;
const SENTINEL: u8 = 0xa5;

#[test]
fn loads_as_a_virtual_interface() {
    let plugin = loaded().plugin().clone();
    assert_eq!(plugin.name(), "udp-vif");
    assert_eq!(plugin.kind(), PluginKind::VirtualInterface);
    let link = Link::open(&loaded());
    let info = link.vif.info().unwrap();
    assert_eq!(
        (info.mtu, info.ifindex, info.ifname.as_str()),
        (1400, 0, "cyph-test0")
    );
}

#[test]
fn written_packets_reach_the_peer_exactly() {
    let link = Link::open(&loaded());
    let packets: [&[u8]; 3] = [b"\x45first packet", b"\x45second", &[0x60; 1400]];
    let mut bufs: Vec<Vec<u8>> = packets
        .iter()
        .map(|p| {
            let mut buf = vec![SENTINEL; HEADROOM + p.len()];
            buf[HEADROOM..].copy_from_slice(p);
            buf
        })
        .collect();
    let slots: Vec<Packet<'_>> = bufs
        .iter_mut()
        .map(|b| {
            let len = b.len() - HEADROOM;
            Packet::new(b, HEADROOM, len).unwrap()
        })
        .collect();
    assert_eq!(link.vif.write_batch(&slots).unwrap(), 3);
    for expected in packets {
        let (got, from) = link.peer_recv(Duration::from_secs(5)).expect("a datagram");
        assert_eq!(from, link.vif_addr);
        assert_eq!(got, expected);
    }
    assert_eq!(
        link.peer_recv(Duration::from_millis(200)),
        None,
        "exactly 3"
    );

    // Empty packets are consumed without sending anything.
    let mut empty = [0u8; 8];
    let slots = [Packet::empty(&mut empty, 4).unwrap()];
    assert_eq!(link.vif.write_batch(&slots).unwrap(), 1);
    assert_eq!(link.peer_recv(Duration::from_millis(200)), None);
}

#[test]
fn one_read_returns_queued_packets_in_order_after_the_headroom() {
    let link = Link::open(&loaded());
    let sent: [&[u8]; 3] = [b"\x45one", b"\x45two two", &[0x45; 1000]];
    for p in sent {
        link.peer.send_to(p, link.vif_addr).unwrap();
    }
    // Loopback delivery is immediate, but leave a little time on a loaded machine.
    std::thread::sleep(Duration::from_millis(50));
    let mut bufs = vec![vec![SENTINEL; HEADROOM + 1500]; 4];
    let mut slots: Vec<Packet<'_>> = bufs
        .iter_mut()
        .map(|b| Packet::empty(b, HEADROOM).unwrap())
        .collect();
    let filled = link.vif.read_batch(&mut slots, 1000).unwrap();
    assert_eq!(filled, 3);
    for (slot, expected) in slots.iter().zip(sent) {
        assert_eq!(slot.offset(), HEADROOM);
        assert_eq!(slot.data(), expected);
    }
    assert!(slots[3].is_empty());
    drop(slots);
    for buf in &bufs {
        assert!(
            buf[..HEADROOM].iter().all(|&b| b == SENTINEL),
            "headroom untouched"
        );
    }

    // Nothing queued: a read with timeout 0 returns at once, one with 50 ms after it.
    let mut buf = [0u8; 1500];
    let mut slots = [Packet::empty(&mut buf, 0).unwrap()];
    let start = Instant::now();
    assert_eq!(link.vif.read_batch(&mut slots, 0).unwrap(), 0);
    assert!(start.elapsed() < Duration::from_millis(500));
    let start = Instant::now();
    assert_eq!(link.vif.read_batch(&mut slots, 50).unwrap(), 0);
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(45) && took < Duration::from_secs(2),
        "{took:?}"
    );
}

#[test]
fn datagrams_from_other_sources_are_dropped() {
    let link = Link::open(&loaded());
    let intruder = UdpSocket::bind("127.0.0.1:0").unwrap();
    intruder.send_to(b"\x45injected", link.vif_addr).unwrap();
    // An empty datagram from elsewhere is no wake marker either.
    intruder.send_to(b"", link.vif_addr).unwrap();
    link.peer.send_to(b"\x45genuine", link.vif_addr).unwrap();
    let got = link.read_all(Duration::from_secs(2));
    assert_eq!(got, [b"\x45genuine".to_vec()]);
}

#[test]
fn a_packet_longer_than_its_slot_is_dropped_not_truncated() {
    let link = Link::open(&loaded());
    link.peer.send_to(&[0x45; 200], link.vif_addr).unwrap();
    link.peer.send_to(&[0x46; 100], link.vif_addr).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    // Room for 100 bytes after the headroom.
    let mut bufs = vec![vec![0u8; HEADROOM + 100]; 2];
    let mut slots: Vec<Packet<'_>> = bufs
        .iter_mut()
        .map(|b| Packet::empty(b, HEADROOM).unwrap())
        .collect();
    assert_eq!(link.vif.read_batch(&mut slots, 1000).unwrap(), 1);
    assert_eq!(slots[0].data(), [0x46; 100]);
    assert!(slots[1].is_empty());
}

#[test]
fn an_unreachable_peer_does_not_break_reading() {
    let Link {
        vif,
        peer,
        vif_addr,
    } = Link::open(&loaded());
    let peer_addr = peer.local_addr().unwrap();
    // Nobody listens at the peer's address now: the packet draws an ICMP port
    // unreachable, which Windows reports on the socket's next receive (WSAECONNRESET;
    // Linux and Wine 8 do not report it on an unconnected socket).
    drop(peer);
    let mut lost = *b"\x45lost";
    let slots = [Packet::new(&mut lost, 0, 5).unwrap()];
    assert_eq!(vif.write_batch(&slots).unwrap(), 1);
    std::thread::sleep(Duration::from_millis(50));
    let mut buf = [0u8; 1500];
    let mut slots = [Packet::empty(&mut buf, 0).unwrap()];
    assert_eq!(vif.read_batch(&mut slots, 100).unwrap(), 0);
    // The peer comes back at the same address: its packets are read.
    let peer = UdpSocket::bind(peer_addr).unwrap();
    peer.send_to(b"\x45back", vif_addr).unwrap();
    assert_eq!(vif.read_batch(&mut slots, 2000).unwrap(), 1);
    assert_eq!(slots[0].data(), b"\x45back");
}

#[test]
fn wake_ends_a_blocked_read_and_the_next_one() {
    let link = Arc::new(Link::open(&loaded()));
    let (tx, rx) = mpsc::channel();
    let reader = {
        let link = Arc::clone(&link);
        std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            let mut slots = [Packet::empty(&mut buf, 0).unwrap()];
            tx.send(link.vif.read_batch(&mut slots, -1).unwrap())
                .unwrap();
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    let woke = Instant::now();
    link.vif.wake().unwrap();
    let filled = rx
        .recv_timeout(Duration::from_secs(5))
        .expect("wake did not end the blocked read");
    assert_eq!(filled, 0);
    assert!(
        woke.elapsed() < Duration::from_secs(1),
        "{:?}",
        woke.elapsed()
    );
    reader.join().unwrap();

    // A wake while nobody reads: the next read, even one that would wait forever,
    // returns 0 at once; its stale marker does not end the read after it.
    link.vif.wake().unwrap();
    let mut buf = [0u8; 1500];
    let mut slots = [Packet::empty(&mut buf, 0).unwrap()];
    assert_eq!(link.vif.read_batch(&mut slots, -1).unwrap(), 0);
    link.peer.send_to(b"\x45after", link.vif_addr).unwrap();
    assert_eq!(
        link.read_all(Duration::from_secs(2)),
        [b"\x45after".to_vec()]
    );
}

#[test]
fn bad_options_are_refused_naming_the_key() {
    let vif = loaded();
    for (options, needle) in [
        (Some("peer=127.0.0.1:9"), "`listen`"),
        (None, "`listen`"),
        ("listen=127.0.0.1:0".into(), "`peer`"),
        ("listen=127.0.0.1\npeer=127.0.0.1:9".into(), "`listen`"),
        ("listen=127.0.0.1:0\npeer=nowhere:9".into(), "`peer`"),
        (
            "listen=127.0.0.1:0\npeer=127.0.0.1:9\nspeed=fast".into(),
            "`speed`",
        ),
    ] {
        let settings = VifSettings {
            mtu: 1400,
            options: options.map(str::to_owned),
            ..VifSettings::default()
        };
        let err = vif.open(&settings).expect_err(&format!("{options:?}"));
        assert_eq!(err.status(), Status::INVALID_ARGUMENT, "{err}");
        assert!(err.message().contains(needle), "{options:?}: {err}");
    }
}

#[test]
fn statically_linked_counts_what_it_drops() {
    let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
    let settings = VifSettings {
        mtu: 1400,
        options: Some(format!(
            "listen=127.0.0.1:0\npeer={}",
            peer.local_addr().unwrap()
        )),
        ..VifSettings::default()
    };
    let vif = UdpVif::open(&settings).unwrap();
    assert_eq!(vif.peer_addr(), peer.local_addr().unwrap());
    let intruder = UdpSocket::bind("127.0.0.1:0").unwrap();
    intruder.send_to(b"\x45x", vif.local_addr()).unwrap();
    peer.send_to(&[0x45; 300], vif.local_addr()).unwrap();
    peer.send_to(b"\x45ok", vif.local_addr()).unwrap();
    let mut buf = [0u8; 100];
    let mut slots = [Packet::empty(&mut buf, 0).unwrap()];
    assert_eq!(vif.read_batch(&mut slots, 2000).unwrap(), 1);
    assert_eq!(slots[0].data(), b"\x45ok");
    let mut big = vec![0x45u8; MAX_DATAGRAM + 1];
    let len = big.len();
    let slots = [Packet::new(&mut big, 0, len).unwrap()];
    assert_eq!(vif.write_batch(&slots).unwrap(), 1, "consumed");
    assert_eq!(
        vif.stats(),
        UdpVifStats {
            foreign: 1,
            oversize: 1,
            unsendable: 1
        }
    );

    // The exported header is the same plugin.
    let plugin =
        Plugin::from_static(cyphonic_test_udp_vif::plugin_header(), "static:udp-vif").unwrap();
    assert_eq!(plugin.name(), "udp-vif");
}

// ---- helpers -------------------------------------------------------------------------

/// An open interface and the test's socket on the other side of it.
struct Link {
    vif: VifHandle,
    peer: UdpSocket,
    /// The interface's bound address, learnt from the source of a first packet.
    vif_addr: SocketAddr,
}

impl Link {
    fn open(plugin: &VifPlugin) -> Self {
        let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
        let settings = VifSettings {
            mtu: 1400,
            ifname: Some("cyph-test0".into()),
            // Ignored by this plugin: it configures nothing in the OS.
            ipv4: Some(("100.64.0.1".parse().unwrap(), 10)),
            options: Some(format!(
                "# test link\nlisten=127.0.0.1:0\npeer={}\n",
                peer.local_addr().unwrap()
            )),
            ..VifSettings::default()
        };
        let vif = plugin.open(&settings).unwrap();
        let mut hello = *b"\x45hello";
        let slots = [Packet::new(&mut hello, 0, 6).unwrap()];
        assert_eq!(vif.write_batch(&slots).unwrap(), 1);
        let mut link = Self {
            vif,
            peer,
            vif_addr: "0.0.0.0:0".parse().unwrap(),
        };
        let (got, from) = link.peer_recv(Duration::from_secs(5)).expect("hello");
        assert_eq!(got, b"\x45hello");
        assert!(from.ip().is_loopback() && from.port() != 0, "{from}");
        link.vif_addr = from;
        link
    }

    /// The next datagram at the peer within `timeout`.
    fn peer_recv(&self, timeout: Duration) -> Option<(Vec<u8>, SocketAddr)> {
        self.peer.set_read_timeout(Some(timeout)).unwrap();
        let mut buf = vec![0u8; 65_536];
        match self.peer.recv_from(&mut buf) {
            Ok((n, from)) => {
                buf.truncate(n);
                Some((buf, from))
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                None
            }
            Err(e) => panic!("peer recv: {e}"),
        }
    }

    /// Every packet read until a read waits 200 ms in vain (the first read waits up to
    /// `first`).
    fn read_all(&self, first: Duration) -> Vec<Vec<u8>> {
        let mut got = Vec::new();
        let mut timeout = first.as_millis() as i32;
        loop {
            let mut bufs = vec![vec![0u8; 1500]; 8];
            let mut slots: Vec<Packet<'_>> = bufs
                .iter_mut()
                .map(|b| Packet::empty(b, 0).unwrap())
                .collect();
            let n = self.vif.read_batch(&mut slots, timeout).unwrap();
            if n == 0 {
                return got;
            }
            got.extend(slots[..n].iter().map(|s| s.data().to_vec()));
            timeout = 200;
        }
    }
}

/// The library Cargo built for this package (the crate is a cdylib too), loaded by
/// absolute path: next to the test executable in `deps/`, where `cargo test` leaves it,
/// or in the profile directory, where `cargo build` puts it.
fn loaded() -> VifPlugin {
    let name = format!(
        "{}cyphonic_test_udp_vif{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    );
    let exe = std::env::current_exe().expect("the test executable knows its path");
    let deps = exe.parent().expect("the executable is in a directory");
    let candidates = [Some(deps), deps.parent()];
    let path = candidates
        .into_iter()
        .flatten()
        .map(|dir| dir.join(&name))
        .find(|path| path.is_file())
        .unwrap_or_else(|| {
            panic!(
                "{name} is missing next to {}: `cargo test -p cyphonic-test-udp-vif` builds it",
                exe.display()
            )
        });
    let plugin = Plugin::load(&path).unwrap_or_else(|e| panic!("{e}"));
    VifPlugin::new(plugin).unwrap()
}
