//! [`ItemStore`] on Redis: each operation one script (see `lua/`); item
//! changes carry the item state machine's values into the script.

use redis::Value;

use super::conn::{count_arg, to_json, unexpected};
use super::rows::{
    int, item_id, item_record, opt_arg, opt_value, split_item_id, string, tagged, text,
};
use super::scripts;
use super::{RedisStore, ENQUEUE_BATCH};
use crate::error::{Error, Result};
use crate::model::{
    ClaimedItem, EnqueueReport, ItemCounts, ItemLease, ItemRecord, ItemStatus, ItemUpdate,
    JobStatus, NewItem,
};
use crate::store::machine::{Claim, ItemPatch, Redrive};
use crate::store::rules::fenced_item;
use crate::store::{ItemStore, ItemStream};
use crate::time::Timestamp;

impl RedisStore {
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

/// The script arguments of one update: the item, its lease, and its
/// change's [`ItemPatch`].
fn update_args(u: &ItemUpdate, now: Timestamp) -> Result<[String; 15]> {
    let (job_num, seq) = split_item_id(u.lease.id).unwrap_or((0, 0));
    let p = ItemPatch::new(&u.change, now);
    let json = |v: &Option<serde_json::Value>| v.as_ref().map(to_json).transpose();
    let time = |t: Option<Timestamp>| t.map(|t| t.0.to_string());
    Ok([
        job_num.to_string(),
        seq.to_string(),
        u.lease.owner.clone(),
        u.lease.token.to_string(),
        p.status.as_str().to_string(),
        opt_arg(time(p.ready_at).as_deref()),
        p.attempts_back.to_string(),
        opt_arg(json(&p.cursor)?.as_deref()),
        opt_arg(json(&p.stats)?.as_deref()),
        opt_arg(p.last_error.as_deref()),
        opt_arg(time(p.finished_at).as_deref()),
        opt_arg(time(p.started_at).as_deref()),
        opt_arg(p.command.map(|c| c.to_string()).as_deref()),
        opt_arg(p.last_output.as_deref()),
        opt_arg(p.error_unless_recorded.as_deref()),
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

impl ItemStore for RedisStore {
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
        started: bool,
        now: Timestamp,
    ) -> Result<Vec<ClaimedItem>> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let claim = Claim {
            owner,
            lease_until,
            now,
            started,
        };
        let reply = self.call(
            &scripts::CLAIM,
            vec![
                job.to_string(),
                claim.owner.to_string(),
                count_arg(max),
                claim.lease_until.0.to_string(),
                claim.now.0.to_string(),
                Claim::STATUS.as_str().to_string(),
                Claim::ATTEMPTS_ADDED.to_string(),
                Claim::CLAIMS_ADDED.to_string(),
                Claim::ATTEMPTS_ADDED_UNSTARTED.to_string(),
                claim
                    .started_at()
                    .map_or_else(String::new, |t| t.0.to_string()),
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
        if rest.len() % 9 != 0 {
            return Err(unexpected("a claim of odd length"));
        }
        rest.chunks(9)
            .map(|c| {
                let previous = ItemStatus::parse(&string(&c[6])?)
                    .ok_or_else(|| unexpected("an item status"))?;
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
                    taken_over_from: claim.taken_over_from(previous, text(&c[7])?.as_deref()),
                    enqueued_at: Timestamp(int(&c[8])?),
                })
            })
            .collect()
    }

    fn update_items(&self, updates: &[ItemUpdate], now: Timestamp) -> Result<Vec<Result<()>>> {
        if updates.is_empty() {
            return Ok(Vec::new());
        }
        let mut args = Vec::with_capacity(13 * updates.len());
        for u in updates {
            args.extend(update_args(u, now)?);
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
        items_in_order(self, job, status, limit, "first")
    }

    fn last_items(&self, job: &str, status: ItemStatus, limit: usize) -> Result<Vec<ItemRecord>> {
        items_in_order(self, job, Some(status), limit, "last")
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
            Redrive::STATUS.as_str().to_string(),
            Redrive::ATTEMPTS.to_string(),
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
}

/// The first (`end` "first") or last ("last", the last first) `limit`
/// items of the job, of `status` or of any (first only), in enqueue order.
fn items_in_order(
    store: &RedisStore,
    job: &str,
    status: Option<ItemStatus>,
    limit: usize,
    end: &str,
) -> Result<Vec<ItemRecord>> {
    if limit == 0 {
        return Ok(Vec::new());
    }
    let reply = store.call(
        &scripts::LIST_ITEMS,
        vec![
            job.to_string(),
            status.map_or("", ItemStatus::as_str).to_string(),
            count_arg(limit),
            end.to_string(),
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
