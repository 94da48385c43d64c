//! [`JobStore`] in SQLite's dialect: a job's row, its checkpoint and its
//! history.

use rusqlite::{params, Connection, OptionalExtension, Row, Transaction};

use super::rows::{
    history_from_row, job_from_row, opt_json, to_json, HISTORY_COLUMNS, JOB_COLUMNS,
};
use super::{sql_err, SqliteStore};
use crate::error::{Error, Result};
use crate::model::{Checkpoint, Expect, HistoryEntry, JobLease, JobRecord, JobStatus};
use crate::policy::retention;
use crate::store::rules::{busy, check_expected, fenced_job, held_by_live_owner};
use crate::store::JobStore;
use crate::time::Timestamp;

/// Makes job `id` running again (items of it were moved back to pending).
pub(super) fn reopen_job(conn: &Connection, id: i64, now: Timestamp) -> Result<()> {
    conn.prepare_cached(
        "UPDATE jobs SET status = 'running', completed_at = NULL, updated_at = ?2 WHERE id = ?1",
    )
    .and_then(|mut s| s.execute(params![id, now.0]))
    .map_err(sql_err)?;
    Ok(())
}

pub(super) fn job_id(conn: &Connection, job: &str) -> Result<Option<i64>> {
    conn.prepare_cached("SELECT id FROM jobs WHERE name = ?1")
        .and_then(|mut s| s.query_row([job], |r| r.get(0)).optional())
        .map_err(sql_err)
}

pub(super) fn get_job(conn: &Connection, job: &str) -> Result<Option<JobRecord>> {
    conn.prepare_cached(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE name = ?1"))
        .and_then(|mut s| s.query_row([job], job_from_row).optional())
        .map_err(sql_err)
}

pub(super) fn ensure_job(conn: &Connection, job: &str, now: Timestamp) -> Result<i64> {
    conn.prepare_cached(
        "INSERT INTO jobs (name, status, created_at, updated_at) VALUES (?1, 'running', ?2, ?2)
         ON CONFLICT (name) DO NOTHING",
    )
    .and_then(|mut s| s.execute(params![job, now.0]))
    .map_err(sql_err)?;
    job_id(conn, job)?.ok_or_else(|| Error::Storage(format!("job '{job}' vanished")))
}

/// Checks the lease inside a transaction; `Fenced` unless current.
fn check_lease(tx: &Transaction<'_>, lease: &JobLease) -> Result<i64> {
    let row: Option<(i64, Option<String>, i64)> = tx
        .prepare_cached("SELECT id, owner, epoch FROM jobs WHERE name = ?1")
        .and_then(|mut s| {
            s.query_row([&lease.job], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .optional()
        })
        .map_err(sql_err)?;
    match row {
        Some((id, owner, epoch))
            if owner.as_deref() == Some(lease.owner.as_str()) && epoch as u64 == lease.epoch =>
        {
            Ok(id)
        }
        Some((_, owner, epoch)) => Err(fenced_job(lease, Some((epoch as u64, owner.as_deref())))),
        None => Err(fenced_job(lease, None)),
    }
}

/// Whose write a checkpoint is.
pub(super) enum Writer<'a> {
    /// A lease holder: the write is fenced on owner and epoch, and renews
    /// the lease until the given time.
    Holder(&'a JobLease, Timestamp),
    /// An operator, on the job with this id (ownership checked by the caller).
    Operator(i64),
}

/// Writes the checkpoint, appends it to the history and trims the history:
/// three statements, the first of which is also the fencing check.
pub(super) fn write_checkpoint(
    tx: &Transaction<'_>,
    writer: Writer<'_>,
    cp: &Checkpoint,
    history_keep: usize,
    now: Timestamp,
) -> Result<()> {
    const SET: &str = "UPDATE jobs SET cursor = ?2, items_processed = ?3, stage = ?4, state = ?5,
         state_bytes = ?6, checkpoint_at = max(?7, coalesce(checkpoint_at, ?7)),
         updated_at = ?7, saves = saves + 1,
         status = CASE status WHEN 'completed' THEN 'running' ELSE status END,
         completed_at = CASE status WHEN 'completed' THEN NULL ELSE completed_at END";
    let state = opt_json(cp.state.as_ref());
    let cursor = to_json(&cp.cursor);
    let state_len = state.as_ref().map_or(0, |s| s.len() as i64);
    let items = cp.items_processed as i64;
    let row = |r: &Row<'_>| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, i64>(2)?,
        ))
    };
    let updated: Option<(i64, i64, i64)> = match &writer {
        Writer::Holder(lease, lease_until) => tx
            .prepare_cached(&format!(
                "{SET}, lease_expires = ?8 WHERE name = ?1 AND owner = ?9 AND epoch = ?10
                 RETURNING id, saves, checkpoint_at"
            ))
            .and_then(|mut s| {
                s.query_row(
                    params![
                        lease.job,
                        cursor,
                        items,
                        cp.stage,
                        state,
                        state_len,
                        now.0,
                        lease_until.0,
                        lease.owner,
                        lease.epoch as i64
                    ],
                    row,
                )
                .optional()
            }),
        Writer::Operator(id) => tx
            .prepare_cached(&format!(
                "{SET} WHERE id = ?1 RETURNING id, saves, checkpoint_at"
            ))
            .and_then(|mut s| {
                s.query_row(
                    params![id, cursor, items, cp.stage, state, state_len, now.0],
                    row,
                )
                .optional()
            }),
    }
    .map_err(sql_err)?;
    // `at` is the stored `checkpoint_at`, which never steps back: history
    // follows commit order even when this writer read its `now` before an
    // earlier commit's.
    let Some((job_id, saves, at)) = updated else {
        return Err(match writer {
            Writer::Holder(lease, _) => match check_lease(tx, lease) {
                Err(e) => e,
                Ok(_) => Error::Fenced(format!("job '{}' changed hands", lease.job)),
            },
            Writer::Operator(id) => Error::NotFound(format!("job id {id}")),
        });
    };
    tx.prepare_cached(
        "INSERT INTO history (job_id, seq, cursor, items_processed, at) VALUES (?1, ?2, ?3, ?4, ?5)",
    )
    .and_then(|mut s| s.execute(params![job_id, saves, cursor, items, at]))
    .map_err(sql_err)?;
    let keep = i64::try_from(history_keep).unwrap_or(i64::MAX);
    if saves > keep {
        tx.prepare_cached("DELETE FROM history WHERE job_id = ?1 AND seq <= ?2")
            .and_then(|mut s| s.execute(params![job_id, saves - keep]))
            .map_err(sql_err)?;
    }
    Ok(())
}

impl JobStore for SqliteStore {
    fn ensure_job(&self, job: &str, now: Timestamp) -> Result<()> {
        self.write(|tx| ensure_job(tx, job, now).map(drop))
    }

    fn acquire_job(
        &self,
        job: &str,
        owner: &str,
        lease_until: Timestamp,
        steal_from: Option<&str>,
        now: Timestamp,
    ) -> Result<(JobLease, JobRecord)> {
        self.write(|tx| {
            let id = ensure_job(tx, job, now)?;
            let current = get_job(tx, job)?.ok_or_else(|| Error::NotFound(job.to_string()))?;
            if held_by_live_owner(&current, Some(owner), steal_from, now) {
                return Err(busy(&current, now));
            }
            tx.prepare_cached(
                "UPDATE jobs SET epoch = epoch + 1, attempts = attempts + 1, owner = ?2,
                     lease_expires = ?3, updated_at = ?4,
                     status = CASE status WHEN 'failed' THEN 'running' ELSE status END
                 WHERE id = ?1",
            )
            .and_then(|mut s| s.execute(params![id, owner, lease_until.0, now.0]))
            .map_err(sql_err)?;
            let record = get_job(tx, job)?.ok_or_else(|| Error::NotFound(job.to_string()))?;
            let lease = JobLease {
                job: job.to_string(),
                owner: owner.to_string(),
                epoch: record.epoch,
            };
            Ok((lease, record))
        })
    }

    fn renew_job(&self, lease: &JobLease, lease_until: Timestamp, now: Timestamp) -> Result<()> {
        self.write(|tx| {
            let id = check_lease(tx, lease)?;
            tx.prepare_cached("UPDATE jobs SET lease_expires = ?2, updated_at = ?3 WHERE id = ?1")
                .and_then(|mut s| s.execute(params![id, lease_until.0, now.0]))
                .map_err(sql_err)
                .map(drop)
        })
    }

    fn save_checkpoint(
        &self,
        lease: &JobLease,
        checkpoint: &Checkpoint,
        history_keep: usize,
        lease_until: Timestamp,
        now: Timestamp,
    ) -> Result<()> {
        self.write(|tx| {
            write_checkpoint(
                tx,
                Writer::Holder(lease, lease_until),
                checkpoint,
                history_keep,
                now,
            )
        })
    }

    fn finish_job(
        &self,
        lease: &JobLease,
        status: JobStatus,
        error: Option<&str>,
        now: Timestamp,
    ) -> Result<()> {
        self.write(|tx| {
            let id = check_lease(tx, lease)?;
            let completed_at = (status == JobStatus::Completed).then_some(now.0);
            tx.prepare_cached(
                "UPDATE jobs SET status = ?2, error = ?3, completed_at = ?4, owner = NULL,
                     lease_expires = NULL, epoch = epoch + 1, updated_at = ?5 WHERE id = ?1",
            )
            .and_then(|mut s| s.execute(params![id, status.as_str(), error, completed_at, now.0]))
            .map_err(sql_err)
            .map(drop)
        })
    }

    fn release_job(&self, lease: &JobLease, now: Timestamp) -> Result<()> {
        self.write(|tx| {
            let id = check_lease(tx, lease)?;
            tx.prepare_cached(
                "UPDATE jobs SET owner = NULL, lease_expires = NULL, epoch = epoch + 1,
                     updated_at = ?2 WHERE id = ?1",
            )
            .and_then(|mut s| s.execute(params![id, now.0]))
            .map_err(sql_err)
            .map(drop)
        })
    }

    fn put_checkpoint(
        &self,
        job: &str,
        checkpoint: Option<&Checkpoint>,
        expect: &Expect,
        history_keep: usize,
        steal_from: Option<&str>,
        now: Timestamp,
    ) -> Result<()> {
        self.write(|tx| {
            let id = match checkpoint {
                Some(_) => ensure_job(tx, job, now)?,
                None => job_id(tx, job)?.ok_or_else(|| Error::NotFound(format!("job '{job}'")))?,
            };
            let current = get_job(tx, job)?.ok_or_else(|| Error::NotFound(job.to_string()))?;
            if held_by_live_owner(&current, None, steal_from, now) {
                return Err(busy(&current, now));
            }
            // The transaction is IMMEDIATE (it holds the write lock), so
            // the compare and the write are one step; on a mismatch the
            // rollback also undoes the job's creation.
            check_expected(job, Some(&current), expect)?;
            match checkpoint {
                Some(cp) => write_checkpoint(tx, Writer::Operator(id), cp, history_keep, now)?,
                None => {
                    tx.prepare_cached("DELETE FROM history WHERE job_id = ?1")
                        .and_then(|mut s| s.execute([id]))
                        .map_err(sql_err)?;
                    tx.prepare_cached(
                        "UPDATE jobs SET cursor = NULL, items_processed = 0, stage = NULL,
                             state = NULL, state_bytes = 0, checkpoint_at = NULL,
                             status = 'running', completed_at = NULL, error = NULL WHERE id = ?1",
                    )
                    .and_then(|mut s| s.execute([id]))
                    .map_err(sql_err)?;
                }
            }
            tx.prepare_cached(
                "UPDATE jobs SET owner = NULL, lease_expires = NULL, epoch = epoch + 1,
                     updated_at = ?2 WHERE id = ?1",
            )
            .and_then(|mut s| s.execute(params![id, now.0]))
            .map_err(sql_err)
            .map(drop)
        })
    }

    fn get_job(&self, job: &str) -> Result<Option<JobRecord>> {
        get_job(&self.lock(), job)
    }

    fn list_jobs(&self) -> Result<Vec<JobRecord>> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare_cached(&format!("SELECT {JOB_COLUMNS} FROM jobs ORDER BY name"))
            .map_err(sql_err)?;
        let rows = stmt.query_map([], job_from_row).map_err(sql_err)?;
        rows.collect::<rusqlite::Result<_>>().map_err(sql_err)
    }

    fn history(&self, job: &str, limit: usize) -> Result<Vec<HistoryEntry>> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare_cached(&format!(
                "SELECT {HISTORY_COLUMNS} FROM history h
                     JOIN jobs j ON j.id = h.job_id WHERE j.name = ?1 ORDER BY h.seq DESC LIMIT ?2"
            ))
            .map_err(sql_err)?;
        let rows = stmt
            .query_map(params![job, limit as i64], history_from_row)
            .map_err(sql_err)?;
        rows.collect::<rusqlite::Result<_>>().map_err(sql_err)
    }

    fn truncate_history(&self, job: &str, keep: usize) -> Result<u64> {
        self.write(|tx| {
            let id = job_id(tx, job)?.ok_or_else(|| Error::NotFound(format!("job '{job}'")))?;
            tx.prepare_cached(
                "DELETE FROM history WHERE job_id = ?1 AND seq NOT IN
                     (SELECT seq FROM history WHERE job_id = ?1 ORDER BY seq DESC LIMIT ?2)",
            )
            .and_then(|mut s| s.execute(params![id, i64::try_from(keep).unwrap_or(i64::MAX)]))
            .map(|n| n as u64)
            .map_err(sql_err)
        })
    }

    fn delete_job(&self, job: &str, completed_before: Timestamp) -> Result<bool> {
        self.write(|tx| {
            let Some(record) = get_job(tx, job)? else {
                return Ok(false);
            };
            let id = job_id(tx, job)?.ok_or_else(|| Error::NotFound(format!("job '{job}'")))?;
            // Every item completed: none unfinished (the items_ready index)
            // and none dead (items_dead).
            let all_completed: bool = tx
                .prepare_cached(
                    "SELECT NOT EXISTS (SELECT 1 FROM items
                                        WHERE job_id = ?1 AND ready_at IS NOT NULL)
                        AND NOT EXISTS (SELECT 1 FROM items
                                        WHERE job_id = ?1 AND status = 'dead')",
                )
                .and_then(|mut s| s.query_row([id], |r| r.get(0)))
                .map_err(sql_err)?;
            if !retention::deletable(&record, all_completed, completed_before) {
                return Ok(false);
            }
            for sql in [
                "DELETE FROM items WHERE job_id = ?1",
                "DELETE FROM history WHERE job_id = ?1",
                "DELETE FROM commands WHERE job_id = ?1",
                "DELETE FROM jobs WHERE id = ?1",
            ] {
                tx.prepare_cached(sql)
                    .and_then(|mut s| s.execute([id]))
                    .map_err(sql_err)?;
            }
            Ok(true)
        })
    }
}
