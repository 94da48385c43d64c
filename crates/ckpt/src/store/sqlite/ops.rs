//! The [`Store`] operations in SQLite's dialect.

use std::sync::atomic::Ordering;

use rusqlite::{params, Connection, OptionalExtension, Row, Transaction, TransactionBehavior};
use serde_json::Value;

use super::rows::{item_from_row, job_from_row, json_col, status_col, ts};
use super::{sql_err, Durability, SqliteStore};
use crate::error::{Error, Result};
use crate::model::{
    Checkpoint, ClaimedItem, EnqueueReport, HistoryEntry, ItemChange, ItemCounts, ItemLease,
    ItemRecord, ItemStatus, ItemUpdate, JobLease, JobRecord, JobStatus,
};
use crate::store::rules::{busy, fenced_item, fenced_job, held_by_live_owner};
use crate::store::{ItemStream, Store};
use crate::time::Timestamp;

const JOB_COLUMNS: &str = "name, status, cursor, items_processed, stage, state, checkpoint_at, \
     owner, lease_expires, epoch, attempts, saves, \
     (SELECT count(*) FROM history h WHERE h.job_id = jobs.id), state_bytes, \
     created_at, updated_at, completed_at, error";

const ITEM_COLUMNS: &str = "id, key, payload, status, attempts, owner, ready_at, last_error, \
     stats, cursor, enqueued_at, started_at, finished_at";

fn to_json(v: &Value) -> String {
    // Serialising a `Value` cannot fail: its map keys are strings.
    serde_json::to_string(v).unwrap_or_default()
}

fn opt_json(v: Option<&Value>) -> Option<String> {
    v.map(to_json)
}

fn job_id(conn: &Connection, job: &str) -> Result<Option<i64>> {
    conn.prepare_cached("SELECT id FROM jobs WHERE name = ?1")
        .and_then(|mut s| s.query_row([job], |r| r.get(0)).optional())
        .map_err(sql_err)
}

fn get_job(conn: &Connection, job: &str) -> Result<Option<JobRecord>> {
    conn.prepare_cached(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE name = ?1"))
        .and_then(|mut s| s.query_row([job], job_from_row).optional())
        .map_err(sql_err)
}

fn ensure_job(conn: &Connection, job: &str, now: Timestamp) -> Result<i64> {
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
enum Writer<'a> {
    /// A lease holder: the write is fenced on owner and epoch, and renews
    /// the lease until the given time.
    Holder(&'a JobLease, Timestamp),
    /// An operator, on the job with this id (ownership checked by the caller).
    Operator(i64),
}

/// Writes the checkpoint, appends it to the history and trims the history:
/// three statements, the first of which is also the fencing check.
fn write_checkpoint(
    tx: &Transaction<'_>,
    writer: Writer<'_>,
    cp: &Checkpoint,
    history_keep: usize,
    now: Timestamp,
) -> Result<()> {
    const SET: &str = "UPDATE jobs SET cursor = ?2, items_processed = ?3, stage = ?4, state = ?5,
         state_bytes = ?6, checkpoint_at = ?7, updated_at = ?7, saves = saves + 1,
         status = CASE status WHEN 'completed' THEN 'running' ELSE status END,
         completed_at = CASE status WHEN 'completed' THEN NULL ELSE completed_at END";
    let state = opt_json(cp.state.as_ref());
    let cursor = to_json(&cp.cursor);
    let state_len = state.as_ref().map_or(0, |s| s.len() as i64);
    let items = cp.items_processed as i64;
    let row = |r: &Row<'_>| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?));
    let updated: Option<(i64, i64)> = match &writer {
        Writer::Holder(lease, lease_until) => tx
            .prepare_cached(&format!(
                "{SET}, lease_expires = ?8 WHERE name = ?1 AND owner = ?9 AND epoch = ?10
                 RETURNING id, saves"
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
            .prepare_cached(&format!("{SET} WHERE id = ?1 RETURNING id, saves"))
            .and_then(|mut s| {
                s.query_row(
                    params![id, cursor, items, cp.stage, state, state_len, now.0],
                    row,
                )
                .optional()
            }),
    }
    .map_err(sql_err)?;
    let Some((job_id, saves)) = updated else {
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
    .and_then(|mut s| s.execute(params![job_id, saves, cursor, items, now.0]))
    .map_err(sql_err)?;
    let keep = i64::try_from(history_keep).unwrap_or(i64::MAX);
    if saves > keep {
        tx.prepare_cached("DELETE FROM history WHERE job_id = ?1 AND seq <= ?2")
            .and_then(|mut s| s.execute(params![job_id, saves - keep]))
            .map_err(sql_err)?;
    }
    Ok(())
}

impl SqliteStore {
    /// Runs `f` in a `BEGIN IMMEDIATE` transaction and commits it.
    fn write<T>(&self, f: impl FnOnce(&Transaction<'_>) -> Result<T>) -> Result<T> {
        let mut conn = self.lock();
        // A claim that could not switch back to FULL must not leave later
        // durable writes unsynced.
        if self.relaxed.load(Ordering::SeqCst) {
            conn.execute_batch("PRAGMA synchronous=FULL")
                .map_err(sql_err)?;
            self.relaxed.store(false, Ordering::SeqCst);
        }
        Self::transact(&mut conn, f)
    }

    fn transact<T>(
        conn: &mut Connection,
        f: impl FnOnce(&Transaction<'_>) -> Result<T>,
    ) -> Result<T> {
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql_err)?;
        let out = f(&tx)?;
        tx.commit().map_err(sql_err)?;
        Ok(out)
    }

    /// Like [`write`](Self::write), but the commit is not fsynced on its
    /// own (`synchronous=NORMAL` for this transaction only): for writes
    /// whose loss on power failure is harmless, such as claims.
    fn write_unsynced<T>(&self, f: impl FnOnce(&Transaction<'_>) -> Result<T>) -> Result<T> {
        let mut conn = self.lock();
        if self.durability() == Durability::Normal {
            return Self::transact(&mut conn, f);
        }
        self.relaxed.store(true, Ordering::SeqCst);
        conn.execute_batch("PRAGMA synchronous=NORMAL")
            .map_err(sql_err)?;
        let out = Self::transact(&mut conn, f);
        if conn.execute_batch("PRAGMA synchronous=FULL").is_ok() {
            self.relaxed.store(false, Ordering::SeqCst);
        }
        out
    }

    /// Runs `f` and saves the checkpoint in one transaction, fenced like
    /// [`Store::save_checkpoint`]: see `Job::checkpoint_with_sqlite`.
    pub fn save_checkpoint_with<T>(
        &self,
        lease: &JobLease,
        checkpoint: &Checkpoint,
        history_keep: usize,
        lease_until: Timestamp,
        now: Timestamp,
        f: impl FnOnce(&Transaction<'_>) -> Result<T>,
    ) -> Result<T> {
        self.write(|tx| {
            let out = f(tx)?;
            write_checkpoint(
                tx,
                Writer::Holder(lease, lease_until),
                checkpoint,
                history_keep,
                now,
            )?;
            Ok(out)
        })
    }

    /// Runs `f` and applies `update` in one transaction; a fenced update
    /// rolls the whole transaction back: see `Queue::complete_with_sqlite`.
    pub fn update_item_with<T>(
        &self,
        update: &ItemUpdate,
        now: Timestamp,
        f: impl FnOnce(&Transaction<'_>) -> Result<T>,
    ) -> Result<T> {
        self.write(|tx| {
            let out = f(tx)?;
            self.apply_update(tx, update, now)?;
            Ok(out)
        })
    }

    fn apply_update(&self, tx: &Transaction<'_>, u: &ItemUpdate, now: Timestamp) -> Result<()> {
        let l = &u.lease;
        let fence = "WHERE id = ?1 AND status = 'running' AND owner = ?2 AND claims = ?3";
        let changed = match &u.change {
            ItemChange::Heartbeat { lease_until } => tx
                .prepare_cached(&format!("UPDATE items SET ready_at = ?4 {fence}"))
                .and_then(|mut s| s.execute(params![l.id, l.owner, l.token as i64, lease_until.0])),
            ItemChange::Cursor {
                cursor,
                lease_until,
            } => tx
                .prepare_cached(&format!(
                    "UPDATE items SET ready_at = ?4, cursor = ?5 {fence}"
                ))
                .and_then(|mut s| {
                    s.execute(params![
                        l.id,
                        l.owner,
                        l.token as i64,
                        lease_until.0,
                        to_json(cursor)
                    ])
                }),
            ItemChange::Complete { stats } => tx
                .prepare_cached(&format!(
                    "UPDATE items SET status = 'completed', ready_at = NULL, stats = ?4,
                         finished_at = ?5 {fence}"
                ))
                .and_then(|mut s| {
                    s.execute(params![
                        l.id,
                        l.owner,
                        l.token as i64,
                        opt_json(stats.as_ref()),
                        now.0
                    ])
                }),
            ItemChange::Fail { error, retry_at } => tx
                .prepare_cached(&format!(
                    "UPDATE items SET status = CASE WHEN ?4 IS NULL THEN 'dead' ELSE 'failed' END,
                         ready_at = ?4, last_error = ?5,
                         finished_at = CASE WHEN ?4 IS NULL THEN ?6 ELSE finished_at END {fence}"
                ))
                .and_then(|mut s| {
                    s.execute(params![
                        l.id,
                        l.owner,
                        l.token as i64,
                        retry_at.map(|t| t.0),
                        error,
                        now.0
                    ])
                }),
            ItemChange::Release => tx
                .prepare_cached(&format!(
                    "UPDATE items SET status = 'pending', ready_at = 0,
                         attempts = max(attempts - 1, 0) {fence}"
                ))
                .and_then(|mut s| s.execute(params![l.id, l.owner, l.token as i64])),
        }
        .map_err(sql_err)?;
        if changed == 1 {
            return Ok(());
        }
        let current: Option<(String, String, Option<String>)> = tx
            .prepare_cached("SELECT key, status, owner FROM items WHERE id = ?1")
            .and_then(|mut s| {
                s.query_row([l.id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                    .optional()
            })
            .map_err(sql_err)?;
        Err(match current {
            None => Error::Fenced(format!("item {} does not exist", l.id)),
            Some((key, status, owner)) => fenced_item(
                &key,
                ItemStatus::parse(&status).unwrap_or(ItemStatus::Pending),
                owner.as_deref(),
            ),
        })
    }
}

impl Store for SqliteStore {
    fn describe(&self) -> String {
        format!("sqlite://{}", self.path)
    }

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

    fn finish_if_done(&self, job: &str, now: Timestamp) -> Result<Option<JobStatus>> {
        // One conditional UPDATE under the write lock: no enqueue can slip
        // in between the check and the status change.
        self.write(|tx| {
            let id = job_id(tx, job)?.ok_or_else(|| Error::NotFound(format!("job '{job}'")))?;
            let status: Option<String> = tx
                .prepare_cached(
                    "UPDATE jobs SET status = CASE WHEN dead THEN 'failed' ELSE 'completed' END,
                         completed_at = CASE WHEN dead THEN NULL ELSE ?2 END, updated_at = ?2
                     FROM (SELECT EXISTS (SELECT 1 FROM items WHERE job_id = ?1 AND status = 'dead')
                           AS dead)
                     WHERE id = ?1 AND NOT EXISTS (SELECT 1 FROM items
                         WHERE job_id = ?1 AND ready_at IS NOT NULL)
                     RETURNING status",
                )
                .and_then(|mut s| s.query_row(params![id, now.0], |r| r.get(0)).optional())
                .map_err(sql_err)?;
            Ok(status.and_then(|s| JobStatus::parse(&s)))
        })
    }

    fn put_checkpoint(
        &self,
        job: &str,
        checkpoint: Option<&Checkpoint>,
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
            .prepare_cached(
                "SELECT h.seq, h.cursor, h.items_processed, h.at FROM history h
                 JOIN jobs j ON j.id = h.job_id WHERE j.name = ?1 ORDER BY h.seq DESC LIMIT ?2",
            )
            .map_err(sql_err)?;
        let rows = stmt
            .query_map(params![job, limit as i64], |r| {
                Ok(HistoryEntry {
                    seq: r.get::<_, i64>(0)? as u64,
                    cursor: json_col(r, 1)?.unwrap_or(Value::Null),
                    items_processed: r.get::<_, i64>(2)? as u64,
                    at: Timestamp(r.get(3)?),
                })
            })
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
            let id: Option<i64> = tx
                .prepare_cached(
                    "SELECT id FROM jobs WHERE name = ?1 AND status = 'completed'
                         AND completed_at <= ?2
                         AND (owner IS NULL OR lease_expires IS NULL OR lease_expires <= ?2)
                         AND NOT EXISTS (SELECT 1 FROM items
                                         WHERE job_id = jobs.id AND status <> 'completed')",
                )
                .and_then(|mut s| {
                    s.query_row(params![job, completed_before.0], |r| r.get(0))
                        .optional()
                })
                .map_err(sql_err)?;
            let Some(id) = id else {
                return Ok(false);
            };
            for sql in [
                "DELETE FROM items WHERE job_id = ?1",
                "DELETE FROM history WHERE job_id = ?1",
                "DELETE FROM jobs WHERE id = ?1",
            ] {
                tx.prepare_cached(sql)
                    .and_then(|mut s| s.execute([id]))
                    .map_err(sql_err)?;
            }
            Ok(true)
        })
    }

    fn enqueue(&self, job: &str, items: ItemStream<'_>, now: Timestamp) -> Result<EnqueueReport> {
        self.write(|tx| {
            let id = ensure_job(tx, job, now)?;
            let mut insert = tx
                .prepare_cached(
                    "INSERT INTO items (job_id, key, payload, status, ready_at, enqueued_at)
                     VALUES (?1, ?2, ?3, 'pending', 0, ?4) ON CONFLICT (job_id, key) DO NOTHING",
                )
                .map_err(sql_err)?;
            let mut report = EnqueueReport::default();
            for item in items {
                let item = item?;
                let n = insert
                    .execute(params![
                        id,
                        item.key,
                        opt_json(item.payload.as_ref()),
                        now.0
                    ])
                    .map_err(sql_err)?;
                if n == 1 {
                    report.inserted += 1;
                } else {
                    report.existing += 1;
                }
            }
            if report.inserted > 0 {
                tx.prepare_cached(
                    "UPDATE jobs SET status = 'running', completed_at = NULL, updated_at = ?2
                     WHERE id = ?1 AND status = 'completed'",
                )
                .and_then(|mut s| s.execute(params![id, now.0]))
                .map_err(sql_err)?;
            }
            Ok(report)
        })
    }

    fn claim(
        &self,
        job: &str,
        owner: &str,
        max: usize,
        lease_until: Timestamp,
        now: Timestamp,
    ) -> Result<Vec<ClaimedItem>> {
        self.write_unsynced(|tx| {
            let Some(id) = job_id(tx, job)? else {
                return Ok(Vec::new());
            };
            let mut select = tx
                .prepare_cached(
                    "SELECT id, key, payload, cursor, status, owner, attempts, claims, enqueued_at
                     FROM items
                     WHERE job_id = ?1 AND ready_at IS NOT NULL AND ready_at <= ?2
                       AND NOT (status = 'running' AND owner = ?4)
                     ORDER BY ready_at, id LIMIT ?3",
                )
                .map_err(sql_err)?;
            let rows = select
                .query_map(params![id, now.0, max as i64, owner], |r| {
                    let status: String = r.get(4)?;
                    let owner: Option<String> = r.get(5)?;
                    Ok(ClaimedItem {
                        lease: ItemLease {
                            id: r.get(0)?,
                            owner: String::new(),
                            token: r.get::<_, i64>(7)? as u64 + 1,
                        },
                        job: job.to_string(),
                        key: r.get(1)?,
                        attempt: r.get::<_, i64>(6)? as u32 + 1,
                        payload: json_col(r, 2)?,
                        cursor: json_col(r, 3)?,
                        lease_expires: lease_until,
                        taken_over_from: if status == "running" { owner } else { None },
                        enqueued_at: Timestamp(r.get(8)?),
                    })
                })
                .map_err(sql_err)?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(sql_err)?;
            let mut update = tx
                .prepare_cached(
                    "UPDATE items SET status = 'running', owner = ?2, attempts = attempts + 1,
                         claims = claims + 1, ready_at = ?3, started_at = ?4 WHERE id = ?1",
                )
                .map_err(sql_err)?;
            let mut claimed = rows;
            for item in &mut claimed {
                item.lease.owner = owner.to_string();
                update
                    .execute(params![item.lease.id, owner, lease_until.0, now.0])
                    .map_err(sql_err)?;
            }
            Ok(claimed)
        })
    }

    fn update_items(&self, updates: &[ItemUpdate], now: Timestamp) -> Result<Vec<Result<()>>> {
        self.write(|tx| {
            let mut results = Vec::with_capacity(updates.len());
            for u in updates {
                results.push(match self.apply_update(tx, u, now) {
                    Err(Error::Fenced(m)) => Err(Error::Fenced(m)),
                    Err(other) => return Err(other),
                    Ok(()) => Ok(()),
                });
            }
            Ok(results)
        })
    }

    fn item_counts(&self, job: &str) -> Result<ItemCounts> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare_cached(
                "SELECT i.status, count(*) FROM items i JOIN jobs j ON j.id = i.job_id
                 WHERE j.name = ?1 GROUP BY i.status",
            )
            .map_err(sql_err)?;
        let mut counts = ItemCounts::default();
        let rows = stmt
            .query_map([job], |r| {
                Ok((status_col(r, 0, ItemStatus::parse)?, r.get::<_, i64>(1)?))
            })
            .map_err(sql_err)?;
        for row in rows {
            let (status, n) = row.map_err(sql_err)?;
            counts.add(status, n as u64);
        }
        Ok(counts)
    }

    fn next_ready_at(&self, job: &str) -> Result<Option<Timestamp>> {
        let conn = self.lock();
        let Some(id) = job_id(&conn, job)? else {
            return Ok(None);
        };
        conn.prepare_cached(
            "SELECT min(ready_at) FROM items WHERE job_id = ?1 AND ready_at IS NOT NULL",
        )
        .and_then(|mut s| s.query_row([id], |r| r.get::<_, Option<i64>>(0)))
        .map(ts)
        .map_err(sql_err)
    }

    fn list_items(
        &self,
        job: &str,
        status: Option<ItemStatus>,
        limit: usize,
    ) -> Result<Vec<ItemRecord>> {
        let conn = self.lock();
        let Some(id) = job_id(&conn, job)? else {
            return Ok(Vec::new());
        };
        let mut stmt = conn
            .prepare_cached(&format!(
                "SELECT {ITEM_COLUMNS} FROM items WHERE job_id = ?1
                 AND (?2 IS NULL OR status = ?2) ORDER BY id LIMIT ?3"
            ))
            .map_err(sql_err)?;
        let rows = stmt
            .query_map(
                params![id, status.map(ItemStatus::as_str), limit as i64],
                item_from_row,
            )
            .map_err(sql_err)?;
        rows.collect::<rusqlite::Result<_>>().map_err(sql_err)
    }

    fn running_owners(&self, job: &str) -> Result<Vec<String>> {
        let conn = self.lock();
        let Some(id) = job_id(&conn, job)? else {
            return Ok(Vec::new());
        };
        let mut stmt = conn
            .prepare_cached(
                "SELECT DISTINCT owner FROM items WHERE job_id = ?1 AND status = 'running'
                 AND owner IS NOT NULL ORDER BY owner",
            )
            .map_err(sql_err)?;
        let rows = stmt.query_map([id], |r| r.get(0)).map_err(sql_err)?;
        rows.collect::<rusqlite::Result<_>>().map_err(sql_err)
    }

    fn expire_owner(&self, job: &str, owner: &str, now: Timestamp) -> Result<u64> {
        self.write(|tx| {
            let Some(id) = job_id(tx, job)? else {
                return Ok(0);
            };
            tx.prepare_cached(
                "UPDATE items SET ready_at = min(ready_at, ?3)
                 WHERE job_id = ?1 AND status = 'running' AND owner = ?2",
            )
            .and_then(|mut s| s.execute(params![id, owner, now.0]))
            .map(|n| n as u64)
            .map_err(sql_err)
        })
    }

    fn redrive(
        &self,
        job: &str,
        from: ItemStatus,
        keys: Option<&[String]>,
        now: Timestamp,
    ) -> Result<u64> {
        self.write(|tx| {
            let id = job_id(tx, job)?.ok_or_else(|| Error::NotFound(format!("job '{job}'")))?;
            let sql = "UPDATE items SET status = 'pending', attempts = 0, ready_at = 0,
                           finished_at = NULL WHERE job_id = ?1 AND status = ?2";
            let mut moved = 0u64;
            match keys {
                None => {
                    moved += tx
                        .prepare_cached(sql)
                        .and_then(|mut s| s.execute(params![id, from.as_str()]))
                        .map_err(sql_err)? as u64;
                }
                Some(keys) => {
                    let mut stmt = tx
                        .prepare_cached(&format!("{sql} AND key = ?3"))
                        .map_err(sql_err)?;
                    for key in keys {
                        moved += stmt
                            .execute(params![id, from.as_str(), key])
                            .map_err(sql_err)? as u64;
                    }
                }
            }
            if moved > 0 {
                tx.prepare_cached(
                    "UPDATE jobs SET status = 'running', completed_at = NULL, updated_at = ?2
                     WHERE id = ?1",
                )
                .and_then(|mut s| s.execute(params![id, now.0]))
                .map_err(sql_err)?;
            }
            Ok(moved)
        })
    }
}
