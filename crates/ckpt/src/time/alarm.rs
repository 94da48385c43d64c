//! [`Alarm`]: flags a clock raises at deadlines, so that a hot loop learns
//! that something fell due from one atomic load instead of a clock read.
//!
//! # Architecture
//!
//! - [`Alarm`] holds up to eight flags in one `AtomicU8`, which the owner
//!   reads on its hot path ([`Alarm::raised`]), and, off that path, each
//!   flag's current deadline and the wake-up queued for it.
//! - A clock arms a flag through [`Clock::arm`](super::Clock::arm).
//!   [`ManualClock`](super::ManualClock) keeps its wake-ups in a list and
//!   rings them in `advance` and `set`; [`SystemClock`](super::SystemClock)
//!   queues them on one process-wide timer thread ([`Timer`]).
//! - A wake-up rings through [`Alarm::ring`], which raises the flag only if
//!   its *current* deadline has passed: a re-armed flag ignores the old
//!   deadline, and moving a deadline later queues nothing new (the wake-up
//!   already queued for the earlier deadline re-queues itself), so a job
//!   that re-arms after every save leaves no trail of stale wake-ups.

use std::cmp::Ordering as CmpOrdering;
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, Weak};
use std::time::Duration;

use super::{Clock, SystemClock, Timestamp};

/// Up to eight flags, each raised by a clock when its deadline passes.
///
/// The owner checks [`raised`](Alarm::raised) on its hot path (one relaxed
/// atomic load) and reads the clock only when a flag is up. A flag is a
/// hint, never the truth: raising one early or twice costs the owner one
/// clock read and changes no decision, while raising one late delays what
/// fell due. Flags are single bits (`1`, `2`, `4`, …).
pub struct Alarm {
    raised: AtomicU8,
    slots: Mutex<[Slot; 8]>,
}

/// One flag's deadline, and the wake-up a clock has queued for it.
#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    /// When the flag is to be raised; `None` when disarmed.
    deadline: Option<Timestamp>,
    /// The time of the wake-up queued for this flag, if any: at or before
    /// `deadline`, or stale once the flag is disarmed.
    queued: Option<Timestamp>,
}

impl Alarm {
    /// An alarm with every flag lowered and disarmed.
    pub fn new() -> Alarm {
        Alarm {
            raised: AtomicU8::new(0),
            slots: Mutex::new([Slot::default(); 8]),
        }
    }

    /// The flags raised: one relaxed load, for hot paths.
    #[inline(always)]
    pub fn raised(&self) -> u8 {
        self.raised.load(Ordering::Relaxed)
    }

    /// Raises `flags` now. This is what a clock without alarms of its own
    /// does when armed (see [`Clock::arm`]).
    pub fn raise(&self, flags: u8) {
        self.raised.fetch_or(flags, Ordering::Relaxed);
    }

    /// Lowers `flag` and forgets its deadline: a wake-up already queued for
    /// it does nothing.
    pub fn disarm(&self, flag: u8) {
        let mut slots = self.slots();
        slots[index(flag)].deadline = None;
        self.raised.fetch_and(!flag, Ordering::Relaxed);
    }

    /// Arms `flag` for `at` on a clock showing `now`: lowers it, or raises
    /// it at once if `at` has come. Returns true if and only if the clock
    /// must queue a wake-up at `at`, because none is queued at or before it.
    pub(crate) fn arm_at(&self, flag: u8, at: Timestamp, now: Timestamp) -> bool {
        let mut slots = self.slots();
        let slot = &mut slots[index(flag)];
        if at <= now {
            slot.deadline = None;
            self.raised.fetch_or(flag, Ordering::Relaxed);
            return false;
        }
        slot.deadline = Some(at);
        self.raised.fetch_and(!flag, Ordering::Relaxed);
        match slot.queued {
            Some(queued) if queued <= at => false,
            _ => {
                slot.queued = Some(at);
                true
            }
        }
    }

    /// A wake-up queued for `flag` at `queued` came due on a clock showing
    /// `now`: raises the flag if its deadline has passed. Returns the time
    /// of the wake-up to queue instead when the deadline moved later.
    pub(crate) fn ring(&self, flag: u8, queued: Timestamp, now: Timestamp) -> Option<Timestamp> {
        let mut slots = self.slots();
        let slot = &mut slots[index(flag)];
        if slot.queued != Some(queued) {
            return None; // superseded by an earlier wake-up
        }
        slot.queued = None;
        match slot.deadline {
            Some(deadline) if deadline <= now => {
                slot.deadline = None;
                self.raised.fetch_or(flag, Ordering::Relaxed);
                None
            }
            Some(deadline) => {
                slot.queued = Some(deadline);
                Some(deadline)
            }
            None => None,
        }
    }

    fn slots(&self) -> MutexGuard<'_, [Slot; 8]> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Default for Alarm {
    fn default() -> Self {
        Alarm::new()
    }
}

impl std::fmt::Debug for Alarm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Alarm")
            .field("raised", &format_args!("{:#010b}", self.raised()))
            .finish_non_exhaustive()
    }
}

fn index(flag: u8) -> usize {
    assert!(
        flag.is_power_of_two(),
        "an alarm flag is one bit: {flag:#b}"
    );
    flag.trailing_zeros() as usize
}

/// A wake-up a clock has queued: ring `flag` of `alarm` at `at`. It holds
/// the alarm weakly, so a dropped owner leaves nothing to keep alive.
#[derive(Debug)]
pub(crate) struct Wakeup {
    pub(crate) at: Timestamp,
    pub(crate) alarm: Weak<Alarm>,
    pub(crate) flag: u8,
}

impl Wakeup {
    /// Rings it at `now`; returns the wake-up to queue instead, if any.
    pub(crate) fn ring(self, now: Timestamp) -> Option<Wakeup> {
        let alarm = self.alarm.upgrade()?;
        let at = alarm.ring(self.flag, self.at, now)?;
        Some(Wakeup { at, ..self })
    }
}

// Ordered by time alone, earliest greatest, for the timer's max-heap.
impl PartialEq for Wakeup {
    fn eq(&self, other: &Self) -> bool {
        self.at == other.at
    }
}
impl Eq for Wakeup {}
impl PartialOrd for Wakeup {
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}
impl Ord for Wakeup {
    fn cmp(&self, other: &Self) -> CmpOrdering {
        other.at.cmp(&self.at)
    }
}

/// The longest the timer thread sleeps with wake-ups queued. It sleeps on
/// the monotonic clock but fires by the wall clock; checking at least this
/// often bounds how late a wake-up rings after the wall clock jumps ahead
/// (or the machine resumes from suspend).
const MAX_SLEEP: Duration = Duration::from_secs(1);

/// The process-wide timer behind [`SystemClock`]'s alarms: a heap of
/// wake-ups and one thread, started on first use, that sleeps until the
/// earliest one and rings it once the wall clock shows its time.
#[derive(Debug, Default)]
pub(crate) struct Timer {
    queue: Mutex<BinaryHeap<Wakeup>>,
    changed: Condvar,
    /// The process whose thread serves it: a child forked later has no
    /// such thread.
    pid: u32,
}

impl Timer {
    /// The process's timer; `None` if its thread could not be started, or
    /// in a child forked after it was: alarms are then raised at once (the
    /// owner reads the clock on every check, as without alarms).
    pub(crate) fn global() -> Option<&'static Timer> {
        static TIMER: OnceLock<Option<&'static Timer>> = OnceLock::new();
        let timer = *TIMER.get_or_init(|| {
            let timer: &'static Timer = Box::leak(Box::new(Timer {
                pid: std::process::id(),
                ..Timer::default()
            }));
            std::thread::Builder::new()
                .name("ckpt-alarm".into())
                .spawn(move || timer.run(&SystemClock))
                .ok()
                .map(|_| timer)
        });
        timer.filter(|t| t.pid == std::process::id())
    }

    /// Arms `flag` of `alarm` for `at` on `clock`'s time.
    pub(crate) fn arm(&self, clock: &dyn Clock, alarm: &Arc<Alarm>, flag: u8, at: Timestamp) {
        let mut queue = self.queue();
        if !alarm.arm_at(flag, at, clock.now()) {
            return;
        }
        let earliest = queue.peek().is_none_or(|first| at < first.at);
        queue.push(Wakeup {
            at,
            alarm: Arc::downgrade(alarm),
            flag,
        });
        if earliest {
            self.changed.notify_one();
        }
    }

    /// Rings every wake-up due at `now`; returns how long to sleep before
    /// the next (`None`: nothing queued).
    fn ring_due(&self, queue: &mut BinaryHeap<Wakeup>, now: Timestamp) -> Option<Duration> {
        while queue.peek().is_some_and(|first| first.at <= now) {
            if let Some(again) = queue.pop().and_then(|w| w.ring(now)) {
                queue.push(again);
            }
        }
        let first = queue.peek()?;
        let ms = first.at.millis().saturating_sub(now.millis()).max(1) as u64;
        Some(Duration::from_millis(ms).min(MAX_SLEEP))
    }

    fn run(&self, clock: &dyn Clock) {
        let mut queue = self.queue();
        loop {
            queue = match self.ring_due(&mut queue, clock.now()) {
                None => self.changed.wait(queue).unwrap_or_else(|e| e.into_inner()),
                Some(sleep) => {
                    let waited = self.changed.wait_timeout(queue, sleep);
                    waited.unwrap_or_else(|e| e.into_inner()).0
                }
            };
        }
    }

    fn queue(&self) -> MutexGuard<'_, BinaryHeap<Wakeup>> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::ManualClock;

    const T0: Timestamp = Timestamp(1_000_000);
    const F: u8 = 1;
    const G: u8 = 2;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn manual_clock_raises_when_it_passes_the_deadline() {
        let clock = ManualClock::new(T0);
        let alarm = Arc::new(Alarm::new());
        clock.arm(&alarm, F, T0.plus(ms(100)));
        assert_eq!(alarm.raised(), 0);
        clock.advance(ms(99));
        assert_eq!(alarm.raised(), 0);
        clock.advance(ms(1));
        assert_eq!(alarm.raised(), F);
        // A flag armed for a time already passed is raised at once.
        clock.arm(&alarm, G, T0);
        assert_eq!(alarm.raised(), F | G);
        // Arming lowers the flag; `set` rings like `advance`.
        clock.arm(&alarm, F, T0.plus(ms(500)));
        assert_eq!(alarm.raised(), G);
        clock.set(T0.plus(ms(600)));
        assert_eq!(alarm.raised(), F | G);
    }

    #[test]
    fn a_rearmed_flag_ignores_its_old_deadline() {
        let clock = ManualClock::new(T0);
        let alarm = Arc::new(Alarm::new());
        // Later: the wake-up for 100 re-queues itself for 300.
        clock.arm(&alarm, F, T0.plus(ms(100)));
        clock.arm(&alarm, F, T0.plus(ms(300)));
        clock.advance(ms(150));
        assert_eq!(alarm.raised(), 0, "the old deadline passed");
        clock.advance(ms(150));
        assert_eq!(alarm.raised(), F);
        // Earlier: the wake-up for the later deadline is stale.
        clock.arm(&alarm, F, T0.plus(ms(900)));
        clock.arm(&alarm, F, T0.plus(ms(400)));
        clock.advance(ms(100));
        assert_eq!(alarm.raised(), F);
        clock.arm(&alarm, F, T0.plus(ms(2_000)));
        clock.advance(ms(600)); // past 900
        assert_eq!(alarm.raised(), 0, "the stale wake-up for 900 rang");
        clock.advance(ms(1_000));
        assert_eq!(alarm.raised(), F);
        // Disarmed: nothing rings.
        clock.arm(&alarm, F, T0.plus(ms(3_000)));
        alarm.disarm(F);
        clock.advance(ms(10_000));
        assert_eq!(alarm.raised(), 0);
    }

    #[test]
    fn moving_a_deadline_later_queues_nothing_new() {
        let alarm = Arc::new(Alarm::new());
        assert!(alarm.arm_at(F, T0.plus(ms(10)), T0));
        for n in 11..1_000 {
            assert!(!alarm.arm_at(F, T0.plus(ms(n)), T0));
        }
        // The one wake-up re-queues itself for the latest deadline.
        assert_eq!(
            alarm.ring(F, T0.plus(ms(10)), T0.plus(ms(10))),
            Some(T0.plus(ms(999)))
        );
        assert_eq!(alarm.raised(), 0);
        assert_eq!(alarm.ring(F, T0.plus(ms(999)), T0.plus(ms(999))), None);
        assert_eq!(alarm.raised(), F);
    }

    #[test]
    fn the_timer_rings_by_its_clock() {
        let clock = ManualClock::new(T0);
        let timer = Timer::default();
        let alarm = Arc::new(Alarm::new());
        timer.arm(&clock, &alarm, F, T0.plus(ms(50)));
        timer.arm(&clock, &alarm, G, T0.plus(ms(5_000)));
        let mut queue = timer.queue();
        assert_eq!(timer.ring_due(&mut queue, T0), Some(ms(50)));
        assert_eq!(timer.ring_due(&mut queue, T0.plus(ms(50))), Some(MAX_SLEEP));
        assert_eq!(alarm.raised(), F);
        assert_eq!(timer.ring_due(&mut queue, T0.plus(ms(5_000))), None);
        assert_eq!(alarm.raised(), F | G);
        // A dropped alarm's wake-up rings nothing and is dropped.
        drop(queue);
        let gone = Arc::new(Alarm::new());
        timer.arm(&clock, &gone, F, T0.plus(ms(10)));
        drop(gone);
        let mut queue = timer.queue();
        assert_eq!(timer.ring_due(&mut queue, T0.plus(ms(10))), None);
        assert!(queue.is_empty());
    }

    #[test]
    fn system_clock_alarms_ring_on_the_timer_thread() {
        let alarm = Arc::new(Alarm::new());
        let now = SystemClock.now();
        SystemClock.arm(&alarm, G, now.plus(Duration::from_secs(3_600)));
        SystemClock.arm(&alarm, F, now.plus(ms(20)));
        let waited = std::time::Instant::now();
        while alarm.raised() & F == 0 {
            assert!(waited.elapsed() < Duration::from_secs(30), "never rang");
            std::thread::sleep(ms(5));
        }
        assert!(SystemClock.now() >= now.plus(ms(20)), "rang early");
        assert_eq!(alarm.raised(), F, "the hour-long deadline rang");
    }
}
