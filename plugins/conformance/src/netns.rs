//! Network namespaces for the contract tests of virtual-interface and mobility-detector
//! plugins: each test gets a fresh namespace (`ip netns add`, named with the process id
//! so parallel runs never share one), runs the plugin on a thread that `setns`es into it,
//! and deletes it on drop, also when the test fails. Needs root ([`skip_unless_root`]).

#![allow(unsafe_code)]

use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Whether the process runs as root: creating namespaces and interfaces needs it.
pub fn is_root() -> bool {
    // SAFETY: `geteuid` has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// True (after saying why on stderr) when `test` cannot run because the process is not
/// root; the only reason these tests skip.
pub fn skip_unless_root(test: &str) -> bool {
    if is_root() {
        return false;
    }
    eprintln!(
        "skipping {test}: it needs root (euid 0) for `ip netns add` and the plugin's \
         interfaces and netlink sockets; CI runs it as root"
    );
    true
}

/// A fresh network namespace, deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `cyph-conf-<pid>-<tag>` (after deleting a leftover of that name).
    pub fn new(tag: &str) -> Self {
        // Concurrent `ip netns add` can race on the first mount of /run/netns.
        static CREATE: Mutex<()> = Mutex::new(());
        let _serial = CREATE.lock().unwrap_or_else(|e| e.into_inner());
        let name = format!("cyph-conf-{}-{tag}", std::process::id());
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

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `f` on a thread that has entered the namespace (a thread switches network
    /// namespace on its own, and the threads it spawns inherit it); a panic in `f` is
    /// resumed in the caller.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = PathBuf::from("/run/netns").join(&self.name);
        std::thread::scope(|s| {
            s.spawn(|| {
                let file = std::fs::File::open(&path)
                    .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
                // SAFETY: a valid namespace descriptor, open for the call; `setns`
                // switches only this thread.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
                f()
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// Writes a sysctl of the namespace, e.g. `net/ipv6/conf/default/disable_ipv6`.
    /// Call it inside [`Netns::run`]: `/proc/sys/net` shows the calling thread's namespace.
    pub fn sysctl(&self, key: &str, value: &str) {
        let path = format!("/proc/sys/{key}");
        std::fs::write(&path, value).unwrap_or_else(|e| panic!("write {path}: {e}"));
    }

    /// `ip args...` inside the namespace; its stdout. Fails the test if `ip` fails.
    pub fn ip(&self, args: &[&str]) -> String {
        let (ok, out) = self.try_ip(args);
        assert!(ok, "ip {args:?} failed: {out}");
        out
    }

    /// `ip args...` inside the namespace: whether it succeeded, and its stdout (stderr
    /// when it failed).
    pub fn try_ip(&self, args: &[&str]) -> (bool, String) {
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

    /// Adds a down link that needs no peer: `dummy`, else `ifb` where the kernel has no
    /// dummy driver.
    pub fn add_dummy_link(&self, name: &str) {
        for kind in ["dummy", "ifb"] {
            if self.try_ip(&["link", "add", name, "type", kind]).0 {
                return;
            }
        }
        panic!("the kernel offers neither dummy nor ifb links");
    }

    /// Whether the namespace has a link called `name`.
    pub fn has_link(&self, name: &str) -> bool {
        self.try_ip(&["link", "show", "dev", name]).0
    }

    /// The names of the namespace's links.
    pub fn links(&self) -> Vec<String> {
        self.ip(&["-o", "link", "show"])
            .lines()
            .filter_map(|line| {
                let name = line.split(':').nth(1)?.trim();
                Some(name.split('@').next().unwrap_or(name).to_owned())
            })
            .collect()
    }

    /// The interface index of link `name`.
    pub fn ifindex(&self, name: &str) -> u32 {
        let line = self.ip(&["-o", "link", "show", "dev", name]);
        line.split(':')
            .next()
            .and_then(|index| index.trim().parse().ok())
            .unwrap_or_else(|| panic!("no interface index in `{line}`"))
    }

    /// Waits up to `timeout` for link `name` to be gone; whether it went.
    pub fn link_gone_within(&self, name: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.has_link(name) {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        true
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}
