//! End-to-end tests of the netlink mobility detector, each in a network namespace of its
//! own: address, default-route and link changes made with `ip` come out of `wait`
//! (debounced, once per burst), ignored interfaces stay silent, snapshots match what the
//! kernel holds, `wake` ends a wait, overruns report everything; through the statically
//! linked header, the loaded `libcyphonic_netlink_mobility.so`, and the Rust type.
//!
//! They need root (CI runs them as root) for `ip netns`. Test links are `dummy` devices,
//! or `ifb` devices (which behave the same here) where the kernel has no dummy driver.

// Network namespaces, TUN devices and netlink: Linux only.
#![cfg(target_os = "linux")]
#![allow(unsafe_code)]
// Helpers outside `#[test]` functions unwrap too; a panic is a test failure.
#![allow(clippy::unwrap_used)]

use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use cyphonic_netlink_mobility::NetlinkMobility;
use cyphonic_plugin_abi::{
    ADDR_FLAG_DEPRECATED, ADDR_FLAG_TENTATIVE, AddrEntry, HINT_ADDRESSES_CHANGED,
    HINT_ROUTES_CHANGED, MobilityDetector, MobilityHandle, MobilityPlugin, Plugin, Status,
};

const ADDRS: u32 = HINT_ADDRESSES_CHANGED;
const ROUTES: u32 = HINT_ROUTES_CHANGED;
const BOTH: u32 = ADDRS | ROUTES;
/// The debounce of most tests.
const DEBOUNCE: Duration = Duration::from_millis(200);
/// Slack for scheduling and `ip` start-up on a loaded machine.
const SLACK: Duration = Duration::from_millis(1500);

#[test]
fn address_and_link_changes_are_reported_after_the_debounce() {
    let ns = Netns::new("addr");
    let mobility = static_plugin();
    ns.run(|| {
        ns.add_link("d0");
        let h = mobility.open(Some("debounce_ms=200")).unwrap();
        settle(&h);

        // The report comes once the change has been quiet for the debounce time.
        let start = Instant::now();
        ns.ip(&["addr", "add", "198.51.100.7/24", "dev", "d0"]);
        let done = Instant::now();
        let (hints, at) = next_report(&h);
        assert_eq!(hints, ADDRS);
        assert!(at - start >= DEBOUNCE, "reported before the debounce ended");
        assert!(
            at - done < DEBOUNCE + SLACK,
            "reported late: {:?}",
            at - done
        );

        ns.ip(&[
            "-6",
            "addr",
            "add",
            "2001:db8:7::7/64",
            "dev",
            "d0",
            "nodad",
        ]);
        assert_eq!(next_report(&h).0, ADDRS);

        // The link becoming operationally up changes what is reachable.
        ns.ip(&["link", "set", "d0", "up"]);
        assert_eq!(next_report(&h).0, BOTH);
        assert_quiet(&h, "after link up");

        // Deleting an IPv4 address silently flushes the IPv4 routes through it.
        ns.ip(&["addr", "del", "198.51.100.7/24", "dev", "d0"]);
        assert_eq!(next_report(&h).0, BOTH);
        ns.ip(&["-6", "addr", "del", "2001:db8:7::7/64", "dev", "d0"]);
        assert_eq!(next_report(&h).0, ADDRS);

        // Link changes other than its operational state are not reported.
        ns.ip(&["link", "set", "d0", "mtu", "1400"]);
        assert_quiet(&h, "an MTU change");
        ns.ip(&["link", "set", "d0", "down"]);
        assert_eq!(next_report(&h).0, BOTH);
        // A link that appears (down) or goes away while down is no change.
        ns.add_link("d1");
        ns.ip(&["link", "del", "d1"]);
        assert_quiet(&h, "a down link came and went");

        // Timeouts: 0 does not block, a positive timeout waits about that long.
        let start = Instant::now();
        assert_eq!(h.wait(0).unwrap(), 0);
        assert!(start.elapsed() < Duration::from_millis(100));
        let start = Instant::now();
        assert_eq!(h.wait(150).unwrap(), 0);
        let waited = start.elapsed();
        assert!(
            waited >= Duration::from_millis(145) && waited < SLACK,
            "{waited:?}"
        );
    });
}

#[test]
fn a_burst_of_changes_is_reported_once() {
    let ns = Netns::new("burst");
    let mobility = static_plugin();
    ns.run(|| {
        ns.add_link("d0");
        let h = mobility.open(Some("debounce_ms=300")).unwrap();
        let debounce = Duration::from_millis(300);
        // Five changes 100 ms apart, each well inside the debounce of the one before.
        let changer = std::thread::scope(|s| {
            let changer = s.spawn(|| {
                let mut last_start = Instant::now();
                for n in 1..=5 {
                    std::thread::sleep(Duration::from_millis(100));
                    last_start = Instant::now();
                    ns.ip(&["addr", "add", &format!("198.51.100.{n}/24"), "dev", "d0"]);
                }
                last_start
            });
            let (hints, at) = next_report(&h);
            (changer.join().unwrap(), hints, at)
        });
        let (last_change, hints, at) = changer;
        assert_eq!(hints, ADDRS);
        assert!(
            at >= last_change + debounce,
            "reported {:?} before the last change had been quiet for the debounce",
            (last_change + debounce).saturating_duration_since(at)
        );
        assert_quiet(&h, "the burst was reported already");
    });
}

#[test]
fn default_routes_are_reported_other_routes_are_not() {
    let ns = Netns::new("route");
    let mobility = static_plugin();
    ns.run(|| {
        ns.add_link("d0");
        ns.ip(&["addr", "add", "198.51.100.7/24", "dev", "d0"]);
        ns.ip(&[
            "-6",
            "addr",
            "add",
            "2001:db8:7::7/64",
            "dev",
            "d0",
            "nodad",
        ]);
        ns.ip(&["link", "set", "d0", "up"]);
        let h = mobility.open(Some("debounce_ms=200")).unwrap();
        settle(&h);

        ns.ip(&["route", "add", "default", "via", "198.51.100.1"]);
        assert_eq!(next_report(&h).0, ROUTES);
        ns.ip(&[
            "-6",
            "route",
            "add",
            "default",
            "via",
            "2001:db8:7::1",
            "dev",
            "d0",
        ]);
        assert_eq!(next_report(&h).0, ROUTES);

        // Prefix routes and default routes of other tables are not the default route.
        ns.ip(&["route", "add", "203.0.113.0/24", "via", "198.51.100.1"]);
        ns.ip(&[
            "-6",
            "route",
            "add",
            "2001:db8:8::/48",
            "via",
            "2001:db8:7::1",
        ]);
        ns.ip(&[
            "route",
            "add",
            "default",
            "via",
            "198.51.100.2",
            "table",
            "100",
        ]);
        assert_quiet(&h, "non-default routes");

        ns.ip(&["route", "replace", "default", "via", "198.51.100.2"]);
        assert_eq!(next_report(&h).0, ROUTES);
        ns.ip(&["route", "del", "default"]);
        assert_eq!(next_report(&h).0, ROUTES);
        ns.ip(&["-6", "route", "del", "default"]);
        assert_eq!(next_report(&h).0, ROUTES);
    });
}

#[test]
fn ignored_interfaces_are_not_reported_or_listed() {
    let ns = Netns::new("ignore");
    let mobility = static_plugin();
    ns.run(|| {
        ns.add_link("d0");
        // One ignored link known from the dump at open, one that appears later.
        ns.add_link("ig1");
        let h = mobility
            .open(Some(
                "debounce_ms=200\nignore_ifname=ig0\nignore_ifname=ig1\n",
            ))
            .unwrap();
        ns.add_link("ig0");
        for ig in ["ig0", "ig1"] {
            ns.ip(&["link", "set", ig, "up"]);
        }
        ns.ip(&["addr", "add", "198.51.100.9/24", "dev", "ig0"]);
        ns.ip(&[
            "-6",
            "addr",
            "add",
            "2001:db8:9::9/64",
            "dev",
            "ig0",
            "nodad",
        ]);
        ns.ip(&["addr", "add", "203.0.113.9/24", "dev", "ig1"]);
        ns.ip(&["route", "add", "default", "dev", "ig0"]);
        ns.ip(&["-6", "route", "add", "default", "dev", "ig0"]);
        assert_quiet(&h, "changes on ignored interfaces");

        let snapshot = h.snapshot().unwrap();
        assert!(
            snapshot.iter().all(|e| {
                let (addr, _) = e.address().unwrap();
                addr != "198.51.100.9".parse::<IpAddr>().unwrap()
                    && addr != "2001:db8:9::9".parse::<IpAddr>().unwrap()
                    && addr != "203.0.113.9".parse::<IpAddr>().unwrap()
            }),
            "{snapshot:?}"
        );

        // Still watching: the same change on another interface is reported.
        ns.ip(&["addr", "add", "198.51.100.7/24", "dev", "d0"]);
        assert_eq!(next_report(&h).0, ADDRS);
        assert!(
            h.snapshot()
                .unwrap()
                .iter()
                .any(|e| e.address() == Some(("198.51.100.7".parse().unwrap(), 24))),
            "d0's address is listed"
        );

        // An ignored link going away, up and with addresses and a default route.
        ns.ip(&["link", "del", "ig0"]);
        ns.ip(&["link", "del", "ig1"]);
        assert_quiet(&h, "ignored interfaces deleted");
    });
}

#[test]
fn snapshot_lists_addresses_with_prefix_lengths_and_flags() {
    let ns = Netns::new("snap");
    let mobility = static_plugin();
    ns.run(|| {
        ns.add_link("d0");
        ns.ip(&["addr", "add", "198.51.100.7/24", "dev", "d0"]);
        ns.ip(&[
            "-6",
            "addr",
            "add",
            "2001:db8:7::7/64",
            "dev",
            "d0",
            "nodad",
        ]);
        ns.ip(&[
            "-6",
            "addr",
            "add",
            "2001:db8:7::8/64",
            "dev",
            "d0",
            "nodad",
            "preferred_lft",
            "0",
        ]);
        // Duplicate address detection waits for the link to come up: tentative until
        // then. (A veth, since dummy and ifb links skip detection.)
        ns.ip(&["link", "add", "v0", "type", "veth", "peer", "name", "v0p"]);
        ns.ip(&["-6", "addr", "add", "2001:db8:9::9/64", "dev", "v0"]);
        let d0 = ns.ifindex("d0");
        let v0 = ns.ifindex("v0");

        let h = mobility.open(None).unwrap();
        let snapshot = h.snapshot().unwrap();
        let entry = |addr: &str| {
            let addr: IpAddr = addr.parse().unwrap();
            let found: Vec<&AddrEntry> = snapshot
                .iter()
                .filter(|e| e.address().is_some_and(|(a, _)| a == addr))
                .collect();
            assert_eq!(found.len(), 1, "{addr} in {snapshot:?}");
            *found[0]
        };
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            entry("198.51.100.7"),
            AddrEntry::new(ip("198.51.100.7"), 24, 0, d0)
        );
        assert_eq!(
            entry("2001:db8:7::7"),
            AddrEntry::new(ip("2001:db8:7::7"), 64, 0, d0)
        );
        assert_eq!(
            entry("2001:db8:7::8"),
            AddrEntry::new(ip("2001:db8:7::8"), 64, ADDR_FLAG_DEPRECATED, d0)
        );
        assert_eq!(
            entry("2001:db8:9::9"),
            AddrEntry::new(ip("2001:db8:9::9"), 64, ADDR_FLAG_TENTATIVE, v0)
        );
        // Nothing but what `ip` lists (the namespace's loopback is down: no 127.0.0.1).
        let listed = ns.ip(&["-o", "addr", "show"]);
        assert_eq!(
            snapshot.len(),
            listed.lines().count(),
            "{snapshot:?}\n{listed}"
        );

        // The Rust type gives the same.
        let direct = NetlinkMobility::open(None).unwrap();
        let mut again = direct.snapshot().unwrap();
        let mut first = snapshot.clone();
        again.sort_by_key(|e| (e.ifindex, e.addr));
        first.sort_by_key(|e| (e.ifindex, e.addr));
        assert_eq!(again, first);
    });
}

#[test]
fn wake_ends_a_wait_and_keeps_pending_changes() {
    let ns = Netns::new("wake");
    let mobility = static_plugin();
    ns.run(|| {
        ns.add_link("d0");
        let h = Arc::new(mobility.open(Some("debounce_ms=1000")).unwrap());

        // From another thread, a wait(-1) with nothing happening.
        let (tx, rx) = mpsc::channel();
        let waiter = {
            let h = Arc::clone(&h);
            std::thread::spawn(move || tx.send(h.wait(-1).unwrap()).unwrap())
        };
        std::thread::sleep(Duration::from_millis(150));
        h.wake().unwrap();
        let got = rx
            .recv_timeout(Duration::from_secs(5))
            .expect("wake did not end the blocked wait");
        assert_eq!(got, 0);
        waiter.join().unwrap();

        // A wake in the middle of a debounce: the wait returns 0 at once, the change is
        // reported by the next wait.
        let (tx, rx) = mpsc::channel();
        let waiter = {
            let h = Arc::clone(&h);
            std::thread::spawn(move || tx.send(h.wait(-1).unwrap()).unwrap())
        };
        ns.ip(&["addr", "add", "198.51.100.7/24", "dev", "d0"]);
        std::thread::sleep(Duration::from_millis(200));
        let woke = Instant::now();
        h.wake().unwrap();
        let got = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(got, 0);
        assert!(woke.elapsed() < Duration::from_millis(500));
        waiter.join().unwrap();
        assert_eq!(h.wait(5000).unwrap(), ADDRS, "the change survived the wake");

        // A wake while nobody waits makes the next wait return 0 at once, even with a
        // change pending; the wait after that reports it.
        h.wake().unwrap();
        ns.ip(&["addr", "del", "198.51.100.7/24", "dev", "d0"]);
        let start = Instant::now();
        assert_eq!(h.wait(5000).unwrap(), 0);
        assert!(start.elapsed() < Duration::from_millis(500));
        assert_eq!(h.wait(5000).unwrap(), BOTH);

        drop(Arc::into_inner(h).expect("the waiters let go of the handle"));
    });
}

#[test]
fn an_overrun_reports_every_change() {
    let ns = Netns::new("overrun");
    ns.run(|| {
        ns.add_link("d0");
        ns.ip(&["link", "set", "d0", "up"]);
        let detector = NetlinkMobility::open(Some("debounce_ms=100")).unwrap();
        // Each address brings an address and a local-route notification: far more than
        // the event socket's buffer holds while nobody reads.
        let batch: String = (0..6000)
            .map(|n| format!("addr add 2001:db8:7::{n:x}/128 dev d0 nodad\n"))
            .collect();
        let path = std::env::temp_dir().join(format!("cyph-mobtest-{}.batch", std::process::id()));
        std::fs::write(&path, batch).unwrap();
        let (ok, out) = ns.try_ip(&["-6", "-batch", path.to_str().unwrap()]);
        let _ = std::fs::remove_file(&path);
        assert!(ok, "ip -batch: {out}");
        // Address changes alone would say ADDRS: ROUTES too means the overrun was seen.
        assert_eq!(detector.wait(5000).unwrap(), BOTH);
        let start = Instant::now();
        while detector.wait(300).unwrap() != 0 {
            assert!(start.elapsed() < Duration::from_secs(10), "never settled");
        }
        // Still working after the overrun.
        ns.ip(&["addr", "add", "198.51.100.7/24", "dev", "d0"]);
        assert_eq!(detector.wait(5000).unwrap(), ADDRS);
    });
}

#[test]
fn bad_options_are_rejected() {
    let mobility = static_plugin();
    for (options, needle) in [
        ("debounce_ms=200\nsensitivity=high", "`sensitivity`"),
        ("debounce_ms=soon", "`debounce_ms`"),
        ("debounce_ms=100000", "`debounce_ms`"),
        ("ignore_ifname=", "`ignore_ifname`"),
        ("ignore_ifname=much-too-long-name", "`ignore_ifname`"),
        ("ignore_ifname", "`ignore_ifname`"),
    ] {
        let err = mobility.open(Some(options)).expect_err(options);
        assert_eq!(err.status(), Status::INVALID_ARGUMENT, "{err}");
        assert!(err.message().contains(needle), "{options}: {err}");
    }
    let err = NetlinkMobility::open(Some("sensitivity=high")).unwrap_err();
    assert_eq!(err.status(), Status::INVALID_ARGUMENT);
    let ok = NetlinkMobility::open(Some("# defaults\n\nignore_ifname=cyph0")).unwrap();
    assert_eq!(ok.options().debounce, Duration::from_millis(300));
    assert_eq!(ok.options().ignore_ifnames, ["cyph0"]);
}

#[test]
fn loaded_plugin_end_to_end() {
    let so = profile_dir().join("libcyphonic_netlink_mobility.so");
    let plugin = if so.is_file() {
        Plugin::load(&so).expect("load libcyphonic_netlink_mobility.so")
    } else {
        eprintln!(
            "{} is not built (build the cyphonic-netlink-mobility-plugin package first); using the static header",
            so.display()
        );
        Plugin::from_static(
            cyphonic_netlink_mobility::plugin_header(),
            "static:netlink-mobility",
        )
        .expect("the static header validates")
    };
    assert_eq!(plugin.name(), "netlink-mobility");
    let mobility = MobilityPlugin::new(plugin).expect("a mobility-detector plugin");
    let ns = Netns::new("dyn");
    ns.run(|| {
        ns.add_link("d0");
        ns.add_link("cyph0");
        let h = mobility
            .open(Some("debounce_ms=100\nignore_ifname=cyph0"))
            .unwrap();
        ns.ip(&["addr", "add", "203.0.113.5/24", "dev", "cyph0"]);
        ns.ip(&["addr", "add", "198.51.100.7/24", "dev", "d0"]);
        assert_eq!(next_report(&h).0, ADDRS);
        let snapshot = h.snapshot().unwrap();
        assert_eq!(
            snapshot,
            [AddrEntry::new(
                "198.51.100.7".parse().unwrap(),
                24,
                0,
                ns.ifindex("d0")
            )]
        );
        let err = mobility.open(Some("bogus=1")).unwrap_err();
        assert!(err.message().contains("`bogus`"), "{err}");
        h.wake().unwrap();
        assert_eq!(h.wait(-1).unwrap(), 0);
    });
}

// ---- helpers -------------------------------------------------------------------------

fn static_plugin() -> MobilityPlugin {
    let plugin = Plugin::from_static(
        cyphonic_netlink_mobility::plugin_header(),
        "static:netlink-mobility",
    )
    .expect("the static header validates");
    MobilityPlugin::new(plugin).expect("a mobility-detector plugin")
}

/// The next report within 5 s, and when it came.
fn next_report(h: &MobilityHandle) -> (u32, Instant) {
    let hints = h.wait(5000).expect("wait");
    let at = Instant::now();
    assert_ne!(hints, 0, "nothing reported within 5 s");
    (hints, at)
}

/// Lets the set-up before `open` finish: on a loaded machine the kernel may still
/// announce its last steps (a link turning operationally up, an address leaving its
/// tentative state) after `open`. Waits until a debounce period passes in silence.
fn settle(h: &MobilityHandle) {
    let waited = (DEBOUNCE + Duration::from_millis(400)).as_millis() as i32;
    for _ in 0..10 {
        if h.wait(waited).expect("wait") == 0 {
            return;
        }
    }
    panic!("the namespace never became quiet after the set-up");
}

/// Nothing is reported for the debounce time and then some.
fn assert_quiet(h: &MobilityHandle, what: &str) {
    let waited = (DEBOUNCE + Duration::from_millis(400)).as_millis() as i32;
    assert_eq!(h.wait(waited).expect("wait"), 0, "reported: {what}");
}

/// A network namespace for one test, deleted on drop (also when the test fails). New
/// interfaces in it get no IPv6 link-local address, whose duplicate address detection
/// would otherwise end at a random time with a change of its own.
struct Netns {
    name: String,
}

impl Netns {
    fn new(tag: &str) -> Self {
        // Concurrent `ip netns add` can race on the first mount of /run/netns.
        static CREATE: Mutex<()> = Mutex::new(());
        let _serial = CREATE.lock().unwrap_or_else(|e| e.into_inner());
        let name = format!("cyph-mobtest-{}-{tag}", std::process::id());
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
        let ns = Self { name };
        ns.run(|| {
            std::fs::write("/proc/sys/net/ipv6/conf/default/addr_gen_mode", "1")
                .expect("turn IPv6 link-local addresses off in the namespace");
        });
        ns
    }

    /// Runs `f` on a thread that has entered the namespace (threads switch network
    /// namespace on their own, and threads it spawns inherit it); a panic in `f` fails
    /// the caller.
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

    /// Adds a link that behaves like a dummy: `dummy`, else `ifb` (no carrier to wait
    /// for, no ARP, no duplicate address detection). It starts down.
    fn add_link(&self, name: &str) {
        for kind in ["dummy", "ifb"] {
            if self.try_ip(&["link", "add", name, "type", kind]).0 {
                return;
            }
        }
        panic!("the kernel offers neither dummy nor ifb links");
    }

    fn ifindex(&self, name: &str) -> u32 {
        let line = self.ip(&["-o", "link", "show", "dev", name]);
        line.split(':').next().unwrap().trim().parse().unwrap()
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
