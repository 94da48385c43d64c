//! [`ItemStore`] in memory: the state machine's values applied directly.

use std::collections::BTreeSet;

use super::{ItemRow, MemoryStore};
use crate::error::{Error, Result};
use crate::model::{
    ClaimedItem, EnqueueReport, ItemCounts, ItemId, ItemLease, ItemRecord, ItemStatus, ItemUpdate,
    JobStatus,
};
use crate::store::machine::{Claim, ItemPatch, ItemState};
use crate::store::rules::fenced_item;
use crate::store::{ItemStore, ItemStream};
use crate::time::Timestamp;

impl ItemStore for MemoryStore {
    fn enqueue(&self, job: &str, items: ItemStream<'_>, now: Timestamp) -> Result<EnqueueReport> {
        // Collect first so that an error in the stream leaves the store as it was.
        let items: Vec<_> = items.collect::<Result<_>>()?;
        let mut g = self.lock();
        g.jobs
            .entry(job.to_string())
            .or_insert_with(|| super::jobs::new_job(job, now));
        let mut report = EnqueueReport::default();
        for item in items {
            let key = (job.to_string(), item.key.clone());
            if g.keys.contains_key(&key) {
                report.existing += 1;
                continue;
            }
            let id = g.push_item(ItemRow {
                job: job.to_string(),
                key: item.key,
                payload: item.payload,
                enqueued_at: now,
                state: ItemState::enqueued(),
            });
            g.keys.insert(key, id);
            g.job_mut(job)?.items.push(id);
            report.inserted += 1;
        }
        if report.inserted > 0 {
            let r = &mut g.job_mut(job)?.record;
            if r.status == JobStatus::Completed {
                r.status = JobStatus::Running;
                r.completed_at = None;
            }
            r.updated_at = now;
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
        let mut g = self.lock();
        let ids: Vec<ItemId> = g
            .ready
            .range((job.to_string(), i64::MIN, 0)..=(job.to_string(), now.0, ItemId::MAX))
            .map(|(_, _, id)| *id)
            .filter(|id| g.item(*id).state.claimable_by(owner, now))
            .take(max)
            .collect();
        let claim = Claim {
            owner,
            lease_until,
            now,
            started,
        };
        let mut claimed = Vec::with_capacity(ids.len());
        for id in ids {
            let taken_over_from = g.change_item(id, |s| s.claim(&claim));
            let row = g.item(id);
            claimed.push(ClaimedItem {
                lease: ItemLease {
                    id,
                    owner: owner.to_string(),
                    token: row.state.claims,
                },
                job: job.to_string(),
                key: row.key.clone(),
                attempt: row.state.attempts,
                payload: row.payload.clone(),
                cursor: row.state.cursor.clone(),
                lease_expires: lease_until,
                taken_over_from,
                enqueued_at: row.enqueued_at,
            });
        }
        Ok(claimed)
    }

    fn update_items(&self, updates: &[ItemUpdate], now: Timestamp) -> Result<Vec<Result<()>>> {
        let mut g = self.lock();
        Ok(updates
            .iter()
            .map(|u| {
                let id = u.lease.id;
                let row = g
                    .find_item(id)
                    .ok_or_else(|| Error::Fenced(format!("item {id} does not exist")))?;
                let s = &row.state;
                if !s.holds(&u.lease) {
                    return Err(fenced_item(&row.key, s.status, s.owner.as_deref()));
                }
                let patch = ItemPatch::new(&u.change, now);
                g.change_item(id, |s| s.apply(&patch));
                Ok(())
            })
            .collect())
    }

    fn finish_if_done(&self, job: &str, now: Timestamp) -> Result<Option<JobStatus>> {
        let mut g = self.lock();
        if !g.jobs.contains_key(job) {
            return Err(Error::NotFound(format!("job '{job}'")));
        }
        let counts = g.counts(job);
        if counts.unfinished() > 0 {
            return Ok(None);
        }
        let status = if counts.dead == 0 {
            JobStatus::Completed
        } else {
            JobStatus::Failed
        };
        let r = &mut g.job_mut(job)?.record;
        if r.status != status {
            r.status = status;
            r.completed_at = (status == JobStatus::Completed).then_some(now);
            r.updated_at = now;
        }
        Ok(Some(status))
    }

    fn item_counts(&self, job: &str) -> Result<ItemCounts> {
        Ok(self.lock().counts(job))
    }

    fn next_ready_at(&self, job: &str) -> Result<Option<Timestamp>> {
        let g = self.lock();
        Ok(g.ready
            .range((job.to_string(), i64::MIN, 0)..=(job.to_string(), i64::MAX, ItemId::MAX))
            .next()
            .map(|(_, t, _)| Timestamp(*t)))
    }

    fn list_items(
        &self,
        job: &str,
        status: Option<ItemStatus>,
        limit: usize,
    ) -> Result<Vec<ItemRecord>> {
        let g = self.lock();
        Ok(g.item_ids(job)
            .iter()
            .map(|id| (*id, g.item(*id)))
            .filter(|(_, it)| status.is_none_or(|s| it.state.status == s))
            .take(limit)
            .map(|(id, it)| it.record(id))
            .collect())
    }

    fn last_items(&self, job: &str, status: ItemStatus, limit: usize) -> Result<Vec<ItemRecord>> {
        let g = self.lock();
        Ok(g.item_ids(job)
            .iter()
            .rev()
            .map(|id| (*id, g.item(*id)))
            .filter(|(_, it)| it.state.status == status)
            .take(limit)
            .map(|(id, it)| it.record(id))
            .collect())
    }

    fn running_owners(&self, job: &str) -> Result<Vec<String>> {
        let g = self.lock();
        let owners: BTreeSet<String> = g
            .item_ids(job)
            .iter()
            .map(|id| &g.item(*id).state)
            .filter(|s| s.status == ItemStatus::Running)
            .filter_map(|s| s.owner.clone())
            .collect();
        Ok(owners.into_iter().collect())
    }

    fn expire_owner(&self, job: &str, owner: &str, now: Timestamp) -> Result<u64> {
        let mut g = self.lock();
        let ids: Vec<ItemId> = g
            .item_ids(job)
            .iter()
            .copied()
            .filter(|id| {
                let s = &g.item(*id).state;
                s.status == ItemStatus::Running && s.owner.as_deref() == Some(owner)
            })
            .collect();
        for id in &ids {
            g.change_item(*id, |s| s.expire(now));
        }
        Ok(ids.len() as u64)
    }

    fn redrive(
        &self,
        job: &str,
        from: ItemStatus,
        keys: Option<&[String]>,
        now: Timestamp,
    ) -> Result<u64> {
        let mut g = self.lock();
        if !g.jobs.contains_key(job) {
            return Err(Error::NotFound(format!("job '{job}'")));
        }
        let ids: Vec<ItemId> = g
            .item_ids(job)
            .iter()
            .copied()
            .filter(|id| {
                let row = g.item(*id);
                row.state.status == from && keys.is_none_or(|k| k.contains(&row.key))
            })
            .collect();
        g.redrive_items(job, &ids, now)
    }
}
