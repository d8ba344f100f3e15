//! `cyphonicd`: the CYPHONIC node daemon.
//!
//! ```text
//! cyphonicd [--config /etc/cyphonic/node.yaml]
//! cyphonicd service install|uninstall|start|stop [--config ...]   (Windows)
//! ```
//!
//! Runs in the foreground under systemd, or as the Windows service `cyphonic` (which
//! the SCM starts as `cyphonicd service run --config ...`); logs to standard error. Start-up: configuration -> plugins -> stored credential (waits for
//! `cyphonic login` when there is none) -> virtual interface with the virtual
//! addresses -> data path -> resolver and system DNS -> registration at the NMS ->
//! keepalives and renewals. SIGTERM or SIGINT (Ctrl+C, or the service's stop on
//! Windows): log out of the NMS, restore the system DNS, remove the interface.

mod node;
mod reload;
mod ui_backend;

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;

#[derive(Debug, Parser)]
#[command(name = "cyphonicd", version, about = "The CYPHONIC node daemon")]
struct Args {
    /// The node configuration file.
    #[arg(long, short, global = true, default_value = cyphonic_host::config::DEFAULT_CONFIG_PATH)]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Manage the Windows service `cyphonic` (run from an elevated prompt).
    #[cfg(windows)]
    Service {
        #[command(subcommand)]
        action: ServiceAction,
    },
}

#[cfg(windows)]
#[derive(Debug, clap::Subcommand)]
enum ServiceAction {
    /// Register the service: starts at boot before logon, as LocalSystem, restarted by
    /// the SCM when it fails; it runs `cyphonicd service run --config <this config>`.
    Install,
    /// Stop and remove the service.
    Uninstall,
    Start,
    Stop,
    /// Entry point for the service control manager (not for interactive use).
    Run,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let result = match args.command {
        None => run_foreground(args.config),
        #[cfg(windows)]
        Some(Command::Service { action }) => service(action, args.config),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cyphonicd: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Runs the node until SIGTERM/SIGINT (Unix) or Ctrl+C / console close (Windows).
fn run_foreground(config_path: PathBuf) -> anyhow::Result<()> {
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    run_node(config_path, None, stop, move || {
        tokio::spawn(async move {
            wait_for_stop_signal().await;
            let _ = stop_tx.send(true);
        });
    })
}

/// Loads the configuration, starts logging (to standard error, or appended to
/// `log_file`) and the runtime, and runs the node until `stop` is raised. `on_runtime`
/// runs inside the runtime first (to hook signals).
fn run_node(
    config_path: PathBuf,
    log_file: Option<PathBuf>,
    stop: node::StopSignal,
    on_runtime: impl FnOnce() + Send + 'static,
) -> anyhow::Result<()> {
    let config = cyphonic_host::config::load(&config_path)
        .with_context(|| format!("loading the configuration {}", config_path.display()))?;
    let log = init_tracing(&config.log, log_file.as_deref())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("cyph-rt")
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        on_runtime();
        node::run(config_path, config, log, stop).await
    })
}

#[cfg(unix)]
async fn wait_for_stop_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut terminate) => {
            tokio::select! {
                _ = terminate.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(e) => {
            tracing::warn!("cannot install the SIGTERM handler ({e}); only SIGINT stops the node");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(windows)]
async fn wait_for_stop_signal() {
    use tokio::signal::windows::{ctrl_break, ctrl_close, ctrl_shutdown};
    let (Ok(mut brk), Ok(mut close), Ok(mut shutdown)) =
        (ctrl_break(), ctrl_close(), ctrl_shutdown())
    else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = brk.recv() => {}
        _ = close.recv() => {}
        _ = shutdown.recv() => {}
    }
}

#[cfg(windows)]
fn service(action: ServiceAction, config_path: PathBuf) -> anyhow::Result<()> {
    use cyphonic_host::windows::service;
    match action {
        ServiceAction::Install => {
            // Config, scripts and credentials live here: SYSTEM and Administrators only.
            let data = cyphonic_host::windows::acl::program_data_dir();
            cyphonic_host::windows::acl::create_private_dir(&data)
                .with_context(|| format!("securing {}", data.display()))?;
            let exe = std::env::current_exe().context("locating cyphonicd.exe")?;
            let config_path = std::path::absolute(&config_path)
                .with_context(|| format!("resolving {}", config_path.display()))?;
            let args = [
                std::ffi::OsString::from("service"),
                "run".into(),
                "--config".into(),
                config_path.into_os_string(),
            ];
            service::install(&exe, &args).context("installing the service")?;
            eprintln!("cyphonicd: service `{}` installed", service::SERVICE_NAME);
        }
        ServiceAction::Uninstall => {
            service::uninstall().context("removing the service")?;
            eprintln!("cyphonicd: service `{}` removed", service::SERVICE_NAME);
        }
        ServiceAction::Start => service::start().context("starting the service")?,
        ServiceAction::Stop => service::stop().context("stopping the service")?,
        ServiceAction::Run => {
            service::run(move |service_stop| {
                let (stop_tx, stop) = tokio::sync::watch::channel(false);
                // A service has no console: its log goes next to its configuration.
                let log_file = config_path.parent().map(|dir| dir.join(SERVICE_LOG_FILE));
                run_node(config_path, log_file, stop, move || {
                    tokio::spawn(async move {
                        service_stop.wait().await;
                        tracing::info!("the service control manager asked the node to stop");
                        let _ = stop_tx.send(true);
                    });
                })
            })
            .context("running under the service control manager")?;
        }
    }
    Ok(())
}

/// The service's log file, in the directory of its configuration.
#[cfg(windows)]
const SERVICE_LOG_FILE: &str = "cyphonicd.log";

/// Logs to standard error (or appended to `file`) with the configured filter
/// (RUST_LOG wins); returns the handle a reload changes the filter with.
fn init_tracing(
    directive: &str,
    file: Option<&std::path::Path>,
) -> anyhow::Result<node::LogHandle> {
    use std::io::IsTerminal;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(directive))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    let registry = tracing_subscriber::registry().with(filter);
    match file {
        Some(path) => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("opening the log file {}", path.display()))?;
            registry
                .with(
                    tracing_subscriber::fmt::layer()
                        .with_ansi(false)
                        .with_writer(std::sync::Mutex::new(file)),
                )
                .init();
        }
        None => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(std::io::stderr().is_terminal())
                    .with_writer(std::io::stderr),
            )
            .init(),
    }
    Ok(handle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_line_is_consistent() {
        Args::command().debug_assert();
    }
}
