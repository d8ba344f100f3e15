//! Counters of everything the cloud handles or drops, as Prometheus text and as a
//! periodic log line.
//!
//! Counters are registered once by name (and optional labels) and then bumped with a
//! relaxed atomic add, so the per-datagram cost is one uncontended atomic. Names follow
//! Prometheus conventions: `cyphonic_<service>_<what>_total`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// A monotonically increasing count.
#[derive(Debug, Clone)]
pub struct Counter(Arc<AtomicU64>);

impl Counter {
    pub fn inc(&self) {
        self.add(1);
    }

    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn value(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down (registered nodes, bindings).
#[derive(Debug, Clone)]
pub struct Gauge(Arc<AtomicI64>);

impl Gauge {
    pub fn set(&self, v: i64) {
        self.0.store(v, Ordering::Relaxed);
    }

    pub fn add(&self, v: i64) {
        self.0.fetch_add(v, Ordering::Relaxed);
    }

    pub fn value(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

#[derive(Debug)]
enum Metric {
    Counter(Counter),
    Gauge(Gauge),
}

#[derive(Debug)]
struct Entry {
    name: String,
    labels: Vec<(String, String)>,
    help: String,
    metric: Metric,
}

/// The registry every service registers its counters in.
#[derive(Debug, Default, Clone)]
pub struct Metrics {
    entries: Arc<Mutex<Vec<Entry>>>,
}

impl Metrics {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers (or finds the already registered) counter `name{labels}`.
    pub fn counter(&self, name: &str, labels: &[(&str, &str)], help: &str) -> Counter {
        match self.register(name, labels, help, || {
            Metric::Counter(Counter(Arc::new(AtomicU64::new(0))))
        }) {
            Metric::Counter(c) => c,
            Metric::Gauge(_) => {
                // A name registered as a gauge and asked for as a counter is a programming
                // error; a detached counter keeps the service running and the mismatch
                // visible (it never reaches the output).
                tracing::error!(name, "metric registered as a gauge, asked for as a counter");
                Counter(Arc::new(AtomicU64::new(0)))
            }
        }
    }

    pub fn gauge(&self, name: &str, labels: &[(&str, &str)], help: &str) -> Gauge {
        match self.register(name, labels, help, || {
            Metric::Gauge(Gauge(Arc::new(AtomicI64::new(0))))
        }) {
            Metric::Gauge(g) => g,
            Metric::Counter(_) => {
                tracing::error!(name, "metric registered as a counter, asked for as a gauge");
                Gauge(Arc::new(AtomicI64::new(0)))
            }
        }
    }

    /// Prometheus text exposition format (version 0.0.4).
    pub fn render(&self) -> String {
        let entries = self.lock();
        let mut out = String::new();
        let mut last_name: Option<&str> = None;
        let mut sorted: Vec<&Entry> = entries.iter().collect();
        sorted.sort_by(|a, b| (&a.name, &a.labels).cmp(&(&b.name, &b.labels)));
        for entry in sorted {
            if last_name != Some(entry.name.as_str()) {
                let kind = match entry.metric {
                    Metric::Counter(_) => "counter",
                    Metric::Gauge(_) => "gauge",
                };
                let _ = writeln!(out, "# HELP {} {}", entry.name, entry.help);
                let _ = writeln!(out, "# TYPE {} {kind}", entry.name);
                last_name = Some(entry.name.as_str());
            }
            out.push_str(&entry.name);
            if !entry.labels.is_empty() {
                out.push('{');
                for (i, (k, v)) in entry.labels.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    let _ = write!(out, "{k}=\"{}\"", escape_label(v));
                }
                out.push('}');
            }
            let _ = match &entry.metric {
                Metric::Counter(c) => writeln!(out, " {}", c.value()),
                Metric::Gauge(g) => writeln!(out, " {}", g.value()),
            };
        }
        out
    }

    /// One line with every non-zero metric, for the periodic log.
    pub fn summary(&self) -> String {
        let entries = self.lock();
        let mut out = String::new();
        for entry in entries.iter() {
            let value = match &entry.metric {
                Metric::Counter(c) => c.value() as i64,
                Metric::Gauge(g) => g.value(),
            };
            if value == 0 {
                continue;
            }
            if !out.is_empty() {
                out.push(' ');
            }
            let short = entry.name.strip_prefix("cyphonic_").unwrap_or(&entry.name);
            let short = short.strip_suffix("_total").unwrap_or(short);
            out.push_str(short);
            for (_, v) in &entry.labels {
                let _ = write!(out, ".{v}");
            }
            let _ = write!(out, "={value}");
        }
        out
    }

    fn register(
        &self,
        name: &str,
        labels: &[(&str, &str)],
        help: &str,
        make: impl FnOnce() -> Metric,
    ) -> Metric {
        let labels: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let mut entries = self.lock();
        if let Some(entry) = entries
            .iter()
            .find(|e| e.name == name && e.labels == labels)
        {
            return match &entry.metric {
                Metric::Counter(c) => Metric::Counter(c.clone()),
                Metric::Gauge(g) => Metric::Gauge(g.clone()),
            };
        }
        let metric = make();
        let handle = match &metric {
            Metric::Counter(c) => Metric::Counter(c.clone()),
            Metric::Gauge(g) => Metric::Gauge(g.clone()),
        };
        entries.push(Entry {
            name: name.to_owned(),
            labels,
            help: help.to_owned(),
            metric,
        });
        handle
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Entry>> {
        // A panic while holding this lock cannot leave the list inconsistent (pushes are
        // atomic from the reader's point of view), so a poisoned lock is still usable.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::new();
        let dropped = m.counter(
            "cyphonic_nms_dropped_total",
            &[("reason", "replay")],
            "Datagrams dropped",
        );
        dropped.add(3);
        m.counter(
            "cyphonic_nms_dropped_total",
            &[("reason", "replay")],
            "Datagrams dropped",
        )
        .inc();
        m.gauge("cyphonic_nms_nodes", &[], "Registered nodes")
            .set(7);
        let text = m.render();
        assert!(text.contains("# TYPE cyphonic_nms_dropped_total counter"));
        assert!(text.contains("cyphonic_nms_dropped_total{reason=\"replay\"} 4"));
        assert!(text.contains("cyphonic_nms_nodes 7"));
        assert_eq!(m.summary(), "nms_dropped.replay=4 nms_nodes=7");
    }
}
