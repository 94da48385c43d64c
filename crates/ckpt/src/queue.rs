//! [`Queue`]: the claim pattern. Many workers share a job's items; each item
//! runs on exactly one live worker at a time.

use std::time::Duration;

use serde_json::Value;

use crate::ckpt::Ckpt;
use crate::error::Result;
use crate::model::{
    ClaimedItem, EnqueueReport, ItemChange, ItemCounts, ItemRecord, ItemStatus, ItemUpdate,
    JobStatus, NewItem,
};
use crate::policy::{RetryDecision, RetryPolicy};
use crate::time::Timestamp;
use crate::validate;

/// How items are leased and retried.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueOptions {
    /// Lease length of a claim; renew with [`Queue::heartbeat`].
    pub lease: Duration,
    /// Retries of failed items.
    pub retry: RetryPolicy,
}

impl Default for QueueOptions {
    /// A 30 s lease and the default retry policy (3 attempts).
    fn default() -> Self {
        QueueOptions {
            lease: Duration::from_secs(30),
            retry: RetryPolicy::default(),
        }
    }
}

/// A handle on one job's work items, acting as this [`Ckpt`]'s worker.
#[derive(Debug, Clone)]
pub struct Queue {
    ckpt: Ckpt,
    job: String,
    owner: String,
    options: QueueOptions,
}

impl Queue {
    pub(crate) fn new(ckpt: Ckpt, job: &str, options: QueueOptions) -> Queue {
        let owner = ckpt.worker().to_string();
        Queue {
            ckpt,
            job: job.to_string(),
            owner,
            options,
        }
    }

    /// This queue's worker id, as stored in the `owner` of its items.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// The job's name.
    pub fn job(&self) -> &str {
        &self.job
    }

    /// The options in force.
    pub fn options(&self) -> &QueueOptions {
        &self.options
    }

    /// The [`Ckpt`] this queue works through.
    pub fn ckpt(&self) -> &Ckpt {
        &self.ckpt
    }

    /// Enqueues items, idempotently per key, in one transaction.
    pub fn enqueue<I: IntoIterator<Item = NewItem>>(&self, items: I) -> Result<EnqueueReport> {
        self.enqueue_stream(items.into_iter().map(Ok))
    }

    /// Enqueues a fallible stream of items in one transaction: the first
    /// `Err` (or invalid key) aborts it and nothing is added. Streams
    /// without holding the items in memory on stores that allow it.
    pub fn enqueue_stream<I: Iterator<Item = Result<NewItem>>>(
        &self,
        items: I,
    ) -> Result<EnqueueReport> {
        let mut checked = items.map(|item| {
            let item = item?;
            validate::item_key(&item.key)?;
            Ok(item)
        });
        let report = self
            .ckpt
            .store()
            .enqueue(&self.job, &mut checked, self.ckpt.now())?;
        tracing::debug!(event = "enqueued", job = %self.job, inserted = report.inserted, existing = report.existing);
        Ok(report)
    }

    /// Claims up to `max` ready items (pending, due for a retry, or with an
    /// expired lease) for this worker.
    pub fn claim(&self, max: usize) -> Result<Vec<ClaimedItem>> {
        let now = self.ckpt.now();
        let claimed = self.ckpt.store().claim(
            &self.job,
            &self.owner,
            max,
            now.plus(self.options.lease),
            now,
        )?;
        if !claimed.is_empty() {
            metrics::counter!("ckpt_item_attempts_total", "job" => self.job.clone())
                .increment(claimed.len() as u64);
        }
        let mut taken_over = 0;
        let mut previous_owners = Vec::new();
        for item in &claimed {
            tracing::debug!(event = "item_claimed", job = %self.job, key = %item.key, attempt = item.attempt, owner = %self.owner, from = item.taken_over_from.as_deref());
            if let Some(from) = &item.taken_over_from {
                taken_over += 1;
                if !previous_owners.contains(from) {
                    previous_owners.push(from.clone());
                }
            }
        }
        if taken_over > 0 {
            tracing::info!(event = "takeover", job = %self.job, items = taken_over, "took over {taken_over} item(s) whose previous lease had expired or whose owner was gone");
        }
        // A dead local owner may have left commands running on these items:
        // they must not run beside the retries.
        for owner in previous_owners {
            if self.ckpt.is_dead_local_owner(&owner) {
                self.ckpt.kill_orphans_of(&owner);
            }
        }
        Ok(claimed)
    }

    /// Completes a claimed item with optional stats. Fenced.
    pub fn complete(&self, item: &ClaimedItem, stats: Option<Value>) -> Result<()> {
        self.apply_one(ItemUpdate {
            lease: item.lease.clone(),
            change: ItemChange::Complete { stats },
        })?;
        self.completed(item);
        Ok(())
    }

    /// Gives a claimed item back unfinished: pending again, claimable at
    /// once, and the attempt its claim counted taken back (for a worker
    /// that stops before it could finish the item). Fenced.
    pub fn release(&self, item: &ClaimedItem) -> Result<()> {
        self.apply_one(ItemUpdate {
            lease: item.lease.clone(),
            change: ItemChange::Release,
        })
    }

    /// Emits the completion of `item` (event and lead-time metric).
    fn completed(&self, item: &ClaimedItem) {
        let lead = self.ckpt.now().since(item.enqueued_at);
        metrics::histogram!("ckpt_item_lead_time_seconds", "job" => self.job.clone())
            .record(lead.as_secs_f64());
        tracing::debug!(event = "item_completed", job = %self.job, key = %item.key, attempt = item.attempt);
    }

    /// Completes `item` and runs `f` (the caller's own writes for it) in one
    /// SQLite transaction of `store`, the queue's store: both commit or
    /// neither does. If the lease was lost, everything rolls back and the
    /// result is [`Error::Fenced`](crate::Error::Fenced).
    #[cfg(feature = "sqlite")]
    pub fn complete_with_sqlite<T>(
        &self,
        store: &crate::store::SqliteStore,
        item: &ClaimedItem,
        stats: Option<Value>,
        f: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<T>,
    ) -> Result<T> {
        self.ckpt.check_same_store(store)?;
        let update = ItemUpdate {
            lease: item.lease.clone(),
            change: ItemChange::Complete { stats },
        };
        let out = store.update_item_with(&update, self.ckpt.now(), f)?;
        self.completed(item);
        Ok(out)
    }

    /// [`complete_with_sqlite`](Queue::complete_with_sqlite) for PostgreSQL.
    #[cfg(feature = "postgres")]
    pub fn complete_with_postgres<T>(
        &self,
        store: &crate::store::PgStore,
        item: &ClaimedItem,
        stats: Option<Value>,
        f: impl FnOnce(&mut crate::store::PgTx<'_>) -> Result<T>,
    ) -> Result<T> {
        self.ckpt.check_same_store(store)?;
        let update = ItemUpdate {
            lease: item.lease.clone(),
            change: ItemChange::Complete { stats },
        };
        let out = store.update_item_with(&update, self.ckpt.now(), f)?;
        self.completed(item);
        Ok(out)
    }

    /// Fails a claimed item: it is retried with backoff, or moved to the
    /// dead-letter list once its attempts are used up. Fenced.
    pub fn fail(&self, item: &ClaimedItem, error: &str) -> Result<RetryDecision> {
        let (update, decision) = self.failure(item, error, self.ckpt.now());
        self.apply_one(update)?;
        Ok(decision)
    }

    /// The update that fails `item` per the retry policy, and the decision.
    pub fn failure(
        &self,
        item: &ClaimedItem,
        error: &str,
        now: Timestamp,
    ) -> (ItemUpdate, RetryDecision) {
        let decision = self.options.retry.decide(item.attempt, now, rand::random());
        let retry_at = match decision {
            RetryDecision::RetryAt(t) => Some(t),
            RetryDecision::Dead => None,
        };
        let update = ItemUpdate {
            lease: item.lease.clone(),
            change: ItemChange::Fail {
                error: error.to_string(),
                retry_at,
            },
        };
        (update, decision)
    }

    /// Saves a per-item cursor, so that a retry of this item resumes inside
    /// it, and renews the lease. Fenced.
    pub fn save_cursor(&self, item: &ClaimedItem, cursor: Value) -> Result<()> {
        let lease_until = self.ckpt.now().plus(self.options.lease);
        self.apply_one(ItemUpdate {
            lease: item.lease.clone(),
            change: ItemChange::Cursor {
                cursor,
                lease_until,
            },
        })
    }

    /// Renews the leases of `items`; one result per item, [`Error::Fenced`]
    /// for those lost.
    ///
    /// [`Error::Fenced`]: crate::Error::Fenced
    pub fn heartbeat<'a, I: IntoIterator<Item = &'a ClaimedItem>>(
        &self,
        items: I,
    ) -> Result<Vec<Result<()>>> {
        let now = self.ckpt.now();
        let lease_until = now.plus(self.options.lease);
        let updates: Vec<_> = items
            .into_iter()
            .map(|item| ItemUpdate {
                lease: item.lease.clone(),
                change: ItemChange::Heartbeat { lease_until },
            })
            .collect();
        self.apply(&updates)
    }

    /// Applies many fenced updates in one transaction (group commit).
    pub fn apply(&self, updates: &[ItemUpdate]) -> Result<Vec<Result<()>>> {
        if updates.is_empty() {
            return Ok(Vec::new());
        }
        self.ckpt.store().update_items(updates, self.ckpt.now())
    }

    fn apply_one(&self, update: ItemUpdate) -> Result<()> {
        let mut results = self.apply(std::slice::from_ref(&update))?;
        let result = results.pop().unwrap_or(Ok(()));
        if let Err(e) = &result {
            tracing::warn!(event = "lease_lost", job = %self.job, item_id = update.lease.id, error = %e);
        }
        result
    }

    /// Item counts by status.
    pub fn counts(&self) -> Result<ItemCounts> {
        self.ckpt.store().item_counts(&self.job)
    }

    /// When the next unfinished item becomes claimable.
    pub fn next_ready_at(&self) -> Result<Option<Timestamp>> {
        self.ckpt.store().next_ready_at(&self.job)
    }

    /// Items, optionally of one status, in enqueue order.
    pub fn items(&self, status: Option<ItemStatus>, limit: usize) -> Result<Vec<ItemRecord>> {
        self.ckpt.store().list_items(&self.job, status, limit)
    }

    /// Re-drives dead (or failed) items back to pending with fresh attempts;
    /// any other `from` is [`Error::InvalidInput`](crate::Error::InvalidInput).
    pub fn redrive(&self, from: ItemStatus, keys: Option<&[String]>) -> Result<u64> {
        if !matches!(from, ItemStatus::Dead | ItemStatus::Failed) {
            return Err(crate::Error::InvalidInput(format!(
                "only dead or failed items can be re-driven, not {from} ones"
            )));
        }
        self.ckpt
            .store()
            .redrive(&self.job, from, keys, self.ckpt.now())
    }

    /// Expires the leases of running items whose owner is a process on this
    /// host that is gone, so they are claimable now rather than when their
    /// lease runs out, after killing the processes it left running. Returns
    /// how many items were freed.
    pub fn reclaim_dead_owners(&self) -> Result<u64> {
        let mut freed = self
            .ckpt
            .store()
            .expire_lost_owners(&self.job, self.ckpt.now())?;
        if freed > 0 {
            tracing::info!(event = "takeover", job = %self.job, items = freed, "owners whose sessions ended; their items are claimable now");
        }
        for owner in self.ckpt.store().running_owners(&self.job)? {
            if owner != self.owner && self.ckpt.is_dead_local_owner(&owner) {
                // Its orphaned commands must not run on beside the retries.
                let orphans = self.ckpt.kill_orphans_of(&owner);
                let n = self
                    .ckpt
                    .store()
                    .expire_owner(&self.job, &owner, self.ckpt.now())?;
                tracing::info!(event = "takeover", job = %self.job, from = %owner, items = n, orphans_killed = orphans, "owner process is gone; its items are claimable now");
                freed += n;
            }
        }
        Ok(freed)
    }

    /// If no item is unfinished, marks the job completed (no dead items) or
    /// failed (some dead) and returns that status; otherwise `None`.
    pub fn finish_if_done(&self) -> Result<Option<JobStatus>> {
        self.ckpt.store().finish_if_done(&self.job, self.ckpt.now())
    }
}
