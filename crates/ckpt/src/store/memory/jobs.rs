//! [`JobStore`] in memory.

use std::collections::VecDeque;

use super::{Inner, JobRow, MemoryStore};
use crate::error::{Error, Result};
use crate::model::{Checkpoint, Expect, HistoryEntry, ItemStatus, JobLease, JobRecord, JobStatus};
use crate::policy::retention;
use crate::store::rules::{busy, check_expected, fenced_job, held_by_live_owner};
use crate::store::JobStore;
use crate::time::Timestamp;

pub(super) fn new_job(job: &str, now: Timestamp) -> JobRow {
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
        commands: Vec::new(),
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
        // History follows commit order: a writer whose `now` was read
        // before an earlier commit's does not step back in time.
        let now = r.checkpoint_at.map_or(now, |at| at.max(now));
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

    /// Gives up the lease and fences out its holder.
    fn release(&mut self, now: Timestamp) {
        let r = &mut self.record;
        r.owner = None;
        r.lease_expires = None;
        r.epoch += 1;
        r.updated_at = now;
    }
}

impl Inner {
    pub(super) fn job_entry(&mut self, job: &str, now: Timestamp) -> &mut JobRow {
        self.jobs
            .entry(job.to_string())
            .or_insert_with(|| new_job(job, now))
    }

    /// The job a lease names, checked to be held by it.
    fn leased(&mut self, lease: &JobLease) -> Result<&mut JobRow> {
        let row = self
            .jobs
            .get_mut(&lease.job)
            .ok_or_else(|| fenced_job(lease, None))?;
        row.check_lease(lease)?;
        Ok(row)
    }
}

impl JobStore for MemoryStore {
    fn ensure_job(&self, job: &str, now: Timestamp) -> Result<()> {
        self.lock().job_entry(job, now);
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
        let r = &mut g.job_entry(job, now).record;
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
        Ok((lease, r.clone()))
    }

    fn renew_job(&self, lease: &JobLease, lease_until: Timestamp, now: Timestamp) -> Result<()> {
        let mut g = self.lock();
        let r = &mut g.leased(lease)?.record;
        r.lease_expires = Some(lease_until);
        r.updated_at = now;
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
        let row = g.leased(lease)?;
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
        let row = g.leased(lease)?;
        let r = &mut row.record;
        r.status = status;
        r.error = error.map(str::to_string);
        r.completed_at = (status == JobStatus::Completed).then_some(now);
        row.release(now);
        Ok(())
    }

    fn release_job(&self, lease: &JobLease, now: Timestamp) -> Result<()> {
        self.lock().leased(lease)?.release(now);
        Ok(())
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
        let mut g = self.lock();
        let existing = g.jobs.get(job).map(|row| &row.record);
        // Clearing needs a job, whatever was expected of its cursor.
        if checkpoint.is_none() && existing.is_none() {
            return Err(Error::NotFound(format!("job '{job}'")));
        }
        if let Some(r) = existing.filter(|r| held_by_live_owner(r, None, steal_from, now)) {
            return Err(busy(r, now));
        }
        check_expected(job, existing, expect)?;
        let row = match checkpoint {
            Some(_) => g.job_entry(job, now),
            None => g.job_mut(job)?,
        };
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
        row.release(now);
        Ok(())
    }

    fn get_job(&self, job: &str) -> Result<Option<JobRecord>> {
        Ok(self.lock().jobs.get(job).map(|row| row.record.clone()))
    }

    fn list_jobs(&self) -> Result<Vec<JobRecord>> {
        Ok(self
            .lock()
            .jobs
            .values()
            .map(|row| row.record.clone())
            .collect())
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
        let all_completed = row
            .items
            .iter()
            .all(|id| g.item(*id).state.status == ItemStatus::Completed);
        if !retention::deletable(&row.record, all_completed, completed_before) {
            return Ok(false);
        }
        let row = g
            .jobs
            .remove(job)
            .ok_or_else(|| Error::Storage(format!("job '{job}' vanished")))?;
        for id in row.items {
            let key = g.item(id).key.clone();
            g.keys.remove(&(job.to_string(), key));
        }
        Ok(true)
    }
}
