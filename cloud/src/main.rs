//! `cyphonic-cloud`: the command line. Parses arguments, sets up logging, reads
//! passwords and prints; the work is in the library (`server::serve`, `admin`).
//!
//! ```text
//! cyphonic-cloud [--config FILE] serve [--only as|nms|trs]
//! cyphonic-cloud [--config FILE] device add <device-id> --fqdn <name> [--password-stdin]
//! cyphonic-cloud [--config FILE] device list [--json]
//! cyphonic-cloud [--config FILE] device remove <device-id>
//! cyphonic-cloud [--config FILE] device passwd <device-id> [--password-stdin]
//! cyphonic-cloud [--config FILE] key show
//! cyphonic-cloud [--config FILE] key export-relay [--output FILE]
//! cyphonic-cloud bench [--nodes N] [--directions M] [...]   (see `bench --help`)
//! ```

use std::io::{self, BufRead as _, IsTerminal as _, Write as _};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use clap::{Args, Parser, Subcommand};
use cyphonic_cloud::admin::{self, Admin};
use cyphonic_cloud::config::{self, CloudConfig, ServiceKind};
use cyphonic_cloud::server;
use cyphonic_cloud::store::Device;
use cyphonic_proto::time::UnixTime;
use tracing_subscriber::EnvFilter;
use zeroize::Zeroizing;

#[derive(Debug, Parser)]
#[command(
    name = "cyphonic-cloud",
    version,
    about = "The CYPHONIC cloud: authentication (AS), node management (NMS) and tunnel relay (TRS)"
)]
struct Cli {
    /// Configuration file (YAML, see config/cloud.yaml). Without it the embedded
    /// defaults apply.
    #[arg(
        long,
        short = 'c',
        global = true,
        env = "CYPHONIC_CLOUD_CONFIG",
        value_name = "FILE"
    )]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the cloud services (all enabled ones, or one with --only) until SIGINT/SIGTERM.
    Serve {
        /// Run only this service, whatever `services.*.enabled` say.
        #[arg(long, value_enum)]
        only: Option<ServiceKind>,
    },
    /// Manage devices (the data directory's database; works while the cloud runs).
    #[command(subcommand)]
    Device(DeviceCommand),
    /// Show or export the cloud's keys.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Load generator: starts a cloud as a child process on loopback and measures it
    /// with simulated nodes (`bench --help` lists its flags).
    #[command(disable_help_flag = true)]
    Bench {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
enum DeviceCommand {
    /// Register a device. Prints its node id and name.
    Add {
        /// The id the node logs in with: 1..=64 printable ASCII characters, no spaces.
        device_id: String,
        /// The device's name, inside the configured domain (e.g. laptop.alice.cyphonic).
        #[arg(long)]
        fqdn: String,
        #[command(flatten)]
        password: PasswordSource,
    },
    /// List the devices.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Remove a device; its credential stops working at once.
    Remove { device_id: String },
    /// Set a new password for a device.
    Passwd {
        device_id: String,
        #[command(flatten)]
        password: PasswordSource,
    },
}

#[derive(Debug, Args)]
struct PasswordSource {
    /// Read the password as one line from standard input (also done whenever standard
    /// input is not a terminal); otherwise it is prompted for twice, without echo.
    #[arg(long)]
    password_stdin: bool,
}

#[derive(Debug, Subcommand)]
enum KeyCommand {
    /// Print the public key nodes pin (first line) and its key id (second line). Creates
    /// the key if the data directory has none yet.
    Show,
    /// Print the relay key (secret) for TRS hosts that run without the signing key
    /// (services.trs.relay_key_file).
    ExportRelay {
        /// Write it to this new file (mode 0600) instead of standard output.
        #[arg(long, short = 'o', value_name = "FILE")]
        output: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("cyphonic-cloud: {}", error_text(&error));
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    // The bench writes its own configuration for the cloud it starts.
    let command = match cli.command {
        Command::Bench { args } => return cyphonic_cloud::bench::main(args),
        command => command,
    };
    let config = config::load(cli.config.as_deref()).context("loading the configuration")?;
    init_logging(&config)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    match command {
        Command::Serve { only } => Ok(runtime.block_on(server::serve(config, only))?),
        Command::Device(command) => runtime.block_on(device(config, command)),
        Command::Key(command) => key(&config, command),
        // Dispatched above, before the configuration is read.
        Command::Bench { args } => cyphonic_cloud::bench::main(args),
    }
}

/// The error and its causes on one line, leaving out a cause whose text the message
/// before it already quotes (library errors often do both).
fn error_text(error: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in error.chain() {
        let part = cause.to_string();
        if text.contains(&part) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&part);
    }
    text
}

fn init_logging(config: &CloudConfig) -> anyhow::Result<()> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(directive) if !directive.trim().is_empty() => EnvFilter::try_new(&directive)
            .with_context(|| format!("RUST_LOG `{directive}` is not a valid log filter"))?,
        _ => EnvFilter::try_new(&config.log)
            .with_context(|| format!("log: `{}` is not a valid log filter", config.log))?,
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(io::stderr)
        .with_ansi(io::stderr().is_terminal())
        .init();
    Ok(())
}

async fn device(config: CloudConfig, command: DeviceCommand) -> anyhow::Result<()> {
    let data_dir = config.data_dir.clone();
    let admin = Admin::open(config)
        .await
        .with_context(|| format!("opening the data directory {}", data_dir.display()))?;
    let result = device_command(&admin, command).await;
    admin.close().await;
    result
}

async fn device_command(admin: &Admin, command: DeviceCommand) -> anyhow::Result<()> {
    let mut out = io::stdout().lock();
    match command {
        DeviceCommand::Add {
            device_id,
            fqdn,
            password,
        } => {
            // Refuse bad or taken names before asking for a password.
            admin.check_new_device(&device_id, &fqdn).await?;
            let password = read_password(password.password_stdin)?;
            let device = admin
                .add_device(&device_id, &fqdn, password.as_bytes())
                .await?;
            writeln!(out, "added device {}", device.device_id)?;
            writeln!(out, "fqdn     {}", device.fqdn)?;
            writeln!(out, "node id  {}", device.node_id)?;
        }
        DeviceCommand::List { json } => {
            let devices = admin.devices().await?;
            if json {
                serde_json::to_writer_pretty(&mut out, &devices_json(&devices))?;
                writeln!(out)?;
            } else {
                write_table(&mut out, &devices)?;
            }
        }
        DeviceCommand::Remove { device_id } => {
            admin.remove_device(&device_id).await?;
            writeln!(out, "removed device {device_id}; its credential is revoked")?;
        }
        DeviceCommand::Passwd {
            device_id,
            password,
        } => {
            admin.device(&device_id).await?;
            let password = read_password(password.password_stdin)?;
            admin.set_password(&device_id, password.as_bytes()).await?;
            writeln!(out, "password of device {device_id} changed")?;
        }
    }
    out.flush()?;
    Ok(())
}

fn key(config: &CloudConfig, command: KeyCommand) -> anyhow::Result<()> {
    let mut out = io::stdout().lock();
    match command {
        KeyCommand::Show => {
            let info = admin::key_info(config)?;
            writeln!(out, "{}", info.pin)?;
            writeln!(out, "key id: {}", info.key_id)?;
        }
        KeyCommand::ExportRelay { output: Some(path) } => {
            admin::write_relay_file(config, &path)?;
            eprintln!(
                "wrote the relay key to {} (mode 0600). It is secret: whoever has it can \
                 mint relay tickets. Copy it to the TRS host and set services.trs.relay_key_file.",
                path.display()
            );
        }
        KeyCommand::ExportRelay { output: None } => {
            let key = admin::export_relay(config)?;
            eprintln!(
                "warning: the relay key below is secret (whoever has it can mint relay \
                 tickets). Store it on the TRS host in a file with mode 0600."
            );
            writeln!(out, "{}", key.as_str())?;
        }
    }
    out.flush()?;
    Ok(())
}

/// One line from stdin (scripts), or a double prompt without echo (people).
fn read_password(from_stdin: bool) -> anyhow::Result<Zeroizing<String>> {
    let stdin = io::stdin();
    let password = if from_stdin || !stdin.is_terminal() {
        let mut line = Zeroizing::new(String::new());
        stdin
            .lock()
            .read_line(&mut line)
            .context("reading the password from standard input")?;
        // Only the line ending goes: spaces may be part of a password.
        let len = line.trim_end_matches(['\n', '\r']).len();
        line.truncate(len);
        line
    } else {
        let first = Zeroizing::new(
            rpassword::prompt_password("Password: ").context("reading the password")?,
        );
        let again = Zeroizing::new(
            rpassword::prompt_password("Repeat password: ").context("reading the password")?,
        );
        if first != again {
            bail!("the passwords do not match");
        }
        first
    };
    if password.is_empty() {
        bail!("the password is empty");
    }
    Ok(password)
}

fn write_table(out: &mut impl io::Write, devices: &[Device]) -> io::Result<()> {
    let header = ["DEVICE ID", "FQDN", "NODE ID", "VIP4", "VIP6", "LAST LOGIN"];
    let rows: Vec<[String; 6]> = devices
        .iter()
        .map(|d| {
            [
                d.device_id.clone(),
                d.fqdn.to_string(),
                d.node_id.to_string(),
                d.vip4.map_or_else(|| "-".into(), |a| a.to_string()),
                d.vip6.map_or_else(|| "-".into(), |a| a.to_string()),
                d.last_login.map_or_else(|| "never".into(), utc_text),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |out: &mut dyn io::Write, cells: &[&str]| -> io::Result<()> {
        let mut text = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == cells.len() {
                text.push_str(cell);
            } else {
                text.push_str(&format!("{cell:<w$}  "));
            }
        }
        writeln!(out, "{}", text.trim_end())
    };
    line(out, &header)?;
    for row in &rows {
        let cells: Vec<&str> = row.iter().map(String::as_str).collect();
        line(out, &cells)?;
    }
    if rows.is_empty() {
        writeln!(
            out,
            "(no devices; add one with `cyphonic-cloud device add`)"
        )?;
    }
    Ok(())
}

fn devices_json(devices: &[Device]) -> serde_json::Value {
    devices
        .iter()
        .map(|d| {
            serde_json::json!({
                "device_id": d.device_id,
                "fqdn": d.fqdn.as_str(),
                "node_id": d.node_id.to_string(),
                "vip4": d.vip4.map(|a| a.to_string()),
                "vip6": d.vip6.map(|a| a.to_string()),
                "created_at": d.created_at.0,
                "last_login": d.last_login.map(|t| t.0),
            })
        })
        .collect()
}

/// `YYYY-MM-DD HH:MM:SSZ` (UTC) without a date crate: days to civil date after
/// Howard Hinnant's `civil_from_days`.
fn utc_text(time: UnixTime) -> String {
    let secs = time.0;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}Z",
        rem / 3_600,
        rem % 3_600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn utc_dates() {
        assert_eq!(utc_text(UnixTime(0)), "1970-01-01 00:00:00Z");
        assert_eq!(utc_text(UnixTime(951_782_400)), "2000-02-29 00:00:00Z");
        assert_eq!(utc_text(UnixTime(1_700_000_000)), "2023-11-14 22:13:20Z");
    }

    #[test]
    fn cli_parses() {
        use clap::CommandFactory as _;
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from(["cyphonic-cloud", "serve", "--only", "trs"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Serve {
                only: Some(ServiceKind::Trs)
            }
        ));
        let cli = Cli::try_parse_from([
            "cyphonic-cloud",
            "-c",
            "x.yaml",
            "device",
            "add",
            "dev1",
            "--fqdn",
            "a.cyphonic",
            "--password-stdin",
        ])
        .unwrap();
        assert_eq!(cli.config.as_deref(), Some(Path::new("x.yaml")));
        assert!(matches!(
            cli.command,
            Command::Device(DeviceCommand::Add {
                password: PasswordSource {
                    password_stdin: true
                },
                ..
            })
        ));
        assert!(Cli::try_parse_from(["cyphonic-cloud", "serve", "--only", "web"]).is_err());
    }

    #[test]
    fn error_text_skips_quoted_causes() {
        let io = io::Error::new(io::ErrorKind::AddrInUse, "in use");
        let bind = cyphonic_cloud::server::ServeError::Bind {
            service: "NMS",
            addr: "127.0.0.1:1".parse().unwrap(),
            source: io,
        };
        let error = anyhow::Error::from(bind).context("starting");
        assert_eq!(
            error_text(&error),
            "starting: NMS: cannot listen on 127.0.0.1:1: in use"
        );
    }

    #[test]
    fn table_lines_up() {
        let mut out = Vec::new();
        write_table(&mut out, &[]).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.starts_with("DEVICE ID  FQDN  NODE ID  VIP4  VIP6  LAST LOGIN\n"),
            "{text}"
        );
    }
}
