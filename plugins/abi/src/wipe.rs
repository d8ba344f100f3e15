//! [`WipeOnDrop`], for plugin authors: holds a value whose type has no zeroizing `Drop`
//! of its own (ring's expanded AEAD keys, say) and overwrites its bytes with zeros when
//! it is dropped.
#![allow(unsafe_code)]

use std::mem::MaybeUninit;
use zeroize::Zeroize;

/// A value that is dropped and then wiped, in place. The wipe covers the value's own
/// bytes, which for ring's AEAD keys is all of the key material (they own no heap
/// memory); copies made while the value was built and moved here are not reached.
/// Only for types that own no heap memory: heap buffers they point to are not wiped.
pub struct WipeOnDrop<T>(MaybeUninit<T>);

impl<T> WipeOnDrop<T> {
    pub fn new(value: T) -> Self {
        Self(MaybeUninit::new(value))
    }

    pub fn get(&self) -> &T {
        // SAFETY: `new` initializes the value, and only `drop` (which ends `self`'s life)
        // takes it out again, so it is initialized for every `&self`.
        unsafe { self.0.assume_init_ref() }
    }
}

impl<T> std::fmt::Debug for WipeOnDrop<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The wrapped value is secret by construction.
        f.write_str("WipeOnDrop(..)")
    }
}

impl<T> Drop for WipeOnDrop<T> {
    fn drop(&mut self) {
        // SAFETY: initialized since `new` (see `get`), and never used again: the only
        // thing left to do is zeroing the now-dead bytes, which `MaybeUninit` allows.
        unsafe { self.0.assume_init_drop() };
        // Volatile writes: the compiler cannot drop them as dead stores.
        self.0.zeroize();
    }
}

#[cfg(test)]
mod tests {
    use super::WipeOnDrop;
    use std::mem::{MaybeUninit, size_of};
    use std::sync::atomic::{AtomicUsize, Ordering};

    static DROPS: AtomicUsize = AtomicUsize::new(0);

    /// Counts its drops; zero-sized, so the secret below is all of the value's bytes.
    struct Counted;

    impl Drop for Counted {
        fn drop(&mut self) {
            DROPS.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// 48 bytes without padding: a byte array and a zero-sized type.
    type Secret = ([u8; 48], Counted);

    #[test]
    fn drop_runs_the_value_drop_then_zeroes_its_bytes() {
        assert_eq!(size_of::<WipeOnDrop<Secret>>(), 48);
        let mut slot = MaybeUninit::new(WipeOnDrop::new(([0xa5; 48], Counted)));
        assert_eq!(slot_bytes(&slot), [0xa5; 48]);
        // SAFETY: `slot` was initialized just above and is dropped exactly once here.
        unsafe { slot.assume_init_drop() };
        assert_eq!(DROPS.load(Ordering::SeqCst), 1);
        assert_eq!(slot_bytes(&slot), [0; 48]);
    }

    fn slot_bytes(slot: &MaybeUninit<WipeOnDrop<Secret>>) -> [u8; 48] {
        // SAFETY: the slot is 48 bytes without padding (asserted in the test), each of
        // them written: first by the 0xa5 pattern, then by the wipe's zeros.
        unsafe { std::mem::transmute_copy(slot) }
    }
}
