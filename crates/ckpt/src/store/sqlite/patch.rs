//! One fenced write of an [`ItemPatch`] into one item, and why a fenced
//! write changed nothing: shared by the single updates
//! ([`apply_update`](super::items::apply_update)) and the set-based ones
//! ([`batch`](super::batch)).

use rusqlite::{OptionalExtension, ToSql, Transaction};

use super::rows::opt_json;
use super::sql_err;
use crate::error::{Error, Result};
use crate::model::{ItemLease, ItemStatus};
use crate::store::machine::ItemPatch;
use crate::store::rules::fenced_item;

/// The `SET` list that writes an [`ItemPatch`], with the named parameters
/// [`PatchValues::with`] binds. A macro, so that the statements built on it
/// stay literals (the keys of the statement cache).
macro_rules! patch_set {
    () => {
        "status = :status, ready_at = :ready_at, attempts = max(attempts - :attempts_back, 0),
         cursor = coalesce(:cursor, cursor), stats = coalesce(:stats, stats),
         last_error = coalesce(:last_error, last_error, :error_unless_recorded),
         finished_at = coalesce(:finished_at, finished_at),
         started_at = coalesce(:started_at, started_at),
         command_id = coalesce(:command, command_id),
         last_output = CASE WHEN :last_error IS NULL THEN last_output ELSE :last_output END"
    };
}
pub(super) use patch_set;

/// An [`ItemPatch`] as the values of [`patch_set!`]'s parameters.
pub(super) struct PatchValues<'p> {
    patch: &'p ItemPatch,
    status: &'static str,
    ready_at: Option<i64>,
    cursor: Option<String>,
    stats: Option<String>,
    finished_at: Option<i64>,
    started_at: Option<i64>,
}

impl<'p> PatchValues<'p> {
    pub(super) fn new(p: &'p ItemPatch) -> PatchValues<'p> {
        PatchValues {
            patch: p,
            status: p.status.as_str(),
            ready_at: p.ready_at.map(|t| t.0),
            cursor: opt_json(p.cursor.as_ref()),
            stats: opt_json(p.stats.as_ref()),
            finished_at: p.finished_at.map(|t| t.0),
            started_at: p.started_at.map(|t| t.0),
        }
    }

    /// A statement's own named parameters, followed by the patch's.
    pub(super) fn with<'s>(
        &'s self,
        own: &[(&'static str, &'s dyn ToSql)],
    ) -> Vec<(&'static str, &'s dyn ToSql)> {
        let p = self.patch;
        let mut all = own.to_vec();
        all.extend([
            (":status", &self.status as &dyn ToSql),
            (":ready_at", &self.ready_at),
            (":attempts_back", &p.attempts_back),
            (":cursor", &self.cursor),
            (":stats", &self.stats),
            (":last_error", &p.last_error),
            (":error_unless_recorded", &p.error_unless_recorded),
            (":finished_at", &self.finished_at),
            (":started_at", &self.started_at),
            (":command", &p.command),
            (":last_output", &p.last_output),
        ]);
        all
    }
}

/// Writes `p` into the item held under `l`, in one statement whose `WHERE`
/// is the fence ([`ItemState::holds`]); a fenced write changes nothing and
/// says why.
///
/// [`ItemState::holds`]: crate::store::machine::ItemState::holds
pub(super) fn apply_patch(tx: &Transaction<'_>, l: &ItemLease, p: &ItemPatch) -> Result<()> {
    let values = PatchValues::new(p);
    let token = l.token as i64;
    let changed = tx
        .prepare_cached(concat!(
            "UPDATE items SET ",
            patch_set!(),
            " WHERE id = :id AND status = 'running' AND owner = :owner AND claims = :token"
        ))
        .and_then(|mut s| {
            s.execute(
                values
                    .with(&[(":id", &l.id), (":owner", &l.owner), (":token", &token)])
                    .as_slice(),
            )
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
