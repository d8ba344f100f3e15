//! The `options` text of `open` (`key=value` lines), parsed into [`UdpVifOptions`]
//! before any socket is made.

use std::net::SocketAddr;

use cyphonic_plugin_abi::PluginFailure;

/// The parsed `options`: where the plugin receives and where it sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpVifOptions {
    /// `listen=<ip:port>`: the address the plugin binds; the packets "the OS writes to
    /// the interface" arrive here, from `peer`. Port 0 picks a free port.
    pub listen: SocketAddr,
    /// `peer=<ip:port>`: where the packets the host writes to the interface go, and the
    /// only source whose datagrams are accepted as packets.
    pub peer: SocketAddr,
}

impl UdpVifOptions {
    /// Parses `key=value` lines; blank lines and lines starting with `#` are skipped and
    /// the last occurrence of a key wins. `listen` and `peer` are required; unknown keys,
    /// lines without `=`, unparsable or unusable addresses are `INVALID_ARGUMENT` errors
    /// that name the key.
    pub fn parse(options: Option<&str>) -> Result<Self, PluginFailure> {
        let (mut listen, mut peer) = (None, None);
        for line in options.unwrap_or_default().lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                return Err(PluginFailure::invalid_argument(format!(
                    "udp-vif option `{line}` is not a key=value line"
                )));
            };
            let (key, value) = (key.trim(), value.trim());
            let slot = match key {
                "listen" => &mut listen,
                "peer" => &mut peer,
                _ => {
                    return Err(PluginFailure::invalid_argument(format!(
                        "unknown udp-vif option `{key}` (known: listen, peer)"
                    )));
                }
            };
            let addr = value.parse::<SocketAddr>().map_err(|_| {
                PluginFailure::invalid_argument(format!(
                    "udp-vif option `{key}`: `{value}` is not an ip:port socket address (IPv6 as [addr]:port)"
                ))
            })?;
            *slot = Some(addr);
        }
        let missing = |key: &str, what: &str| {
            PluginFailure::invalid_argument(format!(
                "udp-vif option `{key}` is missing: {key}=<ip:port>, {what}"
            ))
        };
        let listen = listen.ok_or_else(|| missing("listen", "the UDP address to receive on"))?;
        let peer = peer.ok_or_else(|| missing("peer", "the UDP address to send packets to"))?;
        if peer.port() == 0 || peer.ip().is_unspecified() {
            return Err(PluginFailure::invalid_argument(format!(
                "udp-vif option `peer`: `{peer}` cannot be sent to (unspecified address or port 0)"
            )));
        }
        if peer.is_ipv4() != listen.is_ipv4() {
            return Err(PluginFailure::invalid_argument(format!(
                "udp-vif option `peer`: `{peer}` is not of the address family of listen=`{listen}`"
            )));
        }
        Ok(Self { listen, peer })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cyphonic_plugin_abi::Status;

    #[test]
    fn both_addresses_comments_and_last_wins() {
        let opts = UdpVifOptions::parse(Some(
            "# the link\nlisten = 127.0.0.1:0\n\npeer=127.0.0.1:9\npeer=127.0.0.1:4000\n",
        ))
        .unwrap();
        assert_eq!(opts.listen, "127.0.0.1:0".parse().unwrap());
        assert_eq!(opts.peer, "127.0.0.1:4000".parse().unwrap());
        let v6 = UdpVifOptions::parse(Some("listen=[::1]:5000\npeer=[::1]:5001")).unwrap();
        assert_eq!(v6.peer, "[::1]:5001".parse().unwrap());
    }

    #[test]
    fn bad_options_name_their_key() {
        for (text, needle) in [
            ("peer=127.0.0.1:9", "`listen`"),
            ("listen=127.0.0.1:0", "`peer`"),
            ("", "`listen`"),
            ("listen=localhost:9\npeer=127.0.0.1:9", "`listen`"),
            ("listen=127.0.0.1\npeer=127.0.0.1:9", "`listen`"),
            ("listen=127.0.0.1:0\npeer=127.0.0.1:x", "`peer`"),
            ("listen=127.0.0.1:0\npeer=127.0.0.1:0", "`peer`"),
            ("listen=127.0.0.1:0\npeer=0.0.0.0:9", "`peer`"),
            ("listen=127.0.0.1:0\npeer=[::1]:9", "`peer`"),
            ("listen=127.0.0.1:0\npeer=127.0.0.1:9\nmtu=1400", "`mtu`"),
            ("listen", "`listen`"),
        ] {
            let err = UdpVifOptions::parse(Some(text)).unwrap_err();
            assert_eq!(err.status(), Status::INVALID_ARGUMENT, "{text}");
            assert!(err.message().contains(needle), "{text}: {}", err.message());
        }
        assert!(UdpVifOptions::parse(None).is_err());
    }
}
