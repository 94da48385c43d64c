use std::time::Duration;

use crate::time::Timestamp;

/// How failed items are retried.
///
/// The delay before retry `k` (after the k-th failed attempt) is
/// `min(base * factor^(k-1), max_delay)`, then scaled by a random factor in
/// `[1 - jitter, 1 + jitter]` so that items failing together do not retry
/// together.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included; after the last one the item is dead.
    pub max_attempts: u32,
    /// Delay before the first retry.
    pub base_delay: Duration,
    /// Growth per attempt.
    pub factor: f64,
    /// Upper bound on a delay (before jitter).
    pub max_delay: Duration,
    /// Fraction of the delay to randomise, 0.0 to 1.0.
    pub jitter: f64,
}

impl Default for RetryPolicy {
    /// 3 attempts, 5 s then 10 s (up to 5 min), ±20 % jitter.
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 3,
            base_delay: Duration::from_secs(5),
            factor: 2.0,
            max_delay: Duration::from_secs(300),
            jitter: 0.2,
        }
    }
}

/// What to do with an item whose attempt failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryDecision {
    /// Claimable again at this time.
    RetryAt(Timestamp),
    /// No attempts left: move it to the dead-letter list.
    Dead,
}

impl RetryPolicy {
    /// A policy suited to a terminal: `retries` retries after the first
    /// attempt, 1 s then 2 s, 4 s ... up to 30 s.
    pub fn interactive(retries: u32) -> Self {
        RetryPolicy {
            max_attempts: retries.saturating_add(1),
            base_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(30),
            ..RetryPolicy::default()
        }
    }

    /// The delay before the retry that follows failed attempt `attempt`
    /// (1-based), before jitter.
    /// Saturates at [`Duration::MAX`].
    pub fn delay(&self, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(1).min(63) as i32;
        let secs = self.base_delay.as_secs_f64() * self.factor.max(1.0).powi(exp);
        seconds(secs.min(self.max_delay.as_secs_f64()))
    }

    /// Decides the fate of an item whose attempt number `attempt` failed at
    /// `now`. `unit` is a random number in `[0, 1)` that drives the jitter
    /// (pass `rand::random()`; tests pass fixed values).
    pub fn decide(&self, attempt: u32, now: Timestamp, unit: f64) -> RetryDecision {
        if attempt >= self.max_attempts {
            return RetryDecision::Dead;
        }
        let jitter = self.jitter.clamp(0.0, 1.0);
        let scale = 1.0 - jitter + 2.0 * jitter * unit.clamp(0.0, 1.0);
        let delay = seconds(self.delay(attempt).as_secs_f64() * scale);
        RetryDecision::RetryAt(now.plus(delay))
    }
}

/// `secs` as a duration, saturating (a policy of absurd delays must not
/// panic the worker that records a failure).
fn seconds(secs: f64) -> Duration {
    Duration::try_from_secs_f64(secs).unwrap_or(Duration::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_caps() {
        let p = RetryPolicy {
            max_attempts: 10,
            base_delay: Duration::from_secs(1),
            factor: 2.0,
            max_delay: Duration::from_secs(5),
            jitter: 0.0,
        };
        let secs: Vec<u64> = (1..=5).map(|a| p.delay(a).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 5, 5]);
    }

    #[test]
    fn jitter_stays_in_bounds_and_last_attempt_is_dead() {
        let p = RetryPolicy::default();
        let now = Timestamp(1_000_000);
        assert_eq!(
            p.decide(1, now, 0.0),
            RetryDecision::RetryAt(Timestamp(1_004_000))
        );
        assert_eq!(
            p.decide(1, now, 1.0),
            RetryDecision::RetryAt(Timestamp(1_006_000))
        );
        assert_eq!(
            p.decide(2, now, 0.5),
            RetryDecision::RetryAt(Timestamp(1_010_000))
        );
        assert_eq!(p.decide(3, now, 0.5), RetryDecision::Dead);
        assert_eq!(
            RetryPolicy::interactive(0).decide(1, now, 0.5),
            RetryDecision::Dead
        );
        assert_eq!(RetryPolicy::interactive(2).max_attempts, 3);
    }

    #[test]
    fn absurd_delays_saturate_instead_of_panicking() {
        let p = RetryPolicy {
            max_attempts: 100,
            base_delay: Duration::MAX,
            max_delay: Duration::MAX,
            factor: 1e300,
            jitter: 1.0,
        };
        assert_eq!(p.delay(60), Duration::MAX);
        let now = Timestamp(1_000);
        assert_eq!(
            p.decide(60, now, 0.99),
            RetryDecision::RetryAt(Timestamp(i64::MAX))
        );
    }
}
