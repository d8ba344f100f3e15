//! A cloud and nodes running the real binaries inside a [`Lab`]: writes their
//! configurations, adds devices, logs nodes in and starts their daemons.
#![allow(dead_code, unreachable_pub)]

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use super::{Lab, built, run, wait_for};

pub const DOMAIN: &str = "cyphonic";
pub const PASSWORD: &str = "correct horse battery staple";
/// Short, so the end-to-end tests see nodes renew their credentials.
pub const RENEW_AFTER_SECS: u64 = 4;

pub struct Cloud {
    pub ns: String,
    pub config: PathBuf,
    pub pin: String,
    /// The address nodes reach the cloud at.
    pub addr: String,
}

impl Cloud {
    /// Writes the cloud's configuration and signing key for a cloud in `ns`,
    /// reachable at `addr` (an IPv4 or bracketed IPv6 host). Add devices, then
    /// [`Cloud::serve`] (the two must not migrate the database at once).
    pub fn new(lab: &mut Lab, ns: &str, addr: &str) -> Self {
        let dir = lab.path("cloud");
        std::fs::create_dir_all(&dir).expect("cloud dir");
        let config = dir.join("cloud.yaml");
        std::fs::write(
            &config,
            format!(
                "data_dir: {}\ndomain: {DOMAIN}\nlog: info\nargon2:\n  memory_kib: 8192\n  iterations: 1\n  parallelism: 1\nservices:\n  nms:\n    keepalive_secs: 5\ncredentials:\n  lifetime_secs: 600\n  renew_after_secs: {RENEW_AFTER_SECS}\n",
                dir.join("data").display()
            ),
        )
        .expect("write cloud config");
        let pin_out = run(Command::new(built("cyphonic-cloud"))
            .arg("--config")
            .arg(&config)
            .args(["key", "show"]));
        let pin = String::from_utf8_lossy(&pin_out.stdout)
            .lines()
            .next()
            .expect("key show prints the pin")
            .trim()
            .to_owned();
        Self {
            ns: ns.to_owned(),
            config,
            pin,
            addr: addr.to_owned(),
        }
    }

    /// Starts `cyphonic-cloud serve` in the cloud's namespace.
    pub fn serve(&self, lab: &mut Lab) {
        let mut cmd = lab.cmd(&self.ns, built("cyphonic-cloud"));
        cmd.arg("--config").arg(&self.config).arg("serve");
        lab.spawn("cloud", cmd);
    }

    pub fn add_device(&self, device: &str) {
        let mut child = Command::new(built("cyphonic-cloud"))
            .arg("--config")
            .arg(&self.config)
            .args(["device", "add", device, "--fqdn"])
            .arg(format!("{device}.{DOMAIN}"))
            .arg("--password-stdin")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("cyphonic-cloud device add");
        use std::io::Write;
        writeln!(child.stdin.take().expect("stdin"), "{PASSWORD}").expect("password");
        let out = child.wait_with_output().expect("device add");
        assert!(
            out.status.success(),
            "device add {device}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

pub struct Node {
    pub name: String,
    pub ns: String,
    pub dir: PathBuf,
    pub config: PathBuf,
}

/// Options of a node's configuration.
pub struct NodeOptions {
    pub filter: Option<String>,
    pub crypto: Vec<&'static str>,
    pub suites: Vec<&'static str>,
    pub listen_port: u16,
    /// The mobility plugin file; `None` makes the node poll its addresses.
    pub mobility: Option<&'static str>,
}

impl Default for NodeOptions {
    fn default() -> Self {
        Self {
            filter: None,
            crypto: vec!["libcyphonic_aes_gcm.so", "libcyphonic_chacha20_poly1305.so"],
            suites: vec![],
            listen_port: 7400,
            mobility: Some("libcyphonic_netlink_mobility.so"),
        }
    }
}

impl Node {
    /// Writes `name`'s configuration for a node in `ns` and its resolv.conf pointing at
    /// `upstream` (what the daemon forwards to by default).
    pub fn configure(
        lab: &mut Lab,
        cloud: &Cloud,
        name: &str,
        ns: &str,
        upstream: &str,
        options: NodeOptions,
    ) -> Self {
        let dir = lab.path(name);
        std::fs::create_dir_all(&dir).expect("node dir");
        let filter = dir.join("dns_filter.lua");
        let default_filter = std::fs::read_to_string(
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/dns_filter.lua"),
        )
        .expect("scripts/dns_filter.lua");
        std::fs::write(&filter, options.filter.unwrap_or(default_filter)).expect("filter");
        let crypto: Vec<String> = options
            .crypto
            .iter()
            .map(|p| format!("\"{}\"", built(p).display()))
            .collect();
        let suites: Vec<String> = options.suites.iter().map(|s| format!("\"{s}\"")).collect();
        let mobility = options.mobility.map_or_else(
            || "null".to_owned(),
            |m| format!("\"{}\"", built(m).display()),
        );
        let config = dir.join("node.yaml");
        std::fs::write(
            &config,
            format!(
                "state_dir: state
log: debug
cloud:
  as: \"{addr}:7301\"
  nms: \"{addr}:7302\"
  key: \"{pin}\"
tunnel:
  listen_port: {port}
  suites: [{suites}]
plugins:
  interface: \"{tun}\"
  crypto: [{crypto}]
  mobility: {mobility}
interface:
  name: cyph0
  mtu: 1420
resolver:
  filter: dns_filter.lua
  system: resolv-conf
control:
  socket: run/cyphonicd.sock
mobility:
  poll_interval_ms: 500
",
                addr = cloud.addr,
                pin = cloud.pin,
                port = options.listen_port,
                suites = suites.join(", "),
                tun = built("libcyphonic_linux_tun.so").display(),
                crypto = crypto.join(", "),
                mobility = mobility,
            ),
        )
        .expect("node config");
        lab.etc_file(ns, "resolv.conf", &format!("nameserver {upstream}\n"));
        Self {
            name: name.to_owned(),
            ns: ns.to_owned(),
            dir,
            config,
        }
    }

    pub fn fqdn(&self) -> String {
        format!("{}.{DOMAIN}", self.name)
    }

    /// `cyphonic login` in the node's namespace, the password on standard input.
    pub fn login(&self, lab: &Lab) {
        let mut cmd = lab.cmd(&self.ns, built("cyphonic"));
        cmd.arg("--config").arg(&self.config).args([
            "login",
            "--device-id",
            &self.name,
            "--password-stdin",
        ]);
        let mut child = cmd
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("cyphonic login");
        use std::io::Write;
        writeln!(child.stdin.take().expect("stdin"), "{PASSWORD}").expect("password");
        let out = child.wait_with_output().expect("login");
        assert!(
            out.status.success(),
            "login {}: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn start(&self, lab: &mut Lab) {
        let mut cmd = lab.cmd(&self.ns, built("cyphonicd"));
        cmd.arg("--config").arg(&self.config);
        lab.spawn(&self.name, cmd);
    }

    /// `cyphonic --json <args>` in the node's namespace, parsed.
    pub fn cli(&self, lab: &Lab, args: &[&str]) -> (bool, serde_json::Value) {
        let out = lab
            .cmd(&self.ns, built("cyphonic"))
            .arg("--config")
            .arg(&self.config)
            // Explicit, so the CLI reaches the daemon even while its file is broken.
            .arg("--socket")
            .arg(self.dir.join("run/cyphonicd.sock"))
            .arg("--json")
            .args(args)
            .output()
            .expect("cyphonic");
        let value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            serde_json::json!({
                "unparsed": String::from_utf8_lossy(&out.stdout),
                "stderr": String::from_utf8_lossy(&out.stderr),
                "error": e.to_string(),
            })
        });
        (out.status.success(), value)
    }

    pub fn status(&self, lab: &Lab) -> serde_json::Value {
        self.cli(lab, &["status"]).1
    }

    /// Waits until the daemon reports `running`; returns its status.
    pub fn wait_running(&self, lab: &mut Lab) -> serde_json::Value {
        wait_for(
            &format!("{} to run", self.name),
            Duration::from_secs(30),
            || {
                if !lab.alive(&self.name) {
                    panic!("{} exited:\n{}", self.name, lab.log(&self.name));
                }
                let s = self.status(lab);
                (s["state"] == "running").then_some(s)
            },
        )
    }

    pub fn counter(&self, lab: &Lab, name: &str) -> u64 {
        self.status(lab)["counters"][name].as_u64().unwrap_or(0)
    }
}
