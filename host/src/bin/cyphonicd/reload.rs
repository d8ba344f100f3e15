//! What a configuration change means for a running node: which settings changed, which
//! of them apply live, and which need a restart (those are refused, never half-applied:
//! the running values stay). Pure functions over two configurations; the daemon does
//! the applying.

use cyphonic_host::config::NodeConfig;

/// A setting a reload can change, and whether it applies without a restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Setting {
    Log,
    Keepalive,
    Suites,
    CryptoPlugins,
    MobilityPlugin,
    MobilityPoll,
    Resolver,
    FilterScript,
    ConfigScript,
    InterfacePlugin,
    Interface,
    // Restart only.
    StateDir,
    Cloud,
    ListenPort,
    SocketBuffer,
    InterfaceName,
    ResolverListen,
    SystemDns,
    ControlSocket,
    StarterPage,
}

impl Setting {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Log => "log",
            Self::Keepalive => "tunnel.keepalive_secs",
            Self::Suites => "tunnel.suites",
            Self::CryptoPlugins => "plugins.crypto",
            Self::MobilityPlugin => "plugins.mobility",
            Self::MobilityPoll => "mobility.poll_interval_ms",
            Self::Resolver => "resolver (upstreams, answers, limits)",
            Self::FilterScript => "resolver.filter",
            Self::ConfigScript => "config_script",
            Self::StateDir => "state_dir",
            Self::Cloud => "cloud",
            Self::ListenPort => "tunnel.listen_port",
            Self::SocketBuffer => "tunnel.socket_buffer_bytes",
            Self::InterfacePlugin => "plugins.interface",
            Self::Interface => "interface (mtu, routes, options)",
            Self::InterfaceName => "interface.name",
            Self::ResolverListen => "resolver.listen",
            Self::SystemDns => "resolver.system / resolver.resolv_conf",
            Self::ControlSocket => "control.socket",
            Self::StarterPage => "ui",
        }
    }

    pub(crate) fn live(self) -> bool {
        matches!(
            self,
            Self::Log
                | Self::Keepalive
                | Self::Suites
                | Self::CryptoPlugins
                | Self::MobilityPlugin
                | Self::MobilityPoll
                | Self::Resolver
                | Self::FilterScript
                | Self::ConfigScript
                | Self::InterfacePlugin
                | Self::Interface
        )
    }
}

/// The settings that differ between `old` and `new`; `filter_changed` and
/// `script_changed` say whether the script files' contents changed.
pub(crate) fn changes(
    old: &NodeConfig,
    new: &NodeConfig,
    filter_changed: bool,
    script_changed: bool,
) -> Vec<Setting> {
    let mut out = Vec::new();
    let mut check = |differs: bool, s: Setting| {
        if differs {
            out.push(s);
        }
    };
    check(old.log != new.log, Setting::Log);
    check(
        old.tunnel.keepalive_secs != new.tunnel.keepalive_secs,
        Setting::Keepalive,
    );
    check(old.tunnel.suites != new.tunnel.suites, Setting::Suites);
    check(
        old.plugins.crypto != new.plugins.crypto,
        Setting::CryptoPlugins,
    );
    check(
        old.plugins.mobility != new.plugins.mobility,
        Setting::MobilityPlugin,
    );
    check(old.mobility != new.mobility, Setting::MobilityPoll);
    let r_old = &old.resolver;
    let r_new = &new.resolver;
    check(
        r_old.upstreams != r_new.upstreams
            || r_old.block_response != r_new.block_response
            || r_old.ttl_secs != r_new.ttl_secs
            || r_old.overlay_timeout_ms != r_new.overlay_timeout_ms
            || r_old.lua_memory_bytes != r_new.lua_memory_bytes
            || r_old.lua_instruction_budget != r_new.lua_instruction_budget,
        Setting::Resolver,
    );
    check(
        r_old.filter != r_new.filter || filter_changed,
        Setting::FilterScript,
    );
    check(
        old.config_script != new.config_script || script_changed,
        Setting::ConfigScript,
    );
    check(old.state_dir != new.state_dir, Setting::StateDir);
    check(old.cloud != new.cloud, Setting::Cloud);
    check(
        old.tunnel.listen_port != new.tunnel.listen_port,
        Setting::ListenPort,
    );
    check(
        old.tunnel.socket_buffer_bytes != new.tunnel.socket_buffer_bytes,
        Setting::SocketBuffer,
    );
    check(
        old.plugins.interface != new.plugins.interface,
        Setting::InterfacePlugin,
    );
    check(
        old.interface.mtu != new.interface.mtu
            || old.interface.routes != new.interface.routes
            || old.interface.options != new.interface.options,
        Setting::Interface,
    );
    check(
        old.interface.name != new.interface.name,
        Setting::InterfaceName,
    );
    check(r_old.listen != r_new.listen, Setting::ResolverListen);
    check(
        r_old.system != r_new.system || r_old.resolv_conf != r_new.resolv_conf,
        Setting::SystemDns,
    );
    check(
        old.control.socket != new.control.socket,
        Setting::ControlSocket,
    );
    check(old.ui != new.ui, Setting::StarterPage);
    out
}

/// `new` with every restart-only setting put back to its running value: what the
/// node runs with after a reload that refused those.
pub(crate) fn effective(old: &NodeConfig, new: &NodeConfig) -> NodeConfig {
    let mut e = new.clone();
    e.state_dir = old.state_dir.clone();
    e.cloud = old.cloud.clone();
    e.tunnel.listen_port = old.tunnel.listen_port;
    e.tunnel.socket_buffer_bytes = old.tunnel.socket_buffer_bytes;
    e.interface.name = old.interface.name.clone();
    e.resolver.listen = old.resolver.listen.clone();
    e.resolver.system = old.resolver.system;
    e.resolver.resolv_conf = old.resolver.resolv_conf.clone();
    e.control = old.control.clone();
    e.ui = old.ui.clone();
    e
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const BASE: &str = "
cloud: {as: \"192.0.2.1:7301\", nms: \"192.0.2.1:7302\", key: \"cyphonic1:3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c\"}
plugins: {interface: /p/tun.so, crypto: [/p/aes.so]}
";

    fn parse(extra: &str) -> NodeConfig {
        cyphonic_host::config::parse(&format!("{BASE}{extra}"), Path::new("/etc/n.yaml")).unwrap()
    }

    #[test]
    fn the_starter_page_needs_a_restart() {
        let old = parse("");
        let new = parse("ui: {listen: \"127.0.0.1:7999\"}\n");
        assert_eq!(
            changes(&old, &new, false, false),
            vec![Setting::StarterPage]
        );
        assert!(!Setting::StarterPage.live());
        assert_eq!(effective(&old, &new).ui, old.ui);
    }

    #[test]
    fn live_and_restart_settings_are_told_apart() {
        let old = parse("");
        let new = parse(
            "log: debug\ntunnel: {keepalive_secs: 5, listen_port: 7500}\ninterface: {mtu: 1280, name: x0}\n",
        );
        let c = changes(&old, &new, false, false);
        assert_eq!(
            c,
            vec![
                Setting::Log,
                Setting::Keepalive,
                Setting::ListenPort,
                Setting::Interface,
                Setting::InterfaceName
            ]
        );
        assert!(c[0].live() && c[1].live() && !c[2].live() && c[3].live() && !c[4].live());
        let e = effective(&old, &new);
        assert_eq!(e.log, "debug");
        assert_eq!(e.tunnel.keepalive_secs, 5);
        assert_eq!(e.tunnel.listen_port, old.tunnel.listen_port);
        assert_eq!(e.interface.mtu, 1280);
        assert_eq!(e.interface.name, old.interface.name);
        assert!(changes(&old, &old, false, false).is_empty());
        assert_eq!(
            changes(&old, &old, true, false),
            vec![Setting::FilterScript]
        );
    }
}
