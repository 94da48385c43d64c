//! Writing a job's checkpoint and its history ring, fenced on the job's
//! lease; shared by saves, operator writes, group commit and caller
//! transactions.

use deadpool_postgres::GenericClient;

use super::conn::{pg_err, Cached};
use super::json::{self, PgJson};
use crate::error::{Error, Result};
use crate::model::{Checkpoint, JobLease};
use crate::store::rules::fenced_job;
use crate::time::Timestamp;

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
    // `checkpoint_at` never steps back, and the history entry takes it:
    // history follows commit order even when this writer read its `now`
    // before an earlier commit's.
    let row = c
        .cquery_one(
            "UPDATE jobs SET cursor = $2, items_processed = $3, stage = $4, state = $5,
                 state_bytes = $6, checkpoint_at = GREATEST($7, checkpoint_at), updated_at = $7,
                 saves = saves + 1,
                 completed_at = CASE status WHEN 'completed' THEN NULL ELSE completed_at END,
                 status = CASE status WHEN 'completed' THEN 'running' ELSE status END
             WHERE id = $1 RETURNING saves, checkpoint_at",
            &[
                &job_id,
                &PgJson(&cp.cursor),
                &(cp.items_processed as i64),
                &cp.stage,
                &json::opt(cp.state.as_ref()),
                &state_bytes,
                &now.0,
            ],
        )
        .await
        .map_err(pg_err)?;
    let (saves, at): (i64, i64) = (row.get(0), row.get(1));
    let keep = i64::try_from(history_keep).unwrap_or(i64::MAX);
    if keep == 0 {
        c.cexecute("DELETE FROM history WHERE job_id = $1", &[&job_id])
            .await
            .map_err(pg_err)?;
        return Ok(());
    }
    // One statement, as in `save_fenced`: the ring write and the sweep
    // (which skips the slot being written).
    c.cexecute(
        "WITH appended AS (
             INSERT INTO history (job_id, slot, seq, cursor, items_processed, at)
             VALUES ($1, $2::BIGINT % $6::BIGINT, $2, $3, $4, $5)
             ON CONFLICT (job_id, slot) DO UPDATE SET seq = excluded.seq,
                 cursor = excluded.cursor, items_processed = excluded.items_processed,
                 at = excluded.at
             RETURNING seq)
         DELETE FROM history h
         WHERE ($2::BIGINT % $7::BIGINT = 0 OR EXISTS (SELECT 1 FROM history s
                 WHERE s.job_id = $1 AND s.slot >= $6))
           AND h.job_id = $1 AND h.seq <= $2 - $6 AND h.slot <> $2::BIGINT % $6::BIGINT",
        &[
            &job_id,
            &saves,
            &PgJson(&cp.cursor),
            &(cp.items_processed as i64),
            &at,
            &keep,
            &HISTORY_SWEEP_EVERY,
        ],
    )
    .await
    .map_err(pg_err)?;
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
/// by schema v3) are swept by every save while there are any (an index
/// probe finds them), so the history holds no more than `history_keep`
/// entries after the first save under a smaller bound. Every this many
/// saves the sweep runs regardless.
///
/// A bound that grows keeps the slots: the first saves under the larger
/// bound overwrite entries of the smaller ring, so the history may miss up
/// to the old bound's entries from before the change, once.
pub(super) const HISTORY_SWEEP_EVERY: i64 = 256;

/// Saves a checkpoint in one statement, so one round trip (and, outside a
/// transaction, one commit): the fenced UPDATE (which is the fencing check),
/// the history write into its ring slot and, when due (see
/// [`HISTORY_SWEEP_EVERY`]), the sweep. All see the same snapshot; the
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
                     state_bytes = $6, checkpoint_at = GREATEST($7, checkpoint_at),
                     updated_at = $7, saves = saves + 1, lease_expires = $8,
                     completed_at = CASE status WHEN 'completed' THEN NULL ELSE completed_at END,
                     status = CASE status WHEN 'completed' THEN 'running' ELSE status END
                 WHERE name = $1 AND owner = $9 AND epoch = $10
                 RETURNING id, saves, checkpoint_at),
             appended AS (
                 INSERT INTO history (job_id, slot, seq, cursor, items_processed, at)
                 SELECT id, saves % $11, saves, $2, $3, checkpoint_at FROM saved WHERE $11 > 0
                 ON CONFLICT (job_id, slot) DO UPDATE SET seq = excluded.seq,
                     cursor = excluded.cursor, items_processed = excluded.items_processed,
                     at = excluded.at
                 RETURNING seq),
             swept AS (
                 DELETE FROM history h USING saved
                 WHERE (saved.saves % $12 = 0 OR $11 = 0 OR EXISTS (SELECT 1 FROM history s
                         WHERE s.job_id = saved.id AND s.slot >= $11))
                   AND h.job_id = saved.id
                   AND h.seq <= saved.saves - $11
                   AND CASE WHEN $11 = 0 THEN true ELSE h.slot <> saved.saves % $11 END
                 RETURNING 1)
             SELECT id FROM saved",
            &[
                &lease.job,
                &PgJson(&checkpoint.cursor),
                &(checkpoint.items_processed as i64),
                &checkpoint.stage,
                &json::opt(checkpoint.state.as_ref()),
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
