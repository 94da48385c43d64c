//! Pacing: when a [`Job`](super::Job)'s next save and next lease renewal
//! fall due, kept where the hot path of `checkpoint()` and `is_due()` reads
//! them without the clock.
//!
//! A loop may call `checkpoint()` millions of times a second, and only a
//! few dozen of those calls save. A [`Pacer`] turns the pure policy's
//! answer to "when next?" ([`IntervalTracker::next_due`]) into an item
//! count and two alarm flags that the job's clock raises at the deadlines
//! ([`Clock::arm`]): the check for "nothing to do" is then one relaxed
//! atomic load and one integer compare. Only when a flag is up or the count
//! is reached does the job read the clock and ask the policy, which stays
//! the source of truth, so an early flag costs one clock read and a late
//! one never happens on [`ManualClock`](crate::ManualClock). A deadline is
//! a time, not a number of calls guessed from the item rate, so a loop that
//! suddenly slows down still saves at least every `max_interval`.

use std::sync::Arc;

use serde_json::Value;

use crate::model::Checkpoint;
use crate::policy::NextDue;
use crate::time::{Alarm, Clock, Timestamp};

/// The flag raised when a save may be due by time.
pub(super) const SAVE: u8 = 1;
/// The flag raised when a third of the lease has passed since its renewal.
pub(super) const RENEW: u8 = 2;

/// A job's next save and renewal, as an item count and an alarm.
#[derive(Debug)]
pub(super) struct Pacer {
    alarm: Arc<Alarm>,
    /// A save may be due once `items_processed` reaches this.
    save_at_items: u64,
    /// The deadlines armed last, per flag (`None`: disarmed), so that
    /// re-arming an unchanged deadline costs nothing.
    armed: [Option<Timestamp>; 2],
}

impl Pacer {
    /// A pacer that finds both a save and a renewal possibly due until
    /// [`arm`](Pacer::arm) tells it otherwise.
    pub(super) fn new() -> Pacer {
        let alarm = Alarm::new();
        alarm.raise(SAVE | RENEW);
        Pacer {
            alarm: Arc::new(alarm),
            save_at_items: 0,
            armed: [None; 2],
        }
    }

    /// False if and only if neither a save nor a renewal can be due with
    /// `items_processed` items done: the no-save path of `checkpoint()`.
    #[inline(always)]
    pub(super) fn quiet(&self, items_processed: u64) -> bool {
        self.alarm.raised() == 0 && items_processed < self.save_at_items
    }

    /// False if and only if no save can be due with `items_processed`
    /// items done: the no-save path of `is_due()`.
    #[inline(always)]
    pub(super) fn may_save(&self, items_processed: u64) -> bool {
        self.alarm.raised() & SAVE != 0 || items_processed >= self.save_at_items
    }

    /// Arms the next save (`next`, from the policy) and the next renewal
    /// (`renew_at`; `None` when every call renews) on `clock`.
    pub(super) fn arm(&mut self, clock: &dyn Clock, next: NextDue, renew_at: Option<Timestamp>) {
        self.save_at_items = next.items;
        // With a count of 0 every call is checked anyway: no alarm needed.
        let save_at = if next.items == 0 { None } else { next.at };
        self.arm_flag(clock, SAVE, save_at, false);
        self.arm_flag(clock, RENEW, renew_at, true);
    }

    /// `at: None` means never when `now_if_none` is false, and at every
    /// call when it is true.
    fn arm_flag(&mut self, clock: &dyn Clock, flag: u8, at: Option<Timestamp>, now_if_none: bool) {
        let slot = &mut self.armed[usize::from(flag == RENEW)];
        let up = self.alarm.raised() & flag != 0;
        match at {
            // Unchanged and not rung: the alarm already holds it.
            Some(at) if *slot == Some(at) && !up => {}
            Some(at) => {
                clock.arm(&self.alarm, flag, at);
                *slot = Some(at);
            }
            None if now_if_none => {
                self.alarm.raise(flag);
                *slot = None;
            }
            None => {
                if up || slot.is_some() {
                    self.alarm.disarm(flag);
                }
                *slot = None;
            }
        }
    }
}

/// `*pending = Some(new)`, minus the work the no-save path of
/// `checkpoint()` can skip: when `plain` says the old checkpoint owns no
/// heap memory it is not dropped, and when `new` owns none either (the
/// README's loop: a number for cursor, no stage, no state; the compiler
/// sees it) only its cursor and count are written. Then records in `plain`
/// whether `new` owns anything. In a loop whose own work is one long
/// dependency chain every instruction and store added between items costs
/// time: the drop was most of the instructions, and the stores of the
/// unchanged fields most of the rest (see docs/BENCHMARKS.md).
#[inline(always)]
pub(super) fn store_pending(pending: &mut Option<Checkpoint>, plain: &mut bool, new: Checkpoint) {
    let new_plain = owns_nothing(&new);
    match pending {
        // Neither owns anything nor has a stage or a state: only the
        // cursor and the count can differ. (Forgetting a value that owns
        // nothing frees nothing: no leak.)
        Some(old) if *plain && new_plain => {
            let Checkpoint {
                cursor,
                items_processed,
                stage,
                state,
            } = new;
            std::mem::forget(std::mem::replace(&mut old.cursor, cursor));
            old.items_processed = items_processed;
            std::mem::forget((stage, state));
        }
        _ if *plain => {
            std::mem::forget(pending.replace(new));
            *plain = new_plain;
        }
        _ => {
            *pending = Some(new);
            *plain = new_plain;
        }
    }
}

/// True if dropping `checkpoint` would free nothing.
#[inline(always)]
fn owns_nothing(checkpoint: &Checkpoint) -> bool {
    // Destructured, so that a new field cannot be overlooked here.
    let Checkpoint {
        cursor,
        items_processed: _,
        stage,
        state,
    } = checkpoint;
    let cursor_owns_nothing = match cursor {
        Value::Null | Value::Bool(_) => true,
        // A number holds a string under serde_json's `arbitrary_precision`.
        Value::Number(_) => !std::mem::needs_drop::<serde_json::Number>(),
        Value::String(_) | Value::Array(_) | Value::Object(_) => false,
    };
    cursor_owns_nothing && stage.is_none() && state.is_none()
}

#[cfg(test)]
mod tests;
