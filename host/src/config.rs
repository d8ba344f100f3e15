//! The node's configuration: what `config/node.yaml` may say, its defaults, and the one
//! [`parse`] function that turns YAML text into a validated [`NodeConfig`].
//!
//! Unknown keys are errors (a typo never silently becomes a default), and YAML errors
//! carry line and column. Relative paths are resolved against the directory of the
//! configuration file, so a config next to its plugins and scripts can be moved as a
//! whole.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};

use cyphonic_proto::suite::SuiteId;
use ed25519_dalek::VerifyingKey;
use ipnet::IpNet;
use serde::Deserialize;

#[cfg(not(windows))]
pub const DEFAULT_CONFIG_PATH: &str = "/etc/cyphonic/node.yaml";
#[cfg(not(windows))]
pub const DEFAULT_STATE_DIR: &str = "/var/lib/cyphonic";
#[cfg(not(windows))]
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/cyphonic/cyphonicd.sock";
#[cfg(not(windows))]
pub const DEFAULT_FILTER: &str = "/etc/cyphonic/dns_filter.lua";
// %ProgramData% is C:\ProgramData on every supported Windows; the installer passes
// `--config` explicitly anyway, and relative paths in the file follow the file.
#[cfg(windows)]
pub const DEFAULT_CONFIG_PATH: &str = r"C:\ProgramData\cyphonic\node.yaml";
#[cfg(windows)]
pub const DEFAULT_STATE_DIR: &str = r"C:\ProgramData\cyphonic\state";
#[cfg(windows)]
pub const DEFAULT_CONTROL_SOCKET: &str = r"\\.\pipe\cyphonic";
#[cfg(windows)]
pub const DEFAULT_FILTER: &str = r"C:\ProgramData\cyphonic\dns_filter.lua";
pub const DEFAULT_LISTEN_PORT: u16 = 7400;
pub const DEFAULT_MTU: u32 = 1420;
/// The text prefix of a pinned cloud key (`cyphonic-cloud key show` prints it).
pub const CLOUD_KEY_PREFIX: &str = "cyphonic1:";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// YAML syntax or a field of the wrong shape; the message carries line and column.
    #[error("{file}: {message}")]
    Syntax { file: String, message: String },
    #[error("{file}: {field}: {message}")]
    Invalid {
        file: String,
        field: &'static str,
        message: String,
    },
    #[error("{file}: {source}")]
    Io {
        file: String,
        #[source]
        source: std::io::Error,
    },
}

/// Parses and validates a node configuration. `origin` names the file in errors and is
/// the base of relative paths.
pub fn parse(text: &str, origin: &Path) -> Result<NodeConfig, ConfigError> {
    let file = origin.display().to_string();
    let mut config: NodeConfig = serde_saphyr::from_str(text).map_err(|e| ConfigError::Syntax {
        file: file.clone(),
        message: e.to_string(),
    })?;
    let base = origin
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    config.resolve_paths(&base);
    config.validate(&file)?;
    Ok(config)
}

/// Reads and parses the file at `path`.
pub fn load(path: &Path) -> Result<NodeConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
        file: path.display().to_string(),
        source,
    })?;
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    parse(&text, &absolute)
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// The node key and the stored credential (both mode 0600) live here.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// `tracing` filter directive (RUST_LOG overrides it).
    #[serde(default = "default_log")]
    pub log: String,
    pub cloud: CloudSection,
    #[serde(default)]
    pub tunnel: TunnelSection,
    pub plugins: PluginsSection,
    #[serde(default)]
    pub interface: InterfaceSection,
    #[serde(default)]
    pub resolver: ResolverSection,
    #[serde(default)]
    pub control: ControlSection,
    #[serde(default)]
    pub mobility: MobilitySection,
    /// The starter page (`cyphonic ui`).
    #[serde(default)]
    pub ui: UiSection,
    /// The config-logic script (`scripts/config.lua`), run on every load and reload;
    /// null: none.
    #[serde(default)]
    pub config_script: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MobilitySection {
    /// How often the polling detector compares the host's addresses (when no plugin
    /// is configured, or it cannot start).
    pub poll_interval_ms: u64,
}

impl Default for MobilitySection {
    fn default() -> Self {
        Self {
            poll_interval_ms: 2000,
        }
    }
}

/// Where the cloud is and which key it signs with.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloudSection {
    /// The AS, `host:port` (a name is resolved at every connection).
    #[serde(rename = "as")]
    pub auth: String,
    /// The NMS, `host:port`.
    pub nms: String,
    /// The cloud's public key, `cyphonic1:<64 hex digits>` (`cyphonic-cloud key show`).
    pub key: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TunnelSection {
    /// UDP port for node-to-node traffic on every local address; 0 picks one.
    pub listen_port: u16,
    /// Crypto suites offered in handshakes, most preferred first; each needs a loaded
    /// crypto plugin. Empty: every loaded plugin's suite, in plugin order.
    pub suites: Vec<String>,
    /// Socket buffer size asked for (the kernel caps it at `net.core.*mem_max` unless
    /// we are root, which may force it).
    pub socket_buffer_bytes: usize,
    /// A peer we sent nothing to for this long gets a keepalive, which holds NAT
    /// mappings and relay bindings open (NATs forget UDP mappings after 30 s or more).
    pub keepalive_secs: u64,
}

impl Default for TunnelSection {
    fn default() -> Self {
        Self {
            listen_port: DEFAULT_LISTEN_PORT,
            suites: Vec::new(),
            socket_buffer_bytes: 4 << 20,
            keepalive_secs: 20,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginsSection {
    /// The virtual-interface plugin (`libcyphonic_linux_tun.so`).
    pub interface: PathBuf,
    /// Crypto-suite plugins; at least one.
    pub crypto: Vec<PathBuf>,
    /// The mobility-detector plugin (`libcyphonic_netlink_mobility.so`); null: poll the
    /// host's addresses every `mobility.poll_interval_ms`.
    #[serde(default)]
    pub mobility: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InterfaceSection {
    /// The OS name of the virtual interface; null lets the plugin choose.
    pub name: Option<String>,
    pub mtu: u32,
    /// Overlay prefixes routed into the interface. Empty: 100.64.0.0/10 and the /48 of
    /// the node's virtual IPv6 address.
    pub routes: Vec<IpNet>,
    /// Plugin-specific `key=value` lines.
    pub options: Option<String>,
}

impl Default for InterfaceSection {
    fn default() -> Self {
        Self {
            name: Some("cyph0".to_owned()),
            mtu: DEFAULT_MTU,
            routes: Vec::new(),
            options: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BlockResponse {
    Nxdomain,
    Refused,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SystemDnsMode {
    /// Linux: systemd-resolved when it runs, else a managed resolv.conf.
    /// Windows: an NRPT rule.
    Auto,
    Resolved,
    ResolvConf,
    /// Windows: a Name Resolution Policy Table rule sends only overlay names to us.
    Nrpt,
    /// Leave the system's DNS alone.
    None,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ResolverSection {
    /// Addresses the resolver answers on. Empty: the node's virtual IPv4, port 53.
    pub listen: Vec<SocketAddr>,
    /// Resolvers for names the filter forwards. Empty: the system's nameservers from
    /// before the daemon managed them.
    pub upstreams: Vec<SocketAddr>,
    /// The DNS filter script.
    pub filter: PathBuf,
    pub block_response: BlockResponse,
    /// TTL of overlay answers.
    pub ttl_secs: u32,
    /// Most time an overlay answer may take (direction + handshake).
    pub overlay_timeout_ms: u64,
    pub system: SystemDnsMode,
    pub resolv_conf: PathBuf,
    /// Memory the filter's Lua state may use.
    pub lua_memory_bytes: usize,
    /// Lua instructions one filter call may run.
    pub lua_instruction_budget: u64,
}

impl Default for ResolverSection {
    fn default() -> Self {
        Self {
            listen: Vec::new(),
            upstreams: Vec::new(),
            filter: PathBuf::from(DEFAULT_FILTER),
            block_response: BlockResponse::Nxdomain,
            ttl_secs: 5,
            overlay_timeout_ms: 1000,
            system: SystemDnsMode::Auto,
            resolv_conf: PathBuf::from("/etc/resolv.conf"),
            lua_memory_bytes: 8 << 20,
            lua_instruction_budget: 1_000_000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControlSection {
    /// The local API's Unix socket (mode 0600, root only).
    pub socket: PathBuf,
}

impl Default for ControlSection {
    fn default() -> Self {
        Self {
            socket: PathBuf::from(DEFAULT_CONTROL_SOCKET),
        }
    }
}

/// The starter page: a local web page for login and status, served by the daemon.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UiSection {
    pub enabled: bool,
    /// A loopback address only: the page is for this machine's own browser.
    pub listen: SocketAddr,
}

pub const DEFAULT_UI_LISTEN: SocketAddr =
    SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 7480);

impl Default for UiSection {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: DEFAULT_UI_LISTEN,
        }
    }
}

fn default_state_dir() -> PathBuf {
    PathBuf::from(DEFAULT_STATE_DIR)
}

fn default_log() -> String {
    "info".to_owned()
}

impl NodeConfig {
    /// The pinned cloud key.
    pub fn cloud_key(&self) -> Result<VerifyingKey, String> {
        parse_cloud_key(&self.cloud.key)
    }

    /// The configured suite preference as suite ids.
    pub fn suite_ids(&self) -> Result<Vec<SuiteId>, String> {
        self.tunnel
            .suites
            .iter()
            .map(|name| suite_by_name(name).ok_or_else(|| format!("unknown suite {name:?}")))
            .collect()
    }

    fn resolve_paths(&mut self, base: &Path) {
        let join = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        join(&mut self.state_dir);
        join(&mut self.plugins.interface);
        self.plugins.crypto.iter_mut().for_each(join);
        if let Some(p) = self.plugins.mobility.as_mut() {
            join(p);
        }
        join(&mut self.resolver.filter);
        join(&mut self.control.socket);
        if let Some(p) = self.config_script.as_mut() {
            join(p);
        }
    }

    fn validate(&self, file: &str) -> Result<(), ConfigError> {
        let invalid = |field, message: String| ConfigError::Invalid {
            file: file.to_owned(),
            field,
            message,
        };
        self.cloud_key().map_err(|m| invalid("cloud.key", m))?;
        for (field, addr) in [
            ("cloud.as", &self.cloud.auth),
            ("cloud.nms", &self.cloud.nms),
        ] {
            if !addr.contains(':') {
                return Err(invalid(field, format!("{addr:?} is not host:port")));
            }
        }
        if self.plugins.crypto.is_empty() {
            return Err(invalid(
                "plugins.crypto",
                "at least one crypto plugin is needed".to_owned(),
            ));
        }
        self.suite_ids().map_err(|m| invalid("tunnel.suites", m))?;
        if !(1..=25).contains(&self.tunnel.keepalive_secs) {
            return Err(invalid(
                "tunnel.keepalive_secs",
                "must be 1..=25 (NAT mappings expire after about 30 s)".to_owned(),
            ));
        }
        if !(576..=65000).contains(&self.interface.mtu) {
            return Err(invalid(
                "interface.mtu",
                format!("{} is outside 576..=65000", self.interface.mtu),
            ));
        }
        if !(100..=60_000).contains(&self.mobility.poll_interval_ms) {
            return Err(invalid(
                "mobility.poll_interval_ms",
                "must be 100..=60000".to_owned(),
            ));
        }
        if self.resolver.ttl_secs > 86_400 {
            return Err(invalid("resolver.ttl_secs", "at most 86400".to_owned()));
        }
        if self.resolver.overlay_timeout_ms == 0 || self.resolver.overlay_timeout_ms > 30_000 {
            return Err(invalid(
                "resolver.overlay_timeout_ms",
                "must be 1..=30000".to_owned(),
            ));
        }
        if self.resolver.lua_instruction_budget == 0 || self.resolver.lua_memory_bytes < 64 << 10 {
            return Err(invalid(
                "resolver.lua_*",
                "the Lua budget must be positive and the memory limit at least 64 KiB".to_owned(),
            ));
        }
        if !self.ui.listen.ip().is_loopback() {
            return Err(invalid(
                "ui.listen",
                format!(
                    "{} is not a loopback address (the starter page is for this machine only)",
                    self.ui.listen
                ),
            ));
        }
        Ok(())
    }
}

/// Resolves a `host:port` text to its addresses now (the cloud may move between uses).
pub fn resolve_service(text: &str) -> std::io::Result<Vec<SocketAddr>> {
    let addrs: Vec<SocketAddr> = text.to_socket_addrs()?.collect();
    if addrs.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("{text} resolves to no address"),
        ));
    }
    Ok(addrs)
}

/// Parses `cyphonic1:<64 hex digits>` (the prefix may be left out).
pub fn parse_cloud_key(text: &str) -> Result<VerifyingKey, String> {
    let trimmed = text.trim();
    let digits = trimmed.strip_prefix(CLOUD_KEY_PREFIX).unwrap_or(trimmed);
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(digits, &mut bytes)
        .map_err(|_| format!("expected `{CLOUD_KEY_PREFIX}` and 64 hex digits"))?;
    VerifyingKey::from_bytes(&bytes).map_err(|_| "not an Ed25519 public key".to_owned())
}

pub fn suite_by_name(name: &str) -> Option<SuiteId> {
    [
        SuiteId::AES_256_GCM,
        SuiteId::CHACHA20_POLY1305,
        SuiteId::AES_256_CTR_HMAC_SHA256,
    ]
    .into_iter()
    .find(|s| s.name() == name)
}

/// The default overlay routes for a node with these virtual addresses.
pub fn default_routes(vip6: std::net::Ipv6Addr) -> Vec<(IpAddr, u8)> {
    let v6_net = ipnet::Ipv6Net::new(vip6, 48)
        .map(|n| n.trunc())
        .expect("48 is a valid IPv6 prefix length");
    vec![
        (IpAddr::V4(std::net::Ipv4Addr::new(100, 64, 0, 0)), 10),
        (IpAddr::V6(v6_net.network()), 48),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "
cloud:
  as: 192.0.2.1:7301
  nms: 192.0.2.1:7302
  key: cyphonic1:3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c
plugins:
  interface: lib/libcyphonic_linux_tun.so
  crypto: [lib/libcyphonic_aes_gcm.so]
";

    #[test]
    fn minimal_config_gets_defaults_and_relative_paths() {
        let config = parse(MINIMAL, Path::new("/etc/cyphonic/node.yaml")).unwrap();
        assert_eq!(config.tunnel.listen_port, DEFAULT_LISTEN_PORT);
        assert_eq!(config.interface.mtu, DEFAULT_MTU);
        assert_eq!(
            config.plugins.interface,
            Path::new("/etc/cyphonic/lib/libcyphonic_linux_tun.so")
        );
        assert_eq!(config.state_dir, Path::new(DEFAULT_STATE_DIR));
        assert_eq!(config.resolver.block_response, BlockResponse::Nxdomain);
        config.cloud_key().unwrap();
    }

    #[test]
    fn unknown_key_is_an_error_with_a_position() {
        let text = format!("{MINIMAL}tunel:\n  listen_port: 1\n");
        let err = parse(&text, Path::new("node.yaml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("tunel"), "{err}");
        assert!(err.contains("line"), "{err}");
    }

    #[test]
    fn bad_values_name_the_field() {
        let cases = [
            ("key: cyphonic1:3d40", "cloud.key"),
            ("crypto: []", "plugins.crypto"),
        ];
        for (replace, field) in cases {
            let (from, _) = replace.split_once(':').unwrap();
            let text: String = MINIMAL
                .lines()
                .map(|l| {
                    if l.trim_start().starts_with(&format!("{from}:")) {
                        format!("  {replace}\n")
                    } else {
                        format!("{l}\n")
                    }
                })
                .collect();
            let err = parse(&text, Path::new("node.yaml"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(field), "{err}");
        }
        let text = format!("{MINIMAL}tunnel:\n  suites: [rot13]\n");
        let err = parse(&text, Path::new("node.yaml"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("tunnel.suites") && err.contains("rot13"),
            "{err}"
        );
        let text = format!("{MINIMAL}interface:\n  mtu: 100\n");
        let err = parse(&text, Path::new("node.yaml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("interface.mtu"), "{err}");
    }

    #[test]
    fn the_starter_page_listens_on_loopback_only() {
        let config = parse(MINIMAL, Path::new("node.yaml")).unwrap();
        assert!(config.ui.enabled);
        assert_eq!(config.ui.listen, DEFAULT_UI_LISTEN);
        let text = format!("{MINIMAL}ui:\n  listen: \"[::1]:7000\"\n");
        assert_eq!(
            parse(&text, Path::new("node.yaml"))
                .unwrap()
                .ui
                .listen
                .port(),
            7000
        );
        let text = format!("{MINIMAL}ui:\n  listen: \"0.0.0.0:7480\"\n");
        let err = parse(&text, Path::new("node.yaml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("ui.listen"), "{err}");
    }

    #[test]
    fn default_routes_cover_the_pools() {
        let routes = default_routes("fd12:3456:789a:1::5".parse().unwrap());
        assert_eq!(routes[0], ("100.64.0.0".parse().unwrap(), 10));
        assert_eq!(routes[1], ("fd12:3456:789a::".parse().unwrap(), 48));
    }
}
