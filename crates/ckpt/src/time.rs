//! Time: a millisecond timestamp and an injectable clock.
//!
//! Every policy decision (lease expiry, retry time, checkpoint interval)
//! takes `now` as an argument; the [`Clock`] is where `now` comes from, so
//! tests drive time with [`ManualClock`] and never sleep.
//!
//! A clock also raises [`Alarm`]s: a flag that a deadline has passed, which
//! a hot loop reads instead of the clock (see [`Clock::arm`]).

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

mod alarm;
pub mod offset;

pub use alarm::Alarm;
use alarm::{Timer, Wakeup};
pub use offset::Offset;

/// Milliseconds since the Unix epoch, UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Timestamp(pub i64);

impl Timestamp {
    /// Milliseconds since the Unix epoch.
    pub fn millis(self) -> i64 {
        self.0
    }

    /// `self + d`, saturating.
    pub fn plus(self, d: Duration) -> Timestamp {
        Timestamp(self.0.saturating_add(duration_millis(d)))
    }

    /// Time elapsed from `earlier` to `self`; zero if `earlier` is later.
    pub fn since(self, earlier: Timestamp) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0).max(0) as u64)
    }

    /// The first instant `t` with `t.since(self) >= d`, so that a deadline
    /// agrees exactly with a check written with [`since`](Timestamp::since):
    /// `self` plus `d` rounded up to whole milliseconds. `None` when `d` is
    /// zero, which every instant satisfies, even one before `self`.
    pub fn first_after(self, d: Duration) -> Option<Timestamp> {
        if d.is_zero() {
            return None;
        }
        let ms = i64::try_from(d.as_nanos().div_ceil(1_000_000)).unwrap_or(i64::MAX);
        Some(Timestamp(self.0.saturating_add(ms)))
    }

    /// This instant as a [`SystemTime`].
    pub fn to_system_time(self) -> SystemTime {
        if self.0 >= 0 {
            UNIX_EPOCH + Duration::from_millis(self.0 as u64)
        } else {
            UNIX_EPOCH
        }
    }
}

/// A duration in whole milliseconds, saturating at `i64::MAX`.
pub fn duration_millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// The source of `now`, and of alarms at its times.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// The current time.
    fn now(&self) -> Timestamp;

    /// Arms `flag` (one bit) of `alarm` for `at`, replacing its earlier
    /// deadline: the flag is lowered, and raised once this clock shows `at`
    /// or later; if it already does, the flag is raised at once.
    ///
    /// A [`Job`](crate::Job) arms its next save and lease renewal this way,
    /// so that `checkpoint()` and `is_due()` read a flag, not the clock,
    /// until one falls due. The job re-checks with the clock before acting,
    /// so a flag raised early costs it only a clock read; one raised late
    /// delays the save or renewal by as much.
    ///
    /// The default raises the flag at once: a clock that does not override
    /// it is read on every check, as if there were no alarm. [`SystemClock`]
    /// rings alarms from a process-wide timer thread, [`ManualClock`] from
    /// [`advance`](ManualClock::advance) and [`set`](ManualClock::set).
    fn arm(&self, alarm: &Arc<Alarm>, flag: u8, at: Timestamp) {
        let _ = at;
        alarm.raise(flag);
    }

    /// True if and only if this clock runs at real rate (within the bound
    /// of the clock assumption stated at [`Offset`]), so that a constant offset relates
    /// it to a store's clock and [`Ckpt`](crate::Ckpt) measures one. The
    /// default is true; [`ManualClock`] says false, and is then used as it
    /// is: the test that moves it is the one authority on time.
    fn follows_real_time(&self) -> bool {
        true
    }
}

/// The system's wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        let d = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Timestamp(duration_millis(d))
    }

    /// Queues the alarm on the process-wide timer thread (started on first
    /// use), which rings it within about a millisecond of the wall clock
    /// passing `at`.
    fn arm(&self, alarm: &Arc<Alarm>, flag: u8, at: Timestamp) {
        match Timer::global() {
            Some(timer) => timer.arm(self, alarm, flag, at),
            None => alarm.raise(flag),
        }
    }
}

/// A clock that moves only when told to; clones share the same time and
/// alarms.
///
/// Alarms ring synchronously: when [`advance`](ManualClock::advance) or
/// [`set`](ManualClock::set) returns, every alarm whose deadline the new
/// time reached is raised, so tests need neither sleeps nor threads.
#[derive(Debug, Clone)]
pub struct ManualClock(Arc<Manual>);

#[derive(Debug)]
struct Manual {
    now: AtomicI64,
    /// Alarms armed and not yet rung; held weakly.
    wakeups: Mutex<Vec<Wakeup>>,
}

impl ManualClock {
    /// A clock showing `start`.
    pub fn new(start: Timestamp) -> Self {
        ManualClock(Arc::new(Manual {
            now: AtomicI64::new(start.0),
            wakeups: Mutex::new(Vec::new()),
        }))
    }

    /// Moves the clock forward by `d`, then rings the alarms due.
    pub fn advance(&self, d: Duration) {
        self.0.now.fetch_add(duration_millis(d), Ordering::SeqCst);
        self.ring();
    }

    /// Sets the clock to `t`, then rings the alarms due.
    pub fn set(&self, t: Timestamp) {
        self.0.now.store(t.0, Ordering::SeqCst);
        self.ring();
    }

    /// Rings the wake-ups due at the time read under the lock, which `arm`
    /// also reads under it: an alarm armed while the clock moves is either
    /// seen here or sees the new time itself.
    fn ring(&self) {
        let mut wakeups = self.wakeups();
        let now = self.now();
        let (due, waiting): (Vec<_>, Vec<_>) = wakeups.drain(..).partition(|w| w.at <= now);
        *wakeups = waiting;
        wakeups.extend(due.into_iter().filter_map(|w| w.ring(now)));
    }

    fn wakeups(&self) -> std::sync::MutexGuard<'_, Vec<Wakeup>> {
        self.0.wakeups.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp(self.0.now.load(Ordering::SeqCst))
    }

    fn arm(&self, alarm: &Arc<Alarm>, flag: u8, at: Timestamp) {
        let mut wakeups = self.wakeups();
        if alarm.arm_at(flag, at, self.now()) {
            wakeups.retain(|w| w.alarm.strong_count() > 0);
            wakeups.push(Wakeup {
                at,
                alarm: Arc::downgrade(alarm),
                flag,
            });
        }
    }

    /// False: it moves only when told to.
    fn follows_real_time(&self) -> bool {
        false
    }
}
