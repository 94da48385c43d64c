//! Many fenced item updates in few statements.
//!
//! A runner records a round's starts and outcomes together: hundreds of
//! updates, most of them alike (the starts of one round share their lease
//! expiry, the items of one `-n` batch their outcome and stats). Rather
//! than a statement each (and a row written twice for an item that both
//! started and ended in the round), here
//!
//! - a start and the end of the same attempt, both in the call, become one
//!   update ([`ItemPatch::then`]): the row is written once, not twice;
//! - a run of updates that write the same [`ItemPatch`] under the same
//!   owner is one `UPDATE … WHERE id IN (…)` per claim token they hold
//!   (most often one), fenced on owner and token: when it changes every
//!   row, all stand; otherwise it is undone and one `UPDATE … FROM
//!   json_each(?)` fences each row by its own lease and says which rows it
//!   changed (`RETURNING`); the rest are refused as one update would
//!   refuse them ([`fenced`]).
//!
//! The results are those of applying the updates one by one, in order.
//!
//! An enqueue inserts its items a few thousand to a statement in the same
//! way, from a JSON array of keys and payloads, in input order (so the
//! ids, and with them the claim order, are the input's).

use std::collections::{BTreeMap, HashMap, HashSet};

use rusqlite::{params, Transaction};

use super::patch::{apply_patch, fenced, patch_set, PatchValues};
use super::rows::opt_json;
use super::sql_err;
use crate::error::{Error, Result};
use crate::model::{EnqueueReport, ItemLease, ItemUpdate, NewItem};
use crate::store::machine::{ItemPatch, ItemState};
use crate::store::ItemStream;
use crate::time::Timestamp;

/// Applies `updates` at `now` as if one by one: one result per update,
/// [`Error::Fenced`] for each refused; any other error aborts (the caller
/// rolls back).
pub(super) fn apply_updates(
    tx: &Transaction<'_>,
    updates: &[ItemUpdate],
    now: Timestamp,
) -> Result<Vec<Result<()>>> {
    let mut patches: Vec<Option<ItemPatch>> = updates
        .iter()
        .map(|u| Some(ItemPatch::new(&u.change, now)))
        .collect();
    // `folded[i] = Some(j)`: update i is applied as part of update j.
    let mut folded: Vec<Option<usize>> = vec![None; updates.len()];
    // The last update not folded away, by item.
    let mut last: HashMap<i64, usize> = HashMap::new();
    for i in 0..updates.len() {
        if let Some(&j) = last.get(&updates[i].lease.id) {
            if updates[j].lease == updates[i].lease {
                let (Some(first), Some(next)) = (&patches[j], &patches[i]) else {
                    unreachable!("only folded updates have no patch")
                };
                if let Some(both) = first.then(next) {
                    patches[j] = Some(both);
                    patches[i] = None;
                    folded[i] = Some(j);
                    continue;
                }
            }
        }
        last.insert(updates[i].lease.id, i);
    }
    let mut results: Vec<Option<Result<()>>> = (0..updates.len()).map(|_| None).collect();
    // Runs of alike updates, in order, each item at most once in a run.
    let mut run: Vec<usize> = Vec::new();
    let mut ids: HashSet<i64> = HashSet::new();
    for i in (0..updates.len()).filter(|&i| folded[i].is_none()) {
        let alike = run.first().is_some_and(|&r| {
            patches[r] == patches[i]
                && updates[r].lease.owner == updates[i].lease.owner
                && !ids.contains(&updates[i].lease.id)
        });
        if !alike && !run.is_empty() {
            apply_run(tx, updates, &patches, &run, &mut results)?;
            run.clear();
            ids.clear();
        }
        run.push(i);
        ids.insert(updates[i].lease.id);
    }
    if !run.is_empty() {
        apply_run(tx, updates, &patches, &run, &mut results)?;
    }
    Ok((0..updates.len())
        .map(|i| {
            let at = folded[i].unwrap_or(i);
            match &results[at] {
                Some(Ok(())) => Ok(()),
                Some(Err(Error::Fenced(m))) => Err(Error::Fenced(m.clone())),
                _ => Err(Error::Storage(format!(
                    "update {i} of {} was not applied",
                    updates.len()
                ))),
            }
        })
        .collect())
}

/// Applies the one patch that the updates `run` (alike, each item once)
/// write, fencing each by its own lease.
///
/// The items of a run whose leases share a claim token (most often all of
/// them) are written by one `UPDATE … WHERE id IN (…)` fenced on that
/// token, which counts the rows it changed: if it changed them all, every
/// update succeeded. Otherwise it is undone (a savepoint) and the group is
/// written again by the statement that says which rows it changed, which
/// costs twice as much (`RETURNING`, and a join on each lease's token).
fn apply_run(
    tx: &Transaction<'_>,
    updates: &[ItemUpdate],
    patches: &[Option<ItemPatch>],
    run: &[usize],
    results: &mut [Option<Result<()>>],
) -> Result<()> {
    let Some(p) = &patches[run[0]] else {
        unreachable!("a run holds no folded update")
    };
    if let [one] = run {
        results[*one] = Some(match apply_patch(tx, &updates[*one].lease, p) {
            Err(Error::Fenced(m)) => Err(Error::Fenced(m)),
            Err(other) => return Err(other),
            Ok(()) => Ok(()),
        });
        return Ok(());
    }
    let values = PatchValues::new(p);
    let owner = &updates[run[0]].lease.owner;
    let mut by_token: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
    for &i in run {
        by_token.entry(updates[i].lease.token).or_default().push(i);
    }
    for (token, group) in by_token {
        // Numbers only: no escaping to get wrong.
        let ids = json_list(group.iter().map(|&i| updates[i].lease.id.to_string()));
        let token = token as i64;
        savepoint(tx, "SAVEPOINT ckpt_run")?;
        let changed = tx
            .prepare_cached(concat!(
                "UPDATE items SET ",
                patch_set!(),
                " WHERE id IN (SELECT value FROM json_each(:ids)) AND status = 'running'
                   AND owner = :owner AND claims = :token"
            ))
            .and_then(|mut s| {
                s.execute(
                    values
                        .with(&[(":ids", &ids), (":owner", owner), (":token", &token)])
                        .as_slice(),
                )
            })
            .map_err(sql_err)?;
        if changed == group.len() {
            savepoint(tx, "RELEASE ckpt_run")?;
            for &i in &group {
                results[i] = Some(Ok(()));
            }
            continue;
        }
        savepoint(tx, "ROLLBACK TO ckpt_run")?;
        savepoint(tx, "RELEASE ckpt_run")?;
        apply_fenced_each(tx, updates, &values, owner, &group, results)?;
    }
    Ok(())
}

/// Writes one patch (`values`) into the items of `group`, each fenced by
/// its own lease, and records which updates were refused.
fn apply_fenced_each(
    tx: &Transaction<'_>,
    updates: &[ItemUpdate],
    values: &PatchValues<'_>,
    owner: &str,
    group: &[usize],
    results: &mut [Option<Result<()>>],
) -> Result<()> {
    let leases = json_list(group.iter().map(|&i| {
        let l = &updates[i].lease;
        format!("[{},{}]", l.id, l.token as i64)
    }));
    let mut stmt = tx
        .prepare_cached(concat!(
            "UPDATE items SET ",
            patch_set!(),
            " FROM (SELECT value ->> 0 AS lease_id, value ->> 1 AS lease_token
                   FROM json_each(:leases)) AS l
             WHERE items.id = l.lease_id AND items.status = 'running' AND items.owner = :owner
               AND items.claims = l.lease_token
             RETURNING items.id"
        ))
        .map_err(sql_err)?;
    let changed = stmt
        .query_map(
            values
                .with(&[(":leases", &leases), (":owner", &owner)])
                .as_slice(),
            |r| r.get::<_, i64>(0),
        )
        .map_err(sql_err)?
        .collect::<rusqlite::Result<HashSet<i64>>>()
        .map_err(sql_err)?;
    for &i in group {
        let lease: &ItemLease = &updates[i].lease;
        results[i] = Some(if changed.contains(&lease.id) {
            Ok(())
        } else {
            Err(fenced(tx, lease)?)
        });
    }
    Ok(())
}

/// Runs a savepoint statement (kept prepared: they are run per group).
fn savepoint(tx: &Transaction<'_>, sql: &str) -> Result<()> {
    tx.prepare_cached(sql)
        .and_then(|mut s| s.execute([]))
        .map(drop)
        .map_err(sql_err)
}

/// `[a,b,…]` from JSON texts (numbers, here: nothing to escape).
pub(super) fn json_list(items: impl Iterator<Item = String>) -> String {
    let mut out = String::from("[");
    for (n, item) in items.enumerate() {
        if n > 0 {
            out.push(',');
        }
        out.push_str(&item);
    }
    out.push(']');
    out
}

/// Items one enqueue statement inserts at most.
const INSERT_CHUNK: usize = 4096;

/// Inserts `items` into job `job_id` as `enqueued`, keeping each key that
/// is there already (a key twice in `items` is inserted once): how many
/// were inserted and how many were known.
pub(super) fn insert_items(
    tx: &Transaction<'_>,
    job_id: i64,
    items: ItemStream<'_>,
    now: Timestamp,
    enqueued: &ItemState,
) -> Result<EnqueueReport> {
    let mut report = EnqueueReport::default();
    let mut chunk: Vec<NewItem> = Vec::with_capacity(INSERT_CHUNK);
    let mut items = items.peekable();
    while items.peek().is_some() {
        chunk.clear();
        for item in items.by_ref().take(INSERT_CHUNK) {
            chunk.push(item?);
        }
        let payloads: Vec<Option<String>> =
            chunk.iter().map(|i| opt_json(i.payload.as_ref())).collect();
        let inserted = {
            let rows: Vec<(&str, Option<&str>)> = chunk
                .iter()
                .zip(&payloads)
                .map(|(i, p)| (i.key.as_str(), p.as_deref()))
                .collect();
            let rows = serde_json::to_string(&rows)
                .map_err(|e| Error::Storage(format!("cannot encode the items: {e}")))?;
            // In input order, whatever the plan. `WHERE true`: an
            // INSERT … SELECT with an upsert clause needs a WHERE to parse.
            tx.prepare_cached(
                "INSERT INTO items (job_id, key, payload, status, ready_at, enqueued_at)
                 SELECT ?1, value ->> 0, value ->> 1, ?3, ?4, ?2 FROM json_each(?5)
                 WHERE true ORDER BY json_each.key
                 ON CONFLICT (job_id, key) DO NOTHING",
            )
            .and_then(|mut s| {
                s.execute(params![
                    job_id,
                    now.0,
                    enqueued.status.as_str(),
                    enqueued.ready_at.map(|t| t.0),
                    rows,
                ])
            })
            .map_err(sql_err)?
        };
        report.inserted += inserted as u64;
        report.existing += (chunk.len() - inserted) as u64;
    }
    Ok(report)
}
