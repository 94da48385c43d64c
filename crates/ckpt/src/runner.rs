//! [`Runner`]: runs a handler over a job's items on N threads, with
//! prefetched claims, lease heartbeats and group-committed completions.
//!
//! # Architecture
//! Worker threads only run the handler: they pop a claimed item from a local
//! queue and push back its outcome. The calling thread is the coordinator:
//! each round it commits every outcome that arrived (one transaction for all
//! of them, so a durable commit is shared by many items), renews the leases
//! it holds when a third of the lease has passed, and claims enough items to
//! keep every worker busy plus `prefetch` in reserve. It ends when the job
//! has no unfinished item left, waiting for retries that are due and for
//! items held by other live workers, and taking over at once the items of
//! dead workers on this host.
//!
//! # Stopping
//! A [`StopSignal`] (see [`Runner::stop_handle`]) ends a run early and
//! cleanly: the coordinator stops claiming and gives back, unfinished, the
//! items claimed but not started ([`ItemChange::Release`]: pending again,
//! no attempt counted); workers start nothing new; the items running finish
//! and their outcomes are committed as usual, an [`Outcome::Interrupted`]
//! being given back like an unstarted item. The run then returns a report
//! with `stopped` set, holding nothing in the store.
//!
//! # Events and metrics
//! `tracing` events (field `event`): `item_claimed` (by [`Queue::claim`]),
//! `item_completed`, `item_failed`, `item_dead`, `item_released`,
//! `lease_lost`, `takeover`. Metrics through the `metrics` facade (no-ops
//! unless the program installs a recorder): `ckpt_item_attempts_total`
//! (counter, label `job`, one per claim), `ckpt_item_duration_seconds`
//! (histogram, labels `job` and `outcome`: completed, failed, dead,
//! interrupted, lost; the run time of one attempt) and
//! `ckpt_item_lead_time_seconds` (histogram, label `job`: from enqueue to
//! completion).

use std::collections::{HashMap, VecDeque};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::error::Result;
use crate::model::{ClaimedItem, ItemChange, ItemCounts, ItemId, ItemUpdate, JobStatus};
use crate::queue::Queue;
use crate::shutdown::{StopSignal, Wake};

/// How a [`Runner`] runs.
#[derive(Debug, Clone, PartialEq)]
pub struct RunOptions {
    /// Worker threads (items run at once).
    pub workers: usize,
    /// Items claimed ahead of the workers.
    pub prefetch: usize,
    /// Longest wait between two looks at the store while idle.
    pub idle_poll: Duration,
    /// How long the store may stay busy or unreachable (retried with
    /// backoff) before the run gives up.
    pub max_outage: Duration,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            workers: 1,
            prefetch: 1,
            idle_poll: Duration::from_millis(500),
            max_outage: Duration::from_secs(300),
        }
    }
}

/// What became of one attempt of an item.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Done, with optional stats (a JSON object of counters).
    Completed(Option<Value>),
    /// Failed with this message; retried or dead per the retry policy.
    Failed(String),
    /// Not finished because the run is stopping (the handler was told to
    /// stop, or its work was killed at shutdown), with a note on why: the
    /// item is given back, pending again with no attempt counted, and is
    /// not a failure. Meant for a stopping run: an item given back while
    /// the run goes on is claimed again at once.
    Interrupted(String),
}

/// Runs one attempt of an item.
pub trait Handler: Sync {
    /// Processes `item`; called from a worker thread.
    fn handle(&self, item: &ClaimedItem) -> Outcome;
}

impl<F: Fn(&ClaimedItem) -> Outcome + Sync> Handler for F {
    fn handle(&self, item: &ClaimedItem) -> Outcome {
        self(item)
    }
}

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunReport {
    /// Items this run completed.
    pub completed: u64,
    /// Failed attempts this run recorded (retried or dead).
    pub failed: u64,
    /// Items this run moved to the dead-letter list.
    pub dead: u64,
    /// Outcomes refused because the lease had been lost to another worker.
    pub lost: u64,
    /// Items this run gave back unfinished when it stopped (claimed but not
    /// started, or [`Outcome::Interrupted`]): pending again, no attempt
    /// counted.
    pub released: u64,
    /// True if and only if the run ended because its [`StopSignal`] was
    /// stopped, rather than because no item was left.
    pub stopped: bool,
    /// Item counts when the run ended.
    pub counts: ItemCounts,
    /// The job's status when the run ended.
    pub status: Option<JobStatus>,
}

/// Live counts of a run's committed outcomes, readable from another thread
/// while it runs (for progress displays). Clones share the counts.
#[derive(Debug, Clone, Default)]
pub struct RunProgress {
    inner: Arc<ProgressCounts>,
}

#[derive(Debug, Default)]
struct ProgressCounts {
    completed: AtomicU64,
    failed: AtomicU64,
    dead: AtomicU64,
    released: AtomicU64,
    lost: AtomicU64,
}

impl RunProgress {
    /// Items completed so far by this run.
    pub fn completed(&self) -> u64 {
        self.inner.completed.load(Ordering::Relaxed)
    }

    /// Failed attempts recorded so far (retried or dead).
    pub fn failed(&self) -> u64 {
        self.inner.failed.load(Ordering::Relaxed)
    }

    /// Items moved to the dead-letter list so far.
    pub fn dead(&self) -> u64 {
        self.inner.dead.load(Ordering::Relaxed)
    }

    /// Items given back unfinished so far.
    pub fn released(&self) -> u64 {
        self.inner.released.load(Ordering::Relaxed)
    }

    /// Outcomes refused because the lease was lost.
    pub fn lost(&self) -> u64 {
        self.inner.lost.load(Ordering::Relaxed)
    }

    fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

struct Finished {
    item: ClaimedItem,
    outcome: Outcome,
    took: Duration,
    /// False for an item given back without having been started.
    started: bool,
}

#[derive(Default)]
struct Shared {
    ready: VecDeque<ClaimedItem>,
    finished: Vec<Finished>,
    running: HashMap<ItemId, ClaimedItem>,
    stop: bool,
    /// Set by a stop request, so that the coordinator's wait ends at once.
    woken: bool,
    /// Outcomes worth waking the coordinator for.
    batch: usize,
    /// Below this many ready items the coordinator is woken to refill.
    low_water: usize,
}

/// What the coordinator and the workers share.
#[derive(Default)]
struct State {
    shared: Mutex<Shared>,
    /// Workers wait here for items.
    work: Condvar,
    /// The coordinator waits here for outcomes.
    progress: Condvar,
}

impl Wake for State {
    fn wake(&self) {
        lock(&self.shared).woken = true;
        self.progress.notify_all();
        self.work.notify_all();
    }
}

/// Runs a handler over a job's items until none is unfinished, or until
/// it is told to stop.
#[derive(Debug)]
pub struct Runner<'q> {
    queue: &'q Queue,
    options: RunOptions,
    stop: StopSignal,
    progress: RunProgress,
}

impl<'q> Runner<'q> {
    /// A runner over `queue`'s items.
    pub fn new(queue: &'q Queue, options: RunOptions) -> Self {
        Runner {
            queue,
            options,
            stop: StopSignal::new(),
            progress: RunProgress::default(),
        }
    }

    /// A handle that stops this runner from any thread: see
    /// [`StopSignal`]. Stopping it before [`run`](Runner::run) makes the run
    /// return at once.
    pub fn stop_handle(&self) -> StopSignal {
        self.stop.clone()
    }

    /// Watches `stop` instead of a signal of its own, for example
    /// [`Signals::stop_signal`](crate::shutdown::Signals::stop_signal).
    pub fn with_stop(mut self, stop: StopSignal) -> Self {
        self.stop = stop;
        self
    }

    /// Live counts of this runner's outcomes (shared with clones).
    pub fn progress(&self) -> RunProgress {
        self.progress.clone()
    }

    /// Runs until the job has no pending, running or failed item left, then
    /// marks the job completed (or failed if any item is dead); or, once the
    /// [`StopSignal`] is stopped, until the items running have finished (see
    /// the module docs). A busy or unreachable store is retried with backoff
    /// for up to `max_outage`; any other storage error stops the run: items
    /// in flight finish, their outcomes are not recorded, and the next run
    /// does them again.
    pub fn run<H: Handler>(&self, handler: &H) -> Result<RunReport> {
        let workers = self.options.workers.max(1);
        let state = Arc::new(State {
            shared: Mutex::new(Shared {
                batch: workers,
                low_water: self.options.prefetch.div_ceil(2).max(1),
                ..Shared::default()
            }),
            ..State::default()
        });
        let waker: Arc<dyn Wake> = state.clone();
        self.stop.register(Arc::downgrade(&waker));
        let state = &*state;
        std::thread::scope(|scope| {
            for _ in 0..workers {
                scope.spawn(|| worker_loop(state, &self.stop, handler));
            }
            let result = self.coordinate(state);
            lock(&state.shared).stop = true;
            state.work.notify_all();
            result
        })
    }

    fn coordinate(&self, state: &State) -> Result<RunReport> {
        let (shared, work, progress) = (&state.shared, &state.work, &state.progress);
        let queue = self.queue;
        let lease = queue.options().lease;
        let capacity = self.options.workers.max(1) + self.options.prefetch;
        let mut report = RunReport::default();
        let mut unsaved: Vec<(ItemUpdate, Finished)> = Vec::new();
        let mut last_heartbeat = Instant::now();
        let mut last_reclaim = Instant::now();
        queue
            .ckpt()
            .store()
            .ensure_job(queue.job(), queue.ckpt().now())?;
        queue.reclaim_dead_owners()?;
        let mut outage: Option<Instant> = None;
        let mut backoff = Duration::from_millis(100);
        loop {
            let mut round = || -> Result<Option<RunReport>> {
                let (stopping, finished, unstarted, held) = {
                    let mut g = lock(shared);
                    // Read under the lock after clearing `woken`: a stop
                    // requested from now on wakes the wait below.
                    g.woken = false;
                    let stopping = self.stop.is_stopped();
                    // Under the lock that workers take an item under: an
                    // item is either started or given back, never both.
                    let unstarted: Vec<ClaimedItem> = if stopping {
                        g.ready.drain(..).collect()
                    } else {
                        Vec::new()
                    };
                    (
                        stopping,
                        std::mem::take(&mut g.finished),
                        unstarted,
                        g.ready.len() + g.running.len(),
                    )
                };
                let now = queue.ckpt().now();
                for f in finished {
                    let update = self.outcome_update(&f, now);
                    unsaved.push((update, f));
                }
                for item in unstarted {
                    let update = ItemUpdate {
                        lease: item.lease.clone(),
                        change: ItemChange::Release,
                    };
                    let f = Finished {
                        item,
                        outcome: Outcome::Interrupted("not started: the run is stopping".into()),
                        took: Duration::ZERO,
                        started: false,
                    };
                    unsaved.push((update, f));
                }
                if !unsaved.is_empty() {
                    // On error the outcomes stay in `unsaved` for the next round.
                    let updates: Vec<ItemUpdate> = unsaved.iter().map(|(u, _)| u.clone()).collect();
                    let results = queue.apply(&updates)?;
                    for ((update, f), result) in unsaved.drain(..).zip(results) {
                        self.record(&mut report, &update, &f, result);
                    }
                }
                if last_heartbeat.elapsed() >= lease / 3 {
                    self.heartbeat(shared)?;
                    last_heartbeat = Instant::now();
                }
                if stopping {
                    // Claim nothing more; wait for the running items.
                    if held == 0 && unsaved.is_empty() {
                        report.stopped = true;
                        report.status = queue.finish_if_done()?;
                        report.counts = queue.counts()?;
                        return Ok(Some(report.clone()));
                    }
                    wait_for_progress(shared, progress, self.options.idle_poll.min(lease / 3));
                    return Ok(None);
                }
                let mut claimed = 0;
                if held < capacity {
                    let items = queue.claim(capacity - held)?;
                    claimed = items.len();
                    if claimed > 0 {
                        lock(shared).ready.extend(items);
                        work.notify_all();
                    }
                }
                if held == 0 && claimed == 0 && unsaved.is_empty() {
                    // An index lookup, where counting would scan every item.
                    if queue.next_ready_at()?.is_none() {
                        report.status = queue.finish_if_done()?;
                        report.counts = queue.counts()?;
                        return Ok(Some(report.clone()));
                    }
                    if last_reclaim.elapsed() >= Duration::from_secs(1) {
                        queue.reclaim_dead_owners()?;
                        last_reclaim = Instant::now();
                    }
                }
                // With room for more items, sleep until the next one is due;
                // with every slot taken, until a worker finishes.
                let wait = if held + claimed < capacity {
                    self.idle_wait()?
                } else {
                    self.options.idle_poll
                };
                let wait = wait.min(lease / 3);
                // With nothing in hand no worker can make progress: wait for
                // the store's signal that items arrived, where it has one.
                let signalled = (held + claimed == 0)
                    .then(|| queue.ckpt().store().wait_for_items(queue.job(), wait))
                    .flatten();
                if signalled.is_none() {
                    wait_for_progress(shared, progress, wait);
                }
                Ok(None)
            };
            match round() {
                Ok(Some(report)) => return Ok(report),
                Ok(None) => {
                    outage = None;
                    backoff = Duration::from_millis(100);
                }
                // A busy store or a lost connection: keep the outcomes and
                // the items in hand, and try again with backoff. Items keep
                // running meanwhile; a lease that lapses is fenced later.
                Err(e) if e.is_transient() => {
                    let since = *outage.get_or_insert_with(Instant::now);
                    if since.elapsed() >= self.options.max_outage {
                        return Err(e);
                    }
                    tracing::warn!(
                        job = queue.job(),
                        retry_in_ms = backoff.as_millis() as u64,
                        "store unavailable, will retry: {e}"
                    );
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// How long to sleep when there is nothing to do: until the next item
    /// becomes claimable, within bounds.
    fn idle_wait(&self) -> Result<Duration> {
        let floor = Duration::from_millis(5);
        let next = self.queue.next_ready_at()?;
        let now = self.queue.ckpt().now();
        Ok(match next {
            Some(t) => t.since(now).clamp(floor, self.options.idle_poll),
            None => self.options.idle_poll,
        })
    }

    fn outcome_update(&self, f: &Finished, now: crate::time::Timestamp) -> ItemUpdate {
        match &f.outcome {
            Outcome::Completed(stats) => ItemUpdate {
                lease: f.item.lease.clone(),
                change: ItemChange::Complete {
                    stats: Some(with_duration(stats.clone(), f.took)),
                },
            },
            Outcome::Failed(error) => self.queue.failure(&f.item, error, now).0,
            Outcome::Interrupted(_) => ItemUpdate {
                lease: f.item.lease.clone(),
                change: ItemChange::Release,
            },
        }
    }

    fn record(
        &self,
        report: &mut RunReport,
        update: &ItemUpdate,
        f: &Finished,
        result: Result<()>,
    ) {
        let job = self.queue.job();
        let key = &f.item.key;
        let attempt = f.item.attempt;
        let counts = &self.progress.inner;
        let duration = |outcome: &'static str| {
            if f.started {
                metrics::histogram!("ckpt_item_duration_seconds", "job" => job.to_string(), "outcome" => outcome)
                    .record(f.took.as_secs_f64());
            }
        };
        if let Err(e) = result {
            report.lost += 1;
            RunProgress::add(&counts.lost);
            duration("lost");
            tracing::warn!(event = "lease_lost", job, key = %key, attempt, error = %e, "outcome discarded: another worker holds this item now");
            return;
        }
        match &update.change {
            ItemChange::Complete { .. } => {
                report.completed += 1;
                RunProgress::add(&counts.completed);
                duration("completed");
                let lead = self.queue.ckpt().now().since(f.item.enqueued_at);
                metrics::histogram!("ckpt_item_lead_time_seconds", "job" => job.to_string())
                    .record(lead.as_secs_f64());
                tracing::debug!(event = "item_completed", job, key = %key, attempt, duration_ms = f.took.as_millis() as u64);
            }
            ItemChange::Fail { error, retry_at } => {
                report.failed += 1;
                RunProgress::add(&counts.failed);
                let max = self.queue.options().retry.max_attempts;
                match retry_at {
                    Some(t) => {
                        duration("failed");
                        let retry_in = t.since(self.queue.ckpt().now());
                        tracing::warn!(event = "item_failed", job, key = %key, attempt, max_attempts = max, retry_in_ms = retry_in.as_millis() as u64, "item failed: {error}; retrying in {:.1}s", retry_in.as_secs_f64());
                    }
                    None => {
                        report.dead += 1;
                        RunProgress::add(&counts.dead);
                        duration("dead");
                        tracing::error!(event = "item_dead", job, key = %key, attempt, "item failed: {error}; no attempts left, moved to the dead-letter list");
                    }
                }
            }
            ItemChange::Release => {
                report.released += 1;
                RunProgress::add(&counts.released);
                let why = match &f.outcome {
                    Outcome::Interrupted(why) => why.as_str(),
                    _ => "",
                };
                if f.started {
                    duration("interrupted");
                    tracing::info!(event = "item_released", job, key = %key, attempt, started = true, duration_ms = f.took.as_millis() as u64, "item interrupted ({why}); back to pending, attempt not counted");
                } else {
                    tracing::debug!(event = "item_released", job, key = %key, attempt, started = false, "item given back unstarted");
                }
            }
            _ => {}
        }
    }

    /// Renews the leases of every held item; items lost meanwhile are
    /// dropped from the local queue so they are not started.
    fn heartbeat(&self, shared: &Mutex<Shared>) -> Result<()> {
        let held: Vec<ClaimedItem> = {
            let g = lock(shared);
            g.ready.iter().chain(g.running.values()).cloned().collect()
        };
        if held.is_empty() {
            return Ok(());
        }
        let results = self.queue.heartbeat(&held)?;
        // A lease is its item and its fencing token: a newer claim of the
        // same item is not lost.
        let lost: Vec<(ItemId, u64)> = held
            .iter()
            .zip(results)
            .filter(|(_, r)| r.is_err())
            .map(|(item, _)| (item.lease.id, item.lease.token))
            .collect();
        if !lost.is_empty() {
            let mut g = lock(shared);
            g.ready
                .retain(|i| !lost.contains(&(i.lease.id, i.lease.token)));
            tracing::warn!(
                event = "lease_lost",
                job = self.queue.job(),
                items = lost.len(),
                "leases lost to another worker"
            );
        }
        Ok(())
    }
}

fn with_duration(stats: Option<Value>, took: Duration) -> Value {
    let ms = took.as_millis() as u64;
    match stats {
        Some(Value::Object(mut map)) => {
            map.entry("duration_ms").or_insert(json!(ms));
            Value::Object(map)
        }
        Some(other) => json!({ "value": other, "duration_ms": ms }),
        None => json!({ "duration_ms": ms }),
    }
}

fn lock(shared: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

fn wait_for_progress(shared: &Mutex<Shared>, progress: &Condvar, timeout: Duration) {
    let g = lock(shared);
    if !g.finished.is_empty() || g.woken || timeout.is_zero() {
        return;
    }
    let _ = progress
        .wait_timeout_while(g, timeout, |s| s.finished.is_empty() && !s.woken)
        .unwrap_or_else(|e| e.into_inner());
}

fn worker_loop<H: Handler>(state: &State, stop: &StopSignal, handler: &H) {
    let (shared, work, progress) = (&state.shared, &state.work, &state.progress);
    loop {
        let item = {
            let mut g = lock(shared);
            loop {
                if g.stop {
                    return;
                }
                // A stopping run starts nothing new: the coordinator gives
                // the ready items back.
                if !stop.is_stopped() {
                    if let Some(item) = g.ready.pop_front() {
                        g.running.insert(item.lease.id, item.clone());
                        break item;
                    }
                }
                g = work.wait(g).unwrap_or_else(|e| e.into_inner());
            }
        };
        let started = Instant::now();
        let outcome =
            catch_unwind(AssertUnwindSafe(|| handler.handle(&item))).unwrap_or_else(|panic| {
                let msg = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".into());
                Outcome::Failed(format!("handler panicked: {msg}"))
            });
        let took = started.elapsed();
        let mut g = lock(shared);
        g.running.remove(&item.lease.id);
        g.finished.push(Finished {
            item,
            outcome,
            took,
            started: true,
        });
        // Wake the coordinator once a batch is worth a commit, or when the
        // local queue runs low and the workers would soon starve; between
        // the two, outcomes pile up and share one durable commit.
        let wake = g.finished.len() >= g.batch || g.ready.len() < g.low_water;
        drop(g);
        if wake {
            progress.notify_one();
        }
    }
}
