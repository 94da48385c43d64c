//! Conformance: a failure's output (`last_output`, the tail of a
//! command's stderr) is stored beside its error, bounded, replaced with the
//! error at each failure, and kept when the item completes.

use std::time::Duration;

use ckpt::model::ItemRecord;
use ckpt::store::machine::MAX_LAST_OUTPUT;
use ckpt::{Attempt, ClaimedItem, ItemStatus, ManualClock, NewItem, Outcome, Queue, Settled};

use super::{queue_options, worker, T0};
use crate::{every_store, Fixture};
use rstest_reuse::apply;

fn attempt(item: &ClaimedItem, outcome: Outcome) -> Attempt {
    Attempt {
        item: item.clone(),
        outcome,
        ran_for: Some(Duration::from_millis(5)),
    }
}

fn item(q: &Queue, key: &str) -> ItemRecord {
    let f = q.ckpt().store();
    [ItemStatus::Failed, ItemStatus::Dead, ItemStatus::Completed]
        .into_iter()
        .flat_map(|s| f.list_items(q.job(), Some(s), 10).unwrap())
        .find(|i| i.key == key)
        .unwrap_or_else(|| panic!("no finished item {key}"))
}

/// Claims `a` and `b`, in that order.
fn claim_both(q: &Queue) -> (ClaimedItem, ClaimedItem) {
    let mut claimed = q.claim(2).unwrap();
    claimed.sort_by(|x, y| x.key.cmp(&y.key));
    let b = claimed.pop().unwrap();
    (claimed.pop().unwrap(), b)
}

#[apply(every_store)]
fn a_failures_output_is_kept_beside_its_error_and_bounded(store: Option<Fixture>) {
    let Some(f) = &store else { return };
    let clock = ManualClock::new(T0);
    let q = worker(f, &clock, "a")
        .queue_with("output", queue_options(2))
        .unwrap();
    q.enqueue([NewItem::key("a"), NewItem::key("b")]).unwrap();

    // Both settled in one call (a store's batch path): one with output.
    let (a, b) = claim_both(&q);
    let why = "convert: corrupt JPEG data\n";
    // A NUL (which PostgreSQL text cannot hold) is kept as U+FFFD.
    let nul = "bin\0ary \u{1b}[31m\n";
    let settled = q
        .settle(&[
            attempt(
                &a,
                Outcome::Failed("exit status 1".into()).with_output(Some(why.into())),
            ),
            attempt(
                &b,
                Outcome::Failed("exit status 2".into()).with_output(Some(nul.into())),
            ),
        ])
        .unwrap();
    assert!(settled.iter().all(|s| matches!(s, Settled::Retrying(_))));
    let rec = item(&q, "a");
    assert_eq!(rec.last_error.as_deref(), Some("exit status 1"));
    assert_eq!(rec.last_output.as_deref(), Some(why));
    assert_eq!(
        item(&q, "b").last_output.as_deref(),
        Some("bin\u{fffd}ary \u{1b}[31m\n")
    );

    // The last attempts: a fails without output (its old output goes with
    // its old error); b fails fatally with megabytes, kept only up to
    // the bound, from the end. One at a time (a store's single path).
    clock.advance(Duration::from_secs(3600));
    let (a, b) = claim_both(&q);
    q.settle(&[attempt(&a, Outcome::Failed("exit status 3".into()))])
        .unwrap();
    let huge = format!("{}\nthe end\n", "é".repeat(MAX_LAST_OUTPUT));
    q.settle(&[attempt(
        &b,
        Outcome::Fatal("exit status 4".into()).with_output(Some(huge)),
    )])
    .unwrap();
    let rec = item(&q, "a");
    assert_eq!(rec.status, ItemStatus::Dead);
    assert_eq!(
        (rec.last_error.as_deref(), rec.last_output.as_deref()),
        (Some("exit status 3"), None)
    );
    let rec = item(&q, "b");
    assert_eq!(rec.status, ItemStatus::Dead);
    let kept = rec.last_output.unwrap();
    assert!(kept.len() <= MAX_LAST_OUTPUT, "{} bytes", kept.len());
    assert!(kept.len() > MAX_LAST_OUTPUT - 4, "{} bytes", kept.len());
    assert!(kept.ends_with("\nthe end\n"));

    // Completing a re-driven item keeps its last failure's output, as it
    // keeps its last error.
    assert_eq!(
        q.redrive(ItemStatus::Dead, Some(&["b".to_string()]))
            .unwrap(),
        1
    );
    let b = q.claim(1).unwrap().pop().unwrap();
    q.complete(&b, None).unwrap();
    let rec = item(&q, "b");
    assert_eq!(rec.status, ItemStatus::Completed);
    assert!(rec.last_output.unwrap().ends_with("the end\n"));
}

/// An item that failed under a retry policy allowing more attempts than a
/// later queue's (a re-run with a lower `--retries`) is moved to the
/// dead-letter list unrun by that queue, and its own failure stays its
/// error and output: its worker did report back, it did not die.
#[apply(every_store)]
fn a_lowered_retry_policy_buries_a_failed_item_keeping_its_failure(store: Option<Fixture>) {
    let Some(f) = &store else { return };
    let clock = ManualClock::new(T0);
    let generous = worker(f, &clock, "a")
        .queue_with("lowered", queue_options(3))
        .unwrap();
    generous.enqueue([NewItem::key("a")]).unwrap();
    let a = generous.claim(1).unwrap().pop().unwrap();
    let why = "convert: corrupt JPEG data\n";
    let settled = generous
        .settle(&[attempt(
            &a,
            Outcome::Failed("exit status 1".into()).with_output(Some(why.into())),
        )])
        .unwrap();
    assert!(matches!(settled[..], [Settled::Retrying(_)]), "{settled:?}");

    // A queue allowing one attempt finds it used up once it is due.
    clock.advance(Duration::from_secs(3600));
    let strict = worker(f, &clock, "b")
        .queue_with("lowered", queue_options(1))
        .unwrap();
    assert_eq!(strict.claim(1).unwrap(), []);
    let rec = item(&strict, "a");
    assert_eq!(rec.status, ItemStatus::Dead, "{rec:?}");
    assert_eq!(rec.last_error.as_deref(), Some("exit status 1"));
    assert_eq!(rec.last_output.as_deref(), Some(why));
    assert_eq!(rec.attempts, 1, "the claim that found it so never ran it");
    assert!(rec.finished_at.is_some(), "{rec:?}");
    assert_eq!(strict.counts().unwrap().dead, 1);
}

/// An item whose worker died running it, taken over and then given back
/// unfinished (a run stopped), has no failure recorded: a queue allowing
/// one attempt buries it saying its worker never reported back.
#[apply(every_store)]
fn a_buried_item_without_a_recorded_failure_says_its_worker_died(store: Option<Fixture>) {
    let Some(f) = &store else { return };
    let clock = ManualClock::new(T0);
    let opts = queue_options(3);
    let lease = opts.lease;
    let w1 = worker(f, &clock, "w1")
        .queue_with("released", opts.clone())
        .unwrap();
    w1.enqueue([NewItem::key("x")]).unwrap();
    let x = w1.claim(1).unwrap().pop().unwrap();
    assert!(w1.start([&x]).unwrap().iter().all(|r| r.is_ok()));
    // W1 dies; w2 takes x over, then stops and gives it back.
    clock.advance(lease);
    let w2 = worker(f, &clock, "w2")
        .queue_with("released", opts)
        .unwrap();
    let taken = w2.claim(1).unwrap().pop().unwrap();
    assert_eq!(taken.attempt, 2);
    assert!(taken.taken_over_from.is_some());
    w2.release(&taken).unwrap();
    let strict = worker(f, &clock, "w3")
        .queue_with("released", queue_options(1))
        .unwrap();
    assert_eq!(strict.claim(1).unwrap(), []);
    let rec = item(&strict, "x");
    assert_eq!(rec.status, ItemStatus::Dead, "{rec:?}");
    assert_eq!(
        rec.last_error.as_deref(),
        Some("started 1 time(s) and its worker never reported back (it died while running it each time); not run again")
    );
    assert_eq!(rec.last_output, None);
    assert_eq!(rec.attempts, 1, "{rec:?}");
}
