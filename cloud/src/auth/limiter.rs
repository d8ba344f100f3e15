//! Failed-login limits: a sliding window of recent failures per key (a device id or a
//! source network), with a bounded number of keys.
//!
//! Attempts being verified count against the limit until their outcome is known, so a
//! burst of parallel guesses cannot overshoot it while Argon2 runs; only failures stay
//! counted afterwards.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::time::{Duration, Instant};

/// How long a caller should wait when only attempts still being verified fill the
/// limit: they come back within about this long.
const PENDING_RETRY: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub(super) struct FailureLimiter<K> {
    /// Failures allowed within `window`; 0 turns the limit off.
    limit: usize,
    window: Duration,
    capacity: usize,
    entries: HashMap<K, Entry>,
}

#[derive(Debug, Default)]
struct Entry {
    /// The most recent failures (at most `limit`), oldest first.
    failures: VecDeque<Instant>,
    /// Attempts being verified now.
    pending: u32,
}

impl Entry {
    fn expire(&mut self, now: Instant, window: Duration) {
        while self
            .failures
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= window)
        {
            self.failures.pop_front();
        }
    }

    fn is_idle(&self) -> bool {
        self.pending == 0 && self.failures.is_empty()
    }
}

impl<K: Hash + Eq + Clone> FailureLimiter<K> {
    pub(super) fn new(limit: u32, window: Duration, capacity: usize) -> Self {
        Self {
            limit: usize::try_from(limit).unwrap_or(usize::MAX),
            window,
            capacity: capacity.max(1),
            entries: HashMap::new(),
        }
    }

    /// `Err(retry_after)` when `key` has used up its attempts for now: the time until
    /// its oldest failure leaves the window (or, when attempts still being verified
    /// fill the limit, a short wait).
    pub(super) fn check(&mut self, key: &K, now: Instant) -> Result<(), Duration> {
        if self.limit == 0 {
            return Ok(());
        }
        let Some(entry) = self.entries.get_mut(key) else {
            return Ok(());
        };
        entry.expire(now, self.window);
        let used = entry.failures.len() + usize::try_from(entry.pending).unwrap_or(usize::MAX);
        if used < self.limit {
            return Ok(());
        }
        match entry.failures.front() {
            Some(oldest) if entry.failures.len() >= self.limit => {
                Err((*oldest + self.window).saturating_duration_since(now))
            }
            _ => Err(PENDING_RETRY),
        }
    }

    /// An attempt for `key` goes to verification.
    pub(super) fn begin(&mut self, key: K, now: Instant) {
        if self.limit == 0 {
            return;
        }
        if !self.entries.contains_key(&key) && self.entries.len() >= self.capacity {
            self.make_room(now);
        }
        self.entries.entry(key).or_default().pending += 1;
    }

    /// The attempt begun for `key` has its outcome.
    pub(super) fn finish(&mut self, key: &K, now: Instant, failed: bool) {
        let Some(entry) = self.entries.get_mut(key) else {
            return;
        };
        entry.pending = entry.pending.saturating_sub(1);
        if failed {
            entry.failures.push_back(now);
            while entry.failures.len() > self.limit {
                entry.failures.pop_front();
            }
        }
        entry.expire(now, self.window);
        if entry.is_idle() {
            self.entries.remove(key);
        }
    }

    /// Forgets the failures of `key` (after a successful login).
    pub(super) fn clear(&mut self, key: &K) {
        if let Some(entry) = self.entries.get_mut(key) {
            entry.failures.clear();
            if entry.is_idle() {
                self.entries.remove(key);
            }
        }
    }

    /// Drops keys whose failures have all left the window.
    pub(super) fn prune(&mut self, now: Instant) {
        let window = self.window;
        self.entries.retain(|_, e| {
            e.expire(now, window);
            !e.is_idle()
        });
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Called when a new key does not fit: first forget expired keys, then the key
    /// whose latest failure is oldest. Keys only arrive after an Argon2 verification
    /// each, so this linear scan is rare and cheap next to that.
    fn make_room(&mut self, now: Instant) {
        self.prune(now);
        if self.entries.len() < self.capacity {
            return;
        }
        let victim = self
            .entries
            .iter()
            .filter(|(_, e)| e.pending == 0)
            .min_by_key(|(_, e)| e.failures.back().copied())
            .map(|(k, _)| k.clone());
        if let Some(victim) = victim {
            self.entries.remove(&victim);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: Duration = Duration::from_secs(60);

    #[test]
    fn limits_after_n_failures_until_the_oldest_leaves_the_window() {
        let mut l = FailureLimiter::new(3, WINDOW, 100);
        let t0 = Instant::now();
        for i in 0..3u64 {
            let at = t0 + Duration::from_secs(i * 10);
            assert!(l.check(&"dev", at).is_ok());
            l.begin("dev", at);
            l.finish(&"dev", at, true);
        }
        let at = t0 + Duration::from_secs(25);
        assert_eq!(l.check(&"dev", at), Err(Duration::from_secs(35)));
        // Other keys are unaffected.
        assert!(l.check(&"other", at).is_ok());
        // The first failure leaves the window at t0 + 60.
        assert!(l.check(&"dev", t0 + Duration::from_secs(60)).is_ok());
    }

    #[test]
    fn successes_do_not_count_and_clear_resets() {
        let mut l = FailureLimiter::new(2, WINDOW, 100);
        let t = Instant::now();
        for _ in 0..10 {
            l.begin("dev", t);
            l.finish(&"dev", t, false);
        }
        assert!(l.check(&"dev", t).is_ok());
        assert_eq!(l.len(), 0, "successes leave nothing behind");
        l.begin("dev", t);
        l.finish(&"dev", t, true);
        l.clear(&"dev");
        l.begin("dev", t);
        l.finish(&"dev", t, true);
        assert!(l.check(&"dev", t).is_ok());
    }

    #[test]
    fn pending_attempts_count_until_they_finish() {
        let mut l = FailureLimiter::new(2, WINDOW, 100);
        let t = Instant::now();
        l.begin("dev", t);
        l.begin("dev", t);
        assert_eq!(l.check(&"dev", t), Err(PENDING_RETRY));
        l.finish(&"dev", t, false);
        assert!(l.check(&"dev", t).is_ok());
    }

    #[test]
    fn zero_limit_is_off() {
        let mut l = FailureLimiter::new(0, WINDOW, 100);
        let t = Instant::now();
        l.begin("dev", t);
        l.finish(&"dev", t, true);
        assert!(l.check(&"dev", t).is_ok());
        assert_eq!(l.len(), 0);
    }

    #[test]
    fn key_count_is_bounded() {
        let mut l = FailureLimiter::new(1, WINDOW, 4);
        let t = Instant::now();
        for i in 0..100u32 {
            let at = t + Duration::from_millis(u64::from(i));
            l.begin(i, at);
            l.finish(&i, at, true);
            assert!(l.len() <= 4);
        }
        // The most recent keys survive.
        assert!(l.check(&99, t + Duration::from_millis(100)).is_err());
        // Expired keys are forgotten first.
        l.prune(t + WINDOW + Duration::from_secs(1));
        assert_eq!(l.len(), 0);
    }
}
