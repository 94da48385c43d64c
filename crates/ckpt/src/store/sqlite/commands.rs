//! [`CommandStore`] in SQLite's dialect: the `commands` table and the
//! items' `command_id`.

use rusqlite::{params, Connection, OptionalExtension};

use super::jobs::{ensure_job, job_id, reopen_job};
use super::rows::{command_from_row, COMMAND_COLUMNS};
use super::{sql_err, SqliteStore};
use crate::error::{Error, Result};
use crate::model::{CommandRecord, CompletedBy, JobCommands};
use crate::store::machine::Redrive;
use crate::store::CommandStore;
use crate::time::Timestamp;

/// Completed items of job `id` by command (`None`: unknown).
fn completed_counts(conn: &Connection, id: i64) -> Result<Vec<(Option<i64>, u64)>> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT command_id, count(*) FROM items
             WHERE job_id = ?1 AND status = 'completed' GROUP BY command_id",
        )
        .map_err(sql_err)?;
    let rows = stmt
        .query_map([id], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))
        .map_err(sql_err)?;
    rows.collect::<std::result::Result<_, _>>().map_err(sql_err)
}

fn count_of(counts: &[(Option<i64>, u64)], command: Option<i64>) -> u64 {
    counts
        .iter()
        .find(|(c, _)| *c == command)
        .map_or(0, |(_, n)| *n)
}

impl CommandStore for SqliteStore {
    fn record_command(&self, job: &str, command: &str, now: Timestamp) -> Result<CommandRecord> {
        self.write(|tx| {
            let id = ensure_job(tx, job, now)?;
            let existing: Option<(i64, i64, i64)> = tx
                .prepare_cached(
                    "UPDATE commands SET last_used = max(last_used, ?3)
                     WHERE job_id = ?1 AND command = ?2 RETURNING id, first_used, last_used",
                )
                .and_then(|mut s| {
                    s.query_row(params![id, command, now.0], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                    })
                    .optional()
                })
                .map_err(sql_err)?;
            let (cid, first, last) = match existing {
                Some(found) => found,
                None => tx
                    .prepare_cached(
                        "INSERT INTO commands (job_id, id, command, first_used, last_used)
                         SELECT ?1, coalesce(max(id), 0) + 1, ?2, ?3, ?3
                         FROM commands WHERE job_id = ?1 RETURNING id, first_used, last_used",
                    )
                    .and_then(|mut s| {
                        s.query_row(params![id, command, now.0], |r| {
                            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                        })
                    })
                    .map_err(sql_err)?,
            };
            let completed: i64 = tx
                .prepare_cached(
                    "SELECT count(*) FROM items
                     WHERE job_id = ?1 AND status = 'completed' AND command_id = ?2",
                )
                .and_then(|mut s| s.query_row(params![id, cid], |r| r.get(0)))
                .map_err(sql_err)?;
            Ok(CommandRecord {
                id: cid,
                command: command.to_string(),
                first_used: Timestamp(first),
                last_used: Timestamp(last),
                completed: completed as u64,
            })
        })
    }

    fn commands(&self, job: &str) -> Result<JobCommands> {
        // One connection, no write between the reads: one snapshot.
        let conn = self.lock();
        let Some(id) = job_id(&conn, job)? else {
            return Ok(JobCommands::default());
        };
        let counts = completed_counts(&conn, id)?;
        let mut stmt = conn
            .prepare_cached(&format!(
                "SELECT {COMMAND_COLUMNS} FROM commands WHERE job_id = ?1 ORDER BY id"
            ))
            .map_err(sql_err)?;
        let commands = stmt
            .query_map([id], command_from_row)
            .map_err(sql_err)?
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(sql_err)?
            .into_iter()
            .map(|c| CommandRecord {
                completed: count_of(&counts, Some(c.id)),
                ..c
            })
            .collect();
        Ok(JobCommands {
            commands,
            unknown: count_of(&counts, None),
        })
    }

    fn redrive_completed(&self, job: &str, by: CompletedBy, now: Timestamp) -> Result<u64> {
        self.write(|tx| {
            let id = job_id(tx, job)?.ok_or_else(|| Error::NotFound(format!("job '{job}'")))?;
            let (filter, command) = match by {
                CompletedBy::Command(c) => ("command_id = ?5", Some(c)),
                CompletedBy::Unknown => ("command_id IS NULL AND ?5 IS NULL", None),
                CompletedBy::NotCommand(c) => ("command_id IS NOT ?5", Some(c)),
            };
            let moved = tx
                .prepare_cached(&format!(
                    "UPDATE items SET status = ?2, attempts = ?3, ready_at = ?4,
                         finished_at = NULL, command_id = NULL
                     WHERE job_id = ?1 AND status = 'completed' AND {filter}"
                ))
                .and_then(|mut s| {
                    s.execute(params![
                        id,
                        Redrive::STATUS.as_str(),
                        Redrive::ATTEMPTS,
                        Redrive::READY_AT.0,
                        command
                    ])
                })
                .map_err(sql_err)? as u64;
            if moved > 0 {
                reopen_job(tx, id, now)?;
            }
            Ok(moved)
        })
    }
}
