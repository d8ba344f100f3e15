//! What `open` derives from [`VifSettings`] before it touches the system: the parsed
//! `options` keys ([`TunOptions`]) and the checked configuration ([`Plan`]), including
//! which routes to install. Everything wrong with the settings fails here, so a bad
//! request never leaves a half-configured interface behind, even briefly.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use cyphonic_plugin_abi::{PluginFailure, VifSettings, option_lines};

use crate::sys::IFNAMSIZ;

/// The name template when the settings request none: the kernel picks `tun0`, `tun1`...
pub(crate) const DEFAULT_NAME: &str = "tun%d";
/// The transmit queue length an interface gets unless its default is longer or the
/// `txqueuelen` option says otherwise. The TUN default (500) overflows in bursts.
pub(crate) const DEFAULT_TXQUEUELEN: u32 = 1000;
/// The kernel's TUN limits (`MIN_MTU`, `MAX_MTU` in drivers/net/tun.c).
const TUN_MIN_MTU: u32 = 68;
const TUN_MAX_MTU: u32 = 65535;

/// The plugin-specific `options` (`key=value` lines).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct TunOptions {
    /// `txqueuelen=N`: the interface's transmit queue length.
    pub(crate) txqueuelen: Option<u32>,
}

impl TunOptions {
    /// Parses `key=value` lines; blank lines and lines starting with `#` are skipped and,
    /// as in [`VifSettings::option`], the last line of a key wins. Unknown keys, lines
    /// without `=` and bad values are `INVALID_ARGUMENT` errors that name the key.
    pub(crate) fn parse(options: Option<&str>) -> Result<Self, PluginFailure> {
        let mut parsed = Self::default();
        for line in option_lines("linux-tun", options.unwrap_or_default()) {
            let (key, value) = line?;
            match key {
                "txqueuelen" => {
                    let n = value.parse::<u32>().map_err(|_| {
                        PluginFailure::invalid_argument(format!(
                            "linux-tun option `txqueuelen`: `{value}` is not a number from 0 to {}",
                            u32::MAX
                        ))
                    })?;
                    parsed.txqueuelen = Some(n);
                }
                _ => {
                    return Err(PluginFailure::invalid_argument(format!(
                        "unknown linux-tun option `{key}` (known: txqueuelen)"
                    )));
                }
            }
        }
        Ok(parsed)
    }
}

/// The checked configuration of one interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Plan {
    /// The name (or `%d` template) to ask the kernel for.
    pub(crate) ifname: String,
    /// `None`: keep the kernel's default (1500).
    pub(crate) mtu: Option<u32>,
    pub(crate) ipv4: Option<(Ipv4Addr, u8)>,
    pub(crate) ipv6: Option<(Ipv6Addr, u8)>,
    /// Destinations with their host bits cleared, without duplicates and without the
    /// prefixes the kernel routes by itself when it adds the addresses.
    pub(crate) routes: Vec<(IpAddr, u8)>,
    pub(crate) options: TunOptions,
}

impl Plan {
    pub(crate) fn new(settings: &VifSettings) -> Result<Self, PluginFailure> {
        settings.validate()?;
        let options = TunOptions::parse(settings.options.as_deref())?;
        let ifname = settings.ifname.as_deref().unwrap_or(DEFAULT_NAME);
        if ifname.len() >= IFNAMSIZ || ifname.contains(['/', ' ', ':']) {
            return Err(PluginFailure::invalid_argument(format!(
                "interface name `{ifname}`: Linux names are at most {} bytes without '/', ':' or spaces",
                IFNAMSIZ - 1
            )));
        }
        let mtu = settings.checked_mtu(TUN_MIN_MTU..=TUN_MAX_MTU)?;
        // A full-length prefix gets no route of its own from the kernel.
        let routes = settings.extra_routes(false);
        Ok(Self {
            ifname: ifname.to_owned(),
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
            ifname: Some("cyph0".into()),
            ipv4: Some(("100.64.7.1".parse().unwrap(), 24)),
            ipv6: Some(("fd00:7::1".parse().unwrap(), 64)),
            routes: vec![],
            options: None,
        }
    }

    #[test]
    fn options_parse_txqueuelen_last_wins_and_skip_comments() {
        let opts =
            TunOptions::parse(Some("# tuning\n\ntxqueuelen = 2000\n txqueuelen=3000 \n")).unwrap();
        assert_eq!(opts.txqueuelen, Some(3000));
        assert_eq!(TunOptions::parse(None).unwrap(), TunOptions::default());
    }

    #[test]
    fn options_reject_unknown_keys_bad_values_and_bare_words() {
        for (text, needle) in [
            ("txqueuelen=1000\nqueues=4", "`queues`"),
            ("txqueuelen=-1", "`txqueuelen`"),
            ("txqueuelen=lots", "`txqueuelen`"),
            ("persist", "`persist`"),
        ] {
            let err = TunOptions::parse(Some(text)).unwrap_err();
            assert_eq!(err.status(), Status::INVALID_ARGUMENT, "{text}");
            assert!(err.message().contains(needle), "{text}: {}", err.message());
        }
    }

    #[test]
    fn plan_masks_dedups_and_skips_connected_routes() {
        let mut s = settings();
        s.routes = vec![
            ("100.64.7.0".parse().unwrap(), 24), // connected: the kernel has it
            ("100.64.8.77".parse().unwrap(), 24), // host bits set
            ("100.64.8.0".parse().unwrap(), 24), // duplicate once masked
            ("fd00:7::".parse().unwrap(), 64),   // connected
            ("fd00:7::".parse().unwrap(), 48),   // wider than connected: kept
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
        assert_eq!(plan.ifname, "cyph0");
    }

    #[test]
    fn plan_keeps_routes_equal_to_full_length_addresses() {
        let mut s = settings();
        s.ipv4 = Some(("100.64.7.1".parse().unwrap(), 32));
        s.routes = vec![("100.64.7.1".parse().unwrap(), 32)];
        assert_eq!(Plan::new(&s).unwrap().routes.len(), 1);
    }

    #[test]
    fn plan_rejects_bad_names_and_mtus() {
        type Case = (fn(&mut VifSettings), &'static str);
        let cases: [Case; 5] = [
            (
                |s| s.ifname = Some("a-name-far-too-long".into()),
                "at most 15",
            ),
            (|s| s.ifname = Some("a/b".into()), "at most 15"),
            (|s| s.mtu = 40, "outside"),
            (|s| s.mtu = 70_000, "outside"),
            (|s| s.mtu = 1200, "IPv6"),
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
        s.mtu = 1200;
        assert_eq!(Plan::new(&s).unwrap().mtu, Some(1200));
        s.mtu = 0;
        s.ifname = None;
        let plan = Plan::new(&s).unwrap();
        assert_eq!((plan.mtu, plan.ifname.as_str()), (None, DEFAULT_NAME));
    }
}
