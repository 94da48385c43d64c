//! The item state machine: every rule that turns a change into an item's
//! new values, written once, for every store.
//!
//! ```text
//!            claim                  Complete
//! pending ─────────▶ running ───────────────▶ completed
//!    ▲   ◀─────────     │  ▲ │ Fail, retry_at
//!    │     Release      │  │ └──────────────▶ failed ──┐
//!    │                  │  └── claim (due) ───────────┘
//!    │                  │  ◀── claim (lease expired, another owner: takeover)
//!    │                  │ Fail, no retry left
//!    └──── redrive ──── dead ◀┘           (failed ── redrive ──▶ pending)
//! ```
//!
//! An item's `ready_at` is when it may next be claimed: [`PENDING_READY_AT`]
//! (before any real time, so pending items come first, in enqueue order)
//! while pending, its lease expiry while running, its retry time while
//! failed, and nothing once completed or dead. So "unfinished" is exactly
//! "has a `ready_at`", and one index on it serves claims, counts of
//! unfinished items and [`next_ready_at`](super::ItemStore::next_ready_at).
//!
//! Each change is computed here as plain values: a [`Claim`], an
//! [`ItemPatch`] (heartbeat, cursor, complete, fail, release), a
//! [`Redrive`]. The memory store applies them to an [`ItemState`]; SQLite,
//! PostgreSQL and the Redis scripts bind the same values into one fenced
//! statement each, so a backend writes only its dialect. The predicates a
//! backend writes as a `WHERE` clause ([`claimable`], [`ItemState::holds`])
//! are here too, as the definition those clauses implement.

use serde_json::Value;

use crate::model::ItemChange;
use crate::model::{ItemLease, ItemStatus};
use crate::time::Timestamp;

/// The ready time of a pending item: earlier than any lease or retry time,
/// so pending items are claimed first, in enqueue order.
pub const PENDING_READY_AT: Timestamp = Timestamp(0);

/// The values of an item that transitions read and write.
#[derive(Debug, Clone, PartialEq)]
pub struct ItemState {
    /// Its status.
    pub status: ItemStatus,
    /// Attempts since it was enqueued or last re-driven.
    pub attempts: u32,
    /// Claims in all: the fencing token of the current lease. Never reset.
    pub claims: u64,
    /// Current or last holder.
    pub owner: Option<String>,
    /// When it may next be claimed; `None` once finished (see the module).
    pub ready_at: Option<Timestamp>,
    /// The per-item cursor an attempt saved.
    pub cursor: Option<Value>,
    /// The last failure's message.
    pub last_error: Option<String>,
    /// Stats saved on completion.
    pub stats: Option<Value>,
    /// When it was last claimed.
    pub started_at: Option<Timestamp>,
    /// When it completed or went dead.
    pub finished_at: Option<Timestamp>,
}

impl ItemState {
    /// A newly enqueued item: pending, never attempted.
    pub fn enqueued() -> ItemState {
        ItemState {
            status: ItemStatus::Pending,
            attempts: 0,
            claims: 0,
            owner: None,
            ready_at: Some(PENDING_READY_AT),
            cursor: None,
            last_error: None,
            stats: None,
            started_at: None,
            finished_at: None,
        }
    }

    /// True if and only if `owner` may claim this item at `now`: see
    /// [`claimable`].
    pub fn claimable_by(&self, owner: &str, now: Timestamp) -> bool {
        claimable(
            self.status,
            self.ready_at,
            self.owner.as_deref(),
            owner,
            now,
        )
    }

    /// The fence of every update: true if and only if the item is running
    /// under exactly `lease` (same owner, same claim token).
    pub fn holds(&self, lease: &ItemLease) -> bool {
        self.status == ItemStatus::Running
            && self.owner.as_deref() == Some(lease.owner.as_str())
            && self.claims == lease.token
    }

    /// Applies `claim`; returns the owner it was taken over from, if the
    /// item was running under another owner whose lease had lapsed.
    pub fn claim(&mut self, claim: &Claim<'_>) -> Option<String> {
        let taken_over_from = claim.taken_over_from(self.status, self.owner.as_deref());
        self.status = ItemStatus::Running;
        self.attempts += 1;
        self.claims += 1;
        self.owner = Some(claim.owner.to_string());
        self.ready_at = Some(claim.lease_until);
        self.started_at = Some(claim.now);
        taken_over_from
    }

    /// Applies `patch` (the caller checked [`holds`](ItemState::holds)).
    pub fn apply(&mut self, patch: &ItemPatch) {
        self.status = patch.status;
        self.ready_at = patch.ready_at;
        self.attempts = self.attempts.saturating_sub(patch.attempts_back);
        if let Some(cursor) = &patch.cursor {
            self.cursor = Some(cursor.clone());
        }
        if let Some(stats) = &patch.stats {
            self.stats = Some(stats.clone());
        }
        if let Some(error) = &patch.last_error {
            self.last_error = Some(error.clone());
        }
        if let Some(at) = patch.finished_at {
            self.finished_at = Some(at);
        }
    }

    /// Applies a redrive (the caller checked the status it moves from).
    pub fn redrive(&mut self) {
        self.status = Redrive::STATUS;
        self.attempts = Redrive::ATTEMPTS;
        self.ready_at = Some(Redrive::READY_AT);
        self.finished_at = None;
    }

    /// Expires a running item's lease at `now` (its owner is known to be
    /// gone): see [`expired_ready_at`].
    pub fn expire(&mut self, now: Timestamp) {
        if self.status == ItemStatus::Running {
            self.ready_at = expired_ready_at(self.ready_at, now);
        }
    }
}

/// True if and only if an item with this status, ready time and owner may
/// be claimed by `claimer` at `now`: it is unfinished and ready
/// (`ready_at <= now`: pending, due for a retry, or its lease expired),
/// and not running under `claimer` itself (a worker never re-claims its
/// own item: after a late heartbeat it would run the item twice).
pub fn claimable(
    status: ItemStatus,
    ready_at: Option<Timestamp>,
    owner: Option<&str>,
    claimer: &str,
    now: Timestamp,
) -> bool {
    ready_at.is_some_and(|t| t <= now) && !(status == ItemStatus::Running && owner == Some(claimer))
}

/// The ready time of a running item whose owner is gone, expired at `now`:
/// never later than it was.
pub fn expired_ready_at(ready_at: Option<Timestamp>, now: Timestamp) -> Option<Timestamp> {
    ready_at.map(|t| t.min(now))
}

/// The time an item record shows as its `ready_at`: the lease expiry of a
/// running item, the retry time of a failed one, nothing otherwise (a
/// pending item's ready time is an ordering device, not a time).
pub fn shown_ready_at(status: ItemStatus, ready_at: Option<Timestamp>) -> Option<Timestamp> {
    match status {
        ItemStatus::Running | ItemStatus::Failed => ready_at,
        _ => None,
    }
}

/// What a claim writes: status running, `owner`, ready until
/// `lease_until`, started `now`; the attempt count and the claim count
/// (the new lease's fencing token) each go up by one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim<'a> {
    /// The claiming worker.
    pub owner: &'a str,
    /// The lease's expiry: the item's new ready time.
    pub lease_until: Timestamp,
    /// When the claim happens: the item's `started_at`.
    pub now: Timestamp,
}

impl Claim<'_> {
    /// The status every claimed item gets.
    pub const STATUS: ItemStatus = ItemStatus::Running;

    /// Whom an item in `status` held by `owner` is taken over from: its
    /// owner if it was running (a lapsed lease), else nobody.
    pub fn taken_over_from(&self, status: ItemStatus, owner: Option<&str>) -> Option<String> {
        (status == ItemStatus::Running)
            .then(|| owner.map(str::to_string))
            .flatten()
    }
}

/// What a fenced change writes. `status` and `ready_at` are always written;
/// the attempt count goes down by `attempts_back` (never below zero); each
/// `Some` field is written, each `None` field keeps its value.
///
/// Stores bind these values as they are (SQL: `COALESCE(?, column)` for
/// the optional ones), so the rules live only in [`ItemPatch::new`].
#[derive(Debug, Clone, PartialEq)]
pub struct ItemPatch {
    /// The new status.
    pub status: ItemStatus,
    /// The new ready time (`None`: finished).
    pub ready_at: Option<Timestamp>,
    /// Attempts taken back: 1 for a release (the claim did not count).
    pub attempts_back: u32,
    /// A new per-item cursor.
    pub cursor: Option<Value>,
    /// Completion stats (only a completion writes them, and a running item
    /// has none yet, so "keep" and "clear" agree for the others).
    pub stats: Option<Value>,
    /// A new last error.
    pub last_error: Option<String>,
    /// When it finished (completed or dead).
    pub finished_at: Option<Timestamp>,
}

impl ItemPatch {
    /// The values `change` writes into a running item at `now`:
    ///
    /// - heartbeat: still running, ready (its lease) until `lease_until`;
    /// - cursor: the same, and the cursor saved;
    /// - complete: completed, finished now, the stats saved;
    /// - fail with a retry time: failed, ready at that time, the error kept;
    /// - fail without one: dead, finished now, the error kept;
    /// - release: pending again, claimable at once in enqueue order, and
    ///   the attempt the claim counted taken back (cursor, last error and
    ///   claim count are kept).
    pub fn new(change: &ItemChange, now: Timestamp) -> ItemPatch {
        let running = |lease_until: Timestamp| ItemPatch {
            status: ItemStatus::Running,
            ready_at: Some(lease_until),
            attempts_back: 0,
            cursor: None,
            stats: None,
            last_error: None,
            finished_at: None,
        };
        match change {
            ItemChange::Heartbeat { lease_until } => running(*lease_until),
            ItemChange::Cursor {
                cursor,
                lease_until,
            } => ItemPatch {
                cursor: Some(cursor.clone()),
                ..running(*lease_until)
            },
            ItemChange::Complete { stats } => ItemPatch {
                status: ItemStatus::Completed,
                ready_at: None,
                stats: stats.clone(),
                finished_at: Some(now),
                ..running(now)
            },
            ItemChange::Fail { error, retry_at } => ItemPatch {
                status: match retry_at {
                    Some(_) => ItemStatus::Failed,
                    None => ItemStatus::Dead,
                },
                ready_at: *retry_at,
                last_error: Some(error.clone()),
                finished_at: retry_at.is_none().then_some(now),
                ..running(now)
            },
            ItemChange::Release => ItemPatch {
                status: ItemStatus::Pending,
                ready_at: Some(PENDING_READY_AT),
                attempts_back: 1,
                ..running(now)
            },
        }
    }
}

/// What a redrive writes into a dead or failed item: pending, claimable at
/// once, attempts counted afresh, no longer finished. Its claim count (the
/// fencing token) and last error are kept.
#[derive(Debug, Clone, Copy)]
pub struct Redrive;

impl Redrive {
    /// The new status.
    pub const STATUS: ItemStatus = ItemStatus::Pending;
    /// The new attempt count.
    pub const ATTEMPTS: u32 = 0;
    /// The new ready time.
    pub const READY_AT: Timestamp = PENDING_READY_AT;

    /// True if and only if items of `status` can be re-driven.
    pub fn applies_to(status: ItemStatus) -> bool {
        matches!(status, ItemStatus::Dead | ItemStatus::Failed)
    }
}

#[cfg(test)]
mod tests {
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
        });
        assert_eq!(s.status, ItemStatus::Completed);
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
}
