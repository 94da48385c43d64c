//! Worker slots: the value of `{%}`, GNU parallel's job slot.
//!
//! A command takes the lowest free slot when it starts and gives it back
//! when it has exited, so with `-j N` the values are 1..=N and no two
//! commands running at once share one. The runner's worker threads know
//! nothing of slots; `ckpt run` keeps them here, which keeps the library
//! free of a notion that only command lines need.

use std::sync::Mutex;

/// The slots of one run.
pub struct Slots {
    /// `busy[i]`: slot `i + 1` is held.
    busy: Mutex<Vec<bool>>,
}

/// A held slot, given back when dropped.
pub struct Slot<'a> {
    slots: &'a Slots,
    index: usize,
}

impl Slots {
    /// `n` slots, one per worker.
    pub fn new(n: usize) -> Slots {
        Slots {
            busy: Mutex::new(vec![false; n.max(1)]),
        }
    }

    /// How many slots there are (the highest slot number, unless more
    /// commands than workers ever ran at once).
    pub fn count(&self) -> usize {
        self.busy.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Takes the lowest free slot. With no more commands at once than
    /// workers there always is one; otherwise a new one is made rather
    /// than sharing.
    pub fn take(&self) -> Slot<'_> {
        let mut busy = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        let index = match busy.iter().position(|b| !b) {
            Some(i) => i,
            None => {
                busy.push(false);
                busy.len() - 1
            }
        };
        busy[index] = true;
        Slot { slots: self, index }
    }
}

impl Slot<'_> {
    /// The slot number, 1-based.
    pub fn number(&self) -> usize {
        self.index + 1
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let mut busy = self.slots.busy.lock().unwrap_or_else(|e| e.into_inner());
        busy[self.index] = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lowest_free_slot_and_given_back() {
        let slots = Slots::new(3);
        let a = slots.take();
        let b = slots.take();
        let c = slots.take();
        assert_eq!((a.number(), b.number(), c.number()), (1, 2, 3));
        drop(b);
        let d = slots.take();
        assert_eq!(d.number(), 2);
        // More at once than workers: a fresh slot, never a shared one.
        let e = slots.take();
        assert_eq!(e.number(), 4);
        drop((a, c, d, e));
        assert_eq!(slots.take().number(), 1);
    }
}
