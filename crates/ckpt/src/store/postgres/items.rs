//! [`ItemStore`] in PostgreSQL's dialect: the item state machine's values
//! bound into one fenced statement per change (or one per batch), claims
//! by `FOR UPDATE SKIP LOCKED`, and [`OwnerSessions`] through the liveness
//! locks.

use deadpool_postgres::GenericClient;
use serde_json::Value;
use tokio_postgres::types::ToSql;

use super::conn::{in_tx, pg_err, with_client, Cached};
use super::jobs::{ensure_job, lock_job, LIVE_LOCK};
use super::json as pg_json;
use super::liveness::SESSION_GRACE;
use super::patch::{apply_update, fenced_or_fail, update_batch};
use super::rows::{item_from_row, json, status, ts, ITEM_COLUMNS};
use super::PgStore;
use crate::error::Result;
use crate::model::{
    ClaimedItem, EnqueueReport, ItemCounts, ItemLease, ItemRecord, ItemStatus, ItemUpdate,
    JobStatus,
};
use crate::store::machine::{status_index_hint, Claim, ItemState, Redrive};
use crate::store::{ItemStore, ItemStream, OwnerSessions};
use crate::time::Timestamp;

/// Items sent to the server per statement while enqueueing.
const ENQUEUE_BATCH: usize = 5_000;

impl ItemStore for PgStore {
    fn enqueue(&self, job: &str, items: ItemStream<'_>, now: Timestamp) -> Result<EnqueueReport> {
        let enqueued = ItemState::enqueued();
        in_tx!(self, |tx| {
            // The job row stays locked, as `finish_if_done` locks it: a job
            // is never marked done while items are being added to it.
            let id = ensure_job(tx, job, now).await?;
            let insert = "WITH ins AS (
                         INSERT INTO items (job_id, key, payload, status, ready_at, enqueued_at)
                         SELECT $1, t.key, t.payload, $5, $6, $4
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
                let params: [&(dyn ToSql + Sync); 6] = [
                    &id,
                    &keys,
                    &pg_json::each(payloads.iter().map(Option::as_ref).collect()),
                    &now.0,
                    &enqueued.status.as_str(),
                    &enqueued.ready_at.map(|t| t.0),
                ];
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
        started: bool,
        now: Timestamp,
    ) -> Result<Vec<ClaimedItem>> {
        let key = self.liveness_key()?;
        let claim = Claim {
            owner,
            lease_until,
            now,
            started,
        };
        with_client!(self, |c| {
            // One statement: pick ready items (machine::claimable) nobody else
            // is claiming right now (SKIP LOCKED), write the claim's values,
            // and report their previous owner. "Its own" is under this
            // session: an own lease left lapsed under an ended session was
            // not renewed, so its work was stopped (the watchdog), and the
            // owner does not hold it: the write that ended it was lost (an
            // asynchronous failover). No one else may take it; the owner must.
            let rows = c
                .cquery(
                    "WITH ready AS (
                         SELECT id, status AS old_status, owner AS old_owner,
                             started_at IS NOT NULL AS old_started FROM items
                         WHERE job_id = (SELECT id FROM jobs WHERE name = $1)
                           AND ready_at IS NOT NULL AND ready_at <= $2
                           AND NOT (status = 'running' AND owner = $4 AND owner_key IS NOT DISTINCT FROM $6)
                         ORDER BY ready_at, id LIMIT $3 FOR UPDATE SKIP LOCKED)
                     UPDATE items i SET status = $7, owner = $4, attempts = i.attempts + CASE
                             WHEN ready.old_status = 'running' AND NOT ready.old_started THEN $10::INT
                             ELSE $8::INT END,
                         claims = i.claims + $9, ready_at = $5, started_at = $11::BIGINT, owner_key = $6
                     FROM ready WHERE i.id = ready.id
                     RETURNING i.id, i.key, i.payload, i.cursor, i.attempts, i.claims,
                         ready.old_status, ready.old_owner, i.enqueued_at",
                    &[
                        &job,
                        &claim.now.0,
                        &(max.min(i64::MAX as usize) as i64),
                        &claim.owner,
                        &claim.lease_until.0,
                        &key,
                        &Claim::STATUS.as_str(),
                        &(Claim::ATTEMPTS_ADDED as i32),
                        &(Claim::CLAIMS_ADDED as i64),
                        &(Claim::ATTEMPTS_ADDED_UNSTARTED as i32),
                        &claim.started_at().map(|t| t.0),
                    ],
                )
                .await
                .map_err(pg_err)?;
            let mut claimed: Vec<ClaimedItem> = rows
                .iter()
                .map(|r| -> Result<ClaimedItem> {
                    Ok(ClaimedItem {
                        lease: ItemLease {
                            id: r.get(0),
                            owner: owner.to_string(),
                            token: r.get::<_, i64>(5) as u64,
                        },
                        job: job.to_string(),
                        key: r.get(1),
                        attempt: r.get::<_, i32>(4) as u32,
                        payload: json(r, 2)?,
                        cursor: json(r, 3)?,
                        lease_expires: lease_until,
                        taken_over_from: claim.taken_over_from(
                            ItemStatus::parse(r.get(6)).unwrap_or(ItemStatus::Pending),
                            r.get(7),
                        ),
                        enqueued_at: Timestamp(r.get(8)),
                    })
                })
                .collect::<Result<_>>()?;
            claimed.sort_by_key(|i| i.lease.id);
            Ok(claimed)
        })
    }

    fn update_items(&self, updates: &[ItemUpdate], now: Timestamp) -> Result<Vec<Result<()>>> {
        // A renewal is made under this process's current liveness session.
        let renews = updates.iter().any(|u| {
            matches!(
                u.change,
                crate::model::ItemChange::Heartbeat { .. }
                    | crate::model::ItemChange::Cursor { .. }
            )
        });
        let key = if renews { self.liveness_key()? } else { None };
        in_tx!(self, |tx| {
            let mut ids: Vec<i64> = updates.iter().map(|u| u.lease.id).collect();
            ids.sort_unstable();
            ids.dedup();
            if ids.len() == updates.len() && updates.len() > 1 {
                // Distinct items (a group commit, a heartbeat of every held
                // item): one statement for all.
                return update_batch(tx, updates, key, now).await;
            }
            // One item, or the same item twice: in order, one statement each.
            let mut results = Vec::with_capacity(updates.len());
            for u in updates {
                results.push(fenced_or_fail(apply_update(tx, u, key, now).await)?);
            }
            Ok(results)
        })
    }

    fn finish_if_done(&self, job: &str, now: Timestamp) -> Result<Option<JobStatus>> {
        in_tx!(self, |tx| {
            // Lock the job row: enqueue and redrive take the same lock
            // before adding or reviving items, so none can slip in between
            // the check and the status change.
            let id = lock_job(tx, job).await?;
            let row = tx
                .cquery_opt(
                    "UPDATE jobs SET status = d.new_status,
                         completed_at = CASE WHEN jobs.status = d.new_status THEN jobs.completed_at
                             WHEN d.dead THEN NULL ELSE $2::BIGINT END,
                         updated_at = CASE WHEN jobs.status = d.new_status THEN jobs.updated_at
                             ELSE $2 END
                     FROM (SELECT dead, CASE WHEN dead THEN 'failed' ELSE 'completed' END
                               AS new_status
                           FROM (SELECT EXISTS (SELECT 1 FROM items
                               WHERE job_id = $1 AND status = 'dead') AS dead) e) d
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
        with_client!(self, |c| {
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
        self.items_in_order(job, status, limit, "")
    }

    fn last_items(&self, job: &str, status: ItemStatus, limit: usize) -> Result<Vec<ItemRecord>> {
        self.items_in_order(job, Some(status), limit, " DESC")
    }

    fn running_owners(&self, job: &str) -> Result<Vec<String>> {
        with_client!(self, |c| {
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

    fn expire_owner(&self, job: &str, owner: &str, now: Timestamp) -> Result<u64> {
        with_client!(self, |c| {
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
            let id = lock_job(tx, job).await?;
            let moved = tx
                    .cexecute(
&format!("UPDATE items SET status = $4, attempts = $5, ready_at = $6,
                             finished_at = NULL
                         WHERE job_id = $1 AND status = $2 AND ($3::TEXT[] IS NULL OR key = ANY($3)){}",
                         status_index_hint(from)),
                        &[
                            &id,
                            &from.as_str(),
                            &keys.map(<[String]>::to_vec),
                            &Redrive::STATUS.as_str(),
                            &(Redrive::ATTEMPTS as i32),
                            &Redrive::READY_AT.0,
                        ],
                    )
                    .await
                    .map_err(pg_err)?;
            if moved > 0 {
                self.reopen_job(tx, id, job, now).await?;
            }
            Ok(moved)
        })
    }
}

impl OwnerSessions for PgStore {
    fn expire_lost_owners(&self, job: &str, now: Timestamp) -> Result<u64> {
        let grace = SESSION_GRACE.as_millis() as i64;
        let called = std::time::Instant::now();
        with_client!(self, |c| {
            // `now` was read before a wait for a connection (a reconnect
            // may take seconds): a grace counted from it could end before
            // the owner stops. Count it from now.
            let now = now.plus(called.elapsed());
            // The key is re-checked on the row (a renewal under a newer
            // session changes it), so only leases written under the ended
            // session are shortened.
            c.cexecute(
                &format!(
                    "UPDATE items SET ready_at = $2::BIGINT + $3::BIGINT
                     WHERE job_id = (SELECT id FROM jobs WHERE name = $1)
                       AND status = 'running' AND ready_at > $2::BIGINT + $3::BIGINT AND owner_key IS NOT NULL
                       AND NOT EXISTS ({LIVE_LOCK} = items.owner_key)"
                ),
                &[&job, &now.0, &grace],
            )
            .await
            .map_err(pg_err)
        })
    }

    fn session_grace(&self) -> std::time::Duration {
        SESSION_GRACE
    }

    fn current_session(&self) -> Option<u64> {
        self.liveness.current()
    }

    fn session_confirmed(&self, id: u64) -> Option<std::time::Instant> {
        self.liveness.confirmed(id)
    }

    fn job_session_ended(&self, job: &str) -> Result<bool> {
        // One statement: a job deleted meanwhile is simply not held.
        with_client!(self, |c| {
            Ok(c.cquery_opt(
                &format!(
                    "SELECT owner_key IS NOT NULL AND NOT EXISTS ({LIVE_LOCK} = jobs.owner_key)
                     FROM jobs WHERE name = $1"
                ),
                &[&job],
            )
            .await
            .map_err(pg_err)?
            .is_some_and(|r| r.get::<_, bool>(0)))
        })
    }
}

impl PgStore {
    /// After items of a finished job went back to pending (a re-drive):
    /// the job runs again, and idle runners are woken (at commit).
    pub(super) async fn reopen_job(
        &self,
        tx: &impl deadpool_postgres::GenericClient,
        id: i64,
        job: &str,
        now: Timestamp,
    ) -> Result<()> {
        tx.cexecute(
            "UPDATE jobs SET status = 'running', completed_at = NULL, updated_at = $2 WHERE id = $1",
            &[&id, &now.0],
        )
        .await
        .map_err(pg_err)?;
        tx.cexecute("SELECT pg_notify($1, $2)", &[&self.channel(), &job])
            .await
            .map_err(pg_err)?;
        Ok(())
    }

    /// Items of `job` (of `status`, or all), by id in `direction` (`""`
    /// or `" DESC"`), at most `limit`.
    fn items_in_order(
        &self,
        job: &str,
        status: Option<ItemStatus>,
        limit: usize,
        direction: &str,
    ) -> Result<Vec<ItemRecord>> {
        with_client!(self, |c| {
            let rows = c
                .cquery(
                    &format!(
                        "SELECT {ITEM_COLUMNS} FROM items
                         WHERE job_id = (SELECT id FROM jobs WHERE name = $1)
                           AND ($2::TEXT IS NULL OR status = $2){} ORDER BY id{direction} LIMIT $3",
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
}
