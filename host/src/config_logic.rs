//! The configuration script (`config.lua`): the step between parsing `node.yaml` and
//! using it, where operator logic may derive or override a whitelisted set of settings
//! from facts about the host (keepalive on a cellular link, suites on a CPU without
//! AES instructions, ...).
//!
//! [`apply`] runs the script in a fresh scratch [`Sandbox`] every time, so nothing
//! carries over from one load or reload to the next and the DNS filter's state is never
//! shared. It blocks (bounded by the sandbox limits): async callers run it on a
//! blocking thread (`spawn_blocking`), never on a worker.
//!
//! The script sees only the settings in [`KEYS`]. The table it returns is read back for
//! exactly those keys, each checked for its type and validated by the rules `config.rs`
//! applies to the YAML, so a script cannot produce a configuration the file could not
//! hold. Every other setting comes from the file alone.

use std::fmt::Display;
use std::net::SocketAddr;
use std::ops::RangeInclusive;

use cyphonic_proto::suite::SuiteId;
use mlua::{Lua, Table, Value};

use crate::config::{BlockResponse, NodeConfig, suite_by_name};
use crate::lua::{Limits, Sandbox, Script, ScriptError};

/// The settings a configuration script may change, in the order changes are reported.
pub const KEYS: &[&str] = &[
    "log",
    "tunnel.keepalive_secs",
    "tunnel.suites",
    "resolver.upstreams",
    "resolver.block_response",
    "resolver.ttl_secs",
    "mobility.poll_interval_ms",
];

/// Why the configuration script could not be applied. Every message starts with the
/// script's name (`script `config.lua`: ...`); the running configuration is untouched.
#[derive(Debug, thiserror::Error)]
pub enum ConfigLogicError {
    /// Loading the script, its `self_check()` or the `configure` call failed, or went
    /// over the sandbox limits.
    #[error(transparent)]
    Script(#[from] ScriptError),
    /// `configure` returned a key it may not set, a value of the wrong type, or a value
    /// outside the key's valid range.
    #[error("script `{script}`: configure returned {key} = {value}: {message}")]
    Bad {
        script: String,
        key: String,
        /// The offending value as the script would print it (strings quoted, cut short).
        value: String,
        message: String,
    },
    /// `configure` changed the table it was given but returned nil, which means
    /// "unchanged": the edits would be lost silently.
    #[error(
        "script `{script}`: configure changed its config argument but returned nil, which keeps \
         the configuration unchanged; end it with `return config`"
    )]
    Discarded { script: String },
}

/// What the script learns about the machine it runs on (the `host` argument).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostFacts {
    /// The kernel's host name; empty when unknown.
    pub hostname: String,
    /// `std::env::consts::OS`: `"linux"`, ...
    pub os: &'static str,
    /// Whether the CPU has AES instructions (AES-GCM is slow without them).
    pub cpu_has_aes: bool,
    /// Whether the node sits behind a NAT; `None` until the daemon knows (it learns
    /// its public address from the cloud).
    pub behind_nat: Option<bool>,
    /// Names of the interfaces that have an address, sorted, without duplicates.
    pub interfaces: Vec<String>,
}

impl HostFacts {
    /// Reads the facts from the running host. `behind_nat` stays `None`: only the
    /// daemon, once connected, can tell.
    pub fn gather() -> Self {
        let interfaces = match crate::sys::local_addresses() {
            Ok(addrs) => {
                let mut names: Vec<String> = addrs.into_iter().map(|a| a.ifname).collect();
                names.sort();
                names.dedup();
                names
            }
            Err(e) => {
                tracing::warn!("config script: cannot list the host's interfaces: {e}");
                Vec::new()
            }
        };
        Self {
            hostname: hostname(),
            os: std::env::consts::OS,
            cpu_has_aes: cpu_has_aes(),
            behind_nat: None,
            interfaces,
        }
    }
}

/// The script's entry point.
const FUNCTION: &str = "configure";

/// Runs `script`'s `configure(config, host)` on `config` in a fresh sandbox with
/// `limits` and returns the resulting configuration with the [`KEYS`] it changed (in
/// that order). Runs the script's optional `self_check()` first. A `nil` result keeps
/// `config` as it is. Blocks; see the module docs.
pub fn apply(
    script: &Script,
    limits: Limits,
    config: &NodeConfig,
    facts: &HostFacts,
) -> Result<(NodeConfig, Vec<String>), ConfigLogicError> {
    let mut sandbox = Sandbox::with_script(limits, script)?;
    sandbox.self_check()?;
    if !sandbox.has_function(FUNCTION) {
        return Err(ScriptError::MissingFunction {
            script: script.name().to_owned(),
            function: FUNCTION.to_owned(),
        }
        .into());
    }
    let (argument, host) =
        sandbox.run(|lua| Ok((config_table(lua, config)?, host_table(lua, facts)?)))?;
    let returned: Value = sandbox.call(FUNCTION, (argument.clone(), host))?;
    let reader = Reader {
        script: script.name(),
    };
    match returned {
        Value::Nil => {
            // Reading the argument back only detects edits; its errors would blame a
            // return value the script never gave, so any failure counts as an edit.
            let edited = reader
                .read(&argument, config)
                .map_or(true, |seen| !changed_keys(config, &seen).is_empty());
            if edited {
                return Err(ConfigLogicError::Discarded {
                    script: script.name().to_owned(),
                });
            }
            Ok((config.clone(), Vec::new()))
        }
        Value::Table(table) => {
            let new = reader.read(&table, config)?;
            let changed = changed_keys(config, &new);
            Ok((new, changed))
        }
        other => Err(ScriptError::BadReturn {
            script: script.name().to_owned(),
            function: FUNCTION.to_owned(),
            message: format!("a {} (expected the config table or nil)", other.type_name()),
        }
        .into()),
    }
}

/// The `config` argument: the whitelisted settings, nested as in `node.yaml`.
fn config_table(lua: &Lua, config: &NodeConfig) -> mlua::Result<Table> {
    let tunnel = lua.create_table()?;
    tunnel.raw_set("keepalive_secs", config.tunnel.keepalive_secs)?;
    tunnel.raw_set(
        "suites",
        lua.create_sequence_from(config.tunnel.suites.iter().map(String::as_str))?,
    )?;
    let resolver = lua.create_table()?;
    resolver.raw_set(
        "upstreams",
        lua.create_sequence_from(config.resolver.upstreams.iter().map(ToString::to_string))?,
    )?;
    resolver.raw_set(
        "block_response",
        block_response_name(config.resolver.block_response),
    )?;
    resolver.raw_set("ttl_secs", config.resolver.ttl_secs)?;
    let mobility = lua.create_table()?;
    mobility.raw_set("poll_interval_ms", config.mobility.poll_interval_ms)?;
    let root = lua.create_table()?;
    root.raw_set("log", config.log.as_str())?;
    root.raw_set("tunnel", tunnel)?;
    root.raw_set("resolver", resolver)?;
    root.raw_set("mobility", mobility)?;
    Ok(root)
}

/// The `host` argument.
fn host_table(lua: &Lua, facts: &HostFacts) -> mlua::Result<Table> {
    let host = lua.create_table()?;
    host.raw_set("hostname", facts.hostname.as_str())?;
    host.raw_set("os", facts.os)?;
    host.raw_set("cpu_has_aes", facts.cpu_has_aes)?;
    host.raw_set("behind_nat", facts.behind_nat)?;
    host.raw_set(
        "interfaces",
        lua.create_sequence_from(facts.interfaces.iter().map(String::as_str))?,
    )?;
    Ok(host)
}

fn block_response_name(response: BlockResponse) -> &'static str {
    match response {
        BlockResponse::Nxdomain => "nxdomain",
        BlockResponse::Refused => "refused",
    }
}

/// The [`KEYS`] whose values differ between `old` and `new`.
fn changed_keys(old: &NodeConfig, new: &NodeConfig) -> Vec<String> {
    let differs = [
        old.log != new.log,
        old.tunnel.keepalive_secs != new.tunnel.keepalive_secs,
        old.tunnel.suites != new.tunnel.suites,
        old.resolver.upstreams != new.resolver.upstreams,
        old.resolver.block_response != new.resolver.block_response,
        old.resolver.ttl_secs != new.resolver.ttl_secs,
        old.mobility.poll_interval_ms != new.mobility.poll_interval_ms,
    ];
    KEYS.iter()
        .zip(differs)
        .filter(|(_, d)| *d)
        .map(|(k, _)| (*k).to_owned())
        .collect()
}

/// Reads a table the script returned back into a configuration. Only raw accesses:
/// no metamethod (script code) runs outside the sandbox's budget.
struct Reader<'a> {
    script: &'a str,
}

impl Reader<'_> {
    /// `base` with every whitelisted key present in `table` replaced; absent keys keep
    /// their value.
    fn read(&self, table: &Table, base: &NodeConfig) -> Result<NodeConfig, ConfigLogicError> {
        let mut out = base.clone();
        for pair in table.pairs::<Value, Value>() {
            let (key, value) = pair.map_err(|e| self.lua_error(&e))?;
            let key = key_name(None, &key);
            match key.as_str() {
                "log" => out.log = self.string(&key, &value)?,
                "tunnel" | "resolver" | "mobility" => self.section(&key, &value, &mut out)?,
                _ => return Err(self.unknown(&key, &value)),
            }
        }
        Ok(out)
    }

    fn section(
        &self,
        section: &str,
        value: &Value,
        out: &mut NodeConfig,
    ) -> Result<(), ConfigLogicError> {
        let Value::Table(table) = value else {
            return Err(self.bad(section, value, "expected a table"));
        };
        for pair in table.pairs::<Value, Value>() {
            let (key, value) = pair.map_err(|e| self.lua_error(&e))?;
            let key = key_name(Some(section), &key);
            self.set(&key, &value, out)?;
        }
        Ok(())
    }

    /// Checks and stores one `section.name` key; the rules are those of `config.rs`.
    fn set(&self, key: &str, value: &Value, out: &mut NodeConfig) -> Result<(), ConfigLogicError> {
        match key {
            "tunnel.keepalive_secs" => {
                out.tunnel.keepalive_secs = self.integer(
                    key,
                    value,
                    1..=25,
                    "must be 1..=25 (NAT mappings expire after about 30 s)",
                )?;
            }
            "tunnel.suites" => {
                out.tunnel.suites = self.list(key, value, |key, item| {
                    let name = self.string(key, item)?;
                    match suite_by_name(&name) {
                        Some(_) => Ok(name),
                        None => Err(self.bad(
                            key,
                            item,
                            format!("unknown suite (known: {})", known_suites()),
                        )),
                    }
                })?;
            }
            "resolver.upstreams" => {
                out.resolver.upstreams = self.list(key, value, |key, item| {
                    self.string(key, item)?
                        .parse::<SocketAddr>()
                        .map_err(|_| self.bad(key, item, "expected \"ip:port\" or \"[ipv6]:port\""))
                })?;
            }
            "resolver.block_response" => {
                out.resolver.block_response = match self.string(key, value)?.as_str() {
                    "nxdomain" => BlockResponse::Nxdomain,
                    "refused" => BlockResponse::Refused,
                    _ => {
                        return Err(self.bad(key, value, "expected \"nxdomain\" or \"refused\""));
                    }
                };
            }
            "resolver.ttl_secs" => {
                out.resolver.ttl_secs = self.integer(key, value, 0..=86_400, "at most 86400")?;
            }
            "mobility.poll_interval_ms" => {
                out.mobility.poll_interval_ms =
                    self.integer(key, value, 100..=60_000, "must be 100..=60000")?;
            }
            _ => return Err(self.unknown(key, value)),
        }
        Ok(())
    }

    fn string(&self, key: &str, value: &Value) -> Result<String, ConfigLogicError> {
        let Value::String(s) = value else {
            return Err(self.bad(key, value, "expected a string"));
        };
        match s.to_str() {
            Ok(text) => Ok(text.to_owned()),
            Err(_) => Err(self.bad(key, value, "expected UTF-8 text")),
        }
    }

    /// An integer (Lua integer, or a float with an integral value) within `range`.
    fn integer<T>(
        &self,
        key: &str,
        value: &Value,
        range: RangeInclusive<T>,
        rule: &str,
    ) -> Result<T, ConfigLogicError>
    where
        T: TryFrom<i64> + PartialOrd,
    {
        let n = match *value {
            Value::Integer(n) => n,
            // Integral and below 2^53 (where floats stop holding every integer), so
            // the cast is exact.
            Value::Number(f) if f.fract() == 0.0 && f.abs() < 9_007_199_254_740_992.0 => f as i64,
            _ => return Err(self.bad(key, value, "expected an integer")),
        };
        match T::try_from(n) {
            Ok(n) if range.contains(&n) => Ok(n),
            _ => Err(self.bad(key, value, rule)),
        }
    }

    /// A Lua sequence `{a, b, ...}` (keys exactly 1..n), each item read with `item`,
    /// which gets the item's key as `key[i]`.
    fn list<T>(
        &self,
        key: &str,
        value: &Value,
        item: impl Fn(&str, &Value) -> Result<T, ConfigLogicError>,
    ) -> Result<Vec<T>, ConfigLogicError> {
        let Value::Table(table) = value else {
            return Err(self.bad(key, value, "expected a list"));
        };
        let len = table.raw_len();
        for pair in table.pairs::<Value, Value>() {
            let (index, element) = pair.map_err(|e| self.lua_error(&e))?;
            let in_range = matches!(index, Value::Integer(i)
                if usize::try_from(i).is_ok_and(|i| (1..=len).contains(&i)));
            if !in_range {
                return Err(self.bad(
                    &key_name(Some(key), &index),
                    &element,
                    "a list has only the keys 1, 2, ...",
                ));
            }
        }
        (1..=len)
            .map(|i| {
                let element: Value = table.raw_get(i).map_err(|e| self.lua_error(&e))?;
                item(&format!("{key}[{i}]"), &element)
            })
            .collect()
    }

    fn unknown(&self, key: &str, value: &Value) -> ConfigLogicError {
        self.bad(
            key,
            value,
            format!(
                "not a setting config scripts may change (they may change {}; everything \
                 else only in the configuration file)",
                KEYS.join(", ")
            ),
        )
    }

    fn bad(&self, key: &str, value: &Value, message: impl Display) -> ConfigLogicError {
        ConfigLogicError::Bad {
            script: self.script.to_owned(),
            key: key.to_owned(),
            value: show(value),
            message: message.to_string(),
        }
    }

    fn lua_error(&self, error: &mlua::Error) -> ConfigLogicError {
        ScriptError::Runtime {
            script: self.script.to_owned(),
            message: format!("reading what configure returned: {error}"),
        }
        .into()
    }
}

/// How an error names a key: `section.name`, or `section[<key>]` for a key that is not
/// a plain name (`tunnel[1]`).
fn key_name(section: Option<&str>, key: &Value) -> String {
    let plain = match key {
        Value::String(s) => s
            .to_str()
            .ok()
            .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
            .map(|s| s.to_owned()),
        _ => None,
    };
    match (section, plain) {
        (Some(section), Some(name)) => format!("{section}.{name}"),
        (None, Some(name)) => name,
        (section, None) => format!("{}[{}]", section.unwrap_or(""), show(key)),
    }
}

/// Longest string value quoted in an error.
const MAX_SHOWN: usize = 40;

/// A value the way an error quotes it.
fn show(value: &Value) -> String {
    match value {
        Value::Nil => "nil".to_owned(),
        Value::Boolean(b) => b.to_string(),
        Value::Integer(n) => n.to_string(),
        Value::Number(f) => format!("{f:?}"),
        Value::String(s) => {
            let text = s.to_string_lossy();
            match text.char_indices().nth(MAX_SHOWN) {
                Some((end, _)) => format!("{:?}…", &text[..end]),
                None => format!("{text:?}"),
            }
        }
        other => format!("a {}", other.type_name()),
    }
}

fn known_suites() -> String {
    [
        SuiteId::AES_256_GCM,
        SuiteId::CHACHA20_POLY1305,
        SuiteId::AES_256_CTR_HMAC_SHA256,
    ]
    .map(SuiteId::name)
    .join(", ")
}

fn hostname() -> String {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .filter_map(|path| std::fs::read_to_string(path).ok())
        .map(|text| text.trim().to_owned())
        .find(|name| !name.is_empty())
        .unwrap_or_default()
}

fn cpu_has_aes() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("aes")
    }
    #[cfg(target_arch = "aarch64")]
    {
        std::arch::is_aarch64_feature_detected!("aes")
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    const TEMPLATE: &str = include_str!("../../scripts/config.lua");

    const YAML: &str = "
cloud:
  as: 192.0.2.1:7301
  nms: 192.0.2.1:7302
  key: cyphonic1:3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c
plugins:
  interface: lib/libcyphonic_linux_tun.so
  crypto: [lib/libcyphonic_aes_gcm.so]
tunnel:
  suites: [aes-256-gcm]
resolver:
  upstreams: ['192.0.2.53:53']
";

    fn config() -> NodeConfig {
        crate::config::parse(YAML, Path::new("/etc/cyphonic/node.yaml")).unwrap()
    }

    fn facts() -> HostFacts {
        HostFacts {
            hostname: "edge-7".to_owned(),
            os: "linux",
            cpu_has_aes: false,
            behind_nat: Some(true),
            interfaces: vec!["eth0".to_owned(), "lo".to_owned(), "wwan0".to_owned()],
        }
    }

    fn run(source: &str) -> Result<(NodeConfig, Vec<String>), ConfigLogicError> {
        run_with(source, Limits::default())
    }

    fn run_with(
        source: &str,
        limits: Limits,
    ) -> Result<(NodeConfig, Vec<String>), ConfigLogicError> {
        apply(
            &Script::new("config.lua", source),
            limits,
            &config(),
            &facts(),
        )
    }

    /// The error text, checked to start with the script's name.
    fn error(source: &str) -> String {
        let text = run(source).unwrap_err().to_string();
        assert!(text.starts_with("script `config.lua`: "), "{text}");
        text
    }

    /// The whitelisted settings, to compare configurations.
    fn settings(c: &NodeConfig) -> impl PartialEq + std::fmt::Debug + use<> {
        (
            c.log.clone(),
            c.tunnel.keepalive_secs,
            c.tunnel.suites.clone(),
            c.resolver.upstreams.clone(),
            c.resolver.block_response,
            c.resolver.ttl_secs,
            c.mobility.poll_interval_ms,
        )
    }

    #[test]
    fn shipped_template_changes_nothing() {
        for facts in [
            facts(),
            HostFacts {
                cpu_has_aes: true,
                behind_nat: None,
                interfaces: Vec::new(),
                ..facts()
            },
        ] {
            let script = Script::new("config.lua", TEMPLATE);
            let (new, changed) = apply(&script, Limits::default(), &config(), &facts).unwrap();
            assert!(changed.is_empty(), "{changed:?}");
            assert_eq!(settings(&new), settings(&config()));
            assert_eq!(new.tunnel.listen_port, config().tunnel.listen_port);
        }
    }

    #[test]
    fn overrides_are_applied_and_reported() {
        let (new, changed) = run(r#"
            function configure(config, host)
              if not host.cpu_has_aes then
                config.tunnel.suites = { "chacha20-poly1305", "aes-256-gcm" }
              end
              if host.behind_nat then
                config.tunnel.keepalive_secs = 10
              end
              config.log = config.log   -- same value: not a change
              return config
            end
        "#)
        .unwrap();
        assert_eq!(changed, ["tunnel.keepalive_secs", "tunnel.suites"]);
        assert_eq!(new.tunnel.keepalive_secs, 10);
        assert_eq!(new.tunnel.suites, ["chacha20-poly1305", "aes-256-gcm"]);
        assert_eq!(new.log, "info");
        assert_eq!(new.suite_ids().unwrap()[0], SuiteId::CHACHA20_POLY1305);
    }

    #[test]
    fn every_whitelisted_key_can_be_set() {
        let (new, changed) = run(r#"
            function configure(config, host)
              assert(host.hostname == "edge-7" and host.os == "linux")
              assert(#host.interfaces == 3 and host.interfaces[3] == "wwan0")
              assert(config.resolver.upstreams[1] == "192.0.2.53:53")
              assert(config.resolver.block_response == "nxdomain")
              return {
                log = "debug," .. host.hostname,
                tunnel = { keepalive_secs = 5.0, suites = {} },
                resolver = {
                  upstreams = { "[2001:db8::53]:53", "192.0.2.54:5353" },
                  block_response = "refused",
                  ttl_secs = 0,
                },
                mobility = { poll_interval_ms = 500 },
              }
            end
        "#)
        .unwrap();
        assert_eq!(changed, KEYS);
        assert_eq!(new.log, "debug,edge-7");
        assert_eq!(new.tunnel.keepalive_secs, 5);
        assert!(new.tunnel.suites.is_empty());
        assert_eq!(
            new.resolver.upstreams,
            [
                "[2001:db8::53]:53".parse::<SocketAddr>().unwrap(),
                "192.0.2.54:5353".parse().unwrap()
            ]
        );
        assert_eq!(new.resolver.block_response, BlockResponse::Refused);
        assert_eq!(new.resolver.ttl_secs, 0);
        assert_eq!(new.mobility.poll_interval_ms, 500);
    }

    #[test]
    fn a_partial_table_keeps_the_other_keys() {
        let (new, changed) =
            run("function configure() return { mobility = { poll_interval_ms = 100 } } end")
                .unwrap();
        assert_eq!(changed, ["mobility.poll_interval_ms"]);
        assert_eq!(new.mobility.poll_interval_ms, 100);
        assert_eq!(new.tunnel.suites, ["aes-256-gcm"]);
    }

    #[test]
    fn nil_keeps_the_config_and_discarded_edits_are_an_error() {
        let (new, changed) = run("function configure(config, host) end").unwrap();
        assert!(changed.is_empty());
        assert_eq!(settings(&new), settings(&config()));
        let err = error("function configure(config) config.tunnel.keepalive_secs = 9 end");
        assert!(err.contains("return config"), "{err}");
    }

    #[test]
    fn bad_values_name_the_key() {
        let cases = [
            (
                r#"config.tunnel.keepalive_secs = "x""#,
                r#"configure returned tunnel.keepalive_secs = "x": expected an integer"#,
            ),
            (
                "config.tunnel.keepalive_secs = 2.5",
                "tunnel.keepalive_secs = 2.5: expected an integer",
            ),
            (
                "config.tunnel.keepalive_secs = 30",
                "tunnel.keepalive_secs = 30: must be 1..=25",
            ),
            (
                "config.tunnel.keepalive_secs = -1",
                "tunnel.keepalive_secs = -1: must be 1..=25",
            ),
            (
                "config.tunnel.listen_port = 1",
                "tunnel.listen_port = 1: not a setting config scripts may change",
            ),
            ("config.cloud = {}", "cloud = a table: not a setting"),
            ("config[1] = true", "[1] = true: not a setting"),
            ("config.tunnel = 5", "tunnel = 5: expected a table"),
            (
                r#"config.tunnel.suites = { "aes-256-gcm", "rot13" }"#,
                r#"tunnel.suites[2] = "rot13": unknown suite (known: aes-256-gcm"#,
            ),
            (
                r#"config.tunnel.suites = { "aes-256-gcm", 7 }"#,
                "tunnel.suites[2] = 7: expected a string",
            ),
            (
                r#"config.tunnel.suites = "aes-256-gcm""#,
                r#"tunnel.suites = "aes-256-gcm": expected a list"#,
            ),
            (
                r#"config.tunnel.suites = { first = "aes-256-gcm" }"#,
                r#"tunnel.suites.first = "aes-256-gcm": a list has only the keys"#,
            ),
            (
                r#"config.resolver.upstreams = { "dns.example:53" }"#,
                r#"resolver.upstreams[1] = "dns.example:53": expected "ip:port""#,
            ),
            (
                r#"config.resolver.block_response = "drop""#,
                r#"resolver.block_response = "drop": expected "nxdomain" or "refused""#,
            ),
            (
                "config.resolver.ttl_secs = 86401",
                "resolver.ttl_secs = 86401: at most 86400",
            ),
            (
                "config.mobility.poll_interval_ms = 50",
                "mobility.poll_interval_ms = 50: must be 100..=60000",
            ),
            ("config.log = false", "log = false: expected a string"),
        ];
        for (statement, expected) in cases {
            let source = format!("function configure(config) {statement}; return config end");
            let err = error(&source);
            assert!(err.contains(expected), "{statement}: {err}");
        }
    }

    #[test]
    fn a_return_that_is_not_a_table_is_an_error() {
        let err = error(r#"function configure() return "yes" end"#);
        assert!(err.contains("`configure` returned a string"), "{err}");
    }

    #[test]
    fn endless_loops_are_stopped() {
        let err = error("function configure(config)\n  while true do end\nend");
        assert!(err.contains("budget") && err.contains("line 2"), "{err}");
        // In the main chunk too.
        let err = error("local n = 0\nrepeat n = n + 1 until false\nfunction configure() end");
        assert!(err.contains("budget"), "{err}");
        let err = error(
            "function self_check() while true do end end\nfunction configure(c) return c end",
        );
        assert!(err.contains("budget"), "{err}");
    }

    #[test]
    fn unbounded_allocation_is_stopped() {
        let limits = Limits {
            memory_bytes: 2 << 20,
            instructions: 100_000_000,
        };
        let source = "function configure(config)\n  local t = {}\n  local i = 0\n  \
                      while true do i = i + 1; t[i] = string.rep('x', 1000) .. i end\nend";
        let err = run_with(source, limits).unwrap_err();
        assert!(
            matches!(err, ConfigLogicError::Script(ScriptError::Memory { .. })),
            "{err:?}"
        );
        let text = err.to_string();
        assert!(
            text.starts_with("script `config.lua`") && text.contains("memory limit"),
            "{text}"
        );
    }

    #[test]
    fn the_host_is_out_of_reach() {
        for call in [
            "os.execute('true')",
            "io.open('/etc/passwd')",
            "require('os')",
            "load('return 1')",
        ] {
            let source = format!("function configure(config) {call} return config end");
            let err = error(&source);
            assert!(err.contains("nil"), "{call}: {err}");
        }
    }

    #[test]
    fn a_script_without_configure_is_an_error() {
        let err = error("-- nothing here\nlocal x = 1");
        assert!(err.contains("no function `configure`"), "{err}");
        let err = error("configure = 5");
        assert!(err.contains("no function `configure`"), "{err}");
    }

    #[test]
    fn self_check_failure_is_reported() {
        let err = error(
            "function self_check() return 'KEEPALIVE must be a number' end\n\
             function configure(c) return c end",
        );
        assert!(
            err.contains("self check failed: KEEPALIVE must be a number"),
            "{err}"
        );
        // A passing self check lets configure run.
        let (_, changed) = run("function self_check() return true end\n\
             function configure(c) c.log = 'warn' return c end")
        .unwrap();
        assert_eq!(changed, ["log"]);
    }

    #[test]
    fn syntax_and_runtime_errors_carry_the_line() {
        let err = error("function configure(config)\n  return config.nope.x\nend");
        assert!(err.contains("config.lua:2:"), "{err}");
        let err = error("function configure(\n");
        assert!(err.contains("config.lua:"), "{err}");
    }

    /// The per-host example of docs/scripting.md.
    #[test]
    fn a_table_of_settings_per_host_works() {
        let source = r#"
            PER_HOST = {
              ["edge-7"] = { log = "info,cyphonic_host=debug" },
              ["branch-gw"] = { resolver = { upstreams = { "10.1.0.53:53" } } },
            }
            function self_check()
              for name, settings in pairs(PER_HOST) do
                if type(settings) ~= "table" then
                  return "PER_HOST[" .. tostring(name) .. "] is not a table"
                end
              end
              return true
            end
            function configure(config, host)
              return PER_HOST[host.hostname]
            end
        "#;
        let (new, changed) = run(source).unwrap();
        assert_eq!(changed, ["log"]);
        assert_eq!(new.log, "info,cyphonic_host=debug");
        let other = HostFacts {
            hostname: "branch-gw".to_owned(),
            ..facts()
        };
        let script = Script::new("config.lua", source);
        let (new, changed) = apply(&script, Limits::default(), &config(), &other).unwrap();
        assert_eq!(changed, ["resolver.upstreams"]);
        assert_eq!(new.resolver.upstreams, ["10.1.0.53:53".parse().unwrap()]);
        let err = error(&source.replace(r#"{ log = "info,cyphonic_host=debug" }"#, "5"));
        assert!(err.contains("PER_HOST[edge-7] is not a table"), "{err}");
    }

    #[test]
    fn gathered_facts_describe_this_host() {
        let facts = HostFacts::gather();
        assert_eq!(facts.os, std::env::consts::OS);
        assert_eq!(facts.behind_nat, None);
        let mut sorted = facts.interfaces.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted, facts.interfaces);
        if Path::new("/proc/sys/kernel/hostname").exists() {
            assert!(!facts.hostname.is_empty());
        }
    }
}
