//! The cloud's configuration: what `config/cloud.yaml` may say, its defaults, and the one
//! [`parse`] function that turns YAML text into a validated [`CloudConfig`].
//!
//! Every field has a default, so an empty file (or no file at all) is a complete
//! single-host cloud: a SQLite database and a fresh signing key in the data directory,
//! AS/NMS/TRS on their default ports on every address, the 100.64.0.0/10 pool and a
//! random ULA /48 for IPv6. Unknown keys are errors, so a typo never silently becomes
//! a default.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use cyphonic_proto::wire::Fqdn;
use ipnet::{Ipv4Net, Ipv6Net};
use serde::Deserialize;

pub const DEFAULT_AS_PORT: u16 = 7301;
pub const DEFAULT_NMS_PORT: u16 = 7302;
pub const DEFAULT_TRS_PORT: u16 = 7303;
pub const DEFAULT_METRICS_PORT: u16 = 9301;
pub const DEFAULT_DATA_DIR: &str = "/var/lib/cyphonic-cloud";

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

/// Parses and validates a cloud configuration. `origin` names the file in errors.
pub fn parse(text: &str, origin: &Path) -> Result<CloudConfig, ConfigError> {
    let file = origin.display().to_string();
    let config: CloudConfig = if text.trim().is_empty() {
        CloudConfig::default()
    } else {
        serde_saphyr::from_str(text).map_err(|e| ConfigError::Syntax {
            file: file.clone(),
            message: e.to_string(),
        })?
    };
    config.validate(&file)?;
    Ok(config)
}

/// Reads and parses `path`; `None` gives the embedded defaults.
pub fn load(path: Option<&Path>) -> Result<CloudConfig, ConfigError> {
    match path {
        None => Ok(CloudConfig::default()),
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
                file: path.display().to_string(),
                source,
            })?;
            parse(&text, path)
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CloudConfig {
    /// Where the database and the signing key live.
    pub data_dir: PathBuf,
    /// The overlay domain: every device FQDN lies within it.
    pub domain: Fqdn,
    /// `tracing` filter directive, e.g. `info` or `cyphonic_cloud=debug`.
    pub log: String,
    pub services: Services,
    pub credentials: CredentialSettings,
    pub pools: Pools,
    pub login_limits: LoginLimits,
    pub argon2: Argon2Settings,
    pub policy: Policy,
    /// TRS instances the NMS offers to nodes. The local TRS (when this process runs
    /// one) is always offered first; list relays on other hosts here.
    pub relays: Vec<RelaySite>,
    pub metrics: Metrics,
}

impl Default for CloudConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            domain: Fqdn::new("cyphonic").expect("the literal default domain is a valid name"),
            log: "info".into(),
            services: Services::default(),
            credentials: CredentialSettings::default(),
            pools: Pools::default(),
            login_limits: LoginLimits::default(),
            argon2: Argon2Settings::default(),
            policy: Policy::default(),
            relays: Vec::new(),
            metrics: Metrics::default(),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Services {
    #[serde(rename = "as")]
    pub auth: AsSettings,
    pub nms: NmsSettings,
    pub trs: TrsSettings,
}

/// Which services a process runs (`serve --only ...` overrides `enabled`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum ServiceKind {
    #[value(name = "as")]
    Auth,
    Nms,
    Trs,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AsSettings {
    pub enabled: bool,
    pub listen: Vec<SocketAddr>,
}

impl Default for AsSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: vec![any_address(DEFAULT_AS_PORT)],
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NmsSettings {
    pub enabled: bool,
    pub listen: Vec<SocketAddr>,
    /// How often nodes send KeepAlive (also holds their NAT mappings open).
    pub keepalive_secs: u16,
    /// A node that sent nothing for this long is offline.
    pub presence_ttl_secs: u16,
    /// How long the NMS waits for the responder's RouteDirectionConfirmation before it
    /// answers the initiator with OFFLINE (the node turns that into NXDOMAIN).
    pub confirm_timeout_ms: u32,
}

impl Default for NmsSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: vec![any_address(DEFAULT_NMS_PORT)],
            keepalive_secs: 20,
            presence_ttl_secs: 75,
            confirm_timeout_ms: 800,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrsSettings {
    pub enabled: bool,
    /// The name the NMS gives nodes for this relay.
    pub name: String,
    pub listen: Vec<SocketAddr>,
    /// Endpoints nodes use to reach this relay. Empty: the listen addresses, where a
    /// wildcard address tells nodes "the address you reach the NMS at" (the TRS runs on
    /// the same host and does not know its public address; the node does).
    pub advertise: Vec<SocketAddr>,
    /// A remote TRS (`--only trs` on another host) has no signing key: it reads the
    /// relay key exported with `cyphonic-cloud key export-relay` from this file.
    pub relay_key_file: Option<PathBuf>,
    /// Sustained bytes per second one ticket may relay (both directions together).
    pub rate_bytes_per_sec: u64,
    /// Burst allowance on top of the rate.
    pub burst_bytes: u64,
    /// A binding nobody used for this long is forgotten.
    pub idle_secs: u32,
    /// Most bindings held at once.
    pub max_bindings: usize,
}

impl Default for TrsSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            name: "trs1".into(),
            listen: vec![any_address(DEFAULT_TRS_PORT)],
            advertise: Vec::new(),
            relay_key_file: None,
            rate_bytes_per_sec: 25_000_000,
            burst_bytes: 4_000_000,
            idle_secs: 120,
            max_bindings: 200_000,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CredentialSettings {
    /// Validity of an issued credential. Short, so a stolen one is useless soon.
    pub lifetime_secs: u32,
    /// Nodes renew after this long (must be below the lifetime).
    pub renew_after_secs: u32,
    /// Validity of relay tickets.
    pub ticket_lifetime_secs: u32,
}

impl Default for CredentialSettings {
    fn default() -> Self {
        Self {
            lifetime_secs: 3_600,
            renew_after_secs: 1_800,
            ticket_lifetime_secs: 3_600,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Pools {
    pub ipv4: Ipv4Net,
    /// `None`: a random /48 inside fd00::/8 (RFC 4193) chosen at first start and kept
    /// in the database.
    pub ipv6: Option<Ipv6Net>,
}

impl Default for Pools {
    fn default() -> Self {
        Self {
            ipv4: Ipv4Net::new(std::net::Ipv4Addr::new(100, 64, 0, 0), 10)
                .expect("the literal CGNAT prefix is valid"),
            ipv6: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoginLimits {
    /// Failed logins per device within the window before that device is locked out
    /// for the rest of the window.
    pub per_device_failures: u32,
    /// Failed logins per source address within the window.
    pub per_source_failures: u32,
    pub window_secs: u32,
}

impl Default for LoginLimits {
    fn default() -> Self {
        Self {
            per_device_failures: 5,
            per_source_failures: 20,
            window_secs: 300,
        }
    }
}

/// Argon2id cost for new password hashes (OWASP's 2023 minimum by default). Existing
/// hashes keep the parameters they were made with.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Argon2Settings {
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
}

impl Default for Argon2Settings {
    fn default() -> Self {
        Self {
            memory_kib: 19_456,
            iterations: 2,
            parallelism: 1,
        }
    }
}

/// Who may open a route to whom. Rules are tried in order; the first whose patterns
/// match decides; `default` decides when none matches.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Policy {
    pub default: PolicyAction,
    pub rules: Vec<PolicyRule>,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            default: PolicyAction::Allow,
            rules: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PolicyAction {
    Allow,
    Deny,
}

/// Patterns are FQDNs where a leading `*.` matches any name below the rest
/// (`*.lab.cyphonic` matches `a.lab.cyphonic` and `b.c.lab.cyphonic`, not
/// `lab.cyphonic`), and `*` alone matches every name.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyRule {
    pub from: String,
    pub to: String,
    pub action: PolicyAction,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelaySite {
    pub name: String,
    pub endpoints: Vec<SocketAddr>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Metrics {
    /// Prometheus text endpoint (`GET /metrics`); `None` turns it off.
    pub listen: Option<SocketAddr>,
    /// Counters are also logged at this interval; 0 turns that off.
    pub log_interval_secs: u32,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            listen: Some(SocketAddr::new(
                IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
                DEFAULT_METRICS_PORT,
            )),
            log_interval_secs: 60,
        }
    }
}

impl CloudConfig {
    pub fn credential_lifetime(&self) -> Duration {
        Duration::from_secs(u64::from(self.credentials.lifetime_secs))
    }

    fn validate(&self, file: &str) -> Result<(), ConfigError> {
        let invalid = |field: &'static str, message: String| ConfigError::Invalid {
            file: file.to_owned(),
            field,
            message,
        };
        let c = &self.credentials;
        if c.lifetime_secs < 60 {
            return Err(invalid(
                "credentials.lifetime_secs",
                "must be at least 60".into(),
            ));
        }
        if c.renew_after_secs == 0 || c.renew_after_secs >= c.lifetime_secs {
            return Err(invalid(
                "credentials.renew_after_secs",
                "must be above 0 and below credentials.lifetime_secs".into(),
            ));
        }
        if c.ticket_lifetime_secs < 60 {
            return Err(invalid(
                "credentials.ticket_lifetime_secs",
                "must be at least 60".into(),
            ));
        }
        if self.pools.ipv4.prefix_len() > 30 {
            return Err(invalid("pools.ipv4", "prefix must be /30 or larger".into()));
        }
        if let Some(v6) = self.pools.ipv6 {
            if v6.prefix_len() > 120 {
                return Err(invalid(
                    "pools.ipv6",
                    "prefix must be /120 or larger".into(),
                ));
            }
        }
        let nms = &self.services.nms;
        if nms.keepalive_secs == 0 || nms.presence_ttl_secs <= nms.keepalive_secs {
            return Err(invalid(
                "services.nms.presence_ttl_secs",
                "must exceed services.nms.keepalive_secs (which must be above 0)".into(),
            ));
        }
        if nms.confirm_timeout_ms == 0 || nms.confirm_timeout_ms > 5_000 {
            return Err(invalid(
                "services.nms.confirm_timeout_ms",
                "must be 1..=5000 (nodes answer DNS within a second)".into(),
            ));
        }
        for rule in &self.policy.rules {
            for pattern in [&rule.from, &rule.to] {
                if !pattern_is_valid(pattern) {
                    return Err(invalid(
                        "policy.rules",
                        format!("`{pattern}` is not a name, `*` or `*.name`"),
                    ));
                }
            }
        }
        let a = &self.argon2;
        if a.memory_kib < 8 * a.parallelism.max(1) || a.iterations == 0 || a.parallelism == 0 {
            return Err(invalid(
                "argon2",
                "memory_kib >= 8 x parallelism, iterations and parallelism >= 1".into(),
            ));
        }
        if self.services.trs.name.is_empty() || self.relays.iter().any(|r| r.name.is_empty()) {
            return Err(invalid("relays", "every relay needs a name".into()));
        }
        Ok(())
    }
}

/// True when `name` matches the policy `pattern` (see [`PolicyRule`]).
pub fn pattern_matches(pattern: &str, name: &Fqdn) -> bool {
    if pattern == "*" {
        return true;
    }
    match pattern.strip_prefix("*.") {
        Some(suffix) => Fqdn::new(suffix)
            .map(|suffix| name.is_within(&suffix) && name != &suffix)
            .unwrap_or(false),
        None => Fqdn::new(pattern).map(|p| &p == name).unwrap_or(false),
    }
}

fn pattern_is_valid(pattern: &str) -> bool {
    pattern == "*" || Fqdn::new(pattern.strip_prefix("*.").unwrap_or(pattern)).is_ok()
}

/// `[::]:port`: with the socket's V6ONLY off (we set it), IPv4 clients arrive too.
fn any_address(port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_text_is_the_embedded_default() {
        let config = parse("", Path::new("cloud.yaml")).unwrap();
        assert_eq!(config.services.nms.listen[0].port(), DEFAULT_NMS_PORT);
        assert_eq!(config.pools.ipv4.to_string(), "100.64.0.0/10");
        assert!(config.pools.ipv6.is_none());
    }

    #[test]
    fn unknown_keys_are_errors_with_a_position() {
        let err = parse("domain: x.cyphonic\nservcies: {}\n", Path::new("c.yaml")).unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("c.yaml: "), "{text}");
        assert!(text.contains("servcies"), "{text}");
        assert!(text.contains('2'), "line number missing: {text}");
    }

    #[test]
    fn bad_values_are_refused() {
        for (yaml, field) in [
            (
                "credentials: {lifetime_secs: 100, renew_after_secs: 200}",
                "renew_after",
            ),
            ("pools: {ipv4: 100.64.0.0/31}", "pools.ipv4"),
            (
                "policy: {rules: [{from: 'a..b', to: '*', action: deny}]}",
                "policy",
            ),
            (
                "services: {nms: {keepalive_secs: 30, presence_ttl_secs: 20}}",
                "presence",
            ),
        ] {
            let err = parse(yaml, Path::new("c.yaml")).unwrap_err().to_string();
            assert!(err.contains(field), "{yaml}: {err}");
        }
    }

    #[test]
    fn policy_patterns() {
        let name = Fqdn::new("a.lab.cyphonic").unwrap();
        assert!(pattern_matches("*", &name));
        assert!(pattern_matches("*.lab.cyphonic", &name));
        assert!(pattern_matches("*.cyphonic", &name));
        assert!(pattern_matches("a.lab.cyphonic", &name));
        assert!(!pattern_matches("*.a.lab.cyphonic", &name));
        assert!(!pattern_matches(
            "*.lab.cyphonic",
            &Fqdn::new("lab.cyphonic").unwrap()
        ));
    }
}
