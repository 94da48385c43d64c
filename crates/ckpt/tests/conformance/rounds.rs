//! Conformance: a runner's round, many starts and outcomes in one call,
//! and a large enqueue. A store may apply them in few statements; what it
//! records must be what applying them one by one records.

use std::time::Duration;

use ckpt::model::{ItemChange, ItemUpdate};
use ckpt::{Attempt, ClaimedItem, ItemStatus, ManualClock, NewItem, Outcome, Settled};

use super::{queue_options, worker, T0};
use crate::{every_store, Fixture};
use rstest_reuse::apply;

fn ended(item: &ClaimedItem, outcome: Outcome) -> Attempt {
    Attempt {
        item: item.clone(),
        outcome,
        // One batch: the same run time, so the same stats.
        ran_for: Some(Duration::from_millis(7)),
    }
}

#[apply(every_store)]
fn a_round_of_starts_and_outcomes_records_each_as_alone(store: Option<Fixture>) {
    let Some(f) = &store else { return };
    let clock = ManualClock::new(T0);
    let q = worker(f, &clock, "a")
        .queue_with("round", queue_options(3))
        .unwrap();
    q.enqueue((0..7).map(|i| NewItem::key(format!("k{i}"))))
        .unwrap();
    let held = q.claim_ahead(7).unwrap();
    assert_eq!(held.len(), 7);
    // k5 is finished before the round: its outcome is refused; k6 started
    // before the round.
    q.complete(&held[5], None).unwrap();
    assert!(q.start([&held[6]]).unwrap()[0].is_ok());
    clock.advance(Duration::from_secs(1));
    let started: Vec<ClaimedItem> = [0, 1, 2, 3].map(|i| held[i].clone()).to_vec();
    let attempts = [
        ended(&held[0], Outcome::Completed(None)),
        ended(&held[1], Outcome::Completed(None)),
        ended(&held[6], Outcome::Completed(None)),
        ended(&held[5], Outcome::Completed(None)),
        ended(&held[2], Outcome::Failed("boom".into())),
        Attempt {
            item: held[4].clone(),
            outcome: Outcome::Interrupted("not started".into()),
            ran_for: None,
        },
    ];
    let settled = q.start_and_settle(&started, &attempts).unwrap();
    assert!(
        matches!(
            &settled[..],
            [
                Settled::Completed,
                Settled::Completed,
                Settled::Completed,
                Settled::Lost(_),
                Settled::Retrying(_),
                Settled::Released
            ]
        ),
        "{settled:?}"
    );
    let now = T0.plus(Duration::from_secs(1));
    let items = q.items(None, 10).unwrap();
    let by_key = |k: &str| items.iter().find(|i| i.key == k).unwrap();
    for k in ["k0", "k1"] {
        let i = by_key(k);
        assert_eq!(i.status, ItemStatus::Completed, "{k}");
        assert_eq!(i.started_at, Some(now), "{k}: its start is recorded");
        assert_eq!(i.finished_at, Some(now), "{k}");
        assert_eq!(i.attempts, 1, "{k}");
        assert_eq!(i.stats, Some(serde_json::json!({"duration_ms": 7})), "{k}");
    }
    let earlier = by_key("k6");
    assert_eq!(earlier.status, ItemStatus::Completed);
    assert_eq!(earlier.started_at, Some(T0), "started before the round");
    assert_eq!(earlier.stats, Some(serde_json::json!({"duration_ms": 7})));
    let failed = by_key("k2");
    assert_eq!(failed.status, ItemStatus::Failed);
    assert_eq!(failed.started_at, Some(now));
    assert_eq!(failed.last_error.as_deref(), Some("boom"));
    let running = by_key("k3");
    assert_eq!(running.status, ItemStatus::Running);
    assert_eq!(running.started_at, Some(now));
    assert_eq!(
        running.ready_at,
        Some(now.plus(queue_options(3).lease)),
        "the start renews the lease"
    );
    let released = by_key("k4");
    assert_eq!(
        (released.status, released.attempts),
        (ItemStatus::Pending, 0)
    );
    assert_eq!(released.started_at, None);
    let done = by_key("k5");
    assert_eq!(done.status, ItemStatus::Completed);
    assert_eq!(done.stats, None, "the refused completion wrote nothing");
}

#[apply(every_store)]
fn updates_of_one_item_in_one_call_apply_in_turn(store: Option<Fixture>) {
    let Some(f) = &store else { return };
    let clock = ManualClock::new(T0);
    let q = worker(f, &clock, "a")
        .queue_with("in-turn", queue_options(3))
        .unwrap();
    q.enqueue([NewItem::key("x"), NewItem::key("y")]).unwrap();
    let held = q.claim_ahead(2).unwrap();
    let later = T0.plus(Duration::from_secs(30));
    let update = |item: &ClaimedItem, change: ItemChange| ItemUpdate {
        lease: item.lease.clone(),
        change,
    };
    let complete = ItemChange::Complete {
        stats: None,
        command: None,
    };
    let results = q
        .apply(&[
            update(&held[0], ItemChange::Start { lease_until: later }),
            update(&held[1], ItemChange::Start { lease_until: later }),
            update(&held[0], complete.clone()),
            // After its completion, x is no longer held: refused.
            update(&held[0], ItemChange::Heartbeat { lease_until: later }),
            update(&held[0], complete),
        ])
        .unwrap();
    let fenced: Vec<bool> = results
        .iter()
        .map(|r| r.as_ref().is_err_and(|e| e.is_fenced()))
        .collect();
    assert_eq!(fenced, [false, false, false, true, true]);
    let items = q.items(None, 10).unwrap();
    assert_eq!(items[0].status, ItemStatus::Completed);
    assert_eq!(items[0].started_at, Some(T0));
    assert_eq!(items[1].status, ItemStatus::Running);
    assert_eq!(items[1].ready_at, Some(later));
}

/// Alike updates of items claimed at different times (their claim tokens
/// differ), one of them under a stale lease: each is fenced by its own
/// lease, and the stale one alone is refused.
#[apply(every_store)]
fn alike_updates_under_different_tokens_are_each_fenced(store: Option<Fixture>) {
    let Some(f) = &store else { return };
    let clock = ManualClock::new(T0);
    let q = worker(f, &clock, "a")
        .queue_with("tokens", queue_options(3))
        .unwrap();
    q.enqueue(["a", "b", "c", "d"].map(NewItem::key)).unwrap();
    let first = q.claim_ahead(2).unwrap();
    let stale_b = first[1].clone();
    for item in &first {
        q.release(item).unwrap();
    }
    let held = q.claim_ahead(4).unwrap();
    let key_of = |i: &ClaimedItem| i.key.clone();
    assert_eq!(
        held.iter().map(key_of).collect::<Vec<_>>(),
        ["a", "b", "c", "d"]
    );
    assert_ne!(
        held[0].lease.token, held[2].lease.token,
        "a was claimed twice"
    );
    let complete = |item: &ClaimedItem| ItemUpdate {
        lease: item.lease.clone(),
        change: ItemChange::Complete {
            stats: Some(serde_json::json!({"n": 1})),
            command: None,
        },
    };
    let results = q
        .apply(&[
            complete(&held[0]),
            complete(&stale_b),
            complete(&held[2]),
            complete(&held[3]),
        ])
        .unwrap();
    let fenced: Vec<bool> = results
        .iter()
        .map(|r| r.as_ref().is_err_and(|e| e.is_fenced()))
        .collect();
    assert_eq!(fenced, [false, true, false, false]);
    let items = q.items(None, 10).unwrap();
    let status: Vec<ItemStatus> = items.iter().map(|i| i.status).collect();
    use ItemStatus::{Completed, Running};
    assert_eq!(status, [Completed, Running, Completed, Completed]);
    assert_eq!(items[1].stats, None, "the refused update wrote nothing");
    assert_eq!(items[2].stats, Some(serde_json::json!({"n": 1})));
    // The current lease of b still holds.
    assert!(q.complete(&held[1], None).is_ok());
}

#[apply(every_store)]
fn a_large_enqueue_keeps_input_order_and_counts_repeats(store: Option<Fixture>) {
    let Some(f) = &store else { return };
    let clock = ManualClock::new(T0);
    let q = worker(f, &clock, "a")
        .queue_with("large", queue_options(3))
        .unwrap();
    q.enqueue([NewItem::key("k09999")]).unwrap();
    // More than one statement's worth (SQLite inserts 4,096 a statement),
    // descending, with a repeat in a later chunk and a known key.
    let keys = (0..10_000).rev().map(|i| format!("k{i:05}"));
    let mut items: Vec<NewItem> = keys.map(NewItem::key).collect();
    items.push(NewItem::key("k00003"));
    let mut with_payload = NewItem::key("p");
    with_payload.payload = Some(serde_json::json!({"n": "\"quoted\" é"}));
    items.push(with_payload);
    let r = q.enqueue(items).unwrap();
    assert_eq!((r.inserted, r.existing), (10_000, 2));
    let claimed = q.claim_ahead(3).unwrap();
    let keys: Vec<&str> = claimed.iter().map(|i| i.key.as_str()).collect();
    assert_eq!(keys, ["k09999", "k09998", "k09997"], "in enqueue order");
    let all = q.items(None, 20_000).unwrap();
    assert_eq!(all.len(), 10_001);
    assert_eq!(all.last().unwrap().key, "p");
    assert_eq!(
        all.last().unwrap().payload,
        Some(serde_json::json!({"n": "\"quoted\" é"}))
    );
}
