//! Self-fencing: when a worker must stop an item's work because it can no
//! longer prove that the item's lease is still its own.
//!
//! A lease written at time `t` (on the store's clock) lasts until `t +
//! lease`; from then on another worker may take the item. The worker that
//! wrote it knows only when it *sent* the write (on its own monotonic
//! clock), and that the store's `t` is no earlier. So it must have stopped
//! the work before `sent + lease`, less what the two clocks may disagree
//! on over that span. The timings here put a safety margin of a fifth of
//! the lease before that instant, and a kill grace (SIGTERM, then SIGKILL)
//! before the margin:
//!
//! ```text
//! sent ──renew──renew──────── term ──kill── stop_by ····margin···· sent + lease
//!       every lease/3         SIGTERM SIGKILL  work gone     another worker may claim
//! ```
//!
//! The margin covers the assumption this rests on: each host's clock runs
//! at real rate within [`CLOCK_RATE_BOUND_PERCENT`] (NTP-disciplined
//! quartz is within 0.01 %), which over one lease costs at most 2 % of it
//! between two hosts; the rest absorbs scheduling delays and the
//! uncertainty of the measured offset to the store's clock. Clocks need not
//! agree (leases are judged on the store's clock), only run at about the
//! same rate.

use std::time::Duration;

/// How far a host's clock may run faster or slower than real time, in
/// percent, for the lease arithmetic to hold.
pub const CLOCK_RATE_BOUND_PERCENT: u32 = 1;

/// When a lease holder renews, and when it must stop work it can no longer
/// prove it owns. All spans count from the moment the last write that
/// confirmed the lease was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FenceTimings {
    /// The lease length.
    pub lease: Duration,
    /// Renew this long after the last confirmation.
    pub renew_after: Duration,
    /// Send SIGTERM (tell the work to stop) this long after it.
    pub term_after: Duration,
    /// The work must be gone (SIGKILL) this long after it.
    pub stop_by: Duration,
}

impl FenceTimings {
    /// The timings for a lease of `lease`.
    pub fn for_lease(lease: Duration) -> FenceTimings {
        let margin = lease / 5;
        let stop_by = lease - margin;
        let grace = Self::grace_for(lease);
        FenceTimings {
            lease,
            renew_after: lease / 3,
            term_after: stop_by - grace,
            stop_by,
        }
    }

    /// Between SIGTERM and SIGKILL: a tenth of the lease, within 100 ms
    /// and 2 s.
    fn grace_for(lease: Duration) -> Duration {
        (lease / 10)
            .clamp(Duration::from_millis(100), Duration::from_secs(2))
            .min(lease / 5)
    }

    /// Between SIGTERM and SIGKILL.
    pub fn kill_grace(&self) -> Duration {
        self.stop_by - self.term_after
    }

    /// Whether work whose lease was last confirmed `since` ago must be told
    /// to stop now.
    pub fn must_stop(&self, since: Duration) -> bool {
        since >= self.term_after
    }

    /// How long until work confirmed `since` ago must be told to stop
    /// (zero when it must stop now).
    pub fn until_stop(&self, since: Duration) -> Duration {
        self.term_after.saturating_sub(since)
    }
}

/// Why a worker stopped an item's work, for the `lease_lost` event and the
/// `reason` label of `ckpt_lease_lost_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FenceReason {
    /// A write was refused: another worker holds the item now, or an
    /// operator reset it.
    TakenOver,
    /// No write confirmed the lease in time (the store was slow or
    /// unreachable, or this process was paused).
    Unconfirmed,
    /// The worker's liveness session with the store ended and was not
    /// re-established and confirmed in time.
    SessionLost,
}

impl FenceReason {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            FenceReason::TakenOver => "taken_over",
            FenceReason::Unconfirmed => "unconfirmed",
            FenceReason::SessionLost => "session_lost",
        }
    }
}

impl std::fmt::Display for FenceReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn work_is_gone_a_fifth_of_the_lease_before_it_lapses() {
        for lease in [MS(500), MS(2000), MS(30_000), MS(600_000)] {
            let t = FenceTimings::for_lease(lease);
            assert_eq!(t.stop_by, lease - lease / 5, "{lease:?}");
            // 2 % of the lease is what two clocks at the rate bound can
            // drift apart over it: the margin is ten times that.
            let drift = lease * 2 * CLOCK_RATE_BOUND_PERCENT / 100;
            assert!(lease - t.stop_by >= drift * 10, "{lease:?}");
            assert!(
                t.renew_after < t.term_after,
                "{lease:?}: renew before fencing"
            );
            assert!(
                t.term_after < t.stop_by,
                "{lease:?}: a grace between TERM and KILL"
            );
        }
    }

    #[test]
    fn kill_grace_is_bounded() {
        assert_eq!(FenceTimings::for_lease(MS(2000)).kill_grace(), MS(200));
        assert_eq!(FenceTimings::for_lease(MS(30_000)).kill_grace(), MS(2000));
        assert_eq!(FenceTimings::for_lease(MS(600_000)).kill_grace(), MS(2000));
        // A very short lease keeps the order renew < term < stop_by.
        let t = FenceTimings::for_lease(MS(300));
        assert_eq!(t.kill_grace(), MS(60));
        assert!(t.renew_after < t.term_after);
    }

    #[test]
    fn must_stop_exactly_at_term_after() {
        let t = FenceTimings::for_lease(MS(2000));
        assert_eq!(t.term_after, MS(1400));
        assert!(!t.must_stop(MS(1399)));
        assert!(t.must_stop(MS(1400)));
        assert_eq!(t.until_stop(MS(400)), MS(1000));
        assert_eq!(t.until_stop(MS(5000)), Duration::ZERO);
    }

    #[test]
    fn renewals_leave_two_tries_before_fencing() {
        // Renewal at lease/3 fails: the next try at 2·lease/3 still comes
        // before the work must be told to stop, for leases of a second or
        // more.
        for lease in [MS(1000), MS(2000), MS(30_000)] {
            let t = FenceTimings::for_lease(lease);
            assert!(t.renew_after * 2 < t.term_after, "{lease:?}");
        }
    }
}
