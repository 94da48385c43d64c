//! Conformance: operator writes behind `ckpt prune` and `ckpt history truncate`.

use std::time::Duration;

use ckpt::{ItemStatus, JobStatus, ManualClock, NewItem};

use super::{limited, queue_options, worker, T0};
use crate::Fixture;

fn every_call() -> ckpt::JobOptions {
    ckpt::JobOptions {
        policy: ckpt::CheckpointPolicy::Always,
        ..ckpt::JobOptions::default()
    }
}

pub fn history_truncate_keeps_the_newest(f: &Fixture) {
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

pub fn delete_job_only_when_completed_before_the_cutoff(f: &Fixture) {
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

pub fn delete_job_spares_failed_and_running_jobs(f: &Fixture) {
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
