//! Replay protection for counters carried in authenticated packets.
//!
//! A [`ReplayWindow`] accepts each 64-bit counter at most once and tolerates reordering
//! of up to [`WINDOW_BITS`] packets (the data path's default; the signaling channel uses
//! a narrower [`SignalingWindow`] because it holds one per node in the cloud), the
//! sliding-bitmap scheme of RFC 6479. The caller
//! checks *after* the packet authenticated (so forged counters cannot move the window)
//! and must treat a rejected counter as a replay: drop and count.

/// How far behind the highest counter seen a packet may arrive and still be accepted.
/// Deep batches on fast links (GSO/GRO, several receive queues) reorder by thousands.
pub const WINDOW_BITS: u64 = 8192;

const WORD_BITS: u64 = u64::BITS as u64;
/// One word more than the window so that the word the newest counter lives in can be
/// partly filled without shrinking the usable window below `WINDOW_BITS`.
const DATA_WORDS: usize = (WINDOW_BITS / WORD_BITS) as usize + 1;

/// 256 counters deep: signaling is a few messages per minute per node, and the cloud
/// keeps one window per connected node, so 48 bytes beat 1 KiB.
pub type SignalingWindow = ReplayWindow<5>;

/// Accepts counters at most once within `(WORDS - 1) * 64` counters behind the highest
/// one seen. The default size is the data path's [`WINDOW_BITS`].
#[derive(Clone)]
pub struct ReplayWindow<const WORDS: usize = DATA_WORDS> {
    /// Highest counter accepted so far plus one; 0 means nothing accepted yet.
    next: u64,
    bitmap: [u64; WORDS],
}

impl<const WORDS: usize> std::fmt::Debug for ReplayWindow<WORDS> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplayWindow")
            .field("next", &self.next)
            .finish()
    }
}

impl<const WORDS: usize> Default for ReplayWindow<WORDS> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const WORDS: usize> ReplayWindow<WORDS> {
    const RING_BITS: u64 = WORDS as u64 * WORD_BITS;
    /// How far behind the highest counter a fresh one may be.
    pub const DEPTH: u64 = (WORDS as u64 - 1) * WORD_BITS;

    pub const fn new() -> Self {
        Self {
            next: 0,
            bitmap: [0; WORDS],
        }
    }

    /// True if `counter` has not been seen and is not too old; does not record it.
    /// Use this to reject obvious replays before spending time on decryption.
    pub fn may_accept(&self, counter: u64) -> bool {
        if counter == u64::MAX {
            return false;
        }
        if counter >= self.next {
            return true;
        }
        if self.next - counter > Self::DEPTH {
            return false;
        }
        let (word, bit) = Self::position(counter);
        self.bitmap[word] & (1 << bit) == 0
    }

    /// Records `counter` if it is fresh. Returns false for replays and counters that fell
    /// out of the window. Call only for packets that authenticated.
    pub fn accept(&mut self, counter: u64) -> bool {
        if !self.may_accept(counter) {
            return false;
        }
        if counter >= self.next {
            self.advance_to(counter);
        }
        let (word, bit) = Self::position(counter);
        self.bitmap[word] |= 1 << bit;
        true
    }

    /// Highest counter accepted so far, if any.
    pub fn highest(&self) -> Option<u64> {
        self.next.checked_sub(1)
    }

    /// Slides the window so that `counter` is the newest position, clearing the words
    /// that the slide brings back into use.
    fn advance_to(&mut self, counter: u64) {
        let Some(highest) = self.highest() else {
            self.bitmap = [0; WORDS];
            self.next = counter + 1;
            return;
        };
        let old_word = highest / WORD_BITS;
        let new_word = counter / WORD_BITS;
        let words_to_clear = (new_word - old_word).min(WORDS as u64);
        for i in 1..=words_to_clear {
            let idx = ((old_word + i) % WORDS as u64) as usize;
            self.bitmap[idx] = 0;
        }
        self.next = counter + 1;
    }

    fn position(counter: u64) -> (usize, u32) {
        let ring = counter % Self::RING_BITS;
        ((ring / WORD_BITS) as usize, (ring % WORD_BITS) as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_each_counter_once() {
        let mut w: ReplayWindow = ReplayWindow::new();
        assert!(w.accept(0));
        assert!(!w.accept(0));
        assert!(w.accept(5));
        assert!(w.accept(3));
        assert!(!w.accept(3));
        assert!(!w.accept(5));
        assert_eq!(w.highest(), Some(5));
    }

    #[test]
    fn window_is_at_least_8192_deep() {
        let mut w: ReplayWindow = ReplayWindow::new();
        assert_eq!(ReplayWindow::<DATA_WORDS>::DEPTH, WINDOW_BITS);
        assert!(w.accept(10_000));
        assert!(!w.accept(10_000 - WINDOW_BITS));
        assert!(w.accept(10_000 - WINDOW_BITS + 1));
        for c in (10_000 - WINDOW_BITS + 2)..10_000 {
            assert!(w.accept(c), "{c}");
        }
        for c in (10_000 - WINDOW_BITS + 1)..=10_000 {
            assert!(!w.accept(c), "{c}");
        }
    }

    #[test]
    fn big_jumps_clear_old_bits() {
        let mut w: ReplayWindow = ReplayWindow::new();
        for c in 0..100 {
            assert!(w.accept(c));
        }
        assert!(w.accept(1_000_000));
        // Counters that share ring positions with the old ones must be fresh again.
        for c in (1_000_000 - 100)..1_000_000 {
            assert!(w.may_accept(c), "{c}");
        }
        assert!(!w.accept(1_000_000));
        assert!(!w.may_accept(u64::MAX));
    }

    #[test]
    fn matches_a_naive_model_under_random_order() {
        check_against_model::<DATA_WORDS>(9000);
        check_against_model::<5>(300);
    }

    fn check_against_model<const WORDS: usize>(spread: u64) {
        use std::collections::BTreeSet;
        let depth = ReplayWindow::<WORDS>::DEPTH;
        let mut w = ReplayWindow::<WORDS>::new();
        let mut seen = BTreeSet::new();
        let mut highest: Option<u64> = None;
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..200_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let base = highest.unwrap_or(0);
            let counter = (base + (x % 300)).saturating_sub(x % spread / 3 * 4);
            let fresh = !seen.contains(&counter)
                && highest.is_none_or(|h| counter > h || h - counter < depth);
            assert_eq!(
                w.accept(counter),
                fresh,
                "counter {counter} highest {highest:?}"
            );
            if fresh {
                seen.insert(counter);
                highest = Some(highest.map_or(counter, |h| h.max(counter)));
            }
        }
    }
}
