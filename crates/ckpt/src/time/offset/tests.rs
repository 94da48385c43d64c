use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{jumped, measure, Offset, StoreTime, SAMPLES};
use crate::error::{Error, Result};
use crate::time::{Alarm, Clock, ManualClock, SystemClock, Timestamp};

fn ts(ms: i64) -> Timestamp {
    Timestamp(ms)
}

#[test]
fn the_offset_is_the_server_time_minus_the_midpoint() {
    assert_eq!(
        measure(ts(1_000), ts(46_010), ts(1_020)),
        Some(Offset {
            millis: 45_000,
            uncertainty: Duration::from_millis(10)
        })
    );
    // Behind, and an odd round trip: the uncertainty rounds up.
    assert_eq!(
        measure(ts(100_000), ts(55_000), ts(100_001)),
        Some(Offset {
            millis: -45_000,
            uncertainty: Duration::from_millis(1)
        })
    );
    // Same clock, instant round trip.
    assert_eq!(
        measure(ts(7), ts(7), ts(7)),
        Some(Offset {
            millis: 0,
            uncertainty: Duration::ZERO
        })
    );
}

#[test]
fn a_clock_stepping_back_during_the_round_trip_measures_nothing() {
    assert_eq!(measure(ts(1_000), ts(1_000), ts(999)), None);
    assert_eq!(measure(ts(i64::MAX), ts(0), ts(i64::MIN)), None);
}

#[test]
fn extreme_readings_saturate_instead_of_overflowing() {
    let o = measure(ts(i64::MIN), ts(i64::MAX), ts(i64::MIN)).unwrap();
    assert_eq!(o.millis, i64::MAX);
    let o = measure(ts(i64::MAX), ts(i64::MIN), ts(i64::MAX)).unwrap();
    assert_eq!(o.millis, i64::MIN);
}

#[test]
fn a_jump_is_more_than_the_drift_bound_plus_the_slack() {
    assert!(!jumped(1_000, 1_000));
    assert!(!jumped(500, 0), "within the slack");
    assert!(jumped(501, 0));
    assert!(!jumped(-500, 0));
    assert!(jumped(-501, 0));
    // 1% of 1 s plus the slack: 510 ms.
    assert!(!jumped(1_510, 1_000));
    assert!(jumped(1_511, 1_000));
    assert!(jumped(-45_000, 0), "stepped back");
    assert!(jumped(45_000, 0), "stepped forward");
    // 1% of 100 s plus the slack: 1.5 s either way.
    assert!(!jumped(101_500, 100_000));
    assert!(!jumped(98_500, 100_000));
    assert!(jumped(101_501, 100_000));
    assert!(!jumped(i64::MIN, i64::MIN));
}

/// The system clock shifted by an adjustable amount: a host whose clock is
/// wrong but runs at real rate.
#[derive(Debug, Default)]
struct Skewed {
    skew: AtomicI64,
    armed: Mutex<Vec<Timestamp>>,
}

impl Skewed {
    fn new(skew_ms: i64) -> Arc<Skewed> {
        let c = Skewed::default();
        c.skew.store(skew_ms, Ordering::SeqCst);
        Arc::new(c)
    }
}

impl Clock for Skewed {
    fn now(&self) -> Timestamp {
        Timestamp(SystemClock.now().0 + self.skew.load(Ordering::SeqCst))
    }
    fn arm(&self, _alarm: &Arc<Alarm>, _flag: u8, at: Timestamp) {
        self.armed.lock().unwrap().push(at);
    }
}

/// A server whose clock is the system clock, counting its reads.
fn server(reads: &AtomicU64) -> impl Fn() -> Result<Option<Timestamp>> + '_ {
    move || {
        reads.fetch_add(1, Ordering::SeqCst);
        Ok(Some(SystemClock.now()))
    }
}

fn near(a: Timestamp, b: Timestamp, slack_ms: i64) -> bool {
    (a.0 - b.0).abs() <= slack_ms
}

#[test]
fn a_skewed_clock_reads_the_servers_time_after_one_round_trip() {
    let clock = Skewed::new(45_000);
    let time = StoreTime::new(clock.clone());
    let reads = AtomicU64::new(0);
    assert_eq!(time.offset(), None);
    for _ in 0..1_000 {
        let now = time.now_with(server(&reads));
        assert!(near(now, SystemClock.now(), 1000), "{now:?}");
    }
    assert_eq!(
        reads.load(Ordering::SeqCst),
        SAMPLES as u64,
        "measured once (a few samples)"
    );
    let offset = time.offset().unwrap();
    assert!((offset.millis + 45_000).abs() <= 1000, "{offset:?}");
    assert!(offset.uncertainty <= Duration::from_millis(1000));
    // Clock::now on the wrapper gives the same timeline without measuring.
    assert!(near(Clock::now(&time), SystemClock.now(), 1000));
}

#[test]
fn a_stepped_clock_is_measured_again_at_once() {
    let clock = Skewed::new(0);
    let time = StoreTime::new(clock.clone());
    let reads = AtomicU64::new(0);
    time.now_with(server(&reads));
    clock.skew.store(45_000, Ordering::SeqCst);
    let now = time.now_with(server(&reads));
    assert_eq!(reads.load(Ordering::SeqCst), 2 * SAMPLES as u64);
    assert!(near(now, SystemClock.now(), 1000), "{now:?}");
    clock.skew.store(-45_000, Ordering::SeqCst);
    let now = time.now_with(server(&reads));
    assert_eq!(reads.load(Ordering::SeqCst), 3 * SAMPLES as u64);
    assert!(near(now, SystemClock.now(), 1000), "{now:?}");
}

#[test]
fn a_failed_measurement_keeps_the_old_offset() {
    let clock = Skewed::new(45_000);
    let time = StoreTime::new(clock.clone());
    let reads = AtomicU64::new(0);
    time.now_with(server(&reads));
    let before = time.offset().unwrap();
    // A step makes a measurement due; it fails.
    clock.skew.store(90_000, Ordering::SeqCst);
    let now = time.now_with(|| Err(Error::Unavailable("down".into())));
    assert_eq!(time.offset(), Some(before));
    // The old offset applies to the stepped clock: 45 s ahead.
    assert!(near(
        now,
        SystemClock.now().plus(Duration::from_secs(45)),
        1000
    ));
    // And the next use tries again.
    let now = time.now_with(server(&reads));
    assert_eq!(reads.load(Ordering::SeqCst), 2 * SAMPLES as u64);
    assert!(near(now, SystemClock.now(), 1000), "{now:?}");
}

#[test]
fn until_a_first_success_every_use_measures() {
    let time = StoreTime::new(Skewed::new(45_000));
    let tries = AtomicU64::new(0);
    for _ in 0..3 {
        let now = time.now_with(|| {
            tries.fetch_add(1, Ordering::SeqCst);
            Err(Error::Unavailable("down".into()))
        });
        // No offset known: the local clock as it is.
        assert!(near(
            now,
            SystemClock.now().plus(Duration::from_secs(45)),
            1000
        ));
        assert_eq!(time.offset(), None);
    }
    assert_eq!(tries.load(Ordering::SeqCst), 3);
}

#[test]
fn a_store_without_a_clock_is_asked_once() {
    let time = StoreTime::new(Skewed::new(45_000));
    let asks = AtomicU64::new(0);
    for _ in 0..3 {
        let now = time.now_with(|| {
            asks.fetch_add(1, Ordering::SeqCst);
            Ok(None)
        });
        assert!(near(
            now,
            SystemClock.now().plus(Duration::from_secs(45)),
            1000
        ));
    }
    assert_eq!(asks.load(Ordering::SeqCst), 1);
    assert_eq!(time.offset(), None);
}

#[test]
fn a_manual_clock_is_used_as_it_is() {
    let clock = ManualClock::new(Timestamp(1_000));
    let time = StoreTime::new(Arc::new(clock.clone()));
    let never = || -> Result<Option<Timestamp>> { panic!("a manual clock is never measured") };
    assert_eq!(time.now_with(never), Timestamp(1_000));
    clock.advance(Duration::from_secs(3_600));
    assert_eq!(time.now_with(never), Timestamp(3_601_000));
    assert_eq!(time.offset(), None);
    assert!(!time.follows_real_time());
}

#[test]
fn alarms_are_armed_at_the_matching_local_time() {
    let clock = Skewed::new(45_000);
    let time = StoreTime::new(clock.clone());
    let reads = AtomicU64::new(0);
    let store_now = time.now_with(server(&reads));
    let offset = time.offset().unwrap().millis;
    let alarm = Arc::new(Alarm::new());
    time.arm(&alarm, 1, store_now.plus(Duration::from_secs(10)));
    let armed = clock.armed.lock().unwrap().clone();
    assert_eq!(armed, vec![Timestamp(store_now.0 + 10_000 - offset)]);
    // That local time is about 10 s from the local clock's now.
    assert!(near(
        armed[0],
        clock.now().plus(Duration::from_secs(10)),
        1000
    ));
}

#[test]
fn before_the_first_offset_every_thread_waits_for_it() {
    let clock = Skewed::new(-45_000);
    let time = Arc::new(StoreTime::new(clock));
    let reads = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let (time, reads) = (time.clone(), reads.clone());
            std::thread::spawn(move || {
                time.now_with(|| {
                    reads.fetch_add(1, Ordering::SeqCst);
                    // Widen the window in which the others arrive.
                    std::thread::sleep(Duration::from_millis(50));
                    Ok(Some(SystemClock.now()))
                })
            })
        })
        .collect();
    for t in threads {
        let now = t.join().unwrap();
        assert!(near(now, SystemClock.now(), 1000), "{now:?}");
    }
    assert_eq!(
        reads.load(Ordering::SeqCst),
        SAMPLES as u64,
        "one measurement"
    );
}
