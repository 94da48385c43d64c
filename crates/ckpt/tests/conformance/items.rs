//! Conformance: work items (the claim pattern).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ckpt::model::{ItemChange, ItemUpdate};
use ckpt::{Ckpt, Error, ItemStatus, JobStatus, ManualClock, NewItem, RetryDecision};
use serde_json::json;

use super::{dead_local_worker, queue_options, worker, T0};
use crate::{every_store, Fixture};
use rstest_reuse::apply;

fn keys(n: usize) -> Vec<NewItem> {
    (0..n)
        .map(|i| NewItem::key(format!("item-{i:04}")))
        .collect()
}

#[apply(every_store)]
fn claims_are_exclusive_across_workers(store: Option<Fixture>) {
    let Some(f) = &store else { return };
    let clock = ManualClock::new(T0);
    let q = worker(f, &clock, "setup")
        .queue_with("exclusive", queue_options(3))
        .unwrap();
    assert_eq!(q.enqueue(keys(400)).unwrap().inserted, 400);
    let seen = Arc::new(Mutex::new(HashMap::<String, u32>::new()));
    std::thread::scope(|s| {
        for w in 0..6 {
            let ckpt = worker(f, &clock, &format!("w{w}"));
            let seen = seen.clone();
            s.spawn(move || {
                let q = ckpt.queue_with("exclusive", queue_options(3)).unwrap();
                loop {
                    let batch = q.claim(7).unwrap();
                    if batch.is_empty() {
                        break;
                    }
                    for item in &batch {
                        *seen.lock().unwrap().entry(item.key.clone()).or_default() += 1;
                        q.complete(item, None).unwrap();
                    }
                }
            });
        }
    });
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 400, "every item claimed");
    assert!(seen.values().all(|&n| n == 1), "no item claimed twice");
    let counts = q.counts().unwrap();
    assert_eq!((counts.completed, counts.unfinished()), (400, 0));
}

#[apply(every_store)]
fn pending_items_come_in_enqueue_order(store: Option<Fixture>) {
    let Some(f) = &store else { return };
    let clock = ManualClock::new(T0);
    let q = worker(f, &clock, "a")
        .queue_with("order", queue_options(3))
        .unwrap();
    let names = ["zeta", "alpha", "mid", "beta"];
    q.enqueue(names.iter().map(|k| NewItem::key(*k))).unwrap();
    let got: Vec<String> = q.claim(10).unwrap().into_iter().map(|i| i.key).collect();
    assert_eq!(got, names);
    assert!(q.claim(10).unwrap().is_empty(), "nothing left to claim");
}

#[apply(every_store)]
fn expired_lease_is_taken_over_and_zombie_is_fenced(store: Option<Fixture>) {
    let Some(f) = &store else { return };
    let clock = ManualClock::new(T0);
    let a = worker(f, &clock, "a")
        .queue_with("takeover", queue_options(5))
        .unwrap();
    let b = worker(f, &clock, "b")
        .queue_with("takeover", queue_options(5))
        .unwrap();
    a.enqueue([NewItem::key("big-file")]).unwrap();
    let held = a.claim(1).unwrap().pop().unwrap();
    assert_eq!(held.attempt, 1);
    clock.advance(Duration::from_secs(9));
    assert!(
        b.claim(1).unwrap().is_empty(),
        "a live lease is never shared"
    );
    clock.advance(Duration::from_secs(1));
    assert!(
        a.claim(1).unwrap().is_empty(),
        "a worker never re-claims its own running item, even with its lease expired"
    );
    let taken = b
        .claim(1)
        .unwrap()
        .pop()
        .expect("expired lease is claimable");
    assert_eq!(taken.key, "big-file");
    assert_eq!(taken.attempt, 2, "a takeover counts as an attempt");
    assert_eq!(
        taken.taken_over_from.as_deref(),
        Some(held.lease.owner.as_str())
    );
    assert!(a.complete(&held, None).unwrap_err().is_fenced());
    assert_eq!(a.counts().unwrap().running, 1, "the zombie changed nothing");
    b.complete(&taken, Some(json!({"records_total": 7})))
        .unwrap();
    let item = &b.items(None, 10).unwrap()[0];
    assert_eq!(item.status, ItemStatus::Completed);
    assert_eq!(item.stats, Some(json!({"records_total": 7})));
}

#[apply(every_store)]
fn zombie_item_writes_change_nothing(store: Option<Fixture>) {
    let Some(f) = &store else { return };
    let clock = ManualClock::new(T0);
    let a = worker(f, &clock, "a")
        .queue_with("zombie-items", queue_options(5))
        .unwrap();
    let b = worker(f, &clock, "b")
        .queue_with("zombie-items", queue_options(5))
        .unwrap();
    a.enqueue([NewItem::key("k")]).unwrap();
    let zombie = a.claim(1).unwrap().pop().unwrap();
    clock.advance(Duration::from_secs(11));
    let live = b.claim(1).unwrap().pop().unwrap();
    b.save_cursor(&live, json!({"line": 10})).unwrap();
    let before = b.items(None, 10).unwrap();
    assert!(a.heartbeat([&zombie]).unwrap()[0]
        .as_ref()
        .unwrap_err()
        .is_fenced());
    assert!(a
        .save_cursor(&zombie, json!({"line": 99}))
        .unwrap_err()
        .is_fenced());
    assert!(a.fail(&zombie, "boom").unwrap_err().is_fenced());
    assert!(a.complete(&zombie, None).unwrap_err().is_fenced());
    assert_eq!(b.items(None, 10).unwrap(), before, "no zombie write landed");
    // A batch mixes fenced and current leases: the current one still applies.
    let results = b
        .apply(&[
            ItemUpdate {
                lease: zombie.lease.clone(),
                change: ItemChange::Complete {
                    stats: None,
                    command: None,
                },
            },
            ItemUpdate {
                lease: live.lease.clone(),
                change: ItemChange::Complete {
                    stats: None,
                    command: None,
                },
            },
        ])
        .unwrap();
    assert!(results[0].as_ref().unwrap_err().is_fenced());
    assert!(results[1].is_ok());
    assert_eq!(b.counts().unwrap().completed, 1);
    // A lease on an item that never existed (a made-up or foreign id) is
    // fenced too, whatever the id.
    let before = b.items(None, 10).unwrap();
    for id in [0, -1, i64::MIN, i64::MAX, live.lease.id + (1 << 40)] {
        let mut lease = live.lease.clone();
        lease.id = id;
        let results = b
            .apply(&[ItemUpdate {
                lease,
                change: ItemChange::Complete {
                    stats: None,
                    command: None,
                },
            }])
            .unwrap();
        assert!(
            results[0].as_ref().unwrap_err().is_fenced(),
            "{id}: {results:?}"
        );
    }
    assert_eq!(b.items(None, 10).unwrap(), before);
}

#[apply(every_store)]
fn dead_local_owner_items_are_freed_at_once(store: Option<Fixture>) {
    let Some(f) = &store else { return };
    let clock = ManualClock::new(T0);
    let dead = Ckpt::new((f.another)())
        .with_clock(Arc::new(clock.clone()))
        .with_worker(dead_local_worker());
    let live = Ckpt::new((f.another)()).with_clock(Arc::new(clock.clone()));
    let remote = worker(f, &clock, "remote");
    let qd = dead.queue_with("dead-owner", queue_options(3)).unwrap();
    let qr = remote.queue_with("dead-owner", queue_options(3)).unwrap();
    let ql = live.queue_with("dead-owner", queue_options(3)).unwrap();
    qd.enqueue(keys(3)).unwrap();
    assert_eq!(qd.claim(2).unwrap().len(), 2);
    assert_eq!(qr.claim(1).unwrap().len(), 1);
    assert_eq!(ql.store_owners(), 2);
    // Only the local owner whose process is gone is freed; the remote
    // owner's lease is left to expire.
    assert_eq!(ql.reclaim_dead_owners().unwrap(), 2);
    let taken = ql.claim(5).unwrap();
    assert_eq!(taken.len(), 2);
    assert!(taken
        .iter()
        .all(|i| i.taken_over_from.as_deref() == Some(&*dead.worker().to_string())));
}

/// Test-only helper: number of distinct owners of running items.
trait Owners {
    fn store_owners(&self) -> usize;
}

impl Owners for ckpt::Queue {
    fn store_owners(&self) -> usize {
        self.ckpt()
            .store()
            .running_owners(self.job())
            .unwrap()
            .len()
    }
}

#[apply(every_store)]
fn retry_backoff_dead_letter_and_redrive(store: Option<Fixture>) {
    let Some(f) = &store else { return };
    let clock = ManualClock::new(T0);
    let q = worker(f, &clock, "a")
        .queue_with("retries", queue_options(3))
        .unwrap();
    q.enqueue([NewItem::key("flaky")]).unwrap();
    let mut expected_delay = Duration::from_secs(10);
    for attempt in 1..=2 {
        let item = q.claim(1).unwrap().pop().unwrap();
        assert_eq!(item.attempt, attempt);
        let decision = q.fail(&item, &format!("error {attempt}")).unwrap();
        assert_eq!(
            decision,
            RetryDecision::RetryAt(clock_now(&clock).plus(expected_delay))
        );
        let rec = &q.items(None, 1).unwrap()[0];
        assert_eq!(rec.status, ItemStatus::Failed);
        assert_eq!(
            rec.last_error.as_deref(),
            Some(&*format!("error {attempt}"))
        );
        clock.advance(expected_delay - Duration::from_millis(1));
        assert!(q.claim(1).unwrap().is_empty(), "not before its retry time");
        clock.advance(Duration::from_millis(1));
        expected_delay *= 2;
    }
    let last = q.claim(1).unwrap().pop().unwrap();
    assert_eq!(last.attempt, 3);
    assert_eq!(q.fail(&last, "final").unwrap(), RetryDecision::Dead);
    let counts = q.counts().unwrap();
    assert_eq!((counts.dead, counts.unfinished()), (1, 0));
    clock.advance(Duration::from_secs(3600));
    assert!(
        q.claim(1).unwrap().is_empty(),
        "dead items are never claimed"
    );
    assert_eq!(q.finish_if_done().unwrap(), Some(JobStatus::Failed));
    // Redrive: back to pending with fresh attempts.
    assert_eq!(
        q.redrive(ItemStatus::Dead, Some(&["nope".to_string()]))
            .unwrap(),
        0
    );
    assert_eq!(q.redrive(ItemStatus::Dead, None).unwrap(), 1);
    let again = q.claim(1).unwrap().pop().unwrap();
    assert_eq!(again.attempt, 1);
    assert_ne!(
        again.lease.token, last.lease.token,
        "fencing token never repeats"
    );
    q.complete(&again, None).unwrap();
    assert_eq!(q.finish_if_done().unwrap(), Some(JobStatus::Completed));
}

fn clock_now(clock: &ManualClock) -> ckpt::Timestamp {
    use ckpt::Clock;
    clock.now()
}

#[apply(every_store)]
fn enqueue_is_idempotent_per_key(store: Option<Fixture>) {
    let Some(f) = &store else { return };
    let clock = ManualClock::new(T0);
    let q = worker(f, &clock, "a")
        .queue_with("idempotent", queue_options(3))
        .unwrap();
    let r = q
        .enqueue([NewItem::key("a"), NewItem::key("b"), NewItem::key("a")])
        .unwrap();
    assert_eq!((r.inserted, r.existing), (2, 1));
    let a = q.claim(1).unwrap().pop().unwrap();
    q.complete(&a, None).unwrap();
    let mut with_payload = NewItem::key("a");
    with_payload.payload = Some(json!({"changed": true}));
    let r = q
        .enqueue([with_payload, NewItem::key("b"), NewItem::key("c")])
        .unwrap();
    assert_eq!((r.inserted, r.existing), (1, 2));
    let items = q.items(None, 10).unwrap();
    assert_eq!(items.len(), 3);
    assert_eq!(
        items[0].status,
        ItemStatus::Completed,
        "re-enqueue does not reset status"
    );
    assert_eq!(items[0].payload, None, "nor the payload");
    let bad = q.enqueue([NewItem::key("")]).unwrap_err();
    assert!(matches!(bad, Error::InvalidInput(_)));
}

#[apply(every_store)]
fn failed_enqueue_stream_adds_nothing(store: Option<Fixture>) {
    let Some(f) = &store else { return };
    let clock = ManualClock::new(T0);
    let q = worker(f, &clock, "a")
        .queue_with("atomic-enqueue", queue_options(3))
        .unwrap();
    let stream = (0..100).map(|i| {
        if i == 60 {
            Err(Error::InvalidInput("line 61 is not UTF-8".into()))
        } else {
            Ok(NewItem::key(format!("k{i}")))
        }
    });
    let err = q.enqueue_stream(stream).unwrap_err();
    assert!(err.to_string().contains("line 61"));
    assert_eq!(q.counts().unwrap().total(), 0);
    assert!(
        q.ckpt().get_job("atomic-enqueue").unwrap().is_none(),
        "not even the job was created"
    );
}

#[apply(every_store)]
fn per_item_cursor_survives_a_takeover(store: Option<Fixture>) {
    let Some(f) = &store else { return };
    let clock = ManualClock::new(T0);
    let a = worker(f, &clock, "a")
        .queue_with("item-cursor", queue_options(5))
        .unwrap();
    let b = worker(f, &clock, "b")
        .queue_with("item-cursor", queue_options(5))
        .unwrap();
    a.enqueue([NewItem::key("huge.csv")]).unwrap();
    let first = a.claim(1).unwrap().pop().unwrap();
    assert_eq!(first.cursor, None);
    a.save_cursor(&first, json!({"line": 50_000})).unwrap();
    clock.advance(Duration::from_secs(9));
    a.save_cursor(&first, json!({"line": 90_000})).unwrap();
    clock.advance(Duration::from_secs(9));
    assert!(
        b.claim(1).unwrap().is_empty(),
        "saving a cursor renewed the lease"
    );
    clock.advance(Duration::from_secs(2));
    let retry = b.claim(1).unwrap().pop().unwrap();
    assert_eq!(
        retry.cursor,
        Some(json!({"line": 90_000})),
        "the retry resumes inside the item"
    );
}

#[apply(every_store)]
fn next_ready_at_tracks_retries(store: Option<Fixture>) {
    let Some(f) = &store else { return };
    let clock = ManualClock::new(T0);
    let q = worker(f, &clock, "a")
        .queue_with("next-ready", queue_options(3))
        .unwrap();
    assert_eq!(q.next_ready_at().unwrap(), None);
    q.enqueue([NewItem::key("x")]).unwrap();
    assert!(q.next_ready_at().unwrap().unwrap() <= T0);
    let item = q.claim(1).unwrap().pop().unwrap();
    assert_eq!(
        q.next_ready_at().unwrap(),
        Some(T0.plus(Duration::from_secs(10))),
        "lease expiry"
    );
    q.fail(&item, "e").unwrap();
    assert_eq!(
        q.next_ready_at().unwrap(),
        Some(T0.plus(Duration::from_secs(10))),
        "retry time"
    );
    clock.advance(Duration::from_secs(10));
    let item = q.claim(1).unwrap().pop().unwrap();
    q.complete(&item, None).unwrap();
    assert_eq!(q.next_ready_at().unwrap(), None);
}

#[apply(every_store)]
fn one_store_handle_shared_by_threads(store: Option<Fixture>) {
    let Some(f) = &store else { return };
    let setup = Ckpt::new(f.store.clone());
    let q = setup.queue_with("shared-handle", queue_options(3)).unwrap();
    q.enqueue(keys(200)).unwrap();
    let done = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..4 {
            // Same store handle, a worker id of its own.
            let q = setup
                .new_worker()
                .queue_with("shared-handle", queue_options(3))
                .unwrap();
            let done = &done;
            s.spawn(move || loop {
                let batch = q.claim(3).unwrap();
                if batch.is_empty() {
                    break;
                }
                for item in &batch {
                    done.lock().unwrap().push(item.key.clone());
                    q.complete(item, None).unwrap();
                }
            });
        }
    });
    let mut done = done.into_inner().unwrap();
    done.sort();
    let claimed = done.len();
    done.dedup();
    assert_eq!((claimed, done.len()), (200, 200), "each item exactly once");
    assert_eq!(q.counts().unwrap().completed, 200);
}

/// Attempts count executions: items claimed ahead by a worker that died
/// before starting them cost no attempt when taken over; one it started
/// does; and an item that "kills" its worker every time it starts ends up
/// dead after its attempts, without being run again.
#[apply(every_store)]
fn attempts_count_executions_and_a_poison_item_ends_dead(store: Option<Fixture>) {
    let Some(f) = &store else { return };
    let clock = ManualClock::new(T0);
    let opts = queue_options(3);
    let lease = opts.lease;
    let setup = worker(f, &clock, "setup")
        .queue_with("executions", opts.clone())
        .unwrap();
    setup
        .enqueue(vec![NewItem::key("ahead"), NewItem::key("poison")])
        .unwrap();
    // Worker 1 claims both ahead, starts only "poison", and dies.
    let w1 = worker(f, &clock, "w1")
        .queue_with("executions", opts.clone())
        .unwrap();
    let held = w1.claim_ahead(2).unwrap();
    assert_eq!(held.iter().map(|i| i.attempt).collect::<Vec<_>>(), [1, 1]);
    let poison = held.iter().find(|i| i.key == "poison").unwrap();
    assert!(w1.start([poison]).unwrap().iter().all(|r| r.is_ok()));
    // Each later worker takes both over and starts "poison" again, which
    // kills it each time.
    let mut dead_at = None;
    for round in 2..=5 {
        clock.advance(lease);
        let w = worker(f, &clock, &format!("w{round}"))
            .queue_with("executions", opts.clone())
            .unwrap();
        let taken = w.claim_ahead(2).unwrap();
        let ahead = taken.iter().find(|i| i.key == "ahead").unwrap();
        assert_eq!(
            ahead.attempt, 1,
            "round {round}: never started, never charged"
        );
        match taken.iter().find(|i| i.key == "poison") {
            Some(p) => {
                assert_eq!(p.attempt, round, "round {round}: each start counted");
                assert!(w.start([p]).unwrap().iter().all(|r| r.is_ok()));
            }
            None => {
                dead_at = Some(round);
                break;
            }
        }
    }
    assert_eq!(
        dead_at,
        Some(4),
        "three started attempts, then dead without a fourth run"
    );
    let dead = setup.items(Some(ItemStatus::Dead), 10).unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].key, "poison");
    assert!(
        dead[0]
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("started 3 time(s) and its worker never reported back")),
        "{:?}",
        dead[0].last_error
    );
    // The claim that found it so never ran it: three attempts, not four.
    assert_eq!(dead[0].attempts, 3, "{:?}", dead[0]);
    assert!(dead[0].finished_at.is_some(), "{:?}", dead[0]);
    assert_eq!(setup.counts().unwrap().dead, 1);
}

/// A cron rerun of a finished `ckpt run` records its command, enqueues the
/// same keys, claims nothing and finishes the job again: that must leave
/// the job's completion time alone, since retention counts from it (a job
/// rerun more often than its retention would never be pruned).
#[apply(every_store)]
fn a_rerun_that_finds_nothing_keeps_the_completion_time(store: Option<Fixture>) {
    let Some(f) = &store else { return };
    let clock = ManualClock::new(T0);
    let c = worker(f, &clock, "a");
    let q = c.queue_with("rerun", queue_options(3)).unwrap();
    q.record_command("true").unwrap();
    q.enqueue(keys(2)).unwrap();
    for item in q.claim(2).unwrap() {
        q.complete(&item, None).unwrap();
    }
    assert_eq!(q.finish_if_done().unwrap(), Some(JobStatus::Completed));
    let first = c.get_job("rerun").unwrap().unwrap();
    assert_eq!(first.completed_at, Some(T0));

    clock.advance(Duration::from_secs(3600));
    q.record_command("true").unwrap();
    assert_eq!(q.enqueue(keys(2)).unwrap().inserted, 0);
    assert!(q.claim(2).unwrap().is_empty());
    assert_eq!(q.finish_if_done().unwrap(), Some(JobStatus::Completed));
    let again = c.get_job("rerun").unwrap().unwrap();
    assert_eq!(
        (again.completed_at, again.updated_at),
        (first.completed_at, first.updated_at),
        "a rerun that found nothing to do changed the finished job"
    );

    // New work reopens the job; finishing it is a new completion.
    q.enqueue([NewItem::key("late")]).unwrap();
    let late = q.claim(1).unwrap().pop().unwrap();
    q.complete(&late, None).unwrap();
    assert_eq!(q.finish_if_done().unwrap(), Some(JobStatus::Completed));
    let now = clock_now(&clock);
    assert_eq!(c.get_job("rerun").unwrap().unwrap().completed_at, Some(now));
}

/// `last_items`: the last items of one status in enqueue order, the last
/// first, at most the limit; no other status, and nothing for an unknown
/// job.
#[apply(every_store)]
fn last_items_are_the_latest_of_one_status(store: Option<Fixture>) {
    let Some(f) = &store else { return };
    let clock = ManualClock::new(T0);
    let ckpt = worker(f, &clock, "a");
    let q = ckpt.queue_with("latest", queue_options(2)).unwrap();
    // The same job with one attempt: a failure there is final.
    let once = ckpt.queue_with("latest", queue_options(1)).unwrap();
    // Another job's dead item, enqueued last: never in this job's lists.
    let other = ckpt.queue_with("other", queue_options(1)).unwrap();
    q.enqueue(keys(8)).unwrap();
    other.enqueue(keys(9)).unwrap();
    for item in other.claim(9).unwrap() {
        other.fail(&item, "elsewhere").unwrap();
    }
    for item in q.claim(8).unwrap() {
        let n: usize = item.key["item-".len()..].parse().unwrap();
        match n % 3 {
            0 => q.complete(&item, None).unwrap(),
            // Failed once of two: awaiting a retry.
            1 => assert!(matches!(
                q.fail(&item, "once").unwrap(),
                RetryDecision::RetryAt(_)
            )),
            _ => assert_eq!(once.fail(&item, "bad input").unwrap(), RetryDecision::Dead),
        }
    }
    let store = ckpt.store();
    let keys_of = |status, limit| -> Vec<String> {
        store
            .last_items("latest", status, limit)
            .unwrap()
            .into_iter()
            .inspect(|r| assert_eq!(r.status, status, "{r:?}"))
            .map(|r| r.key)
            .collect()
    };
    assert_eq!(keys_of(ItemStatus::Dead, 2), ["item-0005", "item-0002"]);
    assert_eq!(keys_of(ItemStatus::Dead, 10), ["item-0005", "item-0002"]);
    assert_eq!(keys_of(ItemStatus::Dead, 1), ["item-0005"]);
    assert_eq!(
        keys_of(ItemStatus::Failed, 10),
        ["item-0007", "item-0004", "item-0001"]
    );
    assert_eq!(
        keys_of(ItemStatus::Completed, 2),
        ["item-0006", "item-0003"]
    );
    assert!(keys_of(ItemStatus::Pending, 10).is_empty());
    assert!(keys_of(ItemStatus::Dead, 0).is_empty());
    assert!(store
        .last_items("no-such-job", ItemStatus::Dead, 10)
        .unwrap()
        .is_empty());
}

/// An item claimed from one job's queue is refused by another job's (its
/// id names an item of the first job): nothing changes.
#[apply(every_store)]
fn another_jobs_queue_refuses_an_item(store: Option<Fixture>) {
    let Some(f) = &store else { return };
    let clock = ManualClock::new(T0);
    let ckpt = worker(f, &clock, "a");
    let images = ckpt.queue_with("images", queue_options(3)).unwrap();
    let videos = ckpt.queue_with("videos", queue_options(3)).unwrap();
    images.enqueue([NewItem::key("cat.jpg")]).unwrap();
    videos.enqueue([NewItem::key("cat.mp4")]).unwrap();
    let item = images.claim(1).unwrap().pop().unwrap();
    let refused = |r: Result<(), Error>| match r {
        Err(Error::InvalidInput(m)) => {
            assert!(m.contains("claimed from job 'images'"), "{m}")
        }
        other => panic!("{other:?}"),
    };
    refused(videos.complete(&item, None));
    refused(videos.fail(&item, "x").map(drop));
    refused(videos.release(&item));
    refused(videos.save_cursor(&item, json!(1)));
    refused(videos.heartbeat([&item]).map(drop));
    refused(videos.start([&item]).map(drop));
    let attempt = ckpt::Attempt {
        item: item.clone(),
        outcome: ckpt::Outcome::Completed(None),
        ran_for: None,
    };
    refused(videos.settle(std::slice::from_ref(&attempt)).map(drop));
    let (i, v) = (images.counts().unwrap(), videos.counts().unwrap());
    assert_eq!(
        (i.running, i.completed, v.pending, v.completed),
        (1, 0, 1, 0)
    );
    images.complete(&item, None).unwrap();
    assert_eq!(images.counts().unwrap().completed, 1);
}
