//! Reading SQLite rows into the model's records.

use rusqlite::Row;
use serde_json::Value;

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

/// A JSON value as stored: its text.
pub(super) fn to_json(v: &Value) -> String {
    // Serialising a `Value` cannot fail: its map keys are strings.
    serde_json::to_string(v).unwrap_or_default()
}

pub(super) fn opt_json(v: Option<&Value>) -> Option<String> {
    v.map(to_json)
}

pub(super) fn json_col(row: &Row<'_>, idx: usize) -> rusqlite::Result<Option<Value>> {
    let text: Option<String> = row.get(idx)?;
    text.map(|t| {
        serde_json::from_str(&t).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(idx, rusqlite::types::Type::Text, Box::new(e))
        })
    })
    .transpose()
}

pub(super) fn status_col<T>(
    row: &Row<'_>,
    idx: usize,
    parse: fn(&str) -> Option<T>,
) -> rusqlite::Result<T> {
    let s: String = row.get(idx)?;
    parse(&s).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            idx,
            rusqlite::types::Type::Text,
            format!("unknown status {s:?}").into(),
        )
    })
}

pub(super) fn ts(v: Option<i64>) -> Option<Timestamp> {
    v.map(Timestamp)
}

pub(super) fn job_from_row(row: &Row<'_>) -> rusqlite::Result<JobRecord> {
    let cursor = json_col(row, 2)?;
    let checkpoint = match cursor {
        Some(cursor) => Some(Checkpoint {
            cursor,
            items_processed: row.get::<_, i64>(3)? as u64,
            stage: row.get(4)?,
            state: json_col(row, 5)?,
        }),
        None => None,
    };
    Ok(JobRecord {
        name: row.get(0)?,
        status: status_col(row, 1, JobStatus::parse)?,
        checkpoint,
        checkpoint_at: ts(row.get(6)?),
        owner: row.get(7)?,
        lease_expires: ts(row.get(8)?),
        epoch: row.get::<_, i64>(9)? as u64,
        attempts: row.get::<_, i64>(10)? as u32,
        saves: row.get::<_, i64>(11)? as u64,
        history_len: row.get::<_, i64>(12)? as u64,
        state_bytes: row.get::<_, i64>(13)? as u64,
        created_at: Timestamp(row.get(14)?),
        updated_at: Timestamp(row.get(15)?),
        completed_at: ts(row.get(16)?),
        error: row.get(17)?,
    })
}

pub(super) fn item_from_row(row: &Row<'_>) -> rusqlite::Result<ItemRecord> {
    let status = status_col(row, 3, ItemStatus::parse)?;
    let ready_at = shown_ready_at(status, ts(row.get(6)?));
    Ok(ItemRecord {
        id: row.get(0)?,
        key: row.get(1)?,
        payload: json_col(row, 2)?,
        status,
        attempts: row.get::<_, i64>(4)? as u32,
        owner: row.get(5)?,
        ready_at,
        last_error: row.get(7)?,
        stats: json_col(row, 8)?,
        cursor: json_col(row, 9)?,
        enqueued_at: Timestamp(row.get(10)?),
        started_at: ts(row.get(11)?),
        finished_at: ts(row.get(12)?),
        command_id: row.get(13)?,
        last_output: row.get(14)?,
    })
}
