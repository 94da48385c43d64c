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
//! statement (or script) each, so a backend writes only its dialect. The
//! predicates and the expiry a backend writes as a `WHERE` clause or an
//! expression ([`claimable`], [`ItemState::holds`], [`expired_ready_at`])
//! are here too, as the definition those implement.

use serde_json::Value;

use crate::model::ItemChange;
use crate::model::{ItemLease, ItemStatus};
use crate::time::Timestamp;

/// The most bytes of a failure's output an item keeps: a store row stays
/// small whatever a handler passes (the CLI keeps 4 KiB by default).
pub const MAX_LAST_OUTPUT: usize = 64 * 1024;

/// `output` cut to its last [`MAX_LAST_OUTPUT`] bytes, at a character
/// boundary (the end of an output says why it failed), each NUL replaced
/// with U+FFFD: PostgreSQL's text holds no NUL, and a command's stderr may.
pub fn bounded_output(output: &str) -> String {
    // Cut before replacing (a handler may pass megabytes), and again after:
    // each NUL's U+FFFD takes 3 bytes.
    let replaced = last_bytes(output, MAX_LAST_OUTPUT).replace('\0', "\u{fffd}");
    last_bytes(&replaced, MAX_LAST_OUTPUT).to_string()
}

/// The end of `text` within `max` bytes, from a character boundary.
fn last_bytes(text: &str, max: usize) -> &str {
    let mut start = text.len().saturating_sub(max);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

/// For the SQL stores: a condition implied by `status = X` that names the
/// column of a partial index, so the planner can use it (it cannot see
/// through a parameter). Unfinished items are exactly those with a
/// `ready_at` (this machine's invariant: items_ready), dead ones are in
/// items_dead. Completed items have no index of their own.
pub(crate) fn status_index_hint(status: ItemStatus) -> &'static str {
    match status {
        ItemStatus::Pending | ItemStatus::Running | ItemStatus::Failed => {
            " AND ready_at IS NOT NULL"
        }
        ItemStatus::Dead => " AND status = 'dead'",
        ItemStatus::Completed => "",
    }
}

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
    /// The tail of the last failure's error output, if it had one.
    pub last_output: Option<String>,
    /// Stats saved on completion.
    pub stats: Option<Value>,
    /// When its current (or last) attempt started running; `None` while
    /// it is claimed but not started yet (claimed ahead of the workers).
    pub started_at: Option<Timestamp>,
    /// When it completed or went dead.
    pub finished_at: Option<Timestamp>,
    /// The command that completed it, if one was given; cleared when it
    /// is re-driven.
    pub command: Option<i64>,
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
            last_output: None,
            stats: None,
            started_at: None,
            finished_at: None,
            command: None,
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
        self.attempts += Claim::attempts_added(self.status, self.started_at.is_some());
        self.status = Claim::STATUS;
        self.claims += Claim::CLAIMS_ADDED;
        self.owner = Some(claim.owner.to_string());
        self.ready_at = Some(claim.lease_until);
        self.started_at = claim.started_at();
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
            // The output goes with its error: a failure without output
            // leaves none of an earlier failure's beside it.
            self.last_output = patch.last_output.clone();
        } else if self.last_error.is_none() {
            self.last_error = patch.error_unless_recorded.clone();
        }
        if let Some(at) = patch.finished_at {
            self.finished_at = Some(at);
        }
        if let Some(at) = patch.started_at {
            self.started_at = Some(at);
        }
        if let Some(command) = patch.command {
            self.command = Some(command);
        }
    }

    /// Applies a redrive (the caller checked the status it moves from).
    pub fn redrive(&mut self) {
        self.status = Redrive::STATUS;
        self.attempts = Redrive::ATTEMPTS;
        self.ready_at = Some(Redrive::READY_AT);
        self.finished_at = None;
        self.command = None;
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
/// `lease_until`, started now ([`Claim::started`]) or not yet (claimed
/// ahead: `started_at` cleared, until an [`ItemChange::Start`] says the
/// attempt runs); the claim count (the new
/// lease's fencing token) goes up by one, and the attempt count by
/// [`Claim::attempts_added`]. Stores bind these values, the increments
/// included, into their claim statement.
///
/// Attempts count executions: a claim counts one, but a takeover of an
/// item whose previous claim never started it (claimed ahead by a run that
/// died or was stopped) counts none, the previous claim's count standing
/// for the attempt that never ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim<'a> {
    /// The claiming worker.
    pub owner: &'a str,
    /// The lease's expiry: the item's new ready time.
    pub lease_until: Timestamp,
    /// When the claim happens.
    pub now: Timestamp,
    /// Whether the claimer starts the items now (else it claims them ahead
    /// and marks each with [`ItemChange::Start`] when it starts it).
    pub started: bool,
}

impl Claim<'_> {
    /// The status every claimed item gets.
    pub const STATUS: ItemStatus = ItemStatus::Running;
    /// Attempts a claim counts (a release takes it back).
    pub const ATTEMPTS_ADDED: u32 = 1;
    /// Attempts a claim counts when it takes over a running item that its
    /// previous claim never started.
    pub const ATTEMPTS_ADDED_UNSTARTED: u32 = 0;

    /// Attempts a claim of an item in `status` counts, `started` saying
    /// whether its current attempt ever started (see the type's docs).
    pub fn attempts_added(status: ItemStatus, started: bool) -> u32 {
        if status == ItemStatus::Running && !started {
            Self::ATTEMPTS_ADDED_UNSTARTED
        } else {
            Self::ATTEMPTS_ADDED
        }
    }
    /// What a claim adds to the claim count, the lease's fencing token.
    pub const CLAIMS_ADDED: u64 = 1;

    /// The `started_at` a claim writes: now, or nothing (claimed ahead).
    pub fn started_at(&self) -> Option<Timestamp> {
        self.started.then_some(self.now)
    }

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
    /// The error written when `last_error` is `None` and the item has none
    /// recorded (a bury: see [`ItemPatch::new`]); its output is left as it
    /// is (none).
    pub error_unless_recorded: Option<String>,
    /// Its output, written whenever `last_error` is (`None` then clears
    /// it), at most [`MAX_LAST_OUTPUT`] bytes.
    pub last_output: Option<String>,
    /// When it finished (completed or dead).
    pub finished_at: Option<Timestamp>,
    /// When its attempt started running (only a start writes it).
    pub started_at: Option<Timestamp>,
    /// The command that completed it (only a completion writes it).
    pub command: Option<i64>,
}

impl ItemPatch {
    /// The values `change` writes into a running item at `now`:
    ///
    /// - heartbeat: still running, ready (its lease) until `lease_until`;
    /// - start: the same, and started now;
    /// - cursor: the same, and the cursor saved;
    /// - complete: completed, finished now, the stats saved;
    /// - fail with a retry time: failed, ready at that time, the error kept;
    /// - fail without one: dead, finished now, the error kept;
    /// - bury: dead, finished now, the error kept unless the item has one
    ///   recorded (its last failure, kept with its output), and the
    ///   attempt the claim counted taken back (it never ran);
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
            error_unless_recorded: None,
            last_output: None,
            finished_at: None,
            started_at: None,
            command: None,
        };
        match change {
            ItemChange::Heartbeat { lease_until } => running(*lease_until),
            ItemChange::Start { lease_until } => ItemPatch {
                started_at: Some(now),
                ..running(*lease_until)
            },
            ItemChange::Cursor {
                cursor,
                lease_until,
            } => ItemPatch {
                cursor: Some(cursor.clone()),
                ..running(*lease_until)
            },
            ItemChange::Complete { stats, command } => ItemPatch {
                status: ItemStatus::Completed,
                ready_at: None,
                stats: stats.clone(),
                command: *command,
                finished_at: Some(now),
                ..running(now)
            },
            ItemChange::Fail {
                error,
                retry_at,
                output,
            } => ItemPatch {
                status: match retry_at {
                    Some(_) => ItemStatus::Failed,
                    None => ItemStatus::Dead,
                },
                ready_at: *retry_at,
                // A failure is recorded whatever its message holds.
                last_error: Some(error.replace('\0', "\u{fffd}")),
                last_output: output.as_deref().map(bounded_output),
                finished_at: retry_at.is_none().then_some(now),
                ..running(now)
            },
            ItemChange::Bury { error } => ItemPatch {
                status: ItemStatus::Dead,
                ready_at: None,
                attempts_back: 1,
                error_unless_recorded: Some(error.replace('\0', "\u{fffd}")),
                finished_at: Some(now),
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

impl ItemPatch {
    /// One patch that writes what `self` and then `next` write, for a
    /// store that would otherwise apply both to one item in one
    /// transaction (a start and the end of the same attempt). Both are
    /// fenced by the same lease, and `self` leaves the item running under
    /// it, so `next`'s fence holds exactly where `self`'s does; `None`
    /// when `self` finishes the item or gives it back (then `next` would
    /// be refused, and must be applied on its own to say so).
    pub fn then(&self, next: &ItemPatch) -> Option<ItemPatch> {
        if self.status != ItemStatus::Running {
            return None;
        }
        Some(ItemPatch {
            status: next.status,
            ready_at: next.ready_at,
            // max(max(a - x, 0) - y, 0) = max(a - (x + y), 0) for x, y >= 0.
            attempts_back: self.attempts_back.saturating_add(next.attempts_back),
            cursor: next.cursor.clone().or_else(|| self.cursor.clone()),
            stats: next.stats.clone().or_else(|| self.stats.clone()),
            last_error: next.last_error.clone().or_else(|| self.last_error.clone()),
            error_unless_recorded: next
                .error_unless_recorded
                .clone()
                .or_else(|| self.error_unless_recorded.clone()),
            // The output goes with the error it is written beside.
            last_output: match next.last_error {
                Some(_) => next.last_output.clone(),
                None => self.last_output.clone(),
            },
            finished_at: next.finished_at.or(self.finished_at),
            started_at: next.started_at.or(self.started_at),
            command: next.command.or(self.command),
        })
    }
}

/// What a redrive writes into a dead or failed item (or a completed one,
/// re-driven by command): pending, claimable at once, attempts counted
/// afresh, no longer finished, completed by no command. Its claim count
/// (the fencing token), last error and stats are kept.
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
mod tests;
