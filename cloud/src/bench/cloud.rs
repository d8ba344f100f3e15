//! The cloud under test: a work directory with a config and the signing key, the
//! `serve` child process, its resident memory and CPU time from `/proc`, and its
//! metrics endpoint read with a minimal HTTP/1.1 GET.

use std::fs::{DirBuilder, File};
use std::io::{self, Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
#[cfg(unix)]
use std::os::unix::fs::DirBuilderExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};

use crate::context::CloudKeys;
use crate::keys;

/// How long the child gets to answer on its metrics endpoint.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Relay rate limit per ticket for the run: high enough that the TRS itself, not its
/// per-ticket limiter (25 MB/s by default), bounds the throughput test.
const BENCH_RELAY_RATE: u64 = 10_000_000_000;
/// `/proc/<pid>/stat` counts CPU time in USER_HZ ticks, 100 per second on Linux.
const TICKS_PER_SEC: u64 = 100;

/// A running cloud child and its work directory; both go away on drop.
pub(super) struct CloudProcess {
    child: Option<Child>,
    log: PathBuf,
    pub(super) nms: SocketAddr,
    pub(super) trs: SocketAddr,
    pub(super) metrics: SocketAddr,
    /// The cloud's keys, read from the work directory (the child uses the same file).
    pub(super) keys: CloudKeys,
    // Dropped after the child is stopped (`Drop` below runs first).
    work: WorkDir,
}

impl CloudProcess {
    /// Creates the work directory, key and config, starts `<bin> --config <file> serve`
    /// and waits until its metrics endpoint answers.
    pub(super) fn start(bin: &Path, log_filter: &str, keep: bool) -> anyhow::Result<Self> {
        let work = WorkDir::create(keep)?;
        let data = work.path.join("data");
        private_dir_builder()
            .create(&data)
            .with_context(|| format!("creating {}", data.display()))?;
        // Created here, loaded by the child: both sides hold the same key.
        let keys = keys::load_or_create(&data).context("creating the cloud key")?;
        let (auth, nms, trs, metrics) = (free_udp()?, free_udp()?, free_udp()?, free_tcp()?);
        let config = work.path.join("cloud.yaml");
        std::fs::write(
            &config,
            config_text(&data, log_filter, auth, nms, trs, metrics),
        )
        .with_context(|| format!("writing {}", config.display()))?;
        let log_path = work.path.join("cloud.log");
        let log =
            File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
        let child = Command::new(bin)
            .arg("--config")
            .arg(&config)
            .arg("serve")
            .env_remove("RUST_LOG")
            .env_remove("CYPHONIC_CLOUD_CONFIG")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut process = Self {
            child: Some(child),
            log: log_path,
            nms,
            trs,
            metrics,
            keys,
            work,
        };
        process.wait_ready()?;
        Ok(process)
    }

    pub(super) fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    pub(super) fn dir(&self) -> &Path {
        &self.work.path
    }

    /// The child's resident memory (`VmRSS`).
    pub(super) fn rss_kib(&self) -> anyhow::Result<u64> {
        self.check_alive()?;
        Ok(rss_kib_of(&self.pid().to_string())?)
    }

    /// The child's CPU time so far, all threads, user + system.
    pub(super) fn cpu_time(&self) -> anyhow::Result<Duration> {
        self.check_alive()?;
        Ok(cpu_time_of(&self.pid().to_string())?)
    }

    /// `GET /metrics`, parsed into (`name{labels}`, value) samples.
    pub(super) fn scrape(&self) -> anyhow::Result<Vec<(String, f64)>> {
        let body = http_get(self.metrics, "/metrics")?;
        Ok(parse_metrics(&body))
    }

    /// Stops the child (SIGKILL: the run's state is thrown away anyway); the work
    /// directory goes too unless it is to be kept.
    pub(super) fn stop(mut self) -> anyhow::Result<()> {
        self.kill()
    }

    fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            if child.try_wait()?.is_none() {
                child.kill().context("stopping the cloud")?;
            }
            child.wait()?;
        }
        Ok(())
    }

    fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            self.check_alive()?;
            if self.scrape().is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "the cloud did not answer on {} within {READY_TIMEOUT:?}; its log:\n{}",
                    self.metrics,
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn check_alive(&self) -> anyhow::Result<()> {
        let Some(child) = &self.child else {
            bail!("the cloud is not running");
        };
        // `try_wait` needs `&mut`; /proc tells us without reaping.
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", child.id()));
        let zombie = stat
            .as_deref()
            .ok()
            .and_then(|s| s.rsplit_once(')'))
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'));
        if stat.is_err() || zombie {
            bail!("the cloud exited; its log:\n{}", self.log_tail());
        }
        Ok(())
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for CloudProcess {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}

/// The run's directory (config, data directory, cloud log), removed on drop unless
/// `--keep`.
struct WorkDir {
    path: PathBuf,
    keep: bool,
}

impl WorkDir {
    /// A fresh directory (mode 0700) under the system temp directory.
    fn create(keep: bool) -> anyhow::Result<Self> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path =
            std::env::temp_dir().join(format!("cyphonic-bench-{}-{nanos:09}", std::process::id()));
        private_dir_builder()
            .create(&path)
            .with_context(|| format!("creating {}", path.display()))?;
        Ok(Self { path, keep })
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// `VmRSS` of `/proc/<pid>` (`pid` may be `self`), in KiB.
pub(super) fn rss_kib_of(pid: &str) -> io::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| io::Error::other("no VmRSS line in /proc/<pid>/status"))
}

/// User + system CPU time of `/proc/<pid>` (`pid` may be `self`).
pub(super) fn cpu_time_of(pid: &str) -> io::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) is in parentheses and may hold spaces.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| io::Error::other("malformed /proc/<pid>/stat"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of stat(5); `rest` starts at field 3.
    let ticks = |i: usize| -> io::Result<u64> {
        fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| io::Error::other("malformed /proc/<pid>/stat"))
    };
    let total = ticks(11)? + ticks(12)?;
    Ok(Duration::from_millis(total * 1000 / TICKS_PER_SEC))
}

fn config_text(
    data: &Path,
    log: &str,
    auth: SocketAddr,
    nms: SocketAddr,
    trs: SocketAddr,
    metrics: SocketAddr,
) -> String {
    // Presence must outlive the run (no keepalive timers run between phases);
    // confirmations get the longest wait the config allows, so a loaded responder is
    // not reported OFFLINE.
    format!(
        "# Written by `cyphonic-cloud bench`.\n\
         data_dir: '{data}'\n\
         log: '{log}'\n\
         services:\n\
         \x20 as:\n\
         \x20   listen: ['{auth}']\n\
         \x20 nms:\n\
         \x20   listen: ['{nms}']\n\
         \x20   keepalive_secs: 20\n\
         \x20   presence_ttl_secs: 3600\n\
         \x20   confirm_timeout_ms: 5000\n\
         \x20 trs:\n\
         \x20   listen: ['{trs}']\n\
         \x20   rate_bytes_per_sec: {BENCH_RELAY_RATE}\n\
         \x20   burst_bytes: {BENCH_RELAY_RATE}\n\
         metrics:\n\
         \x20 listen: '{metrics}'\n\
         \x20 log_interval_secs: 0\n",
        data = data.display(),
    )
}

/// A loopback UDP port nothing uses right now (the child binds it a moment later).
fn free_udp() -> anyhow::Result<SocketAddr> {
    Ok(UdpSocket::bind("127.0.0.1:0")?.local_addr()?)
}

fn free_tcp() -> anyhow::Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// The body of `GET path` (HTTP/1.1, `Connection: close`, no chunked encoding: the
/// metrics endpoint sends a length).
fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .context("malformed HTTP response")?;
    let status = head.lines().next().unwrap_or_default();
    if !status.contains(" 200 ") {
        bail!("GET {path}: {status}");
    }
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        bail!("GET {path}: chunked responses are not supported");
    }
    Ok(body.to_owned())
}

/// Prometheus text lines `name{labels} value` (comments skipped).
fn parse_metrics(body: &str) -> Vec<(String, f64)> {
    body.lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .filter_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            Some((name.to_owned(), value.trim().parse().ok()?))
        })
        .collect()
}

/// A DirBuilder for directories only the owner may enter (mode 0700 on Unix).
fn private_dir_builder() -> DirBuilder {
    #[cfg_attr(not(unix), allow(unused_mut))]
    let mut builder = DirBuilder::new();
    #[cfg(unix)]
    builder.mode(0o700);
    builder
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_text_parses_as_a_cloud_config() {
        let addr = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
        let text = config_text(
            Path::new("/tmp/x y/data"),
            "warn",
            addr(1),
            addr(2),
            addr(3),
            addr(4),
        );
        let config = crate::config::parse(&text, Path::new("bench.yaml")).unwrap();
        assert_eq!(config.services.nms.listen, vec![addr(2)]);
        assert_eq!(config.services.trs.listen, vec![addr(3)]);
        assert_eq!(config.metrics.listen, Some(addr(4)));
        assert_eq!(config.services.nms.presence_ttl_secs, 3600);
        assert_eq!(config.data_dir, Path::new("/tmp/x y/data"));
    }

    #[test]
    fn metrics_lines() {
        let body = "# HELP a x\n# TYPE a counter\na 3\nb{reason=\"x y\"} 0\n";
        assert_eq!(
            parse_metrics(body),
            vec![("a".into(), 3.0), ("b{reason=\"x y\"}".into(), 0.0)]
        );
    }

    #[test]
    fn own_process_has_rss_and_cpu_time() {
        assert!(rss_kib_of("self").unwrap() > 0);
        cpu_time_of("self").unwrap();
    }
}
