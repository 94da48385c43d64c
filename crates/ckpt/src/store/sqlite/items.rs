//! [`ItemStore`] in SQLite's dialect: the item state machine's values bound
//! into fenced statements (many alike changes share one: see [`batch`]).
//!
//! [`batch`]: super::batch

use rusqlite::{params, OptionalExtension, Transaction};

use super::jobs::{ensure_job, job_id, reopen_job};
use super::patch::apply_patch;
use super::rows::{item_from_row, json_col, status_col, ts, ITEM_COLUMNS};
use super::{sql_err, SqliteStore};
use crate::error::{Error, Result};
use crate::model::{
    ClaimedItem, EnqueueReport, ItemChange, ItemCounts, ItemLease, ItemRecord, ItemStatus,
    ItemUpdate, JobStatus,
};
use crate::store::machine::{status_index_hint, Claim, ItemPatch, ItemState, Redrive};
use crate::store::{ItemStore, ItemStream};
use crate::time::Timestamp;

/// Applies one fenced update: the change's [`ItemPatch`], written by
/// [`apply_patch`].
pub(super) fn apply_update(tx: &Transaction<'_>, u: &ItemUpdate, now: Timestamp) -> Result<()> {
    apply_patch(tx, &u.lease, &ItemPatch::new(&u.change, now))
}

impl ItemStore for SqliteStore {
    fn enqueue(&self, job: &str, items: ItemStream<'_>, now: Timestamp) -> Result<EnqueueReport> {
        let enqueued = ItemState::enqueued();
        self.write(|tx| {
            let id = ensure_job(tx, job, now)?;
            let report = super::batch::insert_items(tx, id, items, now, &enqueued)?;
            if report.inserted > 0 {
                tx.prepare_cached("UPDATE jobs SET items_total = items_total + ?2 WHERE id = ?1")
                    .and_then(|mut s| s.execute(params![id, report.inserted as i64]))
                    .map_err(sql_err)?;
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
        started: bool,
        now: Timestamp,
    ) -> Result<Vec<ClaimedItem>> {
        let claim = Claim {
            owner,
            lease_until,
            now,
            started,
        };
        self.write_unsynced(|tx| {
            let Some(id) = job_id(tx, job)? else {
                return Ok(Vec::new());
            };
            // machine::claimable, as a WHERE clause on the ready index.
            let mut select = tx
                .prepare_cached(
                    "SELECT id, key, payload, cursor, status, owner, attempts, claims, enqueued_at,
                         started_at IS NOT NULL
                     FROM items
                     WHERE job_id = ?1 AND ready_at IS NOT NULL AND ready_at <= ?2
                       AND NOT (status = 'running' AND owner = ?4)
                     ORDER BY ready_at, id LIMIT ?3",
                )
                .map_err(sql_err)?;
            let claimed = select
                .query_map(params![id, now.0, max as i64, owner], |r| {
                    let status = status_col(r, 4, ItemStatus::parse)?;
                    let previous: Option<String> = r.get(5)?;
                    let added = Claim::attempts_added(status, r.get(9)?);
                    Ok((
                        added,
                        ClaimedItem {
                            lease: ItemLease {
                                id: r.get(0)?,
                                owner: owner.to_string(),
                                token: r.get::<_, i64>(7)? as u64 + Claim::CLAIMS_ADDED,
                            },
                            job: job.to_string(),
                            key: r.get(1)?,
                            attempt: (r.get::<_, i64>(6)? as u32).saturating_add(added),
                            payload: json_col(r, 2)?,
                            cursor: json_col(r, 3)?,
                            lease_expires: lease_until,
                            taken_over_from: claim.taken_over_from(status, previous.as_deref()),
                            enqueued_at: Timestamp(r.get(8)?),
                        },
                    ))
                })
                .map_err(sql_err)?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(sql_err)?;
            // One statement for every item that counts an attempt and one
            // for those that do not (see `Claim::attempts_added`).
            let mut update = tx
                .prepare_cached(
                    "UPDATE items SET status = ?2, owner = ?3, attempts = attempts + ?5,
                         claims = claims + ?6, ready_at = ?4, started_at = ?7
                     WHERE id IN (SELECT value FROM json_each(?1))",
                )
                .map_err(sql_err)?;
            let mut adds: Vec<u32> = claimed.iter().map(|(added, _)| *added).collect();
            adds.sort_unstable();
            adds.dedup();
            for add in adds {
                let ids = super::batch::json_list(
                    claimed
                        .iter()
                        .filter(|(added, _)| *added == add)
                        .map(|(_, item)| item.lease.id.to_string()),
                );
                update
                    .execute(params![
                        ids,
                        Claim::STATUS.as_str(),
                        claim.owner,
                        claim.lease_until.0,
                        add,
                        Claim::CLAIMS_ADDED as i64,
                        claim.started_at().map(|t| t.0),
                    ])
                    .map_err(sql_err)?;
            }
            Ok(claimed.into_iter().map(|(_, item)| item).collect())
        })
    }

    fn update_items(&self, updates: &[ItemUpdate], now: Timestamp) -> Result<Vec<Result<()>>> {
        // Lease renewals and start marks alone need no fsync of their own:
        // losing them to power loss shortens a lease (the worker died with
        // the machine anyway) or forgets a start (the attempt is counted at
        // the next start instead).
        let leases_only = updates.iter().all(|u| {
            matches!(
                u.change,
                ItemChange::Heartbeat { .. } | ItemChange::Start { .. }
            )
        });
        let apply_all =
            |tx: &rusqlite::Transaction<'_>| super::batch::apply_updates(tx, updates, now);
        if leases_only {
            self.write_unsynced(apply_all)
        } else {
            self.write(apply_all)
        }
    }

    fn finish_if_done(&self, job: &str, now: Timestamp) -> Result<Option<JobStatus>> {
        // One conditional UPDATE under the write lock: no enqueue can slip
        // in between the check and the status change.
        self.write(|tx| {
            let id = job_id(tx, job)?.ok_or_else(|| Error::NotFound(format!("job '{job}'")))?;
            let status: Option<String> = tx
                .prepare_cached(
                    "UPDATE jobs SET status = new_status,
                         completed_at = CASE WHEN status = new_status THEN completed_at
                             WHEN dead THEN NULL ELSE ?2 END,
                         updated_at = CASE WHEN status = new_status THEN updated_at ELSE ?2 END
                     FROM (SELECT dead, CASE WHEN dead THEN 'failed' ELSE 'completed' END
                               AS new_status
                           FROM (SELECT EXISTS (SELECT 1 FROM items
                               WHERE job_id = ?1 AND status = 'dead') AS dead))
                     WHERE id = ?1 AND NOT EXISTS (SELECT 1 FROM items
                         WHERE job_id = ?1 AND ready_at IS NOT NULL)
                     RETURNING status",
                )
                .and_then(|mut s| s.query_row(params![id, now.0], |r| r.get(0)).optional())
                .map_err(sql_err)?;
            Ok(status.and_then(|s| JobStatus::parse(&s)))
        })
    }

    fn item_counts(&self, job: &str) -> Result<ItemCounts> {
        let conn = self.lock();
        let Some(id) = job_id(&conn, job)? else {
            return Ok(ItemCounts::default());
        };
        // Completed items are counted as the rest of the job's total, so a
        // job of millions of finished items is counted through the small
        // indexes of its unfinished and dead items, not by a scan. One
        // statement, so one snapshot; the total's row has no status.
        let mut stmt = conn
            .prepare_cached(
                "SELECT status, count(*) FROM items
                 WHERE job_id = ?1 AND ready_at IS NOT NULL GROUP BY status
                 UNION ALL
                 SELECT 'dead', count(*) FROM items WHERE job_id = ?1 AND status = 'dead'
                 UNION ALL
                 SELECT NULL, items_total FROM jobs WHERE id = ?1",
            )
            .map_err(sql_err)?;
        let mut counts = ItemCounts::default();
        let mut total = 0;
        let rows = stmt
            .query_map([id], |r| {
                let status = match r.get_ref(0)? {
                    rusqlite::types::ValueRef::Null => None,
                    _ => Some(status_col(r, 0, ItemStatus::parse)?),
                };
                Ok((status, r.get::<_, i64>(1)?))
            })
            .map_err(sql_err)?;
        for row in rows {
            match row.map_err(sql_err)? {
                (Some(status), n) => counts.add(status, n as u64),
                (None, n) => total = n as u64,
            }
        }
        counts.completed =
            total.saturating_sub(counts.pending + counts.running + counts.failed + counts.dead);
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
        self.items_in_order(job, status, limit, "")
    }

    fn last_items(&self, job: &str, status: ItemStatus, limit: usize) -> Result<Vec<ItemRecord>> {
        self.items_in_order(job, Some(status), limit, " DESC")
    }

    fn running_owners(&self, job: &str) -> Result<Vec<String>> {
        let conn = self.lock();
        let Some(id) = job_id(&conn, job)? else {
            return Ok(Vec::new());
        };
        let mut stmt = conn
            .prepare_cached(
                "SELECT DISTINCT owner FROM items WHERE job_id = ?1 AND status = 'running'
                 AND ready_at IS NOT NULL AND owner IS NOT NULL ORDER BY owner",
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
            // machine::expired_ready_at: never later than it was.
            tx.prepare_cached(
                "UPDATE items SET ready_at = min(ready_at, ?3)
                 WHERE job_id = ?1 AND status = 'running' AND ready_at IS NOT NULL
                   AND owner = ?2",
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
            let sql = format!(
                "UPDATE items SET status = ?3, attempts = ?4, ready_at = ?5,
                     finished_at = NULL WHERE job_id = ?1 AND status = ?2{}",
                status_index_hint(from)
            );
            let (status, attempts, ready_at) = (
                Redrive::STATUS.as_str(),
                Redrive::ATTEMPTS,
                Redrive::READY_AT.0,
            );
            let mut moved = 0u64;
            match keys {
                None => {
                    moved += tx
                        .prepare_cached(&sql)
                        .and_then(|mut s| {
                            s.execute(params![id, from.as_str(), status, attempts, ready_at])
                        })
                        .map_err(sql_err)? as u64;
                }
                Some(keys) => {
                    let mut stmt = tx
                        .prepare_cached(&format!("{sql} AND key = ?6"))
                        .map_err(sql_err)?;
                    for key in keys {
                        moved += stmt
                            .execute(params![id, from.as_str(), status, attempts, ready_at, key])
                            .map_err(sql_err)? as u64;
                    }
                }
            }
            if moved > 0 {
                reopen_job(tx, id, now)?;
            }
            Ok(moved)
        })
    }
}

impl SqliteStore {
    /// Items of `job` (of `status`, or all), by id in `direction` (`""`
    /// or `" DESC"`), at most `limit`.
    fn items_in_order(
        &self,
        job: &str,
        status: Option<ItemStatus>,
        limit: usize,
        direction: &str,
    ) -> Result<Vec<ItemRecord>> {
        let conn = self.lock();
        let Some(id) = job_id(&conn, job)? else {
            return Ok(Vec::new());
        };
        let mut stmt = conn
            .prepare_cached(&format!(
                "SELECT {ITEM_COLUMNS} FROM items WHERE job_id = ?1
                 AND (?2 IS NULL OR status = ?2){} ORDER BY id{direction} LIMIT ?3",
                status.map_or("", status_index_hint)
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
}
