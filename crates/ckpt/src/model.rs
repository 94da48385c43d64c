//! The stored records: job checkpoints and work items.
//!
//! These types are what a [`Store`](crate::Store) reads and writes. The JSON
//! that ckpt prints is built from them by the stable types of
//! [`json`](crate::json), so these can change without the output changing.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::time::Timestamp;

/// Status of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    /// Started and not finished (possibly crashed: see the lease).
    Running,
    /// Finished; its final checkpoint is kept until pruned.
    Completed,
    /// Given up; its checkpoint is kept for a resume.
    Failed,
}

/// Status of a work item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ItemStatus {
    /// Waiting to be claimed.
    Pending,
    /// Claimed by a worker whose lease has not been given up.
    Running,
    /// Done.
    Completed,
    /// Failed; waiting for its retry time.
    Failed,
    /// Failed on its last allowed attempt: the dead-letter list.
    Dead,
}

macro_rules! status_strings {
    ($ty:ident { $($variant:ident => $s:literal),* $(,)? }) => {
        impl $ty {
            /// Every status, in display order.
            pub const ALL: &'static [$ty] = &[$($ty::$variant),*];

            /// The lowercase name used in stores, output and URLs.
            pub fn as_str(self) -> &'static str {
                match self { $($ty::$variant => $s),* }
            }

            /// Parses a lowercase name.
            pub fn parse(s: &str) -> Option<$ty> {
                match s { $($s => Some($ty::$variant),)* _ => None }
            }
        }

        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

status_strings!(JobStatus { Running => "running", Completed => "completed", Failed => "failed" });
status_strings!(ItemStatus {
    Pending => "pending",
    Running => "running",
    Completed => "completed",
    Failed => "failed",
    Dead => "dead",
});

/// The progress a job saves: where it is and what it has accumulated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Where to resume: any JSON value (an offset, a key, a page token...).
    pub cursor: Value,
    /// How many items the job has processed so far.
    pub items_processed: u64,
    /// The pipeline stage, for multi-stage jobs.
    pub stage: Option<String>,
    /// Accumulated results; bounded by the state size limit.
    pub state: Option<Value>,
}

/// What an operator's checkpoint write expects to find: the compare of a
/// compare-and-set ([`JobStore::put_checkpoint`](crate::store::JobStore::put_checkpoint)).
///
/// Cursors are compared as canonical JSON text (object keys sorted, no
/// spaces), so `{"a":1,"b":2}` equals `{"b":2,"a":1}`; numbers compare by
/// their JSON form, so `1` and `1.0` differ (a cursor read back with
/// `ckpt checkpoint get` is printed in the form it was stored, so passing
/// back what was read always matches).
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Expect {
    /// Write whatever is stored (no compare).
    #[default]
    Anything,
    /// Write only if the job has no checkpoint: it does not exist yet, or
    /// its checkpoint was cleared.
    NoCheckpoint,
    /// Write only if the stored cursor equals this one.
    Cursor(Value),
}

impl Expect {
    /// The expected cursor's canonical JSON text, `None` for
    /// [`Expect::NoCheckpoint`] and [`Expect::Anything`].
    pub fn cursor_text(&self) -> Option<String> {
        match self {
            Expect::Cursor(v) => Some(canonical_json(v)),
            _ => None,
        }
    }

    /// True if and only if a job whose stored cursor is `stored` (`None`:
    /// no checkpoint, or no job) meets this expectation.
    pub fn is_met_by(&self, stored: Option<&Value>) -> bool {
        match (self, stored) {
            (Expect::Anything, _) => true,
            (Expect::NoCheckpoint, stored) => stored.is_none(),
            (Expect::Cursor(_), None) => false,
            (Expect::Cursor(want), Some(have)) => canonical_json(want) == canonical_json(have),
        }
    }
}

/// A value's canonical JSON text: keys sorted (serde_json's map is
/// ordered), no whitespace. The form stores keep cursors in.
pub fn canonical_json(v: &Value) -> String {
    v.to_string()
}

impl Checkpoint {
    /// A checkpoint with this cursor, no stage and no state.
    pub fn new(cursor: Value, items_processed: u64) -> Self {
        Checkpoint {
            cursor,
            items_processed,
            stage: None,
            state: None,
        }
    }

    /// Sets the stage.
    pub fn with_stage(mut self, stage: impl Into<String>) -> Self {
        self.stage = Some(stage.into());
        self
    }

    /// Sets the accumulated state.
    pub fn with_state(mut self, state: Value) -> Self {
        self.state = Some(state);
        self
    }
}

/// A job's record in the store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    /// The job's name.
    pub name: String,
    /// Running, completed or failed.
    pub status: JobStatus,
    /// The last saved checkpoint, if any.
    pub checkpoint: Option<Checkpoint>,
    /// When the checkpoint was saved.
    pub checkpoint_at: Option<Timestamp>,
    /// The worker holding the job's lease, if any.
    pub owner: Option<String>,
    /// When that lease expires.
    pub lease_expires: Option<Timestamp>,
    /// Fencing epoch: bumped on every change of ownership. A write carrying
    /// an older epoch is refused.
    pub epoch: u64,
    /// How many times the job was acquired by a worker (started or resumed).
    pub attempts: u32,
    /// How many checkpoints were saved in all (the history sequence number).
    pub saves: u64,
    /// Number of entries in the bounded history.
    pub history_len: u64,
    /// Size of the serialised state in bytes.
    pub state_bytes: u64,
    /// When the job was created.
    pub created_at: Timestamp,
    /// When the job record last changed.
    pub updated_at: Timestamp,
    /// When the job was completed.
    pub completed_at: Option<Timestamp>,
    /// Why the job failed, when it did.
    pub error: Option<String>,
}

/// One entry of a job's bounded checkpoint history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// The save's sequence number (1 for the first save).
    pub seq: u64,
    /// The cursor saved.
    pub cursor: Value,
    /// Items processed at that save.
    pub items_processed: u64,
    /// When it was saved.
    pub at: Timestamp,
}

/// Proof that a worker holds a job: every job write carries it and is
/// refused with [`Error::Fenced`](crate::Error::Fenced) once the epoch moved on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobLease {
    /// The job.
    pub job: String,
    /// The holder.
    pub owner: String,
    /// The fencing epoch granted by the acquire.
    pub epoch: u64,
}

/// Store-assigned identifier of a work item.
pub type ItemId = i64;

/// An item to enqueue.
#[derive(Debug, Clone, PartialEq)]
pub struct NewItem {
    /// The caller-chosen key, unique within the job (a file URL, a line, an id).
    pub key: String,
    /// Optional payload handed to the worker.
    pub payload: Option<Value>,
}

impl NewItem {
    /// An item with this key and no payload.
    pub fn key(key: impl Into<String>) -> Self {
        NewItem {
            key: key.into(),
            payload: None,
        }
    }
}

/// What an enqueue did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct EnqueueReport {
    /// Items that were new.
    pub inserted: u64,
    /// Items whose key already existed (left exactly as they were).
    pub existing: u64,
}

/// A claimed item: the worker now holds its lease.
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimedItem {
    /// The lease to pass to every update of this item.
    pub lease: ItemLease,
    /// The item's job.
    pub job: String,
    /// The item's key.
    pub key: String,
    /// Which attempt this is: 1 for the first, counted since the item was
    /// enqueued or last re-driven.
    pub attempt: u32,
    /// Its payload.
    pub payload: Option<Value>,
    /// The per-item cursor saved by an earlier attempt, so a retry of a big
    /// item resumes inside it.
    pub cursor: Option<Value>,
    /// When the lease expires unless renewed.
    pub lease_expires: Timestamp,
    /// The owner this item was taken over from, if its previous lease
    /// expired or its owner died.
    pub taken_over_from: Option<String>,
    /// When the item was enqueued (for the lead time: enqueue to completion).
    pub enqueued_at: Timestamp,
}

/// Proof that a worker holds an item. `token` is the fencing token: the
/// item's claim count, bumped on every claim and never reset (not even by a
/// redrive), so an update carrying an older token is refused.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ItemLease {
    /// The item.
    pub id: ItemId,
    /// The holder.
    pub owner: String,
    /// The fencing token granted by the claim.
    pub token: u64,
}

/// A change to a claimed item.
#[derive(Debug, Clone, PartialEq)]
pub enum ItemChange {
    /// Renew the lease until the given time.
    Heartbeat {
        /// New expiry.
        lease_until: Timestamp,
    },
    /// The attempt starts running now (and the lease is renewed): from here
    /// on it counts, even if its worker dies without a word.
    Start {
        /// New expiry.
        lease_until: Timestamp,
    },
    /// Save a per-item cursor (and renew the lease).
    Cursor {
        /// The cursor.
        cursor: Value,
        /// New expiry.
        lease_until: Timestamp,
    },
    /// Mark the item completed, with optional stats.
    Complete {
        /// Counters such as records_total, duration_ms.
        stats: Option<Value>,
        /// The id of the command that completed it
        /// ([`CommandStore::record_command`](crate::store::CommandStore::record_command)),
        /// if the caller tags completions.
        command: Option<i64>,
    },
    /// Mark the item failed: retried at `retry_at`, or dead when `None`.
    Fail {
        /// The error message kept as `last_error`.
        error: String,
        /// The tail of what the attempt wrote to its error output (a
        /// command's stderr), kept as `last_output` beside the error;
        /// bounded by [`MAX_LAST_OUTPUT`](crate::store::machine::MAX_LAST_OUTPUT).
        output: Option<String>,
        /// When it may be claimed again; `None` moves it to the dead list.
        retry_at: Option<Timestamp>,
    },
    /// Move the item to the dead list without running it, and take back
    /// the attempt this claim counted: for an item found with its attempts
    /// used up already (by workers that died running it, or by failures
    /// under a retry policy that allowed more), which the claim that found
    /// it so never ran.
    Bury {
        /// The error message kept as `last_error` when the item has none
        /// recorded; one recorded (its last failure) is kept, with its
        /// output.
        error: String,
    },
    /// Give the item back unfinished, as if this claim had not happened: it
    /// is pending again (claimable at once, in enqueue order) and the
    /// attempt the claim counted is taken back. Its cursor, last error and
    /// claim count (the fencing token) are kept. For a worker that stops
    /// before or while running an item (a graceful shutdown).
    Release,
}

/// A fenced change: applied only if the item is still running under `lease`.
#[derive(Debug, Clone, PartialEq)]
pub struct ItemUpdate {
    /// The lease from the claim.
    pub lease: ItemLease,
    /// The change.
    pub change: ItemChange,
}

/// An item as stored.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ItemRecord {
    /// Identifier.
    pub id: ItemId,
    /// Key.
    pub key: String,
    /// Payload.
    pub payload: Option<Value>,
    /// Status.
    pub status: ItemStatus,
    /// Attempts so far (since enqueue or the last redrive).
    pub attempts: u32,
    /// Current or last holder.
    pub owner: Option<String>,
    /// Lease expiry while running; retry time while failed.
    pub ready_at: Option<Timestamp>,
    /// Last error message.
    pub last_error: Option<String>,
    /// The tail of the last failed attempt's error output (a command's
    /// stderr), if it kept one: the companion of `last_error`, replaced
    /// with it at each failure.
    pub last_output: Option<String>,
    /// Stats saved on completion.
    pub stats: Option<Value>,
    /// Per-item cursor.
    pub cursor: Option<Value>,
    /// When it was enqueued.
    pub enqueued_at: Timestamp,
    /// When it was last claimed.
    pub started_at: Option<Timestamp>,
    /// When it completed or went dead.
    pub finished_at: Option<Timestamp>,
    /// The command that completed it, if one was recorded (see
    /// [`CommandStore`](crate::store::CommandStore)).
    pub command_id: Option<i64>,
}

/// Item counts of a job by status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItemCounts {
    /// Waiting to be claimed.
    pub pending: u64,
    /// Held by a worker.
    pub running: u64,
    /// Done.
    pub completed: u64,
    /// Waiting for a retry.
    pub failed: u64,
    /// Dead-letter list.
    pub dead: u64,
}

impl ItemCounts {
    /// Items that still need work: pending, running or waiting for a retry.
    pub fn unfinished(&self) -> u64 {
        self.pending + self.running + self.failed
    }

    /// All items.
    pub fn total(&self) -> u64 {
        self.unfinished() + self.completed + self.dead
    }

    /// The count of `status`.
    pub fn of(&self, status: ItemStatus) -> u64 {
        match status {
            ItemStatus::Pending => self.pending,
            ItemStatus::Running => self.running,
            ItemStatus::Completed => self.completed,
            ItemStatus::Failed => self.failed,
            ItemStatus::Dead => self.dead,
        }
    }

    /// Adds `n` to the count of `status`.
    pub fn add(&mut self, status: ItemStatus, n: u64) {
        match status {
            ItemStatus::Pending => self.pending += n,
            ItemStatus::Running => self.running += n,
            ItemStatus::Completed => self.completed += n,
            ItemStatus::Failed => self.failed += n,
            ItemStatus::Dead => self.dead += n,
        }
    }
}

/// A command template a job has run (see [`CommandStore`](crate::store::CommandStore)):
/// the text that identifies it, and how many of the job's items it completed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandRecord {
    /// Its id, unique within the job, in order of first use.
    pub id: i64,
    /// The template as recorded (`ckpt run` records its argv shell-quoted,
    /// before any replacement).
    pub command: String,
    /// When it was first recorded.
    pub first_used: Timestamp,
    /// When it was last recorded: the job's latest command has the newest.
    pub last_used: Timestamp,
    /// The job's items now completed by it.
    pub completed: u64,
}

/// The commands of a job and the completed items none of them is known to
/// have completed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobCommands {
    /// Every command recorded for the job, in order of first use.
    pub commands: Vec<CommandRecord>,
    /// Completed items without a command: completed through the library
    /// without a tag, or before the store recorded commands.
    pub unknown: u64,
}

impl JobCommands {
    /// The command recorded most recently, if any (the greatest
    /// `last_used`, the later id on a tie).
    pub fn latest(&self) -> Option<&CommandRecord> {
        self.commands.iter().max_by_key(|c| (c.last_used, c.id))
    }
}

/// Which completed items a [`redrive_completed`](crate::store::CommandStore::redrive_completed)
/// moves back to pending.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompletedBy {
    /// Those completed by this command.
    Command(i64),
    /// Those completed with no command recorded.
    Unknown,
    /// Those not completed by this command (another one, or none known).
    NotCommand(i64),
}

impl CompletedBy {
    /// True if and only if an item completed by `command` is selected.
    pub fn selects(&self, command: Option<i64>) -> bool {
        match *self {
            CompletedBy::Command(id) => command == Some(id),
            CompletedBy::Unknown => command.is_none(),
            CompletedBy::NotCommand(id) => command != Some(id),
        }
    }
}
