//! Conformance: job checkpoints (the cursor pattern).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use ckpt::store::{Fault, FaultStore, Op, Store};
use ckpt::{Checkpoint, CheckpointPolicy, Ckpt, Error, Expect, JobOptions, JobStatus, ManualClock};
use serde_json::{json, Value};

use super::{dead_local_worker, limited, worker, T0};
use crate::{every_store, Fixture};
use rstest_reuse::apply;

fn every_call() -> JobOptions {
    JobOptions {
        lease: Duration::from_secs(10),
        policy: CheckpointPolicy::Always,
    }
}

#[apply(every_store)]
fn job_lease_is_exclusive_and_fences_zombies(store: Option<Fixture>) {
    let Some(f) = &store else { return };
    let clock = ManualClock::new(T0);
    let a = worker(f, &clock, "a");
    let b = worker(f, &clock, "b");
    let mut zombie = a.job_with("fenced", every_call()).unwrap();
    assert_eq!(zombie.record().attempts, 1);
    zombie.save(&10, 10).unwrap();
    assert!(b.job_with("fenced", every_call()).unwrap_err().is_busy());
    clock.advance(Duration::from_secs(10));
    let mut live = b.job_with("fenced", every_call()).unwrap();
    assert_eq!(live.resume_cursor::<u64>().unwrap(), Some(10));
    assert_eq!(live.record().attempts, 2);
    assert!(
        live.lease().epoch > zombie.lease().epoch,
        "a takeover bumps the epoch"
    );
    // The paused worker wakes up: every write is refused and changes nothing.
    assert!(zombie.save(&999, 999).unwrap_err().is_fenced());
    clock.advance(Duration::from_secs(5));
    assert!(zombie.heartbeat().unwrap_err().is_fenced());
    assert!(zombie.complete().unwrap_err().is_fenced());
    let rec = b.get_job("fenced").unwrap().unwrap();
    assert_eq!(rec.checkpoint.unwrap().cursor, json!(10));
    assert_eq!(rec.status, JobStatus::Running);
    live.save(&11, 11).unwrap();
    live.complete().unwrap();
    let rec = b.get_job("fenced").unwrap().unwrap();
    assert_eq!((rec.status, rec.owner), (JobStatus::Completed, None));
    assert!(rec.completed_at.is_some());
}

/// One worker (a `Ckpt` and its clones, as threads share it) holds a job
/// through one handle at a time: a second acquire while the first handle
/// lives is busy, so two loops never run the same job; a dropped handle
/// (which cannot release) is no obstacle, and a new worker of the same
/// process is another worker.
#[apply(every_store)]
fn one_worker_holds_a_job_through_one_handle(store: Option<Fixture>) {
    let Some(f) = &store else { return };
    let clock = ManualClock::new(T0);
    let a = worker(f, &clock, "a");
    let mut first = a.job_with("twice", every_call()).unwrap();
    first.save(&1, 1).unwrap();
    let err = a.clone().job_with("twice", every_call()).unwrap_err();
    assert!(err.is_busy(), "{err:?}");
    assert!(
        err.to_string().contains("held by this worker already"),
        "{err}"
    );
    assert!(a
        .new_worker()
        .job_with("twice", every_call())
        .unwrap_err()
        .is_busy());
    // Refused without a write: the first handle is still the holder.
    first.save(&2, 2).unwrap();
    let epoch = first.lease().epoch;
    drop(first);
    let again = a.job_with("twice", every_call()).unwrap();
    assert_eq!(again.resume_cursor::<u64>().unwrap(), Some(2));
    assert!(again.lease().epoch > epoch);
    again.complete().unwrap();
    // Completed and let go: the same worker may take it up again.
    a.job_with("twice", every_call())
        .unwrap()
        .release()
        .unwrap();
    // A handle told its lease is lost holds nothing: while it lives, its
    // worker may acquire the job again.
    let mut stale = a.job_with("lost", every_call()).unwrap();
    stale.save(&1, 1).unwrap();
    clock.advance(Duration::from_secs(11));
    a.new_worker()
        .set_checkpoint("lost", &Checkpoint::new(json!(5), 5))
        .unwrap();
    assert!(stale.save(&2, 2).unwrap_err().is_fenced());
    let again = a.job_with("lost", every_call()).unwrap();
    assert_eq!(again.resume_cursor::<u64>().unwrap(), Some(5));
    drop(stale);
    again.complete().unwrap();
}

/// A policy that cannot be followed is refused before the job is
/// created: not a panic after the first save.
#[apply(every_store)]
fn an_impossible_policy_is_refused_before_anything_is_written(store: Option<Fixture>) {
    let Some(f) = &store else { return };
    let clock = ManualClock::new(T0);
    let a = worker(f, &clock, "a");
    let options = JobOptions {
        lease: Duration::from_secs(10),
        policy: CheckpointPolicy::Adaptive {
            target_overhead: f64::NAN,
            max_interval: Duration::from_secs(30),
        },
    };
    let err = a.job_with("nan", options).unwrap_err();
    assert!(matches!(err, Error::InvalidInput(_)), "{err:?}");
    assert!(a.get_job("nan").unwrap().is_none());
}

#[apply(every_store)]
fn dead_local_job_owner_is_taken_over_at_once(store: Option<Fixture>) {
    let Some(f) = &store else { return };
    let clock = ManualClock::new(T0);
    let crashed = Ckpt::new((f.another)())
        .with_clock(Arc::new(clock.clone()))
        .with_worker(dead_local_worker());
    let mut job = crashed.job_with("crashed-here", every_call()).unwrap();
    job.save(&"page-7", 70).unwrap();
    drop(job); // the lease is still held, as after a crash
    let restarted = Ckpt::new((f.another)()).with_clock(Arc::new(clock.clone()));
    let resumed = restarted.job_with("crashed-here", every_call()).unwrap();
    assert_eq!(
        resumed.resume_cursor::<String>().unwrap().as_deref(),
        Some("page-7")
    );
    // A holder on another host is not presumed dead.
    let other = worker(f, &clock, "elsewhere");
    assert!(other
        .job_with("crashed-here", every_call())
        .unwrap_err()
        .is_busy());
}

#[apply(every_store)]
fn history_is_bounded_newest_first(store: Option<Fixture>) {
    let Some(f) = &store else { return };
    let clock = ManualClock::new(T0);
    let c = limited(f, &clock, 5, 1024);
    let mut job = c.job_with("history", every_call()).unwrap();
    for i in 1..=12u64 {
        clock.advance(Duration::from_secs(1));
        job.save(&json!({"offset": i * 100}), i * 100).unwrap();
    }
    let history = c.store().history("history", 100).unwrap();
    let seqs: Vec<u64> = history.iter().map(|h| h.seq).collect();
    assert_eq!(seqs, [12, 11, 10, 9, 8]);
    assert_eq!(history[0].cursor, json!({"offset": 1200}));
    assert_eq!(history[0].items_processed, 1200);
    assert_eq!(history[0].at, T0.plus(Duration::from_secs(12)));
    let rec = c.get_job("history").unwrap().unwrap();
    assert_eq!((rec.history_len, rec.saves), (5, 12));
    assert_eq!(c.store().history("history", 2).unwrap().len(), 2);
}

/// A job whose history bound is cut (a new release, a new setting) ends up
/// within the new bound, not the old one, after enough saves.
#[apply(every_store)]
fn a_cut_history_bound_is_applied(store: Option<Fixture>) {
    let Some(f) = &store else { return };
    let clock = ManualClock::new(T0);
    let mut job = limited(f, &clock, 40, 1024)
        .job_with("cut", every_call())
        .unwrap();
    for i in 1..=60u64 {
        job.save(&i, i).unwrap();
    }
    job.release().unwrap();
    let c = limited(f, &clock, 3, 1024);
    assert_eq!(c.get_job("cut").unwrap().unwrap().history_len, 40);
    let mut job = c.job_with("cut", every_call()).unwrap();
    let seqs = || -> Vec<u64> {
        let history = c.store().history("cut", 1000).unwrap();
        history.iter().map(|h| h.seq).collect()
    };
    // From the first save under the new bound.
    job.save(&61, 61).unwrap();
    assert_eq!(seqs(), [61, 60, 59]);
    assert_eq!(c.get_job("cut").unwrap().unwrap().history_len, 3);
    for i in 62..=400u64 {
        job.save(&i, i).unwrap();
        assert_eq!(seqs().len(), 3, "after save {i}");
    }
    assert_eq!(seqs(), [400, 399, 398]);
    assert_eq!(c.get_job("cut").unwrap().unwrap().history_len, 3);
    job.release().unwrap();
    // No history at all: none left after the next save.
    let none = limited(f, &clock, 0, 1024);
    let mut job = none.job_with("cut", every_call()).unwrap();
    job.save(&401, 401).unwrap();
    assert_eq!(seqs(), [] as [u64; 0]);
    job.save(&402, 402).unwrap();
    assert_eq!(seqs(), [] as [u64; 0]);
}

/// Operator writes (`ckpt checkpoint set`) keep the history bound the same
/// way, a cut one from their first write.
#[apply(every_store)]
fn operator_writes_apply_a_cut_history_bound(store: Option<Fixture>) {
    let Some(f) = &store else { return };
    let clock = ManualClock::new(T0);
    let write = |c: &Ckpt, i: u64| {
        c.set_checkpoint_if("cut-op", &Checkpoint::new(json!(i), i), &Expect::Anything)
            .unwrap();
    };
    let wide = limited(f, &clock, 40, 1024);
    for i in 1..=60u64 {
        write(&wide, i);
    }
    let c = limited(f, &clock, 3, 1024);
    let seqs = || -> Vec<u64> {
        let history = c.store().history("cut-op", 1000).unwrap();
        history.iter().map(|h| h.seq).collect()
    };
    assert_eq!(seqs().len(), 40);
    write(&c, 61);
    assert_eq!(seqs(), [61, 60, 59]);
    for i in 62..=70u64 {
        write(&c, i);
    }
    assert_eq!(seqs(), [70, 69, 68]);
    assert_eq!(c.get_job("cut-op").unwrap().unwrap().history_len, 3);
    write(&limited(f, &clock, 0, 1024), 71);
    assert_eq!(seqs(), [] as [u64; 0]);
}

#[apply(every_store)]
fn oversize_state_is_refused_and_previous_kept(store: Option<Fixture>) {
    let Some(f) = &store else { return };
    let clock = ManualClock::new(T0);
    let c = limited(f, &clock, 10, 100);
    let mut job = c.job_with("big-state", every_call()).unwrap();
    let small = Checkpoint::new(json!(1), 1).with_state(json!({"sum": 1}));
    job.checkpoint(small.clone()).unwrap();
    let big = Checkpoint::new(json!(2), 2).with_state(Value::String("x".repeat(200)));
    let err = job.checkpoint(big.clone()).unwrap_err();
    assert!(
        matches!(err, Error::LimitExceeded { limit: 100, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("over the limit"));
    let rec = c.get_job("big-state").unwrap().unwrap();
    assert_eq!(rec.checkpoint, Some(small));
    assert_eq!(rec.state_bytes, 9);
    assert!(matches!(
        c.set_checkpoint("big-state", &big),
        Err(Error::LimitExceeded { .. })
    ));
    // The job goes on after the refusal.
    job.save(&3, 3).unwrap();
}

#[apply(every_store)]
fn completed_and_failed_jobs_keep_their_checkpoint(store: Option<Fixture>) {
    let Some(f) = &store else { return };
    let clock = ManualClock::new(T0);
    let c = worker(f, &clock, "a");
    let mut job = c.job_with("lifecycle", every_call()).unwrap();
    assert_eq!(
        job.resume_cursor::<u64>().unwrap(),
        None,
        "a new job has no checkpoint"
    );
    job.checkpoint(
        Checkpoint::new(json!(5), 5)
            .with_stage("load")
            .with_state(json!([1, 2])),
    )
    .unwrap();
    job.fail("disk full").unwrap();
    let rec = c.get_job("lifecycle").unwrap().unwrap();
    assert_eq!(
        (rec.status, rec.error.as_deref()),
        (JobStatus::Failed, Some("disk full"))
    );
    let job = c.job_with("lifecycle", every_call()).unwrap();
    assert_eq!(
        job.resume_checkpoint().unwrap().stage.as_deref(),
        Some("load")
    );
    assert_eq!(job.resume_state::<Vec<u8>>().unwrap(), Some(vec![1, 2]));
    assert_eq!(
        job.record().status,
        JobStatus::Running,
        "acquiring a failed job resumes it"
    );
    job.complete().unwrap();
    let rec = c.get_job("lifecycle").unwrap().unwrap();
    assert_eq!(rec.status, JobStatus::Completed);
    assert_eq!(
        rec.checkpoint.unwrap().cursor,
        json!(5),
        "the final checkpoint is kept"
    );
    let again = c.job_with("lifecycle", every_call()).unwrap();
    assert!(again.was_completed());
}

#[apply(every_store)]
fn undecodable_cursor_is_an_error_not_a_restart(store: Option<Fixture>) {
    let Some(f) = &store else { return };
    let clock = ManualClock::new(T0);
    let c = worker(f, &clock, "a");
    let mut job = c.job_with("decode", every_call()).unwrap();
    job.save(&json!({"page": "abc"}), 1).unwrap();
    job.release().unwrap();
    let job = c.job_with("decode", every_call()).unwrap();
    let err = job.resume_cursor::<u64>().unwrap_err();
    assert!(matches!(err, Error::Decode { what: "cursor", .. }), "{err}");
    #[derive(serde::Deserialize, Debug, PartialEq)]
    struct Cursor {
        page: String,
    }
    assert_eq!(
        job.resume_cursor::<Cursor>().unwrap(),
        Some(Cursor { page: "abc".into() })
    );
}

#[apply(every_store)]
fn operator_writes_respect_live_owners(store: Option<Fixture>) {
    let Some(f) = &store else { return };
    let clock = ManualClock::new(T0);
    let op = worker(f, &clock, "operator");
    let w = worker(f, &clock, "worker");
    assert!(op.clear_checkpoint("ops").unwrap_err().is_not_found());
    op.set_checkpoint("ops", &Checkpoint::new(json!(1), 1))
        .unwrap();
    let mut job = w.job_with("ops", every_call()).unwrap();
    assert_eq!(job.resume_cursor::<u64>().unwrap(), Some(1));
    assert!(op
        .set_checkpoint("ops", &Checkpoint::new(json!(2), 2))
        .unwrap_err()
        .is_busy());
    assert!(op.clear_checkpoint("ops").unwrap_err().is_busy());
    clock.advance(Duration::from_secs(11));
    op.clear_checkpoint("ops").unwrap();
    assert!(
        job.save(&3, 3).unwrap_err().is_fenced(),
        "an operator write fences the old holder"
    );
    let rec = op.get_job("ops").unwrap().unwrap();
    assert_eq!((rec.checkpoint, rec.history_len), (None, 0));
}

/// Runs records 1..=100, saving after each; returns the records processed.
fn cursor_loop(c: &Ckpt, processed: &mut Vec<u64>) -> Result<(), Error> {
    let mut job = c.job_with("resume", every_call())?;
    let start = job.resume_cursor::<u64>()?.unwrap_or(0);
    for record in start + 1..=100 {
        processed.push(record);
        job.save(&record, record)?;
    }
    job.complete()
}

fn crash_and_resume(f: &Fixture, fault: Fault) -> (Vec<u64>, Vec<u64>) {
    let clock = ManualClock::new(T0);
    let faulty: Arc<dyn Store> =
        Arc::new(FaultStore::new((f.another)()).inject(Op::SaveCheckpoint, 30, fault));
    let first = Ckpt::new(faulty).with_clock(Arc::new(clock.clone()));
    let mut before = Vec::new();
    assert!(
        cursor_loop(&first, &mut before).is_err(),
        "the injected crash stops the loop"
    );
    clock.advance(Duration::from_secs(10)); // the crashed worker's lease expires
    let mut after = Vec::new();
    cursor_loop(&worker(f, &clock, "restarted"), &mut after).unwrap();
    let all: BTreeSet<u64> = before.iter().chain(&after).copied().collect();
    assert_eq!(all.len(), 100, "no record lost");
    (before, after)
}

#[apply(every_store)]
fn crash_after_save_resumes_from_it(store: Option<Fixture>) {
    let Some(f) = &store else { return };
    let (before, after) = crash_and_resume(f, Fault::CrashAfter);
    assert_eq!(before.last(), Some(&30));
    assert_eq!(
        after.first(),
        Some(&31),
        "the save landed, so record 30 is not redone"
    );
}

#[apply(every_store)]
fn crash_before_save_resumes_from_previous(store: Option<Fixture>) {
    let Some(f) = &store else { return };
    let (before, after) = crash_and_resume(f, Fault::CrashBefore);
    assert_eq!(before.last(), Some(&30));
    assert_eq!(
        after.first(),
        Some(&30),
        "only the unsaved record runs again"
    );
}

#[apply(every_store)]
fn schema_version_mismatch_is_refused(store: Option<Fixture>) {
    let Some(f) = &store else { return };
    let Some(make_newer) = &f.newer_schema else {
        eprintln!("skipped: this store has no persistent schema");
        return;
    };
    let clock = ManualClock::new(T0);
    let c = worker(f, &clock, "a");
    c.set_checkpoint("kept", &Checkpoint::new(json!(1), 1))
        .unwrap();
    let err = make_newer();
    assert!(
        matches!(err, Error::SchemaTooNew { found: 999, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("upgrade ckpt"));
}

#[apply(every_store)]
fn transient_store_failure_loses_nothing(store: Option<Fixture>) {
    let Some(f) = &store else { return };
    let clock = ManualClock::new(T0);
    let flaky: Arc<dyn Store> =
        Arc::new(FaultStore::new((f.another)()).inject(Op::SaveCheckpoint, 2, Fault::Fail));
    let c = Ckpt::new(flaky).with_clock(Arc::new(clock.clone()));
    let mut job = c.job_with("flaky", every_call()).unwrap();
    job.save(&1, 1).unwrap();
    let err = job.save(&2, 2).unwrap_err();
    assert!(matches!(err, Error::Unavailable(_)), "{err}");
    assert_eq!(
        c.get_job("flaky")
            .unwrap()
            .unwrap()
            .checkpoint
            .unwrap()
            .cursor,
        json!(1),
        "the failed save changed nothing"
    );
    job.save(&3, 3).unwrap();
    job.complete().unwrap();
    let rec = c.get_job("flaky").unwrap().unwrap();
    assert_eq!((rec.checkpoint.unwrap().cursor, rec.saves), (json!(3), 2));
}

/// A flush that fails on a transient error keeps its checkpoint pending:
/// retrying the flush (or completing) saves it, rather than succeeding
/// with nothing to save and leaving the older checkpoint as the last.
#[apply(every_store)]
fn a_retried_flush_saves_what_the_failed_one_could_not(store: Option<Fixture>) {
    let Some(f) = &store else { return };
    let clock = ManualClock::new(T0);
    let flaky_at = |nth| -> Ckpt {
        let store = FaultStore::new((f.another)()).inject(Op::SaveCheckpoint, nth, Fault::Fail);
        Ckpt::new(Arc::new(store)).with_clock(Arc::new(clock.clone()))
    };
    let quiet = || JobOptions {
        lease: Duration::from_secs(10),
        policy: CheckpointPolicy::Every {
            items: Some(1_000),
            interval: None,
        },
    };
    let c = flaky_at(2);
    let mut job = c.job_with("flushed", quiet()).unwrap();
    assert!(!job.save(&1, 1).unwrap(), "recorded, not yet due");
    job.flush().unwrap();
    assert!(!job.save(&2, 2).unwrap());
    let cursor = |c: &Ckpt, name| {
        c.get_job(name)
            .unwrap()
            .unwrap()
            .checkpoint
            .map(|cp| cp.cursor)
    };
    assert!(job.flush().unwrap_err().is_transient());
    assert_eq!(
        cursor(&c, "flushed"),
        Some(json!(1)),
        "the failed flush changed nothing"
    );
    job.flush().unwrap();
    assert_eq!(
        cursor(&c, "flushed"),
        Some(json!(2)),
        "the retried flush saved it"
    );
    // complete() after a failed flush saves the checkpoint too.
    let c = flaky_at(1);
    let mut job = c.job_with("completed", quiet()).unwrap();
    assert!(!job.save(&3, 3).unwrap());
    assert!(job.flush().unwrap_err().is_transient());
    job.complete().unwrap();
    let rec = c.get_job("completed").unwrap().unwrap();
    assert_eq!(rec.status, JobStatus::Completed);
    assert_eq!(
        rec.checkpoint.map(|cp| cp.cursor),
        Some(json!(3)),
        "complete saved it"
    );
}

/// A flush that fails for good drops its checkpoint: later flushes, and
/// complete(), fail until a newer checkpoint is saved, rather than
/// succeed without it (and complete the job on the older one).
#[apply(every_store)]
fn a_checkpoint_dropped_by_a_failed_save_is_not_forgotten(store: Option<Fixture>) {
    let Some(f) = &store else { return };
    let clock = ManualClock::new(T0);
    let store = FaultStore::new((f.another)()).inject(Op::SaveCheckpoint, 2, Fault::Refuse);
    let c = Ckpt::new(Arc::new(store)).with_clock(Arc::new(clock.clone()));
    let options = JobOptions {
        lease: Duration::from_secs(10),
        policy: CheckpointPolicy::Every {
            items: Some(1_000),
            interval: None,
        },
    };
    let mut job = c.job_with("refused", options.clone()).unwrap();
    job.save(&1, 1).unwrap();
    job.flush().unwrap();
    job.save(&2, 2).unwrap();
    let err = job.flush().unwrap_err();
    assert!(!err.is_transient(), "{err}");
    let again = job.flush().unwrap_err().to_string();
    assert!(
        again.contains("the last checkpoint recorded was not saved (store error: injected refusal"),
        "{again}"
    );
    // A newer checkpoint saved ends it.
    job.save(&3, 3).unwrap();
    job.flush().unwrap();
    job.flush().unwrap();
    job.complete().unwrap();
    let rec = c.get_job("refused").unwrap().unwrap();
    assert_eq!(rec.checkpoint.map(|cp| cp.cursor), Some(json!(3)));

    // complete() right after the failure does not complete on the older one.
    let store = FaultStore::new((f.another)()).inject(Op::SaveCheckpoint, 2, Fault::Refuse);
    let c = Ckpt::new(Arc::new(store)).with_clock(Arc::new(clock.clone()));
    let mut job = c.job_with("kept", options.clone()).unwrap();
    job.save(&1, 1).unwrap();
    job.flush().unwrap();
    job.save(&2, 2).unwrap();
    job.flush().unwrap_err();
    let err = job.complete().unwrap_err();
    assert!(err.to_string().contains("was not saved"), "{err}");
    let rec = c.get_job("kept").unwrap().unwrap();
    assert_eq!(rec.status, JobStatus::Running, "not completed without it");
    assert_eq!(rec.checkpoint.map(|cp| cp.cursor), Some(json!(1)));

    // release() still gives the job back, to resume from what is stored.
    let store = FaultStore::new((f.another)()).inject(Op::SaveCheckpoint, 2, Fault::Refuse);
    let c = Ckpt::new(Arc::new(store)).with_clock(Arc::new(clock.clone()));
    let mut job = c.job_with("released", options.clone()).unwrap();
    job.save(&1, 1).unwrap();
    job.flush().unwrap();
    job.save(&2, 2).unwrap();
    job.flush().unwrap_err();
    job.release().unwrap();
    let again = c.job_with("released", options).unwrap();
    assert_eq!(again.resume_cursor::<u64>().unwrap(), Some(1));
    again.release().unwrap();
}

/// A cursor loop whose renewals keep failing stops itself before its lease
/// can lapse: `heartbeat()` (and so `checkpoint()`) says the lease is lost
/// once it can no longer be proven, not only once another worker took it.
#[apply(every_store)]
fn a_loop_that_cannot_renew_is_told_to_stop_before_its_lease_lapses(store: Option<Fixture>) {
    let Some(f) = &store else { return };
    let lease = Duration::from_secs(30);
    let options = JobOptions {
        lease,
        policy: CheckpointPolicy::Always,
    };
    let timings = ckpt::policy::fence::FenceTimings::for_lease(lease);
    for (late, told_to_stop) in [(timings.renew_after, false), (timings.term_after, true)] {
        let clock = ManualClock::new(T0);
        let faulty: Arc<dyn Store> =
            Arc::new(FaultStore::new((f.another)()).inject(Op::RenewJob, 1, Fault::Fail));
        let ckpt = Ckpt::new(faulty).with_clock(Arc::new(clock.clone()));
        let mut job = ckpt
            .job_with(&format!("unrenewed-{told_to_stop}"), options.clone())
            .unwrap();
        clock.advance(late);
        let err = job.heartbeat().unwrap_err();
        assert_eq!(err.is_fenced(), told_to_stop, "{late:?} late: {err}");
        assert_eq!(err.is_transient(), !told_to_stop, "{late:?} late: {err}");
        if told_to_stop {
            assert!(err.to_string().contains("stop"), "{err}");
            // Before the lease lapses: nobody else could have it yet.
            assert!(late < lease);
        }
        // The outage ends: the next renewal works and the loop goes on.
        job.heartbeat().unwrap();
    }
}
