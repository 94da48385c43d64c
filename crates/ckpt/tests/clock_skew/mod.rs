//! Leases are judged by the store's clock, not the claimer's: workers whose
//! clocks are 45 s ahead of or behind the store's (and each other's) still
//! never hold one item or job at once, on the stores shared over a network.
//!
//! Workers here run on real time (a clock 45 s off the system clock runs at
//! real rate, like a host whose clock is wrong); no `ManualClock`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ckpt::worker::WorkerId;
use ckpt::{Ckpt, Clock, Error, NewItem, QueueOptions, SystemClock, Timestamp};
use rstest::rstest;

use crate::{every_store, Fixture};
use rstest_reuse::apply;

/// The system clock shifted by a constant: a host whose clock is wrong.
#[derive(Debug)]
struct Shifted(i64);

impl Clock for Shifted {
    fn now(&self) -> Timestamp {
        Timestamp(SystemClock.now().0 + self.0)
    }
}

const AHEAD: i64 = 45_000;
const BEHIND: i64 = -45_000;

/// A worker on another "host" (never judged dead by the local process
/// check) whose clock is `skew_ms` off the system clock.
fn worker(f: &Fixture, name: &str, skew_ms: i64) -> Ckpt {
    Ckpt::new((f.another)())
        .with_clock(Arc::new(Shifted(skew_ms)))
        .with_worker(WorkerId {
            host: "test-host-that-is-not-this-one".into(),
            pid: 1,
            start: 1,
            nonce: name.into(),
        })
}

fn options(lease: Duration) -> QueueOptions {
    QueueOptions {
        lease,
        ..QueueOptions::default()
    }
}

fn keys(n: usize) -> Vec<NewItem> {
    (0..n).map(|i| NewItem::key(format!("k{i}"))).collect()
}

/// Within `ms` of each other.
fn near(a: Timestamp, b: Timestamp, ms: i64) -> bool {
    (a.0 - b.0).abs() <= ms
}

/// A store shared over the network reads its clock; one on this host has
/// none of its own. Here the server runs on this machine, so its clock is
/// the system clock.
#[apply(every_store)]
fn server_time_is_the_servers_clock(store: Option<Fixture>) {
    let Some(f) = &store else { return };
    let shared =
        f.store.describe().starts_with("postgres") || f.store.describe().starts_with("redis");
    let before = SystemClock.now();
    let server = f.store.server_time().unwrap();
    let after = SystemClock.now();
    match server {
        Some(t) if shared => {
            assert!(
                t.0 >= before.0 - 1_000 && t.0 <= after.0 + 1_000,
                "{t:?} not within 1 s of [{before:?}, {after:?}]"
            );
        }
        None if !shared => {}
        other => panic!("{}: server_time {other:?}", f.store.describe()),
    }
    // The offset a Ckpt measures against a clock 45 s ahead undoes it.
    let ckpt = worker(f, "measure", AHEAD);
    let now = ckpt.now();
    match ckpt.clock_offset() {
        Some(offset) => {
            assert!(shared);
            assert!((offset.millis + AHEAD).abs() <= 1_000, "{offset:?}");
            assert!(near(now, SystemClock.now(), 1_000), "{now:?}");
        }
        None => {
            assert!(!shared);
            assert!(near(
                now,
                SystemClock.now().plus(Duration::from_secs(45)),
                1_000
            ));
        }
    }
}

#[rstest]
#[case::postgres(crate::postgres())]
#[case::redis(crate::redis())]
fn a_claimer_45s_ahead_cannot_take_live_items(#[case] store: Option<Fixture>) {
    let Some(f) = &store else { return };
    let lease = options(Duration::from_secs(20));
    let a = worker(f, "a", 0)
        .queue_with("ahead", lease.clone())
        .unwrap();
    a.enqueue(keys(5)).unwrap();
    let held = a.claim(5).unwrap();
    assert_eq!(held.len(), 5);
    let b = worker(f, "b", AHEAD).queue_with("ahead", lease).unwrap();
    assert!(b.claim(5).unwrap().is_empty(), "took live items");
    // The items are still the first worker's: it completes every one.
    for item in &held {
        a.complete(item, None).unwrap();
    }
    assert_eq!(a.counts().unwrap().completed, 5);
}

#[rstest]
#[case::postgres(crate::postgres())]
#[case::redis(crate::redis())]
fn a_job_held_by_a_live_worker_is_busy_for_one_45s_ahead(#[case] store: Option<Fixture>) {
    let Some(f) = &store else { return };
    let opts = ckpt::JobOptions {
        lease: Duration::from_secs(20),
        ..Default::default()
    };
    let held = worker(f, "a", 0).job_with("cursor", opts.clone()).unwrap();
    let taken = worker(f, "b", AHEAD).job_with("cursor", opts);
    assert!(matches!(taken, Err(Error::Busy(_))), "{taken:?}");
    // And the holder's lease is intact: it completes the job (fenced).
    held.complete().unwrap();
}

#[rstest]
#[case::postgres(crate::postgres())]
#[case::redis(crate::redis())]
fn a_job_held_by_a_worker_45s_behind_is_busy_for_others(#[case] store: Option<Fixture>) {
    let Some(f) = &store else { return };
    let opts = ckpt::JobOptions {
        lease: Duration::from_secs(20),
        ..Default::default()
    };
    let held = worker(f, "c", BEHIND)
        .job_with("cursor", opts.clone())
        .unwrap();
    let until = held.record().lease_expires.expect("a lease");
    let server_now = f.store.server_time().unwrap().unwrap();
    assert!(
        near(until, server_now.plus(Duration::from_secs(20)), 1_000),
        "lease until {until:?}, server time {server_now:?}"
    );
    for (name, skew) in [("a", 0), ("b", AHEAD)] {
        let taken = worker(f, name, skew).job_with("cursor", opts.clone());
        assert!(matches!(taken, Err(Error::Busy(_))), "{name}: {taken:?}");
    }
    held.complete().unwrap();
}

/// A worker 45 s behind writes leases that end when they should in store
/// time: not already expired (others would take its live items at once),
/// not 45 s late; and once one ends, another worker takes the item.
#[rstest]
#[case::postgres(crate::postgres())]
#[case::redis(crate::redis())]
fn a_worker_45s_behind_holds_its_lease_exactly_its_length(#[case] store: Option<Fixture>) {
    let Some(f) = &store else { return };
    let lease = Duration::from_secs(3);
    let c = worker(f, "c", BEHIND)
        .queue_with("behind", options(lease))
        .unwrap();
    c.enqueue(keys(1)).unwrap();
    let claimed_at = Instant::now();
    let held = c.claim(1).unwrap();
    assert_eq!(held.len(), 1);
    let server_now = f.store.server_time().unwrap().unwrap();
    let until = held[0].lease_expires;
    assert!(
        near(until, server_now.plus(lease), 1_000),
        "lease until {until:?}, server time {server_now:?}"
    );
    let a = worker(f, "a", 0)
        .queue_with("behind", options(lease))
        .unwrap();
    loop {
        let taken = a.claim(1).unwrap();
        let waited = claimed_at.elapsed();
        if taken.is_empty() {
            assert!(waited < Duration::from_secs(30), "never freed");
            std::thread::sleep(Duration::from_millis(50));
            continue;
        }
        // Mutual exclusion: not a moment before the lease ended (less the
        // offsets' measurement uncertainty on this machine).
        assert!(
            waited >= lease - Duration::from_millis(500),
            "taken after {waited:?} of a {lease:?} lease"
        );
        break;
    }
    assert!(matches!(c.complete(&held[0], None), Err(Error::Fenced(_))));
}
