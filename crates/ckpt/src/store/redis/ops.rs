//! The [`Store`] operations on Redis: each one script (see `lua/`).

use redis::Value;

use super::decode::{
    int, item_id, item_record, job_record, opt_arg, opt_value, split_item_id, string, tagged, text,
};
use super::scripts::{self, Lua};
use super::{RedisStore, ENQUEUE_BATCH};
use crate::error::{Error, Result};
use crate::model::{
    Checkpoint, ClaimedItem, EnqueueReport, HistoryEntry, ItemChange, ItemCounts, ItemLease,
    ItemRecord, ItemStatus, ItemUpdate, JobLease, JobRecord, JobStatus, NewItem,
};
use crate::store::rules::{busy, fenced_item, fenced_job};
use crate::store::{ItemStream, Store};
use crate::time::Timestamp;

/// A count or limit as a script argument: Lua numbers are doubles, exact
/// up to 2^53, and Redis takes ranges as 64-bit integers.
fn count_arg(n: usize) -> String {
    n.min(1 << 40).to_string()
}

fn unexpected(tag: &str) -> Error {
    Error::Storage(format!(
        "unexpected reply {tag:?} from a Redis store script"
    ))
}

/// The size of a checkpoint's serialised state, as the other stores count it.
fn state_bytes(cp: &Checkpoint) -> u64 {
    cp.state
        .as_ref()
        .map(|s| serde_json::to_vec(s).map_or(0, |v| v.len()) as u64)
        .unwrap_or(0)
}

fn to_json(v: &serde_json::Value) -> Result<String> {
    serde_json::to_string(v)
        .map_err(|e| Error::InvalidInput(format!("value does not serialise: {e}")))
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

    /// A reply `{'ok', n}` as `n`.
    fn ok_count(reply: &Value) -> Result<u64> {
        match tagged(reply)? {
            (tag, [n]) if tag == "ok" => Ok(int(n)? as u64),
            (tag, _) => Err(unexpected(&tag)),
        }
    }

    fn enqueue_args(job: &str, now: Timestamp, items: &[NewItem]) -> Result<Vec<String>> {
        let mut args = Vec::with_capacity(2 + 2 * items.len());
        args.push(job.to_string());
        args.push(now.0.to_string());
        for item in items {
            args.push(item.key.clone());
            let payload = item.payload.as_ref().map(to_json).transpose()?;
            args.push(opt_arg(payload.as_deref()));
        }
        Ok(args)
    }

    fn add_report(report: &mut EnqueueReport, reply: &Value) -> Result<()> {
        match tagged(reply)? {
            (tag, [inserted, existing]) if tag == "ok" => {
                report.inserted += int(inserted)? as u64;
                report.existing += int(existing)? as u64;
                Ok(())
            }
            (tag, _) => Err(unexpected(&tag)),
        }
    }
}

fn update_args(u: &ItemUpdate) -> Result<[String; 7]> {
    let (job_num, seq) = split_item_id(u.lease.id).unwrap_or((0, 0));
    let (change, a, b) = match &u.change {
        ItemChange::Heartbeat { lease_until } => {
            ("heartbeat", String::new(), lease_until.0.to_string())
        }
        ItemChange::Cursor {
            cursor,
            lease_until,
        } => ("cursor", to_json(cursor)?, lease_until.0.to_string()),
        ItemChange::Complete { stats } => {
            let stats = stats.as_ref().map(to_json).transpose()?;
            ("complete", opt_arg(stats.as_deref()), String::new())
        }
        ItemChange::Release => ("release", String::new(), String::new()),
        ItemChange::Fail { error, retry_at } => (
            "fail",
            error.clone(),
            opt_arg(retry_at.map(|t| t.0.to_string()).as_deref()),
        ),
    };
    Ok([
        job_num.to_string(),
        seq.to_string(),
        u.lease.owner.clone(),
        u.lease.token.to_string(),
        change.to_string(),
        a,
        b,
    ])
}

fn update_result(u: &ItemUpdate, v: &Value) -> Result<Result<()>> {
    let (tag, rest) = tagged(v)?;
    Ok(match (tag.as_str(), rest) {
        ("ok", _) => Ok(()),
        ("gone", _) => Err(Error::Fenced(format!("item {} does not exist", u.lease.id))),
        ("fenced", [key, status, owner]) => {
            let status =
                ItemStatus::parse(&string(status)?).ok_or_else(|| unexpected("an item status"))?;
            Err(fenced_item(&string(key)?, status, text(owner)?.as_deref()))
        }
        (other, _) => return Err(unexpected(other)),
    })
}

impl Store for RedisStore {
    fn describe(&self) -> String {
        self.describe_store()
    }

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

    fn finish_if_done(&self, job: &str, now: Timestamp) -> Result<Option<JobStatus>> {
        let reply = self.call(
            &scripts::FINISH_IF_DONE,
            vec![job.to_string(), now.0.to_string()],
        )?;
        match tagged(&reply)? {
            (tag, _) if tag == "notfound" => Err(Error::NotFound(format!("job '{job}'"))),
            (tag, []) if tag == "ok" => Ok(None),
            (tag, [status]) if tag == "ok" => JobStatus::parse(&string(status)?)
                .map(Some)
                .ok_or_else(|| unexpected("a job status")),
            (tag, _) => Err(unexpected(&tag)),
        }
    }

    fn put_checkpoint(
        &self,
        job: &str,
        checkpoint: Option<&Checkpoint>,
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
        let reply = self.call(&scripts::PUT_CHECKPOINT, args)?;
        match tagged(&reply)? {
            (tag, _) if tag == "ok" => Ok(()),
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
            (tag, entries) if tag == "ok" => entries
                .iter()
                .map(|e| {
                    serde_json::from_str(&string(e)?).map_err(|e| {
                        Error::Storage(format!("malformed history entry in the Redis store: {e}"))
                    })
                })
                .collect(),
            (tag, _) => Err(unexpected(&tag)),
        }
    }

    fn enqueue(&self, job: &str, items: ItemStream<'_>, now: Timestamp) -> Result<EnqueueReport> {
        // Everything is read first, so an error in the stream adds nothing.
        let items: Vec<NewItem> = items.collect::<Result<_>>()?;
        let mut report = EnqueueReport::default();
        if items.len() <= ENQUEUE_BATCH {
            let reply = self.call(&scripts::ENQUEUE, Self::enqueue_args(job, now, &items)?)?;
            Self::add_report(&mut report, &reply)?;
        } else {
            let batches = items
                .chunks(ENQUEUE_BATCH)
                .map(|chunk| Self::enqueue_args(job, now, chunk))
                .collect::<Result<Vec<_>>>()?;
            for reply in self.call_atomic(&scripts::ENQUEUE, batches)? {
                Self::add_report(&mut report, &reply)?;
            }
        }
        Ok(report)
    }

    fn claim(
        &self,
        job: &str,
        owner: &str,
        max: usize,
        lease_until: Timestamp,
        now: Timestamp,
    ) -> Result<Vec<ClaimedItem>> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let reply = self.call(
            &scripts::CLAIM,
            vec![
                job.to_string(),
                owner.to_string(),
                count_arg(max),
                lease_until.0.to_string(),
                now.0.to_string(),
            ],
        )?;
        let (tag, rest) = tagged(&reply)?;
        if tag != "ok" {
            return Err(unexpected(&tag));
        }
        let Some((job_num, rest)) = rest.split_first() else {
            return Ok(Vec::new());
        };
        let job_num = int(job_num)?;
        if rest.len() % 8 != 0 {
            return Err(unexpected("a claim of odd length"));
        }
        rest.chunks(8)
            .map(|c| {
                Ok(ClaimedItem {
                    lease: ItemLease {
                        id: item_id(job_num, int(&c[0])?)?,
                        owner: owner.to_string(),
                        token: int(&c[5])? as u64,
                    },
                    job: job.to_string(),
                    key: string(&c[1])?,
                    attempt: int(&c[4])? as u32,
                    payload: opt_value("payload", &c[2])?,
                    cursor: opt_value("cursor", &c[3])?,
                    lease_expires: lease_until,
                    taken_over_from: text(&c[6])?,
                    enqueued_at: Timestamp(int(&c[7])?),
                })
            })
            .collect()
    }

    fn update_items(&self, updates: &[ItemUpdate], now: Timestamp) -> Result<Vec<Result<()>>> {
        if updates.is_empty() {
            return Ok(Vec::new());
        }
        let mut args = Vec::with_capacity(1 + 7 * updates.len());
        args.push(now.0.to_string());
        for u in updates {
            args.extend(update_args(u)?);
        }
        let reply = self.call(&scripts::UPDATE_ITEMS, args)?;
        let (tag, results) = tagged(&reply)?;
        if tag != "ok" || results.len() != updates.len() {
            return Err(unexpected(&tag));
        }
        updates
            .iter()
            .zip(results)
            .map(|(u, r)| update_result(u, r))
            .collect()
    }

    fn item_counts(&self, job: &str) -> Result<ItemCounts> {
        let reply = self.call(&scripts::ITEM_COUNTS, vec![job.to_string()])?;
        match tagged(&reply)? {
            (tag, [pending, running, completed, failed, dead]) if tag == "ok" => Ok(ItemCounts {
                pending: int(pending)? as u64,
                running: int(running)? as u64,
                completed: int(completed)? as u64,
                failed: int(failed)? as u64,
                dead: int(dead)? as u64,
            }),
            (tag, _) => Err(unexpected(&tag)),
        }
    }

    fn next_ready_at(&self, job: &str) -> Result<Option<Timestamp>> {
        let reply = self.call(&scripts::NEXT_READY_AT, vec![job.to_string()])?;
        match tagged(&reply)? {
            (tag, []) if tag == "ok" => Ok(None),
            (tag, [t]) if tag == "ok" => Ok(Some(Timestamp(int(t)?))),
            (tag, _) => Err(unexpected(&tag)),
        }
    }

    fn list_items(
        &self,
        job: &str,
        status: Option<ItemStatus>,
        limit: usize,
    ) -> Result<Vec<ItemRecord>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let reply = self.call(
            &scripts::LIST_ITEMS,
            vec![
                job.to_string(),
                status.map_or("", ItemStatus::as_str).to_string(),
                count_arg(limit),
            ],
        )?;
        let (tag, rest) = tagged(&reply)?;
        if tag != "ok" {
            return Err(unexpected(&tag));
        }
        let Some((job_num, rest)) = rest.split_first() else {
            return Ok(Vec::new());
        };
        let job_num = int(job_num)?;
        rest.chunks(2)
            .map(|pair| match pair {
                [seq, raw] => {
                    let id = item_id(job_num, int(seq)?)?;
                    let raw = text(raw)?.ok_or_else(|| {
                        Error::Storage(format!("item {id} is indexed but has no record"))
                    })?;
                    item_record(id, &raw)
                }
                _ => Err(unexpected("an item list of odd length")),
            })
            .collect()
    }

    fn running_owners(&self, job: &str) -> Result<Vec<String>> {
        let reply = self.call(&scripts::RUNNING_OWNERS, vec![job.to_string()])?;
        let (tag, owners) = tagged(&reply)?;
        if tag != "ok" {
            return Err(unexpected(&tag));
        }
        let mut owners = owners.iter().map(string).collect::<Result<Vec<_>>>()?;
        owners.sort();
        owners.dedup();
        Ok(owners)
    }

    fn expire_owner(&self, job: &str, owner: &str, now: Timestamp) -> Result<u64> {
        let reply = self.call(
            &scripts::EXPIRE_OWNER,
            vec![job.to_string(), owner.to_string(), now.0.to_string()],
        )?;
        Self::ok_count(&reply)
    }

    fn redrive(
        &self,
        job: &str,
        from: ItemStatus,
        keys: Option<&[String]>,
        now: Timestamp,
    ) -> Result<u64> {
        let mut args = vec![
            job.to_string(),
            from.as_str().to_string(),
            now.0.to_string(),
        ];
        match keys {
            Some(keys) => {
                args.push("keys".to_string());
                args.extend(keys.iter().cloned());
            }
            None => args.push("all".to_string()),
        }
        let reply = self.call(&scripts::REDRIVE, args)?;
        match tagged(&reply)? {
            (tag, _) if tag == "notfound" => Err(Error::NotFound(format!("job '{job}'"))),
            _ => Self::ok_count(&reply),
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
