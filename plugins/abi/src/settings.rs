//! Owned, validated Rust forms of the virtual-interface configuration and report, shared
//! by both sides: the host encodes [`VifSettings`] into a `VifConfig`, the plugin glue
//! decodes it back; the plugin returns [`VifDetails`], the host decodes the `VifInfo`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::abi::VIF_IFNAME_LEN;
use crate::status::PluginFailure;

/// How to configure a virtual interface.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VifSettings {
    pub mtu: u32,
    /// The requested OS name; `None` lets the plugin choose.
    pub ifname: Option<String>,
    /// The interface's IPv4 address and prefix length.
    pub ipv4: Option<(Ipv4Addr, u8)>,
    /// The interface's IPv6 address and prefix length.
    pub ipv6: Option<(Ipv6Addr, u8)>,
    /// Destinations (address, prefix length) to route into the interface.
    pub routes: Vec<(IpAddr, u8)>,
    /// Plugin-specific `key=value` lines.
    pub options: Option<String>,
}

impl VifSettings {
    /// The MTU to set: `None` for 0 (keep the OS default), else `mtu` when it is within
    /// `range` and, with an IPv6 address, at least IPv6's minimum of 1280.
    pub fn checked_mtu(
        &self,
        range: std::ops::RangeInclusive<u32>,
    ) -> Result<Option<u32>, PluginFailure> {
        const IPV6_MIN_MTU: u32 = 1280;
        match self.mtu {
            0 => Ok(None),
            mtu if !range.contains(&mtu) => Err(PluginFailure::invalid_argument(format!(
                "MTU {mtu} is outside {}..={}",
                range.start(),
                range.end()
            ))),
            mtu if self.ipv6.is_some() && mtu < IPV6_MIN_MTU => {
                Err(PluginFailure::invalid_argument(format!(
                    "MTU {mtu} is below {IPV6_MIN_MTU}, too small for the IPv6 address"
                )))
            }
            mtu => Ok(Some(mtu)),
        }
    }

    /// The routes the interface must install itself: `routes` reduced to their
    /// networks, without duplicates and without the networks of the interface's own
    /// addresses, which the OS routes on its own. `host_prefixes_connected`: whether the
    /// OS also does that for a full-length prefix (Windows does; Linux adds no route
    /// for a /32 or /128 address).
    pub fn extra_routes(&self, host_prefixes_connected: bool) -> Vec<(IpAddr, u8)> {
        let width = |a: IpAddr| if a.is_ipv4() { 32 } else { 128 };
        let connected: Vec<(IpAddr, u8)> = [
            self.ipv4.map(|(a, p)| (IpAddr::V4(a), p)),
            self.ipv6.map(|(a, p)| (IpAddr::V6(a), p)),
        ]
        .into_iter()
        .flatten()
        .filter(|&(a, p)| host_prefixes_connected || p < width(a))
        .map(|(a, p)| (network(a, p), p))
        .collect();
        let mut routes: Vec<(IpAddr, u8)> = Vec::with_capacity(self.routes.len());
        for &(addr, prefix_len) in &self.routes {
            let route = (network(addr, prefix_len), prefix_len);
            if !connected.contains(&route) && !routes.contains(&route) {
                routes.push(route);
            }
        }
        routes
    }

    /// Checks what the ABI cannot carry: prefix lengths past the address width, and NUL
    /// bytes or over-long names in the strings.
    pub fn validate(&self) -> Result<(), PluginFailure> {
        if let Some(name) = &self.ifname {
            if name.is_empty() || name.len() >= VIF_IFNAME_LEN || name.contains('\0') {
                return Err(PluginFailure::invalid_argument(
                    "interface name must be 1 to 63 bytes without NUL",
                ));
            }
        }
        if self.options.as_deref().is_some_and(|o| o.contains('\0')) {
            return Err(PluginFailure::invalid_argument(
                "options must not contain NUL",
            ));
        }
        let v4_ok = self.ipv4.is_none_or(|(_, p)| p <= 32);
        let v6_ok = self.ipv6.is_none_or(|(_, p)| p <= 128);
        let routes_ok = self.routes.iter().all(|(addr, p)| match addr {
            IpAddr::V4(_) => *p <= 32,
            IpAddr::V6(_) => *p <= 128,
        });
        if !(v4_ok && v6_ok && routes_ok) {
            return Err(PluginFailure::invalid_argument(
                "prefix length exceeds the address width",
            ));
        }
        Ok(())
    }

    /// The value of `key` in [`VifSettings::options`] (the last line `key=value` wins).
    pub fn option(&self, key: &str) -> Option<&str> {
        option_value(self.options.as_deref()?, key)
    }
}

/// What a virtual interface reports about itself once open.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VifDetails {
    pub mtu: u32,
    pub ifindex: u32,
    /// The OS name, at most 63 bytes.
    pub ifname: String,
}

/// The `key=value` lines of an `options` text, trimmed, in order: blank lines and lines
/// starting with `#` are skipped; a line without `=` is an `INVALID_ARGUMENT` failure
/// naming `plugin`. Plugins match the keys themselves, so that an unknown key is an
/// error that lists the known ones.
pub fn option_lines<'a>(
    plugin: &'a str,
    options: &'a str,
) -> impl Iterator<Item = Result<(&'a str, &'a str), PluginFailure>> + 'a {
    options.lines().filter_map(move |line| {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            return None;
        }
        Some(match line.split_once('=') {
            Some((key, value)) => Ok((key.trim(), value.trim())),
            None => Err(PluginFailure::invalid_argument(format!(
                "{plugin} option `{line}` is not a key=value line"
            ))),
        })
    })
}

/// `addr` with all but the first `prefix_len` bits cleared; a `prefix_len` past the
/// address width keeps every bit.
pub fn network(addr: IpAddr, prefix_len: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let mask = u32::MAX
                .checked_shl(32 - u32::from(prefix_len.min(32)))
                .unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(a.to_bits() & mask))
        }
        IpAddr::V6(a) => {
            let mask = u128::MAX
                .checked_shl(128 - u32::from(prefix_len.min(128)))
                .unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(a.to_bits() & mask))
        }
    }
}

/// The value of `key` in `key=value` lines (the last match wins); for plugins parsing the
/// `options` text of `VifConfig` or the mobility detector's `open`.
pub fn option_value<'a>(options: &'a str, key: &str) -> Option<&'a str> {
    options
        .lines()
        .filter_map(|line| line.split_once('='))
        .filter(|(k, _)| k.trim() == key)
        .map(|(_, v)| v.trim())
        .next_back()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn network_clears_host_bits() {
        assert_eq!(network(ip("100.64.8.77"), 24), ip("100.64.8.0"));
        assert_eq!(network(ip("100.127.1.2"), 10), ip("100.64.0.0"));
        assert_eq!(network(ip("1.2.3.4"), 0), ip("0.0.0.0"));
        assert_eq!(network(ip("1.2.3.4"), 32), ip("1.2.3.4"));
        assert_eq!(network(ip("1.2.3.4"), 40), ip("1.2.3.4"));
        assert_eq!(network(ip("fd00:7::1:2"), 64), ip("fd00:7::"));
        assert_eq!(network(ip("fd00:7::1"), 128), ip("fd00:7::1"));
        assert_eq!(network(ip("fd00:7::1"), 0), ip("::"));
    }

    #[test]
    fn extra_routes_skip_connected_networks_and_duplicates() {
        let settings = VifSettings {
            mtu: 1420,
            ifname: None,
            ipv4: Some(("100.64.0.7".parse().unwrap(), 32)),
            ipv6: Some(("fd00:1::7".parse().unwrap(), 64)),
            routes: vec![
                (ip("100.64.9.9"), 10),
                (ip("100.64.0.0"), 10),
                (ip("fd00:1::"), 64),
                (ip("100.64.0.7"), 32),
            ],
            options: None,
        };
        assert_eq!(
            settings.extra_routes(false),
            vec![(ip("100.64.0.0"), 10), (ip("100.64.0.7"), 32)]
        );
        assert_eq!(settings.extra_routes(true), vec![(ip("100.64.0.0"), 10)]);
    }

    #[test]
    fn option_lines_skip_comments_and_refuse_lines_without_a_value() {
        let text = "# comment\n\n a = 1 \nb=two=2\n";
        let lines: Vec<_> = option_lines("p", text).map(Result::unwrap).collect();
        assert_eq!(lines, vec![("a", "1"), ("b", "two=2")]);
        let err = option_lines("p", "novalue").next().unwrap().unwrap_err();
        assert!(err.to_string().contains("p option `novalue`"), "{err}");
    }
}
