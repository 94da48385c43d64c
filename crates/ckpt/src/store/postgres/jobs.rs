//! [`JobStore`] in PostgreSQL's dialect: a job's row, its lease (with the
//! holder's liveness lock) and its checkpoint.

use deadpool_postgres::GenericClient;

use super::checkpoint::{check_lease, save_fenced, write_checkpoint};
use super::conn::{in_tx, pg_err, with_client, Cached};
use super::liveness::SESSION_GRACE;
use super::rows::{job_from_row, json, JOB_COLUMNS};
use super::PgStore;
use crate::error::{Error, Result};
use crate::model::{Checkpoint, Expect, HistoryEntry, JobLease, JobRecord, JobStatus};
use crate::policy::retention;
use crate::store::rules::{busy, check_expected, held_by_live_owner};
use crate::store::JobStore;
use crate::time::Timestamp;

/// Selects the keys of the liveness locks held right now in this database:
/// a session-level `pg_advisory_lock(bigint)` shows in `pg_locks` with the
/// key's high half in `classid`, its low half in `objid` and `objsubid` 1.
pub(super) const LIVE_LOCK: &str = "SELECT 1 FROM pg_locks l
     WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
       AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
       AND ((l.classid::BIGINT << 32) | l.objid::BIGINT)";

/// Whether the session that holds `job_id`'s lease still holds its
/// liveness lock (true when the holder carries no key: an operator write
/// or an older ckpt).
pub(super) async fn holder_session_alive(c: &impl GenericClient, job_id: i64) -> Result<bool> {
    Ok(c.cquery_one(
        &format!(
            "SELECT owner_key IS NULL OR EXISTS ({LIVE_LOCK} = jobs.owner_key)
             FROM jobs WHERE id = $1"
        ),
        &[&job_id],
    )
    .await
    .map_err(pg_err)?
    .get(0))
}

pub(super) async fn job_id(c: &impl GenericClient, job: &str) -> Result<Option<i64>> {
    Ok(c.cquery_opt("SELECT id FROM jobs WHERE name = $1", &[&job])
        .await
        .map_err(pg_err)?
        .map(|r| r.get(0)))
}

/// Locks the row of `job` (`FOR UPDATE`) for the rest of the transaction
/// and returns its id, in one statement; `NotFound` when there is no such
/// job. Writers that add, revive or finish a job's items take this lock,
/// so none slips in between another's check and its change.
pub(super) async fn lock_job(c: &impl GenericClient, job: &str) -> Result<i64> {
    Ok(
        c.cquery_opt("SELECT id FROM jobs WHERE name = $1 FOR UPDATE", &[&job])
            .await
            .map_err(pg_err)?
            .ok_or_else(|| Error::NotFound(format!("job '{job}'")))?
            .get(0),
    )
}

pub(super) async fn get_job(
    c: &impl GenericClient,
    job: &str,
    lock: bool,
) -> Result<Option<JobRecord>> {
    let suffix = if lock { " FOR UPDATE" } else { "" };
    c.cquery_opt(
        &format!("SELECT {JOB_COLUMNS} FROM jobs WHERE name = $1{suffix}"),
        &[&job],
    )
    .await
    .map_err(pg_err)?
    .map(|r| job_from_row(&r))
    .transpose()
}

/// Creates the job if it is missing.
const INSERT_JOB: &str = "INSERT INTO jobs (name, status, created_at, updated_at)
     VALUES ($1, 'running', $2, $2) ON CONFLICT (name) DO NOTHING";

/// The id of `job`, created if missing, its row locked (`FOR UPDATE`) for
/// the rest of the transaction: a prune (which locks the row first) cannot
/// delete it under the caller, and the writers of a job's items, commands
/// and checkpoint are ordered by that lock.
pub(super) async fn ensure_job(c: &impl GenericClient, job: &str, now: Timestamp) -> Result<i64> {
    // A prune may delete the row between the insert and the lock. It has
    // committed once the lock is granted, so the next insert creates the
    // job afresh, and a new job (running) is not one a prune deletes.
    for _ in 0..3 {
        c.cexecute(INSERT_JOB, &[&job, &now.0])
            .await
            .map_err(pg_err)?;
        if let Some(row) = c
            .cquery_opt("SELECT id FROM jobs WHERE name = $1 FOR UPDATE", &[&job])
            .await
            .map_err(pg_err)?
        {
            return Ok(row.get(0));
        }
    }
    Err(Error::Storage(format!(
        "job '{job}' was deleted each time it was created"
    )))
}

impl JobStore for PgStore {
    fn ensure_job(&self, job: &str, now: Timestamp) -> Result<()> {
        // No row lock (the writers' `ensure_job` takes one): this does not
        // wait for an enqueue streaming its items into the job.
        with_client!(self, |c| {
            c.cexecute(INSERT_JOB, &[&job, &now.0])
                .await
                .map(drop)
                .map_err(pg_err)
        })
    }

    fn acquire_job(
        &self,
        job: &str,
        owner: &str,
        lease_until: Timestamp,
        steal_from: Option<&str>,
        now: Timestamp,
    ) -> Result<(JobLease, JobRecord)> {
        let called = std::time::Instant::now();
        let key = self.liveness_key()?;
        in_tx!(self, |tx| {
            let id = ensure_job(tx, job, now).await?;
            let current = get_job(tx, job, true)
                .await?
                .ok_or_else(|| Error::NotFound(job.to_string()))?;
            if held_by_live_owner(&current, Some(owner), steal_from, now) {
                if !holder_session_alive(tx, id).await? {
                    // The holder's session ended, but its process may live
                    // on: shorten its lease to the session grace, within
                    // which a live holder renews under a new session (and
                    // is then left alone) or stops.
                    let grace = SESSION_GRACE.as_millis() as i64;
                    // Counted from now, not from `now` read before the
                    // wait for a connection (see expire_lost_owners).
                    let now = now.plus(called.elapsed());
                    tx.cexecute(
                        "UPDATE jobs SET lease_expires = $2::BIGINT + $3::BIGINT
                         WHERE id = $1 AND lease_expires > $2::BIGINT + $3::BIGINT",
                        &[&id, &now.0, &grace],
                    )
                    .await
                    .map_err(pg_err)?;
                    let current = get_job(tx, job, false)
                        .await?
                        .ok_or_else(|| Error::NotFound(job.to_string()))?;
                    return Ok::<_, Error>(Err(busy(&current, now)));
                }
                return Ok(Err(busy(&current, now)));
            }
            tx.cexecute(
                "UPDATE jobs SET epoch = epoch + 1, attempts = attempts + 1, owner = $2,
                         lease_expires = $3, updated_at = $4, owner_key = $5,
                         status = CASE status WHEN 'failed' THEN 'running' ELSE status END
                     WHERE id = $1",
                &[&id, &owner, &lease_until.0, &now.0, &key],
            )
            .await
            .map_err(pg_err)?;
            let record = get_job(tx, job, false)
                .await?
                .ok_or_else(|| Error::NotFound(job.to_string()))?;
            let lease = JobLease {
                job: job.to_string(),
                owner: owner.to_string(),
                epoch: record.epoch,
            };
            Ok(Ok((lease, record)))
        })?
    }

    fn renew_job(&self, lease: &JobLease, lease_until: Timestamp, now: Timestamp) -> Result<()> {
        // A renewal moves the lease to the current liveness session.
        let key = self.liveness_key()?;
        in_tx!(self, |tx| {
            let id = check_lease(tx, lease).await?;
            tx.cexecute(
                "UPDATE jobs SET lease_expires = $2, updated_at = $3, owner_key = $4 WHERE id = $1",
                &[&id, &lease_until.0, &now.0, &key],
            )
            .await
            .map_err(pg_err)
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
        if self.group_commit {
            return self.save_grouped(lease, checkpoint, history_keep, lease_until, now);
        }
        with_client!(self, |c| {
            save_fenced(c, lease, checkpoint, history_keep, lease_until, now).await
        })
    }

    fn finish_job(
        &self,
        lease: &JobLease,
        status: JobStatus,
        error: Option<&str>,
        now: Timestamp,
    ) -> Result<()> {
        in_tx!(self, |tx| {
            let id = check_lease(tx, lease).await?;
            let completed_at = (status == JobStatus::Completed).then_some(now.0);
            tx.cexecute(
                "UPDATE jobs SET status = $2, error = $3, completed_at = $4, owner = NULL,
                         lease_expires = NULL, epoch = epoch + 1, updated_at = $5 WHERE id = $1",
                &[&id, &status.as_str(), &error, &completed_at, &now.0],
            )
            .await
            .map_err(pg_err)
            .map(drop)
        })
    }

    fn release_job(&self, lease: &JobLease, now: Timestamp) -> Result<()> {
        in_tx!(self, |tx| {
            let id = check_lease(tx, lease).await?;
            tx.cexecute(
                "UPDATE jobs SET owner = NULL, lease_expires = NULL, epoch = epoch + 1,
                         updated_at = $2 WHERE id = $1",
                &[&id, &now.0],
            )
            .await
            .map_err(pg_err)
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
        in_tx!(self, |tx| {
            let id = match checkpoint {
                Some(_) => ensure_job(tx, job, now).await?,
                None => job_id(tx, job)
                    .await?
                    .ok_or_else(|| Error::NotFound(format!("job '{job}'")))?,
            };
            let current = get_job(tx, job, true)
                .await?
                .ok_or_else(|| Error::NotFound(job.to_string()))?;
            if held_by_live_owner(&current, None, steal_from, now) {
                return Err(busy(&current, now));
            }
            // The row is locked (FOR UPDATE), so the compare and the write
            // are one step; on a mismatch the rollback also undoes the
            // job's creation.
            check_expected(job, Some(&current), expect)?;
            match checkpoint {
                Some(cp) => write_checkpoint(tx, id, cp, history_keep, now).await?,
                None => {
                    tx.cexecute("DELETE FROM history WHERE job_id = $1", &[&id])
                        .await
                        .map_err(pg_err)?;
                    tx.cexecute(
"UPDATE jobs SET cursor = NULL, items_processed = 0, stage = NULL,
                                 state = NULL, state_bytes = 0, checkpoint_at = NULL,
                                 status = 'running', completed_at = NULL, error = NULL WHERE id = $1",
                            &[&id],
                        )
                        .await
                        .map_err(pg_err)?;
                }
            }
            tx.cexecute(
                "UPDATE jobs SET owner = NULL, lease_expires = NULL, epoch = epoch + 1,
                         updated_at = $2 WHERE id = $1",
                &[&id, &now.0],
            )
            .await
            .map_err(pg_err)
            .map(drop)
        })
    }

    fn get_job(&self, job: &str) -> Result<Option<JobRecord>> {
        with_client!(self, |c| { get_job(c, job, false).await })
    }

    fn list_jobs(&self) -> Result<Vec<JobRecord>> {
        with_client!(self, |c| {
            c.cquery(
                &format!("SELECT {JOB_COLUMNS} FROM jobs ORDER BY name"),
                &[],
            )
            .await
            .map_err(pg_err)?
            .iter()
            .map(job_from_row)
            .collect()
        })
    }

    fn history(&self, job: &str, limit: usize) -> Result<Vec<HistoryEntry>> {
        with_client!(self, |c| {
            let rows = c
                .cquery(
                    "SELECT h.seq, h.cursor, h.items_processed, h.at FROM history h
                     JOIN jobs j ON j.id = h.job_id WHERE j.name = $1 ORDER BY h.seq DESC LIMIT $2",
                    &[&job, &(limit.min(i64::MAX as usize) as i64)],
                )
                .await
                .map_err(pg_err)?;
            rows.iter()
                .map(|r| {
                    Ok(HistoryEntry {
                        seq: r.get::<_, i64>(0) as u64,
                        cursor: json(r, 1)?.unwrap_or(serde_json::Value::Null),
                        items_processed: r.get::<_, i64>(2) as u64,
                        at: Timestamp(r.get(3)),
                    })
                })
                .collect()
        })
    }

    fn truncate_history(&self, job: &str, keep: usize) -> Result<u64> {
        let _maintenance = super::conn::Unbounded::new();
        in_tx!(self, |tx| {
            let id = job_id(tx, job)
                .await?
                .ok_or_else(|| Error::NotFound(format!("job '{job}'")))?;
            tx.cexecute(
                "DELETE FROM history WHERE job_id = $1 AND seq NOT IN
                     (SELECT seq FROM history WHERE job_id = $1 ORDER BY seq DESC LIMIT $2)",
                &[&id, &i64::try_from(keep).unwrap_or(i64::MAX)],
            )
            .await
            .map_err(pg_err)
        })
    }

    fn delete_job(&self, job: &str, completed_before: Timestamp) -> Result<bool> {
        let _maintenance = super::conn::Unbounded::new();
        in_tx!(self, |tx| {
            // Lock first, check after: the row lock orders this against
            // enqueue and finish_if_done, and the check, a statement of its
            // own, sees whatever they committed while this waited.
            let locked = tx
                .cquery_opt("SELECT id FROM jobs WHERE name = $1 FOR UPDATE", &[&job])
                .await
                .map_err(pg_err)?;
            let Some(id) = locked.map(|r| r.get::<_, i64>(0)) else {
                return Ok(false);
            };
            let record = get_job(tx, job, false)
                .await?
                .ok_or_else(|| Error::Storage(format!("job '{job}' vanished")))?;
            // Every item completed: none unfinished (the items_ready index)
            // and none dead (items_dead).
            let all_completed: bool = tx
                .cquery_one(
                    "SELECT NOT EXISTS (SELECT 1 FROM items
                                        WHERE job_id = $1 AND ready_at IS NOT NULL)
                        AND NOT EXISTS (SELECT 1 FROM items
                                        WHERE job_id = $1 AND status = 'dead')",
                    &[&id],
                )
                .await
                .map_err(pg_err)?
                .get(0);
            let deletable = retention::deletable(&record, all_completed, completed_before);
            if !deletable {
                return Ok(false);
            }
            for sql in [
                "DELETE FROM items WHERE job_id = $1",
                "DELETE FROM history WHERE job_id = $1",
                "DELETE FROM commands WHERE job_id = $1",
                "DELETE FROM jobs WHERE id = $1",
            ] {
                tx.cexecute(sql, &[&id]).await.map_err(pg_err)?;
            }
            Ok(true)
        })
    }
}
