//! Ownership rules and their errors, shared by every store so that the
//! backends differ only in how they read and write.

use crate::error::Error;
use crate::model::{Expect, ItemStatus, JobLease, JobRecord};
use crate::time::Timestamp;

/// True if and only if a live owner other than `owner` and `steal_from`
/// holds the job: its lease has not expired at `now`.
pub(crate) fn held_by_live_owner(
    r: &JobRecord,
    owner: Option<&str>,
    steal_from: Option<&str>,
    now: Timestamp,
) -> bool {
    match (&r.owner, r.lease_expires) {
        (Some(o), Some(exp)) => {
            exp > now && Some(o.as_str()) != owner && Some(o.as_str()) != steal_from
        }
        _ => false,
    }
}

/// The error for a job held by a live owner.
pub(crate) fn busy(r: &JobRecord, now: Timestamp) -> Error {
    let left = r.lease_expires.map_or(0.0, |t| t.since(now).as_secs_f64());
    Error::Busy(format!(
        "job '{}' is held by {} (lease expires in {left:.1}s)",
        r.name,
        r.owner.as_deref().unwrap_or("?"),
    ))
}

/// The error for a job write whose lease is no longer current; `current`
/// is the job's `(epoch, owner)` now, `None` if the job is gone.
pub(crate) fn fenced_job(lease: &JobLease, current: Option<(u64, Option<&str>)>) -> Error {
    match current {
        None => Error::Fenced(format!("job '{}' no longer exists", lease.job)),
        Some((epoch, owner)) => Error::Fenced(format!(
            "job '{}' moved to epoch {epoch} (owner {}); this worker held epoch {}",
            lease.job,
            owner.unwrap_or("none"),
            lease.epoch
        )),
    }
}

/// The error for an item update whose lease is no longer current.
pub(crate) fn fenced_item(key: &str, status: ItemStatus, owner: Option<&str>) -> Error {
    Error::Fenced(format!(
        "item '{key}' is {status} (owner {}): this worker's lease on it was lost",
        owner.unwrap_or("none")
    ))
}

/// `Ok` if the job's stored cursor (`record` is `None` when there is no
/// job) meets `expect`, else [`Error::CursorMismatch`] naming both.
pub(crate) fn check_expected(
    job: &str,
    record: Option<&JobRecord>,
    expect: &Expect,
) -> Result<(), Error> {
    let stored = record
        .and_then(|r| r.checkpoint.as_ref())
        .map(|c| &c.cursor);
    if expect.is_met_by(stored) {
        Ok(())
    } else {
        Err(cursor_mismatch(
            job,
            stored.map(crate::model::canonical_json),
            expect,
        ))
    }
}

/// The error for a compare-and-set that found `stored` (canonical JSON).
pub(crate) fn cursor_mismatch(job: &str, stored: Option<String>, expect: &Expect) -> Error {
    Error::CursorMismatch {
        job: job.to_string(),
        stored,
        expected: expect.cursor_text(),
    }
}
