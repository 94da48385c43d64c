//! [`JobStore`] on Redis: each operation one script (see `lua/`).

use redis::Value;

use super::conn::{count_arg, to_json, unexpected};
use super::rows::{int, job_record, opt_arg, string, tagged, text};
use super::scripts::{self, Lua};
use super::RedisStore;
use crate::error::{Error, Result};
use crate::model::{Checkpoint, Expect, HistoryEntry, JobLease, JobRecord, JobStatus};
use crate::store::rules::{busy, cursor_mismatch, fenced_job};
use crate::store::JobStore;
use crate::time::Timestamp;

/// The size of a checkpoint's serialised state, as the other stores count it.
fn state_bytes(cp: &Checkpoint) -> u64 {
    cp.state
        .as_ref()
        .map(|s| serde_json::to_vec(s).map_or(0, |v| v.len()) as u64)
        .unwrap_or(0)
}

/// The arguments describing a checkpoint: cursor, items processed, stage,
/// state and its size.
fn checkpoint_args(cp: &Checkpoint) -> Result<Vec<String>> {
    let state = cp.state.as_ref().map(to_json).transpose()?;
    Ok(vec![
        to_json(&cp.cursor)?,
        cp.items_processed.to_string(),
        opt_arg(cp.stage.as_deref()),
        opt_arg(state.as_deref()),
        state_bytes(cp).to_string(),
    ])
}

impl RedisStore {
    /// Runs a fenced job script: `ok`, or the fencing error.
    fn fenced_call(&self, lua: &Lua, lease: &JobLease, more: Vec<String>) -> Result<()> {
        let mut args = vec![
            lease.job.clone(),
            lease.owner.clone(),
            lease.epoch.to_string(),
        ];
        args.extend(more);
        let reply = self.call(lua, args)?;
        let (tag, rest) = tagged(&reply)?;
        match tag.as_str() {
            "ok" => Ok(()),
            "fenced" => Err(match rest {
                [] => fenced_job(lease, None),
                [epoch, owner, ..] => {
                    let owner = text(owner)?;
                    fenced_job(lease, Some((int(epoch)? as u64, owner.as_deref())))
                }
                _ => return Err(unexpected("fenced")),
            }),
            other => Err(unexpected(other)),
        }
    }

    /// A reply of `ok` with a job record, or `busy` with the holder's.
    fn record_or_busy(&self, reply: &Value, now: Timestamp) -> Result<JobRecord> {
        let (tag, rest) = tagged(reply)?;
        match (tag.as_str(), rest) {
            ("ok", [record]) => job_record(record),
            ("busy", [record]) => Err(busy(&job_record(record)?, now)),
            (other, _) => Err(unexpected(other)),
        }
    }
}

impl JobStore for RedisStore {
    fn ensure_job(&self, job: &str, now: Timestamp) -> Result<()> {
        let reply = self.call(
            &scripts::ENSURE_JOB,
            vec![job.to_string(), now.0.to_string()],
        )?;
        tagged(&reply).map(drop)
    }

    fn acquire_job(
        &self,
        job: &str,
        owner: &str,
        lease_until: Timestamp,
        steal_from: Option<&str>,
        now: Timestamp,
    ) -> Result<(JobLease, JobRecord)> {
        let reply = self.call(
            &scripts::ACQUIRE_JOB,
            vec![
                job.to_string(),
                owner.to_string(),
                lease_until.0.to_string(),
                opt_arg(steal_from),
                now.0.to_string(),
            ],
        )?;
        let record = self.record_or_busy(&reply, now)?;
        let lease = JobLease {
            job: job.to_string(),
            owner: owner.to_string(),
            epoch: record.epoch,
        };
        Ok((lease, record))
    }

    fn renew_job(&self, lease: &JobLease, lease_until: Timestamp, now: Timestamp) -> Result<()> {
        self.fenced_call(
            &scripts::RENEW_JOB,
            lease,
            vec![lease_until.0.to_string(), now.0.to_string()],
        )
    }

    fn save_checkpoint(
        &self,
        lease: &JobLease,
        checkpoint: &Checkpoint,
        history_keep: usize,
        lease_until: Timestamp,
        now: Timestamp,
    ) -> Result<()> {
        let mut args = checkpoint_args(checkpoint)?;
        args.extend([
            count_arg(history_keep),
            lease_until.0.to_string(),
            now.0.to_string(),
        ]);
        self.fenced_call(&scripts::SAVE_CHECKPOINT, lease, args)
    }

    fn finish_job(
        &self,
        lease: &JobLease,
        status: JobStatus,
        error: Option<&str>,
        now: Timestamp,
    ) -> Result<()> {
        self.fenced_call(
            &scripts::FINISH_JOB,
            lease,
            vec![
                status.as_str().to_string(),
                opt_arg(error),
                now.0.to_string(),
            ],
        )
    }

    fn release_job(&self, lease: &JobLease, now: Timestamp) -> Result<()> {
        self.fenced_call(&scripts::RELEASE_JOB, lease, vec![now.0.to_string()])
    }

    fn put_checkpoint(
        &self,
        job: &str,
        checkpoint: Option<&Checkpoint>,
        expect: &Expect,
        history_keep: usize,
        steal_from: Option<&str>,
        now: Timestamp,
    ) -> Result<()> {
        let mut args = vec![job.to_string()];
        match checkpoint {
            Some(cp) => {
                args.push("1".to_string());
                args.extend(checkpoint_args(cp)?);
            }
            None => args.extend(["0", "null", "0", "", "", "0"].map(String::from)),
        }
        args.extend([
            count_arg(history_keep),
            opt_arg(steal_from),
            now.0.to_string(),
        ]);
        args.extend(match expect {
            Expect::Anything => ["any".to_string(), String::new()],
            Expect::NoCheckpoint => ["none".to_string(), String::new()],
            Expect::Cursor(v) => ["cursor".to_string(), to_json(v)?],
        });
        let reply = self.call(&scripts::PUT_CHECKPOINT, args)?;
        match tagged(&reply)? {
            (tag, _) if tag == "ok" => Ok(()),
            (tag, stored) if tag == "mismatch" => Err(cursor_mismatch(
                job,
                stored.first().map(string).transpose()?,
                expect,
            )),
            (tag, _) if tag == "notfound" => Err(Error::NotFound(format!("job '{job}'"))),
            (tag, [record]) if tag == "busy" => Err(busy(&job_record(record)?, now)),
            (tag, _) => Err(unexpected(&tag)),
        }
    }

    fn get_job(&self, job: &str) -> Result<Option<JobRecord>> {
        let reply = self.call(&scripts::GET_JOB, vec![job.to_string()])?;
        match tagged(&reply)? {
            (tag, [record]) if tag == "ok" => job_record(record).map(Some),
            (tag, _) if tag == "notfound" => Ok(None),
            (tag, _) => Err(unexpected(&tag)),
        }
    }

    fn list_jobs(&self) -> Result<Vec<JobRecord>> {
        let reply = self.call(&scripts::LIST_JOBS, Vec::new())?;
        match tagged(&reply)? {
            (tag, records) if tag == "ok" => records.iter().map(job_record).collect(),
            (tag, _) => Err(unexpected(&tag)),
        }
    }

    fn history(&self, job: &str, limit: usize) -> Result<Vec<HistoryEntry>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let reply = self.call(&scripts::HISTORY, vec![job.to_string(), count_arg(limit)])?;
        match tagged(&reply)? {
            (tag, entries) if tag == "ok" => {
                entries.iter().map(|e| history_entry(&string(e)?)).collect()
            }
            (tag, _) => Err(unexpected(&tag)),
        }
    }

    fn truncate_history(&self, job: &str, keep: usize) -> Result<u64> {
        let reply = self.call(
            &scripts::TRUNCATE_HISTORY,
            vec![job.to_string(), count_arg(keep)],
        )?;
        match tagged(&reply)? {
            (tag, _) if tag == "notfound" => Err(Error::NotFound(format!("job '{job}'"))),
            _ => Self::ok_count(&reply),
        }
    }

    fn delete_job(&self, job: &str, completed_before: Timestamp) -> Result<bool> {
        let reply = self.call(
            &scripts::DELETE_JOB,
            vec![job.to_string(), completed_before.0.to_string()],
        )?;
        Ok(Self::ok_count(&reply)? == 1)
    }
}

/// A history entry as `write_checkpoint` (lua/common.lua) writes it:
/// `{"seq":N,"cursor":CURSOR,"items_processed":N,"at":N}`. Read by that
/// layout, so that a cursor nested as deep as a stored value may be
/// ([`MAX_JSON_NESTING`](crate::validate::MAX_JSON_NESTING)) reads back:
/// inside the entry's object it is one level past what `serde_json` reads.
fn history_entry(text: &str) -> Result<HistoryEntry> {
    let bad = |why: &dyn std::fmt::Display| {
        Error::Storage(format!("malformed history entry in the Redis store: {why}"))
    };
    let parts = text
        .strip_prefix("{\"seq\":")
        .and_then(|rest| rest.split_once(",\"cursor\":"))
        .and_then(|(seq, rest)| {
            // The last one: the cursor's own text may hold the same words.
            let (cursor, tail) = rest.rsplit_once(",\"items_processed\":")?;
            let (items, at) = tail.strip_suffix('}')?.split_once(",\"at\":")?;
            Some((seq, cursor, items, at))
        });
    let Some((seq, cursor, items, at)) = parts else {
        // Not the layout this build writes: read it as any JSON.
        return serde_json::from_str(text).map_err(|e| bad(&e));
    };
    let number = |n: &str| n.parse::<u64>().map_err(|e| bad(&format!("{n:?}: {e}")));
    Ok(HistoryEntry {
        seq: number(seq)?,
        cursor: serde_json::from_str(cursor).map_err(|e| bad(&e))?,
        items_processed: number(items)?,
        at: Timestamp(
            at.parse::<i64>()
                .map_err(|e| bad(&format!("{at:?}: {e}")))?,
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::history_entry;

    #[test]
    fn history_entries_read_by_their_layout() {
        let e = history_entry(
            r#"{"seq":7,"cursor":{"s":",\"items_processed\":1"},"items_processed":3,"at":99}"#,
        )
        .unwrap();
        assert_eq!((e.seq, e.items_processed, e.at.0), (7, 3, 99));
        assert_eq!(e.cursor, serde_json::json!({"s": ",\"items_processed\":1"}));
        // As deep as a stored cursor may be: the entry's object adds a level.
        let depth = crate::validate::MAX_JSON_NESTING;
        let deep = format!("{}1{}", "[".repeat(depth), "]".repeat(depth));
        let e = history_entry(&format!(
            r#"{{"seq":1,"cursor":{deep},"items_processed":0,"at":5}}"#
        ))
        .unwrap();
        assert_eq!(e.cursor.to_string(), deep);
        for bad in [
            "",
            "{}",
            r#"{"seq":x,"cursor":1,"items_processed":0,"at":5}"#,
        ] {
            assert!(history_entry(bad).is_err(), "{bad}");
        }
    }
}
