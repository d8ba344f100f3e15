//! For mobility detectors: the debounce of `wait`, one policy for every platform. A
//! [`Burst`] collects the hints of changes until they have been quiet for the debounce
//! time (or the burst has gone on for too long), then hands over their union once. Time
//! is an argument, so this is tested without a clock.

use std::time::{Duration, Instant};

/// A burst that keeps going is reported anyway after this many debounce times, so a
/// flapping link cannot hide every change from the caller.
pub const MAX_BURST_FACTOR: u32 = 10;

/// The changes seen since the last report.
#[derive(Debug, Clone)]
pub struct Burst {
    debounce: Duration,
    /// The union of the hints so far; 0: no burst.
    hints: u32,
    first: Instant,
    last: Instant,
}

impl Burst {
    pub fn new(debounce: Duration, now: Instant) -> Self {
        Self {
            debounce,
            hints: 0,
            first: now,
            last: now,
        }
    }

    /// Records changes seen at `now`; hints of 0 (nothing relevant) change nothing, so
    /// irrelevant messages do not extend a burst.
    pub fn record(&mut self, hints: u32, now: Instant) {
        if hints == 0 {
            return;
        }
        if self.hints == 0 {
            self.first = now;
        }
        self.hints |= hints;
        self.last = self.last.max(now);
    }

    /// When the burst is to be reported; `None` when there is none.
    pub fn due(&self) -> Option<Instant> {
        (self.hints != 0).then(|| {
            let quiet = self.last + self.debounce;
            let cap = self.first + self.debounce * MAX_BURST_FACTOR;
            quiet.min(cap)
        })
    }

    /// The burst's hints if it is due at `now`; the burst is over then.
    pub fn take_due(&mut self, now: Instant) -> Option<u32> {
        if self.due()? > now {
            return None;
        }
        Some(std::mem::take(&mut self.hints))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: u32 = 1;
    const R: u32 = 2;

    #[test]
    fn a_burst_is_reported_once_after_it_went_quiet() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut burst = Burst::new(Duration::from_millis(300), t0);
        assert_eq!(burst.due(), None);
        assert_eq!(burst.take_due(ms(10_000)), None);
        burst.record(0, ms(5));
        assert_eq!(burst.due(), None, "irrelevant messages start nothing");
        burst.record(A, ms(10));
        burst.record(0, ms(200));
        assert_eq!(burst.due(), Some(ms(310)));
        burst.record(R, ms(250));
        assert_eq!(burst.due(), Some(ms(550)));
        assert_eq!(burst.take_due(ms(549)), None);
        assert_eq!(burst.take_due(ms(550)), Some(A | R));
        assert_eq!(burst.take_due(ms(10_000)), None, "reported once");
        assert_eq!(burst.due(), None);
    }

    #[test]
    fn an_endless_burst_is_reported_after_the_cap() {
        let t0 = Instant::now();
        let mut burst = Burst::new(Duration::from_millis(100), t0);
        let mut reported = None;
        for n in 0..100u64 {
            let now = t0 + Duration::from_millis(50 * n);
            if let Some(hints) = burst.take_due(now) {
                reported = Some((n, hints));
                break;
            }
            burst.record(A, now);
        }
        // First change at 0 ms, cap 10 x 100 ms.
        assert_eq!(reported, Some((20, A)));
    }

    #[test]
    fn zero_debounce_reports_at_once() {
        let t0 = Instant::now();
        let mut burst = Burst::new(Duration::ZERO, t0);
        burst.record(R, t0);
        assert_eq!(burst.take_due(t0), Some(R));
    }
}
