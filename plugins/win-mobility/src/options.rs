//! The `options` text of `open` (`key=value` lines), parsed into [`MobilityOptions`]
//! before anything is registered. Same keys and rules as netlink-mobility, plus
//! `poll_ms`.

use std::time::Duration;

use cyphonic_plugin_abi::{PluginFailure, option_lines};

/// How long a burst of changes must stay quiet before `wait` reports it, by default.
pub const DEFAULT_DEBOUNCE: Duration = Duration::from_millis(300);
/// The largest `debounce_ms` accepted: a minute already hides a change for too long.
const MAX_DEBOUNCE_MS: u64 = 60_000;
/// The shortest and longest `poll_ms` accepted (0 turns polling off).
const MIN_POLL_MS: u64 = 50;
const MAX_POLL_MS: u64 = 3_600_000;
/// Windows interface names and aliases are at most 256 characters
/// (`IF_MAX_STRING_SIZE`).
const MAX_IFNAME_CHARS: usize = 256;

/// The parsed `options`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MobilityOptions {
    /// `debounce_ms=N`: the quiet time that ends a burst.
    pub debounce: Duration,
    /// `ignore_ifname=NAME` (repeatable): interfaces whose changes are not reported and
    /// whose addresses are left out of snapshots. A name matches an adapter's alias
    /// (friendly name, e.g. `cyphonic`) or its adapter name (the GUID string), ignoring
    /// case.
    pub ignore_ifnames: Vec<String>,
    /// `poll_ms=N`: also compare address snapshots this often and report a difference,
    /// for systems whose change notifications do not work (Wine). `None`: off.
    pub poll: Option<Duration>,
}

impl Default for MobilityOptions {
    fn default() -> Self {
        Self {
            debounce: DEFAULT_DEBOUNCE,
            ignore_ifnames: Vec::new(),
            poll: None,
        }
    }
}

impl MobilityOptions {
    /// Parses `key=value` lines; blank lines and lines starting with `#` are skipped. The
    /// last `debounce_ms` and `poll_ms` win; every `ignore_ifname` adds a name. Unknown
    /// keys, lines without `=` and bad values are `INVALID_ARGUMENT` errors that name the
    /// key.
    pub fn parse(options: Option<&str>) -> Result<Self, PluginFailure> {
        let mut parsed = Self::default();
        for line in option_lines("win-mobility", options.unwrap_or_default()) {
            let (key, value) = line?;
            match key {
                "debounce_ms" => {
                    let ms = value
                        .parse::<u64>()
                        .ok()
                        .filter(|&ms| ms <= MAX_DEBOUNCE_MS)
                        .ok_or_else(|| {
                            PluginFailure::invalid_argument(format!(
                                "win-mobility option `debounce_ms`: `{value}` is not a number of milliseconds from 0 to {MAX_DEBOUNCE_MS}"
                            ))
                        })?;
                    parsed.debounce = Duration::from_millis(ms);
                }
                "poll_ms" => {
                    let ms = value
                        .parse::<u64>()
                        .ok()
                        .filter(|&ms| ms == 0 || (MIN_POLL_MS..=MAX_POLL_MS).contains(&ms))
                        .ok_or_else(|| {
                            PluginFailure::invalid_argument(format!(
                                "win-mobility option `poll_ms`: `{value}` is not 0 (off) or a number of milliseconds from {MIN_POLL_MS} to {MAX_POLL_MS}"
                            ))
                        })?;
                    parsed.poll = (ms != 0).then(|| Duration::from_millis(ms));
                }
                "ignore_ifname" => {
                    if !valid_ifname(value) {
                        return Err(PluginFailure::invalid_argument(format!(
                            "win-mobility option `ignore_ifname`: `{value}` is not an interface alias or name (1 to {MAX_IFNAME_CHARS} characters, no control characters)"
                        )));
                    }
                    if !parsed.ignores(value, "") {
                        parsed.ignore_ifnames.push(value.to_owned());
                    }
                }
                _ => {
                    return Err(PluginFailure::invalid_argument(format!(
                        "unknown win-mobility option `{key}` (known: debounce_ms, ignore_ifname, poll_ms)"
                    )));
                }
            }
        }
        Ok(parsed)
    }

    /// Whether the interface with this alias (friendly name) or adapter name is ignored.
    pub fn ignores(&self, alias: &str, adapter_name: &str) -> bool {
        self.ignore_ifnames
            .iter()
            .any(|n| same_name(n, alias) || same_name(n, adapter_name))
    }
}

/// Windows compares interface aliases without regard to case.
fn same_name(a: &str, b: &str) -> bool {
    a.chars()
        .flat_map(char::to_lowercase)
        .eq(b.chars().flat_map(char::to_lowercase))
}

fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.chars().count() <= MAX_IFNAME_CHARS
        && !name.chars().any(char::is_control)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cyphonic_plugin_abi::Status;

    #[test]
    fn defaults_comments_repeats_and_last_value_wins() {
        assert_eq!(
            MobilityOptions::parse(None).unwrap(),
            MobilityOptions::default()
        );
        assert_eq!(
            MobilityOptions::default().debounce,
            Duration::from_millis(300)
        );
        let opts = MobilityOptions::parse(Some(
            "# the overlay\nignore_ifname = cyphonic\n\ndebounce_ms=50\nignore_ifname=Ethernet 2\nignore_ifname=CYPHONIC\ndebounce_ms=0\npoll_ms=1000\npoll_ms=0\n",
        ))
        .unwrap();
        assert_eq!(opts.debounce, Duration::ZERO);
        assert_eq!(opts.ignore_ifnames, ["cyphonic", "Ethernet 2"]);
        assert_eq!(opts.poll, None);
        assert!(opts.ignores("Cyphonic", "{GUID}"));
        assert!(opts.ignores("Wi-Fi", "ethernet 2"));
        assert!(!opts.ignores("Wi-Fi", "{GUID}"));
        let polled = MobilityOptions::parse(Some("poll_ms=250")).unwrap();
        assert_eq!(polled.poll, Some(Duration::from_millis(250)));
    }

    #[test]
    fn bad_lines_name_their_key() {
        let long = format!("ignore_ifname={}", "x".repeat(257));
        for (text, needle) in [
            ("debounce=5", "`debounce`"),
            ("debounce_ms=soon", "`debounce_ms`"),
            ("debounce_ms=-1", "`debounce_ms`"),
            ("debounce_ms=60001", "`debounce_ms`"),
            ("poll_ms=10", "`poll_ms`"),
            ("poll_ms=often", "`poll_ms`"),
            ("ignore_ifname=", "`ignore_ifname`"),
            ("ignore_ifname=a\tb", "`ignore_ifname`"),
            (long.as_str(), "`ignore_ifname`"),
            ("ignore_ifname", "`ignore_ifname`"),
        ] {
            let err = MobilityOptions::parse(Some(text)).unwrap_err();
            assert_eq!(err.status(), Status::INVALID_ARGUMENT, "{text}");
            assert!(err.message().contains(needle), "{text}: {}", err.message());
        }
    }
}
