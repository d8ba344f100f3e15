//! Pointing the system's DNS at the CYPHONIC resolver, and undoing it.
//!
//! Three methods ([`SystemDnsMode`]), the first two on Linux, the third on Windows:
//! - `resolved`: systemd-resolved gets the resolver as the DNS server of the overlay
//!   interface with `~<domain>` as its routing-only domain, so only overlay names come
//!   to us; undone with `resolvectl revert`. A marker file in the state directory
//!   names the interface so that a restart after a crash can revert it too.
//! - `resolv-conf`: the current `/etc/resolv.conf` content is saved to
//!   `<state_dir>/resolv.conf.backup`, then the file is rewritten to name only our
//!   resolver (its `search`, `domain` and `options` lines are kept), so every query
//!   comes to us and the filter sees all of them. The file is written in place
//!   (truncate and write, never a rename over it): in network-namespace setups it is a
//!   bind mount, and a rename would fail or break the mount. The managed file starts
//!   with [`MANAGED_MARKER`].
//! - `nrpt`: a Name Resolution Policy Table rule (`crate::windows::nrpt`) sends the
//!   overlay domain to the resolver; the DNS client cache is flushed. The rule has a
//!   fixed key, so a restart after a crash finds and removes it. When Group Policy
//!   defines NRPT rules, Windows ignores local ones: that is reported, not hidden.
//!
//! Crash safety: a backup that exists at start means we died while managing the file.
//! [`recover_after_crash`] (and [`SystemDns::install`]) then restore the backup, but
//! only if the file still carries our marker; if someone rewrote it since, their
//! content wins and the stale backup is dropped.
//!
//! These functions block (file I/O, `resolvectl`): call them from `spawn_blocking` or
//! before the runtime serves traffic.

use std::fs::OpenOptions;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
#[cfg(not(windows))]
use std::net::{Ipv6Addr, SocketAddrV6};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::str::FromStr;

use cyphonic_proto::wire::Fqdn;

/// First line of a resolv.conf written by us.
pub const MANAGED_MARKER: &str = "# managed by cyphonicd";
/// Name of the resolv.conf backup inside the state directory.
pub const BACKUP_FILE: &str = "resolv.conf.backup";
/// Name of the marker that records the interface configured in systemd-resolved.
pub const RESOLVED_MARKER_FILE: &str = "resolved.link";

const RESOLVED_STUB: &str = "/run/systemd/resolve/stub-resolv.conf";

/// How the system's DNS is pointed at the resolver (`resolver.system` in the config).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SystemDnsMode {
    /// Linux: `Resolved` when systemd-resolved runs (its stub file exists and
    /// `resolvectl` is on `PATH`), else `ResolvConf`. Windows: `Nrpt`.
    #[default]
    Auto,
    Resolved,
    ResolvConf,
    Nrpt,
    /// Leave the system alone.
    None,
}

impl FromStr for SystemDnsMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "resolved" => Ok(Self::Resolved),
            "resolv-conf" => Ok(Self::ResolvConf),
            "nrpt" => Ok(Self::Nrpt),
            "none" => Ok(Self::None),
            other => Err(format!(
                "unknown system DNS mode `{other}` (auto, resolved, resolv-conf, nrpt or none)"
            )),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SystemDnsError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("`resolvectl {args}` failed: {message}")]
    Resolvectl { args: String, message: String },
    #[error("systemd-resolved is not running (no {RESOLVED_STUB} or no resolvectl on PATH)")]
    ResolvedUnavailable,
    #[error(
        "resolver.system `{mode}` is not available on this operating system (use {native} or none)"
    )]
    WrongPlatform {
        mode: &'static str,
        native: &'static str,
    },
    #[cfg(windows)]
    #[error(transparent)]
    Nrpt(#[from] crate::windows::nrpt::NrptError),
}

/// The applied system DNS configuration; [`SystemDns::uninstall`] undoes it, and so
/// does a drop (logging instead of returning errors).
#[derive(Debug)]
pub struct SystemDns {
    applied: Applied,
}

#[derive(Debug)]
enum Applied {
    Resolved {
        ifname: String,
        marker: PathBuf,
    },
    ResolvConf {
        path: PathBuf,
        backup: PathBuf,
    },
    #[cfg(windows)]
    Nrpt,
    Nothing,
}

impl SystemDns {
    /// Points the system's DNS for `domain` (resolved) or for everything
    /// (resolv-conf) at `resolver_ip` port 53.
    pub fn install(
        mode: SystemDnsMode,
        ifname: &str,
        resolver_ip: IpAddr,
        domain: &Fqdn,
        resolv_conf: &Path,
        state_dir: &Path,
    ) -> Result<Self, SystemDnsError> {
        let mode = match mode {
            SystemDnsMode::Auto if cfg!(windows) => SystemDnsMode::Nrpt,
            SystemDnsMode::Auto if resolved_running() => SystemDnsMode::Resolved,
            SystemDnsMode::Auto => SystemDnsMode::ResolvConf,
            SystemDnsMode::Resolved | SystemDnsMode::ResolvConf if cfg!(windows) => {
                return Err(SystemDnsError::WrongPlatform {
                    mode: if mode == SystemDnsMode::Resolved {
                        "resolved"
                    } else {
                        "resolv-conf"
                    },
                    native: "nrpt",
                });
            }
            SystemDnsMode::Nrpt if !cfg!(windows) => {
                return Err(SystemDnsError::WrongPlatform {
                    mode: "nrpt",
                    native: "resolved, resolv-conf",
                });
            }
            SystemDnsMode::Resolved if !resolved_running() => {
                return Err(SystemDnsError::ResolvedUnavailable);
            }
            other => other,
        };
        let applied = match mode {
            SystemDnsMode::Resolved => install_resolved(ifname, resolver_ip, domain, state_dir)?,
            SystemDnsMode::ResolvConf => install_resolv_conf(resolver_ip, resolv_conf, state_dir)?,
            #[cfg(windows)]
            SystemDnsMode::Nrpt => install_nrpt(resolver_ip, domain)?,
            _ => Applied::Nothing,
        };
        Ok(Self { applied })
    }

    /// The method in effect: `Resolved`, `ResolvConf` or `None`.
    pub fn mode(&self) -> SystemDnsMode {
        match self.applied {
            Applied::Resolved { .. } => SystemDnsMode::Resolved,
            Applied::ResolvConf { .. } => SystemDnsMode::ResolvConf,
            #[cfg(windows)]
            Applied::Nrpt => SystemDnsMode::Nrpt,
            Applied::Nothing => SystemDnsMode::None,
        }
    }

    /// Restores the system's DNS configuration.
    pub fn uninstall(mut self) -> Result<(), SystemDnsError> {
        self.undo()
    }

    fn undo(&mut self) -> Result<(), SystemDnsError> {
        match std::mem::replace(&mut self.applied, Applied::Nothing) {
            Applied::Resolved { ifname, marker } => {
                resolvectl(&["revert", &ifname])?;
                remove_if_exists(&marker)?;
                tracing::info!(ifname, "system DNS: systemd-resolved link reverted");
                Ok(())
            }
            Applied::ResolvConf { path, backup } => restore_resolv_conf(&path, &backup),
            #[cfg(windows)]
            Applied::Nrpt => {
                crate::windows::nrpt::remove()?;
                tracing::info!("system DNS: NRPT rule removed");
                Ok(())
            }
            Applied::Nothing => Ok(()),
        }
    }
}

impl Drop for SystemDns {
    fn drop(&mut self) {
        if let Err(e) = self.undo() {
            tracing::warn!("system DNS: cannot restore the configuration: {e}");
        }
    }
}

/// Undoes what a previous run left behind when it died without uninstalling: restores
/// the resolv.conf backup (if the file still is ours) and reverts a recorded
/// systemd-resolved link. Returns whether anything was left behind.
pub fn recover_after_crash(state_dir: &Path, resolv_conf: &Path) -> Result<bool, SystemDnsError> {
    let mut recovered = false;
    #[cfg(windows)]
    if crate::windows::nrpt::remove()? {
        tracing::warn!("system DNS: removed the NRPT rule a previous run left behind");
        recovered = true;
    }
    let backup = state_dir.join(BACKUP_FILE);
    if backup.exists() {
        tracing::warn!(
            path = %resolv_conf.display(),
            "system DNS: found a resolv.conf backup from a previous run; restoring it"
        );
        restore_resolv_conf(resolv_conf, &backup)?;
        recovered = true;
    }
    let marker = state_dir.join(RESOLVED_MARKER_FILE);
    match std::fs::read_to_string(&marker) {
        Ok(ifname) => {
            let ifname = ifname.trim();
            // The interface usually died with the daemon, and resolved forgot it.
            if !ifname.is_empty() {
                if let Err(e) = resolvectl(&["revert", ifname]) {
                    tracing::debug!(ifname, "system DNS: stale resolved link: {e}");
                }
            }
            remove_if_exists(&marker)?;
            recovered = true;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(SystemDnsError::Io {
                path: marker,
                source,
            });
        }
    }
    Ok(recovered)
}

/// The system's own nameservers (port 53), for the default upstreams: from our backup
/// when we manage resolv.conf, else from the file itself (nothing if the file is ours
/// and the backup is gone). Scoped IPv6 addresses with an interface name instead of
/// an index are skipped.
pub fn system_nameservers(
    state_dir: &Path,
    resolv_conf: &Path,
) -> Result<Vec<SocketAddr>, SystemDnsError> {
    // NRPT leaves the adapters' DNS servers alone: they are the system's resolvers.
    #[cfg(windows)]
    {
        let _ = (state_dir, resolv_conf);
        crate::sys::dns_servers().map_err(|source| SystemDnsError::Io {
            path: PathBuf::from("GetAdaptersAddresses"),
            source,
        })
    }
    #[cfg(not(windows))]
    {
        unix_nameservers(state_dir, resolv_conf)
    }
}

#[cfg(not(windows))]
fn unix_nameservers(
    state_dir: &Path,
    resolv_conf: &Path,
) -> Result<Vec<SocketAddr>, SystemDnsError> {
    let backup = state_dir.join(BACKUP_FILE);
    let content = match read_optional(&backup)? {
        Some(content) => content,
        None => match read_optional(resolv_conf)? {
            Some(content) if !is_managed(&content) => content,
            _ => return Ok(Vec::new()),
        },
    };
    Ok(content
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next() == Some("nameserver"))
                .then(|| words.next())
                .flatten()
        })
        .filter_map(parse_nameserver)
        .collect())
}

#[cfg(not(windows))]
fn parse_nameserver(text: &str) -> Option<SocketAddr> {
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(SocketAddr::new(ip, 53));
    }
    let (ip, scope) = text.split_once('%')?;
    let ip: Ipv6Addr = ip.parse().ok()?;
    let scope: u32 = scope.parse().ok()?;
    Some(SocketAddr::V6(SocketAddrV6::new(ip, 53, 0, scope)))
}

#[cfg(windows)]
fn install_nrpt(resolver_ip: IpAddr, domain: &Fqdn) -> Result<Applied, SystemDnsError> {
    use crate::windows::nrpt;
    let rule = nrpt::NrptRule {
        domains: vec![format!(".{}", domain.as_str().trim_end_matches('.'))],
        servers: vec![resolver_ip],
    };
    let report = nrpt::install(&rule)?;
    if report.group_policy_overrides {
        tracing::warn!(
            "system DNS: Group Policy defines NRPT rules, so Windows ignores the local rule \
             for {domain}; add an NRPT rule for .{domain} pointing at {resolver_ip} to the \
             policy, or resolve overlay names with `cyphonic resolve`"
        );
    }
    tracing::info!(%resolver_ip, domain = %domain, "system DNS: NRPT rule installed, DNS cache flushed");
    Ok(Applied::Nrpt)
}

fn resolved_running() -> bool {
    Path::new(RESOLVED_STUB).exists() && on_path("resolvectl")
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path)
            .any(|dir| std::fs::metadata(dir.join(program)).is_ok_and(|m| m.is_file()))
    })
}

fn install_resolved(
    ifname: &str,
    resolver_ip: IpAddr,
    domain: &Fqdn,
    state_dir: &Path,
) -> Result<Applied, SystemDnsError> {
    let marker = state_dir.join(RESOLVED_MARKER_FILE);
    std::fs::create_dir_all(state_dir).map_err(|source| SystemDnsError::Io {
        path: state_dir.to_owned(),
        source,
    })?;
    // Recorded first: a crash between the commands below is still recoverable.
    write_file_synced(&marker, ifname)?;
    let routing_domain = format!("~{domain}");
    let ip = resolver_ip.to_string();
    let configured = resolvectl(&["dns", ifname, &ip])
        .and_then(|()| resolvectl(&["domain", ifname, &routing_domain]));
    if let Err(e) = configured {
        let _ = resolvectl(&["revert", ifname]);
        let _ = remove_if_exists(&marker);
        return Err(e);
    }
    // Keep other names off this link even on resolved versions whose automatic
    // default-route choice differs; older versions lack the verb, which is harmless.
    if let Err(e) = resolvectl(&["default-route", ifname, "false"]) {
        tracing::debug!("system DNS: {e}");
    }
    tracing::info!(ifname, %resolver_ip, domain = %domain, "system DNS: systemd-resolved routes the overlay domain to the resolver");
    Ok(Applied::Resolved {
        ifname: ifname.to_owned(),
        marker,
    })
}

fn install_resolv_conf(
    resolver_ip: IpAddr,
    path: &Path,
    state_dir: &Path,
) -> Result<Applied, SystemDnsError> {
    let backup = state_dir.join(BACKUP_FILE);
    if backup.exists() {
        // Left by a crash: the current file is (probably) ours, get the original back.
        restore_resolv_conf(path, &backup)?;
    }
    let current = read_optional(path)?.unwrap_or_default();
    let original = if is_managed(&current) {
        tracing::warn!(
            path = %path.display(),
            "system DNS: the file is already managed by cyphonicd but there is no backup; \
             the original nameservers are lost"
        );
        kept_lines(&current)
    } else {
        current
    };
    std::fs::create_dir_all(state_dir).map_err(|source| SystemDnsError::Io {
        path: state_dir.to_owned(),
        source,
    })?;
    // The backup is durable before the file changes.
    write_file_synced(&backup, &original)?;
    let managed = managed_content(resolver_ip, &original, &backup);
    if let Err(e) = write_in_place(path, &managed) {
        let _ = std::fs::remove_file(&backup);
        return Err(e);
    }
    tracing::info!(path = %path.display(), %resolver_ip, "system DNS: resolv.conf points at the resolver");
    Ok(Applied::ResolvConf {
        path: path.to_owned(),
        backup,
    })
}

/// Puts the backup's content back if the file is still ours, and deletes the backup.
fn restore_resolv_conf(path: &Path, backup: &Path) -> Result<(), SystemDnsError> {
    let Some(original) = read_optional(backup)? else {
        tracing::warn!(path = %path.display(), "system DNS: no backup to restore");
        return Ok(());
    };
    let current = read_optional(path)?.unwrap_or_default();
    if is_managed(&current) {
        write_in_place(path, &original)?;
        tracing::info!(path = %path.display(), "system DNS: resolv.conf restored");
    } else {
        tracing::warn!(
            path = %path.display(),
            "system DNS: resolv.conf was rewritten by someone else; keeping it, dropping our backup"
        );
    }
    remove_if_exists(backup)
}

fn managed_content(resolver_ip: IpAddr, original: &str, backup: &Path) -> String {
    let mut content = format!(
        "{MANAGED_MARKER}: the previous content is in {} and comes back when cyphonicd stops\n\
         nameserver {resolver_ip}\n",
        backup.display()
    );
    content.push_str(&kept_lines(original));
    content
}

/// The lines of a resolv.conf that stay valid with our nameserver.
fn kept_lines(content: &str) -> String {
    let mut kept = String::new();
    for line in content.lines() {
        let keyword = line.split_whitespace().next();
        if matches!(keyword, Some("search" | "domain" | "options" | "sortlist")) {
            kept.push_str(line);
            kept.push('\n');
        }
    }
    kept
}

fn is_managed(content: &str) -> bool {
    content.starts_with(MANAGED_MARKER)
}

fn read_optional(path: &Path) -> Result<Option<String>, SystemDnsError> {
    match std::fs::read_to_string(path) {
        Ok(content) => Ok(Some(content)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(SystemDnsError::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Truncate and write through the existing inode (see the module docs for why).
fn write_in_place(path: &Path, content: &str) -> Result<(), SystemDnsError> {
    let io = |source| SystemDnsError::Io {
        path: path.to_owned(),
        source,
    };
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(io)?;
    file.write_all(content.as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)
}

/// Our own files: written to a temporary name and renamed, so they are whole or absent.
fn write_file_synced(path: &Path, content: &str) -> Result<(), SystemDnsError> {
    let tmp = path.with_extension("tmp");
    let io = |source| SystemDnsError::Io {
        path: path.to_owned(),
        source,
    };
    let mut file = std::fs::File::create(&tmp).map_err(io)?;
    file.write_all(content.as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

fn remove_if_exists(path: &Path) -> Result<(), SystemDnsError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(SystemDnsError::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

fn resolvectl(args: &[&str]) -> Result<(), SystemDnsError> {
    let failed = |message: String| SystemDnsError::Resolvectl {
        args: args.join(" "),
        message,
    };
    let output = Command::new("resolvectl")
        .args(args)
        .output()
        .map_err(|e| failed(e.to_string()))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(failed(format!(
            "{}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )))
    }
}

// resolv.conf management is the Unix method; NRPT has its tests in `crate::windows::nrpt`.
#[cfg(test)]
#[cfg(not(windows))]
mod tests {
    use super::*;

    const ORIGINAL: &str = "# generated by dhcp\nnameserver 192.0.2.53\nnameserver 2001:db8::53\n\
                            nameserver fe80::1%2\nnameserver fe80::2%eth0\nsearch example.net\noptions edns0 trust-ad\n";

    fn setup() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("resolv.conf");
        let state = dir.path().join("state");
        std::fs::write(&conf, ORIGINAL).unwrap();
        (dir, conf, state)
    }

    fn install(conf: &Path, state: &Path) -> SystemDns {
        SystemDns::install(
            SystemDnsMode::ResolvConf,
            "cyph0",
            "100.64.0.7".parse().unwrap(),
            &Fqdn::new("cyphonic").unwrap(),
            conf,
            state,
        )
        .unwrap()
    }

    #[test]
    fn install_manages_the_file_and_uninstall_restores_it_exactly() {
        let (_dir, conf, state) = setup();
        #[cfg(unix)]
        let inode = {
            use std::os::unix::fs::MetadataExt;
            std::fs::metadata(&conf).unwrap().ino()
        };
        let dns = install(&conf, &state);
        assert_eq!(dns.mode(), SystemDnsMode::ResolvConf);
        let managed = std::fs::read_to_string(&conf).unwrap();
        assert!(managed.starts_with(MANAGED_MARKER), "{managed}");
        let body: Vec<&str> = managed.lines().skip(1).collect();
        assert_eq!(
            body,
            [
                "nameserver 100.64.0.7",
                "search example.net",
                "options edns0 trust-ad"
            ]
        );
        assert_eq!(
            std::fs::read_to_string(state.join(BACKUP_FILE)).unwrap(),
            ORIGINAL
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            assert_eq!(
                std::fs::metadata(&conf).unwrap().ino(),
                inode,
                "written in place"
            );
        }
        // Upstreams come from the backup while we manage the file.
        let upstreams = system_nameservers(&state, &conf).unwrap();
        assert_eq!(
            upstreams,
            [
                "192.0.2.53:53".parse::<SocketAddr>().unwrap(),
                "[2001:db8::53]:53".parse().unwrap(),
                SocketAddr::V6(SocketAddrV6::new("fe80::1".parse().unwrap(), 53, 0, 2)),
            ]
        );
        dns.uninstall().unwrap();
        assert_eq!(std::fs::read_to_string(&conf).unwrap(), ORIGINAL);
        assert!(!state.join(BACKUP_FILE).exists());
        assert_eq!(system_nameservers(&state, &conf).unwrap().len(), 3);
    }

    #[test]
    fn drop_restores_too() {
        let (_dir, conf, state) = setup();
        drop(install(&conf, &state));
        assert_eq!(std::fs::read_to_string(&conf).unwrap(), ORIGINAL);
        assert!(!state.join(BACKUP_FILE).exists());
    }

    #[test]
    fn crash_recovery_restores_the_original() {
        let (_dir, conf, state) = setup();
        let dns = install(&conf, &state);
        // A crash: nothing runs the destructor.
        std::mem::forget(dns);
        assert!(is_managed(&std::fs::read_to_string(&conf).unwrap()));
        assert!(recover_after_crash(&state, &conf).unwrap());
        assert_eq!(std::fs::read_to_string(&conf).unwrap(), ORIGINAL);
        assert!(!recover_after_crash(&state, &conf).unwrap());

        // Install after a crash without recovery: the old backup is used, not our file.
        std::mem::forget(install(&conf, &state));
        let dns = install(&conf, &state);
        assert_eq!(
            std::fs::read_to_string(state.join(BACKUP_FILE)).unwrap(),
            ORIGINAL
        );
        dns.uninstall().unwrap();
        assert_eq!(std::fs::read_to_string(&conf).unwrap(), ORIGINAL);
    }

    #[test]
    fn a_file_rewritten_by_someone_else_is_kept() {
        let (_dir, conf, state) = setup();
        let dns = install(&conf, &state);
        std::fs::write(&conf, "nameserver 198.51.100.1\n").unwrap();
        dns.uninstall().unwrap();
        assert_eq!(
            std::fs::read_to_string(&conf).unwrap(),
            "nameserver 198.51.100.1\n"
        );
        assert!(!state.join(BACKUP_FILE).exists());
    }

    #[test]
    fn missing_file_and_none_mode() {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("resolv.conf");
        let state = dir.path().join("state");
        assert!(system_nameservers(&state, &conf).unwrap().is_empty());
        let dns = SystemDns::install(
            SystemDnsMode::None,
            "cyph0",
            "100.64.0.7".parse().unwrap(),
            &Fqdn::new("cyphonic").unwrap(),
            &conf,
            &state,
        )
        .unwrap();
        assert_eq!(dns.mode(), SystemDnsMode::None);
        dns.uninstall().unwrap();
        assert!(!conf.exists());
        // Managing a file that did not exist leaves an empty one behind.
        let dns = install(&conf, &state);
        assert!(is_managed(&std::fs::read_to_string(&conf).unwrap()));
        assert!(system_nameservers(&state, &conf).unwrap().is_empty());
        dns.uninstall().unwrap();
        assert_eq!(std::fs::read_to_string(&conf).unwrap(), "");
    }

    #[test]
    fn modes_parse() {
        assert_eq!(
            "resolv-conf".parse::<SystemDnsMode>(),
            Ok(SystemDnsMode::ResolvConf)
        );
        assert_eq!("auto".parse::<SystemDnsMode>(), Ok(SystemDnsMode::Auto));
        assert!("systemd".parse::<SystemDnsMode>().is_err());
    }
}
