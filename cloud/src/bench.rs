//! `cyphonic-cloud bench`: the load generator. It starts a real cloud as a child
//! process on loopback (so the cloud's memory and CPU are measured alone), simulates N
//! nodes in this process and measures what the bar names:
//!
//! 1. NMS channel handshakes (hello + accept) of all N nodes, per second;
//! 2. registrations of all N nodes, per second;
//! 3. one keepalive from each of the N nodes, per second;
//! 4. M direction requests between random registered pairs, per second: the NMS pushes
//!    `RouteDirectionToResponder` to the responder, the simulated responder confirms,
//!    and only then does the initiator get `RouteDirectionToInitiator`;
//! 5. the cloud's resident memory before and after the N registrations, per node;
//! 6. TRS relay throughput of 1400-byte `RelayData` datagrams between two bound
//!    endpoints;
//!
//! then the cloud's drop counters from its metrics endpoint, and PASS/FAIL against
//! the bar: >= 100,000 registered nodes, >= 20,000 signaling operations per second
//! (registrations + keepalives + directions over the time of their three phases), and
//! < 2 KiB of cloud resident memory per registered node.
//!
//! Credentials are minted here with the cloud's signing key, read from the data
//! directory this process creates for the child: logging 100,000 nodes in at the AS
//! would measure Argon2id, which is slow on purpose, not signaling.
//!
//! The nodes are sans-IO `ChannelClient`s multiplexed over a few UDP sockets; replies
//! are routed by the channel index the node side chose, which encodes the node's
//! number (see [`fleet`]). Requests are pipelined with a bounded number in flight and
//! retransmitted on a timer; retransmissions and timeouts are reported.

mod cloud;
mod fleet;
mod relay;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::{self, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Parser;
use cyphonic_proto::wire::status::StatusCode;

use cloud::CloudProcess;
use fleet::{Fleet, FleetSettings, OpKind};

/// The bar.
pub const BAR_NODES: u64 = 100_000;
pub const BAR_SIGNALING_OPS_PER_SEC: f64 = 20_000.0;
pub const BAR_BYTES_PER_NODE: f64 = 2048.0;

/// Flags of `cyphonic-cloud bench`.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "cyphonic-cloud bench",
    about = "Load generator: simulated nodes against a cloud started as a child process on loopback"
)]
pub struct BenchArgs {
    /// Simulated nodes to handshake, register and keep alive.
    #[arg(long, default_value_t = 100_000)]
    pub nodes: usize,
    /// Direction requests between random registered pairs.
    #[arg(long, default_value_t = 20_000)]
    pub directions: usize,
    /// How long the TRS throughput test sends (0 skips it).
    #[arg(long, default_value_t = 5.0)]
    pub relay_seconds: f64,
    /// Pace the relay sender at this many Mbit/s of UDP payload (0: as fast as it can).
    #[arg(long, default_value_t = 0)]
    pub relay_mbit: u64,
    /// The cloud binary to start (default: this executable).
    #[arg(long, value_name = "PATH")]
    pub cloud_bin: Option<PathBuf>,
    /// UDP sockets the simulated nodes share (node i uses socket i mod this).
    #[arg(long, default_value_t = 16)]
    pub sockets: usize,
    /// Operations in flight at once.
    #[arg(long, default_value_t = 1024)]
    pub window: usize,
    /// Floor of the retransmission timeout in milliseconds (it follows the measured
    /// latency above that, and doubles per retry up to 8 s).
    #[arg(long, default_value_t = 1000)]
    pub rto_ms: u64,
    /// Transmissions of one operation before it counts as timed out.
    #[arg(long, default_value_t = 5)]
    pub attempts: u32,
    /// The child cloud's log filter (its stderr goes to a file in the work directory).
    #[arg(long, default_value = "warn")]
    pub cloud_log: String,
    /// Keep the work directory (config, database, key, cloud log) and print its path.
    #[arg(long)]
    pub keep: bool,
    /// Exit with an error when the bar is not met.
    #[arg(long)]
    pub strict: bool,
}

/// `cyphonic-cloud bench [FLAGS]`: parses `args` (without the program and subcommand
/// names), runs the benchmark and prints each phase and the summary on stdout.
pub fn main(args: Vec<String>) -> anyhow::Result<()> {
    let argv = std::iter::once(OsString::from("cyphonic-cloud bench"))
        .chain(args.into_iter().map(OsString::from));
    let args = match BenchArgs::try_parse_from(argv) {
        Ok(args) => args,
        Err(e)
            if matches!(
                e.kind(),
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion
            ) =>
        {
            write!(io::stdout(), "{}", e.render())?;
            return Ok(());
        }
        Err(e) => bail!("{}", e.render().to_string().trim_end()),
    };
    let mut out = io::stdout().lock();
    let report = run(&args, &mut out)?;
    out.flush()?;
    if args.strict && !report.passed() {
        bail!("the bar was not met");
    }
    Ok(())
}

/// Runs the whole benchmark, writing progress and the summary to `out`.
pub fn run(args: &BenchArgs, out: &mut dyn Write) -> anyhow::Result<Report> {
    if args.nodes < 2 {
        bail!("--nodes must be at least 2");
    }
    if args.nodes > fleet::MAX_NODES {
        bail!("--nodes is at most {}", fleet::MAX_NODES);
    }
    if args.sockets == 0 || args.window == 0 || args.attempts == 0 {
        bail!("--sockets, --window and --attempts must be above 0");
    }
    let bin = match &args.cloud_bin {
        Some(path) => path.clone(),
        None => std::env::current_exe().context("finding this executable")?,
    };
    writeln!(
        out,
        "cyphonic-cloud bench: {} nodes, {} directions, {} sockets, window {}, cloud {}",
        args.nodes,
        args.directions,
        args.sockets,
        args.window,
        bin.display()
    )?;
    writeln!(
        out,
        "note: credentials are minted with the cloud key read from the data directory, not \
         obtained by AS login (Argon2id is deliberately slow and is not signaling)"
    )?;

    let cloud = CloudProcess::start(&bin, &args.cloud_log, args.keep)?;
    writeln!(
        out,
        "cloud pid {} started: NMS {}, TRS {}, metrics {}; work directory {}",
        cloud.pid(),
        cloud.nms,
        cloud.trs,
        cloud.metrics,
        cloud.dir().display()
    )?;
    let report = run_against(args, &cloud, out);
    let stopped = cloud.stop();
    let report = report?;
    if let Err(e) = stopped {
        writeln!(out, "warning: stopping the cloud: {e:#}")?;
    }
    if args.keep {
        writeln!(out, "kept the work directory (see above)")?;
    }
    Ok(report)
}

fn run_against(
    args: &BenchArgs,
    cloud: &CloudProcess,
    out: &mut dyn Write,
) -> anyhow::Result<Report> {
    let t = Instant::now();
    let settings = FleetSettings {
        sockets: args.sockets,
        window: args.window,
        rto: Duration::from_millis(args.rto_ms.max(1)),
        attempts: args.attempts,
    };
    let signing = cloud
        .keys
        .signing
        .as_ref()
        .context("the work directory's key has no signing half")?;
    let nodes = fleet::mint_nodes(signing, args.nodes);
    writeln!(
        out,
        "setup: minted {} credentials and node keys in {:.1} s",
        args.nodes,
        t.elapsed().as_secs_f64()
    )?;

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the generator's runtime")?;
    let mut report = Report::default();
    runtime.block_on(async {
        let mut fleet = Fleet::new(nodes, cloud.nms, &settings)?;
        report.rss_before_kib = settled_rss(cloud).await?;
        writeln!(
            out,
            "cloud resident memory before registrations: {} KiB",
            report.rss_before_kib
        )?;

        let all: Vec<(u32, u32)> = (0..fleet.len()).map(|n| (n, 0)).collect();
        report.handshake = phase(out, cloud, &mut fleet, 1, OpKind::Handshake, all.clone()).await?;
        let established = fleet.established();
        report.registration =
            phase(out, cloud, &mut fleet, 2, OpKind::Registration, established).await?;
        report.registered = report.registration.ok;
        report.rss_after_kib = settled_rss(cloud).await?;
        report.bytes_per_node = if report.registered == 0 {
            f64::NAN
        } else {
            (report.rss_after_kib.saturating_sub(report.rss_before_kib) as f64 * 1024.0)
                / report.registered as f64
        };
        writeln!(
            out,
            "cloud resident memory after {} registrations: {} KiB (+{} KiB) = {:.0} bytes per registered node",
            report.registered,
            report.rss_after_kib,
            report.rss_after_kib.saturating_sub(report.rss_before_kib),
            report.bytes_per_node
        )?;

        let registered = fleet.registered();
        report.keepalive =
            phase(out, cloud, &mut fleet, 3, OpKind::KeepAlive, registered.clone()).await?;
        let pairs = fleet::direction_pairs(&registered, args.directions);
        report.direction = phase(out, cloud, &mut fleet, 4, OpKind::Direction, pairs).await?;
        report.rss_end_kib = cloud.rss_kib()?;
        report.generator_rss_kib = cloud::rss_kib_of("self").unwrap_or(0);
        anyhow::Ok(())
    })?;
    drop(runtime);

    if args.relay_seconds > 0.0 {
        let relay = relay::run(
            cloud.trs,
            &cloud.keys.relay,
            Duration::from_secs_f64(args.relay_seconds),
            args.relay_mbit,
        )?;
        writeln!(
            out,
            "phase 5/5  TRS relay: {} x {}-byte datagrams sent in {:.2} s ({:.0} Mbit/s), \
             {} delivered = {:.0} Mbit/s, loss {:.2} %",
            relay.sent,
            relay::DATAGRAM_LEN,
            relay.send_seconds,
            relay.sent_mbit_per_sec(),
            relay.received,
            relay.delivered_mbit_per_sec(),
            relay.loss_percent()
        )?;
        report.relay = Some(relay);
    }

    let metrics = cloud.scrape().context("reading the cloud's metrics")?;
    let value = |name: &str| metrics.iter().find(|(n, _)| n == name).map(|(_, v)| *v);
    report.nms_nodes_gauge = value("cyphonic_nms_nodes");
    report.trs_relayed_packets = value("cyphonic_trs_relayed_packets_total");
    report.cloud_metrics = metrics
        .into_iter()
        .filter(|(name, value)| *value != 0.0 && name.starts_with("cyphonic_"))
        .collect();
    report.write_summary(out, args)?;
    Ok(report)
}

/// The cloud's RSS once it stops moving (startup work, freed buffers): samples every
/// 250 ms until three in a row lie within 256 KiB, or 10 s pass.
async fn settled_rss(cloud: &CloudProcess) -> anyhow::Result<u64> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = cloud.rss_kib()?;
    let mut steady = 0;
    while steady < 3 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = cloud.rss_kib()?;
        steady = if now.abs_diff(last) <= 256 {
            steady + 1
        } else {
            0
        };
        last = now;
    }
    Ok(last)
}

async fn phase(
    out: &mut dyn Write,
    cloud: &CloudProcess,
    fleet: &mut Fleet,
    number: u32,
    kind: OpKind,
    work: Vec<(u32, u32)>,
) -> anyhow::Result<PhaseReport> {
    let cpu_before = cloud.cpu_time()?;
    let own_before = cloud::cpu_time_of("self")?;
    let mut report = fleet.run_phase(kind, work).await?;
    report.cloud_cpu = cloud.cpu_time()?.saturating_sub(cpu_before);
    report.generator_cpu = cloud::cpu_time_of("self")?.saturating_sub(own_before);
    report.write_line(out, number)?;
    Ok(report)
}

/// Counters that show trouble: drops, errors, evictions, failed outcomes.
fn is_problem_counter(name: &str) -> bool {
    [
        "dropped",
        "error",
        "evict",
        "expired",
        "timeout",
        "unavailable",
    ]
    .iter()
    .any(|word| name.contains(word))
        || (name.starts_with("cyphonic_nms_directions_total") && !name.contains("\"ok\""))
}

/// What one signaling phase measured.
#[derive(Debug, Clone, Default)]
pub struct PhaseReport {
    pub name: &'static str,
    /// Operations started.
    pub attempted: u64,
    /// Operations answered as hoped (accept, registration response, keepalive ack,
    /// route direction to initiator).
    pub ok: u64,
    /// Operations answered with a `Status`, by status code.
    pub refused: BTreeMap<u16, u64>,
    /// Operations answered with an unexpected message.
    pub unexpected: u64,
    /// Operations without an answer after all transmissions.
    pub timeouts: u64,
    /// Operations that could not be sent (e.g. the node's channel expired).
    pub not_sent: u64,
    pub retransmissions: u64,
    /// Hellos answered with a cookie reply (the NMS under hello load) and sent again.
    pub cookie_rounds: u64,
    /// `RouteDirectionToResponder` pushes the simulated responders confirmed.
    pub pushes_confirmed: u64,
    /// Datagrams that answered nothing pending (late answers to retransmissions).
    pub stray: u64,
    /// Accepts for a hello retransmission that arrived after the node's channel was up.
    pub late_accepts: u64,
    /// Datagrams a node could not open or that no node owns.
    pub undecodable: u64,
    /// Sends the kernel refused (full buffers).
    pub send_errors: u64,
    pub elapsed: Duration,
    pub latency_p50: Duration,
    pub latency_p99: Duration,
    pub latency_max: Duration,
    /// CPU time (user + system) the cloud process and this process used in the phase.
    pub cloud_cpu: Duration,
    pub generator_cpu: Duration,
}

impl PhaseReport {
    pub fn per_sec(&self) -> f64 {
        rate(self.ok, self.elapsed)
    }

    pub fn failed(&self) -> u64 {
        self.refused.values().sum::<u64>() + self.unexpected + self.timeouts + self.not_sent
    }

    fn write_line(&self, out: &mut dyn Write, number: u32) -> io::Result<()> {
        writeln!(
            out,
            "phase {number}/5  {:<22} {:>7} ok of {:>7} in {:>6.2} s = {:>8.0} /s   latency p50 {:.2} ms, p99 {:.2} ms, max {:.1} ms",
            self.name,
            self.ok,
            self.attempted,
            self.elapsed.as_secs_f64(),
            self.per_sec(),
            ms(self.latency_p50),
            ms(self.latency_p99),
            ms(self.latency_max),
        )?;
        let refused: Vec<String> = self
            .refused
            .iter()
            .map(|(code, n)| format!("{}={n}", status_name(*code)))
            .collect();
        writeln!(
            out,
            "           failed {} (refused [{}], unexpected {}, timeouts {}, not sent {}); retransmissions {}, cookie rounds {}, pushes confirmed {}, stray {}, late accepts {}, undecodable {}, send errors {}",
            self.failed(),
            refused.join(" "),
            self.unexpected,
            self.timeouts,
            self.not_sent,
            self.retransmissions,
            self.cookie_rounds,
            self.pushes_confirmed,
            self.stray,
            self.late_accepts,
            self.undecodable,
            self.send_errors,
        )?;
        let per_op = |cpu: Duration| {
            if self.ok == 0 {
                f64::NAN
            } else {
                cpu.as_secs_f64() * 1e6 / self.ok as f64
            }
        };
        writeln!(
            out,
            "           CPU: cloud {:.2} s ({:.0} % of one core, {:.1} us per op), generator {:.2} s ({:.0} %, {:.1} us per op)",
            self.cloud_cpu.as_secs_f64(),
            percent(self.cloud_cpu, self.elapsed),
            per_op(self.cloud_cpu),
            self.generator_cpu.as_secs_f64(),
            percent(self.generator_cpu, self.elapsed),
            per_op(self.generator_cpu),
        )
    }
}

/// Everything the benchmark measured.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub handshake: PhaseReport,
    pub registration: PhaseReport,
    pub keepalive: PhaseReport,
    pub direction: PhaseReport,
    /// Nodes whose registration was answered with a registration response.
    pub registered: u64,
    /// The NMS's own count of registered nodes at the end.
    pub nms_nodes_gauge: Option<f64>,
    /// Datagrams the TRS says it forwarded.
    pub trs_relayed_packets: Option<f64>,
    pub rss_before_kib: u64,
    pub rss_after_kib: u64,
    pub rss_end_kib: u64,
    /// (RSS after registrations - RSS before) / registered nodes.
    pub bytes_per_node: f64,
    pub generator_rss_kib: u64,
    pub relay: Option<relay::RelayReport>,
    /// The cloud's non-zero metrics at the end (`name{labels}`, value).
    pub cloud_metrics: Vec<(String, f64)>,
}

pub use relay::{DATAGRAM_LEN as RELAY_DATAGRAM_LEN, RelayReport};

impl Report {
    /// Registrations + keepalives + directions, over the time of those three phases.
    pub fn signaling_ops_per_sec(&self) -> f64 {
        let phases = [&self.registration, &self.keepalive, &self.direction];
        let ops: u64 = phases.iter().map(|p| p.ok).sum();
        let time: Duration = phases.iter().map(|p| p.elapsed).sum();
        rate(ops, time)
    }

    pub fn nodes_pass(&self) -> bool {
        self.registered >= BAR_NODES
    }

    pub fn ops_pass(&self) -> bool {
        self.signaling_ops_per_sec() >= BAR_SIGNALING_OPS_PER_SEC
    }

    pub fn memory_pass(&self) -> bool {
        self.bytes_per_node < BAR_BYTES_PER_NODE
    }

    pub fn passed(&self) -> bool {
        self.nodes_pass() && self.ops_pass() && self.memory_pass()
    }

    fn write_summary(&self, out: &mut dyn Write, args: &BenchArgs) -> io::Result<()> {
        let verdict = |ok: bool| if ok { "PASS" } else { "FAIL" };
        writeln!(out)?;
        writeln!(out, "cloud metrics at the end (non-zero):")?;
        for (name, value) in &self.cloud_metrics {
            writeln!(out, "  {name} {value}")?;
        }
        let problems: Vec<&(String, f64)> = self
            .cloud_metrics
            .iter()
            .filter(|(name, _)| is_problem_counter(name))
            .collect();
        if problems.is_empty() {
            writeln!(out, "cloud drop/error counters: all zero")?;
        } else {
            writeln!(out, "cloud drop/error counters (non-zero):")?;
            for (name, value) in problems {
                writeln!(out, "  {name} {value}")?;
            }
        }
        writeln!(out)?;
        writeln!(out, "==================== summary ====================")?;
        writeln!(
            out,
            "handshakes      {:>9.0} /s  ({} of {})",
            self.handshake.per_sec(),
            self.handshake.ok,
            self.handshake.attempted
        )?;
        writeln!(
            out,
            "registrations   {:>9.0} /s  ({} of {})",
            self.registration.per_sec(),
            self.registration.ok,
            self.registration.attempted
        )?;
        writeln!(
            out,
            "  combined      {:>9.0} /s  (handshakes + registrations over both phases)",
            rate(
                self.handshake.ok + self.registration.ok,
                self.handshake.elapsed + self.registration.elapsed
            )
        )?;
        writeln!(
            out,
            "keepalives      {:>9.0} /s  ({} of {})",
            self.keepalive.per_sec(),
            self.keepalive.ok,
            self.keepalive.attempted
        )?;
        writeln!(
            out,
            "directions      {:>9.0} /s  ({} of {}; {:.1} % answered RouteDirectionToInitiator)",
            self.direction.per_sec(),
            self.direction.ok,
            self.direction.attempted,
            100.0 * self.direction.ok as f64 / self.direction.attempted.max(1) as f64
        )?;
        if let Some(relay) = &self.relay {
            writeln!(
                out,
                "TRS relay       {:>9.0} Mbit/s delivered (1400-byte datagrams, loss {:.2} %, {} sent, {} forwarded by the TRS, {} received; sender {})",
                relay.delivered_mbit_per_sec(),
                relay.loss_percent(),
                relay.sent,
                self.trs_relayed_packets
                    .map_or_else(|| "?".to_owned(), |n| n.to_string()),
                relay.received,
                if args.relay_mbit == 0 {
                    "unpaced".to_owned()
                } else {
                    format!("paced at {} Mbit/s", args.relay_mbit)
                }
            )?;
        }
        writeln!(
            out,
            "cloud RSS       {} KiB idle, {} KiB registered, {} KiB at the end; generator {} KiB",
            self.rss_before_kib, self.rss_after_kib, self.rss_end_kib, self.generator_rss_kib
        )?;
        if let Some(gauge) = self.nms_nodes_gauge {
            writeln!(out, "NMS node gauge  {gauge}")?;
        }
        writeln!(out, "-------------------- bar ------------------------")?;
        writeln!(
            out,
            "{}  registered nodes         {:>10}   (>= {BAR_NODES})",
            verdict(self.nodes_pass()),
            self.registered
        )?;
        writeln!(
            out,
            "{}  signaling ops/s          {:>10.0}   (>= {BAR_SIGNALING_OPS_PER_SEC:.0}; registrations + keepalives + directions over their phases)",
            verdict(self.ops_pass()),
            self.signaling_ops_per_sec()
        )?;
        writeln!(
            out,
            "{}  cloud RSS per node       {:>10.0} B (< {BAR_BYTES_PER_NODE:.0} B)",
            verdict(self.memory_pass()),
            self.bytes_per_node
        )?;
        writeln!(
            out,
            "{}",
            if self.passed() {
                "RESULT: PASS"
            } else {
                "RESULT: FAIL"
            }
        )
    }
}

fn rate(n: u64, time: Duration) -> f64 {
    if time.is_zero() {
        0.0
    } else {
        n as f64 / time.as_secs_f64()
    }
}

fn percent(part: Duration, whole: Duration) -> f64 {
    if whole.is_zero() {
        0.0
    } else {
        100.0 * part.as_secs_f64() / whole.as_secs_f64()
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn status_name(code: u16) -> String {
    StatusCode(code)
        .name()
        .map_or_else(|| code.to_string(), str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_parse_with_defaults() {
        let args = BenchArgs::try_parse_from(["bench"]).unwrap();
        assert_eq!(args.nodes, 100_000);
        assert_eq!(args.directions, 20_000);
        let args = BenchArgs::try_parse_from(["bench", "--nodes", "10", "--relay-seconds", "0.5"])
            .unwrap();
        assert_eq!(args.nodes, 10);
        assert!((args.relay_seconds - 0.5).abs() < f64::EPSILON);
        assert!(BenchArgs::try_parse_from(["bench", "--bogus"]).is_err());
    }

    #[test]
    fn signaling_rate_spans_the_three_phases() {
        let phase = |ok, secs| PhaseReport {
            ok,
            elapsed: Duration::from_secs(secs),
            ..PhaseReport::default()
        };
        let report = Report {
            registration: phase(100_000, 4),
            keepalive: phase(100_000, 2),
            direction: phase(20_000, 2),
            registered: 100_000,
            bytes_per_node: 1500.0,
            ..Report::default()
        };
        assert!((report.signaling_ops_per_sec() - 27_500.0).abs() < 1e-6);
        assert!(report.passed());
        let slow = Report {
            direction: phase(20_000, 20),
            ..report.clone()
        };
        assert!(!slow.ops_pass());
        let fat = Report {
            bytes_per_node: 2048.0,
            ..report
        };
        assert!(!fat.memory_pass());
    }

    #[test]
    fn problem_counters() {
        assert!(is_problem_counter(
            "cyphonic_nms_dropped_total{reason=\"replay\"}"
        ));
        assert!(is_problem_counter(
            "cyphonic_nms_directions_total{result=\"offline\"}"
        ));
        assert!(!is_problem_counter(
            "cyphonic_nms_directions_total{result=\"ok\"}"
        ));
        assert!(!is_problem_counter("cyphonic_nms_registrations_total"));
    }
}
