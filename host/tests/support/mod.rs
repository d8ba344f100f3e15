//! A lab of network namespaces for end-to-end tests with the real binaries: namespaces,
//! veth links, a bridge, processes started inside them, threads that run inside a
//! namespace, and cleanup of all of it on drop (also when an assertion fails).
//!
//! Underlay addresses are TEST-NET (198.51.100.0/24, 203.0.113.0/24, 192.0.2.0/24)
//! and 2001:db8::/32 only; nothing leaves the namespaces the lab made.
#![allow(unsafe_code, dead_code, unreachable_pub)]

pub mod fleet;
pub mod pair;
pub mod topology;

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Everything a test made; dropped in reverse: processes, namespaces, files.
pub struct Lab {
    pub prefix: String,
    pub dir: tempfile::TempDir,
    namespaces: Vec<String>,
    children: Vec<(String, Child)>,
    netns_etc: Vec<PathBuf>,
}

static LABS: AtomicU32 = AtomicU32::new(0);

impl Lab {
    /// `None` (and a message) when the tests cannot make namespaces: not root, or no
    /// `ip`.
    pub fn new(tag: &str) -> Option<Self> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("SKIPPED: network-namespace tests need root");
            return None;
        }
        if Command::new("ip").arg("-V").output().is_err() {
            panic!("iproute2 (`ip`) is required for the namespace tests");
        }
        let n = LABS.fetch_add(1, Ordering::Relaxed);
        let prefix = format!("cy{tag}{}x{n}", std::process::id() % 100_000);
        Some(Self {
            prefix,
            dir: tempfile::tempdir().expect("temp dir"),
            namespaces: Vec::new(),
            children: Vec::new(),
            netns_etc: Vec::new(),
        })
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Creates namespace `<prefix><suffix>` with loopback up; returns its name.
    pub fn netns(&mut self, suffix: &str) -> String {
        let name = format!("{}{suffix}", self.prefix);
        run(Command::new("ip").args(["netns", "add", &name]));
        self.namespaces.push(name.clone());
        self.ip(&name, &["link", "set", "lo", "up"]);
        name
    }

    /// Runs `ip <args>` inside `ns`, panicking with its output on failure.
    pub fn ip(&self, ns: &str, args: &[&str]) {
        run(Command::new("ip")
            .args(["netns", "exec", ns, "ip"])
            .args(args));
    }

    /// A bridge in `ns` with the given addresses (CIDR).
    pub fn bridge(&self, ns: &str, name: &str, addrs: &[&str]) {
        self.ip(ns, &["link", "add", name, "type", "bridge"]);
        for a in addrs {
            self.add_addr(ns, name, a);
        }
        self.ip(ns, &["link", "set", name, "up"]);
    }

    pub fn add_addr(&self, ns: &str, dev: &str, cidr: &str) {
        if cidr.contains(':') {
            self.ip(ns, &["addr", "add", cidr, "dev", dev, "nodad"]);
        } else {
            self.ip(ns, &["addr", "add", cidr, "dev", dev]);
        }
    }

    /// A veth pair between `ns_a` (device `dev_a`) and `ns_b` (`dev_b`), both up.
    /// `bridge_a`: enslave the `ns_a` end to this bridge.
    pub fn link(&self, ns_a: &str, dev_a: &str, ns_b: &str, dev_b: &str, bridge_a: Option<&str>) {
        // Create in ns_a with a temporary peer name (device names are global until
        // moved), then move the peer.
        let tmp = format!("t{}{}", self.prefix.len(), dev_b);
        let tmp: String = tmp.chars().take(15).collect();
        self.ip(
            ns_a,
            &["link", "add", dev_a, "type", "veth", "peer", "name", &tmp],
        );
        self.ip(ns_a, &["link", "set", &tmp, "netns", ns_b]);
        self.ip(ns_b, &["link", "set", &tmp, "name", dev_b]);
        if let Some(br) = bridge_a {
            self.ip(ns_a, &["link", "set", dev_a, "master", br]);
        }
        self.ip(ns_a, &["link", "set", dev_a, "up"]);
        self.ip(ns_b, &["link", "set", dev_b, "up"]);
    }

    /// Writes `/etc/netns/<ns>/<file>`, which `ip netns exec` mounts over
    /// `/etc/<file>` for everything run in the namespace.
    pub fn etc_file(&mut self, ns: &str, file: &str, content: &str) -> PathBuf {
        let dir = PathBuf::from("/etc/netns").join(ns);
        std::fs::create_dir_all(&dir).expect("create /etc/netns/<ns>");
        if !self.netns_etc.contains(&dir) {
            self.netns_etc.push(dir.clone());
        }
        let path = dir.join(file);
        std::fs::write(&path, content).expect("write netns etc file");
        path
    }

    /// A command run inside `ns`.
    pub fn cmd(&self, ns: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns]).arg(program);
        c
    }

    /// Starts `cmd` in the background; stdout and stderr go to `<dir>/<label>.log`.
    /// The process is stopped (SIGTERM, then SIGKILL) when the lab drops.
    pub fn spawn(&mut self, label: &str, mut cmd: Command) -> u32 {
        let log = File::create(self.path(&format!("{label}.log"))).expect("log file");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {label}: {e}"));
        let pid = child.id();
        self.children.push((label.to_owned(), child));
        pid
    }

    pub fn log(&self, label: &str) -> String {
        std::fs::read_to_string(self.path(&format!("{label}.log"))).unwrap_or_default()
    }

    /// Whether the process `label` still runs.
    pub fn alive(&mut self, label: &str) -> bool {
        self.children
            .iter_mut()
            .find(|(l, _)| l == label)
            .is_some_and(|(_, c)| matches!(c.try_wait(), Ok(None)))
    }

    /// Stops `label` with SIGTERM and waits (at most 10 s); returns its exit status.
    pub fn stop(&mut self, label: &str) -> Option<std::process::ExitStatus> {
        let i = self.children.iter().position(|(l, _)| l == label)?;
        let (_, mut child) = self.children.remove(i);
        terminate(&mut child)
    }

    /// Waits (at most 10 s) until something in `ns` listens on TCP `port`: a loaded
    /// machine can take a while to start a server.
    pub fn wait_tcp_listen(&self, ns: &str, port: u16) {
        wait_for(
            &format!("a TCP listener on port {port} in {ns}"),
            Duration::from_secs(10),
            || {
                let out = self
                    .cmd(ns, "ss")
                    .args(["-Htln", &format!("sport = :{port}")])
                    .output()
                    .ok()?;
                (!out.stdout.is_empty()).then_some(())
            },
        );
    }

    /// Kills `label` with SIGKILL (a crash: no cleanup runs) and reaps it.
    pub fn kill(&mut self, label: &str) {
        if let Some(i) = self.children.iter().position(|(l, _)| l == label) {
            let (_, mut child) = self.children.remove(i);
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Runs `f` on a thread that lives inside `ns` (sockets it opens belong there).
    pub fn in_ns<T: Send + 'static>(
        &self,
        ns: &str,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        let path = PathBuf::from("/var/run/netns").join(ns);
        std::thread::spawn(move || {
            enter_netns(&path);
            f()
        })
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for (label, child) in self.children.iter_mut().rev() {
            if terminate(child).is_none() {
                eprintln!("{label} did not stop");
            }
        }
        for ns in self.namespaces.iter().rev() {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
        }
        for dir in &self.netns_etc {
            let _ = std::fs::remove_dir_all(dir);
        }
        if std::env::var_os("CYPHONIC_KEEP_LAB").is_some() {
            let kept = self.dir.path().to_path_buf();
            eprintln!("lab files kept in {}", kept.display());
            std::mem::forget(std::mem::replace(
                &mut self.dir,
                tempfile::tempdir().expect("temp dir"),
            ));
        }
    }
}

fn terminate(child: &mut Child) -> Option<std::process::ExitStatus> {
    if let Ok(Some(status)) = child.try_wait() {
        return Some(status);
    }
    // SAFETY: kill with a pid we spawned and have not reaped.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    child.wait().ok()
}

/// Moves the calling thread into the namespace at `path`.
pub fn enter_netns(path: &Path) {
    let f = File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    // SAFETY: setns with a valid namespace descriptor affects only this thread.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
}

/// Runs a command, panicking with its output unless it succeeds.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: cannot run: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Polls `f` every 100 ms until it returns `Some`, at most `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The workspace's target directory of the profile the tests were built with.
pub fn target_dir() -> PathBuf {
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_cyphonicd"));
    exe.parent().expect("bin dir").to_path_buf()
}

/// A binary or plugin built by `cargo build --workspace` next to ours.
pub fn built(name: &str) -> PathBuf {
    let path = target_dir().join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace` first (scripts/test.sh does)",
        path.display()
    );
    path
}

/// UDP payloads of IPv4 packets to `dst` in a pcap file (Ethernet link type), in order.
pub fn udp_payloads(pcap: &[u8], dst: [u8; 4]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    if pcap.len() < 24 {
        return out;
    }
    let le = pcap[..4] == [0xd4, 0xc3, 0xb2, 0xa1];
    let u32_at = |b: &[u8]| {
        let a = [b[0], b[1], b[2], b[3]];
        if le {
            u32::from_le_bytes(a)
        } else {
            u32::from_be_bytes(a)
        }
    };
    let mut pos = 24;
    while pos + 16 <= pcap.len() {
        let incl = u32_at(&pcap[pos + 8..]) as usize;
        let start = pos + 16;
        pos = start + incl;
        let Some(frame) = pcap.get(start..start + incl) else {
            break;
        };
        if frame.len() < 14 + 20 + 8 || frame[12..14] != [0x08, 0x00] {
            continue;
        }
        let ip = &frame[14..];
        let ihl = usize::from(ip[0] & 0x0f) * 4;
        if ip[9] != 17 || ip[16..20] != dst || ip.len() < ihl + 8 {
            continue;
        }
        out.push(ip[ihl + 8..].to_vec());
    }
    out
}
