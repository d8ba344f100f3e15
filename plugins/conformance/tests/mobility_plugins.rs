//! The mobility-detector contract, run against each built plugin file (loaded by
//! absolute path with `Plugin::load`) inside a fresh network namespace: `open` with and
//! without options, `wait(0)` does not block, `wake` ends a blocked `wait(-1)`, snapshots
//! list exactly the namespace's addresses, an address change is reported, and open +
//! close leaves nothing behind. The namespace tests need root and skip (saying so)
//! without it.

// Network namespaces, TUN devices and netlink: Linux only.
#![cfg(target_os = "linux")]
// The checks are shared helpers rather than `#[test]` functions; a failed unwrap in
// them is a failed test all the same.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard, mpsc};
use std::time::{Duration, Instant};

use cyphonic_plugin_abi::{
    AddrEntry, HINT_ADDRESSES_CHANGED, HINT_ROUTES_CHANGED, MobilityPlugin, Plugin, PluginKind,
    Status,
};
use cyphonic_plugin_conformance::netns::{Netns, skip_unless_root};
use cyphonic_plugin_conformance::{
    BROKEN_MOBILITY, NETLINK_MOBILITY, PluginArtifact, assert_covered,
};

const LINK: &str = "cconf0";
/// An option no plugin knows.
const UNKNOWN_OPTION: &str = "cyphonic_conformance_unknown_option=1";

/// One plugin under test: the file, and what it must say about itself.
struct Subject {
    artifact: PluginArtifact,
    name: &'static str,
}

impl Subject {
    fn dynamic(&self) -> MobilityPlugin {
        let path = self.artifact.locate();
        let plugin = Plugin::load(&path).unwrap_or_else(|e| panic!("{e}"));
        MobilityPlugin::new(plugin).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }
}

macro_rules! mobility_plugin_conformance {
    ($module:ident: $subject:expr) => {
        mod $module {
            use super::*;

            const SUBJECT: Subject = $subject;

            #[test]
            fn loads_as_a_mobility_detector() {
                let _serial = serial();
                super::loads_as_a_mobility_detector(&SUBJECT);
            }

            #[test]
            fn waits_wakes_and_lists_addresses() {
                let _serial = serial();
                if skip_unless_root(concat!(stringify!($module), ": the mobility contract")) {
                    return;
                }
                super::waits_wakes_and_lists_addresses(&SUBJECT, stringify!($module));
            }

            #[test]
            fn closing_releases_everything() {
                let _serial = serial();
                if skip_unless_root(concat!(stringify!($module), ": mobility close")) {
                    return;
                }
                super::closing_releases_everything(&SUBJECT, stringify!($module));
            }
        }
    };
}

mobility_plugin_conformance!(netlink_mobility: Subject {
    artifact: NETLINK_MOBILITY,
    name: "netlink-mobility",
});

/// Every mobility-detector plugin file in the target directory is one this file tests
/// (or a known broken fixture, which the containment tests use), so a new detector
/// cannot ship without conformance coverage.
#[test]
fn every_built_mobility_plugin_is_covered() {
    let _serial = serial();
    assert_covered(
        PluginKind::MobilityDetector,
        &[NETLINK_MOBILITY],
        &[BROKEN_MOBILITY],
    );
}

/// The tests of this file one at a time: they count the process's descriptors.
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn loads_as_a_mobility_detector(subject: &Subject) {
    let mobility = subject.dynamic();
    let plugin = mobility.plugin();
    assert!(plugin.path().is_absolute());
    assert_eq!(plugin.kind(), PluginKind::MobilityDetector);
    assert_eq!(plugin.name(), subject.name);
    assert_eq!(plugin.version(), env!("CARGO_PKG_VERSION"));
    assert_eq!((plugin.abi().major, plugin.abi().minor), (1, 0));
}

fn waits_wakes_and_lists_addresses(subject: &Subject, tag: &str) {
    let mobility = subject.dynamic();
    let ns = Netns::new(&format!("mob-{tag}"));
    ns.run(|| {
        // No IPv6 link-local addresses on new links: their duplicate address detection
        // would end at a random time, with a change of its own.
        ns.sysctl("net/ipv6/conf/default/addr_gen_mode", "1");
        let h = Arc::new(mobility.open(None).expect("open(None)"));
        let err = mobility
            .open(Some(UNKNOWN_OPTION))
            .expect_err("an unknown option");
        assert_eq!(err.status, Status::INVALID_ARGUMENT, "{err}");

        // wait(0) does not block; nothing has changed.
        for _ in 0..3 {
            let start = Instant::now();
            let hint = h.wait(0).expect("wait(0)");
            assert!(start.elapsed() < Duration::from_millis(250));
            assert_eq!(hint, 0, "a change reported in a namespace nobody touched");
        }

        // wake from this thread ends a wait(-1) on another within 1 s, reporting nothing.
        let (tx, rx) = mpsc::channel();
        let waiter = {
            let h = Arc::clone(&h);
            std::thread::spawn(move || tx.send(h.wait(-1)).unwrap())
        };
        std::thread::sleep(Duration::from_millis(150));
        let woke = Instant::now();
        h.wake().expect("wake");
        let got = rx
            .recv_timeout(Duration::from_secs(1))
            .expect("wake did not end the blocked wait(-1) within 1 s");
        assert!(woke.elapsed() < Duration::from_secs(1));
        assert_eq!(got, Ok(0), "a woken wait reports nothing");
        waiter.join().unwrap();

        // Snapshots list the namespace's addresses: none yet (loopback is down) ...
        assert_eq!(listed(&h.snapshot().expect("snapshot")), ip_addresses(&ns));
        // ... then the ones added with `ip`, on the right interface.
        ns.add_dummy_link(LINK);
        ns.ip(&["addr", "add", "198.51.100.77/24", "dev", LINK]);
        ns.ip(&[
            "-6",
            "addr",
            "add",
            "2001:db8:77::7/64",
            "dev",
            LINK,
            "nodad",
        ]);
        let ifindex = ns.ifindex(LINK);
        let snapshot = h.snapshot().expect("snapshot");
        for (addr, prefix) in [("198.51.100.77", 24), ("2001:db8:77::7", 64)] {
            let addr: IpAddr = addr.parse().unwrap();
            let found: Vec<&AddrEntry> = snapshot
                .iter()
                .filter(|e| e.address() == Some((addr, prefix)))
                .collect();
            assert_eq!(found.len(), 1, "{addr}/{prefix} in {snapshot:?}");
            assert_eq!(found[0].ifindex, ifindex, "{addr}: {:?}", found[0]);
        }
        assert_eq!(listed(&snapshot), ip_addresses(&ns), "{snapshot:?}");

        // The change is reported.
        let hint = h.wait(5000).expect("wait");
        assert_ne!(
            hint & HINT_ADDRESSES_CHANGED,
            0,
            "adding addresses reported {hint:#x} within 5 s"
        );
        assert_eq!(
            hint & !(HINT_ADDRESSES_CHANGED | HINT_ROUTES_CHANGED),
            0,
            "unknown hint bits in {hint:#x}"
        );
        drop(Arc::into_inner(h).expect("the waiter let go of the handle"));
    });
}

fn closing_releases_everything(subject: &Subject, tag: &str) {
    let mobility = subject.dynamic();
    let ns = Netns::new(&format!("mobclose-{tag}"));
    ns.run(|| {
        let before = open_descriptors();
        for _ in 0..20 {
            let h = mobility.open(None).expect("open");
            h.snapshot().expect("snapshot");
            assert_eq!(h.wait(0), Ok(0));
            drop(h);
        }
        // Closing a handle whose wake is pending, and one that was never used.
        let h = mobility.open(None).expect("open");
        h.wake().expect("wake");
        drop(h);
        drop(mobility.open(None).expect("open"));
        assert_eq!(
            open_descriptors(),
            before,
            "descriptors leaked by 22 open + close"
        );
    });
}

/// The (address, prefix length) pairs of a snapshot; every entry must be well-formed.
fn listed(snapshot: &[AddrEntry]) -> BTreeSet<(IpAddr, u8)> {
    snapshot
        .iter()
        .map(|e| {
            e.address()
                .unwrap_or_else(|| panic!("a malformed entry: {e:?}"))
        })
        .collect()
}

/// The (address, prefix length) pairs `ip -o addr show` lists in the namespace.
fn ip_addresses(ns: &Netns) -> BTreeSet<(IpAddr, u8)> {
    ns.ip(&["-o", "addr", "show"])
        .lines()
        .map(|line| {
            let mut words = line.split_whitespace();
            words.find(|w| *w == "inet" || *w == "inet6");
            let (addr, prefix) = words
                .next()
                .and_then(|cidr| cidr.split_once('/'))
                .unwrap_or_else(|| panic!("no address in `{line}`"));
            (addr.parse().unwrap(), prefix.parse().unwrap())
        })
        .collect()
}

/// How many descriptors the process has open.
fn open_descriptors() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}
