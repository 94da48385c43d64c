//! Self-fencing of running items: a [`Fence`] per held item, and the
//! watchdog thread that trips it when the item's lease can no longer be
//! proven this worker's own.
//!
//! The watchdog runs beside the coordinator rather than inside it because
//! the coordinator may be stuck in a store call (a server that stopped
//! answering, a TCP connection that hangs) exactly when fencing matters: the
//! deadline must be kept no matter what the store does. It reads only the
//! monotonic clock and the confirmations the coordinator hands it.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use crate::model::ItemLease;
use crate::policy::fence::{FenceReason, FenceTimings};
use crate::store::Store;

type Hook = Box<dyn FnOnce(&str) + Send>;
type DeadlineHook = Arc<dyn Fn(Instant, Instant) + Send + Sync>;

#[derive(Default)]
struct FenceState {
    lost: Option<(FenceReason, String)>,
    hooks: Vec<Hook>,
    /// When the work must be told to stop, and when it must be gone, as
    /// things stand (moves later with each confirmation).
    deadline: Option<(Instant, Instant)>,
    deadline_hooks: Vec<DeadlineHook>,
}

struct FenceInner {
    state: Mutex<FenceState>,
    tripped: Condvar,
    kill_grace: Duration,
    /// The fences a fence over several is made of ([`Fence::any`]): it is
    /// lost as soon as one of them is, before their hooks have tripped it.
    /// Weak: their hooks hold this fence.
    parts: Vec<Weak<FenceInner>>,
}

/// Tripped when this worker can no longer prove that an item's lease is its
/// own: the handler must stop the item's work at once, because another
/// worker may take the item over once the lease lapses.
///
/// A [`Handler`](super::Handler) gets it in
/// [`handle_fenced`](super::Handler::handle_fenced). Work that can be
/// stopped from outside (a child process) registers a hook with
/// [`on_lost`](Fence::on_lost); work that runs in the handler's own thread
/// checks [`is_lost`](Fence::is_lost) between steps. The runner trips the
/// fence early enough that the work has [`kill_grace`](Fence::kill_grace)
/// to end and is still gone before the lease lapses.
#[derive(Clone)]
pub struct Fence {
    inner: Arc<FenceInner>,
}

impl std::fmt::Debug for Fence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fence")
            .field("lost", &self.reason())
            .finish()
    }
}

impl Fence {
    /// A fence that is not tripped; the work it guards gets `kill_grace`
    /// between a polite stop and a forced one.
    pub fn new(kill_grace: Duration) -> Fence {
        Fence::with_parts(kill_grace, Vec::new())
    }

    fn with_parts(kill_grace: Duration, parts: Vec<Weak<FenceInner>>) -> Fence {
        Fence {
            inner: Arc::new(FenceInner {
                state: Mutex::new(FenceState::default()),
                tripped: Condvar::new(),
                kill_grace,
                parts,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, FenceState> {
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// True once the lease is lost. True from the instant the fence trips,
    /// before its hooks have run (they run after, on the thread that
    /// tripped it): work that ends meanwhile must not be taken as done, as
    /// it may have been told to stop.
    pub fn is_lost(&self) -> bool {
        self.lost_with(|_| ()).is_some()
    }

    /// Why the lease is lost, once it is (for a fence over several, once
    /// any of them is).
    pub fn reason(&self) -> Option<String> {
        self.lost_with(|why| why.to_string())
    }

    /// `read(why)` of this fence's loss, else of the first lost part's.
    fn lost_with<T>(&self, read: impl Fn(&str) -> T) -> Option<T> {
        if let Some((_, why)) = &self.lock().lost {
            return Some(read(why));
        }
        self.inner.parts.iter().find_map(|part| {
            let part = part.upgrade()?;
            let g = part.state.lock().unwrap_or_else(|e| e.into_inner());
            g.lost.as_ref().map(|(_, why)| read(why))
        })
    }

    /// How long the work may take to stop after a polite request (SIGTERM)
    /// before it must be forced (SIGKILL).
    pub fn kill_grace(&self) -> Duration {
        self.inner.kill_grace
    }

    /// Runs `hook` with the reason when the fence trips (at once if it has
    /// tripped already). Hooks run on the thread that trips the fence, so
    /// they must be quick (send a signal, start a timer thread).
    pub fn on_lost(&self, hook: impl FnOnce(&str) + Send + 'static) {
        let mut g = self.lock();
        match &g.lost {
            Some((_, why)) => {
                let why = why.clone();
                drop(g);
                hook(&why);
            }
            None => g.hooks.push(Box::new(hook)),
        }
    }

    /// Runs `hook(term, kill)` whenever the fence's deadline moves (and at
    /// once with the current one): by `term` the work must be told to stop,
    /// by `kill` it must be gone, unless the lease is confirmed again
    /// meanwhile. For a watchdog outside this process that must enforce the
    /// deadline even if this process is stopped or hung (`ckpt run`'s
    /// sentinel). Hooks run on the runner's threads with the fence locked:
    /// keep them quick, and never touch the fence from them.
    pub fn on_deadline(&self, hook: impl Fn(Instant, Instant) + Send + Sync + 'static) {
        let hook: DeadlineHook = Arc::new(hook);
        // Under the lock, as in set_deadline: a hook hears the deadlines in
        // the order they were set, never a stale one last.
        let mut g = self.lock();
        g.deadline_hooks.push(Arc::clone(&hook));
        if let Some((term, kill)) = g.deadline {
            hook(term, kill);
        }
    }

    /// A fence over several items' work done as one (a batch run by one
    /// command): it trips as soon as any of `fences` trips, since the work
    /// of the lost item cannot be stopped apart from the others', and its
    /// deadline is the earliest of theirs. Its grace is the shortest.
    pub fn any(fences: &[Fence]) -> Fence {
        if let [one] = fences {
            return one.clone();
        }
        let grace = fences
            .iter()
            .map(Fence::kill_grace)
            .min()
            .unwrap_or_default();
        let all = Fence::with_parts(
            grace,
            fences.iter().map(|f| Arc::downgrade(&f.inner)).collect(),
        );
        // Each fence's (term, kill), once it has one; kept sorted, so that a
        // move costs O(log n) and not a scan of the batch (a batch of n
        // fences hears n moves at every watchdog pass).
        let deadlines = Arc::new(Mutex::new(Earliest::new(fences.len())));
        for (i, fence) in fences.iter().enumerate() {
            // Weak: a hook kept by the fence must not keep the fence alive.
            let (mine, combined) = (Arc::downgrade(&fence.inner), all.clone());
            fence.on_lost(move |why| {
                let reason = mine
                    .upgrade()
                    .and_then(|f| {
                        let g = f.state.lock().unwrap_or_else(|e| e.into_inner());
                        g.lost.as_ref().map(|(r, _)| *r)
                    })
                    .unwrap_or(FenceReason::TakenOver);
                combined.trip(reason, why);
            });
            let (deadlines, combined) = (Arc::clone(&deadlines), all.clone());
            fence.on_deadline(move |term, kill| {
                let mut d = deadlines.lock().unwrap_or_else(|e| e.into_inner());
                if let Some((term, kill)) = d.set(i, term, kill) {
                    combined.set_deadline(term, kill);
                }
            });
        }
        all
    }

    /// Moves the deadline; the hooks hear of moves of 20 ms or more.
    pub(super) fn set_deadline(&self, term: Instant, kill: Instant) {
        let mut g = self.lock();
        let moved = g.deadline.is_none_or(|(t, _)| {
            t.max(term).duration_since(t.min(term)) >= Duration::from_millis(20)
        });
        if !moved || g.lost.is_some() {
            return;
        }
        g.deadline = Some((term, kill));
        // Under the lock: see on_deadline.
        for hook in &g.deadline_hooks {
            hook(term, kill);
        }
    }

    /// Moves the deadline if no hook watches it yet (the work has not
    /// started): a caller that must not block on a hook (a sentinel that
    /// stopped reading) leaves a watched deadline to the watchdog.
    pub(super) fn set_deadline_if_unwatched(&self, term: Instant, kill: Instant) {
        let mut g = self.lock();
        if g.deadline_hooks.is_empty() && g.lost.is_none() {
            g.deadline = Some((term, kill));
        }
    }

    /// Waits up to `timeout` for the fence to trip; true if it has.
    pub fn wait(&self, timeout: Duration) -> bool {
        let g = self.lock();
        let (g, _) = self
            .inner
            .tripped
            .wait_timeout_while(g, timeout, |s| s.lost.is_none())
            .unwrap_or_else(|e| e.into_inner());
        g.lost.is_some()
    }

    /// Trips the fence (once: later calls change nothing) and runs the
    /// hooks. Returns whether this call tripped it.
    pub fn trip(&self, reason: FenceReason, why: &str) -> bool {
        let hooks = {
            let mut g = self.lock();
            if g.lost.is_some() {
                return false;
            }
            g.lost = Some((reason, why.to_string()));
            std::mem::take(&mut g.hooks)
        };
        self.inner.tripped.notify_all();
        for hook in hooks {
            hook(why);
        }
        true
    }

    /// Trips the fence of work seen ending `late` past the deadline by
    /// which it had to be told to stop (as published to
    /// [`on_deadline`](Fence::on_deadline) hooks): a watchdog outside this
    /// process (`ckpt run`'s sentinel) may have stopped it while this
    /// process was stopped or hung and its own watchdog could not trip the
    /// fence, and work that was told to stop cannot show by how it ended
    /// that it was done. Returns whether this call tripped it.
    pub fn trip_overdue(&self, late: Duration) -> bool {
        let late = humantime::format_duration(round_ms(late));
        self.trip(
            FenceReason::Unconfirmed,
            &format!(
                "its end was seen only {late} past the deadline by which it had to be told to stop (this process was paused or hung, the machine slept, or the store did not confirm a renewal in time), so it may have been stopped from outside"
            ),
        )
    }
}

/// The earliest (term, kill) over several fences' deadlines, each set and
/// moved by its index.
struct Earliest {
    current: Vec<Option<(Instant, Instant)>>,
    /// Every set deadline, counted: the first key is the earliest.
    terms: BTreeMap<Instant, usize>,
    kills: BTreeMap<Instant, usize>,
}

impl Earliest {
    fn new(n: usize) -> Earliest {
        Earliest {
            current: vec![None; n],
            terms: BTreeMap::new(),
            kills: BTreeMap::new(),
        }
    }

    /// Sets deadline `i`; the earliest term and kill over all set ones.
    fn set(&mut self, i: usize, term: Instant, kill: Instant) -> Option<(Instant, Instant)> {
        fn remove(m: &mut BTreeMap<Instant, usize>, at: Instant) {
            if let Some(n) = m.get_mut(&at) {
                *n -= 1;
                if *n == 0 {
                    m.remove(&at);
                }
            }
        }
        if let Some((t, k)) = self.current[i].replace((term, kill)) {
            remove(&mut self.terms, t);
            remove(&mut self.kills, k);
        }
        *self.terms.entry(term).or_default() += 1;
        *self.kills.entry(kill).or_default() += 1;
        Some((
            *self.terms.first_key_value()?.0,
            *self.kills.first_key_value()?.0,
        ))
    }
}

/// A held item's lease as the watchdog sees it.
struct Held {
    /// When the last write that confirmed the lease was sent.
    confirmed: Instant,
    /// The liveness session that write was made under, when the store has
    /// sessions and it is known for sure (`None`: unknown, so the write's
    /// own send time is all that bounds a shortening of the lease).
    session: Option<u64>,
    fence: Fence,
}

/// A write that confirmed leases: when it was sent, and the liveness
/// session it was made under (see [`Watchdog::session_around`]).
#[derive(Debug, Clone, Copy)]
pub(super) struct Confirmation {
    pub sent: Instant,
    pub session: Option<u64>,
}

#[derive(Default)]
struct WatchState {
    held: HashMap<(i64, u64), Held>,
    stop: bool,
    /// When the watchdog thread looks next (it sleeps until then unless
    /// woken for an earlier deadline).
    next_look: Option<Instant>,
    /// A deadline moved since the watchdog last looked (a wake-up may have
    /// come while it was publishing, outside the lock).
    dirty: bool,
}

/// The leases a run holds, and the thread that fences those not confirmed
/// in time. Keyed by item and fencing token: a newer claim of the same item
/// is another lease.
pub(super) struct Watchdog {
    timings: FenceTimings,
    /// Timings over the store's session grace, when it has sessions.
    session_timings: Option<FenceTimings>,
    store: Arc<dyn Store>,
    state: Mutex<WatchState>,
    changed: Condvar,
    job: String,
}

fn key(lease: &ItemLease) -> (i64, u64) {
    (lease.id, lease.token)
}

impl Watchdog {
    pub(super) fn new(lease: Duration, job: &str, store: Arc<dyn Store>) -> Watchdog {
        let session_timings = store
            .owner_sessions()
            .map(|s| FenceTimings::for_lease(s.session_grace()));
        Watchdog {
            timings: FenceTimings::for_lease(lease),
            session_timings,
            store,
            state: Mutex::new(WatchState::default()),
            changed: Condvar::new(),
            job: job.to_string(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, WatchState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn timings(&self) -> FenceTimings {
        self.timings
    }

    /// Between SIGTERM and SIGKILL: the lease's grace, or the session's
    /// when shorter, since either deadline may be the one that trips (work
    /// told to stop because its session is unconfirmed must be gone within
    /// the session timings, not the lease's).
    pub(super) fn kill_grace(&self) -> Duration {
        let lease = self.timings.kill_grace();
        self.session_timings
            .map_or(lease, |st| lease.min(st.kill_grace()))
    }

    /// The store's current liveness session, read before a write.
    pub(super) fn session_before(&self) -> Option<u64> {
        self.store.owner_sessions()?.current_session()
    }

    /// A write sent at `sent`, with the session read before it: the write
    /// was made under that session if it is still current now (sessions
    /// only ever move on), else under some session not known for sure.
    pub(super) fn confirmation(&self, sent: Instant, before: Option<u64>) -> Confirmation {
        let after = self.session_before();
        Confirmation {
            sent,
            session: before.filter(|b| Some(*b) == after),
        }
    }

    /// True when some held lease was last written under a session other
    /// than the current one: it should be renewed under the current one now.
    pub(super) fn wants_renewal(&self) -> bool {
        if self.session_timings.is_none() {
            return false;
        }
        let current = self.session_before();
        self.lock()
            .held
            .values()
            .any(|h| !h.fence.is_lost() && (h.session.is_none() || h.session != current))
    }

    /// Starts watching a lease granted by a claim.
    pub(super) fn hold(&self, lease: &ItemLease, by: Confirmation) {
        let fence = Fence::new(self.kill_grace());
        let held = Held {
            confirmed: by.sent,
            session: by.session,
            fence,
        };
        // The deadline is known now: the handler (and a sentinel) hear of
        // it when they register, before the work starts.
        let (left, _, _) = self.until_stop(&held, Instant::now());
        let term = Instant::now() + left;
        held.fence
            .set_deadline(term, term + held.fence.kill_grace());
        let mut g = self.lock();
        g.held.insert(key(lease), held);
        g.dirty = true;
        // Wake the watchdog only if it would sleep past this deadline (per
        // claim, a wake-up would cost a thread switch for nothing).
        if g.next_look.is_none_or(|at| term < at) {
            drop(g);
            self.changed.notify_all();
        }
    }

    /// The fence of a held lease (`None` once it was let go), tripped
    /// first if its work should have stopped by now. The watchdog thread
    /// may not have looked yet: a process stopped past its leases (Ctrl-Z,
    /// a suspended machine) resumes every thread at once, and a worker
    /// must not start an item whose lease lapsed meanwhile.
    pub(super) fn fence(&self, lease: &ItemLease) -> Option<Fence> {
        let g = self.lock();
        let h = g.held.get(&key(lease))?;
        let fence = h.fence.clone();
        let due = if fence.is_lost() {
            None
        } else {
            let (left, reason, since) = self.until_stop(h, Instant::now());
            left.is_zero().then_some((reason, since))
        };
        drop(g);
        if let Some((reason, since)) = due {
            self.trip(&fence, lease, reason, &self.why_stopped(reason, since));
        }
        Some(fence)
    }

    /// Why a lease last proven `since` ago is fenced, for `reason`.
    fn why_stopped(&self, reason: FenceReason, since: Duration) -> String {
        let since = humantime::format_duration(round_ms(since));
        match reason {
            FenceReason::SessionLost => format!(
                "the liveness session its lease was written under was last confirmed {since} ago: another worker may take it over"
            ),
            _ => format!(
                "its lease was last confirmed {since} ago (lease {}): the store did not confirm a renewal in time, so another worker may take it over",
                humantime::format_duration(self.timings.lease)
            ),
        }
    }

    /// A renewal was confirmed: the deadline of a fence whose work has not
    /// started moves at once, not when the watchdog thread next looks, so
    /// that a command registered in between (a worker starting a
    /// claimed-ahead item) is not handed, nor its sentinel sent, a
    /// deadline already past.
    pub(super) fn confirm(&self, lease: &ItemLease, by: Confirmation) {
        let mut g = self.lock();
        g.dirty = true;
        let mut moved = None;
        if let Some(h) = g.held.get_mut(&key(lease)) {
            if by.sent >= h.confirmed {
                h.confirmed = by.sent;
                h.session = by.session;
            }
        }
        if let Some(h) = g.held.get(&key(lease)).filter(|h| !h.fence.is_lost()) {
            let now = Instant::now();
            let (left, _, _) = self.until_stop(h, now);
            // A lease still lapsed is the watchdog's to trip.
            if !left.is_zero() {
                moved = Some((h.fence.clone(), now + left));
            }
        }
        drop(g);
        if let Some((fence, term)) = moved {
            // Hooks (a running command's, its sentinel's) hear of it from
            // the watchdog: a renewal must not wait on them.
            fence.set_deadline_if_unwatched(term, term + fence.kill_grace());
        }
        // A sentinel outside this process enforces the old deadline until
        // it hears of the new one; the watchdog looks again.
        self.changed.notify_all();
    }

    /// How long ago `h`'s lease was last proven: by its own renewal, or —
    /// on a store with sessions — by its session, whichever runs out first
    /// (as the time until the work must be told to stop), with the reason.
    fn until_stop(&self, h: &Held, now: Instant) -> (Duration, FenceReason, Duration) {
        let since = now.saturating_duration_since(h.confirmed);
        let by_lease = (
            self.timings.until_stop(since),
            FenceReason::Unconfirmed,
            since,
        );
        let Some(st) = &self.session_timings else {
            return by_lease;
        };
        // A lease written under a session that was alive at some instant
        // can only be shortened after that instant; the write itself proves
        // at least its own send time.
        let proven = h
            .session
            .and_then(|id| self.store.owner_sessions()?.session_confirmed(id))
            .map_or(h.confirmed, |at| at.max(h.confirmed));
        let since_session = now.saturating_duration_since(proven);
        let by_session = (
            st.until_stop(since_session),
            FenceReason::SessionLost,
            since_session,
        );
        if by_session.0 < by_lease.0 {
            by_session
        } else {
            by_lease
        }
    }

    /// Stops watching a lease (its outcome was recorded).
    pub(super) fn release(&self, lease: &ItemLease) {
        self.lock().held.remove(&key(lease));
    }

    /// Trips the fence of a lease the store refused.
    pub(super) fn lost(&self, lease: &ItemLease, reason: FenceReason, why: &str) {
        let fence = self.lock().held.get(&key(lease)).map(|h| h.fence.clone());
        if let Some(fence) = fence {
            self.trip(&fence, lease, reason, why);
        }
    }

    fn trip(&self, fence: &Fence, lease: &ItemLease, reason: FenceReason, why: &str) {
        if fence.trip(reason, why) {
            metrics::counter!("ckpt_lease_lost_total", "job" => self.job.clone(), "reason" => reason.as_str())
                .increment(1);
            tracing::warn!(
                event = "lease_lost",
                job = self.job.as_str(),
                item_id = lease.id,
                reason = reason.as_str(),
                "stopping item {}: {why}",
                lease.id
            );
        }
    }

    /// Ends [`watch`](Self::watch).
    pub(super) fn stop(&self) {
        self.lock().stop = true;
        self.changed.notify_all();
    }

    /// The watchdog thread: trips the fence of every lease not confirmed
    /// within [`FenceTimings::term_after`], until stopped.
    pub(super) fn watch(&self) {
        let mut g = self.lock();
        loop {
            if g.stop {
                return;
            }
            g.dirty = false;
            let now = Instant::now();
            // Sessions are confirmed by another thread: look again soon
            // even when no deadline is near.
            let mut next = if self.session_timings.is_some() {
                Duration::from_millis(250)
            } else {
                Duration::from_secs(3600)
            };
            let mut due = Vec::new();
            let mut deadlines = Vec::new();
            for (k, h) in &g.held {
                if h.fence.is_lost() {
                    continue;
                }
                let (left, _, _) = self.until_stop(h, now);
                if left.is_zero() {
                    due.push((*k, h.fence.clone()));
                } else {
                    next = next.min(left);
                    deadlines.push((h.fence.clone(), now + left));
                }
            }
            // Published outside the lock: a hook that blocks (a sentinel
            // that stopped reading) must not stall claims and renewals.
            if !deadlines.is_empty() {
                drop(g);
                for (fence, term) in deadlines {
                    fence.set_deadline(term, term + fence.kill_grace());
                }
                g = self.lock();
                if g.stop {
                    return;
                }
            }
            if !due.is_empty() {
                // Looked at again under the lock: a renewal confirmed while
                // it was let go (a process resumed after a stop renews at
                // once, and a worker may start the item it confirmed) must
                // not be fenced on what was read before it.
                let now = Instant::now();
                let due: Vec<_> = due
                    .into_iter()
                    .filter_map(|(k, fence)| {
                        let h = g.held.get(&k).filter(|_| !fence.is_lost())?;
                        let (left, reason, since) = self.until_stop(h, now);
                        left.is_zero().then_some((k, fence, reason, since))
                    })
                    .collect();
                drop(g);
                for ((id, token), fence, reason, since) in due {
                    let lease = ItemLease {
                        id,
                        token,
                        owner: String::new(),
                    };
                    self.trip(&fence, &lease, reason, &self.why_stopped(reason, since));
                }
                g = self.lock();
                continue;
            }
            if g.dirty {
                continue; // something moved while the lock was let go
            }
            g.next_look = Some(now + next);
            g = self
                .changed
                .wait_timeout(g, next)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

fn round_ms(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn a_fence_trips_once_and_runs_every_hook() {
        let fence = Fence::new(Duration::from_millis(10));
        let ran = Arc::new(AtomicUsize::new(0));
        let r = Arc::clone(&ran);
        fence.on_lost(move |why| {
            assert_eq!(why, "gone");
            r.fetch_add(1, Ordering::SeqCst);
        });
        assert!(!fence.is_lost());
        assert!(!fence.wait(Duration::from_millis(1)));
        assert!(fence.trip(FenceReason::TakenOver, "gone"));
        assert!(!fence.trip(FenceReason::Unconfirmed, "again"));
        assert_eq!(ran.load(Ordering::SeqCst), 1);
        assert_eq!(fence.reason().as_deref(), Some("gone"));
        assert!(fence.wait(Duration::ZERO));
        // A hook registered after the trip runs at once.
        let r = Arc::clone(&ran);
        fence.on_lost(move |_| {
            r.fetch_add(1, Ordering::SeqCst);
        });
        assert_eq!(ran.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn a_fence_reads_lost_before_its_hooks_have_run() {
        // `ckpt run` relies on this: a command seen ending while the
        // watchdog is between tripping the fence and running the hook that
        // stops it is not taken as done.
        let a = Fence::new(Duration::from_millis(10));
        let b = Fence::new(Duration::from_millis(10));
        let seen = Arc::new(Mutex::new(Vec::new()));
        // Registered on `a` before the fence over both: it runs before
        // the hook by which `a` trips that fence.
        let all: Arc<Mutex<Option<Fence>>> = Arc::default();
        {
            let (a2, all, seen) = (a.clone(), Arc::clone(&all), Arc::clone(&seen));
            a.on_lost(move |_| {
                let all = all.lock().unwrap().clone().unwrap();
                seen.lock()
                    .unwrap()
                    .push((a2.is_lost(), all.is_lost(), all.reason()));
            });
        }
        *all.lock().unwrap() = Some(Fence::any(&[a.clone(), b.clone()]));
        assert!(!all.lock().unwrap().as_ref().unwrap().is_lost());
        assert!(a.trip(FenceReason::Unconfirmed, "late"));
        assert_eq!(
            *seen.lock().unwrap(),
            [(true, true, Some("late".to_string()))],
            "the fence and the fence over it read lost inside the first hook"
        );
    }

    #[test]
    fn an_overdue_fence_trips_once_and_says_how_late() {
        let fence = Fence::new(Duration::from_millis(10));
        assert!(fence.trip_overdue(Duration::from_millis(1_250)));
        let why = fence.reason().unwrap();
        assert!(why.contains("1s 250ms past the deadline"), "{why}");
        // Lost already: the first reason stays.
        assert!(!fence.trip_overdue(Duration::from_secs(9)));
        assert_eq!(fence.reason().unwrap(), why);
    }

    fn lease(id: i64, token: u64) -> ItemLease {
        ItemLease {
            id,
            token,
            owner: "w".into(),
        }
    }

    #[test]
    fn the_watchdog_trips_unconfirmed_leases_and_spares_confirmed_ones() {
        let store: Arc<dyn Store> = Arc::new(crate::store::MemoryStore::new());
        let dog = Arc::new(Watchdog::new(Duration::from_secs(2), "j", store));
        let thread = {
            let dog = Arc::clone(&dog);
            std::thread::spawn(move || dog.watch())
        };
        let start = Instant::now();
        let at = |sent| Confirmation {
            sent,
            session: None,
        };
        dog.hold(&lease(1, 1), at(start));
        dog.hold(&lease(2, 1), at(start));
        let (stale, fresh) = (
            dog.fence(&lease(1, 1)).unwrap(),
            dog.fence(&lease(2, 1)).unwrap(),
        );
        // Keep confirming lease 2 while lease 1 goes unconfirmed.
        while !stale.is_lost() {
            dog.confirm(&lease(2, 1), at(Instant::now()));
            std::thread::sleep(Duration::from_millis(20));
            assert!(start.elapsed() < Duration::from_secs(10), "never tripped");
        }
        let tripped_after = start.elapsed();
        assert!(
            tripped_after >= dog.timings().term_after,
            "tripped after {tripped_after:?}, before term_after"
        );
        assert!(!fresh.is_lost());
        assert!(stale.reason().unwrap().contains("last confirmed"));
        // Another token of the same item is another lease.
        assert!(dog.fence(&lease(1, 2)).is_none());
        dog.release(&lease(1, 1));
        assert!(dog.fence(&lease(1, 1)).is_none());
        dog.stop();
        thread.join().unwrap();
    }

    /// A renewal confirmed while the watchdog has let its lock go (to
    /// publish other deadlines) is seen before it trips anything: a lease
    /// found lapsed a moment before, now confirmed, keeps its fence. (A
    /// process resumed after a stop renews at once, and a worker may start
    /// the item it confirmed.)
    #[test]
    fn a_renewal_confirmed_while_the_watchdog_publishes_is_not_fenced() {
        use std::sync::atomic::AtomicBool;
        let store: Arc<dyn Store> = Arc::new(crate::store::MemoryStore::new());
        let dog = Arc::new(Watchdog::new(Duration::from_secs(2), "j", store));
        let now = Instant::now();
        let at = |sent| Confirmation {
            sent,
            session: None,
        };
        let Some(lapsed) = now.checked_sub(Duration::from_secs(60)) else {
            eprintln!("skipped: the monotonic clock is under a minute old");
            return;
        };
        let (a, b) = (lease(1, 1), lease(2, 1));
        dog.hold(&a, at(lapsed));
        dog.hold(&b, at(now));
        // B's deadline moves (a newer renewal, heard by its hook only from
        // the watchdog), and its hook confirms A: the renewal lands while
        // the watchdog publishes, after it found A lapsed.
        let armed = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let hook = {
            let (dog, armed, a) = (Arc::clone(&dog), Arc::clone(&armed), a.clone());
            let tx = std::sync::Mutex::new(tx);
            move |_: Instant, _: Instant| {
                if armed.swap(false, std::sync::atomic::Ordering::SeqCst) {
                    dog.confirm(&a, at(Instant::now()));
                    let _ = tx.lock().unwrap().send(Instant::now());
                }
            }
        };
        dog.lock().held[&key(&b)].fence.on_deadline(hook);
        std::thread::sleep(Duration::from_millis(50));
        dog.confirm(&b, at(Instant::now()));
        armed.store(true, std::sync::atomic::Ordering::SeqCst);
        let thread = {
            let dog = Arc::clone(&dog);
            std::thread::spawn(move || dog.watch())
        };
        let confirmed_at = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the hook ran");
        // The watchdog went on to sleep after that: it has done with A.
        while dog.lock().next_look.is_none_or(|look| look <= confirmed_at) {
            std::thread::sleep(Duration::from_millis(5));
        }
        let fence_a = dog.lock().held[&key(&a)].fence.clone();
        assert!(!fence_a.is_lost(), "fenced: {:?}", fence_a.reason());
        dog.stop();
        thread.join().unwrap();
    }

    /// A process stopped past its leases resumes every thread at once: a
    /// worker that asks for a fence before the watchdog thread has looked
    /// finds it tripped, and does not start the item.
    #[test]
    fn a_lapsed_lease_reads_lost_before_the_watchdog_looks() {
        let store: Arc<dyn Store> = Arc::new(crate::store::MemoryStore::new());
        // No watchdog thread runs here.
        let dog = Watchdog::new(Duration::from_secs(2), "j", store);
        let now = Instant::now();
        let at = |sent| Confirmation {
            sent,
            session: None,
        };
        let Some(lapsed) = now.checked_sub(Duration::from_secs(60)) else {
            eprintln!("skipped: the monotonic clock is under a minute old");
            return;
        };
        dog.hold(&lease(1, 1), at(lapsed));
        dog.hold(&lease(2, 1), at(now));
        let stale = dog.fence(&lease(1, 1)).unwrap();
        assert!(stale.is_lost());
        assert!(
            stale.reason().unwrap().contains("last confirmed 1m"),
            "{:?}",
            stale.reason()
        );
        assert!(!dog.fence(&lease(2, 1)).unwrap().is_lost());
    }

    /// A renewal moves the deadline of work not started yet at once: a
    /// command registered between the renewal and the watchdog's next look
    /// is not handed (nor its sentinel sent) the old deadline.
    #[test]
    fn a_confirmed_renewal_moves_the_deadline_before_the_watchdog_looks() {
        let store: Arc<dyn Store> = Arc::new(crate::store::MemoryStore::new());
        let dog = Watchdog::new(Duration::from_secs(2), "j", store);
        let at = |sent| Confirmation {
            sent,
            session: None,
        };
        let Some(old) = Instant::now().checked_sub(Duration::from_millis(300)) else {
            eprintln!("skipped: the monotonic clock is under 300 ms old");
            return;
        };
        dog.hold(&lease(1, 1), at(old));
        let fence = dog.fence(&lease(1, 1)).unwrap();
        assert!(!fence.is_lost());
        let heard = Arc::new(Mutex::new(Vec::new()));
        let hook = |heard: &Arc<Mutex<Vec<Instant>>>| {
            let heard = Arc::clone(heard);
            move |term, _| heard.lock().unwrap().push(term)
        };
        let renewed = Instant::now();
        dog.confirm(&lease(1, 1), at(renewed));
        // The command registers after the renewal: told the new deadline.
        fence.on_deadline(hook(&heard));
        let told = heard.lock().unwrap()[0];
        // The old deadline was 300 ms earlier than the renewal's.
        let by_renewal = renewed + dog.timings().term_after;
        assert!(
            told + Duration::from_millis(100) >= by_renewal,
            "told a deadline {:?} before the renewal's",
            by_renewal.saturating_duration_since(told)
        );
        // Once registered, a renewal leaves the deadline to the watchdog
        // (its hooks may block): the command hears nothing from it here.
        dog.confirm(&lease(1, 1), at(Instant::now()));
        assert_eq!(heard.lock().unwrap().len(), 1);
    }

    #[test]
    fn earliest_follows_moves_of_any_deadline_and_counts_equal_ones() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut e = Earliest::new(3);
        assert_eq!(e.set(0, at(10), at(11)), Some((at(10), at(11))));
        assert_eq!(e.set(1, at(10), at(12)), Some((at(10), at(11))));
        assert_eq!(e.set(2, at(30), at(31)), Some((at(10), at(11))));
        // Two share the earliest term: moving one of them keeps it.
        assert_eq!(e.set(0, at(40), at(41)), Some((at(10), at(12))));
        // Moving the other later reveals the next earliest of each.
        assert_eq!(e.set(1, at(50), at(51)), Some((at(30), at(31))));
        // Moving one earlier makes it the earliest.
        assert_eq!(e.set(2, at(5), at(6)), Some((at(5), at(6))));
    }

    #[test]
    fn a_fence_over_several_trips_with_any_and_keeps_the_earliest_deadline() {
        let (a, b) = (
            Fence::new(Duration::from_secs(2)),
            Fence::new(Duration::from_secs(1)),
        );
        let now = Instant::now();
        a.set_deadline(now + Duration::from_secs(10), now + Duration::from_secs(12));
        b.set_deadline(now + Duration::from_secs(20), now + Duration::from_secs(21));
        let all = Fence::any(&[a.clone(), b.clone()]);
        assert_eq!(all.kill_grace(), Duration::from_secs(1), "the shortest");
        let heard = Arc::new(Mutex::new(Vec::new()));
        {
            let heard = Arc::clone(&heard);
            all.on_deadline(move |term, _| heard.lock().unwrap().push(term));
        }
        assert_eq!(*heard.lock().unwrap(), [now + Duration::from_secs(10)]);
        // `a` confirmed later: `b`'s deadline is now the earliest.
        a.set_deadline(now + Duration::from_secs(30), now + Duration::from_secs(32));
        assert_eq!(
            heard.lock().unwrap().last(),
            Some(&(now + Duration::from_secs(20)))
        );
        assert!(!all.is_lost());
        b.trip(FenceReason::TakenOver, "taken");
        assert!(all.is_lost(), "one lost lease stops the batch");
        assert_eq!(all.reason().as_deref(), Some("taken"));
        assert!(!a.is_lost(), "the others' fences are their own");
        // A fence over one is that fence.
        let one = Fence::any(std::slice::from_ref(&a));
        assert!(Arc::ptr_eq(&one.inner, &a.inner));
    }
}
