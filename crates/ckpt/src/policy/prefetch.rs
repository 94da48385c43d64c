//! How many items a runner keeps claimed ahead of its workers.
//!
//! Claiming ahead hides the store's round trip: a worker that finishes an
//! item finds the next one ready, and the outcomes of many items share one
//! commit. But an item claimed ahead is held: another run on the same job
//! (another process, another pod) cannot take it, and waits while this one
//! works through its backlog. With items of minutes, a fixed reserve of 8
//! leaves the other runs idle at the end of the job for 8 items' time.
//!
//! So the reserve follows the work: enough items to keep the workers busy
//! for [`AHEAD`] or through several of the runner's rounds (commit and
//! claim), whichever is longer, given how long an attempt takes; at least
//! a batch (a worker that finishes starts the next at once) and at most
//! the configured prefetch. Fast items get the whole prefetch; slow ones a
//! batch.

use std::time::Duration;

/// Rounds of the runner that the reserve covers: a margin for a slow
/// commit, a wake-up, a busy store; the time they take is counted up to
/// [`ROUNDS_AT_MOST`].
pub const ROUNDS_COVERED: u32 = 8;

/// The most round time the reserve covers: rounds slowed by another run's
/// writes (two runs on one SQLite store wait for each other's lock) must
/// not grow the reserve of slow items back to the whole prefetch.
pub const ROUNDS_AT_MOST: Duration = Duration::from_millis(400);

/// The least work the reserve covers. Short rounds alone would shrink the
/// reserve of tiny items, and with it the outcomes one commit carries
/// (`ckpt run` of `true` committed 7 % more often); holding this much
/// work ahead costs another run on the job nothing it would notice.
pub const AHEAD: Duration = Duration::from_millis(100);

/// Weight of the newest measurement in the running averages.
const WEIGHT: f64 = 0.3;

/// Items to keep claimed ahead of `running` items at once, between `min`
/// and `max` (`min` wins if it is larger): as many as the workers finish in
/// [`AHEAD`] or in [`ROUNDS_COVERED`] rounds of `round` (at most
/// [`ROUNDS_AT_MOST`]), whichever is longer, when an attempt of a whole batch takes `attempt`. `min` while no
/// attempt has been timed.
pub fn reserve(
    min: usize,
    max: usize,
    running: usize,
    attempt: Option<Duration>,
    round: Duration,
) -> usize {
    let Some(attempt) = attempt else {
        return min;
    };
    let covered = AHEAD.max((round * ROUNDS_COVERED).min(ROUNDS_AT_MOST));
    let wanted = (running as f64 * covered.as_secs_f64() / attempt.as_secs_f64()).ceil();
    // `as` saturates a float (infinity for an instant attempt; NaN is 0):
    // nothing overflows.
    (wanted as usize).min(max).max(min)
}

/// What [`reserve`] is computed from: how long an attempt takes and how
/// long a round's store work takes, each a running average.
#[derive(Debug, Clone, Default)]
pub struct Throughput {
    attempt: Option<Duration>,
    round: Duration,
}

impl Throughput {
    /// Counts the attempts that ended in one round, which ran for `took`
    /// on average (every item of a batch ran for the batch's time).
    pub fn ended(&mut self, took: Duration) {
        self.attempt = Some(average(self.attempt, took));
    }

    /// Counts one round's store work (commit and claim), which took `took`.
    pub fn round(&mut self, took: Duration) {
        self.round = average(Some(self.round).filter(|r| !r.is_zero()), took);
    }

    /// [`reserve`] for `running` items at once, from what was measured.
    pub fn reserve(&self, min: usize, max: usize, running: usize) -> usize {
        reserve(min, max, running, self.attempt, self.round)
    }
}

fn average(old: Option<Duration>, new: Duration) -> Duration {
    match old {
        None => new,
        Some(old) => old.mul_f64(1.0 - WEIGHT) + new.mul_f64(WEIGHT),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn fast_items_get_the_whole_prefetch_and_slow_ones_a_batch() {
        // `true` by the hundred on 4 workers: a 3 ms batch, 5 ms rounds.
        assert_eq!(reserve(100, 800, 400, Some(3 * MS), 5 * MS), 800);
        // A millisecond item on 4 workers, 2 ms rounds.
        assert_eq!(reserve(1, 8, 4, Some(MS), 2 * MS), 8);
        // Items of a second on 4 workers: a batch in reserve.
        assert_eq!(reserve(1, 8, 4, Some(1000 * MS), 2 * MS), 1);
        // In between: what the workers finish in 100 ms (4 workers, 40 ms
        // items: 10)...
        assert_eq!(reserve(1, 100, 4, Some(40 * MS), 5 * MS), 10);
        // ... or in 8 rounds of a slow store (25 ms: 200 ms, so 20)...
        assert_eq!(reserve(1, 100, 4, Some(40 * MS), 25 * MS), 20);
        // ... counted up to 400 ms: 1 s items with 200 ms rounds get 2.
        assert_eq!(reserve(1, 100, 4, Some(1000 * MS), 200 * MS), 2);
    }

    #[test]
    fn untimed_attempts_give_the_minimum_and_bounds_hold() {
        assert_eq!(reserve(3, 8, 4, None, 5 * MS), 3);
        assert_eq!(reserve(5, 2, 4, Some(MS), MS), 5, "min wins over max");
        assert_eq!(reserve(1, 8, 4, Some(Duration::ZERO), MS), 8);
        assert_eq!(reserve(1, 8, 4, Some(Duration::MAX), MS), 1);
        assert_eq!(reserve(0, 8, 0, Some(MS), MS), 0, "nothing running");
    }

    #[test]
    fn throughput_averages_attempts_and_rounds() {
        let mut t = Throughput::default();
        assert_eq!(t.reserve(1, 100, 4), 1, "nothing timed yet");
        t.round(10 * MS);
        assert_eq!(t.reserve(1, 100, 4), 1, "still no attempt timed");
        t.ended(100 * MS);
        // 4 × max(100, 8 × 10) / 100 = 4.
        assert_eq!(t.reserve(1, 100, 4), 4);
        // The averages move 30 % of the way to each new measurement.
        t.ended(200 * MS);
        assert_eq!(t.attempt, Some(130 * MS));
        t.round(20 * MS);
        assert_eq!(t.round, 13 * MS);
        // 4 × max(100, 8 × 13) / 130 = 3.2: 4.
        assert_eq!(t.reserve(1, 100, 4), 4);
    }
}
