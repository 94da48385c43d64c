//! [`CommandStore`] in Redis: each job's `commands` hash (id to a JSON
//! record) and an item record's `command`, in scripts of their own.

use serde::Deserialize;

use super::rows::{int, string, tagged};
use super::{conn::unexpected, scripts, RedisStore};
use crate::error::{Error, Result};
use crate::model::{CommandRecord, CompletedBy, JobCommands};
use crate::store::machine::Redrive;
use crate::store::CommandStore;
use crate::time::Timestamp;

/// A command as the scripts store it (times as strings, like items).
#[derive(Deserialize)]
struct StoredCommand {
    command: String,
    first_used: String,
    last_used: String,
}

fn parse(text: &str) -> Result<i64> {
    text.parse()
        .map_err(|_| Error::Storage(format!("malformed number {text:?} in a command record")))
}

impl CommandStore for RedisStore {
    fn record_command(&self, job: &str, command: &str, now: Timestamp) -> Result<CommandRecord> {
        let reply = self.call(
            &scripts::RECORD_COMMAND,
            vec![job.to_string(), command.to_string(), now.0.to_string()],
        )?;
        match tagged(&reply)? {
            (tag, [id, first, last, done]) if tag == "ok" => Ok(CommandRecord {
                id: parse(&string(id)?)?,
                command: command.to_string(),
                first_used: Timestamp(parse(&string(first)?)?),
                last_used: Timestamp(parse(&string(last)?)?),
                completed: int(done)? as u64,
            }),
            (tag, _) => Err(unexpected(&tag)),
        }
    }

    fn commands(&self, job: &str) -> Result<JobCommands> {
        let reply = self.call(&scripts::COMMANDS, vec![job.to_string()])?;
        let (tag, rest) = tagged(&reply)?;
        let Some((unknown, rest)) = rest.split_first().filter(|_| tag == "ok") else {
            return Err(unexpected(&tag));
        };
        let mut commands = rest
            .chunks(3)
            .map(|c| match c {
                [id, raw, done] => {
                    let raw = string(raw)?;
                    let s: StoredCommand = serde_json::from_str(&raw).map_err(|e| {
                        Error::Storage(format!("malformed command record {raw:?}: {e}"))
                    })?;
                    Ok(CommandRecord {
                        id: parse(&string(id)?)?,
                        command: s.command,
                        first_used: Timestamp(parse(&s.first_used)?),
                        last_used: Timestamp(parse(&s.last_used)?),
                        completed: int(done)? as u64,
                    })
                }
                _ => Err(unexpected("a command list of odd length")),
            })
            .collect::<Result<Vec<_>>>()?;
        commands.sort_by_key(|c| c.id);
        Ok(JobCommands {
            commands,
            unknown: int(unknown)? as u64,
        })
    }

    fn redrive_completed(&self, job: &str, by: CompletedBy, now: Timestamp) -> Result<u64> {
        let (mode, id) = match by {
            CompletedBy::Command(id) => ("is", id),
            CompletedBy::Unknown => ("unknown", 0),
            CompletedBy::NotCommand(id) => ("not", id),
        };
        let reply = self.call(
            &scripts::REDRIVE_COMPLETED,
            vec![
                job.to_string(),
                now.0.to_string(),
                mode.to_string(),
                id.to_string(),
                Redrive::STATUS.as_str().to_string(),
                Redrive::ATTEMPTS.to_string(),
            ],
        )?;
        match tagged(&reply)? {
            (tag, _) if tag == "notfound" => Err(Error::NotFound(format!("job '{job}'"))),
            _ => Self::ok_count(&reply),
        }
    }
}
