//! Conformance: a value nested as deep as the stores can read back is
//! saved and read back; one level deeper is refused before anything is
//! written (it would be written, then never read again: the job or item
//! would read as corrupt).

use std::time::Duration;

use ckpt::validate::MAX_JSON_NESTING;
use ckpt::{Checkpoint, CheckpointPolicy, Error, JobOptions, ManualClock, NewItem};
use serde_json::Value;

use super::{queue_options, worker, T0};
use crate::{every_store, Fixture};
use rstest_reuse::apply;

fn nested(depth: usize) -> Value {
    (0..depth).fold(Value::from("leaf"), |v, _| Value::Array(vec![v]))
}

fn refused(result: ckpt::Result<impl std::fmt::Debug>) {
    match result {
        Err(Error::InvalidInput(m)) => assert!(m.contains("nests"), "{m}"),
        other => panic!("expected InvalidInput, got {other:?}"),
    }
}

#[apply(every_store)]
fn values_nest_as_deep_as_they_read_back_and_no_deeper(store: Option<Fixture>) {
    let Some(f) = &store else { return };
    let clock = ManualClock::new(T0);
    let a = worker(f, &clock, "a");
    let options = JobOptions {
        lease: Duration::from_secs(10),
        policy: CheckpointPolicy::Always,
    };

    // A job: the deepest cursor and state are saved and read back by the
    // next holder; deeper ones are refused and the saved one stays.
    let mut job = a.job_with("deep", options.clone()).unwrap();
    let deepest = Checkpoint {
        cursor: nested(MAX_JSON_NESTING),
        items_processed: 1,
        stage: None,
        state: Some(nested(MAX_JSON_NESTING)),
    };
    assert!(job.checkpoint(deepest.clone()).unwrap());
    refused(job.save(&nested(MAX_JSON_NESTING + 1), 2));
    let mut too_deep_state = deepest.clone();
    too_deep_state.state = Some(nested(MAX_JSON_NESTING + 1));
    refused(job.checkpoint(too_deep_state));
    job.release().unwrap();
    let job = a.job_with("deep", options).unwrap();
    assert_eq!(job.resume_checkpoint(), Some(&deepest));
    job.release().unwrap();
    // Its history too (Redis keeps each entry as one JSON text around it).
    let history = a.store().history("deep", 10).unwrap();
    assert_eq!(history[0].cursor, deepest.cursor);

    // An operator's write: refused the same way.
    let mut deeper = deepest.clone();
    deeper.cursor = nested(MAX_JSON_NESTING + 1);
    refused(a.set_checkpoint("deep", &deeper));
    assert_eq!(
        a.get_job("deep").unwrap().unwrap().checkpoint,
        Some(deepest)
    );

    // Items: a too-deep payload aborts the enqueue (nothing added); the
    // deepest payload and per-item cursor go in and come back out.
    let q = a.queue_with("deep-items", queue_options(2)).unwrap();
    refused(q.enqueue([
        NewItem::key("fine"),
        NewItem {
            key: "deep".into(),
            payload: Some(nested(MAX_JSON_NESTING + 1)),
        },
    ]));
    assert_eq!(q.counts().unwrap().total(), 0);
    q.enqueue([NewItem {
        key: "deep".into(),
        payload: Some(nested(MAX_JSON_NESTING)),
    }])
    .unwrap();
    let item = q.claim(1).unwrap().pop().unwrap();
    assert_eq!(item.payload, Some(nested(MAX_JSON_NESTING)));
    refused(q.save_cursor(&item, nested(MAX_JSON_NESTING + 1)));
    q.save_cursor(&item, nested(MAX_JSON_NESTING)).unwrap();
    q.release(&item).unwrap();
    let again = q.claim(1).unwrap().pop().unwrap();
    assert_eq!(again.cursor, Some(nested(MAX_JSON_NESTING)));
}

#[apply(every_store)]
fn stats_that_could_not_be_read_back_are_refused_or_left_out(store: Option<Fixture>) {
    let Some(f) = &store else { return };
    let clock = ManualClock::new(T0);
    let a = worker(f, &clock, "a");
    let q = a.queue_with("deep-stats", queue_options(2)).unwrap();
    q.enqueue([NewItem::key("one"), NewItem::key("two")])
        .unwrap();

    // Completing by hand: refused before anything is written; the item is
    // still held, and completes with stats that can be kept.
    let item = q.claim(1).unwrap().pop().unwrap();
    refused(q.complete(
        &item,
        Some(serde_json::json!({"deep": nested(MAX_JSON_NESTING)})),
    ));
    let huge = serde_json::json!({"blob": "x".repeat(ckpt::validate::MAX_STATS_BYTES)});
    match q.complete(&item, Some(huge)) {
        Err(Error::LimitExceeded { what, .. }) => assert_eq!(what, "item stats"),
        other => panic!("expected LimitExceeded, got {other:?}"),
    }
    assert_eq!(q.counts().unwrap().running, 1, "still held");
    let kept = serde_json::json!({"deep": nested(MAX_JSON_NESTING - 1)});
    q.complete(&item, Some(kept.clone())).unwrap();
    let done = q.items(Some(ckpt::ItemStatus::Completed), 10).unwrap();
    assert_eq!(done[0].stats, Some(kept));

    // A handler's outcome: the work is done, so the item completes (it
    // must not run again), without the stats that cannot be kept.
    let handler = |_: &ckpt::ClaimedItem| {
        ckpt::Outcome::Completed(Some(serde_json::json!({"deep": nested(MAX_JSON_NESTING)})))
    };
    let report = ckpt::Runner::new(&q, ckpt::RunOptions::default())
        .run(&handler)
        .unwrap();
    assert_eq!(report.completed, 1);
    let done = q.items(Some(ckpt::ItemStatus::Completed), 10).unwrap();
    let two = done.iter().find(|i| i.key == "two").unwrap();
    let stats = two.stats.as_ref().expect("the run time is kept");
    assert!(stats.get("deep").is_none(), "{stats}");
    assert!(stats["duration_ms"].is_u64(), "{stats}");
}
