//! The store's clock, read through the local one: a measured offset.
//!
//! # The clock assumption
//!
//! Leases are judged by one clock per store: PostgreSQL's and Redis's own
//! time; a SQLite or in-memory store lives on one host, whose clock is the
//! store's. Hosts' clocks may disagree with each other and with the store
//! by any amount. What ckpt assumes is only that each host's clock runs at
//! real rate within a small bound (1%: far looser than any working quartz
//! clock or NTP slew, which stay within 0.05%) and that a step of the clock
//! (someone sets the date) is rare.
//!
//! # How
//!
//! [`StoreTime`] wraps a [`Clock`] and keeps the offset from it to the
//! store's clock, measured with one round trip ([`measure`]: the server's
//! time minus the midpoint of the local readings around it, uncertain by
//! half the round trip). Its `now` is the local clock plus the offset, so
//! every timestamp ckpt hands a store (`now`, `lease_until`, `ready_at`…)
//! is on the store's timeline, and the pure policies that take `now` need
//! not know. The offset is measured on first use, again when it is older
//! than [`REMEASURE_AFTER`] (real time), and at once when the local clock
//! is seen to jump against the monotonic clock by more than the rate
//! bound allows (a step of the date). A failed measurement keeps the old
//! offset; before the first success, every use tries again.
//!
//! A clock that does not follow real time ([`Clock::follows_real_time`]:
//! [`ManualClock`](super::ManualClock)) is used as it is, offset zero: it
//! cannot be related to a store's clock by a constant, and the test that
//! drives it is the one authority on time for every worker sharing it.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, TryLockError};
use std::time::{Duration, Instant};

use super::{Alarm, Clock, Timestamp};

/// How old (real time) a measured offset may get before it is measured
/// again.
pub const REMEASURE_AFTER: Duration = Duration::from_secs(30);

/// The largest rate at which a host's clock may drift from real time,
/// in parts per thousand (1%).
pub const MAX_DRIFT_PER_MILLE: i64 = 10;

/// How far the local clock may stray from the monotonic clock since the
/// last measurement, beyond the drift bound, before it counts as a jump
/// and the offset is measured again at once.
pub const JUMP_SLACK: Duration = Duration::from_millis(500);

/// The offset from a local clock to a store's clock, as measured
/// ([`Ckpt::clock_offset`](crate::Ckpt::clock_offset)).
///
/// Leases are judged by the store's clock (PostgreSQL's and Redis's server
/// time; SQLite and memory live on one host, whose clock is the store's):
/// a [`Ckpt`](crate::Ckpt) adds this offset to its clock. The assumption:
/// hosts' clocks may disagree by any amount, but each runs at real rate
/// within 1%. The offset is measured with one
/// round trip (the server's time minus the midpoint of the local readings
/// around it) on first use, again when older than 30 s of real time, and
/// at once when the local clock jumps against the monotonic clock; a
/// failed measurement keeps the last offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offset {
    /// Store time minus local time, in milliseconds.
    pub millis: i64,
    /// Half the round trip of the measurement: the store's clock read
    /// somewhere between the two local readings, so the true offset is
    /// within this of `millis`.
    pub uncertainty: Duration,
}

/// The offset from one round trip: `server` was read by the store at some
/// instant between the local readings `before` and `after`. The estimate is
/// `server` minus their midpoint, uncertain by half their distance.
/// `None` when `after` is earlier than `before` (the local clock stepped
/// back during the round trip; the measurement means nothing).
pub fn measure(before: Timestamp, server: Timestamp, after: Timestamp) -> Option<Offset> {
    let rtt = after.0.checked_sub(before.0).filter(|d| *d >= 0)?;
    let midpoint = before.0.saturating_add(rtt / 2);
    Some(Offset {
        millis: server.0.saturating_sub(midpoint),
        uncertainty: Duration::from_millis(((rtt + 1) / 2) as u64),
    })
}

/// True if and only if the local clock moved by `clock_ms` while the
/// monotonic clock moved by `mono_ms` and the difference is more than the
/// drift bound plus [`JUMP_SLACK`] allows: the clock was stepped.
pub fn jumped(clock_ms: i64, mono_ms: i64) -> bool {
    let drift = mono_ms.saturating_abs().saturating_mul(MAX_DRIFT_PER_MILLE) / 1000;
    let allowed = duration_ms(JUMP_SLACK).saturating_add(drift);
    clock_ms.saturating_sub(mono_ms).saturating_abs() > allowed
}

fn duration_ms(d: Duration) -> i64 {
    super::duration_millis(d)
}

/// Not measured yet (or failed before any success): measure on every use.
const UNKNOWN: u64 = 0;
/// The store has no clock of its own: never measure again.
const NEVER: u64 = u64::MAX;

/// A clock on the store's timeline: the local clock plus a measured
/// offset (see the [module docs](self)). Cheap to read: a few atomic
/// loads and a monotonic clock read besides the local clock, until a
/// measurement is due; then one thread measures while the others go on
/// with the old offset (before any offset is known, they wait for it).
#[derive(Debug)]
pub(crate) struct StoreTime {
    clock: Arc<dyn Clock>,
    /// The monotonic origin of `due` and `measured_mono`.
    origin: Instant,
    offset_ms: AtomicI64,
    uncertainty_ms: AtomicI64,
    /// Monotonic milliseconds (plus one, so that zero is [`UNKNOWN`]) at
    /// which the offset is due to be measured again; [`NEVER`] when the
    /// store has no clock.
    due: AtomicU64,
    /// The monotonic milliseconds and the local clock's reading at the
    /// last measurement, to see the clock jump.
    measured_mono: AtomicI64,
    measured_local: AtomicI64,
    /// Held by the one thread measuring.
    measuring: Mutex<()>,
}

impl StoreTime {
    /// Wraps `clock`; no offset measured yet.
    pub fn new(clock: Arc<dyn Clock>) -> StoreTime {
        let due = if clock.follows_real_time() {
            UNKNOWN
        } else {
            NEVER
        };
        StoreTime {
            clock,
            origin: Instant::now(),
            offset_ms: AtomicI64::new(0),
            uncertainty_ms: AtomicI64::new(0),
            due: AtomicU64::new(due),
            measured_mono: AtomicI64::new(0),
            measured_local: AtomicI64::new(0),
            measuring: Mutex::new(()),
        }
    }

    /// The offset in use, if one was measured (`None` for a store without
    /// a clock of its own, a clock not following real time, or before the
    /// first successful measurement).
    pub fn offset(&self) -> Option<Offset> {
        match self.due.load(Ordering::Acquire) {
            UNKNOWN | NEVER => None,
            _ => Some(Offset {
                millis: self.offset_ms.load(Ordering::Acquire),
                uncertainty: Duration::from_millis(
                    self.uncertainty_ms.load(Ordering::Acquire).max(0) as u64,
                ),
            }),
        }
    }

    /// The store's time now: the local clock plus the offset, measured
    /// first with `server_time` (the store's reading of its clock; `None`
    /// when it has none) if a measurement is due.
    pub fn now_with(
        &self,
        server_time: impl Fn() -> crate::error::Result<Option<Timestamp>>,
    ) -> Timestamp {
        let due = self.due.load(Ordering::Acquire);
        if due == NEVER {
            return Timestamp(self.clock.now().0.saturating_add(self.offset_ms()));
        }
        let mono = self.mono_ms();
        let local = self.clock.now();
        let stale = due == UNKNOWN
            || mono.saturating_add(1) as u64 >= due
            || jumped(
                local
                    .0
                    .saturating_sub(self.measured_local.load(Ordering::Acquire)),
                mono.saturating_sub(self.measured_mono.load(Ordering::Acquire)),
            );
        if !stale {
            return Timestamp(local.0.saturating_add(self.offset_ms()));
        }
        // Before any offset is known every caller waits for one; after,
        // one thread measures and the others use the old offset.
        // (Not from within an interrupt check: the thread may be measuring
        // already, in the call the check runs between the waits of.)
        let guard = if due == UNKNOWN && !crate::interrupt::in_check() {
            Some(self.measuring.lock().unwrap_or_else(|e| e.into_inner()))
        } else {
            match self.measuring.try_lock() {
                Ok(g) => Some(g),
                Err(TryLockError::Poisoned(e)) => Some(e.into_inner()),
                Err(TryLockError::WouldBlock) => None,
            }
        };
        let Some(_guard) = guard else {
            return Timestamp(local.0.saturating_add(self.offset_ms()));
        };
        // Another thread may have measured while this one waited.
        if self.due.load(Ordering::Acquire) != due {
            return Timestamp(self.clock.now().0.saturating_add(self.offset_ms()));
        }
        self.measure_with(server_time)
    }

    /// Measures the offset now (the caller holds `measuring`) and returns
    /// the store's time.
    fn measure_with(
        &self,
        server_time: impl Fn() -> crate::error::Result<Option<Timestamp>>,
    ) -> Timestamp {
        // The best of a few samples, as NTP does: the first may include a
        // wait for a connection (a pool checkout, a reconnect) before the
        // server read its clock, which the midpoint would misplace; the
        // sample with the shortest round trip is the most exact.
        let mut best: Option<(
            Timestamp,
            crate::error::Result<Option<Timestamp>>,
            Timestamp,
        )> = None;
        for _ in 0..SAMPLES {
            let before = self.clock.now();
            let server = server_time();
            let after = self.clock.now();
            let better = match (&best, &server) {
                (None, _) => true,
                (Some((b, Ok(Some(_)), a)), Ok(Some(_))) => {
                    after.0.saturating_sub(before.0) < a.0.saturating_sub(b.0)
                }
                (Some((_, Ok(Some(_)), _)), _) => false,
                (Some(_), _) => true,
            };
            let stop = !matches!(server, Ok(Some(_)));
            if better {
                best = Some((before, server, after));
            }
            if stop {
                break; // no clock, or it failed: no point asking again now
            }
        }
        let Some((before, server, after)) = best else {
            return self.clock.now();
        };
        let mono = self.mono_ms();
        match server {
            Ok(None) => {
                self.offset_ms.store(0, Ordering::Release);
                self.due.store(NEVER, Ordering::Release);
            }
            Ok(Some(server)) => match measure(before, server, after) {
                Some(offset) => {
                    self.offset_ms.store(offset.millis, Ordering::Release);
                    self.uncertainty_ms
                        .store(duration_ms(offset.uncertainty), Ordering::Release);
                    self.measured_mono.store(mono, Ordering::Release);
                    self.measured_local.store(after.0, Ordering::Release);
                    let next = mono
                        .saturating_add(duration_ms(REMEASURE_AFTER))
                        .saturating_add(1) as u64;
                    self.due.store(next.clamp(1, NEVER - 1), Ordering::Release);
                    tracing::debug!(
                        event = "clock_offset",
                        offset_ms = offset.millis,
                        uncertainty_ms = duration_ms(offset.uncertainty),
                    );
                }
                None => {
                    tracing::debug!(
                        event = "clock_offset_failed",
                        reason = "local clock stepped back"
                    );
                }
            },
            Err(e) => {
                tracing::debug!(event = "clock_offset_failed", error = %e);
            }
        }
        Timestamp(after.0.saturating_add(self.offset_ms()))
    }

    fn offset_ms(&self) -> i64 {
        self.offset_ms.load(Ordering::Acquire)
    }

    fn mono_ms(&self) -> i64 {
        duration_ms(self.origin.elapsed())
    }
}

/// Samples per measurement; the one with the shortest round trip is kept.
const SAMPLES: usize = 3;

/// The store's timeline without measuring: the local clock plus the
/// current offset; alarms are armed on the local clock at the local time
/// that corresponds to the store time asked for.
impl Clock for StoreTime {
    fn now(&self) -> Timestamp {
        Timestamp(self.clock.now().0.saturating_add(self.offset_ms()))
    }

    fn arm(&self, alarm: &Arc<Alarm>, flag: u8, at: Timestamp) {
        self.clock.arm(
            alarm,
            flag,
            Timestamp(at.0.saturating_sub(self.offset_ms())),
        );
    }

    fn follows_real_time(&self) -> bool {
        self.clock.follows_real_time()
    }
}

#[cfg(test)]
mod tests;
