//! The [`Store`] operations in PostgreSQL's dialect.

use deadpool_postgres::GenericClient;
use serde_json::Value;
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use super::{pg_err, PgStore};
use crate::error::{Error, Result};
use crate::model::{
    Checkpoint, ClaimedItem, EnqueueReport, HistoryEntry, ItemChange, ItemCounts, ItemLease,
    ItemRecord, ItemStatus, ItemUpdate, JobLease, JobRecord, JobStatus,
};
use crate::store::rules::{busy, fenced_item, fenced_job, held_by_live_owner};
use crate::store::{ItemStream, Store};
use crate::time::Timestamp;

/// Whether the session that holds `job_id`'s lease still holds its
/// liveness lock (true when the holder carries no key: an operator write
/// or an older ckpt).
async fn holder_session_alive(c: &impl GenericClient, job_id: i64) -> Result<bool> {
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

/// Selects the keys of the liveness locks held right now in this database:
/// a session-level `pg_advisory_lock(bigint)` shows in `pg_locks` with the
/// key's high half in `classid`, its low half in `objid` and `objsubid` 1.
const LIVE_LOCK: &str = "SELECT 1 FROM pg_locks l
     WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
       AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
       AND ((l.classid::BIGINT << 32) | l.objid::BIGINT)";

/// Statements through the connection's prepared-statement cache: one round
/// trip per statement instead of a parse and an execute.
trait Cached: GenericClient {
    async fn cquery(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, tokio_postgres::Error> {
        let stmt = self.prepare_cached(sql).await?;
        self.query(&stmt, params).await
    }
    async fn cquery_one(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Row, tokio_postgres::Error> {
        let stmt = self.prepare_cached(sql).await?;
        self.query_one(&stmt, params).await
    }
    async fn cquery_opt(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>, tokio_postgres::Error> {
        let stmt = self.prepare_cached(sql).await?;
        self.query_opt(&stmt, params).await
    }
    async fn cexecute(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, tokio_postgres::Error> {
        let stmt = self.prepare_cached(sql).await?;
        self.execute(&stmt, params).await
    }
}

impl<T: GenericClient> Cached for T {}

const JOB_COLUMNS: &str = "name, status, cursor, items_processed, stage, state, checkpoint_at, \
     owner, lease_expires, epoch, attempts, saves, \
     (SELECT count(*) FROM history h WHERE h.job_id = jobs.id), state_bytes, \
     created_at, updated_at, completed_at, error";

const ITEM_COLUMNS: &str = "id, key, payload, status, attempts, owner, ready_at, last_error, \
     stats, cursor, enqueued_at, started_at, finished_at";

/// Items sent to the server per statement while enqueueing.
const ENQUEUE_BATCH: usize = 5_000;

fn status<T>(s: &str, parse: fn(&str) -> Option<T>) -> Result<T> {
    parse(s).ok_or_else(|| Error::Storage(format!("unknown status {s:?} in the store")))
}

fn ts(v: Option<i64>) -> Option<Timestamp> {
    v.map(Timestamp)
}

fn job_from_row(r: &Row) -> Result<JobRecord> {
    let checkpoint = r.get::<_, Option<Value>>(2).map(|cursor| Checkpoint {
        cursor,
        items_processed: r.get::<_, i64>(3) as u64,
        stage: r.get(4),
        state: r.get(5),
    });
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

fn item_from_row(r: &Row) -> Result<ItemRecord> {
    let status = status(r.get(3), ItemStatus::parse)?;
    let ready_at = match status {
        ItemStatus::Running | ItemStatus::Failed => ts(r.get(6)),
        _ => None,
    };
    Ok(ItemRecord {
        id: r.get(0),
        key: r.get(1),
        payload: r.get(2),
        status,
        attempts: r.get::<_, i32>(4) as u32,
        owner: r.get(5),
        ready_at,
        last_error: r.get(7),
        stats: r.get(8),
        cursor: r.get(9),
        enqueued_at: Timestamp(r.get(10)),
        started_at: ts(r.get(11)),
        finished_at: ts(r.get(12)),
    })
}

async fn job_id(c: &impl GenericClient, job: &str) -> Result<Option<i64>> {
    Ok(c.cquery_opt("SELECT id FROM jobs WHERE name = $1", &[&job])
        .await
        .map_err(pg_err)?
        .map(|r| r.get(0)))
}

async fn get_job(c: &impl GenericClient, job: &str, lock: bool) -> Result<Option<JobRecord>> {
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

async fn ensure_job(c: &impl GenericClient, job: &str, now: Timestamp) -> Result<i64> {
    c.cexecute(
        "INSERT INTO jobs (name, status, created_at, updated_at) VALUES ($1, 'running', $2, $2)
         ON CONFLICT (name) DO NOTHING",
        &[&job, &now.0],
    )
    .await
    .map_err(pg_err)?;
    job_id(c, job)
        .await?
        .ok_or_else(|| Error::Storage(format!("job '{job}' vanished")))
}

/// Checks the lease (locking the job row); `Fenced` unless current.
async fn check_lease(c: &impl GenericClient, lease: &JobLease) -> Result<i64> {
    let row = c
        .cquery_opt(
            "SELECT id, owner, epoch FROM jobs WHERE name = $1 FOR UPDATE",
            &[&lease.job],
        )
        .await
        .map_err(pg_err)?;
    match row.map(|r| {
        (
            r.get::<_, i64>(0),
            r.get::<_, Option<String>>(1),
            r.get::<_, i64>(2),
        )
    }) {
        Some((id, owner, epoch))
            if owner.as_deref() == Some(lease.owner.as_str()) && epoch as u64 == lease.epoch =>
        {
            Ok(id)
        }
        Some((_, owner, epoch)) => Err(fenced_job(lease, Some((epoch as u64, owner.as_deref())))),
        None => Err(fenced_job(lease, None)),
    }
}

async fn write_checkpoint(
    c: &impl GenericClient,
    job_id: i64,
    cp: &Checkpoint,
    history_keep: usize,
    now: Timestamp,
) -> Result<()> {
    let state_bytes = cp
        .state
        .as_ref()
        .map_or(0, |s| serde_json::to_vec(s).map_or(0, |v| v.len() as i64));
    let saves: i64 = c
        .cquery_one(
            "UPDATE jobs SET cursor = $2, items_processed = $3, stage = $4, state = $5,
                 state_bytes = $6, checkpoint_at = $7, updated_at = $7, saves = saves + 1,
                 completed_at = CASE status WHEN 'completed' THEN NULL ELSE completed_at END,
                 status = CASE status WHEN 'completed' THEN 'running' ELSE status END
             WHERE id = $1 RETURNING saves",
            &[
                &job_id,
                &cp.cursor,
                &(cp.items_processed as i64),
                &cp.stage,
                &cp.state,
                &state_bytes,
                &now.0,
            ],
        )
        .await
        .map_err(pg_err)?
        .get(0);
    c.cexecute(
"INSERT INTO history (job_id, seq, cursor, items_processed, at) VALUES ($1, $2, $3, $4, $5)",
        &[&job_id, &saves, &cp.cursor, &(cp.items_processed as i64), &now.0],
    )
    .await
    .map_err(pg_err)?;
    let keep = i64::try_from(history_keep).unwrap_or(i64::MAX);
    if saves > keep {
        c.cexecute(
            "DELETE FROM history WHERE job_id = $1 AND seq <= $2",
            &[&job_id, &(saves - keep)],
        )
        .await
        .map_err(pg_err)?;
    }
    Ok(())
}

async fn apply_update(c: &impl GenericClient, u: &ItemUpdate, now: Timestamp) -> Result<()> {
    let l = &u.lease;
    let token = l.token as i64;
    let fence = "WHERE id = $1 AND status = 'running' AND owner = $2 AND claims = $3";
    let changed = match &u.change {
        ItemChange::Heartbeat { lease_until } => {
            c.cexecute(
&format!("UPDATE items SET ready_at = $4 {fence}"),
                &[&l.id, &l.owner, &token, &lease_until.0],
            )
            .await
        }
        ItemChange::Cursor {
            cursor,
            lease_until,
        } => {
            c.cexecute(
&format!("UPDATE items SET ready_at = $4, cursor = $5 {fence}"),
                &[&l.id, &l.owner, &token, &lease_until.0, cursor],
            )
            .await
        }
        ItemChange::Complete { stats } => {
            c.cexecute(
&format!(
                    "UPDATE items SET status = 'completed', ready_at = NULL, stats = $4,
                         finished_at = $5 {fence}"
                ),
                &[&l.id, &l.owner, &token, stats, &now.0],
            )
            .await
        }
        ItemChange::Fail { error, retry_at } => {
            let retry: Option<i64> = retry_at.map(|t| t.0);
            c.cexecute(
&format!(
                    "UPDATE items SET status = CASE WHEN $4::BIGINT IS NULL THEN 'dead' ELSE 'failed' END,
                         ready_at = $4, last_error = $5,
                         finished_at = CASE WHEN $4::BIGINT IS NULL THEN $6 ELSE finished_at END {fence}"
                ),
                &[&l.id, &l.owner, &token, &retry, error, &now.0],
            )
            .await
        }
    }
    .map_err(pg_err)?;
    if changed == 1 {
        return Ok(());
    }
    let current = c
        .cquery_opt(
            "SELECT key, status, owner FROM items WHERE id = $1",
            &[&l.id],
        )
        .await
        .map_err(pg_err)?;
    Err(match current {
        None => Error::Fenced(format!("item {} does not exist", l.id)),
        Some(r) => fenced_item(
            r.get(0),
            ItemStatus::parse(r.get(1)).unwrap_or(ItemStatus::Pending),
            r.get(2),
        ),
    })
}

/// Keeps a fenced result as the update's outcome; any other error aborts
/// the whole batch.
fn fenced_or_fail(r: Result<()>) -> Result<Result<()>> {
    match r {
        Ok(()) => Ok(Ok(())),
        Err(Error::Fenced(m)) => Ok(Err(Error::Fenced(m))),
        Err(other) => Err(other),
    }
}

/// Completes the items at `indexes` of `updates` (distinct items) in one
/// statement, fenced row by row; fills their slots of `results`.
async fn complete_batch(
    tx: &deadpool_postgres::Transaction<'_>,
    updates: &[ItemUpdate],
    indexes: &[usize],
    now: Timestamp,
    results: &mut [Option<Result<()>>],
) -> Result<()> {
    let mut ids = Vec::with_capacity(indexes.len());
    let mut owners = Vec::with_capacity(indexes.len());
    let mut tokens = Vec::with_capacity(indexes.len());
    let mut stats: Vec<Option<Value>> = Vec::with_capacity(indexes.len());
    for &i in indexes {
        let u = &updates[i];
        ids.push(u.lease.id);
        owners.push(u.lease.owner.as_str());
        tokens.push(u.lease.token as i64);
        stats.push(match &u.change {
            ItemChange::Complete { stats } => stats.clone(),
            _ => None,
        });
    }
    let applied: std::collections::HashSet<i64> = tx
        .cquery(
            "UPDATE items i SET status = 'completed', ready_at = NULL, stats = u.stats,
                 finished_at = $5
             FROM unnest($1::BIGINT[], $2::TEXT[], $3::BIGINT[], $4::JSONB[])
                 AS u(id, owner, token, stats)
             WHERE i.id = u.id AND i.status = 'running' AND i.owner = u.owner
               AND i.claims = u.token
             RETURNING i.id",
            &[&ids, &owners, &tokens, &stats, &now.0],
        )
        .await
        .map_err(pg_err)?
        .iter()
        .map(|r| r.get(0))
        .collect();
    for &i in indexes {
        let l = &updates[i].lease;
        results[i] = Some(if applied.contains(&l.id) {
            Ok(())
        } else {
            let current = tx
                .cquery_opt(
                    "SELECT key, status, owner FROM items WHERE id = $1",
                    &[&l.id],
                )
                .await
                .map_err(pg_err)?;
            Err(match current {
                None => Error::Fenced(format!("item {} does not exist", l.id)),
                Some(r) => fenced_item(
                    r.get(0),
                    ItemStatus::parse(r.get(1)).unwrap_or(ItemStatus::Pending),
                    r.get(2),
                ),
            })
        });
    }
    Ok(())
}

/// Saves a checkpoint in one statement, so one round trip (and, outside a
/// transaction, one commit): the fenced UPDATE (which is the fencing check),
/// the history append and the history trim. All three see the same
/// snapshot, so the trim never touches the entry being appended.
pub(super) async fn save_fenced(
    c: &impl GenericClient,
    lease: &JobLease,
    checkpoint: &Checkpoint,
    history_keep: usize,
    lease_until: Timestamp,
    now: Timestamp,
) -> Result<()> {
    let state_bytes = checkpoint
        .state
        .as_ref()
        .map_or(0, |s| serde_json::to_vec(s).map_or(0, |v| v.len() as i64));
    let keep = i64::try_from(history_keep).unwrap_or(i64::MAX);
    let saved = c
        .cquery_opt(
            "WITH saved AS (
                 UPDATE jobs SET cursor = $2, items_processed = $3, stage = $4, state = $5,
                     state_bytes = $6, checkpoint_at = $7, updated_at = $7,
                     saves = saves + 1, lease_expires = $8,
                     completed_at = CASE status WHEN 'completed' THEN NULL ELSE completed_at END,
                     status = CASE status WHEN 'completed' THEN 'running' ELSE status END
                 WHERE name = $1 AND owner = $9 AND epoch = $10
                 RETURNING id, saves),
             appended AS (
                 INSERT INTO history (job_id, seq, cursor, items_processed, at)
                 SELECT id, saves, $2, $3, $7 FROM saved RETURNING seq),
             trimmed AS (
                 DELETE FROM history h USING saved
                 WHERE h.job_id = saved.id AND h.seq <= saved.saves - $11 RETURNING 1)
             SELECT id FROM saved",
            &[
                &lease.job,
                &checkpoint.cursor,
                &(checkpoint.items_processed as i64),
                &checkpoint.stage,
                &checkpoint.state,
                &state_bytes,
                &now.0,
                &lease_until.0,
                &lease.owner,
                &(lease.epoch as i64),
                &keep,
            ],
        )
        .await
        .map_err(pg_err)?;
    match saved {
        Some(_) => Ok(()),
        None => Err(check_lease(c, lease)
            .await
            .err()
            .unwrap_or_else(|| Error::Fenced(format!("job '{}' changed hands", lease.job)))),
    }
}

/// The caller's side of a transaction that also saves a checkpoint or
/// completes an item (exactly-once for a sink in the same database). Its
/// statements run on the transaction's connection; the store commits after
/// its own fenced write, or rolls everything back.
pub struct PgTx<'a> {
    store: &'a PgStore,
    client: &'a deadpool_postgres::Object,
}

impl PgTx<'_> {
    /// Runs a statement; returns the rows changed.
    pub fn execute(&mut self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<u64> {
        self.store
            .block(self.client.execute(sql, params))
            .map_err(pg_err)
    }

    /// Runs a query; returns its rows.
    pub fn query(&mut self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>> {
        self.store
            .block(self.client.query(sql, params))
            .map_err(pg_err)
    }
}

/// The store's own write in a caller's transaction.
enum StoreWrite<'a> {
    Checkpoint {
        lease: &'a JobLease,
        checkpoint: &'a Checkpoint,
        history_keep: usize,
        lease_until: Timestamp,
        now: Timestamp,
    },
    Item {
        update: &'a ItemUpdate,
        now: Timestamp,
    },
}

impl PgStore {
    /// Runs `f` and then `write` in one transaction on one connection:
    /// commits when both succeed, rolls back otherwise.
    fn with_caller_tx<T>(
        &self,
        f: impl FnOnce(&mut PgTx<'_>) -> Result<T>,
        write: StoreWrite<'_>,
    ) -> Result<T> {
        let client = self.block(self.client())?;
        self.block(client.batch_execute("BEGIN")).map_err(pg_err)?;
        let result = f(&mut PgTx {
            store: self,
            client: &client,
        })
        .and_then(|out| {
            let written = match write {
                StoreWrite::Checkpoint {
                    lease,
                    checkpoint,
                    history_keep,
                    lease_until,
                    now,
                } => self.block(save_fenced(
                    &client,
                    lease,
                    checkpoint,
                    history_keep,
                    lease_until,
                    now,
                )),
                StoreWrite::Item { update, now } => self.block(apply_update(&client, update, now)),
            };
            written.map(|()| out)
        });
        match result {
            Ok(out) => {
                self.block(client.batch_execute("COMMIT")).map_err(pg_err)?;
                Ok(out)
            }
            Err(e) => {
                if self.block(client.batch_execute("ROLLBACK")).is_err() {
                    // Never hand a connection stuck in a transaction back to the pool.
                    drop(deadpool_postgres::Object::take(client));
                }
                Err(e)
            }
        }
    }

    /// Runs `f` and saves the checkpoint in one transaction, fenced like
    /// [`Store::save_checkpoint`]: see `Job::checkpoint_with_postgres`.
    pub fn save_checkpoint_with<T>(
        &self,
        lease: &JobLease,
        checkpoint: &Checkpoint,
        history_keep: usize,
        lease_until: Timestamp,
        now: Timestamp,
        f: impl FnOnce(&mut PgTx<'_>) -> Result<T>,
    ) -> Result<T> {
        self.with_caller_tx(
            f,
            StoreWrite::Checkpoint {
                lease,
                checkpoint,
                history_keep,
                lease_until,
                now,
            },
        )
    }

    /// Runs `f` and applies `update` in one transaction; a fenced update
    /// rolls everything back: see `Queue::complete_with_postgres`.
    pub fn update_item_with<T>(
        &self,
        update: &ItemUpdate,
        now: Timestamp,
        f: impl FnOnce(&mut PgTx<'_>) -> Result<T>,
    ) -> Result<T> {
        self.with_caller_tx(f, StoreWrite::Item { update, now })
    }
}

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
            // Lock the job row: an enqueue takes the same lock (its
            // `ensure_job` upsert), so none can slip in between the check
            // and the status change.
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

    fn enqueue(&self, job: &str, items: ItemStream<'_>, now: Timestamp) -> Result<EnqueueReport> {
        in_tx!(self, |tx| {
            let id = ensure_job(tx, job, now).await?;
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
                    "UPDATE jobs SET status = 'running', completed_at = NULL, updated_at = $2
                     WHERE id = $1 AND status = 'completed'",
                    &[&id, &now.0],
                )
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
                         ready.old_status, ready.old_owner",
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
        self.block(async {
            let c = self.client().await?;
            let rows = c
                .cquery(
                    "SELECT i.status, count(*) FROM items i JOIN jobs j ON j.id = i.job_id
                     WHERE j.name = $1 GROUP BY i.status",
                    &[&job],
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
                           AND ($2::TEXT IS NULL OR status = $2) ORDER BY id LIMIT $3"
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
                       AND status = 'running' AND owner IS NOT NULL ORDER BY owner",
                    &[&job],
                )
                .await
                .map_err(pg_err)?;
            Ok(rows.iter().map(|r| r.get(0)).collect())
        })
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
                   AND status = 'running' AND owner = $2",
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
            let moved = tx
                    .cexecute(
"UPDATE items SET status = 'pending', attempts = 0, ready_at = 0,
                             finished_at = NULL
                         WHERE job_id = $1 AND status = $2 AND ($3::TEXT[] IS NULL OR key = ANY($3))",
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
            }
            Ok(moved)
        })
    }
}
