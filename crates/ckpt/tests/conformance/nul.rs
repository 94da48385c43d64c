//! Conformance: NUL characters, which PostgreSQL's text cannot hold. A
//! failure is recorded whatever its message holds (an item whose failure
//! cannot be written would be claimed again forever); stats are refused
//! alike on every store, so a run completes the same everywhere.

use std::time::Duration;

use ckpt::{ClaimedItem, Error, ItemStatus, Outcome, RunOptions, Runner};
use serde_json::json;

use super::queue_options;
use crate::{every_store, Fixture};
use rstest_reuse::apply;

#[apply(every_store)]
fn a_nul_in_a_failure_is_recorded_and_in_stats_is_refused(store: Option<Fixture>) {
    let Some(f) = &store else { return };
    let ckpt = ckpt::Ckpt::new((f.another)());
    let q = ckpt.queue_with("nul", queue_options(1)).unwrap();
    q.enqueue([ckpt::NewItem::key("fails"), ckpt::NewItem::key("done")])
        .unwrap();
    let fails = q.claim(1).unwrap().pop().unwrap();
    q.fail(&fails, "boom\0tail").unwrap();
    let dead = q.items(Some(ItemStatus::Dead), 10).unwrap();
    assert_eq!(dead.len(), 1, "the failure was recorded: {dead:?}");
    assert_eq!(dead[0].last_error.as_deref(), Some("boom\u{fffd}tail"));

    let done = q.claim(1).unwrap().pop().unwrap();
    for stats in [
        json!({"s": "a\0b"}),
        json!({"k\0": 1}),
        json!({"a": [{"b": "\0"}]}),
    ] {
        match q.complete(&done, Some(stats.clone())) {
            Err(Error::InvalidInput(m)) => assert!(m.contains("NUL"), "{m}"),
            other => panic!("{stats}: expected InvalidInput, got {other:?}"),
        }
    }
    assert_eq!(q.counts().unwrap().running, 1, "still held after a refusal");
    q.complete(&done, Some(json!({"s": "a b"}))).unwrap();

    // A runner's handler returning such stats: the item completes, the
    // stats are dropped (failing it would run finished work again).
    q.enqueue([ckpt::NewItem::key("run")]).unwrap();
    let handler = |_: &ClaimedItem| Outcome::Completed(Some(json!({"s": "\0"})));
    let options = RunOptions {
        idle_poll: Duration::from_millis(20),
        ..RunOptions::default()
    };
    let report = Runner::new(&q, options).run(&handler).unwrap();
    assert_eq!(report.completed, 1);
    let run = q.items(Some(ItemStatus::Completed), 10).unwrap();
    let run = run.iter().find(|i| i.key == "run").unwrap();
    assert_eq!(run.stats.as_ref().and_then(|s| s.get("s")), None, "{run:?}");
}

/// A job failed with a NUL in its message: recorded, on every store.
#[apply(every_store)]
fn a_nul_in_a_job_failure_is_recorded(store: Option<Fixture>) {
    let Some(f) = &store else { return };
    let ckpt = ckpt::Ckpt::new((f.another)());
    let job = ckpt.job("nul-job").unwrap();
    job.fail("bad\0input").unwrap();
    let record = ckpt.get_job("nul-job").unwrap().unwrap();
    assert_eq!(record.status, ckpt::JobStatus::Failed);
    assert_eq!(record.error.as_deref(), Some("bad\u{fffd}input"));
}
