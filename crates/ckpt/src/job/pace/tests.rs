//! The paced `checkpoint()` and `is_due()` against the pure policy, with an
//! injected clock: every call must decide exactly what the policy and the
//! lease rule decide from the clock's time, whatever the item rate.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use crate::policy::CheckpointPolicy;
use crate::store::{self, Fault, FaultStore, JobStore, Op, OpenMode};
use crate::time::{Clock, ManualClock, Timestamp};
use crate::{Checkpoint, Ckpt, Job, JobOptions};

const T0: Timestamp = Timestamp(1_700_000_000_000);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

struct Fixture {
    clock: ManualClock,
    store: Arc<FaultStore>,
    job: Job,
}

fn fixture(policy: CheckpointPolicy, lease: Duration) -> Fixture {
    fixture_on(policy, lease, |clock| Arc::new(clock.clone()))
}

fn fixture_on(
    policy: CheckpointPolicy,
    lease: Duration,
    clock_for: impl Fn(&ManualClock) -> Arc<dyn Clock>,
) -> Fixture {
    let clock = ManualClock::new(T0);
    let memory = store::open("memory://", OpenMode::CreateIfMissing).unwrap();
    let store = Arc::new(FaultStore::new(memory));
    let ckpt = Ckpt::new(store.clone()).with_clock(clock_for(&clock));
    let job = ckpt
        .job_with("paced", JobOptions { lease, policy })
        .unwrap();
    Fixture { clock, store, job }
}

impl Fixture {
    fn saves(&self) -> u64 {
        self.store.calls(Op::SaveCheckpoint)
    }

    fn renewals(&self) -> u64 {
        self.store.calls(Op::RenewJob)
    }

    /// What the policy and the lease rule decide for a `checkpoint()` with
    /// `items` items done now: (save, renew).
    fn expected(&self, items: u64) -> (bool, bool) {
        let now = self.clock.now();
        let job = &self.job;
        let save = job.tracker.is_due(&job.options.policy, items, now);
        let renew = !save && now.since(job.last_renewal) >= job.options.lease / 3;
        (save, renew)
    }

    /// `is_due` and then `checkpoint` with `items` done, each checked
    /// against the policy; returns whether it saved.
    fn step(&mut self, items: u64) -> bool {
        let (save, renew) = self.expected(items);
        let (saves, renewals) = (self.saves(), self.renewals());
        let at = self.clock.now().millis() - T0.millis();
        assert_eq!(self.job.is_due(items), save, "is_due({items}) at +{at} ms");
        let saved = self
            .job
            .checkpoint(Checkpoint::new(json!(items), items))
            .unwrap();
        assert_eq!(saved, save, "checkpoint({items}) at +{at} ms");
        assert_eq!(self.saves(), saves + u64::from(save), "saves at +{at} ms");
        assert_eq!(
            self.renewals(),
            renewals + u64::from(renew),
            "renewal at +{at} ms"
        );
        saved
    }

    /// Pulls the measured cost of a save towards `cost`, as if the store
    /// were that slow: a save of `items` (the position just saved) at the
    /// same time, recorded only.
    fn pretend_saves_cost(&mut self, items: u64, cost: Duration) {
        let now = self.clock.now();
        self.job.tracker.record_save(items, now, cost);
        self.job.rearm();
    }
}

#[test]
fn adaptive_saves_every_max_interval_when_items_suddenly_slow_down() {
    // The default policy, with saves as slow as 10 s: the interval is
    // capped at max_interval (30 s) throughout.
    let mut f = fixture(CheckpointPolicy::default(), Duration::from_secs(60));
    // (when, the clock step just before it)
    let mut saves = Vec::new();
    let mut items = 0;
    let mut last_step = Duration::ZERO;
    let mut run = |f: &mut Fixture, steps: u64, per_step: u64, step: Duration| {
        for _ in 0..steps {
            for _ in 0..per_step {
                items += 1;
                if f.step(items) {
                    saves.push((f.clock.now(), last_step));
                    f.pretend_saves_cost(items, Duration::from_secs(10));
                }
            }
            f.clock.advance(step);
            last_step = step;
        }
    };
    run(&mut f, 9_000, 20, ms(10)); // 90 s at 2,000 items/s
    run(&mut f, 200, 1, Duration::from_secs(7)); // then 1 item every 7 s
    run(&mut f, 100, 1, ms(31_000)); // then slower than max_interval
    assert!(saves.len() > 100, "{} saves", saves.len());
    // The first save measures. Every later one comes at the first call at
    // least max_interval after the one before: the call before it came
    // less than that after, one clock step earlier.
    for pair in saves.windows(2) {
        let ((before, _), (at, step)) = (pair[0], pair[1]);
        let gap = at.since(before);
        let when = at.millis() - T0.millis();
        assert!(gap >= Duration::from_secs(30), "{gap:?} before +{when} ms");
        assert!(
            gap < Duration::from_secs(30) + step,
            "{gap:?} before +{when} ms"
        );
    }
}

#[test]
fn every_interval_saves_when_the_clock_passes_it_without_new_items() {
    let policy = CheckpointPolicy::Every {
        items: None,
        interval: Some(Duration::from_secs(10)),
    };
    let mut f = fixture(policy, Duration::from_secs(600));
    assert!(!f.step(5));
    f.clock.advance(ms(9_999));
    assert!(!f.step(5));
    f.clock.advance(ms(1));
    assert!(f.step(5), "10 s passed with no new item");
    assert!(!f.step(5));
    f.clock.advance(Duration::from_secs(10));
    assert!(f.job.is_due(5));
    assert_eq!(f.saves(), 1);
}

#[test]
fn the_lease_is_renewed_between_saves() {
    let policy = CheckpointPolicy::Every {
        items: Some(1_000_000),
        interval: None,
    };
    let lease = Duration::from_secs(3);
    let mut f = fixture(policy, lease);
    for items in 1..=100 {
        f.step(items);
        let left = f
            .store
            .get_job("paced")
            .unwrap()
            .unwrap()
            .lease_expires
            .unwrap();
        // Renewed at the first call a third of the lease after the last.
        assert!(
            left.since(f.clock.now()) >= lease * 2 / 3 - ms(300),
            "+{items}"
        );
        f.clock.advance(ms(300));
    }
    // A renewal at 1.2 s, 2.4 s, ... and no save.
    assert_eq!(f.renewals(), 24);
    assert_eq!(f.saves(), 0);
}

#[test]
fn every_items_saves_at_the_count_and_renews_between() {
    let policy = CheckpointPolicy::Every {
        items: Some(1_000),
        interval: None,
    };
    let mut f = fixture(policy, ms(1_500));
    for items in 1..=10_000 {
        f.step(items);
        f.clock.advance(ms(1));
    }
    assert_eq!(f.saves(), 10);
    // Half a second after each save, before the next one.
    assert_eq!(f.renewals(), 10);
}

/// A deterministic random walk through every kind of policy: items in
/// bursts or not at all, time in small and large steps and, now and then,
/// backwards; explicit flushes and heartbeats; a failed save. Every call
/// must agree with the pure policy, with the alarms of a `ManualClock` and
/// with a clock that raises every alarm at once (the trait's default).
#[test]
fn random_walks_agree_with_the_policy() {
    let policies = [
        CheckpointPolicy::Always,
        CheckpointPolicy::default(),
        CheckpointPolicy::Adaptive {
            target_overhead: 0.0001,
            max_interval: ms(2_000),
        },
        CheckpointPolicy::Every {
            items: Some(5),
            interval: None,
        },
        CheckpointPolicy::Every {
            items: None,
            interval: Some(ms(250)),
        },
        CheckpointPolicy::Every {
            items: Some(50),
            interval: Some(ms(1_000)),
        },
        CheckpointPolicy::Every {
            items: None,
            interval: None,
        },
    ];
    let plain = |clock: &ManualClock| -> Arc<dyn Clock> { Arc::new(Plain(clock.clone())) };
    let manual = |clock: &ManualClock| -> Arc<dyn Clock> { Arc::new(clock.clone()) };
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    let mut rand = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    for policy in &policies {
        for clock_for in [&manual as &dyn Fn(&ManualClock) -> Arc<dyn Clock>, &plain] {
            let mut f = fixture_on(policy.clone(), ms(900), clock_for);
            let mut items = 0;
            for _ in 0..3_000 {
                match rand(100) {
                    0 => f.job.flush().unwrap(),
                    1 => f.job.heartbeat().unwrap(),
                    2 => f
                        .clock
                        .set(Timestamp(f.clock.now().millis() - rand(500) as i64)),
                    3..=20 => f.clock.advance(ms(rand(700))),
                    21..=60 => f.clock.advance(ms(rand(5))),
                    _ => {}
                }
                items += rand(4);
                f.step(items);
            }
        }
    }
}

#[test]
fn a_failed_save_is_retried_at_the_next_call() {
    let memory = store::open("memory://", OpenMode::CreateIfMissing).unwrap();
    let store = Arc::new(FaultStore::new(memory).inject(Op::SaveCheckpoint, 2, Fault::Fail));
    let clock = ManualClock::new(T0);
    let ckpt = Ckpt::new(store.clone()).with_clock(Arc::new(clock.clone()));
    let policy = CheckpointPolicy::Every {
        items: None,
        interval: Some(Duration::from_secs(1)),
    };
    let options = JobOptions {
        policy,
        lease: Duration::from_secs(60),
    };
    let mut job = ckpt.job_with("retried", options).unwrap();
    assert!(!job.checkpoint(Checkpoint::new(json!(1), 1)).unwrap());
    clock.advance(Duration::from_secs(1));
    assert!(job.checkpoint(Checkpoint::new(json!(2), 2)).unwrap());
    clock.advance(Duration::from_secs(1));
    assert!(job.checkpoint(Checkpoint::new(json!(3), 3)).is_err());
    assert!(job.is_due(4), "still due after the failure");
    assert!(job.checkpoint(Checkpoint::new(json!(4), 4)).unwrap());
    assert!(!job.checkpoint(Checkpoint::new(json!(5), 5)).unwrap());
}

#[test]
fn system_clock_alarms_bring_a_save_due() {
    let store = store::open("memory://", OpenMode::CreateIfMissing).unwrap();
    let policy = CheckpointPolicy::Every {
        items: None,
        interval: Some(ms(50)),
    };
    let options = JobOptions {
        policy,
        lease: Duration::from_secs(60),
    };
    let mut job = Ckpt::new(store).job_with("real-time", options).unwrap();
    let started = std::time::Instant::now();
    assert!(!job.checkpoint(Checkpoint::new(json!(1), 1)).unwrap());
    while !job.is_due(1) {
        assert!(started.elapsed() < Duration::from_secs(30), "never due");
        std::thread::sleep(ms(5));
    }
    assert!(started.elapsed() >= ms(49));
    assert!(job.checkpoint(Checkpoint::new(json!(1), 1)).unwrap());
    assert!(!job.is_due(1), "due again at once after the save");
}

/// A clock with the default `arm`, which raises every alarm at once.
#[derive(Debug)]
struct Plain(ManualClock);

impl Clock for Plain {
    fn now(&self) -> Timestamp {
        self.0.now()
    }
}

/// The no-save path's shortcuts keep exactly the latest checkpoint, whatever
/// it owns. That they free everything they replace is for a leak checker:
/// `valgrind --leak-check=full target/debug/deps/ckpt-… store_pending`
/// reported nothing definitely or indirectly lost.
#[test]
fn store_pending_keeps_the_latest_checkpoint() {
    let plain = |n: u64| Checkpoint::new(json!(n), n);
    let owning = |n: u64| Checkpoint::new(json!({ "page": n }), n);
    let staged = |n: u64| Checkpoint::new(json!(n), n).with_stage("load");
    let with_state = |n: u64| Checkpoint::new(json!(n), n).with_state(json!([n]));
    let sequence = [
        plain(1),
        plain(2),
        owning(3),
        owning(4),
        plain(5),
        staged(6),
        plain(7),
        with_state(8),
        with_state(9),
        Checkpoint::new(json!(null), 10),
        Checkpoint::new(json!(true), 11),
        Checkpoint::new(json!(1.5), 12),
        Checkpoint::new(json!("key"), 13),
        plain(14),
    ];
    for empty_every in [1, 2, 3, usize::MAX] {
        let (mut pending, mut is_plain) = (None, true);
        for (n, checkpoint) in sequence.iter().enumerate() {
            super::store_pending(&mut pending, &mut is_plain, checkpoint.clone());
            assert_eq!(pending.as_ref(), Some(checkpoint), "#{n}");
            let owns = checkpoint.stage.is_some()
                || checkpoint.state.is_some()
                || matches!(
                    checkpoint.cursor,
                    serde_json::Value::String(_)
                        | serde_json::Value::Array(_)
                        | serde_json::Value::Object(_)
                );
            assert_eq!(is_plain, !owns, "#{n}");
            // As a save does (and `checkpoint_with_*`, which leave the flag).
            if n % empty_every == 0 {
                pending = None;
            }
        }
    }
}

/// A manual clock that counts how often it is read.
#[derive(Debug)]
struct Counted(ManualClock, Arc<std::sync::atomic::AtomicU64>);

impl Clock for Counted {
    fn now(&self) -> Timestamp {
        self.1.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.0.now()
    }
    fn arm(&self, alarm: &Arc<crate::time::Alarm>, flag: u8, at: Timestamp) {
        self.0.arm(alarm, flag, at);
    }
}

/// The README's promise: while no save or renewal is due, `checkpoint()`
/// and `is_due()` neither read the clock nor call the store; the first call
/// after a deadline does both.
#[test]
fn the_no_save_path_reads_neither_the_clock_nor_the_store() {
    let reads = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = reads.clone();
    let mut f = fixture_on(CheckpointPolicy::default(), Duration::from_secs(60), |c| {
        Arc::new(Counted(c.clone(), counter.clone()))
    });
    // The first call saves, to measure what a save costs.
    assert!(f.job.checkpoint(Checkpoint::new(json!(0), 0)).unwrap());
    let store_calls = |f: &Fixture| {
        [Op::SaveCheckpoint, Op::RenewJob]
            .iter()
            .map(|op| f.store.calls(*op))
            .sum::<u64>()
    };
    let (clock_reads, calls) = (
        reads.load(std::sync::atomic::Ordering::SeqCst),
        store_calls(&f),
    );
    for i in 1..=10_000u64 {
        assert!(!f.job.is_due(i));
        assert!(!f.job.checkpoint(Checkpoint::new(json!(i), i)).unwrap());
    }
    assert_eq!(
        reads.load(std::sync::atomic::Ordering::SeqCst),
        clock_reads,
        "no clock read"
    );
    assert_eq!(store_calls(&f), calls, "no store call");
    // Past the deadline (at most max_interval), the next call saves.
    f.clock.advance(Duration::from_secs(30));
    assert!(f.job.is_due(10_001));
    assert!(f
        .job
        .checkpoint(Checkpoint::new(json!(10_001), 10_001))
        .unwrap());
    assert!(reads.load(std::sync::atomic::Ordering::SeqCst) > clock_reads);
    assert_eq!(store_calls(&f), calls + 1);
    assert_eq!(
        f.store
            .get_job("paced")
            .unwrap()
            .unwrap()
            .checkpoint
            .unwrap()
            .cursor,
        json!(10_001)
    );
}
