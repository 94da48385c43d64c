//! [`CommandStore`] in PostgreSQL's dialect: the `commands` table and the
//! items' `command_id` (schema 6).

use deadpool_postgres::GenericClient;

use super::conn::{in_tx, pg_err, Cached};
use super::jobs::{ensure_job, job_id, lock_job};
use super::PgStore;
use crate::error::Result;
use crate::model::{CommandRecord, CompletedBy, JobCommands};
use crate::store::machine::Redrive;
use crate::store::CommandStore;
use crate::time::Timestamp;

impl CommandStore for PgStore {
    fn record_command(&self, job: &str, command: &str, now: Timestamp) -> Result<CommandRecord> {
        in_tx!(self, |tx| {
            // The job row's lock (taken by `ensure_job`) orders writers of
            // its commands, so the next id (max + 1) is never taken twice.
            let id = ensure_job(tx, job, now).await?;
            let row = tx
                .cquery_one(
                    "INSERT INTO commands (job_id, id, command, first_used, last_used)
                     SELECT $1, COALESCE(max(id), 0) + 1, $2, $3, $3
                     FROM commands WHERE job_id = $1
                     ON CONFLICT (job_id, command) DO UPDATE
                         SET last_used = GREATEST(commands.last_used, excluded.last_used)
                     RETURNING id, first_used, last_used,
                         (SELECT count(*) FROM items i WHERE i.job_id = $1
                              AND i.status = 'completed' AND i.command_id = commands.id)",
                    &[&id, &command, &now.0],
                )
                .await
                .map_err(pg_err)?;
            Ok(CommandRecord {
                id: row.get(0),
                command: command.to_string(),
                first_used: Timestamp(row.get(1)),
                last_used: Timestamp(row.get(2)),
                completed: row.get::<_, i64>(3) as u64,
            })
        })
    }

    fn commands(&self, job: &str) -> Result<JobCommands> {
        in_tx!(self, |tx| {
            // One snapshot for the commands and their counts.
            tx.batch_execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                .await
                .map_err(pg_err)?;
            let Some(id) = job_id(tx, job).await? else {
                return Ok(JobCommands::default());
            };
            let counts: Vec<(Option<i64>, i64)> = tx
                .cquery(
                    "SELECT command_id, count(*) FROM items
                     WHERE job_id = $1 AND status = 'completed' GROUP BY command_id",
                    &[&id],
                )
                .await
                .map_err(pg_err)?
                .iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect();
            let count = |c: Option<i64>| {
                counts
                    .iter()
                    .find(|(id, _)| *id == c)
                    .map_or(0, |(_, n)| *n as u64)
            };
            let commands = tx
                .cquery(
                    "SELECT id, command, first_used, last_used FROM commands
                     WHERE job_id = $1 ORDER BY id",
                    &[&id],
                )
                .await
                .map_err(pg_err)?
                .iter()
                .map(|r| CommandRecord {
                    id: r.get(0),
                    command: r.get(1),
                    first_used: Timestamp(r.get(2)),
                    last_used: Timestamp(r.get(3)),
                    completed: count(Some(r.get(0))),
                })
                .collect();
            Ok(JobCommands {
                commands,
                unknown: count(None),
            })
        })
    }

    fn redrive_completed(&self, job: &str, by: CompletedBy, now: Timestamp) -> Result<u64> {
        in_tx!(self, |tx| {
            // Locked as `redrive` does, so `finish_if_done` never marks the
            // job done half-way through.
            let id = lock_job(tx, job).await?;
            let (filter, command) = match by {
                CompletedBy::Command(c) => ("command_id = $5", Some(c)),
                CompletedBy::Unknown => ("command_id IS NULL AND $5::BIGINT IS NULL", None),
                CompletedBy::NotCommand(c) => ("command_id IS DISTINCT FROM $5", Some(c)),
            };
            let moved = tx
                .cexecute(
                    &format!(
                        "UPDATE items SET status = $2, attempts = $3, ready_at = $4,
                             finished_at = NULL, command_id = NULL
                         WHERE job_id = $1 AND status = 'completed' AND {filter}"
                    ),
                    &[
                        &id,
                        &Redrive::STATUS.as_str(),
                        &(Redrive::ATTEMPTS as i32),
                        &Redrive::READY_AT.0,
                        &command,
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
