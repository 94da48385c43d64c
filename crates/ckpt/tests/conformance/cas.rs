//! Conformance: operator checkpoint writes as compare-and-set (`ckpt
//! checkpoint set --expect`), and a history that follows commit order.

use std::time::Duration;

use ckpt::{Checkpoint, CheckpointPolicy, Ckpt, Error, Expect, JobOptions, ManualClock};
use serde_json::{json, Value};

use super::{worker, T0};
use crate::{every_store, Fixture};
use rstest_reuse::apply;

fn every_call() -> JobOptions {
    JobOptions {
        lease: Duration::from_secs(10),
        policy: CheckpointPolicy::Always,
    }
}

/// `ckpt checkpoint set --expect`: a compare-and-set on canonical JSON.
#[apply(every_store)]
fn checkpoint_cas_writes_only_on_the_expected_cursor(store: Option<Fixture>) {
    let Some(f) = &store else { return };
    let clock = ManualClock::new(T0);
    let c = worker(f, &clock, "operator");
    let cp = |v: Value| Checkpoint::new(v, 0);
    // A fresh job has no checkpoint: a cursor is not met, and nothing is
    // created.
    let err = c
        .set_checkpoint_if("cas", &cp(json!(1)), &Expect::Cursor(json!(0)))
        .unwrap_err();
    assert!(err.is_cursor_mismatch(), "{err}");
    assert!(err.to_string().contains("stored cursor is none"), "{err}");
    assert!(
        c.get_job("cas").unwrap().is_none(),
        "a refused write creates no job"
    );
    c.set_checkpoint_if("cas", &cp(json!({"a": 1, "b": 2})), &Expect::NoCheckpoint)
        .unwrap();
    let before = c.get_job("cas").unwrap().unwrap();
    // `none` on a job with a checkpoint, another cursor, and 1.0 for 1:
    // each refused, naming the stored cursor, and nothing written.
    for expect in [
        Expect::NoCheckpoint,
        Expect::Cursor(json!({"a": 1})),
        Expect::Cursor(json!({"a": 1.0, "b": 2})),
    ] {
        let err = c
            .set_checkpoint_if("cas", &cp(json!("lost")), &expect)
            .unwrap_err();
        match &err {
            Error::CursorMismatch { job, stored, .. } => {
                assert_eq!(job, "cas");
                assert_eq!(stored.as_deref(), Some(r#"{"a":1,"b":2}"#));
            }
            other => panic!("expected a mismatch for {expect:?}, got {other}"),
        }
        assert!(err.to_string().contains(r#"{"a":1,"b":2}"#), "{err}");
    }
    let after = c.get_job("cas").unwrap().unwrap();
    assert_eq!(
        (
            after.checkpoint,
            after.saves,
            after.history_len,
            after.epoch
        ),
        (
            before.checkpoint,
            before.saves,
            before.history_len,
            before.epoch
        )
    );
    // Key order does not matter.
    c.set_checkpoint_if(
        "cas",
        &cp(json!(2)),
        &Expect::Cursor(json!({"b": 2, "a": 1})),
    )
    .unwrap();
    assert_eq!(
        c.get_job("cas")
            .unwrap()
            .unwrap()
            .checkpoint
            .unwrap()
            .cursor,
        json!(2)
    );
    // After a clear there is no checkpoint again.
    c.clear_checkpoint("cas").unwrap();
    assert!(c
        .set_checkpoint_if("cas", &cp(json!(3)), &Expect::Cursor(json!(2)))
        .unwrap_err()
        .is_cursor_mismatch());
    c.set_checkpoint_if("cas", &cp(json!(3)), &Expect::NoCheckpoint)
        .unwrap();
    assert_eq!(
        c.get_job("cas")
            .unwrap()
            .unwrap()
            .checkpoint
            .unwrap()
            .cursor,
        json!(3)
    );
}

/// Writers racing from the same old cursor: exactly one wins.
#[apply(every_store)]
fn checkpoint_cas_race_has_one_winner(store: Option<Fixture>) {
    let Some(f) = &store else { return };
    const N: usize = 8;
    let clock = ManualClock::new(T0);
    let setup = worker(f, &clock, "setup");
    setup
        .set_checkpoint("race", &Checkpoint::new(json!("start"), 0))
        .unwrap();
    let writers: Vec<Ckpt> = (0..N)
        .map(|i| worker(f, &clock, &format!("w{i}")))
        .collect();
    let barrier = std::sync::Barrier::new(N);
    let results: Vec<Result<(), Error>> = std::thread::scope(|s| {
        let handles: Vec<_> = writers
            .iter()
            .enumerate()
            .map(|(i, w)| {
                let barrier = &barrier;
                s.spawn(move || {
                    barrier.wait();
                    w.set_checkpoint_if(
                        "race",
                        &Checkpoint::new(json!(i), 0),
                        &Expect::Cursor(json!("start")),
                    )
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let winners: Vec<usize> = (0..N).filter(|i| results[*i].is_ok()).collect();
    assert_eq!(winners.len(), 1, "{results:?}");
    for r in results.iter().filter(|r| r.is_err()) {
        assert!(r.as_ref().unwrap_err().is_cursor_mismatch(), "{r:?}");
    }
    let rec = setup.get_job("race").unwrap().unwrap();
    assert_eq!(rec.checkpoint.unwrap().cursor, json!(winners[0]));
    assert_eq!(rec.saves, 2, "one write besides the setup's");
}

/// The history follows commit order, also in its times: a writer that read
/// its clock before an earlier commit's does not put an older time on top.
#[apply(every_store)]
fn history_follows_commit_order(store: Option<Fixture>) {
    let Some(f) = &store else { return };
    let late = ManualClock::new(T0.plus(Duration::from_secs(10)));
    let early = ManualClock::new(T0.plus(Duration::from_secs(5)));
    let a = worker(f, &late, "a");
    let b = worker(f, &early, "b");
    a.set_checkpoint("order", &Checkpoint::new(json!(1), 1))
        .unwrap();
    b.set_checkpoint("order", &Checkpoint::new(json!(2), 2))
        .unwrap();
    // A lease holder whose clock is behind too (the fenced save path).
    let mut job = b.job_with("order", every_call()).unwrap();
    job.save(&3, 3).unwrap();
    let history = a.store().history("order", 10).unwrap();
    let seen: Vec<(u64, Value)> = history.iter().map(|h| (h.seq, h.cursor.clone())).collect();
    assert_eq!(seen, [(3, json!(3)), (2, json!(2)), (1, json!(1))]);
    for pair in history.windows(2) {
        assert!(
            pair[0].at >= pair[1].at,
            "history times step back: {history:?}"
        );
    }
    let rec = a.get_job("order").unwrap().unwrap();
    assert_eq!(rec.checkpoint_at, Some(T0.plus(Duration::from_secs(10))));
}

/// Clearing the checkpoint of a job that does not exist is NotFound on
/// every store, whatever the caller expected of its cursor (the store
/// contract; the public API clears with `Expect::Anything`).
#[apply(every_store)]
fn clearing_a_missing_job_is_not_found_whatever_was_expected(store: Option<Fixture>) {
    let Some(f) = &store else { return };
    let store = (f.another)();
    for expect in [
        Expect::Anything,
        Expect::NoCheckpoint,
        Expect::Cursor(json!(5)),
    ] {
        let err = store
            .put_checkpoint("no-such-job", None, &expect, 10, None, T0)
            .unwrap_err();
        assert!(matches!(err, Error::NotFound(_)), "{expect:?}: {err}");
    }
    assert!(store.get_job("no-such-job").unwrap().is_none());
}
