//! One fenced write of an [`ItemPatch`] into one item, and why a fenced
//! write changed nothing: shared by the single updates
//! ([`apply_update`](super::items::apply_update)) and the set-based ones
//! ([`batch`](super::batch)).

use rusqlite::{params, OptionalExtension, Transaction};

use super::rows::opt_json;
use super::sql_err;
use crate::error::{Error, Result};
use crate::model::{ItemLease, ItemStatus};
use crate::store::machine::ItemPatch;
use crate::store::rules::fenced_item;

/// Writes `p` into the item held under `l`, in one statement whose `WHERE`
/// is the fence ([`ItemState::holds`]); a fenced write changes nothing and
/// says why.
///
/// [`ItemState::holds`]: crate::store::machine::ItemState::holds
pub(super) fn apply_patch(tx: &Transaction<'_>, l: &ItemLease, p: &ItemPatch) -> Result<()> {
    let changed = tx
        .prepare_cached(
            "UPDATE items SET status = ?4, ready_at = ?5, attempts = max(attempts - ?6, 0),
                 cursor = coalesce(?7, cursor), stats = coalesce(?8, stats),
                 last_error = coalesce(?9, last_error), finished_at = coalesce(?10, finished_at),
                 started_at = coalesce(?11, started_at), command_id = coalesce(?12, command_id),
                 last_output = CASE WHEN ?9 IS NULL THEN last_output ELSE ?13 END
             WHERE id = ?1 AND status = 'running' AND owner = ?2 AND claims = ?3",
        )
        .and_then(|mut s| {
            s.execute(params![
                l.id,
                l.owner,
                l.token as i64,
                p.status.as_str(),
                p.ready_at.map(|t| t.0),
                p.attempts_back,
                opt_json(p.cursor.as_ref()),
                opt_json(p.stats.as_ref()),
                p.last_error,
                p.finished_at.map(|t| t.0),
                p.started_at.map(|t| t.0),
                p.command,
                p.last_output,
            ])
        })
        .map_err(sql_err)?;
    if changed == 1 {
        return Ok(());
    }
    Err(fenced(tx, l)?)
}

/// Why a fenced update under `l` changed nothing: the item is gone, or is
/// not running under that lease.
pub(super) fn fenced(tx: &Transaction<'_>, l: &ItemLease) -> Result<Error> {
    let current: Option<(String, String, Option<String>)> = tx
        .prepare_cached("SELECT key, status, owner FROM items WHERE id = ?1")
        .and_then(|mut s| {
            s.query_row([l.id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .optional()
        })
        .map_err(sql_err)?;
    Ok(match current {
        None => Error::Fenced(format!("item {} does not exist", l.id)),
        Some((key, status, owner)) => fenced_item(
            &key,
            ItemStatus::parse(&status).unwrap_or(ItemStatus::Pending),
            owner.as_deref(),
        ),
    })
}
