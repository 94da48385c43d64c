use std::time::Duration;

use crate::time::Timestamp;

/// When a `checkpoint()` call is persisted.
///
/// Every policy also persists on an explicit flush and on completion.
#[derive(Debug, Clone, PartialEq)]
pub enum CheckpointPolicy {
    /// Persist every call.
    Always,
    /// Persist when `items` items or `interval` have passed since the last
    /// save, whichever comes first (`None` disables that trigger).
    Every {
        /// Items between saves.
        items: Option<u64>,
        /// Time between saves.
        interval: Option<Duration>,
    },
    /// Measure the cost of each save and space saves so that they take at
    /// most `target_overhead` of the run time (0.01 = 1 %), never further
    /// apart than `max_interval`.
    Adaptive {
        /// Largest share of run time spent saving, e.g. 0.01.
        target_overhead: f64,
        /// Upper bound on the time between saves.
        max_interval: Duration,
    },
}

impl Default for CheckpointPolicy {
    /// Adaptive: at most 1 % overhead, at least one save every 30 s.
    fn default() -> Self {
        CheckpointPolicy::Adaptive {
            target_overhead: 0.01,
            max_interval: Duration::from_secs(30),
        }
    }
}

impl CheckpointPolicy {
    /// `Ok` if the policy can be followed: an adaptive target is a share
    /// of the run time, above 0 and at most 1.
    pub fn check(&self) -> crate::Result<()> {
        match self {
            CheckpointPolicy::Adaptive {
                target_overhead, ..
            } if !(*target_overhead > 0.0 && *target_overhead <= 1.0) => {
                Err(crate::Error::InvalidInput(format!(
                    "target_overhead must be a share of the run time above 0 and at most 1 (0.01 = 1 %), not {target_overhead}"
                )))
            }
            _ => Ok(()),
        }
    }
}

/// The running state a policy decides from: when the last save happened,
/// how many items since, and the measured cost of a save.
#[derive(Debug, Clone, PartialEq)]
pub struct IntervalTracker {
    last_save: Option<Timestamp>,
    items_at_last_save: u64,
    /// Exponentially weighted mean cost of a save, in microseconds.
    mean_cost_us: Option<f64>,
}

impl IntervalTracker {
    /// A tracker that has seen no save yet.
    pub fn new() -> Self {
        IntervalTracker {
            last_save: None,
            items_at_last_save: 0,
            mean_cost_us: None,
        }
    }

    /// The interval the adaptive policy currently asks for:
    /// `cost * (1 - target) / target`, capped at `max_interval`.
    pub fn adaptive_interval(&self, target_overhead: f64, max_interval: Duration) -> Duration {
        let Some(cost_us) = self.mean_cost_us else {
            return Duration::ZERO;
        };
        let target = target_overhead.clamp(1e-6, 1.0);
        let us = cost_us * (1.0 - target) / target;
        // A NaN target (refused by `check`, but a tracker may be driven
        // directly) is not worth a panic: the cap holds.
        Duration::try_from_secs_f64(us / 1e6).map_or(max_interval, |d| d.min(max_interval))
    }

    /// A tracker for a job acquired at `now` with `items_processed` items
    /// already done: the fixed policies count from there, so the first save
    /// of `Every { items: 500 }` comes after 500 more items. The adaptive
    /// policy still saves on the first call, to measure the cost of a save.
    pub fn starting_at(now: Timestamp, items_processed: u64) -> Self {
        IntervalTracker {
            last_save: Some(now),
            items_at_last_save: items_processed,
            mean_cost_us: None,
        }
    }

    /// True if and only if a save should happen now, with `items_processed`
    /// items done in all.
    pub fn is_due(&self, policy: &CheckpointPolicy, items_processed: u64, now: Timestamp) -> bool {
        let Some(last) = self.last_save else {
            return true;
        };
        if self.mean_cost_us.is_none() && matches!(policy, CheckpointPolicy::Adaptive { .. }) {
            return true;
        }
        let elapsed = now.since(last);
        let items = items_processed.saturating_sub(self.items_at_last_save);
        match policy {
            CheckpointPolicy::Always => true,
            CheckpointPolicy::Every { items: n, interval } => {
                n.is_some_and(|n| items >= n) || interval.is_some_and(|t| elapsed >= t)
            }
            CheckpointPolicy::Adaptive {
                target_overhead,
                max_interval,
            } => elapsed >= self.adaptive_interval(*target_overhead, *max_interval),
        }
    }

    /// When [`is_due`](IntervalTracker::is_due) next turns true if nothing
    /// is saved meanwhile: the first item count, and the first time, at
    /// which it does. For every `items_processed` and every `now` from the
    /// last save on, `is_due` is true if and only if `items_processed >=
    /// items` or `now >= at` (at the `u64::MAX` and `i64::MAX` edges it
    /// may say due where `is_due` does not, never the reverse). A caller
    /// can thus wait for the count or an alarm and consult `is_due` only
    /// then, without missing a save.
    pub fn next_due(&self, policy: &CheckpointPolicy) -> NextDue {
        let Some(last) = self.last_save else {
            return NextDue::NOW;
        };
        let after = |interval: Duration| last.first_after(interval).ok_or(NextDue::NOW);
        let next = match policy {
            CheckpointPolicy::Always => Err(NextDue::NOW),
            CheckpointPolicy::Adaptive { .. } if self.mean_cost_us.is_none() => Err(NextDue::NOW),
            CheckpointPolicy::Every { items: Some(0), .. } => Err(NextDue::NOW),
            CheckpointPolicy::Every { items, interval } => {
                interval.map(after).transpose().map(|at| NextDue {
                    items: items.map_or(u64::MAX, |n| self.items_at_last_save.saturating_add(n)),
                    at,
                })
            }
            CheckpointPolicy::Adaptive {
                target_overhead,
                max_interval,
            } => after(self.adaptive_interval(*target_overhead, *max_interval)).map(|at| NextDue {
                items: u64::MAX,
                at: Some(at),
            }),
        };
        next.unwrap_or_else(|now| now)
    }

    /// Records a save that finished at `now` and took `cost`.
    pub fn record_save(&mut self, items_processed: u64, now: Timestamp, cost: Duration) {
        const WEIGHT: f64 = 0.3;
        let us = cost.as_secs_f64() * 1e6;
        self.mean_cost_us = Some(match self.mean_cost_us {
            None => us,
            Some(mean) => mean + WEIGHT * (us - mean),
        });
        self.last_save = Some(now);
        self.items_at_last_save = items_processed;
    }

    /// Mean cost of a save so far.
    pub fn mean_cost(&self) -> Option<Duration> {
        self.mean_cost_us
            .map(|us| Duration::from_secs_f64(us / 1e6))
    }
}

/// When a policy next asks for a save: see [`IntervalTracker::next_due`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NextDue {
    /// Due once `items_processed` reaches this; `0` is at every call,
    /// `u64::MAX` never by count.
    pub items: u64,
    /// Due once the clock shows this; `None` is never by time.
    pub at: Option<Timestamp>,
}

impl NextDue {
    /// Due at every call, whatever the count and the time.
    pub const NOW: NextDue = NextDue { items: 0, at: None };
}

impl Default for IntervalTracker {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: Timestamp = Timestamp(1_000_000);

    #[test]
    fn first_call_is_always_due() {
        let t = IntervalTracker::new();
        for p in [
            CheckpointPolicy::Always,
            CheckpointPolicy::default(),
            CheckpointPolicy::Every {
                items: Some(10),
                interval: None,
            },
        ] {
            assert!(t.is_due(&p, 0, T0));
        }
    }

    #[test]
    fn fixed_policies_count_from_the_acquire() {
        let p = CheckpointPolicy::Every {
            items: Some(500),
            interval: None,
        };
        let t = IntervalTracker::starting_at(T0, 7_000);
        assert!(!t.is_due(&p, 7_001, T0));
        assert!(!t.is_due(&p, 7_499, T0));
        assert!(t.is_due(&p, 7_500, T0));
        assert!(
            t.is_due(&CheckpointPolicy::default(), 7_001, T0),
            "adaptive measures first"
        );
    }

    #[test]
    fn every_n_items_or_t_whichever_first() {
        let p = CheckpointPolicy::Every {
            items: Some(100),
            interval: Some(Duration::from_secs(10)),
        };
        let mut t = IntervalTracker::new();
        t.record_save(0, T0, Duration::from_millis(1));
        assert!(!t.is_due(&p, 99, T0.plus(Duration::from_secs(9))));
        assert!(t.is_due(&p, 100, T0.plus(Duration::from_secs(1))));
        assert!(t.is_due(&p, 5, T0.plus(Duration::from_secs(10))));
        t.record_save(
            100,
            T0.plus(Duration::from_secs(1)),
            Duration::from_millis(1),
        );
        assert!(!t.is_due(&p, 150, T0.plus(Duration::from_secs(2))));
    }

    #[test]
    fn adaptive_keeps_overhead_under_target() {
        let p = CheckpointPolicy::Adaptive {
            target_overhead: 0.01,
            max_interval: Duration::from_secs(30),
        };
        let mut t = IntervalTracker::new();
        // A 2 ms save at 1 % overhead asks for 198 ms between saves.
        t.record_save(0, T0, Duration::from_millis(2));
        assert_eq!(
            t.adaptive_interval(0.01, Duration::from_secs(30)),
            Duration::from_millis(198)
        );
        assert!(!t.is_due(&p, 1000, T0.plus(Duration::from_millis(197))));
        assert!(t.is_due(&p, 1000, T0.plus(Duration::from_millis(198))));
        // Overhead of saving on that schedule: cost / (interval + cost) <= 1 %.
        let interval = t
            .adaptive_interval(0.01, Duration::from_secs(30))
            .as_secs_f64();
        assert!(0.002 / (interval + 0.002) <= 0.01 + 1e-9);
    }

    #[test]
    fn an_adaptive_target_outside_0_to_1_is_refused_and_never_a_panic() {
        for bad in [f64::NAN, 0.0, -0.5, 1.5, f64::INFINITY] {
            let p = CheckpointPolicy::Adaptive {
                target_overhead: bad,
                max_interval: Duration::from_secs(30),
            };
            let e = p.check().unwrap_err();
            assert!(matches!(e, crate::Error::InvalidInput(_)), "{bad}: {e:?}");
            // Driven directly anyway: the cap, not a panic.
            let mut t = IntervalTracker::new();
            t.record_save(0, T0, Duration::from_millis(2));
            assert!(t.adaptive_interval(bad, Duration::from_secs(30)) <= Duration::from_secs(30));
        }
        for good in [1e-6, 0.01, 1.0] {
            let p = CheckpointPolicy::Adaptive {
                target_overhead: good,
                max_interval: Duration::from_secs(30),
            };
            assert!(p.check().is_ok(), "{good}");
        }
        assert!(CheckpointPolicy::Always.check().is_ok());
    }

    /// `next_due` against `is_due` at every count and time around the
    /// deadlines, for every kind of policy, before and after saves.
    #[test]
    fn next_due_agrees_with_is_due() {
        let policies = [
            CheckpointPolicy::Always,
            CheckpointPolicy::default(),
            CheckpointPolicy::Adaptive {
                target_overhead: 1.0,
                max_interval: Duration::from_secs(30),
            },
            CheckpointPolicy::Every {
                items: Some(100),
                interval: Some(Duration::from_micros(10_500)),
            },
            CheckpointPolicy::Every {
                items: Some(0),
                interval: None,
            },
            CheckpointPolicy::Every {
                items: None,
                interval: Some(Duration::ZERO),
            },
            CheckpointPolicy::Every {
                items: None,
                interval: Some(Duration::from_secs(1)),
            },
            CheckpointPolicy::Every {
                items: Some(7),
                interval: None,
            },
        ];
        let mut trackers = vec![IntervalTracker::new(), IntervalTracker::starting_at(T0, 50)];
        let mut saved = IntervalTracker::starting_at(T0, 50);
        saved.record_save(60, T0, Duration::from_micros(123));
        trackers.push(saved.clone());
        saved.record_save(300, T0, Duration::from_secs(5));
        trackers.push(saved);
        for p in &policies {
            for t in &trackers {
                let next = t.next_due(p);
                for items in (0..400).chain([u64::MAX - 1]) {
                    for ms in (-20..1_100).chain([30_000, 30_001]) {
                        let now = Timestamp(T0.0 + ms);
                        let predicted = items >= next.items || next.at.is_some_and(|at| now >= at);
                        assert_eq!(
                            t.is_due(p, items, now),
                            predicted,
                            "{p:?} {t:?} items {items} at {ms} ms: {next:?}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn adaptive_interval_is_capped_and_tracks_cost() {
        let mut t = IntervalTracker::new();
        t.record_save(0, T0, Duration::from_secs(2));
        // 2 s saves would want 198 s; the cap wins.
        assert_eq!(
            t.adaptive_interval(0.01, Duration::from_secs(30)),
            Duration::from_secs(30)
        );
        // Cheaper saves pull the mean, and so the interval, down.
        for _ in 0..40 {
            t.record_save(0, T0, Duration::from_micros(100));
        }
        let i = t.adaptive_interval(0.01, Duration::from_secs(30));
        assert!(i < Duration::from_millis(20), "{i:?}");
    }
}
