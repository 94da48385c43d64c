//! [`Runner`]: runs a handler over a job's items on N threads, with
//! prefetched claims, lease heartbeats and group-committed completions.
//!
//! # Architecture
//! Worker threads only run the handler: they pop a claimed item from a local
//! queue and push back its outcome. The calling thread is the coordinator:
//! each round it commits every outcome that arrived (one transaction for all
//! of them, so a durable commit is shared by many items), renews the leases
//! it holds when a third of the lease has passed, and claims enough items to
//! keep every worker busy plus a reserve: at most `prefetch`, as much as the
//! workers get through in 100 ms or a few rounds (so slow items are not
//! hoarded from other runs on the job: see [`crate::policy::prefetch`]).
//! A worker that finds the reserve empty wakes it at once. It ends when the job
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
//! # Layout
//! `coordinator` holds the loop of the calling thread; `workers` the worker
//! threads and the state they share with it. The coordinator talks only to
//! the [`Queue`]: it claims, renews and records outcomes there
//! ([`Queue::settle`], which also emits the events and metrics of each
//! outcome), never to the store directly.

mod coordinator;
mod fence;
mod workers;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::error::Result;
use crate::model::{ClaimedItem, ItemCounts, JobStatus};
use crate::queue::{Outcome, Queue};
use crate::shutdown::{StopSignal, Wake};
use coordinator::Coordinator;
pub use fence::Fence;
use fence::Watchdog;
use workers::{worker_loop, PanicAlarm, Shared, State};

/// How a [`Runner`] runs.
#[derive(Debug, Clone, PartialEq)]
pub struct RunOptions {
    /// Worker threads (items run at once).
    pub workers: usize,
    /// Items claimed ahead of the workers, at most: the reserve follows how
    /// long an attempt takes (the whole prefetch for fast items, a batch
    /// for slow ones: see [`crate::policy::prefetch`]).
    pub prefetch: usize,
    /// Longest wait between two looks at the store while idle.
    pub idle_poll: Duration,
    /// How long the store may stay busy or unreachable (retried with
    /// backoff) before the run gives up.
    pub max_outage: Duration,
    /// Items handed to one [`Handler::handle_batch`] call at most (1: one
    /// item per call). A batch is formed from the items ready at once, and
    /// only of first attempts: an item that was tried before (it failed,
    /// or its worker died) runs alone, so a bad item does not take other
    /// items down with it twice.
    pub batch: usize,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            workers: 1,
            prefetch: 1,
            idle_poll: Duration::from_millis(500),
            max_outage: Duration::from_secs(300),
            batch: 1,
        }
    }
}

/// Runs one attempt of an item.
pub trait Handler: Sync {
    /// Processes `item`; called from a worker thread.
    fn handle(&self, item: &ClaimedItem) -> Outcome;

    /// Processes `item`, stopping its work when `fence` trips: the runner
    /// trips it when it can no longer prove that the item's lease is its
    /// own (a renewal was refused, or none was confirmed in time), early
    /// enough that work stopped within [`Fence::kill_grace`] is gone before
    /// another worker may take the item. The default calls
    /// [`handle`](Handler::handle), whose work cannot be stopped from
    /// outside: its outcome is still refused once the lease is lost, but
    /// the work itself runs on. `ckpt run` stops its command here.
    fn handle_fenced(&self, item: &ClaimedItem, fence: &Fence) -> Outcome {
        let _ = fence;
        self.handle(item)
    }

    /// Processes up to [`RunOptions::batch`] items at once, with their
    /// fences (in the same order), returning one outcome per item in the
    /// same order: all of them are recorded in one transaction, so a batch
    /// that completes costs one durable commit. Every item's start is
    /// recorded before; each outcome is charged to its item as one
    /// attempt. The default handles the items one by one. Work done for
    /// all the items at once should be stopped when any of their fences
    /// trips: see [`Fence::any`].
    ///
    /// An item's outcome known before the others' (a failed batch whose
    /// items then run one by one) may be handed to `early` as soon as it
    /// is: it is recorded at once, not after the whole batch, so a crash
    /// later in the batch loses none of the work already done. The
    /// returned outcomes of items handed to `early` are ignored.
    fn handle_batch(
        &self,
        items: &[ClaimedItem],
        fences: &[Fence],
        early: &EarlyOutcomes<'_>,
    ) -> Vec<Outcome> {
        let _ = early;
        items
            .iter()
            .zip(fences)
            .map(|(item, fence)| self.handle_fenced(item, fence))
            .collect()
    }

    /// How many of the front of `items` (more than one) one
    /// [`handle_batch`](Handler::handle_batch) call can take, at least 1:
    /// a batch that would not fit (one command line holding them all) is
    /// cut to that many before any of it starts, and the rest goes back,
    /// unstarted, to the front of the local queue for the next free
    /// worker. The default takes them all.
    fn batch_fits(&self, items: &[ClaimedItem]) -> usize {
        items.len()
    }
}

/// Where [`Handler::handle_batch`] hands over an item's outcome before the
/// batch's call returns (see there).
pub struct EarlyOutcomes<'a> {
    report: &'a (dyn Fn(usize, Outcome) + Sync),
}

impl<'a> EarlyOutcomes<'a> {
    /// Calls `report(index, outcome)` for each outcome handed over.
    pub fn new(report: &'a (dyn Fn(usize, Outcome) + Sync)) -> EarlyOutcomes<'a> {
        EarlyOutcomes { report }
    }

    /// Records `outcome` for the batch's item `index` now, as if the batch
    /// had ended for it. Later reports of the same index, and indexes out
    /// of the batch, are ignored.
    pub fn report(&self, index: usize, outcome: Outcome) {
        (self.report)(index, outcome);
    }
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
    /// See [`RunProgress::waiting_until`].
    waiting_until: Mutex<Option<std::time::Instant>>,
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

    /// While the run holds no item and waits for one to become due (a
    /// retry's backoff, an item another run holds until its lease ends):
    /// when the next one is. `None` while it has items in hand.
    pub fn waiting_until(&self) -> Option<std::time::Instant> {
        *self
            .inner
            .waiting_until
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn set_waiting_until(&self, until: Option<std::time::Instant>) {
        *self
            .inner
            .waiting_until
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = until;
    }

    fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
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
                batch: workers * self.options.batch.max(1),
                low_water: self.options.prefetch.div_ceil(2).max(1),
                max_batch: self.options.batch.max(1),
                ..Shared::default()
            }),
            ..State::default()
        });
        let waker: Arc<dyn Wake> = state.clone();
        self.stop.register(Arc::downgrade(&waker));
        let state = &*state;
        let dog = &Watchdog::new(
            self.queue.options().lease,
            self.queue.job(),
            Arc::clone(self.queue.ckpt().store()),
        );
        std::thread::scope(|scope| {
            std::thread::Builder::new()
                .name("ckpt-fence".into())
                .spawn_scoped(scope, || dog.watch())
                .map_err(|e| {
                    crate::Error::Storage(format!("cannot start the fence thread: {e}"))
                })?;
            for _ in 0..workers {
                scope.spawn(|| {
                    let _alarm = PanicAlarm(state);
                    worker_loop(self.queue, state, dog, &self.stop, handler)
                });
            }
            // The workers and the watchdog end when the coordinator does,
            // even by a panic: the scope joins them before it unwinds on.
            let _stop = StopOnExit { state, dog };
            Coordinator::new(self, state, dog).run()
        })
    }
}

/// Stops the workers and the watchdog when dropped.
struct StopOnExit<'a> {
    state: &'a State,
    dog: &'a Watchdog,
}

impl Drop for StopOnExit<'_> {
    fn drop(&mut self) {
        self.state.lock().stop = true;
        self.state.work.notify_all();
        self.dog.stop();
    }
}
