//! Output shapes: the JSON documents `--json` prints are their own types,
//! so that human wording can change without breaking scripts.

use std::time::Duration;

use ckpt::{ItemCounts, JobRecord, Timestamp};
use serde::Serialize;
use serde_json::Value;

/// RFC 3339 UTC with milliseconds.
pub fn rfc3339(t: Timestamp) -> String {
    humantime::format_rfc3339_millis(t.to_system_time()).to_string()
}

/// "3.2s", "4m 5s": a short human duration.
pub fn short_duration(d: Duration) -> String {
    if d < Duration::from_secs(60) {
        format!("{:.1}s", d.as_secs_f64())
    } else {
        let secs = d.as_secs();
        humantime::format_duration(Duration::from_secs(secs)).to_string()
    }
}

/// `ckpt status --json`.
#[derive(Debug, Serialize)]
pub struct StatusDoc {
    pub job: String,
    pub status: String,
    pub items: ItemCounts,
    pub checkpoint: Option<CheckpointDoc>,
    pub owner: Option<String>,
    pub lease_expires_at: Option<String>,
    pub attempts: u32,
    pub epoch: u64,
    pub created_at: String,
    pub updated_at: String,
    pub completed_at: Option<String>,
    pub error: Option<String>,
}

/// A checkpoint in JSON output.
#[derive(Debug, Serialize)]
pub struct CheckpointDoc {
    pub cursor: Value,
    pub items_processed: u64,
    pub stage: Option<String>,
    pub state: Option<Value>,
    pub saved_at: Option<String>,
    pub age_seconds: Option<f64>,
    pub history_len: u64,
    pub state_bytes: u64,
    pub saves: u64,
}

impl StatusDoc {
    pub fn new(job: &JobRecord, items: ItemCounts, now: Timestamp) -> Self {
        StatusDoc {
            job: job.name.clone(),
            status: job.status.to_string(),
            items,
            checkpoint: CheckpointDoc::new(job, now),
            owner: job.owner.clone(),
            lease_expires_at: job.lease_expires.map(rfc3339),
            attempts: job.attempts,
            epoch: job.epoch,
            created_at: rfc3339(job.created_at),
            updated_at: rfc3339(job.updated_at),
            completed_at: job.completed_at.map(rfc3339),
            error: job.error.clone(),
        }
    }
}

impl CheckpointDoc {
    pub fn new(job: &JobRecord, now: Timestamp) -> Option<Self> {
        let cp = job.checkpoint.as_ref()?;
        Some(CheckpointDoc {
            cursor: cp.cursor.clone(),
            items_processed: cp.items_processed,
            stage: cp.stage.clone(),
            state: cp.state.clone(),
            saved_at: job.checkpoint_at.map(rfc3339),
            age_seconds: job.checkpoint_at.map(|t| now.since(t).as_secs_f64()),
            history_len: job.history_len,
            state_bytes: job.state_bytes,
            saves: job.saves,
        })
    }
}

/// `ckpt run --json`.
#[derive(Debug, Serialize)]
pub struct RunDoc {
    pub job: String,
    pub status: Option<String>,
    pub enqueued: u64,
    pub already_known: u64,
    pub completed_now: u64,
    pub failed_attempts: u64,
    pub dead_now: u64,
    pub lost_leases: u64,
    /// Items given back unfinished because the run was stopped.
    pub released_now: u64,
    /// "SIGTERM" or "SIGINT" when a signal stopped the run, else null.
    pub stopped_by: Option<String>,
    pub items: ItemCounts,
    pub seconds: f64,
}
