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

/// A NUL in a cursor, state, stage, payload or item cursor: refused alike
/// on every store (PostgreSQL cannot keep one), before anything is
/// written; the job and the item go on.
#[apply(every_store)]
fn a_nul_in_a_stored_value_is_refused_on_every_store(store: Option<Fixture>) {
    let Some(f) = &store else { return };
    let ckpt = ckpt::Ckpt::new((f.another)());
    let refused = |what: &str, result: ckpt::Result<()>| match result {
        Err(Error::InvalidInput(m)) => assert!(m.contains("NUL"), "{what}: {m}"),
        other => panic!("{what}: expected InvalidInput, got {other:?}"),
    };
    let good = ckpt::Checkpoint::new(json!("row-1"), 1);
    let bad = [
        ckpt::Checkpoint::new(json!("row\u{0}2"), 2),
        ckpt::Checkpoint::new(json!({"k\u{0}": 1}), 2),
        ckpt::Checkpoint {
            state: Some(json!({"s": ["\u{0}"]})),
            ..ckpt::Checkpoint::new(json!(2), 2)
        },
        ckpt::Checkpoint {
            stage: Some("st\u{0}age".into()),
            ..ckpt::Checkpoint::new(json!(2), 2)
        },
    ];
    // Operator writes.
    ckpt.set_checkpoint("j", &good).unwrap();
    for cp in &bad {
        refused("set_checkpoint", ckpt.set_checkpoint("j", cp));
    }
    // The lease holder's: refused at the save, the job still held and
    // saving.
    let mut job = ckpt.job("held").unwrap();
    for cp in &bad {
        refused("save", job.checkpoint(cp.clone()).and_then(|_| job.flush()));
    }
    job.checkpoint(good.clone()).unwrap();
    job.complete().unwrap();
    for name in ["j", "held"] {
        let stored = ckpt.get_job(name).unwrap().unwrap().checkpoint.unwrap();
        assert_eq!(stored.cursor, json!("row-1"), "{name}");
    }
    // Items.
    let q = ckpt.queue_with("nul-items", queue_options(3)).unwrap();
    refused(
        "payload",
        q.enqueue([ckpt::NewItem {
            key: "a".into(),
            payload: Some(json!("x\u{0}y")),
        }])
        .map(drop),
    );
    assert_eq!(q.counts().unwrap().total(), 0, "nothing enqueued");
    q.enqueue([ckpt::NewItem::key("b")]).unwrap();
    let item = q.claim(1).unwrap().pop().unwrap();
    refused("item cursor", q.save_cursor(&item, json!({"f": "x\u{0}y"})));
    q.save_cursor(&item, json!({"f": "xy"})).unwrap();
    q.complete(&item, None).unwrap();
    assert_eq!(q.counts().unwrap().completed, 1);
}
