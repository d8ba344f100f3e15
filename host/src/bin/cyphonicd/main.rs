//! `cyphonicd`: the CYPHONIC node daemon.
//!
//! ```text
//! cyphonicd [--config /etc/cyphonic/node.yaml]
//! ```
//!
//! Runs in the foreground (systemd or a Windows service supervise it), logs to standard
//! error. Start-up: configuration -> plugins -> stored credential (waits for
//! `cyphonic login` when there is none) -> virtual interface with the virtual
//! addresses -> data path -> resolver and system DNS -> registration at the NMS ->
//! keepalives and renewals. SIGTERM or SIGINT: log out of the NMS, restore the system
//! DNS, remove the interface.

mod node;
mod reload;

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;

#[derive(Debug, Parser)]
#[command(name = "cyphonicd", version, about = "The CYPHONIC node daemon")]
struct Args {
    /// The node configuration file.
    #[arg(long, short, default_value = cyphonic_host::config::DEFAULT_CONFIG_PATH)]
    config: PathBuf,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cyphonicd: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    let config = cyphonic_host::config::load(&args.config)
        .with_context(|| format!("loading the configuration {}", args.config.display()))?;
    let log = init_tracing(&config.log);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("cyph-rt")
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(node::run(args.config, config, log))
}

/// Logs to standard error with the configured filter (RUST_LOG wins); returns the
/// handle a reload changes the filter with.
fn init_tracing(directive: &str) -> node::LogHandle {
    use std::io::IsTerminal;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(directive))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .with_ansi(std::io::stderr().is_terminal())
                .with_writer(std::io::stderr),
        )
        .init();
    handle
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
