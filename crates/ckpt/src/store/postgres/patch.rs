//! Item changes bound into fenced statements: the state machine's
//! [`ItemPatch`] per row, alone or unnested for a batch.

use std::collections::HashSet;

use deadpool_postgres::GenericClient;

use super::conn::{pg_err, Cached};
use super::json;
use crate::error::{Error, Result};
use crate::model::{ItemStatus, ItemUpdate};
use crate::store::machine::ItemPatch;
use crate::store::rules::fenced_item;
use crate::time::Timestamp;

/// Applies one fenced update: its change's [`ItemPatch`] in one statement
/// whose `WHERE` is the fence
/// ([`ItemState::holds`](crate::store::machine::ItemState::holds)); a
/// fenced update changes nothing and says why.
///
/// `session_key` (the writer's current liveness key) replaces the row's
/// `owner_key` when given: a renewal moves the lease to the session it was
/// made under.
pub(super) async fn apply_update(
    c: &impl GenericClient,
    u: &ItemUpdate,
    session_key: Option<i64>,
    now: Timestamp,
) -> Result<()> {
    let l = &u.lease;
    let p = ItemPatch::new(&u.change, now);
    let changed = c
        .cexecute(
            "UPDATE items SET status = $4, ready_at = $5, attempts = GREATEST(attempts - $6, 0),
                 cursor = COALESCE($7, cursor), stats = COALESCE($8, stats),
                 last_error = COALESCE($9, last_error, $15), finished_at = COALESCE($10, finished_at),
                 owner_key = COALESCE($11, owner_key), started_at = COALESCE($12, started_at),
                 command_id = COALESCE($13, command_id),
                 last_output = CASE WHEN $9::TEXT IS NULL THEN last_output ELSE $14 END
             WHERE id = $1 AND status = 'running' AND owner = $2 AND claims = $3",
            &[
                &l.id,
                &l.owner,
                &(l.token as i64),
                &p.status.as_str(),
                &p.ready_at.map(|t| t.0),
                &(p.attempts_back as i32),
                &json::opt(p.cursor.as_ref()),
                &json::opt(p.stats.as_ref()),
                &p.last_error,
                &p.finished_at.map(|t| t.0),
                &session_key,
                &p.started_at.map(|t| t.0),
                &p.command,
                &p.last_output,
                &p.error_unless_recorded,
            ],
        )
        .await
        .map_err(pg_err)?;
    if changed == 1 {
        return Ok(());
    }
    Err(why_fenced(c, l.id).await?)
}

/// The error for an update of item `id` that its fence refused.
async fn why_fenced(c: &impl GenericClient, id: i64) -> Result<Error> {
    let current = c
        .cquery_opt("SELECT key, status, owner FROM items WHERE id = $1", &[&id])
        .await
        .map_err(pg_err)?;
    Ok(match current {
        None => Error::Fenced(format!("item {id} does not exist")),
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

/// Applies updates of distinct items in one statement: each row's
/// [`ItemPatch`] unnested beside its fence, so each row is changed or not
/// on its own. One result per update, in order.
pub(super) async fn update_batch(
    tx: &impl deadpool_postgres::GenericClient,
    updates: &[ItemUpdate],
    session_key: Option<i64>,
    now: Timestamp,
) -> Result<Vec<Result<()>>> {
    let n = updates.len();
    let mut ids = Vec::with_capacity(n);
    let mut owners = Vec::with_capacity(n);
    let mut tokens = Vec::with_capacity(n);
    let mut statuses = Vec::with_capacity(n);
    let mut ready = Vec::with_capacity(n);
    let mut back = Vec::with_capacity(n);
    let mut cursors = Vec::with_capacity(n);
    let mut stats = Vec::with_capacity(n);
    let mut errors = Vec::with_capacity(n);
    let mut finished = Vec::with_capacity(n);
    let mut started = Vec::with_capacity(n);
    let mut commands = Vec::with_capacity(n);
    let mut outputs = Vec::with_capacity(n);
    let mut defaults = Vec::with_capacity(n);
    for u in updates {
        let p = ItemPatch::new(&u.change, now);
        ids.push(u.lease.id);
        owners.push(u.lease.owner.as_str());
        tokens.push(u.lease.token as i64);
        statuses.push(p.status.as_str());
        ready.push(p.ready_at.map(|t| t.0));
        back.push(p.attempts_back as i32);
        cursors.push(p.cursor);
        stats.push(p.stats);
        errors.push(p.last_error);
        finished.push(p.finished_at.map(|t| t.0));
        started.push(p.started_at.map(|t| t.0));
        commands.push(p.command);
        outputs.push(p.last_output);
        defaults.push(p.error_unless_recorded);
    }
    let applied: HashSet<i64> = tx
        .cquery(
            "UPDATE items i SET status = u.status, ready_at = u.ready_at,
                 attempts = GREATEST(i.attempts - u.back, 0),
                 cursor = COALESCE(u.cursor, i.cursor), stats = COALESCE(u.stats, i.stats),
                 last_error = COALESCE(u.last_error, i.last_error, u.error_unless_recorded),
                 finished_at = COALESCE(u.finished_at, i.finished_at),
                 owner_key = COALESCE($11, i.owner_key),
                 started_at = COALESCE(u.started_at, i.started_at),
                 command_id = COALESCE(u.command_id, i.command_id),
                 last_output = CASE WHEN u.last_error IS NULL THEN i.last_output
                                    ELSE u.last_output END
             FROM unnest($1::BIGINT[], $2::TEXT[], $3::BIGINT[], $4::TEXT[], $5::BIGINT[],
                         $6::INT[], $7::JSONB[], $8::JSONB[], $9::TEXT[], $10::BIGINT[],
                         $12::BIGINT[], $13::BIGINT[], $14::TEXT[], $15::TEXT[])
                 AS u(id, owner, token, status, ready_at, back, cursor, stats, last_error,
                      finished_at, started_at, command_id, last_output, error_unless_recorded)
             WHERE i.id = u.id AND i.status = 'running' AND i.owner = u.owner
               AND i.claims = u.token
             RETURNING i.id",
            &[
                &ids,
                &owners,
                &tokens,
                &statuses,
                &ready,
                &back,
                &json::each(cursors),
                &json::each(stats),
                &errors,
                &finished,
                &session_key,
                &started,
                &commands,
                &outputs,
                &defaults,
            ],
        )
        .await
        .map_err(pg_err)?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut results = Vec::with_capacity(n);
    for id in ids {
        results.push(if applied.contains(&id) {
            Ok(())
        } else {
            Err(why_fenced(tx, id).await?)
        });
    }
    Ok(results)
}
