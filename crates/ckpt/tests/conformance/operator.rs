//! Conformance: operator writes behind `ckpt prune` and `ckpt history truncate`.

use std::time::Duration;

use ckpt::{ItemStatus, JobStatus, ManualClock, NewItem};

use super::{limited, queue_options, worker, T0};
use crate::{every_store, Fixture};
use rstest_reuse::apply;

fn every_call() -> ckpt::JobOptions {
    ckpt::JobOptions {
        policy: ckpt::CheckpointPolicy::Always,
        ..ckpt::JobOptions::default()
    }
}

#[apply(every_store)]
fn history_truncate_keeps_the_newest(store: Option<Fixture>) {
    let Some(f) = &store else { return };
    let clock = ManualClock::new(T0);
    let c = limited(f, &clock, 100, 1024);
    let mut job = c.job_with("trunc", every_call()).unwrap();
    for i in 1..=10u64 {
        job.save(&i, i).unwrap();
    }
    let store = c.store();
    assert_eq!(store.truncate_history("trunc", 3).unwrap(), 7);
    let seqs: Vec<u64> = store
        .history("trunc", 100)
        .unwrap()
        .iter()
        .map(|h| h.seq)
        .collect();
    assert_eq!(seqs, [10, 9, 8]);
    assert_eq!(c.get_job("trunc").unwrap().unwrap().history_len, 3);
    assert_eq!(store.truncate_history("trunc", 50).unwrap(), 0);
    // The worker goes on saving; its history continues after the cut.
    job.save(&11u64, 11).unwrap();
    assert_eq!(c.get_job("trunc").unwrap().unwrap().history_len, 4);
    assert_eq!(store.truncate_history("trunc", 0).unwrap(), 4);
    assert!(store.history("trunc", 100).unwrap().is_empty());
    // The checkpoint itself is untouched.
    let rec = c.get_job("trunc").unwrap().unwrap();
    assert_eq!(rec.checkpoint.unwrap().cursor, serde_json::json!(11));
    assert!(store
        .truncate_history("no-such-job", 1)
        .unwrap_err()
        .is_not_found());
}

#[apply(every_store)]
fn delete_job_only_when_completed_before_the_cutoff(store: Option<Fixture>) {
    let Some(f) = &store else { return };
    let clock = ManualClock::new(T0);
    let c = worker(f, &clock, "a");
    let q = c.queue_with("done", queue_options(1)).unwrap();
    q.enqueue([NewItem::key("x"), NewItem::key("y")]).unwrap();
    let store = c.store();
    // Running, with pending items: never.
    assert!(!store
        .delete_job("done", T0.plus(Duration::from_secs(1)))
        .unwrap());
    for item in q.claim(2).unwrap() {
        q.complete(&item, None).unwrap();
    }
    assert_eq!(q.finish_if_done().unwrap(), Some(JobStatus::Completed));
    let finished = c.get_job("done").unwrap().unwrap().completed_at.unwrap();
    // Finished after the cutoff: kept.
    assert!(!store
        .delete_job("done", ckpt::Timestamp(finished.0 - 1))
        .unwrap());
    assert!(c.get_job("done").unwrap().is_some());
    // At the cutoff: the job, its items and its history go.
    assert!(store.delete_job("done", finished).unwrap());
    assert!(c.get_job("done").unwrap().is_none());
    assert!(store.list_jobs().unwrap().iter().all(|j| j.name != "done"));
    assert!(!store.delete_job("done", finished).unwrap(), "already gone");
    // The name is free again: the same keys make a new job with new items.
    let again = c.queue_with("done", queue_options(1)).unwrap();
    assert_eq!(again.enqueue([NewItem::key("x")]).unwrap().inserted, 1);
    assert_eq!(again.counts().unwrap().pending, 1);
    assert!(store.history("done", 10).unwrap().is_empty());
}

#[apply(every_store)]
fn delete_job_spares_failed_and_running_jobs(store: Option<Fixture>) {
    let Some(f) = &store else { return };
    let clock = ManualClock::new(T0);
    let c = worker(f, &clock, "a");
    let later = T0.plus(Duration::from_secs(86_400 * 365));
    // A failed job with a dead item.
    let q = c.queue_with("dead", queue_options(1)).unwrap();
    q.enqueue([NewItem::key("bad")]).unwrap();
    let item = q.claim(1).unwrap().pop().unwrap();
    q.fail(&item, "boom").unwrap();
    assert_eq!(q.finish_if_done().unwrap(), Some(JobStatus::Failed));
    assert!(!c.store().delete_job("dead", later).unwrap());
    assert_eq!(q.counts().unwrap().dead, 1);
    // A cursor job that is still running.
    let mut job = c.job_with("cursor", every_call()).unwrap();
    job.save(&1u64, 1).unwrap();
    assert!(!c.store().delete_job("cursor", later).unwrap());
    // Once completed it may go, but not while a worker holds it again.
    job.complete().unwrap();
    let held = c.job_with("cursor", every_call()).unwrap();
    assert!(held.was_completed());
    let lease_end = c.get_job("cursor").unwrap().unwrap().lease_expires.unwrap();
    assert!(!c
        .store()
        .delete_job("cursor", ckpt::Timestamp(lease_end.0 - 1))
        .unwrap());
    assert!(c.get_job("cursor").unwrap().is_some());
    assert!(
        c.store().delete_job("cursor", later).unwrap(),
        "its lease ended before the cutoff"
    );
    assert!(c.get_job("cursor").unwrap().is_none());
    // Redriven and completed, the failed job may go too.
    assert_eq!(q.redrive(ItemStatus::Dead, None).unwrap(), 1);
    let item = q.claim(1).unwrap().pop().unwrap();
    q.complete(&item, None).unwrap();
    assert_eq!(q.finish_if_done().unwrap(), Some(JobStatus::Completed));
    assert!(c.store().delete_job("dead", later).unwrap());
}

/// The prune plan (`ckpt::policy::retention`) and each store's guarded
/// delete apply one rule: what the plan lists (what `ckpt prune --dry-run`
/// prints) is exactly what the store deletes, including a completed job
/// that a worker took up again past the cutoff.
#[apply(every_store)]
fn prune_plan_agrees_with_delete_job(store: Option<Fixture>) {
    let Some(f) = &store else { return };
    use ckpt::policy::retention;
    const DAY: Duration = Duration::from_secs(86_400);
    let clock = ManualClock::new(T0);
    let c = worker(f, &clock, "a");
    // Completed at T0: goes.
    let q = c.queue_with("old", queue_options(1)).unwrap();
    q.enqueue([NewItem::key("x")]).unwrap();
    let item = q.claim(1).unwrap().pop().unwrap();
    q.complete(&item, None).unwrap();
    assert_eq!(q.finish_if_done().unwrap(), Some(JobStatus::Completed));
    // Failed with a dead item: stays.
    let q = c.queue_with("failed", queue_options(1)).unwrap();
    q.enqueue([NewItem::key("bad")]).unwrap();
    let item = q.claim(1).unwrap().pop().unwrap();
    q.fail(&item, "boom").unwrap();
    assert_eq!(q.finish_if_done().unwrap(), Some(JobStatus::Failed));
    // Running: stays.
    c.job_with("running", every_call())
        .unwrap()
        .save(&1u64, 1)
        .unwrap();
    // Completed, then taken up again with a lease that lapsed long ago: goes.
    let mut job = c.job_with("lapsed", every_call()).unwrap();
    job.save(&1u64, 1).unwrap();
    job.complete().unwrap();
    drop(c.job_with("lapsed", every_call()).unwrap());
    // Completed, then taken up again at T0 + 20 d for 10 days: held past
    // the cutoff, stays.
    let mut job = c.job_with("held", every_call()).unwrap();
    job.save(&1u64, 1).unwrap();
    job.complete().unwrap();
    clock.advance(20 * DAY);
    let long = ckpt::JobOptions {
        lease: 10 * DAY,
        ..every_call()
    };
    drop(c.job_with("held", long).unwrap());
    // Completed at T0 + 25 d: too recent, stays.
    clock.advance(5 * DAY);
    let mut job = c.job_with("recent", every_call()).unwrap();
    job.save(&1u64, 1).unwrap();
    job.complete().unwrap();

    clock.advance(5 * DAY);
    let store = c.store();
    let jobs = store.list_jobs().unwrap();
    let counts: Vec<_> = jobs
        .iter()
        .map(|j| store.item_counts(&j.name).unwrap())
        .collect();
    let plan = retention::plan(jobs.iter().zip(&counts), c.now(), 7 * DAY);
    let planned: Vec<&str> = plan.delete.iter().map(|t| t.job.as_str()).collect();
    assert_eq!(planned, ["lapsed", "old"]);
    let mut deleted = Vec::new();
    for job in &jobs {
        if store.delete_job(&job.name, plan.cutoff).unwrap() {
            deleted.push(job.name.as_str());
        }
    }
    assert_eq!(deleted, planned, "the store deletes exactly the plan");
    let left: Vec<String> = store
        .list_jobs()
        .unwrap()
        .into_iter()
        .map(|j| j.name)
        .collect();
    assert_eq!(left, ["failed", "held", "recent", "running"]);
}

/// A prune racing the writers that create a job when it is missing
/// (`record_command`, `acquire_job`, `put_checkpoint`, `enqueue`): each
/// writer either finds the old job (the prune then waits, and deletes it
/// with what was written) or, after the prune, creates the job afresh. It
/// never fails for a job that vanished under it, and what it wrote is
/// never lost beside a job that lives on.
#[apply(every_store)]
fn a_prune_racing_the_writers_that_create_a_job(store: Option<Fixture>) {
    let Some(f) = &store else { return };
    let clock = ManualClock::new(T0);
    let c = worker(f, &clock, "a");
    let later = T0.plus(Duration::from_secs(86_400 * 365));
    // A lease the prune's cutoff does not outlast.
    let lease_end = later.plus(Duration::from_secs(86_400));
    let writers = (f.another)();
    for round in 0..60 {
        let name = format!("race-{round}");
        let q = c.queue_with(&name, queue_options(1)).unwrap();
        q.enqueue([NewItem::key("x")]).unwrap();
        let item = q.claim(1).unwrap().pop().unwrap();
        q.complete(&item, None).unwrap();
        assert_eq!(q.finish_if_done().unwrap(), Some(JobStatus::Completed));
        let barrier = std::sync::Barrier::new(2);
        let (written, pruned) = std::thread::scope(|s| {
            let writer = s.spawn(|| {
                barrier.wait();
                match round % 4 {
                    0 => writers.record_command(&name, "cmd", T0).map(drop),
                    1 => writers
                        .acquire_job(&name, "other-owner", lease_end, None, T0)
                        .map(drop),
                    2 => writers.put_checkpoint(
                        &name,
                        Some(&ckpt::Checkpoint::new(serde_json::json!(1), 1)),
                        &ckpt::Expect::Anything,
                        10,
                        None,
                        T0,
                    ),
                    _ => writers
                        .enqueue(&name, &mut [Ok(NewItem::key("y"))].into_iter(), T0)
                        .map(drop),
                }
            });
            barrier.wait();
            let pruned = c.store().delete_job(&name, later).unwrap();
            (writer.join().unwrap(), pruned)
        });
        written.unwrap_or_else(|e| panic!("round {round}: the writer failed: {e}"));
        // Whatever the order, the writer's change is there: the job lives
        // on (written after the prune, or the prune refused a job the
        // writer changed) with it.
        let rec = c.get_job(&name).unwrap();
        match round % 4 {
            // A command does not reopen a job: the prune may go first or
            // second, and a job deleted second goes with its command.
            0 => {
                assert!(rec.is_some() || pruned, "round {round}");
                if rec.is_some() {
                    let commands = c.store().commands(&name).unwrap();
                    assert_eq!(commands.commands.len(), 1, "round {round}: {commands:?}");
                }
            }
            1 => assert!(rec.is_some_and(|r| r.owner.as_deref() == Some("other-owner"))),
            2 => assert!(rec.is_some_and(|r| r.checkpoint.is_some())),
            _ => assert!(q.counts().unwrap().pending == 1, "round {round}"),
        }
    }
}
