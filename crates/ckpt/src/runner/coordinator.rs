//! The coordinator: the calling thread of [`Runner::run`], which alone
//! talks to the queue while the workers run the handler.

use std::time::{Duration, Instant};

use super::fence::Watchdog;
use super::workers::State;
use super::{RunProgress, RunReport, Runner};
use crate::error::{Error, Result};
use crate::model::{ClaimedItem, ItemId, ItemStatus};
use crate::policy::fence::FenceReason;
use crate::policy::prefetch::Throughput;
use crate::queue::{Attempt, Outcome, Settled};

/// How long items may stay due yet unclaimable by this run before it ends
/// (see `Coordinator::round`).
const UNCLAIMABLE_FOR: Duration = Duration::from_secs(1);

/// One run's coordinator: what it holds between rounds.
pub(super) struct Coordinator<'r, 'q> {
    runner: &'r Runner<'q>,
    state: &'r State,
    /// Fences the items whose leases go unconfirmed.
    dog: &'r Watchdog,
    report: RunReport,
    /// Ended attempts not yet recorded (kept across a store outage).
    unsaved: Vec<Attempt>,
    /// Starts not yet recorded (kept across a store outage).
    starts: Vec<ClaimedItem>,
    last_heartbeat: Instant,
    last_reclaim: Instant,
    /// Since when items have been due that this run's claims do not get
    /// (see `round`).
    unclaimable_since: Option<Instant>,
    /// A batch per worker: the items running at most.
    running_max: usize,
    /// How long an attempt and a round's store work take, which size the
    /// reserve claimed ahead (see `crate::policy::prefetch`).
    throughput: Throughput,
}

/// What a round found in the shared state.
struct Snapshot {
    stopping: bool,
    worker_panicked: bool,
    /// Items claimed and not yet recorded: ready or running.
    held: usize,
}

impl<'r, 'q> Coordinator<'r, 'q> {
    pub(super) fn new(runner: &'r Runner<'q>, state: &'r State, dog: &'r Watchdog) -> Self {
        Coordinator {
            runner,
            state,
            dog,
            report: RunReport::default(),
            unsaved: Vec::new(),
            starts: Vec::new(),
            last_heartbeat: Instant::now(),
            last_reclaim: Instant::now(),
            unclaimable_since: None,
            running_max: runner.options.workers.max(1) * runner.options.batch.max(1),
            throughput: Throughput::default(),
        }
    }

    /// Items to hold at most: a full batch for every worker, and a reserve
    /// claimed ahead that follows the rate (at least a batch, at most the
    /// prefetch).
    fn capacity(&self) -> usize {
        let options = &self.runner.options;
        let min = options.batch.max(1).min(options.prefetch);
        self.running_max
            + self
                .throughput
                .reserve(min, options.prefetch, self.running_max)
    }

    /// Runs rounds until the job has nothing left for this run, riding out
    /// a busy or unreachable store for up to `max_outage`.
    pub(super) fn run(mut self) -> Result<RunReport> {
        let queue = self.runner.queue;
        queue.ensure_job()?;
        queue.reclaim_dead_owners()?;
        let mut outage: Option<Instant> = None;
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.round() {
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
                    if since.elapsed() >= self.runner.options.max_outage {
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

    /// One round: record what ended, renew leases, then either wind down
    /// (stopping), claim more, or finish; then wait. `Some` when the run
    /// is over.
    fn round(&mut self) -> Result<Option<RunReport>> {
        let snapshot = self.collect();
        if snapshot.worker_panicked {
            // The scope re-raises the worker's panic once this returns.
            return Err(Error::Storage("a worker thread panicked".into()));
        }
        let store_work = Instant::now();
        let recorded = !self.unsaved.is_empty() || !self.starts.is_empty();
        self.record()?;
        let lease = self.runner.queue.options().lease;
        // Renew on schedule, and at once when the store's liveness session
        // was replaced: leases written under the old one must move.
        if self.last_heartbeat.elapsed() >= self.dog.timings().renew_after
            || self.dog.wants_renewal()
        {
            let sent = Instant::now();
            self.heartbeat(sent)?;
            self.last_heartbeat = sent;
        }
        if snapshot.stopping {
            self.runner.progress.set_waiting_until(None);
            // Claim nothing more; wait for the running items.
            if snapshot.held == 0 && self.unsaved.is_empty() {
                self.report.stopped = true;
                return self.finish().map(Some);
            }
            let poll = self.runner.options.idle_poll.min(lease / 3);
            self.state.wait_for_progress(poll);
            return Ok(None);
        }
        let claimed_at = self.runner.queue.ckpt().now();
        let claimed = self.refill(snapshot.held)?;
        if recorded || claimed > 0 {
            self.throughput.round(store_work.elapsed());
        }
        let in_hand = snapshot.held + claimed;
        let mut unclaimable = false;
        let mut waiting_until = None;
        if in_hand == 0 && self.unsaved.is_empty() {
            // An index lookup, where counting would scan every item.
            let next = self.runner.queue.next_ready_at()?;
            if let Some(due) = next.filter(|due| *due > claimed_at) {
                waiting_until = Some(Instant::now() + due.since(claimed_at));
            }
            match next {
                None => return self.finish().map(Some),
                // Due when this round claimed, yet it got nothing. For a
                // moment that is another worker's claim in flight (a row it
                // has locked, PostgreSQL's SKIP LOCKED); for a second on
                // end, items held by this worker outside the run (claimed by
                // hand, or by a run that ended with an error), which an owner
                // never claims again. If they are all that is left, waiting
                // would never end; else the rest (a retry, another worker's
                // lease) becomes claimable in time.
                Some(due) if due <= claimed_at => {
                    unclaimable = true;
                    let since = *self.unclaimable_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= UNCLAIMABLE_FOR {
                        if self.only_own_items_left()? {
                            tracing::warn!(
                                job = self.runner.queue.job(),
                                "the run ends: the job's only unfinished items are held by this worker outside the run (claimed before it and never settled), and a worker never claims its own items again; another worker (another queue or process) takes them over"
                            );
                            return self.finish().map(Some);
                        }
                        // Looked again in a second, not every round.
                        self.unclaimable_since = Some(Instant::now());
                    }
                }
                Some(_) => {}
            }
            if self.last_reclaim.elapsed() >= Duration::from_secs(1) {
                self.runner.queue.reclaim_dead_owners()?;
                self.last_reclaim = Instant::now();
            }
        }
        if !unclaimable {
            self.unclaimable_since = None;
        }
        self.runner.progress.set_waiting_until(waiting_until);
        self.wait(in_hand)?;
        Ok(None)
    }

    /// Takes the attempts that ended and, when stopping, the items not
    /// started (given back unstarted), into `unsaved`.
    fn collect(&mut self) -> Snapshot {
        let mut g = self.state.lock();
        // Read under the lock after clearing `woken`: a stop requested from
        // now on wakes the wait of this round.
        g.woken = false;
        g.starving = false;
        let stopping = self.runner.stop.is_stopped();
        // One measurement a round: the items of a `-n` batch all ran for
        // the batch's time, and would each count as one.
        let (mut ran, mut timed) = (Duration::ZERO, 0u32);
        for took in g.finished.iter().filter_map(|a| a.ran_for) {
            ran += took;
            timed += 1;
        }
        if timed > 0 {
            self.throughput.ended(ran / timed);
        }
        self.unsaved.append(&mut g.finished);
        self.starts.append(&mut g.started);
        if stopping {
            // Under the lock that workers take an item under: an item is
            // either started or given back, never both.
            self.unsaved.extend(g.ready.drain(..).map(|item| Attempt {
                item,
                outcome: Outcome::Interrupted("not started: the run is stopping".into()),
                ran_for: None,
            }));
        }
        Snapshot {
            stopping,
            worker_panicked: g.worker_panicked,
            held: g.ready.len() + g.running.len(),
        }
    }

    /// Records the unsaved attempts in one transaction. On error they stay
    /// unsaved, for the next round.
    fn record(&mut self) -> Result<()> {
        if self.unsaved.is_empty() && self.starts.is_empty() {
            return Ok(());
        }
        // One transaction; the starts first, since an item may have
        // started and ended in one round.
        let settled = self
            .runner
            .queue
            .start_and_settle(&self.starts, &self.unsaved)?;
        self.starts.clear();
        for attempt in self.unsaved.drain(..) {
            self.dog.release(&attempt.item.lease);
        }
        let counts = &self.runner.progress;
        let report = &mut self.report;
        for s in settled {
            match s {
                Settled::Completed => {
                    report.completed += 1;
                    RunProgress::add(&counts.inner.completed);
                }
                Settled::Retrying(_) => {
                    report.failed += 1;
                    RunProgress::add(&counts.inner.failed);
                }
                Settled::Dead => {
                    report.failed += 1;
                    report.dead += 1;
                    RunProgress::add(&counts.inner.failed);
                    RunProgress::add(&counts.inner.dead);
                }
                Settled::Released => {
                    report.released += 1;
                    RunProgress::add(&counts.inner.released);
                }
                Settled::Lost(_) => {
                    report.lost += 1;
                    RunProgress::add(&counts.inner.lost);
                }
            }
        }
        Ok(())
    }

    /// True if every unfinished item of the job is running under this
    /// run's owner (so none is in this run's hands: held outside it). Lists
    /// the running items: called at most once a second, and only while due
    /// items stay unclaimable.
    fn only_own_items_left(&self) -> Result<bool> {
        let queue = self.runner.queue;
        let counts = queue.counts()?;
        if counts.pending + counts.failed > 0 {
            return Ok(false);
        }
        let running = queue.items(Some(ItemStatus::Running), counts.running as usize)?;
        Ok(running
            .iter()
            .all(|i| i.owner.as_deref() == Some(queue.owner())))
    }

    /// Claims enough items to fill every slot and the reserve; returns how
    /// many.
    fn refill(&mut self, held: usize) -> Result<usize> {
        let capacity = self.capacity();
        // Workers wake this thread once the reserve is half gone.
        let low_water = (capacity - self.running_max).div_ceil(2).max(1);
        self.state.lock().low_water = low_water;
        if held >= capacity {
            return Ok(0);
        }
        let (sent, session) = (Instant::now(), self.dog.session_before());
        let (items, buried) = self
            .runner
            .queue
            .claim_ahead_counting_buried(capacity - held)?;
        // Dead unrun (no attempt of this run): this run's dead all the same.
        self.report.dead += buried;
        self.runner
            .progress
            .inner
            .dead
            .fetch_add(buried, std::sync::atomic::Ordering::Relaxed);
        let by = self.dog.confirmation(sent, session);
        for item in &items {
            self.dog.hold(&item.lease, by);
        }
        let claimed = items.len();
        if claimed > 0 {
            self.state.lock().ready.extend(items);
            self.state.work.notify_all();
        }
        Ok(claimed)
    }

    /// Sleeps until there is something to do: with room for more items,
    /// until the next one is due (or the store signals new ones, when this
    /// run holds none); with every slot taken, until a worker finishes.
    fn wait(&self, in_hand: usize) -> Result<()> {
        let queue = self.runner.queue;
        let wait = if in_hand < self.capacity() {
            self.idle_wait()?
        } else {
            self.runner.options.idle_poll
        };
        let wait = wait.min(queue.options().lease / 3);
        // With nothing in hand no worker can make progress: wait for the
        // store's signal that items arrived, where it has one.
        let signalled = (in_hand == 0).then(|| queue.wait_for_items(wait)).flatten();
        if signalled.is_none() {
            self.state.wait_for_progress(wait);
        }
        Ok(())
    }

    /// How long to sleep when there is nothing to do: until the next item
    /// becomes claimable, within bounds.
    fn idle_wait(&self) -> Result<Duration> {
        let floor = Duration::from_millis(5);
        let poll = self.runner.options.idle_poll;
        let queue = self.runner.queue;
        let next = queue.next_ready_at()?;
        let now = queue.ckpt().now();
        Ok(match next {
            Some(t) => t.since(now).clamp(floor, poll),
            None => poll,
        })
    }

    /// Marks the job done if nothing is left, and reports, with the job's
    /// status either way (a stopped or halted run leaves it running).
    fn finish(&mut self) -> Result<RunReport> {
        let queue = self.runner.queue;
        self.report.status = match queue.finish_if_done()? {
            Some(done) => Some(done),
            None => queue.ckpt().get_job(queue.job())?.map(|job| job.status),
        };
        self.report.counts = self.runner.queue.counts()?;
        Ok(self.report.clone())
    }

    /// Renews the leases of every held item, in a write sent at `sent`;
    /// items lost meanwhile are dropped from the local queue so they are
    /// not started, and the running ones are fenced (their work stopped).
    fn heartbeat(&self, sent: Instant) -> Result<()> {
        let held: Vec<ClaimedItem> = {
            let g = self.state.lock();
            g.ready.iter().chain(g.running.values()).cloned().collect()
        };
        if held.is_empty() {
            return Ok(());
        }
        let session = self.dog.session_before();
        let results = self.runner.queue.heartbeat(&held)?;
        let by = self.dog.confirmation(sent, session);
        // A lease is its item and its fencing token: a newer claim of the
        // same item is not lost.
        let mut lost: Vec<(ItemId, u64)> = Vec::new();
        for (item, result) in held.iter().zip(results) {
            match result {
                Ok(()) => self.dog.confirm(&item.lease, by),
                Err(e) => {
                    let why = match e {
                        Error::Fenced(m) => m,
                        other => other.to_string(),
                    };
                    let why = format!("its lease was taken: {why}");
                    self.dog.lost(&item.lease, FenceReason::TakenOver, &why);
                    lost.push((item.lease.id, item.lease.token));
                }
            }
        }
        if !lost.is_empty() {
            let dropped: std::collections::VecDeque<ClaimedItem> = {
                let mut g = self.state.lock();
                let (gone, kept) = g
                    .ready
                    .drain(..)
                    .partition(|i| lost.contains(&(i.lease.id, i.lease.token)));
                g.ready = kept;
                gone
            };
            for item in &dropped {
                self.dog.release(&item.lease);
            }
        }
        Ok(())
    }
}
