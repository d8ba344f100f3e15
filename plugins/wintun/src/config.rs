//! What `open` derives from [`VifSettings`] before it touches the system: the parsed
//! `options` keys ([`WintunOptions`]) and the checked configuration ([`Plan`]), including
//! the adapter GUID and which routes to install. Everything wrong with the settings fails
//! here, with `INVALID_ARGUMENT`, before wintun.dll is even loaded.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use cyphonic_plugin_abi::{PluginFailure, VifSettings, option_lines};

use crate::guid::adapter_guid;

/// The adapter name when the settings request none.
pub const DEFAULT_IFNAME: &str = "cyphonic";
/// The adapter's tunnel type: Windows shows the device as "CYPHONIC Tunnel".
pub(crate) const TUNNEL_TYPE: &str = "CYPHONIC";
/// wintun's ring limits (`WINTUN_MIN_RING_CAPACITY`, `WINTUN_MAX_RING_CAPACITY`); the
/// Windows build checks them against the `wintun` crate's constants.
pub(crate) const MIN_RING_CAPACITY: u32 = 0x2_0000;
pub(crate) const MAX_RING_CAPACITY: u32 = 0x400_0000;
/// 4 MiB per direction, as WireGuard for Windows uses: room for ~2800 full 1420-byte
/// packets, so a burst does not overflow while the reader is descheduled.
pub(crate) const DEFAULT_RING_CAPACITY: u32 = 0x40_0000;
/// The IPv4 MTU floor Windows accepts (`netsh ... subinterface mtu=`), and IPv6's
/// (RFC 8200).
const IPV4_MIN_MTU: u32 = 576;
pub(crate) const IPV6_MIN_MTU: u32 = 1280;
/// wintun's largest packet (`WINTUN_MAX_IP_PACKET_SIZE`), hence its largest MTU.
pub(crate) const MAX_MTU: u32 = 0xFFFF;

/// What to do with the network profile Windows creates for the adapter.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) enum NetworkCategory {
    /// Mark it Private (the firewall's Public profile would block inbound overlay
    /// traffic): best effort, in the background.
    #[default]
    Private,
    /// Leave whatever Windows (or Group Policy) chose.
    Leave,
}

/// The plugin-specific `options` (`key=value` lines).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WintunOptions {
    /// `ring_capacity=N`: bytes of each session ring (decimal or `0x` hex).
    pub(crate) ring_capacity: u32,
    /// `network_category=private|leave`.
    pub(crate) network_category: NetworkCategory,
}

impl Default for WintunOptions {
    fn default() -> Self {
        Self {
            ring_capacity: DEFAULT_RING_CAPACITY,
            network_category: NetworkCategory::Private,
        }
    }
}

impl WintunOptions {
    /// Parses `key=value` lines; blank lines and lines starting with `#` are skipped and,
    /// as in [`VifSettings::option`], the last line of a key wins. Unknown keys, lines
    /// without `=` and bad values are `INVALID_ARGUMENT` errors that name the key.
    pub(crate) fn parse(options: Option<&str>) -> Result<Self, PluginFailure> {
        let mut parsed = Self::default();
        for line in option_lines("wintun", options.unwrap_or_default()) {
            let (key, value) = line?;
            match key {
                "ring_capacity" => parsed.ring_capacity = parse_ring_capacity(value)?,
                "network_category" => {
                    parsed.network_category = match value {
                        "private" => NetworkCategory::Private,
                        "leave" => NetworkCategory::Leave,
                        _ => {
                            return Err(PluginFailure::invalid_argument(format!(
                                "wintun option `network_category`: `{value}` is neither `private` nor `leave`"
                            )));
                        }
                    }
                }
                _ => {
                    return Err(PluginFailure::invalid_argument(format!(
                        "unknown wintun option `{key}` (known: ring_capacity, network_category)"
                    )));
                }
            }
        }
        Ok(parsed)
    }
}

fn parse_ring_capacity(value: &str) -> Result<u32, PluginFailure> {
    let parsed = match value
        .strip_prefix("0x")
        .or_else(|| value.strip_prefix("0X"))
    {
        Some(hex) => u32::from_str_radix(hex, 16),
        None => value.parse::<u32>(),
    };
    match parsed {
        Ok(n) if n.is_power_of_two() && (MIN_RING_CAPACITY..=MAX_RING_CAPACITY).contains(&n) => {
            Ok(n)
        }
        _ => Err(PluginFailure::invalid_argument(format!(
            "wintun option `ring_capacity`: `{value}` is not a power of two from \
             {MIN_RING_CAPACITY:#x} to {MAX_RING_CAPACITY:#x} bytes"
        ))),
    }
}

/// The checked configuration of one adapter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Plan {
    /// The adapter name (Windows' interface alias).
    pub(crate) name: String,
    /// [`adapter_guid`] of `name`.
    pub(crate) guid: u128,
    /// `None`: keep the adapter's default.
    pub(crate) mtu: Option<u32>,
    pub(crate) ipv4: Option<(Ipv4Addr, u8)>,
    pub(crate) ipv6: Option<(Ipv6Addr, u8)>,
    /// Destinations with their host bits cleared, without duplicates and without the
    /// on-link prefixes Windows routes by itself when it adds the addresses.
    pub(crate) routes: Vec<(IpAddr, u8)>,
    pub(crate) options: WintunOptions,
}

impl Plan {
    pub(crate) fn new(settings: &VifSettings) -> Result<Self, PluginFailure> {
        settings.validate()?;
        let options = WintunOptions::parse(settings.options.as_deref())?;
        let name = settings.ifname.as_deref().unwrap_or(DEFAULT_IFNAME);
        if name.trim() != name || name.chars().any(char::is_control) {
            return Err(PluginFailure::invalid_argument(format!(
                "adapter name {name:?}: no control characters or leading/trailing spaces"
            )));
        }
        let mtu = settings.checked_mtu(IPV4_MIN_MTU..=MAX_MTU)?;
        // Windows adds the on-link route of every address, host prefixes included.
        let routes = settings.extra_routes(true);
        Ok(Self {
            name: name.to_owned(),
            guid: adapter_guid(name),
            mtu,
            ipv4: settings.ipv4,
            ipv6: settings.ipv6,
            routes,
            options,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cyphonic_plugin_abi::Status;

    fn settings() -> VifSettings {
        VifSettings {
            mtu: 1420,
            ifname: Some("cyph-test".into()),
            ipv4: Some(("100.64.7.1".parse().unwrap(), 24)),
            ipv6: Some(("fd00:7::1".parse().unwrap(), 64)),
            routes: vec![],
            options: None,
        }
    }

    #[test]
    fn options_default_and_parse_last_wins() {
        assert_eq!(
            WintunOptions::parse(None).unwrap(),
            WintunOptions {
                ring_capacity: 0x40_0000,
                network_category: NetworkCategory::Private
            }
        );
        let opts = WintunOptions::parse(Some(
            "# tuning\n\nring_capacity = 0x20000\nring_capacity=8388608\n network_category=leave \n",
        ))
        .unwrap();
        assert_eq!(opts.ring_capacity, 0x80_0000);
        assert_eq!(opts.network_category, NetworkCategory::Leave);
        for (text, want) in [
            ("ring_capacity=0x20000", MIN_RING_CAPACITY),
            ("ring_capacity=0X4000000", MAX_RING_CAPACITY),
            ("ring_capacity=131072", MIN_RING_CAPACITY),
        ] {
            assert_eq!(
                WintunOptions::parse(Some(text)).unwrap().ring_capacity,
                want
            );
        }
    }

    #[test]
    fn options_reject_bad_capacities_unknown_keys_and_bare_words() {
        for (text, needle) in [
            ("ring_capacity=3", "`ring_capacity`"),
            ("ring_capacity=0", "`ring_capacity`"),
            ("ring_capacity=0x10000", "`ring_capacity`"), // below the minimum
            ("ring_capacity=0x8000000", "`ring_capacity`"), // above the maximum
            ("ring_capacity=0x30000", "`ring_capacity`"), // not a power of two
            ("ring_capacity=lots", "`ring_capacity`"),
            ("ring_capacity=-4", "`ring_capacity`"),
            ("network_category=public", "`network_category`"),
            ("ring_capacity=0x20000\ntxqueuelen=10", "`txqueuelen`"),
            ("persist", "`persist`"),
        ] {
            let err = WintunOptions::parse(Some(text)).unwrap_err();
            assert_eq!(err.status(), Status::INVALID_ARGUMENT, "{text}");
            assert!(err.message().contains(needle), "{text}: {}", err.message());
        }
        let err = WintunOptions::parse(Some("ring_capacity=3")).unwrap_err();
        assert!(
            err.message().contains("0x20000 to 0x4000000"),
            "{}",
            err.message()
        );
    }

    #[test]
    fn plan_masks_dedups_and_skips_on_link_routes() {
        let mut s = settings();
        s.routes = vec![
            ("100.64.7.0".parse().unwrap(), 24), // on-link: Windows routes it
            ("100.64.8.77".parse().unwrap(), 24), // host bits set
            ("100.64.8.0".parse().unwrap(), 24), // duplicate once masked
            ("fd00:7::".parse().unwrap(), 64),   // on-link
            ("fd00:7::".parse().unwrap(), 48),   // wider than on-link: kept
            ("0.0.0.0".parse().unwrap(), 0),
        ];
        let plan = Plan::new(&s).unwrap();
        assert_eq!(
            plan.routes,
            vec![
                ("100.64.8.0".parse().unwrap(), 24),
                ("fd00:7::".parse().unwrap(), 48),
                ("0.0.0.0".parse().unwrap(), 0),
            ]
        );
        assert_eq!(plan.mtu, Some(1420));
        assert_eq!(plan.name, "cyph-test");
        assert_eq!(plan.guid, adapter_guid("cyph-test"));
        assert_eq!(plan.options, WintunOptions::default());
    }

    #[test]
    fn plan_rejects_bad_names_mtus_and_options() {
        type Case = (fn(&mut VifSettings), &'static str);
        let cases: [Case; 7] = [
            (|s| s.ifname = Some(" cyph".into()), "control characters"),
            (|s| s.ifname = Some("cy\tph".into()), "control characters"),
            (|s| s.mtu = 575, "outside"),
            (|s| s.mtu = 65_536, "outside"),
            (|s| s.mtu = 1279, "IPv6"),
            (
                |s| s.options = Some("ring_capacity=3".into()),
                "ring_capacity",
            ),
            (
                |s| s.ipv4 = Some(("10.0.0.1".parse().unwrap(), 33)),
                "prefix",
            ),
        ];
        for (edit, needle) in cases {
            let mut s = settings();
            edit(&mut s);
            let err = Plan::new(&s).unwrap_err();
            assert_eq!(err.status(), Status::INVALID_ARGUMENT);
            assert!(err.message().contains(needle), "{}", err.message());
        }
        let mut s = settings();
        s.ipv6 = None;
        s.mtu = 576;
        assert_eq!(Plan::new(&s).unwrap().mtu, Some(576));
        s.mtu = 0;
        s.ifname = None;
        let plan = Plan::new(&s).unwrap();
        assert_eq!((plan.mtu, plan.name.as_str()), (None, DEFAULT_IFNAME));
        assert_eq!(plan.guid, adapter_guid(DEFAULT_IFNAME));
    }
}
