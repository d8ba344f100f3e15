//! `cyphonic`: the node's command-line interface.
//!
//! ```text
//! cyphonic [--config FILE] [--json] status
//! cyphonic [--config FILE] [--json] peers
//! cyphonic [--config FILE] [--json] resolve <name>
//! cyphonic [--config FILE] [--json] ping <name> [-c COUNT] [-i MS]
//! cyphonic [--config FILE] login [--device-id ID] [--password-stdin]
//! cyphonic [--config FILE] logout
//! cyphonic [--config FILE] ui [--print-url]
//! ```
//!
//! Everything but `login` asks the running daemon over its control socket. `login`
//! talks to the AS itself (the daemon may not be up yet), stores the credential in the
//! state directory (root only) and tells the daemon, which then comes up.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::time::SystemTime;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use cyphonic_host::config::{self, NodeConfig};
use cyphonic_host::control::{self, NodeStatus, PingReport, Request, Response};
use cyphonic_host::packet::PeerStatus;
use cyphonic_proto::time::UnixTime;
use zeroize::Zeroizing;

#[derive(Debug, Parser)]
#[command(name = "cyphonic", version, about = "Control a CYPHONIC node")]
struct Cli {
    /// The node configuration file (for the control socket, the cloud and the state
    /// directory).
    #[arg(long, global = true, default_value = config::DEFAULT_CONFIG_PATH)]
    config: PathBuf,
    /// The daemon's control socket (default: from the configuration).
    #[arg(long, global = true)]
    socket: Option<PathBuf>,
    /// Machine-readable output.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// This node: name, addresses, cloud reachability, plugins, counters.
    Status,
    /// The nodes this node has sessions with.
    Peers,
    /// Resolve an overlay name (asks the NMS and sets up the session).
    Resolve { name: String },
    /// Overlay-level ping: probes answered by the peer's daemon through the tunnel.
    Ping {
        name: String,
        #[arg(short = 'c', long, default_value_t = 4)]
        count: u32,
        #[arg(short = 'i', long = "interval-ms", default_value_t = 1000)]
        interval_ms: u64,
    },
    /// Log this device in at the AS and store its credential.
    Login {
        #[arg(long)]
        device_id: Option<String>,
        /// Read the password as one line from standard input.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Log out: the NMS forgets the node, the credential is deleted, the interface goes.
    Logout,
    /// Re-read the configuration and scripts now; prints what changed, what was
    /// applied and what was refused.
    Reload,
    /// Open the starter page (login and status in the browser) with a one-time login
    /// link from the daemon; the link works once, within 60 s.
    Ui {
        /// Print the link instead of opening the default browser.
        #[arg(long)]
        print_url: bool,
    },
    /// Check a configuration offline the way a reload does (parse, config logic, DNS
    /// filter, plugins); default: the --config file.
    CheckConfig { file: Option<PathBuf> },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cyphonic: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("cyphonic: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<std::process::ExitCode> {
    if let Command::CheckConfig { file } = &cli.command {
        let path = file.clone().unwrap_or_else(|| cli.config.clone());
        return check_config(&path, cli.json);
    }
    let loaded = config::load(&cli.config)
        .with_context(|| format!("loading the configuration {}", cli.config.display()));
    // A broken file must not lock the operator out of a daemon still running with the
    // previous one: talk to it at the given or the default socket.
    let socket = match (&cli.socket, &loaded) {
        (Some(socket), _) => socket.clone(),
        (None, Ok(config)) => config.control.socket.clone(),
        (None, Err(e)) if !matches!(cli.command, Command::Login { .. }) => {
            eprintln!(
                "cyphonic: warning: {e:#}; trying {}",
                config::DEFAULT_CONTROL_SOCKET
            );
            PathBuf::from(config::DEFAULT_CONTROL_SOCKET)
        }
        (None, Err(_)) => PathBuf::new(),
    };
    let mut out = std::io::stdout().lock();
    let request = match &cli.command {
        Command::Login {
            device_id,
            password_stdin,
        } => {
            let config = loaded?;
            login(&config, device_id.clone(), *password_stdin).await?;
            // A daemon that is not running picks the credential up when it starts.
            let _ = control::request(&socket, &Request::CredentialChanged).await;
            writeln!(
                out,
                "logged in; credential stored in {}",
                config.state_dir.display()
            )?;
            return Ok(std::process::ExitCode::SUCCESS);
        }
        Command::Status => Request::Status,
        Command::Peers => Request::Peers,
        Command::Resolve { name } => Request::Resolve { name: name.clone() },
        Command::Ping {
            name,
            count,
            interval_ms,
        } => Request::Ping {
            name: name.clone(),
            count: *count,
            interval_ms: *interval_ms,
        },
        Command::Logout => Request::Logout,
        Command::Reload => Request::Reload,
        Command::Ui { print_url } => {
            return open_ui(&socket, *print_url, cli.json, &mut out).await;
        }
        Command::CheckConfig { .. } => unreachable!("handled above"),
    };
    let response = control::request(&socket, &request).await?;
    if cli.json {
        serde_json::to_writer_pretty(&mut out, &response)?;
        writeln!(out)?;
        return Ok(match response {
            Response::Error { .. } => std::process::ExitCode::FAILURE,
            Response::Reloaded(ref r) if r.error.is_some() => std::process::ExitCode::FAILURE,
            Response::Ping(ref p) if p.rtts_ms.iter().all(Option::is_none) => {
                std::process::ExitCode::FAILURE
            }
            _ => std::process::ExitCode::SUCCESS,
        });
    }
    match response {
        Response::Status(status) => print_status(&mut out, &status)?,
        Response::Peers { peers } => print_peers(&mut out, &peers)?,
        Response::Resolved(r) => {
            let v4 = r.vip4.map(|a| a.to_string()).unwrap_or_default();
            let v6 = r.vip6.map(|a| a.to_string()).unwrap_or_default();
            writeln!(out, "{}\tA {v4}\tAAAA {v6}", r.name)?;
            if let (Some(path), Some(endpoint)) = (r.path, r.endpoint) {
                writeln!(out, "path: {path} via {endpoint}")?;
            }
        }
        Response::Ping(report) => {
            print_ping(&mut out, &report)?;
            if report.rtts_ms.iter().all(Option::is_none) {
                return Ok(std::process::ExitCode::FAILURE);
            }
        }
        Response::Reloaded(report) => {
            if let Some(error) = &report.error {
                bail!("configuration not reloaded (the running one stays): {error}");
            }
            if report.changed.is_empty() {
                writeln!(out, "nothing changed")?;
            }
            for name in &report.applied {
                writeln!(out, "applied:  {name}")?;
            }
            for reason in &report.refused {
                writeln!(out, "refused:  {reason}")?;
            }
        }
        Response::Done { message } => writeln!(out, "{message}")?,
        Response::UiUrl { url } => writeln!(out, "{url}")?,
        Response::Error { message } => {
            bail!("{message}");
        }
    }
    Ok(std::process::ExitCode::SUCCESS)
}

/// `cyphonic check-config`: everything a reload validates, without a daemon.
fn check_config(path: &std::path::Path, json: bool) -> anyhow::Result<std::process::ExitCode> {
    let result = (|| -> anyhow::Result<Vec<String>> {
        let config = config::load(path)?;
        let (config, changed) = cyphonic_host::validate::config_logic(config)?;
        cyphonic_host::validate::filter(&config)?;
        let plugins = cyphonic_host::validate::plugins(&config)?;
        let mut lines: Vec<String> = changed
            .iter()
            .map(|k| format!("config logic sets {k}"))
            .collect();
        lines.extend(
            plugins
                .infos()
                .into_iter()
                .map(|p| format!("{} plugin {} {} ({})", p.kind, p.name, p.version, p.path)),
        );
        Ok(lines)
    })();
    let mut out = std::io::stdout().lock();
    match result {
        Ok(lines) => {
            if json {
                writeln!(out, "{}", serde_json::json!({"ok": true, "notes": lines}))?;
            } else {
                writeln!(out, "{}: OK", path.display())?;
                for l in lines {
                    writeln!(out, "  {l}")?;
                }
            }
            Ok(std::process::ExitCode::SUCCESS)
        }
        Err(e) => {
            if json {
                writeln!(
                    out,
                    "{}",
                    serde_json::json!({"ok": false, "error": format!("{e:#}")})
                )?;
            } else {
                eprintln!("cyphonic: {e:#}");
            }
            Ok(std::process::ExitCode::FAILURE)
        }
    }
}

async fn login(
    config: &NodeConfig,
    device_id: Option<String>,
    password_stdin: bool,
) -> anyhow::Result<()> {
    let stdin = std::io::stdin();
    let interactive = stdin.is_terminal() && !password_stdin;
    let device_id = match device_id {
        Some(id) => id,
        None => {
            if !interactive {
                bail!("--device-id is required when the password comes from standard input");
            }
            eprint!("Device ID: ");
            std::io::stderr().flush()?;
            let mut line = String::new();
            stdin.lock().read_line(&mut line)?;
            line.trim().to_owned()
        }
    };
    if device_id.is_empty() {
        bail!("the device ID is empty");
    }
    let mut password = if interactive {
        Zeroizing::new(rpassword::prompt_password("Password: ").context("reading the password")?)
    } else {
        let mut line = Zeroizing::new(String::new());
        stdin
            .lock()
            .read_line(&mut line)
            .context("reading the password from standard input")?;
        let trimmed = line.trim_end_matches(['\r', '\n']).to_owned();
        Zeroizing::new(trimmed)
    };
    let logged_in = cyphonic_host::login::login(
        config,
        &device_id,
        Zeroizing::new(std::mem::take(&mut *password).into_bytes()),
    )
    .await?;
    eprintln!(
        "this device is {} ({}, {})",
        logged_in.fqdn, logged_in.vip4, logged_in.vip6
    );
    Ok(())
}

/// `cyphonic ui`: asks the daemon for a one-time login link and opens it (or prints
/// it).
async fn open_ui(
    socket: &std::path::Path,
    print_url: bool,
    json: bool,
    out: &mut impl Write,
) -> anyhow::Result<std::process::ExitCode> {
    let url = match control::request(socket, &Request::UiUrl).await? {
        Response::UiUrl { url } => url,
        Response::Error { message } => bail!("{message}"),
        other => bail!("unexpected answer from cyphonicd: {other:?}"),
    };
    if print_url || json {
        if json {
            writeln!(out, "{}", serde_json::json!({ "url": url }))?;
        } else {
            writeln!(out, "{url}")?;
        }
        return Ok(std::process::ExitCode::SUCCESS);
    }
    match open_browser(&url) {
        Ok(()) => {
            eprintln!("opened the starter page in the default browser (the link works once)");
            Ok(std::process::ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("cyphonic: cannot open a browser ({e:#}); open this link within 60 s:");
            writeln!(out, "{url}")?;
            Ok(std::process::ExitCode::FAILURE)
        }
    }
}

/// Opens `url` in the user's default browser. Run through `sudo`, the browser starts
/// as the invoking user, not as root.
#[cfg(unix)]
fn open_browser(url: &str) -> anyhow::Result<()> {
    let sudo_user = std::env::var("SUDO_USER")
        .ok()
        .filter(|u| !u.is_empty() && u != "root");
    let mut cmd = match sudo_user {
        Some(user) => {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", &user, "--", "env"]);
            for var in [
                "DISPLAY",
                "WAYLAND_DISPLAY",
                "XAUTHORITY",
                "XDG_RUNTIME_DIR",
                "DBUS_SESSION_BUS_ADDRESS",
            ] {
                if let Ok(value) = std::env::var(var) {
                    c.arg(format!("{var}={value}"));
                }
            }
            c.arg("xdg-open");
            c
        }
        None => std::process::Command::new("xdg-open"),
    };
    let status = cmd
        .arg(url)
        .stdin(std::process::Stdio::null())
        .status()
        .context("running xdg-open")?;
    if !status.success() {
        bail!("xdg-open failed: {status}");
    }
    Ok(())
}

#[cfg(windows)]
fn open_browser(url: &str) -> anyhow::Result<()> {
    // `start` hands the URL to the shell's default handler; the empty title keeps a
    // quoted URL from being taken for the window title. The URL has no shell
    // metacharacters (http://127.0.0.1:PORT/?token=HEX).
    let status = std::process::Command::new("cmd")
        .args(["/C", "start", ""])
        .arg(url)
        .status()
        .context("running cmd /C start")?;
    if !status.success() {
        bail!("cmd /C start failed: {status}");
    }
    Ok(())
}

fn print_status(out: &mut impl Write, s: &NodeStatus) -> anyhow::Result<()> {
    writeln!(
        out,
        "state:       {}",
        serde_json::to_value(&s.state)?.as_str().unwrap_or("?")
    )?;
    if let Some(fqdn) = &s.fqdn {
        writeln!(out, "name:        {fqdn}")?;
    }
    if let (Some(v4), Some(v6)) = (s.vip4, s.vip6) {
        writeln!(out, "addresses:   {v4}  {v6}")?;
    }
    if let Some(iface) = &s.interface {
        writeln!(out, "interface:   {iface}")?;
    }
    if let Some(listen) = s.listen {
        writeln!(out, "tunnel port: {}", listen.port())?;
    }
    if !s.resolver.is_empty() {
        let list: Vec<String> = s.resolver.iter().map(ToString::to_string).collect();
        writeln!(out, "resolver:    {}", list.join(", "))?;
    }
    let cloud = &s.cloud;
    let reach = match (cloud.registered, cloud.last_contact_secs) {
        (true, Some(secs)) => format!("registered, last answer {secs} s ago"),
        (true, None) => "registered".to_owned(),
        (false, _) => "unreachable".to_owned(),
    };
    match cloud.nms {
        Some(nms) => writeln!(out, "cloud:       NMS {nms}: {reach}")?,
        None => writeln!(out, "cloud:       not connected")?,
    }
    if let Some(observed) = cloud.observed {
        writeln!(out, "seen as:     {observed}")?;
    }
    if let Some(exp) = s.credential_expires {
        let now = UnixTime::from_system_time(SystemTime::now()).0;
        writeln!(out, "credential:  expires in {} s", exp.saturating_sub(now))?;
    }
    writeln!(out, "plugins:")?;
    for p in &s.plugins {
        writeln!(
            out,
            "  {:<10} {} {}  ({})",
            p.kind, p.name, p.version, p.path
        )?;
    }
    let nonzero: Vec<_> = s.counters.iter().filter(|(_, v)| **v > 0).collect();
    if !nonzero.is_empty() {
        writeln!(out, "counters:")?;
        for (k, v) in nonzero {
            writeln!(out, "  {k:<32} {v}")?;
        }
    }
    if let Some(e) = &s.last_error {
        writeln!(out, "last error:  {e}")?;
    }
    Ok(())
}

fn print_peers(out: &mut impl Write, peers: &[PeerStatus]) -> anyhow::Result<()> {
    let now = UnixTime::from_system_time(SystemTime::now()).0;
    let header = [
        "NAME",
        "IPV4",
        "IPV6",
        "PATH",
        "ENDPOINT",
        "SUITE",
        "HANDSHAKE",
        "TX",
        "RX",
    ];
    let rows: Vec<[String; 9]> = peers
        .iter()
        .map(|p| {
            [
                p.fqdn.clone(),
                p.vip4.to_string(),
                p.vip6.to_string(),
                serde_json::to_value(p.path)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default(),
                p.endpoint.to_string(),
                p.suite.clone().unwrap_or_else(|| "-".into()),
                p.last_handshake
                    .map(|t| format!("{} s ago", now.saturating_sub(t)))
                    .unwrap_or_else(|| {
                        if p.handshake_in_progress {
                            "in progress".into()
                        } else {
                            "never".into()
                        }
                    }),
                human_bytes(p.tx_bytes),
                human_bytes(p.rx_bytes),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: &[&str]| -> String {
        cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    writeln!(out, "{}", line(&header))?;
    for row in &rows {
        let cells: Vec<&str> = row.iter().map(String::as_str).collect();
        writeln!(out, "{}", line(&cells))?;
    }
    if rows.is_empty() {
        writeln!(out, "(no peers yet: resolve or ping a name)")?;
    }
    Ok(())
}

fn print_ping(out: &mut impl Write, r: &PingReport) -> anyhow::Result<()> {
    writeln!(
        out,
        "PING {} ({}) via {} {}",
        r.name, r.vip4, r.path, r.endpoint
    )?;
    for (seq, rtt) in r.rtts_ms.iter().enumerate() {
        match rtt {
            Some(ms) => writeln!(out, "reply from {}: seq={seq} time={ms:.3} ms", r.name)?,
            None => writeln!(out, "no reply: seq={seq}")?,
        }
    }
    let got: Vec<f64> = r.rtts_ms.iter().flatten().copied().collect();
    let lost = r.rtts_ms.len() - got.len();
    if !got.is_empty() {
        let min = got.iter().copied().fold(f64::INFINITY, f64::min);
        let max = got.iter().copied().fold(0.0, f64::max);
        let avg = got.iter().sum::<f64>() / got.len() as f64;
        writeln!(
            out,
            "{} probes, {lost} lost, rtt min/avg/max = {min:.3}/{avg:.3}/{max:.3} ms",
            r.rtts_ms.len()
        )?;
    } else {
        writeln!(out, "{} probes, all lost", r.rtts_ms.len())?;
    }
    Ok(())
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_line_is_consistent() {
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from(["cyphonic", "--json", "ping", "b", "-c", "2"]).unwrap();
        assert!(cli.json);
        assert!(matches!(cli.command, Command::Ping { count: 2, .. }));
    }

    #[test]
    fn byte_counts_read_like_people_write_them() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 << 30), "3.0 GiB");
    }
}
