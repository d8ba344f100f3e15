//! The `options` text of `open` (`key=value` lines), parsed into [`MobilityOptions`]
//! before anything is opened.

use std::time::Duration;

use cyphonic_plugin_abi::{PluginFailure, option_lines};

/// How long a burst of changes must stay quiet before `wait` reports it, by default.
pub const DEFAULT_DEBOUNCE: Duration = Duration::from_millis(300);
/// The largest `debounce_ms` accepted: a minute already hides a change for too long.
const MAX_DEBOUNCE_MS: u64 = 60_000;
/// Linux interface names are at most 15 bytes (`IFNAMSIZ` 16 with the NUL).
const MAX_IFNAME_LEN: usize = 15;

/// The parsed `options`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MobilityOptions {
    /// `debounce_ms=N`: the quiet time that ends a burst.
    pub debounce: Duration,
    /// `ignore_ifname=NAME` (repeatable): interfaces whose changes are not reported and
    /// whose addresses are left out of snapshots.
    pub ignore_ifnames: Vec<String>,
}

impl Default for MobilityOptions {
    fn default() -> Self {
        Self {
            debounce: DEFAULT_DEBOUNCE,
            ignore_ifnames: Vec::new(),
        }
    }
}

impl MobilityOptions {
    /// Parses `key=value` lines; blank lines and lines starting with `#` are skipped. The
    /// last `debounce_ms` wins; every `ignore_ifname` adds a name. Unknown keys, lines
    /// without `=` and bad values are `INVALID_ARGUMENT` errors that name the key.
    pub fn parse(options: Option<&str>) -> Result<Self, PluginFailure> {
        let mut parsed = Self::default();
        for line in option_lines("netlink-mobility", options.unwrap_or_default()) {
            let (key, value) = line?;
            match key {
                "debounce_ms" => {
                    let ms = value
                        .parse::<u64>()
                        .ok()
                        .filter(|&ms| ms <= MAX_DEBOUNCE_MS)
                        .ok_or_else(|| {
                            PluginFailure::invalid_argument(format!(
                                "netlink-mobility option `debounce_ms`: `{value}` is not a number of milliseconds from 0 to {MAX_DEBOUNCE_MS}"
                            ))
                        })?;
                    parsed.debounce = Duration::from_millis(ms);
                }
                "ignore_ifname" => {
                    if !valid_ifname(value) {
                        return Err(PluginFailure::invalid_argument(format!(
                            "netlink-mobility option `ignore_ifname`: `{value}` is not a Linux interface name (1 to {MAX_IFNAME_LEN} bytes, no '/', ':' or spaces)"
                        )));
                    }
                    if !parsed.ignore_ifnames.iter().any(|n| n == value) {
                        parsed.ignore_ifnames.push(value.to_owned());
                    }
                }
                _ => {
                    return Err(PluginFailure::invalid_argument(format!(
                        "unknown netlink-mobility option `{key}` (known: debounce_ms, ignore_ifname)"
                    )));
                }
            }
        }
        Ok(parsed)
    }

    /// Whether changes on the interface called `name` are ignored.
    pub fn ignores(&self, name: &str) -> bool {
        self.ignore_ifnames.iter().any(|n| n == name)
    }
}

/// The kernel's `dev_valid_name`.
fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_IFNAME_LEN
        && name != "."
        && name != ".."
        && !name.contains(|c: char| c == '/' || c == ':' || c.is_whitespace())
}

#[cfg(test)]
mod tests {
    use super::*;
    use cyphonic_plugin_abi::Status;

    #[test]
    fn defaults_comments_repeats_and_last_debounce_wins() {
        assert_eq!(
            MobilityOptions::parse(None).unwrap(),
            MobilityOptions::default()
        );
        let opts = MobilityOptions::parse(Some(
            "# the overlay\nignore_ifname = cyph0\n\ndebounce_ms=50\nignore_ifname=cyph1\nignore_ifname=cyph0\ndebounce_ms=0\n",
        ))
        .unwrap();
        assert_eq!(opts.debounce, Duration::ZERO);
        assert_eq!(opts.ignore_ifnames, ["cyph0", "cyph1"]);
        assert!(opts.ignores("cyph1") && !opts.ignores("eth0"));
    }

    #[test]
    fn bad_lines_name_their_key() {
        for (text, needle) in [
            ("debounce=5", "`debounce`"),
            ("debounce_ms=soon", "`debounce_ms`"),
            ("debounce_ms=-1", "`debounce_ms`"),
            ("debounce_ms=60001", "`debounce_ms`"),
            ("ignore_ifname=", "`ignore_ifname`"),
            ("ignore_ifname=much-too-long-name", "`ignore_ifname`"),
            ("ignore_ifname=a/b", "`ignore_ifname`"),
            ("ignore_ifname=..", "`ignore_ifname`"),
            ("ignore_ifname", "`ignore_ifname`"),
        ] {
            let err = MobilityOptions::parse(Some(text)).unwrap_err();
            assert_eq!(err.status(), Status::INVALID_ARGUMENT, "{text}");
            assert!(err.message().contains(needle), "{text}: {}", err.message());
        }
    }
}
