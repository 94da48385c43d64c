//! The in-memory store: for tests and development. Everything is lost when
//! the process exits. One mutex makes every method atomic.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Mutex;

use super::rules::{busy, fenced_item, fenced_job, held_by_live_owner};
use super::{ItemStream, Store};
use crate::error::{Error, Result};
use crate::model::{
    Checkpoint, ClaimedItem, EnqueueReport, HistoryEntry, ItemChange, ItemCounts, ItemId,
    ItemRecord, ItemStatus, ItemUpdate, JobLease, JobRecord, JobStatus,
};
use crate::time::Timestamp;

/// Ready time of a pending item: before any retry or expired lease, so that
/// pending items are claimed in enqueue order.
const PENDING_READY_AT: i64 = 0;

/// A store that lives in this process's memory.
#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    jobs: BTreeMap<String, JobRow>,
    items: Vec<ItemRow>,
    keys: HashMap<(String, String), ItemId>,
    /// Claimable-at index: (job, ready_at, id) of every unfinished item.
    ready: BTreeSet<(String, i64, ItemId)>,
}

#[derive(Debug)]
struct JobRow {
    record: JobRecord,
    history: VecDeque<HistoryEntry>,
    items: Vec<ItemId>,
}

#[derive(Debug, Clone)]
struct ItemRow {
    job: String,
    /// Fencing token: claims in all, never reset.
    claims: u64,
    record: ItemRecord,
    /// Ready time in the index, `None` when completed or dead.
    ready_at: Option<i64>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        MemoryStore::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave a half-applied change
        // visible: every method validates before it mutates.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn new_job(job: &str, now: Timestamp) -> JobRow {
    JobRow {
        record: JobRecord {
            name: job.to_string(),
            status: JobStatus::Running,
            checkpoint: None,
            checkpoint_at: None,
            owner: None,
            lease_expires: None,
            epoch: 0,
            attempts: 0,
            saves: 0,
            history_len: 0,
            state_bytes: 0,
            created_at: now,
            updated_at: now,
            completed_at: None,
            error: None,
        },
        history: VecDeque::new(),
        items: Vec::new(),
    }
}

fn state_bytes(cp: &Checkpoint) -> u64 {
    cp.state
        .as_ref()
        .map(|s| serde_json::to_vec(s).map(|v| v.len()).unwrap_or(0) as u64)
        .unwrap_or(0)
}

impl JobRow {
    fn check_lease(&self, lease: &JobLease) -> Result<()> {
        let r = &self.record;
        if r.owner.as_deref() == Some(lease.owner.as_str()) && r.epoch == lease.epoch {
            Ok(())
        } else {
            Err(fenced_job(lease, Some((r.epoch, r.owner.as_deref()))))
        }
    }

    fn write_checkpoint(&mut self, cp: &Checkpoint, history_keep: usize, now: Timestamp) {
        let r = &mut self.record;
        r.saves += 1;
        r.state_bytes = state_bytes(cp);
        r.checkpoint = Some(cp.clone());
        r.checkpoint_at = Some(now);
        r.updated_at = now;
        if r.status == JobStatus::Completed {
            r.status = JobStatus::Running;
            r.completed_at = None;
        }
        self.history.push_back(HistoryEntry {
            seq: r.saves,
            cursor: cp.cursor.clone(),
            items_processed: cp.items_processed,
            at: now,
        });
        while self.history.len() > history_keep {
            self.history.pop_front();
        }
        r.history_len = self.history.len() as u64;
    }

    fn snapshot(&self) -> JobRecord {
        self.record.clone()
    }
}

impl Inner {
    fn job_mut(&mut self, job: &str) -> Result<&mut JobRow> {
        self.jobs
            .get_mut(job)
            .ok_or_else(|| Error::NotFound(format!("job '{job}'")))
    }

    fn set_ready(&mut self, id: ItemId, ready_at: Option<i64>) {
        let row = &mut self.items[(id - 1) as usize];
        if let Some(old) = row.ready_at {
            self.ready.remove(&(row.job.clone(), old, id));
        }
        if let Some(new) = ready_at {
            self.ready.insert((row.job.clone(), new, id));
        }
        row.ready_at = ready_at;
    }

    fn apply(&mut self, u: &ItemUpdate, now: Timestamp) -> Result<()> {
        let id = u.lease.id;
        let Some(row) = usize::try_from(id - 1)
            .ok()
            .and_then(|i| self.items.get_mut(i))
        else {
            return Err(Error::Fenced(format!("item {id} does not exist")));
        };
        let rec = &mut row.record;
        if rec.status != ItemStatus::Running
            || rec.owner.as_deref() != Some(u.lease.owner.as_str())
            || row.claims != u.lease.token
        {
            return Err(fenced_item(&rec.key, rec.status, rec.owner.as_deref()));
        }
        let ready = match &u.change {
            ItemChange::Heartbeat { lease_until } => Some(lease_until.0),
            ItemChange::Cursor {
                cursor,
                lease_until,
            } => {
                rec.cursor = Some(cursor.clone());
                Some(lease_until.0)
            }
            ItemChange::Complete { stats } => {
                rec.status = ItemStatus::Completed;
                rec.stats = stats.clone();
                rec.finished_at = Some(now);
                None
            }
            ItemChange::Fail { error, retry_at } => {
                rec.last_error = Some(error.clone());
                match retry_at {
                    Some(t) => {
                        rec.status = ItemStatus::Failed;
                        Some(t.0)
                    }
                    None => {
                        rec.status = ItemStatus::Dead;
                        rec.finished_at = Some(now);
                        None
                    }
                }
            }
            ItemChange::Release => {
                rec.status = ItemStatus::Pending;
                rec.attempts = rec.attempts.saturating_sub(1);
                Some(PENDING_READY_AT)
            }
        };
        self.set_ready(id, ready);
        Ok(())
    }
}

fn self_items(items: &[ItemRow], id: ItemId) -> &ItemRow {
    &items[(id - 1) as usize]
}

impl Store for MemoryStore {
    fn describe(&self) -> String {
        "memory://".to_string()
    }

    fn ensure_job(&self, job: &str, now: Timestamp) -> Result<()> {
        let mut g = self.lock();
        g.jobs
            .entry(job.to_string())
            .or_insert_with(|| new_job(job, now));
        Ok(())
    }

    fn acquire_job(
        &self,
        job: &str,
        owner: &str,
        lease_until: Timestamp,
        steal_from: Option<&str>,
        now: Timestamp,
    ) -> Result<(JobLease, JobRecord)> {
        let mut g = self.lock();
        let row = g
            .jobs
            .entry(job.to_string())
            .or_insert_with(|| new_job(job, now));
        let r = &mut row.record;
        if held_by_live_owner(r, Some(owner), steal_from, now) {
            return Err(busy(r, now));
        }
        r.epoch += 1;
        r.attempts += 1;
        r.owner = Some(owner.to_string());
        r.lease_expires = Some(lease_until);
        r.updated_at = now;
        if r.status == JobStatus::Failed {
            r.status = JobStatus::Running;
        }
        let lease = JobLease {
            job: job.to_string(),
            owner: owner.to_string(),
            epoch: r.epoch,
        };
        Ok((lease, row.snapshot()))
    }

    fn renew_job(&self, lease: &JobLease, lease_until: Timestamp, now: Timestamp) -> Result<()> {
        let mut g = self.lock();
        let row = g
            .jobs
            .get_mut(&lease.job)
            .ok_or_else(|| fenced_job(lease, None))?;
        row.check_lease(lease)?;
        row.record.lease_expires = Some(lease_until);
        row.record.updated_at = now;
        Ok(())
    }

    fn save_checkpoint(
        &self,
        lease: &JobLease,
        checkpoint: &Checkpoint,
        history_keep: usize,
        lease_until: Timestamp,
        now: Timestamp,
    ) -> Result<()> {
        let mut g = self.lock();
        let row = g
            .jobs
            .get_mut(&lease.job)
            .ok_or_else(|| fenced_job(lease, None))?;
        row.check_lease(lease)?;
        row.write_checkpoint(checkpoint, history_keep, now);
        row.record.lease_expires = Some(lease_until);
        Ok(())
    }

    fn finish_job(
        &self,
        lease: &JobLease,
        status: JobStatus,
        error: Option<&str>,
        now: Timestamp,
    ) -> Result<()> {
        let mut g = self.lock();
        let row = g
            .jobs
            .get_mut(&lease.job)
            .ok_or_else(|| fenced_job(lease, None))?;
        row.check_lease(lease)?;
        let r = &mut row.record;
        r.status = status;
        r.error = error.map(str::to_string);
        r.completed_at = (status == JobStatus::Completed).then_some(now);
        r.owner = None;
        r.lease_expires = None;
        r.epoch += 1;
        r.updated_at = now;
        Ok(())
    }

    fn release_job(&self, lease: &JobLease, now: Timestamp) -> Result<()> {
        let mut g = self.lock();
        let row = g
            .jobs
            .get_mut(&lease.job)
            .ok_or_else(|| fenced_job(lease, None))?;
        row.check_lease(lease)?;
        let r = &mut row.record;
        r.owner = None;
        r.lease_expires = None;
        r.epoch += 1;
        r.updated_at = now;
        Ok(())
    }

    fn finish_if_done(&self, job: &str, now: Timestamp) -> Result<Option<JobStatus>> {
        let mut g = self.lock();
        let row = g
            .jobs
            .get(job)
            .ok_or_else(|| Error::NotFound(format!("job '{job}'")))?;
        let mut counts = ItemCounts::default();
        for id in &row.items {
            counts.add(g.items[(id - 1) as usize].record.status, 1);
        }
        if counts.unfinished() > 0 {
            return Ok(None);
        }
        let status = if counts.dead == 0 {
            JobStatus::Completed
        } else {
            JobStatus::Failed
        };
        let r = &mut g.job_mut(job)?.record;
        r.status = status;
        r.completed_at = (status == JobStatus::Completed).then_some(now);
        r.updated_at = now;
        Ok(Some(status))
    }

    fn put_checkpoint(
        &self,
        job: &str,
        checkpoint: Option<&Checkpoint>,
        history_keep: usize,
        steal_from: Option<&str>,
        now: Timestamp,
    ) -> Result<()> {
        let mut g = self.lock();
        let row = match checkpoint {
            Some(_) => g
                .jobs
                .entry(job.to_string())
                .or_insert_with(|| new_job(job, now)),
            None => g.job_mut(job)?,
        };
        if held_by_live_owner(&row.record, None, steal_from, now) {
            return Err(busy(&row.record, now));
        }
        match checkpoint {
            Some(cp) => row.write_checkpoint(cp, history_keep, now),
            None => {
                let r = &mut row.record;
                r.checkpoint = None;
                r.checkpoint_at = None;
                r.state_bytes = 0;
                r.history_len = 0;
                r.status = JobStatus::Running;
                r.completed_at = None;
                r.error = None;
                row.history.clear();
            }
        }
        let r = &mut row.record;
        r.owner = None;
        r.lease_expires = None;
        r.epoch += 1;
        r.updated_at = now;
        Ok(())
    }

    fn get_job(&self, job: &str) -> Result<Option<JobRecord>> {
        Ok(self.lock().jobs.get(job).map(JobRow::snapshot))
    }

    fn list_jobs(&self) -> Result<Vec<JobRecord>> {
        Ok(self.lock().jobs.values().map(JobRow::snapshot).collect())
    }

    fn history(&self, job: &str, limit: usize) -> Result<Vec<HistoryEntry>> {
        let g = self.lock();
        Ok(g.jobs
            .get(job)
            .map(|row| row.history.iter().rev().take(limit).cloned().collect())
            .unwrap_or_default())
    }

    fn truncate_history(&self, job: &str, keep: usize) -> Result<u64> {
        let mut g = self.lock();
        let row = g.job_mut(job)?;
        let mut removed = 0;
        while row.history.len() > keep {
            row.history.pop_front();
            removed += 1;
        }
        row.record.history_len = row.history.len() as u64;
        Ok(removed)
    }

    fn delete_job(&self, job: &str, completed_before: Timestamp) -> Result<bool> {
        let mut g = self.lock();
        let Some(row) = g.jobs.get(job) else {
            return Ok(false);
        };
        let finished_in_time = row.record.status == JobStatus::Completed
            && row
                .record
                .completed_at
                .is_some_and(|t| t <= completed_before);
        let all_done = row
            .items
            .iter()
            .all(|id| g.items[(id - 1) as usize].record.status == ItemStatus::Completed);
        let held = row.record.owner.is_some()
            && row
                .record
                .lease_expires
                .is_some_and(|t| t > completed_before);
        if !(finished_in_time && all_done) || held {
            return Ok(false);
        }
        let row = g.jobs.remove(job).expect("checked above");
        // Item rows stay in the vector (ids are its indices) but nothing
        // reaches them any more: the job row and the key map were the ways in.
        for id in row.items {
            let key = g.items[(id - 1) as usize].record.key.clone();
            g.keys.remove(&(job.to_string(), key));
        }
        Ok(true)
    }

    fn enqueue(&self, job: &str, items: ItemStream<'_>, now: Timestamp) -> Result<EnqueueReport> {
        // Collect first so that an error in the stream leaves the store as it was.
        let items: Vec<_> = items.collect::<Result<_>>()?;
        let mut g = self.lock();
        g.jobs
            .entry(job.to_string())
            .or_insert_with(|| new_job(job, now));
        let mut report = EnqueueReport::default();
        for item in items {
            let key = (job.to_string(), item.key.clone());
            if g.keys.contains_key(&key) {
                report.existing += 1;
                continue;
            }
            let id = g.items.len() as ItemId + 1;
            g.items.push(ItemRow {
                job: job.to_string(),
                claims: 0,
                record: ItemRecord {
                    id,
                    key: item.key,
                    payload: item.payload,
                    status: ItemStatus::Pending,
                    attempts: 0,
                    owner: None,
                    ready_at: None,
                    last_error: None,
                    stats: None,
                    cursor: None,
                    enqueued_at: now,
                    started_at: None,
                    finished_at: None,
                },
                ready_at: None,
            });
            g.set_ready(id, Some(PENDING_READY_AT));
            g.keys.insert(key, id);
            let row = g.job_mut(job)?;
            row.items.push(id);
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
        now: Timestamp,
    ) -> Result<Vec<ClaimedItem>> {
        let mut g = self.lock();
        let ids: Vec<ItemId> = g
            .ready
            .range((job.to_string(), i64::MIN, 0)..=(job.to_string(), now.0, ItemId::MAX))
            .map(|(_, _, id)| *id)
            .filter(|id| {
                let r = &self_items(&g.items, *id).record;
                !(r.status == ItemStatus::Running && r.owner.as_deref() == Some(owner))
            })
            .take(max)
            .collect();
        let mut claimed = Vec::with_capacity(ids.len());
        for id in ids {
            g.set_ready(id, Some(lease_until.0));
            let row = &mut g.items[(id - 1) as usize];
            row.claims += 1;
            let token = row.claims;
            let rec = &mut row.record;
            let taken_over_from = (rec.status == ItemStatus::Running)
                .then(|| rec.owner.clone())
                .flatten();
            rec.status = ItemStatus::Running;
            rec.attempts += 1;
            rec.owner = Some(owner.to_string());
            rec.started_at = Some(now);
            claimed.push(ClaimedItem {
                lease: crate::model::ItemLease {
                    id,
                    owner: owner.to_string(),
                    token,
                },
                job: job.to_string(),
                key: rec.key.clone(),
                attempt: rec.attempts,
                payload: rec.payload.clone(),
                cursor: rec.cursor.clone(),
                lease_expires: lease_until,
                taken_over_from,
                enqueued_at: rec.enqueued_at,
            });
        }
        Ok(claimed)
    }

    fn update_items(&self, updates: &[ItemUpdate], now: Timestamp) -> Result<Vec<Result<()>>> {
        let mut g = self.lock();
        Ok(updates.iter().map(|u| g.apply(u, now)).collect())
    }

    fn item_counts(&self, job: &str) -> Result<ItemCounts> {
        let g = self.lock();
        let mut counts = ItemCounts::default();
        if let Some(row) = g.jobs.get(job) {
            for id in &row.items {
                counts.add(g.items[(id - 1) as usize].record.status, 1);
            }
        }
        Ok(counts)
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
        let Some(row) = g.jobs.get(job) else {
            return Ok(Vec::new());
        };
        Ok(row
            .items
            .iter()
            .map(|id| &g.items[(id - 1) as usize])
            .filter(|it| status.is_none_or(|s| it.record.status == s))
            .take(limit)
            .map(|it| {
                let mut rec = it.record.clone();
                rec.ready_at = match rec.status {
                    ItemStatus::Running | ItemStatus::Failed => it.ready_at.map(Timestamp),
                    _ => None,
                };
                rec
            })
            .collect())
    }

    fn running_owners(&self, job: &str) -> Result<Vec<String>> {
        let g = self.lock();
        let Some(row) = g.jobs.get(job) else {
            return Ok(Vec::new());
        };
        let owners: BTreeSet<String> = row
            .items
            .iter()
            .map(|id| &g.items[(id - 1) as usize].record)
            .filter(|r| r.status == ItemStatus::Running)
            .filter_map(|r| r.owner.clone())
            .collect();
        Ok(owners.into_iter().collect())
    }

    fn expire_owner(&self, job: &str, owner: &str, now: Timestamp) -> Result<u64> {
        let mut g = self.lock();
        let Some(row) = g.jobs.get(job) else {
            return Ok(0);
        };
        let ids: Vec<ItemId> = row
            .items
            .iter()
            .copied()
            .filter(|id| {
                let r = &g.items[(id - 1) as usize].record;
                r.status == ItemStatus::Running && r.owner.as_deref() == Some(owner)
            })
            .collect();
        for id in &ids {
            let expired = g.items[(id - 1) as usize].ready_at.map(|t| t.min(now.0));
            g.set_ready(*id, expired);
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
        let Some(row) = g.jobs.get(job) else {
            return Err(Error::NotFound(format!("job '{job}'")));
        };
        let ids: Vec<ItemId> = row
            .items
            .iter()
            .copied()
            .filter(|id| {
                let r = &g.items[(id - 1) as usize].record;
                r.status == from && keys.is_none_or(|k| k.contains(&r.key))
            })
            .collect();
        for id in &ids {
            g.set_ready(*id, Some(PENDING_READY_AT));
            let r = &mut g.items[(id - 1) as usize].record;
            r.status = ItemStatus::Pending;
            r.attempts = 0;
            r.finished_at = None;
        }
        if !ids.is_empty() {
            let r = &mut g.job_mut(job)?.record;
            if r.status != JobStatus::Running {
                r.status = JobStatus::Running;
                r.completed_at = None;
            }
            r.updated_at = now;
        }
        Ok(ids.len() as u64)
    }
}
