//! The worker threads and what they share with the coordinator.

use std::collections::{HashMap, VecDeque};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::fence::{Fence, Watchdog};
use super::Handler;
use crate::model::{ClaimedItem, ItemId};
use crate::queue::Queue;
use crate::queue::{Attempt, Outcome};
use crate::shutdown::{StopSignal, Wake};

/// The local queue of claimed items and the outcomes coming back.
#[derive(Default)]
pub(super) struct Shared {
    /// Claimed, not started.
    pub ready: VecDeque<ClaimedItem>,
    /// Ended, not yet recorded.
    pub finished: Vec<Attempt>,
    /// Started, not ended.
    pub running: HashMap<ItemId, ClaimedItem>,
    /// Started, the start not yet recorded in the store (claimed ahead:
    /// the coordinator records starts in its next round).
    pub started: Vec<ClaimedItem>,
    /// Set when the run ends: workers return.
    pub stop: bool,
    /// Set by a stop request, so that the coordinator's wait ends at once.
    pub woken: bool,
    /// Outcomes worth waking the coordinator for.
    pub batch: usize,
    /// Below this many ready items the coordinator is woken to refill.
    pub low_water: usize,
}

/// What the coordinator and the workers share.
#[derive(Default)]
pub(super) struct State {
    pub shared: Mutex<Shared>,
    /// Workers wait here for items.
    pub work: Condvar,
    /// The coordinator waits here for outcomes.
    pub progress: Condvar,
}

impl Wake for State {
    fn wake(&self) {
        self.lock().woken = true;
        self.progress.notify_all();
        self.work.notify_all();
    }
}

impl State {
    pub(super) fn lock(&self) -> MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits up to `timeout` for an outcome or a stop request.
    pub(super) fn wait_for_progress(&self, timeout: Duration) {
        let g = self.lock();
        if !g.finished.is_empty() || g.woken || timeout.is_zero() {
            return;
        }
        let _ = self
            .progress
            .wait_timeout_while(g, timeout, |s| s.finished.is_empty() && !s.woken)
            .unwrap_or_else(|e| e.into_inner());
    }
}

/// One worker thread: takes ready items, runs the handler, hands back the
/// outcome, until the run ends.
pub(super) fn worker_loop<H: Handler>(
    queue: &Queue,
    state: &State,
    dog: &Watchdog,
    stop: &StopSignal,
    handler: &H,
) {
    loop {
        let item = {
            let mut g = state.lock();
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
                g = state.work.wait(g).unwrap_or_else(|e| e.into_inner());
            }
        };
        // A lease lost while the item waited is not started at all.
        let fence = dog
            .fence(&item.lease)
            .unwrap_or_else(|| Fence::new(dog.timings().kill_grace()));
        if let Some(why) = fence.reason() {
            let mut g = state.lock();
            g.running.remove(&item.lease.id);
            g.finished.push(Attempt {
                item,
                outcome: Outcome::Interrupted(format!("not started: {why}")),
                ran_for: None,
            });
            drop(g);
            state.progress.notify_one();
            continue;
        }
        record_start(queue, state, &item);
        let started = Instant::now();
        let outcome = catch_unwind(AssertUnwindSafe(|| handler.handle_fenced(&item, &fence)))
            .unwrap_or_else(|panic| {
                let msg = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".into());
                Outcome::Failed(format!("handler panicked: {msg}"))
            });
        let took = started.elapsed();
        let mut g = state.lock();
        g.running.remove(&item.lease.id);
        g.finished.push(Attempt {
            item,
            outcome,
            ran_for: Some(took),
        });
        // Wake the coordinator once a batch is worth a commit, or when the
        // local queue runs low and the workers would soon starve; between
        // the two, outcomes pile up and share one durable commit.
        let wake = g.finished.len() >= g.batch || g.ready.len() < g.low_water;
        drop(g);
        if wake {
            state.progress.notify_one();
        }
    }
}

/// Records that `item` starts, so that its attempt counts even if this
/// process dies while it runs. An item claimed for the first time is
/// recorded by the coordinator's next round (no round trip before it
/// starts); one claimed before (a retry, or taken over from a worker that
/// died, perhaps *because* of this item) is recorded before it starts, so
/// that an item that kills its worker every time still runs out of
/// attempts. If the store cannot record it now, the coordinator retries.
fn record_start(queue: &Queue, state: &State, item: &ClaimedItem) {
    if item.lease.token > 1 {
        match queue.start(std::iter::once(item)) {
            // Recorded; or refused because the lease is lost, which the
            // next heartbeat finds and fences.
            Ok(_) => return,
            Err(e) => {
                tracing::debug!(job = queue.job(), key = %item.key, error = %e, "cannot record the start now; the coordinator retries");
            }
        }
    }
    state.lock().started.push(item.clone());
}
