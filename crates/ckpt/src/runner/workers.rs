//! The worker threads and what they share with the coordinator.

use std::collections::{HashMap, VecDeque};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::fence::{Fence, Watchdog};
use super::{EarlyOutcomes, Handler};
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
    /// Set by a worker that found no ready item: the coordinator's wait
    /// ends, and it claims more (a small reserve can run dry between its
    /// rounds).
    pub starving: bool,
    /// A worker thread panicked outside the handler (a bug): the run ends.
    pub worker_panicked: bool,
    /// Outcomes worth waking the coordinator for.
    pub batch: usize,
    /// Below this many ready items the coordinator is woken to refill.
    pub low_water: usize,
    /// Items one handler call takes at most (`RunOptions::batch`).
    pub max_batch: usize,
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
        if !g.finished.is_empty() || g.woken || g.starving || timeout.is_zero() {
            return;
        }
        let _ = self
            .progress
            .wait_timeout_while(g, timeout, |s| {
                s.finished.is_empty() && !s.woken && !s.starving
            })
            .unwrap_or_else(|e| e.into_inner());
    }
}

/// Held by a worker thread: if the thread panics outside the handler (whose
/// panics are outcomes), tells the coordinator, which ends the run rather
/// than wait for the items that thread held.
pub(super) struct PanicAlarm<'a>(pub &'a State);

impl Drop for PanicAlarm<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let mut g = self.0.lock();
            g.worker_panicked = true;
            g.woken = true;
            drop(g);
            self.0.progress.notify_all();
        }
    }
}

/// One worker thread: takes ready items (a batch of them, up to
/// `max_batch`), runs the handler, hands back the outcomes, until the run
/// ends.
pub(super) fn worker_loop<H: Handler>(
    queue: &Queue,
    state: &State,
    dog: &Watchdog,
    stop: &StopSignal,
    handler: &H,
) {
    loop {
        let taken = {
            let mut g = state.lock();
            loop {
                if g.stop {
                    return;
                }
                // A stopping run starts nothing new: the coordinator gives
                // the ready items back.
                if !stop.is_stopped() {
                    let taken = take_batch(&mut g);
                    if !taken.is_empty() {
                        break taken;
                    }
                    // Idle for want of a claimed item: ask for more now,
                    // not at the coordinator's next poll.
                    if !g.starving {
                        g.starving = true;
                        state.progress.notify_one();
                    }
                }
                g = state.work.wait(g).unwrap_or_else(|e| e.into_inner());
            }
        };
        // A lease lost while the item waited is not started at all.
        let mut items = Vec::with_capacity(taken.len());
        let mut fences = Vec::with_capacity(taken.len());
        for item in taken {
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
            items.push(item);
            fences.push(fence);
        }
        if items.is_empty() {
            continue;
        }
        // A batch the handler cannot take whole is cut before anything is
        // recorded as started: the rest goes back to the front, unstarted
        // (its attempts not counted should this process die), for the
        // next free worker.
        if items.len() > 1 {
            let fit = handler.batch_fits(&items).clamp(1, items.len());
            if fit < items.len() {
                let back: Vec<ClaimedItem> = items.drain(fit..).collect();
                fences.truncate(fit);
                let mut g = state.lock();
                for item in back.into_iter().rev() {
                    g.running.remove(&item.lease.id);
                    g.ready.push_front(item);
                }
                drop(g);
                state.work.notify_one();
            }
        }
        record_starts(queue, state, &items);
        let started = Instant::now();
        // Outcomes handed over early: pushed at once, each item once, each
        // timed from the one before (a split batch's items run one after
        // another), so the throughput measured stays per item.
        let reported = Mutex::new((vec![false; items.len()], started));
        let report = |index: usize, outcome: Outcome| {
            let mut g = reported.lock().unwrap_or_else(|e| e.into_inner());
            let (done, since) = &mut *g;
            let Some(item) = items.get(index).filter(|_| !done[index]) else {
                return;
            };
            done[index] = true;
            let ran_for = since.elapsed();
            *since = Instant::now();
            drop(g);
            let mut g = state.lock();
            g.running.remove(&item.lease.id);
            g.finished.push(Attempt {
                item: item.clone(),
                outcome,
                ran_for: Some(ran_for),
            });
            drop(g);
            state.progress.notify_one();
        };
        let early = EarlyOutcomes::new(&report);
        let outcomes = catch_unwind(AssertUnwindSafe(|| match (&items[..], &fences[..]) {
            ([item], [fence]) => vec![handler.handle_fenced(item, fence)],
            _ => handler.handle_batch(&items, &fences, &early),
        }))
        .unwrap_or_else(|panic| {
            let msg = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            vec![Outcome::Failed(format!("handler panicked: {msg}")); items.len()]
        });
        let took = started.elapsed();
        let (reported, _) = reported.into_inner().unwrap_or_else(|e| e.into_inner());
        let mut outcomes = outcomes.into_iter();
        let mut g = state.lock();
        // Pushed under one lock: the coordinator records a batch's
        // outcomes together, in one transaction.
        for (item, reported) in items.into_iter().zip(reported) {
            let outcome = outcomes
                .next()
                .unwrap_or_else(|| Outcome::Failed("the handler returned no outcome".into()));
            if reported {
                continue;
            }
            g.running.remove(&item.lease.id);
            g.finished.push(Attempt {
                item,
                outcome,
                ran_for: Some(took),
            });
        }
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

/// Takes the next items to run, marked running: one, or with batches a
/// run of first attempts from the front of the ready queue (an item tried
/// before runs alone: see `RunOptions::batch`).
fn take_batch(g: &mut Shared) -> Vec<ClaimedItem> {
    let mut taken = Vec::new();
    while taken.len() < g.max_batch.max(1) {
        let Some(front) = g.ready.front() else { break };
        let alone = front.attempt > 1;
        if alone && !taken.is_empty() {
            break;
        }
        let Some(item) = g.ready.pop_front() else {
            break;
        };
        g.running.insert(item.lease.id, item.clone());
        taken.push(item);
        if alone {
            break;
        }
    }
    taken
}

/// Records that `items` start, so that their attempts count even if this
/// process dies while they run. Items claimed for the first time are
/// recorded by the coordinator's next round (no round trip before they
/// start); one claimed before (a retry, or taken over from a worker that
/// died, perhaps *because* of this item) is recorded before it starts, so
/// that an item that kills its worker every time still runs out of
/// attempts. If the store cannot record them now, the coordinator retries.
fn record_starts(queue: &Queue, state: &State, items: &[ClaimedItem]) {
    let (again, first): (Vec<&ClaimedItem>, Vec<&ClaimedItem>) =
        items.iter().partition(|item| item.lease.token > 1);
    let mut later: Vec<ClaimedItem> = first.into_iter().cloned().collect();
    if !again.is_empty() {
        match queue.start(again.iter().copied()) {
            // Recorded; or refused because the lease is lost, which the
            // next heartbeat finds and fences.
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(job = queue.job(), items = again.len(), error = %e, "cannot record the start now; the coordinator retries");
                later.extend(again.into_iter().cloned());
            }
        }
    }
    if !later.is_empty() {
        state.lock().started.extend(later);
    }
}
