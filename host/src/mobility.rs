//! The mobility module: notices that this host's addresses or default routes changed
//! and tells the daemon, which then re-registers and tells its peers.
//!
//! Two sources, one interface: the mobility-detector plugin (`netlink-mobility` on
//! Linux: rtnetlink events, debounced in the plugin) or, where no plugin is configured
//! or it cannot start, polling the host's address list. Either runs on its own thread
//! (plugin waits block) and sends a unit event per change over a channel.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use cyphonic_plugin_abi::{MobilityHandle, MobilityPlugin};
use tokio::sync::mpsc;

use crate::sys::local_addresses;

/// Where changes come from.
#[derive(Debug)]
pub enum Source {
    Plugin(MobilityPlugin),
    /// Compare the address list every `interval`.
    Poll {
        interval: Duration,
    },
}

/// A running detector; dropping it stops its thread.
#[derive(Debug)]
pub struct Detector {
    stop: Arc<AtomicBool>,
    handle: Option<Arc<MobilityHandle>>,
    thread: Option<std::thread::JoinHandle<()>>,
    pub kind: &'static str,
}

impl Detector {
    /// Starts watching; changes on `ignore_ifname` (our own virtual interface) do not
    /// count. A plugin that fails to open falls back to polling, with a warning.
    pub fn start(
        source: Source,
        ignore_ifname: &str,
        poll_interval: Duration,
        events: mpsc::UnboundedSender<()>,
    ) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let ignore = ignore_ifname.to_owned();
        let (handle, kind) = match source {
            Source::Plugin(plugin) => {
                let options = format!("ignore_ifname={ignore_ifname}");
                match plugin.open(Some(&options)) {
                    Ok(h) => (Some(Arc::new(h)), "plugin"),
                    Err(e) => {
                        tracing::warn!(plugin = %plugin.plugin().path().display(), error = %e, "mobility plugin failed to start; polling addresses instead");
                        (None, "poll")
                    }
                }
            }
            Source::Poll { .. } => (None, "poll"),
        };
        let thread = {
            let stop = Arc::clone(&stop);
            let handle = handle.clone();
            std::thread::Builder::new()
                .name("cyph-mobility".into())
                .spawn(move || match handle {
                    Some(h) => plugin_loop(&h, &stop, &events),
                    None => poll_loop(&ignore, poll_interval, &stop, &events),
                })?
        };
        Ok(Self {
            stop,
            handle,
            thread: Some(thread),
            kind,
        })
    }
}

impl Drop for Detector {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = &self.handle {
            let _ = h.wake();
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn plugin_loop(handle: &MobilityHandle, stop: &AtomicBool, events: &mpsc::UnboundedSender<()>) {
    while !stop.load(Ordering::Relaxed) {
        match handle.wait(1000) {
            Ok(0) => {}
            Ok(hints) => {
                tracing::debug!(hints, "the mobility plugin saw a change");
                if events.send(()).is_err() {
                    return;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "mobility plugin wait failed");
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
}

fn poll_loop(
    ignore: &str,
    interval: Duration,
    stop: &AtomicBool,
    events: &mpsc::UnboundedSender<()>,
) {
    let mut last = addresses(ignore);
    let mut next = std::time::Instant::now() + interval;
    while !stop.load(Ordering::Relaxed) {
        // Short naps so a stop is noticed quickly whatever the interval.
        std::thread::sleep(interval.min(Duration::from_millis(50)));
        if std::time::Instant::now() < next {
            continue;
        }
        next = std::time::Instant::now() + interval;
        let now = addresses(ignore);
        if now != last {
            last = now;
            if events.send(()).is_err() {
                return;
            }
        }
    }
}

/// The sorted address list, without the ignored interface.
fn addresses(ignore: &str) -> Vec<IpAddr> {
    let mut v: Vec<IpAddr> = local_addresses()
        .unwrap_or_default()
        .into_iter()
        .filter(|a| a.ifname != ignore)
        .map(|a| a.addr)
        .collect();
    v.sort();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn polling_detector_starts_and_stops() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let detector = Detector::start(
            Source::Poll {
                interval: Duration::from_millis(50),
            },
            "cyph-none",
            Duration::from_millis(50),
            tx,
        )
        .unwrap();
        assert_eq!(detector.kind, "poll");
        // Nothing changes on this host during the test.
        let quiet = tokio::time::timeout(Duration::from_millis(300), rx.recv()).await;
        assert!(quiet.is_err(), "spurious change");
        drop(detector);
        assert!(
            rx.recv().await.is_none(),
            "the thread ended with the detector"
        );
    }
}
