//! The JSON documents ckpt prints and serves: one vocabulary for every
//! `--json` output of the `ckpt` command and for the `ckpt serve` API.
//!
//! # Stability
//!
//! These shapes are stable: a field may be added in any release, but none
//! is renamed, removed or given another type without a new major version.
//! Read them with a parser that ignores fields it does not know. They are
//! kept apart from the stored records of [`model`](crate::model), so the
//! store can change without the output changing.
//!
//! # Conventions
//!
//! - **Times** are RFC 3339 strings in UTC with milliseconds
//!   (`2026-11-30T10:49:23.123Z`, see [`rfc3339`]), in fields whose names
//!   end in `_at`. A time that does not apply is `null`.
//! - **Durations** are seconds as a number (with a fraction), in fields
//!   whose names end in `_seconds`.
//! - **Sizes** are bytes, in fields whose names end in `_bytes`.
//! - A job's name is the field `job`.
//! - Statuses are lowercase strings: a job is `running`, `completed` or
//!   `failed`; an item is `pending`, `running`, `completed`, `failed` or
//!   `dead`.
//!
//! # Which prints what
//!
//! | document | printed by |
//! |---|---|
//! | [`JobDetailJson`] | `ckpt status JOB --json`, `ckpt show JOB --json`, `GET /api/jobs/{job}` |
//! | array of [`JobJson`] | `ckpt jobs --json`, `GET /api/jobs` |
//! | array of [`ItemJson`] | `ckpt items JOB --json`, `GET /api/jobs/{job}/items` |
//! | [`CheckpointJson`] | `ckpt checkpoint get JOB --full` |
//!
//! The documents of single commands (`ckpt run --json`, `ckpt prune
//! --json`, `ckpt doctor --json`, `ckpt bench --json`) and the small API
//! answers (`/api/info`, `{"moved": n}`, `{"error": "…"}`) follow the same
//! conventions; the `ckpt` command's documentation lists them.
//!
//! The job documents are read by [`inspect::job_documents`] and
//! [`inspect::job_detail`], so the command line and the API answer alike.
//!
//! [`inspect::job_documents`]: crate::inspect::job_documents
//! [`inspect::job_detail`]: crate::inspect::job_detail

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::model::{
    Checkpoint, HistoryEntry, ItemCounts, ItemRecord, ItemStatus, JobRecord, JobStatus,
};
use crate::time::Timestamp;

/// `t` as RFC 3339 in UTC with milliseconds: `2026-11-30T10:49:23.123Z`.
/// The one formatter of every time in JSON output (and of times the
/// `ckpt` command prints for people).
///
/// RFC 3339 has four-digit years: a time past the year 9999 (only a
/// damaged or hand-edited store holds one) is shown as the last
/// millisecond of 9999, as a time before 1970 is shown as 1970.
pub fn rfc3339(t: Timestamp) -> String {
    let t = Timestamp(t.0.min(LAST_RFC3339_MILLIS));
    humantime::format_rfc3339_millis(t.to_system_time()).to_string()
}

/// 9999-12-31T23:59:59.999Z, in milliseconds since the epoch.
const LAST_RFC3339_MILLIS: i64 = 253_402_300_799_999;

/// A job's items by status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItemCountsJson {
    /// Waiting to be claimed.
    pub pending: u64,
    /// Held by a worker.
    pub running: u64,
    /// Done.
    pub completed: u64,
    /// Failed and waiting for their retry time.
    pub failed: u64,
    /// Failed on their last allowed attempt: the dead-letter list.
    pub dead: u64,
    /// All of the above.
    pub total: u64,
}

impl From<ItemCounts> for ItemCountsJson {
    fn from(c: ItemCounts) -> Self {
        ItemCountsJson {
            pending: c.pending,
            running: c.running,
            completed: c.completed,
            failed: c.failed,
            dead: c.dead,
            total: c.total(),
        }
    }
}

/// One job at a glance: its status, items and checkpoint, without the
/// checkpoint's state (so that lists of jobs stay small).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobJson {
    /// The job's name.
    pub job: String,
    /// `running`, `completed` or `failed`.
    pub status: JobStatus,
    /// The job's items by status (all zero for a cursor job).
    pub items: ItemCountsJson,
    /// Where the last checkpoint says to resume (any JSON value); `null`
    /// when there is no checkpoint (tell a saved `null` cursor apart by
    /// `checkpoint_at`).
    pub cursor: Option<Value>,
    /// Items processed, as the last checkpoint says; 0 without one.
    pub items_processed: u64,
    /// The last checkpoint's stage, if it has one.
    pub stage: Option<String>,
    /// When the last checkpoint was saved; `null` when there is none.
    pub checkpoint_at: Option<String>,
    /// Seconds since then, at the time of the reading.
    pub checkpoint_age_seconds: Option<f64>,
    /// Checkpoints saved in all (the newest history entry's `seq`).
    pub saves: u64,
    /// Entries in the bounded history.
    pub history_len: u64,
    /// Size of the saved state, serialised.
    pub state_bytes: u64,
    /// The worker holding (or last holding) the job's lease: a cursor job's
    /// worker; `null` when none.
    pub owner: Option<String>,
    /// When that lease expires (or expired).
    pub lease_expires_at: Option<String>,
    /// The fencing epoch, bumped on every change of owner.
    pub epoch: u64,
    /// How many times a worker acquired the job (started or resumed it).
    pub attempts: u32,
    /// When the job was created.
    pub created_at: String,
    /// When the job's record last changed.
    pub updated_at: String,
    /// When the job completed; `null` unless it did.
    pub completed_at: Option<String>,
    /// Why the job failed; `null` unless it did.
    pub error: Option<String>,
}

impl JobJson {
    /// The document of `job` with its item counts, as seen at `now`.
    pub fn new(job: &JobRecord, items: ItemCounts, now: Timestamp) -> JobJson {
        let cp = job.checkpoint.as_ref();
        JobJson {
            job: job.name.clone(),
            status: job.status,
            items: items.into(),
            cursor: cp.map(|c| c.cursor.clone()),
            items_processed: cp.map_or(0, |c| c.items_processed),
            stage: cp.and_then(|c| c.stage.clone()),
            checkpoint_at: job.checkpoint_at.map(rfc3339),
            checkpoint_age_seconds: job.checkpoint_at.map(|t| now.since(t).as_secs_f64()),
            saves: job.saves,
            history_len: job.history_len,
            state_bytes: job.state_bytes,
            owner: job.owner.clone(),
            lease_expires_at: job.lease_expires.map(rfc3339),
            epoch: job.epoch,
            attempts: job.attempts,
            created_at: rfc3339(job.created_at),
            updated_at: rfc3339(job.updated_at),
            completed_at: job.completed_at.map(rfc3339),
            error: job.error.clone(),
        }
    }
}

/// One job in full: the fields of [`JobJson`] (flattened: at the same
/// level), the checkpoint's state, the newest history entries and the
/// dead and failed items. How many entries and items it holds depends on
/// who prints it; the counts in `items` and `history_len` say how many
/// there are in all.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobDetailJson {
    /// Every field of the job's [`JobJson`].
    #[serde(flatten)]
    pub summary: JobJson,
    /// The last checkpoint's accumulated state; `null` when it has none.
    pub state: Option<Value>,
    /// The newest history entries, newest first.
    pub history: Vec<HistoryJson>,
    /// The first dead items, in enqueue order, with their last error.
    pub dead_items: Vec<ItemJson>,
    /// The first failed items (awaiting their retry), in enqueue order,
    /// with their last error and `retry_at`.
    pub failed_items: Vec<ItemJson>,
    /// The commands the job was run with, in order of first use, each with
    /// the items it completed.
    #[serde(default)]
    pub commands: Vec<CommandJson>,
    /// Completed items with no command recorded (completed through the
    /// library untagged, or before the store recorded commands).
    #[serde(default)]
    pub completed_by_unknown_command: u64,
}

/// A command a job was run with ([`CommandRecord`](crate::model::CommandRecord)).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandJson {
    /// Its id within the job (`ckpt retry JOB --completed-by ID`).
    pub command_id: i64,
    /// The command template, its words shell-quoted where needed.
    pub command: String,
    /// The job's items it completed (and that are still completed).
    pub completed: u64,
    /// True for the command the job was last run with.
    pub latest: bool,
    /// When it was first used.
    pub first_used_at: String,
    /// When it was last used.
    pub last_used_at: String,
}

impl CommandJson {
    /// The documents of a job's commands, the latest marked.
    pub fn list(commands: &crate::model::JobCommands) -> Vec<CommandJson> {
        let latest = commands.latest().map(|c| c.id);
        commands
            .commands
            .iter()
            .map(|c| CommandJson {
                command_id: c.id,
                command: c.command.clone(),
                completed: c.completed,
                latest: Some(c.id) == latest,
                first_used_at: rfc3339(c.first_used),
                last_used_at: rfc3339(c.last_used),
            })
            .collect()
    }
}

/// One entry of a job's checkpoint history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryJson {
    /// The save's sequence number: 1 for the job's first save.
    pub seq: u64,
    /// The cursor saved.
    pub cursor: Value,
    /// Items processed at that save.
    pub items_processed: u64,
    /// When it was saved.
    pub saved_at: String,
}

impl HistoryJson {
    /// The document of one history entry.
    pub fn new(entry: &HistoryEntry) -> HistoryJson {
        HistoryJson {
            seq: entry.seq,
            cursor: entry.cursor.clone(),
            items_processed: entry.items_processed,
            saved_at: rfc3339(entry.at),
        }
    }
}

/// One work item.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ItemJson {
    /// The item's key, unique within its job.
    pub key: String,
    /// `pending`, `running`, `completed`, `failed` or `dead`.
    pub status: ItemStatus,
    /// Attempts so far, counted since it was enqueued or last retried.
    pub attempts: u32,
    /// The worker holding it (running) or that last held it.
    pub owner: Option<String>,
    /// When the worker's lease expires: set for running items only.
    pub lease_expires_at: Option<String>,
    /// When it may be claimed again: set for failed items only.
    pub retry_at: Option<String>,
    /// The last attempt's error message.
    pub last_error: Option<String>,
    /// The stats saved when it completed (any JSON value).
    pub stats: Option<Value>,
    /// The per-item cursor saved by an attempt, from which a retry resumes.
    pub cursor: Option<Value>,
    /// The payload it was enqueued with.
    pub payload: Option<Value>,
    /// When it was enqueued.
    pub enqueued_at: String,
    /// When it was last claimed.
    pub started_at: Option<String>,
    /// When it completed or went dead.
    pub finished_at: Option<String>,
    /// The id of the command that completed it (see the job's `commands`);
    /// `null` when none was recorded.
    #[serde(default)]
    pub command_id: Option<i64>,
    /// The tail of the last failed attempt's error output (a command's
    /// stderr), beside `last_error`; `null` when none was kept.
    #[serde(default)]
    pub last_output: Option<String>,
}

impl ItemJson {
    /// The document of one item. The store's one "ready" time becomes
    /// `lease_expires_at` for a running item and `retry_at` for a failed one.
    pub fn new(item: &ItemRecord) -> ItemJson {
        let ready_if = |status| {
            (item.status == status)
                .then_some(item.ready_at)
                .flatten()
                .map(rfc3339)
        };
        ItemJson {
            key: item.key.clone(),
            status: item.status,
            attempts: item.attempts,
            owner: item.owner.clone(),
            lease_expires_at: ready_if(ItemStatus::Running),
            retry_at: ready_if(ItemStatus::Failed),
            last_error: item.last_error.clone(),
            stats: item.stats.clone(),
            cursor: item.cursor.clone(),
            payload: item.payload.clone(),
            enqueued_at: rfc3339(item.enqueued_at),
            started_at: item.started_at.map(rfc3339),
            finished_at: item.finished_at.map(rfc3339),
            command_id: item.command_id,
            last_output: item.last_output.clone(),
        }
    }
}

/// A job's checkpoint, as `ckpt checkpoint get --full` prints it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointJson {
    /// Where to resume (any JSON value).
    pub cursor: Value,
    /// Items processed so far.
    pub items_processed: u64,
    /// The pipeline stage, if any.
    pub stage: Option<String>,
    /// The accumulated state, if any.
    pub state: Option<Value>,
}

impl From<&Checkpoint> for CheckpointJson {
    fn from(cp: &Checkpoint) -> Self {
        CheckpointJson {
            cursor: cp.cursor.clone(),
            items_processed: cp.items_processed,
            stage: cp.stage.clone(),
            state: cp.state.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const T: Timestamp = Timestamp(1_700_000_000_123);

    fn item(status: ItemStatus, ready_at: Option<Timestamp>) -> ItemRecord {
        ItemRecord {
            id: 7,
            key: "k".into(),
            payload: Some(json!({"p": 1})),
            status,
            attempts: 2,
            owner: Some("host~w:1:2:x".into()),
            ready_at,
            last_error: Some("boom".into()),
            stats: None,
            cursor: Some(json!(5)),
            enqueued_at: Timestamp(0),
            started_at: Some(T),
            finished_at: None,
            command_id: None,
            last_output: None,
        }
    }

    fn job(checkpoint: Option<Checkpoint>) -> JobRecord {
        JobRecord {
            name: "import".into(),
            status: JobStatus::Running,
            checkpoint_at: checkpoint.as_ref().map(|_| T),
            checkpoint,
            owner: Some("host~w:1:2:x".into()),
            lease_expires: Some(Timestamp(T.0 + 30_000)),
            epoch: 3,
            attempts: 2,
            saves: 4,
            history_len: 4,
            state_bytes: 11,
            created_at: Timestamp(0),
            updated_at: T,
            completed_at: None,
            error: None,
        }
    }

    fn keys(value: &Value) -> Vec<String> {
        value.as_object().unwrap().keys().cloned().collect()
    }

    #[test]
    fn rfc3339_is_utc_with_milliseconds() {
        assert_eq!(rfc3339(Timestamp(0)), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(T), "2023-11-14T22:13:20.123Z");
        // Out of RFC 3339's range (a damaged store): shown at its ends.
        assert_eq!(
            rfc3339(Timestamp(LAST_RFC3339_MILLIS)),
            "9999-12-31T23:59:59.999Z"
        );
        for past in [LAST_RFC3339_MILLIS + 1, i64::MAX] {
            assert_eq!(rfc3339(Timestamp(past)), "9999-12-31T23:59:59.999Z");
        }
        assert_eq!(rfc3339(Timestamp(i64::MIN)), "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn ready_at_is_the_lease_of_a_running_item_and_the_retry_of_a_failed_one() {
        let running = ItemJson::new(&item(ItemStatus::Running, Some(T)));
        assert_eq!(
            running.lease_expires_at.as_deref(),
            Some("2023-11-14T22:13:20.123Z")
        );
        assert_eq!(running.retry_at, None);

        let failed = ItemJson::new(&item(ItemStatus::Failed, Some(T)));
        assert_eq!(failed.retry_at.as_deref(), Some("2023-11-14T22:13:20.123Z"));
        assert_eq!(failed.lease_expires_at, None);

        // Any other status: a leftover time means nothing to a reader.
        for status in [ItemStatus::Pending, ItemStatus::Completed, ItemStatus::Dead] {
            let doc = ItemJson::new(&item(status, Some(T)));
            assert_eq!(
                (doc.lease_expires_at, doc.retry_at),
                (None, None),
                "{status}"
            );
        }
    }

    #[test]
    fn an_item_document_has_no_store_internals() {
        let doc = serde_json::to_value(ItemJson::new(&item(ItemStatus::Running, Some(T)))).unwrap();
        assert_eq!(
            keys(&doc),
            [
                "attempts",
                "command_id",
                "cursor",
                "enqueued_at",
                "finished_at",
                "key",
                "last_error",
                "last_output",
                "lease_expires_at",
                "owner",
                "payload",
                "retry_at",
                "started_at",
                "stats",
                "status"
            ]
        );
        assert_eq!(doc["status"], "running");
        assert_eq!(doc["enqueued_at"], "1970-01-01T00:00:00.000Z");
        assert_eq!(doc["finished_at"], Value::Null);
    }

    #[test]
    fn a_job_without_a_checkpoint_has_nulls_and_no_age() {
        let counts = ItemCounts {
            pending: 1,
            running: 2,
            completed: 3,
            failed: 4,
            dead: 5,
        };
        let doc = JobJson::new(&job(None), counts, Timestamp(T.0 + 1_500));
        assert_eq!(doc.job, "import");
        assert_eq!(
            (doc.cursor, doc.checkpoint_at, doc.checkpoint_age_seconds),
            (None, None, None)
        );
        assert_eq!(doc.items_processed, 0);
        assert_eq!(doc.items.total, 15);
        assert_eq!(
            doc.lease_expires_at.as_deref(),
            Some("2023-11-14T22:13:50.123Z")
        );
    }

    #[test]
    fn a_job_document_names_its_fields_by_the_conventions() {
        let cp = Checkpoint::new(json!({"page": 2}), 40).with_stage("load");
        let doc = JobJson::new(
            &job(Some(cp)),
            ItemCounts::default(),
            Timestamp(T.0 + 1_500),
        );
        assert_eq!(doc.checkpoint_age_seconds, Some(1.5));
        let value = serde_json::to_value(&doc).unwrap();
        assert_eq!(value["cursor"], json!({"page": 2}));
        assert_eq!(value["checkpoint_at"], "2023-11-14T22:13:20.123Z");
        assert_eq!(value["status"], "running");
        assert_eq!(value["items"]["total"], 0);
        assert!(value.get("name").is_none() && value.get("lease_expires").is_none());
        assert!(value.get("state").is_none(), "lists of jobs carry no state");
    }

    #[test]
    fn a_detail_is_the_job_document_and_more_at_the_same_level() {
        let cp = Checkpoint::new(json!(9), 9).with_state(json!({"rows": 1}));
        let record = job(Some(cp));
        let summary = JobJson::new(&record, ItemCounts::default(), T);
        let entry = HistoryEntry {
            seq: 4,
            cursor: json!(9),
            items_processed: 9,
            at: T,
        };
        let detail = JobDetailJson {
            summary: summary.clone(),
            state: Some(json!({"rows": 1})),
            history: vec![HistoryJson::new(&entry)],
            dead_items: vec![ItemJson::new(&item(ItemStatus::Dead, None))],
            failed_items: vec![],
            commands: vec![],
            completed_by_unknown_command: 0,
        };
        let value = serde_json::to_value(&detail).unwrap();
        let mut expected = keys(&serde_json::to_value(&summary).unwrap());
        expected.extend(
            [
                "commands",
                "completed_by_unknown_command",
                "dead_items",
                "failed_items",
                "history",
                "state",
            ]
            .map(String::from),
        );
        expected.sort();
        assert_eq!(keys(&value), expected);
        assert_eq!(value["history"][0]["saved_at"], "2023-11-14T22:13:20.123Z");
        let back: JobDetailJson = serde_json::from_value(value).unwrap();
        assert_eq!(back, detail);
    }

    #[test]
    fn checkpoint_document_keeps_the_four_fields() {
        let cp = Checkpoint::new(json!("c"), 1)
            .with_stage("s")
            .with_state(json!([1]));
        let value = serde_json::to_value(CheckpointJson::from(&cp)).unwrap();
        assert_eq!(
            value,
            json!({"cursor": "c", "items_processed": 1, "stage": "s", "state": [1]})
        );
    }
}
