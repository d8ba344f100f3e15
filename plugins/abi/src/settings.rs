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
