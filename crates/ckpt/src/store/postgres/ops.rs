//! The [`Store`] operations in PostgreSQL's dialect.

use deadpool_postgres::GenericClient;
use serde_json::Value;
use tokio_postgres::types::ToSql;

use super::sql::{
    apply_update, check_lease, complete_batch, ensure_job, fenced_or_fail, get_job,
    holder_session_alive, item_from_row, job_from_row, job_id, save_fenced, status, ts,
    write_checkpoint, Cached, ENQUEUE_BATCH, ITEM_COLUMNS, JOB_COLUMNS, LIVE_LOCK,
};
use super::{pg_err, PgStore};
use crate::error::{Error, Result};
use crate::model::{
    Checkpoint, ClaimedItem, EnqueueReport, HistoryEntry, ItemChange, ItemCounts, ItemLease,
    ItemRecord, ItemStatus, ItemUpdate, JobLease, JobRecord, JobStatus,
};
use crate::store::rules::{busy, held_by_live_owner};
use crate::store::{ItemStream, Store};
use crate::time::Timestamp;

/// Runs `$body` (an async block body evaluating to a `Result`) inside one
/// transaction on a pooled connection, with `$tx` bound to the transaction;
/// commits on `Ok`, rolls back on `Err`.
macro_rules! in_tx {
    ($store:expr, |$tx:ident| $body:block) => {
        $store.block(async {
            let mut client = $store.client().await?;
            let transaction = client.transaction().await.map_err(pg_err)?;
            let $tx = &transaction;
            match async { $body }.await {
                Ok(out) => {
                    transaction.commit().await.map_err(pg_err)?;
                    Ok(out)
                }
                Err(e) => {
                    // Roll back now: a dropped transaction only queues its
                    // ROLLBACK, and on this current-thread runtime nothing
                    // may drive the connection to send it for a while, so
                    // the row locks would stay held.
                    let _ = transaction.rollback().await;
                    Err(e)
                }
            }
        })
    };
}

impl Store for PgStore {
    fn describe(&self) -> String {
        format!("{} (schema {})", self.url, self.schema)
    }

    fn ensure_job(&self, job: &str, now: Timestamp) -> Result<()> {
        self.block(async {
            let c = self.client().await?;
            ensure_job(&c, job, now).await.map(drop)
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
        let key = self.liveness_key()?;
        in_tx!(self, |tx| {
            let id = ensure_job(tx, job, now).await?;
            let current = get_job(tx, job, true)
                .await?
                .ok_or_else(|| Error::NotFound(job.to_string()))?;
            if held_by_live_owner(&current, Some(owner), steal_from, now)
                && holder_session_alive(tx, id).await?
            {
                return Err(busy(&current, now));
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
            Ok((lease, record))
        })
    }

    fn renew_job(&self, lease: &JobLease, lease_until: Timestamp, now: Timestamp) -> Result<()> {
        in_tx!(self, |tx| {
            let id = check_lease(tx, lease).await?;
            tx.cexecute(
                "UPDATE jobs SET lease_expires = $2, updated_at = $3 WHERE id = $1",
                &[&id, &lease_until.0, &now.0],
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
        self.block(async {
            let c = self.client().await?;
            save_fenced(&c, lease, checkpoint, history_keep, lease_until, now).await
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

    fn finish_if_done(&self, job: &str, now: Timestamp) -> Result<Option<JobStatus>> {
        in_tx!(self, |tx| {
            // Lock the job row: enqueue and redrive take the same lock
            // before adding or reviving items, so none can slip in between
            // the check and the status change.
            let id = job_id(tx, job)
                .await?
                .ok_or_else(|| Error::NotFound(format!("job '{job}'")))?;
            tx.cexecute("SELECT 1 FROM jobs WHERE id = $1 FOR UPDATE", &[&id])
                .await
                .map_err(pg_err)?;
            let row = tx
                .cquery_opt(
                    "UPDATE jobs SET status = CASE WHEN d.dead THEN 'failed' ELSE 'completed' END,
                         completed_at = CASE WHEN d.dead THEN NULL ELSE $2::BIGINT END, updated_at = $2
                     FROM (SELECT EXISTS (SELECT 1 FROM items WHERE job_id = $1 AND status = 'dead')
                           AS dead) d
                     WHERE id = $1 AND NOT EXISTS (SELECT 1 FROM items
                         WHERE job_id = $1 AND ready_at IS NOT NULL)
                     RETURNING status",
                    &[&id, &now.0],
                )
                .await
                .map_err(pg_err)?;
            Ok(row.and_then(|r| JobStatus::parse(r.get(0))))
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
        self.block(async { get_job(&self.client().await?, job, false).await })
    }

    fn list_jobs(&self) -> Result<Vec<JobRecord>> {
        self.block(async {
            let c = self.client().await?;
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
        self.block(async {
            let c = self.client().await?;
            let rows = c
                .cquery(
                    "SELECT h.seq, h.cursor, h.items_processed, h.at FROM history h
                     JOIN jobs j ON j.id = h.job_id WHERE j.name = $1 ORDER BY h.seq DESC LIMIT $2",
                    &[&job, &(limit.min(i64::MAX as usize) as i64)],
                )
                .await
                .map_err(pg_err)?;
            Ok(rows
                .iter()
                .map(|r| HistoryEntry {
                    seq: r.get::<_, i64>(0) as u64,
                    cursor: r.get(1),
                    items_processed: r.get::<_, i64>(2) as u64,
                    at: Timestamp(r.get(3)),
                })
                .collect())
        })
    }

    fn truncate_history(&self, job: &str, keep: usize) -> Result<u64> {
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
            let deletable = tx
                .cquery_opt(
                    "SELECT 1 FROM jobs WHERE id = $1 AND status = 'completed'
                         AND completed_at <= $2
                         AND (owner IS NULL OR lease_expires IS NULL OR lease_expires <= $2)
                         AND NOT EXISTS (SELECT 1 FROM items
                                         WHERE job_id = $1 AND ready_at IS NOT NULL)
                         AND NOT EXISTS (SELECT 1 FROM items
                                         WHERE job_id = $1 AND status = 'dead')",
                    &[&id, &completed_before.0],
                )
                .await
                .map_err(pg_err)?
                .is_some();
            if !deletable {
                return Ok(false);
            }
            for sql in [
                "DELETE FROM items WHERE job_id = $1",
                "DELETE FROM history WHERE job_id = $1",
                "DELETE FROM jobs WHERE id = $1",
            ] {
                tx.cexecute(sql, &[&id]).await.map_err(pg_err)?;
            }
            Ok(true)
        })
    }

    fn enqueue(&self, job: &str, items: ItemStream<'_>, now: Timestamp) -> Result<EnqueueReport> {
        in_tx!(self, |tx| {
            let mut id = ensure_job(tx, job, now).await?;
            // Lock the job row, as `finish_if_done` does: a job is never
            // marked done while items are being added to it. If a prune
            // deleted the row while this waited for the lock, the job is
            // created afresh (the delete has committed: it is seen now).
            while tx
                .cexecute("SELECT 1 FROM jobs WHERE id = $1 FOR UPDATE", &[&id])
                .await
                .map_err(pg_err)?
                == 0
            {
                id = ensure_job(tx, job, now).await?;
            }
            let insert = "WITH ins AS (
                         INSERT INTO items (job_id, key, payload, status, ready_at, enqueued_at)
                         SELECT $1, t.key, t.payload, 'pending', 0, $4
                         FROM unnest($2::TEXT[], $3::JSONB[]) AS t(key, payload)
                         ON CONFLICT (job_id, key) DO NOTHING RETURNING 1)
                     SELECT count(*) FROM ins";
            let mut report = EnqueueReport::default();
            let mut keys = Vec::with_capacity(ENQUEUE_BATCH);
            let mut payloads: Vec<Option<Value>> = Vec::with_capacity(ENQUEUE_BATCH);
            let mut done = false;
            while !done {
                keys.clear();
                payloads.clear();
                while keys.len() < ENQUEUE_BATCH {
                    match items.next() {
                        Some(item) => {
                            let item = item?;
                            keys.push(item.key);
                            payloads.push(item.payload);
                        }
                        None => {
                            done = true;
                            break;
                        }
                    }
                }
                if keys.is_empty() {
                    break;
                }
                let params: [&(dyn ToSql + Sync); 4] = [&id, &keys, &payloads, &now.0];
                let inserted: i64 = tx.cquery_one(insert, &params).await.map_err(pg_err)?.get(0);
                report.inserted += inserted as u64;
                report.existing += keys.len() as u64 - inserted as u64;
            }
            if report.inserted > 0 {
                tx.cexecute(
                    "UPDATE jobs SET items_total = items_total + $2 WHERE id = $1",
                    &[&id, &(report.inserted as i64)],
                )
                .await
                .map_err(pg_err)?;
                tx.cexecute(
                    "UPDATE jobs SET status = 'running', completed_at = NULL, updated_at = $2
                     WHERE id = $1 AND status = 'completed'",
                    &[&id, &now.0],
                )
                .await
                .map_err(pg_err)?;
                // Delivered at commit, to runners idle on this job.
                tx.cexecute("SELECT pg_notify($1, $2)", &[&self.channel(), &job])
                    .await
                    .map_err(pg_err)?;
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
        let key = self.liveness_key()?;
        self.block(async {
            let c = self.client().await?;
            // One statement: pick ready items nobody else is claiming right
            // now (SKIP LOCKED), take them, and report their previous owner.
            let rows = c
                .cquery(
                    "WITH ready AS (
                         SELECT id, status AS old_status, owner AS old_owner FROM items
                         WHERE job_id = (SELECT id FROM jobs WHERE name = $1)
                           AND ready_at IS NOT NULL AND ready_at <= $2
                           AND NOT (status = 'running' AND owner = $4)
                         ORDER BY ready_at, id LIMIT $3 FOR UPDATE SKIP LOCKED)
                     UPDATE items i SET status = 'running', owner = $4, attempts = i.attempts + 1,
                         claims = i.claims + 1, ready_at = $5, started_at = $2, owner_key = $6
                     FROM ready WHERE i.id = ready.id
                     RETURNING i.id, i.key, i.payload, i.cursor, i.attempts, i.claims,
                         ready.old_status, ready.old_owner, i.enqueued_at",
                    &[
                        &job,
                        &now.0,
                        &(max.min(i64::MAX as usize) as i64),
                        &owner,
                        &lease_until.0,
                        &key,
                    ],
                )
                .await
                .map_err(pg_err)?;
            let mut claimed: Vec<ClaimedItem> = rows
                .iter()
                .map(|r| ClaimedItem {
                    lease: ItemLease {
                        id: r.get(0),
                        owner: owner.to_string(),
                        token: r.get::<_, i64>(5) as u64,
                    },
                    job: job.to_string(),
                    key: r.get(1),
                    attempt: r.get::<_, i32>(4) as u32,
                    payload: r.get(2),
                    cursor: r.get(3),
                    lease_expires: lease_until,
                    taken_over_from: if r.get::<_, &str>(6) == "running" {
                        r.get(7)
                    } else {
                        None
                    },
                    enqueued_at: Timestamp(r.get(8)),
                })
                .collect();
            claimed.sort_by_key(|i| i.lease.id);
            Ok(claimed)
        })
    }

    fn update_items(&self, updates: &[ItemUpdate], now: Timestamp) -> Result<Vec<Result<()>>> {
        in_tx!(self, |tx| {
            // Completions, the bulk of a group commit, go in one statement;
            // the other changes (rarer) one statement each.
            let (batched, single): (Vec<usize>, Vec<usize>) = (0..updates.len())
                .partition(|&i| matches!(updates[i].change, ItemChange::Complete { .. }));
            let mut results: Vec<Option<Result<()>>> = (0..updates.len()).map(|_| None).collect();
            let mut ids: Vec<i64> = batched.iter().map(|&i| updates[i].lease.id).collect();
            ids.sort_unstable();
            ids.dedup();
            if ids.len() == batched.len() && !batched.is_empty() {
                complete_batch(tx, updates, &batched, now, &mut results).await?;
            } else {
                for &i in &batched {
                    results[i] = Some(fenced_or_fail(apply_update(tx, &updates[i], now).await)?);
                }
            }
            for &i in &single {
                results[i] = Some(fenced_or_fail(apply_update(tx, &updates[i], now).await)?);
            }
            Ok(results.into_iter().map(|r| r.unwrap_or(Ok(()))).collect())
        })
    }

    fn item_counts(&self, job: &str) -> Result<ItemCounts> {
        in_tx!(self, |tx| {
            // Completed items are counted as the rest of the job's total
            // (kept by enqueue), so a job of millions of finished items is
            // counted through the small indexes of its unfinished and dead
            // items, not by a scan. One snapshot (REPEATABLE READ) for all.
            tx.batch_execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                .await
                .map_err(pg_err)?;
            let Some(row) = tx
                .cquery_opt("SELECT id, items_total FROM jobs WHERE name = $1", &[&job])
                .await
                .map_err(pg_err)?
            else {
                return Ok(ItemCounts::default());
            };
            let id: i64 = row.get(0);
            let rows = tx
                .cquery(
                    "SELECT status, count(*) FROM items
                     WHERE job_id = $1 AND ready_at IS NOT NULL GROUP BY status
                     UNION ALL
                     SELECT 'dead', count(*) FROM items WHERE job_id = $1 AND status = 'dead'",
                    &[&id],
                )
                .await
                .map_err(pg_err)?;
            let mut counts = ItemCounts::default();
            for r in rows {
                counts.add(
                    status(r.get(0), ItemStatus::parse)?,
                    r.get::<_, i64>(1) as u64,
                );
            }
            let total = row.get::<_, i64>(1) as u64;
            counts.completed =
                total.saturating_sub(counts.pending + counts.running + counts.failed + counts.dead);
            Ok(counts)
        })
    }

    fn next_ready_at(&self, job: &str) -> Result<Option<Timestamp>> {
        self.block(async {
            let c = self.client().await?;
            let row = c
                .cquery_one(
                    "SELECT min(ready_at) FROM items
                     WHERE job_id = (SELECT id FROM jobs WHERE name = $1) AND ready_at IS NOT NULL",
                    &[&job],
                )
                .await
                .map_err(pg_err)?;
            Ok(ts(row.get(0)))
        })
    }

    fn list_items(
        &self,
        job: &str,
        status: Option<ItemStatus>,
        limit: usize,
    ) -> Result<Vec<ItemRecord>> {
        self.block(async {
            let c = self.client().await?;
            let rows = c
                .cquery(
                    &format!(
                        "SELECT {ITEM_COLUMNS} FROM items
                         WHERE job_id = (SELECT id FROM jobs WHERE name = $1)
                           AND ($2::TEXT IS NULL OR status = $2){} ORDER BY id LIMIT $3",
                        status.map_or("", status_index_hint)
                    ),
                    &[
                        &job,
                        &status.map(ItemStatus::as_str),
                        &(limit.min(i64::MAX as usize) as i64),
                    ],
                )
                .await
                .map_err(pg_err)?;
            rows.iter().map(item_from_row).collect()
        })
    }

    fn running_owners(&self, job: &str) -> Result<Vec<String>> {
        self.block(async {
            let c = self.client().await?;
            let rows = c
                .cquery(
                    "SELECT DISTINCT owner FROM items
                     WHERE job_id = (SELECT id FROM jobs WHERE name = $1)
                       AND status = 'running' AND ready_at IS NOT NULL AND owner IS NOT NULL
                     ORDER BY owner",
                    &[&job],
                )
                .await
                .map_err(pg_err)?;
            Ok(rows.iter().map(|r| r.get(0)).collect())
        })
    }

    fn wait_for_items(&self, job: &str, timeout: std::time::Duration) -> Option<bool> {
        self.wait_for_items_notified(job, timeout)
    }

    fn expire_lost_owners(&self, job: &str, now: Timestamp) -> Result<u64> {
        self.block(async {
            let c = self.client().await?;
            c.cexecute(
                &format!(
                    "UPDATE items SET ready_at = $2
                     WHERE job_id = (SELECT id FROM jobs WHERE name = $1)
                       AND status = 'running' AND ready_at > $2 AND owner_key IS NOT NULL
                       AND NOT EXISTS ({LIVE_LOCK} = items.owner_key)"
                ),
                &[&job, &now.0],
            )
            .await
            .map_err(pg_err)
        })
    }

    fn expire_owner(&self, job: &str, owner: &str, now: Timestamp) -> Result<u64> {
        self.block(async {
            let c = self.client().await?;
            c.cexecute(
                "UPDATE items SET ready_at = LEAST(ready_at, $3)
                 WHERE job_id = (SELECT id FROM jobs WHERE name = $1)
                   AND status = 'running' AND ready_at IS NOT NULL AND owner = $2",
                &[&job, &owner, &now.0],
            )
            .await
            .map_err(pg_err)
        })
    }

    fn redrive(
        &self,
        job: &str,
        from: ItemStatus,
        keys: Option<&[String]>,
        now: Timestamp,
    ) -> Result<u64> {
        in_tx!(self, |tx| {
            let id = job_id(tx, job)
                .await?
                .ok_or_else(|| Error::NotFound(format!("job '{job}'")))?;
            tx.cexecute("SELECT 1 FROM jobs WHERE id = $1 FOR UPDATE", &[&id])
                .await
                .map_err(pg_err)?;
            let moved = tx
                    .cexecute(
&format!("UPDATE items SET status = 'pending', attempts = 0, ready_at = 0,
                             finished_at = NULL
                         WHERE job_id = $1 AND status = $2 AND ($3::TEXT[] IS NULL OR key = ANY($3)){}",
                         status_index_hint(from)),
                        &[&id, &from.as_str(), &keys.map(<[String]>::to_vec)],
                    )
                    .await
                    .map_err(pg_err)?;
            if moved > 0 {
                tx.cexecute(
                    "UPDATE jobs SET status = 'running', completed_at = NULL, updated_at = $2
                         WHERE id = $1",
                    &[&id, &now.0],
                )
                .await
                .map_err(pg_err)?;
                tx.cexecute("SELECT pg_notify($1, $2)", &[&self.channel(), &job])
                    .await
                    .map_err(pg_err)?;
            }
            Ok(moved)
        })
    }
}

/// A condition implied by `status = X` that names the column of a partial
/// index, so the planner can use it (it cannot see through a parameter):
/// unfinished items are exactly those with a `ready_at` (items_ready), dead
/// ones are in items_dead. Completed items have no index of their own.
fn status_index_hint(status: ItemStatus) -> &'static str {
    match status {
        ItemStatus::Pending | ItemStatus::Running | ItemStatus::Failed => {
            " AND ready_at IS NOT NULL"
        }
        ItemStatus::Dead => " AND status = 'dead'",
        ItemStatus::Completed => "",
    }
}
