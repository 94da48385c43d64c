//! Script replies and stored records, decoded into the model's types.

use std::collections::HashMap;

use redis::Value;
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::model::{Checkpoint, ItemId, ItemRecord, ItemStatus, JobRecord, JobStatus};
use crate::time::Timestamp;

fn malformed(what: impl std::fmt::Display) -> Error {
    Error::Storage(format!("malformed data in the Redis store: {what}"))
}

/// A reply element as text (`None` for nil).
pub(super) fn text(v: &Value) -> Result<Option<String>> {
    match v {
        Value::Nil => Ok(None),
        Value::BulkString(b) => String::from_utf8(b.clone())
            .map(Some)
            .map_err(|_| malformed("text that is not UTF-8")),
        Value::SimpleString(s) => Ok(Some(s.clone())),
        Value::Okay => Ok(Some("OK".to_string())),
        Value::Int(i) => Ok(Some(i.to_string())),
        other => Err(malformed(format!("unexpected reply {other:?}"))),
    }
}

/// A reply element that must be text.
pub(super) fn string(v: &Value) -> Result<String> {
    text(v)?.ok_or_else(|| malformed("a nil where text was expected"))
}

/// A reply element that must be an integer (or its text).
pub(super) fn int(v: &Value) -> Result<i64> {
    match v {
        Value::Int(i) => Ok(*i),
        other => parse_int(&string(other)?),
    }
}

fn parse_int(s: &str) -> Result<i64> {
    s.parse::<i64>()
        .or_else(|_| {
            // A sorted-set score in exponent form.
            s.parse::<f64>()
                .ok()
                .filter(|f| f.is_finite() && f.fract() == 0.0)
                .map(|f| f as i64)
                .ok_or(())
        })
        .map_err(|()| malformed(format!("{s:?} is not an integer")))
}

/// The elements of an array reply.
pub(super) fn array(v: &Value) -> Result<&[Value]> {
    match v {
        Value::Array(items) => Ok(items),
        other => Err(malformed(format!("expected an array, got {other:?}"))),
    }
}

/// An array reply as texts.
pub(super) fn texts(v: &Value) -> Result<Vec<Option<String>>> {
    array(v)?.iter().map(text).collect()
}

/// A script's reply: its tag (`ok`, `busy`, `fenced`, `notfound`, ...) and
/// the elements after it.
pub(super) fn tagged(v: &Value) -> Result<(String, &[Value])> {
    let items = array(v)?;
    let (tag, rest) = items
        .split_first()
        .ok_or_else(|| malformed("an empty script reply"))?;
    Ok((string(tag)?, rest))
}

/// An item's id: its job's number and its number in the job.
pub(super) fn item_id(job_num: i64, seq: i64) -> Result<ItemId> {
    if !(1..=i64::from(i32::MAX)).contains(&job_num) || !(1..=i64::from(u32::MAX)).contains(&seq) {
        return Err(malformed(format!(
            "item {seq} of job {job_num} is out of the id range"
        )));
    }
    Ok(job_num << 32 | seq)
}

/// The job's number and the item's number of an id; `None` for an id this
/// store never handed out.
pub(super) fn split_item_id(id: ItemId) -> Option<(i64, i64)> {
    let (job_num, seq) = (id >> 32, id & 0xffff_ffff);
    (job_num > 0 && seq > 0).then_some((job_num, seq))
}

fn json(what: &str, s: &str) -> Result<serde_json::Value> {
    serde_json::from_str(s).map_err(|e| malformed(format!("{what} is not JSON: {e}")))
}

fn opt_json(what: &str, s: Option<&String>) -> Result<Option<serde_json::Value>> {
    s.map(|s| json(what, s)).transpose()
}

/// A job record from its flat field/value reply.
pub(super) fn job_record(v: &Value) -> Result<JobRecord> {
    let flat = texts(v)?;
    let mut f: HashMap<String, String> = HashMap::with_capacity(flat.len() / 2);
    for pair in flat.chunks(2) {
        if let [Some(k), Some(v)] = pair {
            f.insert(k.clone(), v.clone());
        }
    }
    let num = |k: &str| -> Result<Option<i64>> { f.get(k).map(|s| parse_int(s)).transpose() };
    let req = |k: &str| -> Result<i64> {
        num(k)?.ok_or_else(|| malformed(format!("job record without {k}")))
    };
    let name = f
        .get("name")
        .cloned()
        .ok_or_else(|| malformed("job record without a name"))?;
    let status = f
        .get("status")
        .and_then(|s| JobStatus::parse(s))
        .ok_or_else(|| malformed(format!("job '{name}' has no valid status")))?;
    let checkpoint = match f.get("cursor") {
        Some(cursor) => Some(Checkpoint {
            cursor: json("cursor", cursor)?,
            items_processed: f
                .get("items_processed")
                .map(|s| {
                    // Written as a u64: past i64::MAX too.
                    s.parse::<u64>()
                        .map_err(|_| malformed(format!("items_processed {s:?} is not a count")))
                })
                .transpose()?
                .unwrap_or(0),
            stage: f.get("stage").cloned(),
            state: opt_json("state", f.get("state"))?,
        }),
        None => None,
    };
    Ok(JobRecord {
        status,
        checkpoint,
        checkpoint_at: num("checkpoint_at")?.map(Timestamp),
        owner: f.get("owner").cloned(),
        lease_expires: num("lease_expires")?.map(Timestamp),
        epoch: req("epoch")? as u64,
        attempts: req("attempts")? as u32,
        saves: req("saves")? as u64,
        history_len: num("history_len")?.unwrap_or(0) as u64,
        state_bytes: num("state_bytes")?.unwrap_or(0) as u64,
        created_at: Timestamp(req("created_at")?),
        updated_at: Timestamp(req("updated_at")?),
        completed_at: num("completed_at")?.map(Timestamp),
        error: f.get("error").cloned(),
        name,
    })
}

/// An item as the scripts store it: every value a string (Lua's JSON
/// encoder would round big numbers), JSON values as their text.
#[derive(Debug, Deserialize)]
pub(super) struct StoredItem {
    pub key: String,
    pub payload: Option<String>,
    pub status: String,
    pub attempts: String,
    pub owner: Option<String>,
    pub ready_at: Option<String>,
    pub last_error: Option<String>,
    /// The last failure's output (a field since schema 2; absent before).
    #[serde(default)]
    pub last_output: Option<String>,
    pub stats: Option<String>,
    pub cursor: Option<String>,
    pub enqueued_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    /// The id of the command that completed it (schema 2).
    #[serde(default)]
    pub command: Option<String>,
}

/// An item record from its stored JSON.
pub(super) fn item_record(id: ItemId, raw: &str) -> Result<ItemRecord> {
    let s: StoredItem =
        serde_json::from_str(raw).map_err(|e| malformed(format!("item {id}: {e}")))?;
    let ts = |v: &Option<String>| -> Result<Option<Timestamp>> {
        v.as_deref()
            .map(parse_int)
            .transpose()
            .map(|t| t.map(Timestamp))
    };
    let status = ItemStatus::parse(&s.status)
        .ok_or_else(|| malformed(format!("item {id} has status {:?}", s.status)))?;
    let ready_at = match status {
        ItemStatus::Running | ItemStatus::Failed => ts(&s.ready_at)?,
        _ => None,
    };
    Ok(ItemRecord {
        id,
        payload: opt_json("payload", s.payload.as_ref())?,
        status,
        attempts: parse_int(&s.attempts)? as u32,
        owner: s.owner,
        ready_at,
        last_error: s.last_error,
        last_output: s.last_output,
        stats: opt_json("stats", s.stats.as_ref())?,
        cursor: opt_json("cursor", s.cursor.as_ref())?,
        enqueued_at: Timestamp(parse_int(&s.enqueued_at)?),
        started_at: ts(&s.started_at)?,
        finished_at: ts(&s.finished_at)?,
        command_id: s.command.as_deref().map(parse_int).transpose()?,
        key: s.key,
    })
}

/// A JSON value given to a script as an optional argument.
pub(super) fn opt_arg(v: Option<&str>) -> String {
    match v {
        Some(s) => format!("+{s}"),
        None => String::new(),
    }
}

/// A JSON value of a reply element that may be nil.
pub(super) fn opt_value(what: &str, v: &Value) -> Result<Option<serde_json::Value>> {
    opt_json(what, text(v)?.as_ref())
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn item_ids_round_trip_and_foreign_ids_are_refused() {
        let id = item_id(3, 17).unwrap();
        assert_eq!(split_item_id(id), Some((3, 17)));
        let big = item_id(i64::from(i32::MAX), i64::from(u32::MAX)).unwrap();
        assert!(big > 0);
        assert_eq!(
            split_item_id(big),
            Some((i64::from(i32::MAX), i64::from(u32::MAX)))
        );
        assert!(item_id(0, 1).is_err());
        assert!(item_id(1, 1 << 32).is_err());
        assert_eq!(split_item_id(5), None, "an id of another store");
        assert_eq!(split_item_id(-1), None);
    }

    #[test]
    fn scores_in_exponent_form_parse() {
        assert_eq!(parse_int("1700000000000").unwrap(), 1_700_000_000_000);
        assert_eq!(parse_int("1.7e+12").unwrap(), 1_700_000_000_000);
        assert!(parse_int("1.5").is_err());
        assert!(parse_int("x").is_err());
    }
}
