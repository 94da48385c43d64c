//! Conformance: giving items back unfinished, and a runner told to stop.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use ckpt::{ItemStatus, ManualClock, NewItem, Outcome, RunOptions, Runner};
use serde_json::json;

use super::{queue_options, worker, T0};
use crate::{every_store, Fixture};
use rstest_reuse::apply;

fn items(n: usize) -> Vec<NewItem> {
    (0..n).map(|i| NewItem::key(format!("r-{i:04}"))).collect()
}

/// `(status, attempts)` of every item, by key.
fn states(q: &ckpt::Queue) -> HashMap<String, (ItemStatus, u32)> {
    q.items(None, 10_000)
        .unwrap()
        .into_iter()
        .map(|r| (r.key, (r.status, r.attempts)))
        .collect()
}

#[apply(every_store)]
fn release_gives_an_item_back_uncharged(store: Option<Fixture>) {
    let Some(f) = &store else { return };
    let clock = ManualClock::new(T0);
    let a = worker(f, &clock, "a")
        .queue_with("release", queue_options(3))
        .unwrap();
    a.enqueue(items(3)).unwrap();
    clock.advance(Duration::from_secs(5));
    let claimed = a.claim(2).unwrap();
    assert_eq!(claimed.len(), 2);
    assert_eq!(claimed[0].key, "r-0000");
    assert_eq!(claimed[0].attempt, 1);
    assert_eq!(
        claimed[0].enqueued_at, T0,
        "the claim reports when it was enqueued"
    );

    a.save_cursor(&claimed[0], json!({"offset": 7})).unwrap();
    a.release(&claimed[0]).unwrap();
    let s = states(&a);
    assert_eq!(
        s["r-0000"],
        (ItemStatus::Pending, 0),
        "pending, attempt taken back"
    );
    assert_eq!(s["r-0001"], (ItemStatus::Running, 1));
    let counts = a.counts().unwrap();
    assert_eq!((counts.pending, counts.running), (2, 1));

    // The released lease is stale: it changes nothing any more.
    assert!(a.release(&claimed[0]).unwrap_err().is_fenced());
    assert!(a.complete(&claimed[0], None).unwrap_err().is_fenced());

    // Claimable at once, first (enqueue order), as attempt 1 again, with
    // its cursor; not a takeover.
    let b = worker(f, &clock, "b")
        .queue_with("release", queue_options(3))
        .unwrap();
    let again = b.claim(1).unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].key, "r-0000");
    assert_eq!(again[0].attempt, 1);
    assert_eq!(again[0].cursor, Some(json!({"offset": 7})));
    assert_eq!(again[0].taken_over_from, None);
    assert!(again[0].lease.token > claimed[0].lease.token);

    // A retry given back keeps the attempts used before it.
    a.complete(&claimed[1], None).unwrap();
    b.fail(&again[0], "boom").unwrap();
    clock.advance(Duration::from_secs(10));
    let retry = b.claim(5).unwrap(); // r-0002 (pending) and r-0000 (retry due)
    assert_eq!(retry.len(), 2);
    let retry = retry.iter().find(|i| i.key == "r-0000").unwrap();
    assert_eq!(retry.attempt, 2);
    b.release(retry).unwrap();
    assert_eq!(states(&b)["r-0000"], (ItemStatus::Pending, 1));
    let retry = b.claim(1).unwrap();
    assert_eq!((retry[0].key.as_str(), retry[0].attempt), ("r-0000", 2));
    b.complete(&retry[0], None).unwrap();
    assert_eq!(states(&b)["r-0000"], (ItemStatus::Completed, 2));
}

#[apply(every_store)]
fn stopped_runner_finishes_running_items_and_gives_back_the_rest(store: Option<Fixture>) {
    let Some(f) = &store else { return };
    let clock = ManualClock::new(T0);
    let q = worker(f, &clock, "runner")
        .queue_with("stopping", queue_options(3))
        .unwrap();
    q.enqueue(items(20)).unwrap();

    // The first 3 items complete at once; the next 2 wait at a gate, where
    // the stop arrives. After the gate the first of them completes and the
    // second reports that it was interrupted.
    let started = AtomicUsize::new(0);
    let blocked = Mutex::new(Vec::<String>::new());
    let interrupted = Mutex::new(String::new());
    let gate = (Mutex::new(false), Condvar::new());
    let handler = |item: &ckpt::ClaimedItem| {
        let n = started.fetch_add(1, Ordering::SeqCst);
        if !(3..=4).contains(&n) {
            return Outcome::Completed(None);
        }
        blocked.lock().unwrap().push(item.key.clone());
        if n == 4 {
            *interrupted.lock().unwrap() = item.key.clone();
        }
        let mut open = gate.0.lock().unwrap();
        while !*open {
            open = gate.1.wait(open).unwrap();
        }
        if n == 3 {
            Outcome::Completed(None)
        } else {
            Outcome::Interrupted("killed at shutdown".into())
        }
    };
    let runner = Runner::new(
        &q,
        RunOptions {
            workers: 2,
            prefetch: 4,
            ..RunOptions::default()
        },
    );
    let stop = runner.stop_handle();
    let progress = runner.progress();
    let report = std::thread::scope(|s| {
        let running = s.spawn(|| runner.run(&handler));
        let deadline = Instant::now() + Duration::from_secs(30);
        while blocked.lock().unwrap().len() < 2 {
            assert!(Instant::now() < deadline, "two items never blocked");
            std::thread::sleep(Duration::from_millis(1));
        }
        stop.stop();
        *gate.0.lock().unwrap() = true;
        gate.1.notify_all();
        running.join().unwrap().unwrap()
    });
    assert!(report.stopped);
    assert_eq!(
        started.load(Ordering::SeqCst),
        5,
        "nothing started after the stop"
    );
    assert_eq!(report.completed, 4);
    assert_eq!(report.failed, 0);
    assert!(report.released >= 1, "{report:?}");
    assert_eq!(progress.completed(), 4);
    assert_eq!(progress.released(), report.released);
    let counts = q.counts().unwrap();
    assert_eq!(report.counts, counts);
    assert_eq!(
        (
            counts.pending,
            counts.running,
            counts.completed,
            counts.failed
        ),
        (16, 0, 4, 0),
        "nothing held: every unfinished item is pending again"
    );
    let interrupted = interrupted.lock().unwrap().clone();
    for (key, (status, attempts)) in states(&q) {
        if status == ItemStatus::Pending {
            assert_eq!(attempts, 0, "{key} was given back uncharged");
        }
    }
    assert_eq!(states(&q)[&interrupted], (ItemStatus::Pending, 0));
    assert_eq!(
        report.status,
        Some(ckpt::JobStatus::Running),
        "a stopped run reports its job's status: still running"
    );

    // A runner stopped before it starts claims nothing.
    let idle = Runner::new(&q, RunOptions::default());
    idle.stop_handle().stop();
    let report = idle
        .run(&|_: &ckpt::ClaimedItem| Outcome::Completed(None))
        .unwrap();
    assert!(report.stopped);
    assert_eq!((report.completed, report.released), (0, 0));
    assert_eq!(q.counts().unwrap().pending, 16);

    // The next run does the rest, the interrupted item included.
    let report = Runner::new(&q, RunOptions::default())
        .run(&|_: &ckpt::ClaimedItem| Outcome::Completed(None))
        .unwrap();
    assert!(!report.stopped);
    assert_eq!(report.completed, 16);
    assert_eq!(report.status, Some(ckpt::JobStatus::Completed));
    assert_eq!(states(&q)[&interrupted], (ItemStatus::Completed, 1));
}
