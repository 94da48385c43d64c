//! Reading SQLite rows into the model's records.

use rusqlite::Row;
use serde_json::Value;

use crate::model::{
    Checkpoint, CommandRecord, HistoryEntry, ItemRecord, ItemStatus, JobRecord, JobStatus,
};
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

/// The columns [`history_from_row`] reads, in order, from `history h`.
pub(super) const HISTORY_COLUMNS: &str = "h.seq, h.cursor, h.items_processed, h.at";

/// The columns [`command_from_row`] reads, in order.
pub(super) const COMMAND_COLUMNS: &str = "id, command, first_used, last_used";

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

/// A count ckpt never stores negative (a negative one is damage, not a
/// huge count). Not for `items_processed`, which holds any u64 in the bits
/// of an i64.
pub(super) fn count_col<T: TryFrom<i64>>(row: &Row<'_>, idx: usize) -> rusqlite::Result<T> {
    let n: i64 = row.get(idx)?;
    T::try_from(n).map_err(|_| {
        rusqlite::Error::FromSqlConversionFailure(
            idx,
            rusqlite::types::Type::Integer,
            format!("{n} is out of range for a count").into(),
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
            // Stored as the i64 of the same bits: counts past i64::MAX
            // read back negative, and are whole again as u64.
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
        epoch: count_col(row, 9)?,
        attempts: count_col(row, 10)?,
        saves: count_col(row, 11)?,
        history_len: count_col(row, 12)?,
        state_bytes: count_col(row, 13)?,
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
        attempts: count_col(row, 4)?,
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

pub(super) fn history_from_row(row: &Row<'_>) -> rusqlite::Result<HistoryEntry> {
    Ok(HistoryEntry {
        seq: count_col(row, 0)?,
        cursor: json_col(row, 1)?.unwrap_or(Value::Null),
        items_processed: row.get::<_, i64>(2)? as u64,
        at: Timestamp(row.get(3)?),
    })
}

/// A command of a job; its `completed` count is filled in by the caller.
pub(super) fn command_from_row(row: &Row<'_>) -> rusqlite::Result<CommandRecord> {
    Ok(CommandRecord {
        id: row.get(0)?,
        command: row.get(1)?,
        first_used: Timestamp(row.get(2)?),
        last_used: Timestamp(row.get(3)?),
        completed: 0,
    })
}
