//! [`Queue`]: the claim pattern. Many workers share a job's items; each item
//! runs on exactly one live worker at a time.
//!
//! # Architecture
//! A `Queue` is one worker's handle on one job's items. It claims items
//! ([`Queue::claim`]), and records how their attempts ended
//! ([`Queue::settle`] in `settle`, for one item or a batch that shares one
//! durable commit): the outcome becomes a change per the retry policy, the
//! change is applied fenced, and the event and metrics for it are emitted
//! there, once. The [`Runner`](crate::Runner) drives a queue and never
//! calls the store itself.

use std::time::Duration;

use serde_json::Value;

mod settle;

pub use settle::{Attempt, Outcome, Settled};

use crate::ckpt::Ckpt;
use crate::error::{Error, Result};
use crate::model::{
    ClaimedItem, EnqueueReport, ItemChange, ItemCounts, ItemRecord, ItemStatus, ItemUpdate,
    JobStatus, NewItem,
};
use crate::policy::{RetryDecision, RetryPolicy};
use crate::store::machine::Redrive;
use crate::store::{SharedTx, TxWrite};
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
    /// The command id its completions are tagged with.
    completed_by: Option<i64>,
}

impl Queue {
    pub(crate) fn new(ckpt: Ckpt, job: &str, options: QueueOptions) -> Queue {
        let owner = ckpt.worker().to_string();
        Queue {
            ckpt,
            job: job.to_string(),
            owner,
            options,
            completed_by: None,
        }
    }

    /// Tags every item this queue completes with the command `id` (from
    /// [`record_command`](Queue::record_command)), or with none; see
    /// [`CommandStore`](crate::store::CommandStore). Untagged by default.
    pub fn completed_by(mut self, id: Option<i64>) -> Queue {
        self.completed_by = id;
        self
    }

    /// Records `command` as the job's latest command (see
    /// [`CommandStore::record_command`](crate::store::CommandStore::record_command)).
    pub fn record_command(&self, command: &str) -> Result<crate::model::CommandRecord> {
        self.ckpt
            .store()
            .record_command(&self.job, command, self.ckpt.now())
    }

    /// The job's commands with their completed counts.
    pub fn commands(&self) -> Result<crate::model::JobCommands> {
        self.ckpt.store().commands(&self.job)
    }

    /// Moves the job's completed items selected by `by` back to pending
    /// with fresh attempts, in one transaction; returns how many moved.
    pub fn redrive_completed(&self, by: crate::model::CompletedBy) -> Result<u64> {
        self.ckpt
            .store()
            .redrive_completed(&self.job, by, self.ckpt.now())
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
            if let Some(payload) = &item.payload {
                validate::stored_json("payload", payload)?;
            }
            Ok(item)
        });
        let report = self
            .ckpt
            .store()
            .enqueue(&self.job, &mut checked, self.ckpt.now())?;
        tracing::debug!(
            event = "enqueued",
            job = self.job.as_str(),
            inserted = report.inserted,
            existing = report.existing
        );
        Ok(report)
    }

    /// Claims up to `max` ready items (pending, due for a retry, or with an
    /// expired lease) for this worker, which starts them now: each claim
    /// counts an attempt.
    pub fn claim(&self, max: usize) -> Result<Vec<ClaimedItem>> {
        self.claim_as(max, true).map(|(claimed, _)| claimed)
    }

    /// Claims up to `max` ready items ahead of starting them: mark each
    /// with [`start`](Queue::start) when it starts. If this worker dies or
    /// gives them back before that, they cost no attempt: attempts count
    /// executions. (The [`Runner`](crate::Runner) claims this way.)
    pub fn claim_ahead(&self, max: usize) -> Result<Vec<ClaimedItem>> {
        self.claim_as(max, false).map(|(claimed, _)| claimed)
    }

    /// [`claim_ahead`](Queue::claim_ahead), and how many items the claim
    /// moved to the dead-letter list unrun, their attempts used up already
    /// (see `bury_exhausted`): the runner counts them as this run's dead.
    pub(crate) fn claim_ahead_counting_buried(
        &self,
        max: usize,
    ) -> Result<(Vec<ClaimedItem>, u64)> {
        self.claim_as(max, false)
    }

    /// Records that `items`, claimed ahead, start running now (and renews
    /// their leases); one result per item, [`Error::Fenced`] for those lost.
    ///
    /// [`Error::Fenced`]: crate::Error::Fenced
    pub fn start<'a, I: IntoIterator<Item = &'a ClaimedItem>>(
        &self,
        items: I,
    ) -> Result<Vec<Result<()>>> {
        let items: Vec<&ClaimedItem> = items.into_iter().collect();
        for item in &items {
            self.check_own(item)?;
        }
        let lease_until = self.ckpt.now().plus(self.options.lease);
        self.apply(&lease_updates(items, ItemChange::Start { lease_until }))
    }

    /// The items claimed, and how many more were buried.
    fn claim_as(&self, max: usize, started: bool) -> Result<(Vec<ClaimedItem>, u64)> {
        let now = self.ckpt.now();
        let claimed = self.ckpt.store().claim(
            &self.job,
            &self.owner,
            max,
            now.plus(self.options.lease),
            started,
            now,
        )?;
        let (claimed, buried) = self.bury_exhausted(claimed)?;
        if !claimed.is_empty() {
            metrics::counter!("ckpt_item_attempts_total", "job" => self.job.clone())
                .increment(claimed.len() as u64);
        }
        let mut taken_over = 0;
        let mut previous_owners = Vec::new();
        for item in &claimed {
            tracing::debug!(event = "item_claimed", job = self.job.as_str(), key = item.key.as_str(), attempt = item.attempt, owner = %self.owner, from = item.taken_over_from.as_deref());
            if let Some(from) = &item.taken_over_from {
                taken_over += 1;
                if !previous_owners.contains(from) {
                    previous_owners.push(from.clone());
                }
            }
        }
        if taken_over > 0 {
            tracing::info!(event = "takeover", job = self.job.as_str(), items = taken_over, "took over {taken_over} item(s) whose previous lease had expired or whose owner was gone");
        }
        // A dead local owner may have left commands running on these items:
        // they must not run beside the retries. Its sentinel, if it names
        // one, is stopping them: wait for it (a store that frees the items
        // of an ended session can hand them out before it is done).
        for owner in previous_owners {
            self.ckpt.wait_while_stopping(&owner);
            if self.ckpt.is_dead_local_owner(&owner) {
                self.ckpt.kill_orphans_of(&owner);
            }
        }
        Ok((claimed, buried))
    }

    /// Moves to the dead-letter list, without running them, the claimed
    /// items whose attempts are used up already: each of them started as
    /// often as the retry policy allows (a policy that allowed more when
    /// it last failed, or its workers died running it every time). Its
    /// last failure stays its error; with none recorded, every attempt
    /// ended with its worker gone, and the error says so. Returns the
    /// others, and how many it buried.
    fn bury_exhausted(&self, claimed: Vec<ClaimedItem>) -> Result<(Vec<ClaimedItem>, u64)> {
        let max = self.options.retry.max_attempts;
        let (exhausted, runnable): (Vec<_>, Vec<_>) =
            claimed.into_iter().partition(|i| i.attempt > max);
        if exhausted.is_empty() {
            return Ok((runnable, 0));
        }
        // Dead unrun: the claim that found them so takes its attempt back,
        // so the count says how often each ran.
        let verdicts: Vec<settle::Verdict> = exhausted
            .iter()
            .map(|item| {
                settle::Verdict::Bury(format!(
                    "started {} time(s) and its worker never reported back (it died while running it each time); not run again",
                    item.attempt.saturating_sub(1)
                ))
            })
            .collect();
        let updates: Vec<ItemUpdate> = exhausted
            .iter()
            .zip(&verdicts)
            .map(|(item, verdict)| verdict.update(item, None))
            .collect();
        let results = self.apply(&updates)?;
        let mut buried = 0;
        for ((item, verdict), result) in exhausted.into_iter().zip(verdicts).zip(results) {
            let attempt = Attempt {
                item,
                outcome: Outcome::Fatal(String::new()),
                ran_for: None,
            };
            if matches!(self.record(&attempt, verdict, result), Settled::Dead) {
                buried += 1;
            }
        }
        Ok((runnable, buried))
    }

    /// [`Error::InvalidInput`] for an item claimed from another job's
    /// queue: its id would name another job's item (the lease fences
    /// workers, not jobs).
    pub(super) fn check_own(&self, item: &ClaimedItem) -> Result<()> {
        if item.job == self.job {
            return Ok(());
        }
        Err(Error::InvalidInput(format!(
            "item '{}' was claimed from job '{}', not from this queue's job '{}'",
            item.key, item.job, self.job
        )))
    }

    /// Completes a claimed item with optional stats. Fenced.
    pub fn complete(&self, item: &ClaimedItem, stats: Option<Value>) -> Result<()> {
        self.check_own(item)?;
        if let Some(stats) = &stats {
            validate::stats(stats)?;
        }
        match self.settle_one(item, Outcome::Completed(stats))? {
            Settled::Lost(e) => Err(e),
            _ => Ok(()),
        }
    }

    /// Gives a claimed item back unfinished: pending again, claimable at
    /// once, and the attempt its claim counted taken back (for a worker
    /// that stops before it could finish the item). Fenced.
    pub fn release(&self, item: &ClaimedItem) -> Result<()> {
        self.check_own(item)?;
        // Not an outcome to record (the caller may or may not have started
        // the item): the change alone, as the runner's stop does it.
        self.apply_one(ItemUpdate {
            lease: item.lease.clone(),
            change: ItemChange::Release,
        })
    }

    /// Fails a claimed item: it is retried with backoff, or moved to the
    /// dead-letter list once its attempts are used up. Fenced.
    pub fn fail(&self, item: &ClaimedItem, error: &str) -> Result<RetryDecision> {
        self.check_own(item)?;
        match self.settle_one(item, Outcome::Failed(error.to_string()))? {
            Settled::Retrying(at) => Ok(RetryDecision::RetryAt(at)),
            Settled::Lost(e) => Err(e),
            _ => Ok(RetryDecision::Dead),
        }
    }

    /// Completes `item` and runs `f` (the caller's own writes for it) in one
    /// transaction of `store`, the queue's store: both commit or neither
    /// does. `f` runs first, on the store's [`SharedTx::Tx`]. If the lease
    /// was lost, everything rolls back and the result is
    /// [`Error::Fenced`](crate::Error::Fenced).
    pub fn complete_with<S: SharedTx, T>(
        &self,
        store: &S,
        item: &ClaimedItem,
        stats: Option<Value>,
        f: impl FnOnce(&mut S::Tx<'_>) -> Result<T>,
    ) -> Result<T> {
        self.ckpt.check_same_store(store)?;
        self.check_own(item)?;
        if let Some(stats) = &stats {
            validate::stats(stats)?;
        }
        let attempt = Attempt {
            item: item.clone(),
            outcome: Outcome::Completed(stats),
            ran_for: None,
        };
        let now = self.ckpt.now();
        let verdict = self.verdict(&attempt, now);
        let update = verdict.update(item, self.completed_by);
        let result = store.with_tx(TxWrite::UpdateItem(&update), now, f);
        // A refused completion is this queue's event (lease lost); the
        // caller's own error is the caller's to report.
        match &result {
            Ok(_) => {
                self.record(&attempt, verdict, Ok(()));
            }
            Err(crate::Error::Fenced(why)) => {
                self.record(&attempt, verdict, Err(crate::Error::Fenced(why.clone())));
            }
            Err(_) => {}
        }
        result
    }

    /// Saves a per-item cursor, so that a retry of this item resumes inside
    /// it, and renews the lease. Fenced.
    pub fn save_cursor(&self, item: &ClaimedItem, cursor: Value) -> Result<()> {
        self.check_own(item)?;
        validate::stored_json("cursor", &cursor)?;
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
        let items: Vec<&ClaimedItem> = items.into_iter().collect();
        for item in &items {
            self.check_own(item)?;
        }
        let lease_until = self.ckpt.now().plus(self.options.lease);
        self.apply(&lease_updates(items, ItemChange::Heartbeat { lease_until }))
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
            tracing::warn!(event = "lease_lost", job = self.job.as_str(), item_id = update.lease.id, error = %e);
        }
        result
    }

    /// Creates the job if it is new (so that a run over no items can still
    /// finish it), leaving an existing job as it is.
    pub fn ensure_job(&self) -> Result<()> {
        self.ckpt.store().ensure_job(&self.job, self.ckpt.now())
    }

    /// Waits up to `timeout` for the store's signal that items may have
    /// become claimable: `Some(true)` when signalled, `Some(false)` on
    /// timeout, `None` at once when the store has no signal (or it is down):
    /// then the caller polls.
    pub fn wait_for_items(&self, timeout: Duration) -> Option<bool> {
        self.ckpt
            .store()
            .item_signals()?
            .wait_for_items(&self.job, timeout)
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
        if !Redrive::applies_to(from) {
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
        let mut freed = match self.ckpt.store().owner_sessions() {
            Some(sessions) => sessions.expire_lost_owners(&self.job, self.ckpt.now())?,
            None => 0,
        };
        if freed > 0 {
            tracing::info!(event = "takeover", job = self.job.as_str(), items = freed, "owners whose sessions ended: their items are claimable once the session grace has passed, unless the owner renews them under a new session");
        }
        for owner in self.ckpt.store().running_owners(&self.job)? {
            if owner != self.owner && self.ckpt.is_dead_local_owner(&owner) {
                // Its orphaned commands must not run on beside the retries.
                let orphans = self.ckpt.kill_orphans_of(&owner);
                let n = self
                    .ckpt
                    .store()
                    .expire_owner(&self.job, &owner, self.ckpt.now())?;
                tracing::info!(event = "takeover", job = self.job.as_str(), from = %owner, items = n, orphans_killed = orphans, "owner process is gone; its items are claimable now");
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

/// The same lease change (a renewal, a start) for each of `items`.
pub(super) fn lease_updates<'a>(
    items: impl IntoIterator<Item = &'a ClaimedItem>,
    change: ItemChange,
) -> Vec<ItemUpdate> {
    items
        .into_iter()
        .map(|item| ItemUpdate {
            lease: item.lease.clone(),
            change: change.clone(),
        })
        .collect()
}

impl Ckpt {
    /// A handle on the job's work items with default options.
    pub fn queue(&self, name: &str) -> Result<Queue> {
        self.queue_with(name, QueueOptions::default())
    }

    /// A handle on the job's work items.
    pub fn queue_with(&self, name: &str, options: QueueOptions) -> Result<Queue> {
        validate::job_name(name)?;
        Ok(Queue::new(self.clone(), name, options))
    }
}
