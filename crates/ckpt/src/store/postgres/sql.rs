//! The statements of the PostgreSQL store, shared by its operations.

use deadpool_postgres::GenericClient;
use serde_json::Value;
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use super::pg_err;
use crate::error::{Error, Result};
use crate::model::{
    Checkpoint, ItemChange, ItemRecord, ItemStatus, ItemUpdate, JobLease, JobRecord, JobStatus,
};
use crate::store::rules::{fenced_item, fenced_job};
use crate::time::Timestamp;

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

/// Selects the keys of the liveness locks held right now in this database:
/// a session-level `pg_advisory_lock(bigint)` shows in `pg_locks` with the
/// key's high half in `classid`, its low half in `objid` and `objsubid` 1.
pub(super) const LIVE_LOCK: &str = "SELECT 1 FROM pg_locks l
     WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
       AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
       AND ((l.classid::BIGINT << 32) | l.objid::BIGINT)";

/// Statements through the connection's prepared-statement cache: one round
/// trip per statement instead of a parse and an execute.
pub(super) trait Cached: GenericClient {
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

pub(super) const JOB_COLUMNS: &str =
    "name, status, cursor, items_processed, stage, state, checkpoint_at, \
     owner, lease_expires, epoch, attempts, saves, \
     (SELECT count(*) FROM history h WHERE h.job_id = jobs.id), state_bytes, \
     created_at, updated_at, completed_at, error";

pub(super) const ITEM_COLUMNS: &str =
    "id, key, payload, status, attempts, owner, ready_at, last_error, \
     stats, cursor, enqueued_at, started_at, finished_at";

/// Items sent to the server per statement while enqueueing.
pub(super) const ENQUEUE_BATCH: usize = 5_000;

pub(super) fn status<T>(s: &str, parse: fn(&str) -> Option<T>) -> Result<T> {
    parse(s).ok_or_else(|| Error::Storage(format!("unknown status {s:?} in the store")))
}

pub(super) fn ts(v: Option<i64>) -> Option<Timestamp> {
    v.map(Timestamp)
}

pub(super) fn job_from_row(r: &Row) -> Result<JobRecord> {
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

pub(super) fn item_from_row(r: &Row) -> Result<ItemRecord> {
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

pub(super) async fn job_id(c: &impl GenericClient, job: &str) -> Result<Option<i64>> {
    Ok(c.cquery_opt("SELECT id FROM jobs WHERE name = $1", &[&job])
        .await
        .map_err(pg_err)?
        .map(|r| r.get(0)))
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

pub(super) async fn ensure_job(c: &impl GenericClient, job: &str, now: Timestamp) -> Result<i64> {
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
pub(super) async fn check_lease(c: &impl GenericClient, lease: &JobLease) -> Result<i64> {
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

pub(super) async fn write_checkpoint(
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
    let keep = i64::try_from(history_keep).unwrap_or(i64::MAX);
    if keep > 0 {
        c.cexecute(
            "INSERT INTO history (job_id, slot, seq, cursor, items_processed, at)
             VALUES ($1, $2::BIGINT % $6::BIGINT, $2, $3, $4, $5)
             ON CONFLICT (job_id, slot) DO UPDATE SET seq = excluded.seq,
                 cursor = excluded.cursor, items_processed = excluded.items_processed,
                 at = excluded.at",
            &[
                &job_id,
                &saves,
                &cp.cursor,
                &(cp.items_processed as i64),
                &now.0,
                &keep,
            ],
        )
        .await
        .map_err(pg_err)?;
    }
    if saves % HISTORY_SWEEP_EVERY == 0 || keep == 0 {
        c.cexecute(
            "DELETE FROM history WHERE job_id = $1 AND seq <= $2",
            &[&job_id, &(saves - keep)],
        )
        .await
        .map_err(pg_err)?;
    }
    Ok(())
}

/// The history is a ring: save number `seq` goes to slot `seq % keep`,
/// overwriting the entry `keep` saves older, so a save writes one row in
/// place (a HOT update: no index entry, no dead index tuple) instead of
/// inserting one and deleting another. The delete-based trim cost more
/// than the job row's own update (an index insertion, and an index range
/// that walked every dead tuple since the last VACUUM: 0.3 ms → 3 ms after
/// 80 k saves).
///
/// Entries outside the ring's slots (after `history_keep` was cut, or left
/// by schema v3) are swept every this many saves.
pub(super) const HISTORY_SWEEP_EVERY: i64 = 256;

pub(super) async fn apply_update(
    c: &impl GenericClient,
    u: &ItemUpdate,
    now: Timestamp,
) -> Result<()> {
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
        ItemChange::Release => {
            c.cexecute(
                &format!(
                    "UPDATE items SET status = 'pending', ready_at = 0,
                         attempts = GREATEST(attempts - 1, 0) {fence}"
                ),
                &[&l.id, &l.owner, &token],
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
pub(super) fn fenced_or_fail(r: Result<()>) -> Result<Result<()>> {
    match r {
        Ok(()) => Ok(Ok(())),
        Err(Error::Fenced(m)) => Ok(Err(Error::Fenced(m))),
        Err(other) => Err(other),
    }
}

/// Completes the items at `indexes` of `updates` (distinct items) in one
/// statement, fenced row by row; fills their slots of `results`.
pub(super) async fn complete_batch(
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
/// the history write into its ring slot and, every
/// [`HISTORY_SWEEP_EVERY`] saves, the sweep. All see the same snapshot; the
/// sweep skips the slot being written, so no row is modified twice.
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
                 INSERT INTO history (job_id, slot, seq, cursor, items_processed, at)
                 SELECT id, saves % $11, saves, $2, $3, $7 FROM saved WHERE $11 > 0
                 ON CONFLICT (job_id, slot) DO UPDATE SET seq = excluded.seq,
                     cursor = excluded.cursor, items_processed = excluded.items_processed,
                     at = excluded.at
                 RETURNING seq),
             swept AS (
                 DELETE FROM history h USING saved
                 WHERE (saved.saves % $12 = 0 OR $11 = 0) AND h.job_id = saved.id
                   AND h.seq <= saved.saves - $11
                   AND h.slot <> saved.saves % GREATEST($11, 1) RETURNING 1)
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
                &HISTORY_SWEEP_EVERY,
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
