//! [`WinMobility`], the detector: `open` registers and takes the initial tables, `wait`
//! folds the callbacks' changes (and optional polls) into a debounced burst, `snapshot`
//! walks the adapters.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use cyphonic_plugin_abi::{
    AddrEntry, HINT_ADDRESSES_CHANGED, MobilityDetector, PluginFailure, Status,
};
use windows_sys::Win32::Foundation::{
    ERROR_ACCESS_DENIED, ERROR_INVALID_PARAMETER, ERROR_NOT_SUPPORTED,
};

use crate::model::{self, ALL_HINTS, Change, INBOX_CAP, Tracker};
use crate::options::MobilityOptions;
use crate::sys::{self, Event, Signal, Watch, WatchError, Win32Error};
use cyphonic_plugin_abi::Burst;

cyphonic_plugin_abi::mobility_detector_plugin!(
    name: "win-mobility",
    version: env!("CARGO_PKG_VERSION"),
    detector: WinMobility,
);

/// A running detector; dropping it cancels its registrations (before freeing what their
/// callbacks write to) and closes its events.
#[derive(Debug)]
pub struct WinMobility {
    watch: Watch,
    wake_event: Event,
    /// Set by `wake` before it signals `wake_event`, so that a wake arriving while no
    /// `wait` blocks makes the next `wait` return 0 at once.
    woken: AtomicBool,
    options: MobilityOptions,
    /// Everything `wait` keeps; held for the whole of a `wait`.
    state: Mutex<WaitState>,
}

impl WinMobility {
    /// The parsed options this detector runs with.
    pub fn options(&self) -> &MobilityOptions {
        &self.options
    }
}

impl MobilityDetector for WinMobility {
    fn open(options: Option<&str>) -> Result<Self, PluginFailure> {
        let options = MobilityOptions::parse(options)?;
        let wake_event = Event::new().map_err(|e| os_failure("creating the wake event", &e))?;
        let watch = Watch::start().map_err(|e| match e {
            WatchError::Event(e) => os_failure("creating the change event", &e),
            WatchError::Register(e) => win32_failure(&e),
        })?;
        // After the registrations: a change from here on is in these tables or queued.
        let adapters = sys::adapters().map_err(|e| win32_failure(&e))?;
        let interfaces = sys::interfaces().unwrap_or_else(|e| {
            tracing::debug!(
                "win-mobility: no interface table ({e}); connection changes count from the first notification"
            );
            Vec::new()
        });
        let mut tracker = Tracker::default();
        tracker.reset(interfaces, &adapters, &options);
        let now = Instant::now();
        let poll = options.poll.map(|every| Poll {
            every,
            next: now + every,
            last: sorted(model::addresses(&adapters, &options)),
        });
        tracing::debug!(
            adapters = adapters.len(),
            debounce_ms = options.debounce.as_millis(),
            poll_ms = options.poll.map(|p| p.as_millis()),
            ignored = ?options.ignore_ifnames,
            "win-mobility: watching"
        );
        Ok(Self {
            watch,
            wake_event,
            woken: AtomicBool::new(false),
            state: Mutex::new(WaitState {
                burst: Burst::new(options.debounce, now),
                spare: Vec::with_capacity(INBOX_CAP),
                tracker,
                poll,
            }),
            options,
        })
    }

    fn wait(&self, timeout_ms: i32) -> Result<u32, PluginFailure> {
        // A panic in an earlier wait left at worst stale tables or a burst: both only
        // cost a spurious or merged report, so carry on with them.
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if self.woken.swap(false, Ordering::AcqRel) {
            self.wake_event.reset();
            return Ok(0);
        }
        // Negative: forever.
        let deadline = u64::try_from(timeout_ms)
            .ok()
            .map(|ms| Instant::now() + Duration::from_millis(ms));
        state.tracker.begin_wait();
        loop {
            self.take_changes(&mut state);
            let now = Instant::now();
            self.poll(&mut state, now);
            if let Some(hints) = state.burst.take_due(now) {
                return Ok(hints);
            }
            if deadline.is_some_and(|d| d <= now) {
                return Ok(0);
            }
            let until = [
                deadline,
                state.burst.due(),
                state.poll.as_ref().map(|p| p.next),
            ]
            .into_iter()
            .flatten()
            .min();
            let timeout = until.map(|t| t.saturating_duration_since(now));
            match sys::wait_any(&self.wake_event, &self.watch.shared().changed, timeout) {
                Ok(Signal::Wake) => {
                    self.woken.store(false, Ordering::Release);
                    return Ok(0);
                }
                Ok(Signal::Changed | Signal::Timeout) => {}
                Err(e) => return Err(os_failure("waiting for change notifications", &e)),
            }
        }
    }

    fn snapshot(&self) -> Result<Vec<AddrEntry>, PluginFailure> {
        let adapters = sys::adapters().map_err(|e| win32_failure(&e))?;
        Ok(model::addresses(&adapters, &self.options))
    }

    fn wake(&self) -> Result<(), PluginFailure> {
        self.woken.store(true, Ordering::Release);
        self.wake_event
            .set()
            .map_err(|e| os_failure("signalling the wake event", &e))
    }
}

/// What `wait` keeps between calls.
#[derive(Debug)]
struct WaitState {
    burst: Burst,
    /// The other half of the inbox's double buffer: changes are swapped out into it.
    spare: Vec<Change>,
    tracker: Tracker,
    poll: Option<Poll>,
}

/// `poll_ms`: when to compare the addresses next, and what they were.
#[derive(Debug)]
struct Poll {
    every: Duration,
    next: Instant,
    /// The last snapshot, sorted.
    last: Vec<AddrEntry>,
}

impl WinMobility {
    /// Folds the changes the callbacks queued into the burst.
    fn take_changes(&self, state: &mut WaitState) {
        let WaitState {
            burst,
            spare,
            tracker,
            ..
        } = state;
        let lost = self.watch.shared().take(spare);
        let now = Instant::now();
        if lost {
            tracing::debug!(
                "win-mobility: more changes than the queue holds; reporting every change"
            );
            burst.record(ALL_HINTS, now);
            let adapters = sys::adapters().unwrap_or_default();
            let interfaces = sys::interfaces().unwrap_or_default();
            tracker.reset(interfaces, &adapters, &self.options);
        }
        let mut walk = || sys::adapters().ok();
        for change in spare.drain(..) {
            burst.record(tracker.hints(change, &self.options, &mut walk), now);
        }
    }

    /// With `poll_ms`, compares the addresses with the last poll's when a poll is due.
    fn poll(&self, state: &mut WaitState, now: Instant) {
        let WaitState { burst, poll, .. } = state;
        let Some(poll) = poll else {
            return;
        };
        if poll.next > now {
            return;
        }
        poll.next = now + poll.every;
        match sys::adapters() {
            Ok(adapters) => {
                let current = sorted(model::addresses(&adapters, &self.options));
                if current != poll.last {
                    poll.last = current;
                    burst.record(HINT_ADDRESSES_CHANGED, now);
                }
            }
            Err(e) => tracing::debug!("win-mobility: poll failed: {e}"),
        }
    }
}

fn sorted(mut addrs: Vec<AddrEntry>) -> Vec<AddrEntry> {
    addrs.sort_unstable_by_key(|e| (e.ifindex, e.family, e.addr, e.prefix_len, e.flags));
    addrs
}

fn os_failure(context: &str, err: &std::io::Error) -> PluginFailure {
    PluginFailure::new(Status::IO, format!("win-mobility: {context}: {err}"))
}

fn win32_failure(err: &Win32Error) -> PluginFailure {
    let status = match err.code {
        ERROR_ACCESS_DENIED => Status::PERMISSION_DENIED,
        ERROR_NOT_SUPPORTED => Status::UNSUPPORTED,
        ERROR_INVALID_PARAMETER => Status::INVALID_ARGUMENT,
        _ => Status::IO,
    };
    PluginFailure::new(status, format!("win-mobility: {err}"))
}
