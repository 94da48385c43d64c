//! Reading PostgreSQL rows into the model's records.

use serde_json::Value;
use tokio_postgres::Row;

use crate::error::{Error, Result};
use crate::model::{Checkpoint, ItemRecord, ItemStatus, JobRecord, JobStatus};
use crate::store::machine::shown_ready_at;
use crate::time::Timestamp;

/// The columns [`job_from_row`] reads, in order.
pub(super) const JOB_COLUMNS: &str =
    "name, status, cursor, items_processed, stage, state, checkpoint_at, \
     owner, lease_expires, epoch, attempts, saves, \
     (SELECT count(*) FROM history h WHERE h.job_id = jobs.id), state_bytes, \
     created_at, updated_at, completed_at, error";

/// The columns [`item_from_row`] reads, in order.
pub(super) const ITEM_COLUMNS: &str =
    "id, key, payload, status, attempts, owner, ready_at, last_error, \
     stats, cursor, enqueued_at, started_at, finished_at, command_id, last_output";

pub(super) fn status<T>(s: &str, parse: fn(&str) -> Option<T>) -> Result<T> {
    parse(s).ok_or_else(|| Error::Storage(format!("unknown status {s:?} in the store")))
}

/// A `jsonb` column as JSON: a value `serde_json` cannot read back (one
/// nested too deep, written behind ckpt's back) is an error naming the
/// column, not a panic.
pub(super) fn json(r: &Row, idx: usize) -> Result<Option<Value>> {
    r.try_get(idx).map_err(|e| {
        Error::Storage(format!(
            "malformed data in the PostgreSQL store: column {}: {e}",
            r.columns()[idx].name()
        ))
    })
}

pub(super) fn ts(v: Option<i64>) -> Option<Timestamp> {
    v.map(Timestamp)
}

pub(super) fn job_from_row(r: &Row) -> Result<JobRecord> {
    let checkpoint = match json(r, 2)? {
        Some(cursor) => Some(Checkpoint {
            cursor,
            items_processed: r.get::<_, i64>(3) as u64,
            stage: r.get(4),
            state: json(r, 5)?,
        }),
        None => None,
    };
    Ok(JobRecord {
        name: r.get(0),
        status: status(r.get(1), JobStatus::parse)?,
        checkpoint,
        checkpoint_at: ts(r.get(6)),
        owner: r.get(7),
        lease_expires: ts(r.get(8)),
        epoch: r.get::<_, i64>(9) as u64,
        attempts: r.get::<_, i32>(10) as u32,
        saves: r.get::<_, i64>(11) as u64,
        history_len: r.get::<_, i64>(12) as u64,
        state_bytes: r.get::<_, i64>(13) as u64,
        created_at: Timestamp(r.get(14)),
        updated_at: Timestamp(r.get(15)),
        completed_at: ts(r.get(16)),
        error: r.get(17),
    })
}

pub(super) fn item_from_row(r: &Row) -> Result<ItemRecord> {
    let status = status(r.get(3), ItemStatus::parse)?;
    let ready_at = shown_ready_at(status, ts(r.get(6)));
    Ok(ItemRecord {
        id: r.get(0),
        key: r.get(1),
        payload: json(r, 2)?,
        status,
        attempts: r.get::<_, i32>(4) as u32,
        owner: r.get(5),
        ready_at,
        last_error: r.get(7),
        stats: json(r, 8)?,
        cursor: json(r, 9)?,
        enqueued_at: Timestamp(r.get(10)),
        started_at: ts(r.get(11)),
        finished_at: ts(r.get(12)),
        command_id: r.get(13),
        last_output: r.get(14),
    })
}
