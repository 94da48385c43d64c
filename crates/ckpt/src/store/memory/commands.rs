//! [`CommandStore`] in memory: the job row holds its commands; counts are
//! read from its items.

use super::MemoryStore;
use crate::error::{Error, Result};
use crate::model::{CommandRecord, CompletedBy, ItemId, ItemStatus, JobCommands};
use crate::store::CommandStore;
use crate::time::Timestamp;

impl CommandStore for MemoryStore {
    fn record_command(&self, job: &str, command: &str, now: Timestamp) -> Result<CommandRecord> {
        let mut g = self.lock();
        let row = g.job_entry(job, now);
        let at = match row.commands.iter().position(|c| c.command == command) {
            Some(at) => {
                row.commands[at].last_used = now;
                at
            }
            None => {
                row.commands.push(CommandRecord {
                    id: row.commands.len() as i64 + 1,
                    command: command.to_string(),
                    first_used: now,
                    last_used: now,
                    completed: 0,
                });
                row.commands.len() - 1
            }
        };
        let mut record = row.commands[at].clone();
        record.completed = g.completed_by(job, CompletedBy::Command(record.id)).len() as u64;
        Ok(record)
    }

    fn commands(&self, job: &str) -> Result<JobCommands> {
        let g = self.lock();
        let Some(row) = g.jobs.get(job) else {
            return Ok(JobCommands::default());
        };
        let commands = row
            .commands
            .iter()
            .map(|c| CommandRecord {
                completed: g.completed_by(job, CompletedBy::Command(c.id)).len() as u64,
                ..c.clone()
            })
            .collect();
        Ok(JobCommands {
            commands,
            unknown: g.completed_by(job, CompletedBy::Unknown).len() as u64,
        })
    }

    fn redrive_completed(&self, job: &str, by: CompletedBy, now: Timestamp) -> Result<u64> {
        let mut g = self.lock();
        if !g.jobs.contains_key(job) {
            return Err(Error::NotFound(format!("job '{job}'")));
        }
        let ids = g.completed_by(job, by);
        g.redrive_items(job, &ids, now)
    }
}

impl super::Inner {
    /// The job's completed items that `by` selects.
    fn completed_by(&self, job: &str, by: CompletedBy) -> Vec<ItemId> {
        self.item_ids(job)
            .iter()
            .copied()
            .filter(|id| {
                let s = &self.item(*id).state;
                s.status == ItemStatus::Completed && by.selects(s.command)
            })
            .collect()
    }
}
