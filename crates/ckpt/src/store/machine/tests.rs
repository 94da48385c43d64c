//! The state machine's rules, one transition at a time, without a store.

use super::*;
use serde_json::json;

const NOW: Timestamp = Timestamp(1_000_000);
const LATER: Timestamp = Timestamp(1_030_000);

fn lease(owner: &str, token: u64) -> ItemLease {
    ItemLease {
        id: 1,
        owner: owner.into(),
        token,
    }
}

fn claimed(owner: &str) -> ItemState {
    let mut s = ItemState::enqueued();
    s.claim(&Claim {
        owner,
        lease_until: LATER,
        now: NOW,
        started: true,
    });
    s
}

fn after(change: ItemChange) -> ItemState {
    let mut s = claimed("a");
    assert!(s.holds(&lease("a", 1)));
    s.apply(&ItemPatch::new(&change, NOW));
    s
}

#[test]
fn enqueued_items_are_claimable_at_once_by_anyone() {
    let s = ItemState::enqueued();
    assert!(s.claimable_by("a", Timestamp(0)));
    assert_eq!(shown_ready_at(s.status, s.ready_at), None);
}

#[test]
fn a_claim_counts_an_attempt_and_a_new_fencing_token() {
    let s = claimed("a");
    assert_eq!(s.status, ItemStatus::Running);
    assert_eq!((s.attempts, s.claims), (1, 1));
    assert_eq!(s.ready_at, Some(LATER));
    assert_eq!(s.started_at, Some(NOW));
    assert_eq!(shown_ready_at(s.status, s.ready_at), Some(LATER));
    assert!(
        !s.holds(&lease("a", 2)),
        "an older or newer token is fenced"
    );
    assert!(!s.holds(&lease("b", 1)), "another owner is fenced");
}

#[test]
fn a_running_item_is_taken_over_only_by_others_and_only_once_lapsed() {
    let s = claimed("a");
    assert!(!s.claimable_by("b", NOW), "the lease is live");
    assert!(s.claimable_by("b", LATER), "lapsed: takeover");
    assert!(!s.claimable_by("a", LATER), "never by its own owner");
    let mut s = s;
    let from = s.claim(&Claim {
        owner: "b",
        lease_until: Timestamp(LATER.0 + 10),
        now: LATER,
        started: true,
    });
    assert_eq!(from.as_deref(), Some("a"));
    assert_eq!((s.attempts, s.claims), (2, 2));
    assert!(!s.holds(&lease("a", 1)), "the zombie is fenced");
    assert!(s.holds(&lease("b", 2)));
}

#[test]
fn a_pending_or_failed_item_is_not_a_takeover() {
    let claim = Claim {
        owner: "b",
        lease_until: LATER,
        now: NOW,
        started: true,
    };
    assert_eq!(claim.taken_over_from(ItemStatus::Pending, None), None);
    assert_eq!(claim.taken_over_from(ItemStatus::Failed, Some("a")), None);
}

#[test]
fn heartbeat_and_cursor_renew_the_lease() {
    let until = Timestamp(LATER.0 + 5);
    let s = after(ItemChange::Heartbeat { lease_until: until });
    assert_eq!(
        (s.status, s.ready_at, s.attempts),
        (ItemStatus::Running, Some(until), 1)
    );
    let s = after(ItemChange::Cursor {
        cursor: json!({"page": 3}),
        lease_until: until,
    });
    assert_eq!(s.ready_at, Some(until));
    assert_eq!(s.cursor, Some(json!({"page": 3})));
    assert!(s.holds(&lease("a", 1)), "still held by the same lease");
}

#[test]
fn complete_finishes_with_stats() {
    let s = after(ItemChange::Complete {
        stats: Some(json!({"records": 9})),
        command: Some(2),
    });
    assert_eq!(s.status, ItemStatus::Completed);
    assert_eq!(s.command, Some(2), "the command that completed it is kept");
    assert_eq!(s.ready_at, None);
    assert_eq!(s.finished_at, Some(NOW));
    assert_eq!(s.stats, Some(json!({"records": 9})));
    assert!(!s.claimable_by("b", Timestamp(i64::MAX)));
}

#[test]
fn fail_with_a_retry_time_waits_for_it() {
    let retry = Timestamp(NOW.0 + 10_000);
    let s = after(ItemChange::Fail {
        error: "boom".into(),
        retry_at: Some(retry),
        output: None,
    });
    assert_eq!(s.status, ItemStatus::Failed);
    assert_eq!(s.ready_at, Some(retry));
    assert_eq!(s.last_error.as_deref(), Some("boom"));
    assert_eq!(s.finished_at, None);
    assert!(!s.claimable_by("a", NOW));
    assert!(s.claimable_by("a", retry), "its own owner may retry it");
    assert_eq!(shown_ready_at(s.status, s.ready_at), Some(retry));
}

#[test]
fn fail_without_a_retry_is_dead_and_redrive_revives_it() {
    let mut s = after(ItemChange::Fail {
        error: "boom".into(),
        retry_at: None,
        output: None,
    });
    assert_eq!(s.status, ItemStatus::Dead);
    assert_eq!((s.ready_at, s.finished_at), (None, Some(NOW)));
    assert!(Redrive::applies_to(s.status));
    s.redrive();
    assert_eq!(s.status, ItemStatus::Pending);
    assert_eq!((s.attempts, s.claims), (0, 1), "the token is never reset");
    assert_eq!((s.ready_at, s.finished_at), (Some(PENDING_READY_AT), None));
    assert_eq!(s.last_error.as_deref(), Some("boom"));
    assert!(!Redrive::applies_to(ItemStatus::Running));
    assert!(!Redrive::applies_to(ItemStatus::Completed));
}

#[test]
fn release_gives_the_item_back_uncharged() {
    let mut s = claimed("a");
    s.apply(&ItemPatch::new(
        &ItemChange::Cursor {
            cursor: json!(7),
            lease_until: LATER,
        },
        NOW,
    ));
    s.apply(&ItemPatch::new(&ItemChange::Release, NOW));
    assert_eq!(s.status, ItemStatus::Pending);
    assert_eq!(s.ready_at, Some(PENDING_READY_AT));
    assert_eq!((s.attempts, s.claims), (0, 1));
    assert_eq!(
        s.cursor,
        Some(json!(7)),
        "the cursor is kept for the next attempt"
    );
    assert!(s.claimable_by("a", NOW));
    // Never below zero, even if a store held no attempt.
    let mut zero = ItemState::enqueued();
    zero.apply(&ItemPatch::new(&ItemChange::Release, NOW));
    assert_eq!(zero.attempts, 0);
}

#[test]
fn expiring_a_gone_owner_never_extends_a_lease() {
    let mut s = claimed("a");
    s.expire(NOW);
    assert_eq!(s.ready_at, Some(NOW));
    assert!(s.claimable_by("b", NOW));
    let mut early = claimed("a");
    early.ready_at = Some(Timestamp(5));
    early.expire(NOW);
    assert_eq!(early.ready_at, Some(Timestamp(5)));
    let mut pending = ItemState::enqueued();
    pending.expire(NOW);
    assert_eq!(
        pending.ready_at,
        Some(PENDING_READY_AT),
        "only running items expire"
    );
}

#[test]
fn attempts_count_executions_not_claims_ahead() {
    let ahead = |owner, now: Timestamp, lease_until: Timestamp| Claim {
        owner,
        lease_until,
        now,
        started: false,
    };
    let mut s = ItemState::enqueued();
    s.claim(&ahead("a", NOW, LATER));
    assert_eq!(s.attempts, 1, "the claim counts the attempt it is for");
    assert_eq!(s.started_at, None, "claimed ahead: not started");
    // Its worker dies before starting it: the takeover counts nothing new.
    s.claim(&ahead("b", LATER, Timestamp(LATER.0 + 10)));
    assert_eq!(s.attempts, 1);
    assert_eq!(s.claims, 2);
    // Started this time, then its worker dies: the next takeover counts.
    let lease = ItemLease {
        id: 1,
        owner: "b".into(),
        token: 2,
    };
    assert!(s.holds(&lease));
    s.apply(&ItemPatch::new(
        &ItemChange::Start {
            lease_until: Timestamp(LATER.0 + 10),
        },
        Timestamp(LATER.0 + 1),
    ));
    assert_eq!(s.started_at, Some(Timestamp(LATER.0 + 1)));
    assert_eq!(s.status, ItemStatus::Running);
    s.claim(&ahead(
        "c",
        Timestamp(LATER.0 + 10),
        Timestamp(LATER.0 + 20),
    ));
    assert_eq!(s.attempts, 2);
    // A claim that starts at once records the start.
    let mut t = ItemState::enqueued();
    t.claim(&Claim {
        owner: "a",
        lease_until: LATER,
        now: NOW,
        started: true,
    });
    assert_eq!(t.started_at, Some(NOW));
    assert_eq!(
        Claim::attempts_added(ItemStatus::Failed, false),
        Claim::ATTEMPTS_ADDED
    );
    assert_eq!(
        Claim::attempts_added(ItemStatus::Running, false),
        Claim::ATTEMPTS_ADDED_UNSTARTED
    );
}

#[test]
fn a_failure_keeps_its_output_bounded_and_a_later_one_replaces_it() {
    let big = format!("é{}end", "x".repeat(MAX_LAST_OUTPUT));
    let s = after(ItemChange::Fail {
        error: "boom".into(),
        retry_at: None,
        output: Some(big),
    });
    let kept = s.last_output.unwrap();
    assert!(kept.len() <= MAX_LAST_OUTPUT && kept.ends_with("end"));
    assert!(!kept.contains('é'), "cut from the front");
    let mut s = after(ItemChange::Fail {
        error: "boom".into(),
        retry_at: None,
        output: Some("why".into()),
    });
    assert_eq!(s.last_output.as_deref(), Some("why"));
    // A later failure without output leaves no stale output beside it.
    s.apply(&ItemPatch::new(
        &ItemChange::Fail {
            error: "again".into(),
            retry_at: None,
            output: None,
        },
        NOW,
    ));
    assert_eq!(s.last_output, None);
    // A multibyte character at the cut is dropped whole.
    let cut = bounded_output(&format!("{}{}", "é".repeat(MAX_LAST_OUTPUT / 2), "a"));
    assert!(cut.len() < MAX_LAST_OUTPUT && cut.ends_with('a'));
    // NULs become U+FFFD (3 bytes each) within the same bound.
    let nuls = bounded_output(&format!("{}end", "\0".repeat(MAX_LAST_OUTPUT + 10)));
    assert!(nuls.len() <= MAX_LAST_OUTPUT, "{}", nuls.len());
    assert!(nuls.ends_with("\u{fffd}end") && !nuls.contains('\0'));
    assert_eq!(nuls.len(), (MAX_LAST_OUTPUT - 3) / 3 * 3 + 3);
}

#[test]
fn a_patch_then_another_writes_what_both_write_in_turn() {
    let at = Timestamp(NOW.0 + 5);
    let running = [
        ItemChange::Heartbeat { lease_until: LATER },
        ItemChange::Start { lease_until: LATER },
        ItemChange::Cursor {
            cursor: json!({"line": 3}),
            lease_until: LATER,
        },
    ];
    let ends = [
        ItemChange::Complete {
            stats: Some(json!({"n": 1})),
            command: Some(7),
        },
        ItemChange::Fail {
            error: "boom".into(),
            output: Some("tail".into()),
            retry_at: Some(LATER),
        },
        ItemChange::Fail {
            error: "dead".into(),
            output: None,
            retry_at: None,
        },
        ItemChange::Release,
        ItemChange::Start { lease_until: LATER },
    ];
    for first in &running {
        for next in running.iter().chain(&ends) {
            let (a, b) = (ItemPatch::new(first, NOW), ItemPatch::new(next, at));
            // An earlier failure's error and output, to see what is kept.
            let mut s = claimed("a");
            s.last_error = Some("old".into());
            s.last_output = Some("old tail".into());
            s.attempts = 2;
            let mut in_turn = s.clone();
            in_turn.apply(&a);
            in_turn.apply(&b);
            let composed = a.then(&b).expect("the first leaves the item running");
            s.apply(&composed);
            assert_eq!(s, in_turn, "{first:?} then {next:?}");
        }
    }
    // A patch that ends the attempt cannot be followed under its lease.
    for end in &ends[..4] {
        let done = ItemPatch::new(end, NOW);
        assert_eq!(done.then(&ItemPatch::new(&running[0], at)), None, "{end:?}");
    }
}
