//! [`Job`]: the cursor pattern. Acquire a job, resume from its checkpoint,
//! save progress as you go, complete it.

use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use crate::ckpt::Ckpt;
use crate::error::{Error, Result};
use crate::model::{Checkpoint, JobLease, JobRecord, JobStatus};
use crate::policy::fence::{FenceReason, FenceTimings};
use crate::policy::{CheckpointPolicy, IntervalTracker};
use crate::store::{SharedTx, TxWrite};
use crate::time::Timestamp;
use crate::validate;

pub(crate) mod held;
mod pace;

use held::HeldGuard;
use pace::Pacer;

/// How a job is held and checkpointed.
#[derive(Debug, Clone, PartialEq)]
pub struct JobOptions {
    /// Lease length; renewed by every save and by [`Job::heartbeat`].
    pub lease: Duration,
    /// When `checkpoint()` calls are persisted.
    pub policy: CheckpointPolicy,
}

impl Default for JobOptions {
    /// A 60 s lease and the adaptive policy (≤ 1 % overhead, ≥ one save per 30 s).
    fn default() -> Self {
        JobOptions {
            lease: Duration::from_secs(60),
            policy: CheckpointPolicy::default(),
        }
    }
}

/// A job held by this worker.
///
/// Every write is fenced: once another worker takes the job over, the next
/// save, heartbeat or completion returns [`Error::Fenced`] and changes
/// nothing. Dropping a `Job` without [`complete`](Job::complete),
/// [`fail`](Job::fail) or [`release`](Job::release) leaves its lease to
/// expire, exactly like a crash. While a `Job` lives and has not been told
/// its lease is lost, acquiring its job again through the same `Ckpt` (or
/// a clone: the same worker) is [`Error::Busy`], as it is for any other
/// worker.
#[derive(Debug)]
pub struct Job {
    ckpt: Ckpt,
    lease: JobLease,
    record: JobRecord,
    options: JobOptions,
    tracker: IntervalTracker,
    pending: Option<Checkpoint>,
    /// Why the last checkpoint recorded was dropped unsaved (a save that
    /// failed for good), until a newer one is saved: `flush` fails with it
    /// rather than succeed without that checkpoint.
    unsaved: Option<String>,
    last_renewal: Timestamp,
    /// On a store with liveness sessions: when the last renewal that moved
    /// the lease to a session was sent, and that session (see
    /// [`OwnerSessions`](crate::store::OwnerSessions)).
    session_proof: (Instant, Option<u64>),
    taken_over_from: Option<String>,
    /// When the next save or renewal may fall due, for the hot path.
    pacer: Pacer,
    /// True only while dropping `pending` would free nothing, so that the
    /// hot path may overwrite it without its drop (see
    /// [`pace::store_pending`]). Emptying `pending` keeps it true; storing
    /// a checkpoint goes through `store_pending`, which sets it.
    pending_plain: bool,
    /// Keeps this worker from holding the job through a second handle;
    /// let go once the lease is lost (the handle must stop, and the worker
    /// may acquire the job again).
    held: Option<HeldGuard>,
}

impl Job {
    pub(crate) fn acquire(ckpt: Ckpt, name: &str, options: JobOptions) -> Result<Job> {
        let store = ckpt.store();
        let owner = ckpt.worker().to_string();
        let held = ckpt.held_jobs().hold(&owner, name)?;
        let session_before = store.owner_sessions().and_then(|s| s.current_session());
        let sent = Instant::now();
        let now = ckpt.now();
        let until = now.plus(options.lease);
        // Who held it before: a crashed or paused worker whose lease lapsed,
        // or a dead process on this host. Read first, for the takeover report.
        let previous = store.get_job(name)?.and_then(|r| r.owner);
        let (lease, record) = match store.acquire_job(name, &owner, until, None, now) {
            Err(Error::Busy(why)) => match previous.as_deref() {
                Some(holder) if ckpt.is_dead_local_owner(holder) => {
                    store.acquire_job(name, &owner, until, Some(holder), now)?
                }
                _ => match Self::session_grace_left(&ckpt, name)? {
                    // The holder's session ended and its lease was cut to
                    // the session grace: wait that out once rather than
                    // fail (a worker restarted on another host after a
                    // crash).
                    Some(left) => {
                        tracing::info!(
                            event = "waiting_for_takeover",
                            job = name,
                            wait_ms = left.as_millis() as u64,
                            "the job's holder lost its session; waiting out its grace"
                        );
                        std::thread::sleep(left);
                        let now = ckpt.now();
                        store.acquire_job(name, &owner, now.plus(options.lease), None, now)?
                    }
                    None => return Err(Error::Busy(why)),
                },
            },
            other => other?,
        };
        let taken_over_from = previous.filter(|p| *p != owner);
        if let Some(from) = &taken_over_from {
            tracing::info!(event = "takeover", job = name, from = %from, epoch = lease.epoch, "took the job over from its previous holder");
        }
        let resumed_items = record.checkpoint.as_ref().map_or(0, |c| c.items_processed);
        let session_proof = (sent, Self::same_session(&ckpt, session_before));
        let mut job = Job {
            ckpt,
            lease,
            record,
            options,
            tracker: IntervalTracker::starting_at(now, resumed_items),
            pending: None,
            unsaved: None,
            last_renewal: now,
            session_proof,
            taken_over_from,
            pacer: Pacer::new(),
            pending_plain: true,
            held: Some(held),
        };
        job.rearm();
        Ok(job)
    }

    /// How long until the job's lease lapses, when its holder's session
    /// ended (so the lease was cut to the store's session grace) and the
    /// clock is a real one that a wait moves. A live holder with a lease
    /// as short as the grace is not waited for: it renews.
    fn session_grace_left(ckpt: &Ckpt, name: &str) -> Result<Option<Duration>> {
        let Some(sessions) = ckpt.store().owner_sessions() else {
            return Ok(None);
        };
        let grace = sessions.session_grace();
        if !ckpt.clock().follows_real_time() || !sessions.job_session_ended(name)? {
            return Ok(None);
        }
        let now = ckpt.now();
        let expires = ckpt.store().get_job(name)?.and_then(|r| r.lease_expires);
        Ok(expires
            .map(|t| t.since(now))
            .filter(|left| *left <= grace)
            .map(|left| left + Duration::from_millis(50)))
    }

    /// The worker this one took the job over from, when the job was still
    /// held at acquire time (its lease had lapsed, or its process on this
    /// host was gone).
    pub fn taken_over_from(&self) -> Option<&str> {
        self.taken_over_from.as_deref()
    }

    /// The job's name.
    pub fn name(&self) -> &str {
        &self.lease.job
    }

    /// The record as it was when this worker acquired the job.
    pub fn record(&self) -> &JobRecord {
        &self.record
    }

    /// The lease this worker holds.
    pub fn lease(&self) -> &JobLease {
        &self.lease
    }

    /// True if and only if the job had been completed before it was acquired.
    pub fn was_completed(&self) -> bool {
        self.record.status == JobStatus::Completed
    }

    /// The checkpoint to resume from, as stored when the job was acquired.
    pub fn resume_checkpoint(&self) -> Option<&Checkpoint> {
        self.record.checkpoint.as_ref()
    }

    /// The cursor to resume from, decoded into `T`; `None` when the job has
    /// no checkpoint. A cursor that does not decode into `T` is
    /// [`Error::Decode`], never a silent restart from zero.
    pub fn resume_cursor<T: DeserializeOwned>(&self) -> Result<Option<T>> {
        self.decode("cursor", self.resume_checkpoint().map(|c| &c.cursor))
    }

    /// The accumulated state to resume with, decoded into `T`.
    pub fn resume_state<T: DeserializeOwned>(&self) -> Result<Option<T>> {
        self.decode(
            "state",
            self.resume_checkpoint().and_then(|c| c.state.as_ref()),
        )
    }

    fn decode<T: DeserializeOwned>(
        &self,
        what: &'static str,
        v: Option<&Value>,
    ) -> Result<Option<T>> {
        v.map(|v| {
            T::deserialize(v).map_err(|e| Error::Decode {
                what,
                job: self.name().to_string(),
                reason: e.to_string(),
            })
        })
        .transpose()
    }

    /// Records progress; persists it if the policy says a save is due.
    /// Returns whether it was persisted. Between saves, renews the lease
    /// when a third of it has passed.
    ///
    /// Made to be called after every item: when neither a save nor a
    /// renewal is due, it only moves `checkpoint` into place (the previous
    /// unsaved one is dropped) after one atomic load and one compare,
    /// without reading the clock. The job's clock raises a flag when a
    /// deadline passes (see [`Clock::arm`](crate::Clock::arm)); then, or
    /// when an item-count trigger is reached, the clock and the policy
    /// decide as before.
    #[inline]
    pub fn checkpoint(&mut self, checkpoint: Checkpoint) -> Result<bool> {
        if self.pacer.quiet(checkpoint.items_processed) {
            pace::store_pending(&mut self.pending, &mut self.pending_plain, checkpoint);
            return Ok(false);
        }
        self.checkpoint_checked(checkpoint)
    }

    /// True if and only if [`checkpoint`](Job::checkpoint) with
    /// `items_processed` items done would now only record its checkpoint,
    /// neither saving nor renewing (no I/O, no clock read): a caller that
    /// must prepare for I/O (a binding that releases an interpreter lock
    /// around it) asks this first. The same one atomic load and one compare.
    #[inline]
    pub fn is_quiet(&self, items_processed: u64) -> bool {
        self.pacer.quiet(items_processed)
    }

    /// `checkpoint()` when something may be due: the policy decides with
    /// the clock's time.
    #[cold]
    #[inline(never)]
    fn checkpoint_checked(&mut self, checkpoint: Checkpoint) -> Result<bool> {
        let now = self.ckpt.now();
        let due = self
            .tracker
            .is_due(&self.options.policy, checkpoint.items_processed, now);
        pace::store_pending(&mut self.pending, &mut self.pending_plain, checkpoint);
        let result = if due {
            // A save renews the lease but does not move it to a new
            // liveness session: the heartbeat after it does, if needed.
            self.flush().and_then(|()| self.heartbeat()).map(|()| true)
        } else {
            self.heartbeat().map(|()| false)
        };
        // Whatever happened (a save, a renewal, a flag raised early, an
        // error), the deadlines follow from the state as it is now.
        self.rearm();
        result
    }

    /// True if and only if the policy would persist a checkpoint with
    /// `items_processed` items done now: lets a loop build an expensive
    /// state only when it will be saved. Costs one atomic load and one
    /// compare while no save can be due (see [`checkpoint`](Job::checkpoint)).
    #[inline]
    pub fn is_due(&self, items_processed: u64) -> bool {
        self.pacer.may_save(items_processed) && self.is_due_checked(items_processed)
    }

    #[cold]
    #[inline(never)]
    fn is_due_checked(&self, items_processed: u64) -> bool {
        self.tracker
            .is_due(&self.options.policy, items_processed, self.ckpt.now())
    }

    /// Arms the pacer for the next save and renewal the policy and the
    /// lease ask for, from the last save and renewal.
    fn rearm(&mut self) {
        let next = self.tracker.next_due(&self.options.policy);
        let renew_at = self.last_renewal.first_after(self.renew_every());
        self.pacer.arm(self.ckpt.clock(), next, renew_at);
    }

    /// How often the lease is renewed between saves: a third of the lease;
    /// on a store with liveness sessions, also a third of the session
    /// grace, so that after a replaced session the lease moves to the new
    /// one before another worker may take it over.
    fn renew_every(&self) -> Duration {
        let every = FenceTimings::for_lease(self.options.lease).renew_after;
        match self.ckpt.store().owner_sessions() {
            Some(s) => every.min(s.session_grace() / 3),
            None => every,
        }
    }

    /// Shorthand for [`checkpoint`](Job::checkpoint) with a serialisable
    /// cursor and no stage or state.
    pub fn save<T: Serialize>(&mut self, cursor: &T, items_processed: u64) -> Result<bool> {
        let cursor = serde_json::to_value(cursor)
            .map_err(|e| Error::InvalidInput(format!("cursor does not serialise: {e}")))?;
        self.checkpoint(Checkpoint::new(cursor, items_processed))
    }

    /// Persists the latest recorded checkpoint now, whatever the policy.
    /// On an error that a retry may get past ([`Error::is_transient`]: the
    /// store busy or unreachable; or a call the caller abandoned,
    /// [`Error::is_interrupted`]) the checkpoint stays pending, so calling
    /// `flush` again saves it rather than succeeding without it; on any
    /// other error (a lost lease, a checkpoint the store refuses, a full
    /// disk) it is dropped, and the stored one is kept. After a store
    /// failure (a full disk: not a lost lease, not a checkpoint refused as
    /// input) `flush` and `complete` then fail with [`Error::Storage`]
    /// saying so, until a newer checkpoint is recorded and saved, so that
    /// neither succeeds without it; `fail` and `release` still work (the
    /// job resumes from the checkpoint stored). (`complete`, `fail` and
    /// `release` take the handle whatever happens: flush first to be able
    /// to retry a save.)
    pub fn flush(&mut self) -> Result<()> {
        let Some(cp) = self.pending.take() else {
            return match &self.unsaved {
                None => Ok(()),
                Some(why) => Err(Error::Storage(format!(
                    "job '{}': the last checkpoint recorded was not saved ({why}); record a newer one, or acquire the job again to resume from the one saved before",
                    self.lease.job
                ))),
            };
        };
        let store = self.ckpt.store().clone();
        let result = self.persist(&cp, |lease, cp, keep, until, now| {
            store.save_checkpoint(lease, cp, keep, until, now)
        });
        if let Err(e) = &result {
            if e.is_transient() || e.is_interrupted() {
                pace::store_pending(&mut self.pending, &mut self.pending_plain, cp);
            } else {
                self.dropped_unsaved(e);
            }
        }
        result
    }

    /// Saves the checkpoint recorded and not saved yet, if any: what
    /// [`fail`](Job::fail) and [`release`](Job::release) do first. Unlike
    /// [`flush`](Job::flush), it does not refuse after a checkpoint was
    /// dropped unsaved, and forgets that: the job is to resume from what is
    /// stored.
    pub fn flush_pending(&mut self) -> Result<()> {
        self.unsaved = None;
        self.flush()
    }

    /// Remembers that a checkpoint was dropped unsaved because of `e` (see
    /// `unsaved`). Not for a checkpoint refused as input (too deep, too
    /// large): no retry could save it, the caller was told so, and the job
    /// goes on from the one saved before, as when `checkpoint` refuses it
    /// at once. A lost lease needs no reminder: every later write is fenced
    /// anyway.
    fn dropped_unsaved(&mut self, e: &Error) {
        if !e.is_fenced() && !e.is_invalid_input() {
            self.unsaved = Some(e.to_string());
        }
    }

    /// Saves `checkpoint` and runs `f` (the caller's own writes) in one
    /// transaction of `store`, which must be this job's store: both commit
    /// or neither does, so a crash never leaves the writes without the
    /// checkpoint or the checkpoint without the writes (exactly-once for a
    /// sink in the same database). `f` runs first, on the store's
    /// [`SharedTx::Tx`] (a `rusqlite::Transaction` for SQLite, a
    /// `PgTx` for PostgreSQL); if the lease was lost,
    /// the transaction rolls back, the caller's writes with it, and the
    /// result is [`Error::Fenced`]. Always persists, whatever the policy.
    pub fn checkpoint_with<S: SharedTx, T>(
        &mut self,
        store: &S,
        checkpoint: Checkpoint,
        f: impl FnOnce(&mut S::Tx<'_>) -> Result<T>,
    ) -> Result<T> {
        self.ckpt.check_same_store(store)?;
        // Superseded if this save commits. If it fails for a cause that
        // may pass, the earlier unsaved checkpoint (which, unlike this
        // one, goes with no rolled-back writes) is kept for the next save.
        let earlier = self.pending.take();
        let result = self.persist(&checkpoint, |lease, cp, keep, until, now| {
            let write = TxWrite::SaveCheckpoint {
                lease,
                checkpoint: cp,
                history_keep: keep,
                lease_until: until,
            };
            store.with_tx(write, now, f)
        });
        if let (Err(e), Some(earlier)) = (&result, earlier) {
            // Refused as input, the transaction never committed: the
            // earlier checkpoint is still the one to save.
            let kept = e.is_transient() || e.is_interrupted() || e.is_invalid_input();
            if kept && self.pending.is_none() {
                pace::store_pending(&mut self.pending, &mut self.pending_plain, earlier);
            } else if !kept {
                self.dropped_unsaved(e);
            }
        }
        result
    }

    /// Validates `cp`, saves it through `save` and records the cost.
    fn persist<T>(
        &mut self,
        cp: &Checkpoint,
        save: impl FnOnce(&JobLease, &Checkpoint, usize, Timestamp, Timestamp) -> Result<T>,
    ) -> Result<T> {
        validate::stored_json("cursor", &cp.cursor)?;
        validate::stage(cp.stage.as_deref())?;
        if let Some(state) = &cp.state {
            validate::stored_json("state", state)?;
            validate::state_size(state, self.ckpt.limits().state_bytes)?;
        }
        let started = Instant::now();
        let now = self.ckpt.now();
        let result = save(
            &self.lease,
            cp,
            self.ckpt.limits().history_keep,
            now.plus(self.options.lease),
            now,
        );
        let out = match result {
            Ok(out) => out,
            Err(e) => {
                if e.is_fenced() {
                    tracing::warn!(event = "lease_lost", job = self.name(), error = %e);
                    self.held = None;
                }
                return Err(e);
            }
        };
        // A newer checkpoint is saved: none dropped before it is missed.
        self.unsaved = None;
        let cost = started.elapsed();
        self.tracker
            .record_save(cp.items_processed, self.ckpt.now(), cost);
        self.last_renewal = now;
        self.rearm();
        // The store trims the history to `history_keep` on every save, so
        // its length follows without a read.
        let keep = self.ckpt.limits().history_keep as u64;
        self.record.saves += 1;
        self.record.history_len = (self.record.history_len + 1).min(keep);
        metrics::counter!("ckpt_checkpoints_total", "job" => self.lease.job.clone()).increment(1);
        metrics::histogram!("ckpt_checkpoint_write_seconds").record(cost.as_secs_f64());
        tracing::debug!(
            event = "checkpoint_saved",
            job = self.name(),
            cursor = %cp.cursor,
            items_processed = cp.items_processed,
            history_length = self.record.history_len,
            write_us = cost.as_micros() as u64,
        );
        Ok(out)
    }

    /// Renews the lease if a third of it has passed since the last renewal.
    /// Call it from loops whose items take longer than the lease.
    ///
    /// Self-fencing: when renewals keep failing (the store is unreachable)
    /// until the lease can no longer be proven this worker's own (see
    /// [`FenceTimings`]), it returns [`Error::Fenced`]: the loop must stop,
    /// because another worker may take the job over once the lease lapses.
    /// (`checkpoint()` renews through here, so it says the same.)
    pub fn heartbeat(&mut self) -> Result<()> {
        let now = self.ckpt.now();
        let since = now.since(self.last_renewal);
        let sessions = self.ckpt.store().owner_sessions();
        let session_before = sessions.and_then(|s| s.current_session());
        // After a new liveness session, renew at once: the lease must move
        // to it before another worker may take it over.
        let session_moved = sessions.is_some() && session_before != self.session_proof.1;
        if since < self.renew_every() && !session_moved {
            return Ok(());
        }
        let sent = Instant::now();
        let renewed = self
            .ckpt
            .store()
            .renew_job(&self.lease, now.plus(self.options.lease), now);
        match renewed {
            Ok(()) => {
                self.session_proof = (sent, Self::same_session(&self.ckpt, session_before));
            }
            Err(e) if e.is_transient() => {
                let timings = FenceTimings::for_lease(self.options.lease);
                if let Some(why) = self.session_unproven() {
                    return Err(self.self_fence(FenceReason::SessionLost, &format!("{why} ({e})")));
                }
                if timings.must_stop(since) {
                    let why = format!(
                        "the lease was last renewed {} ago and cannot be renewed now ({e})",
                        humantime::format_duration(Duration::from_millis(since.as_millis() as u64))
                    );
                    return Err(self.self_fence(FenceReason::Unconfirmed, &why));
                }
                return Err(e);
            }
            Err(e) => {
                if e.is_fenced() {
                    tracing::warn!(event = "lease_lost", job = self.name(), reason = FenceReason::TakenOver.as_str(), error = %e);
                    self.held = None;
                }
                return Err(e);
            }
        }
        self.last_renewal = now;
        self.rearm();
        Ok(())
    }

    /// The error, event and count of a loop told to stop because its lease
    /// can no longer be proven (`why`).
    fn self_fence(&mut self, reason: FenceReason, why: &str) -> Error {
        self.held = None;
        metrics::counter!("ckpt_lease_lost_total", "job" => self.lease.job.clone(), "reason" => reason.as_str())
            .increment(1);
        let why = format!(
            "job '{}': {why}; another worker may take the job over: stop",
            self.name()
        );
        tracing::warn!(
            event = "lease_lost",
            job = self.name(),
            reason = reason.as_str(),
            "{why}"
        );
        Error::Fenced(why)
    }

    /// `before` (the session read before a write) if it is still current:
    /// the write was then made under it.
    fn same_session(ckpt: &Ckpt, before: Option<u64>) -> Option<u64> {
        let after = ckpt
            .store()
            .owner_sessions()
            .and_then(|s| s.current_session());
        before.filter(|b| Some(*b) == after)
    }

    /// On a store with liveness sessions, why the lease can no longer be
    /// proven: the session it was last moved to has not been confirmed
    /// alive for the session timings' stop point (another worker may cut
    /// the lease to the session grace once it sees the session end).
    fn session_unproven(&self) -> Option<String> {
        let sessions = self.ckpt.store().owner_sessions()?;
        let (sent, session) = self.session_proof;
        let proven = session
            .and_then(|id| sessions.session_confirmed(id))
            .map_or(sent, |at| at.max(sent));
        let since = proven.elapsed();
        FenceTimings::for_lease(sessions.session_grace())
            .must_stop(since)
            .then(|| {
                format!(
                    "its liveness session was last confirmed {} ago",
                    humantime::format_duration(Duration::from_millis(since.as_millis() as u64))
                )
            })
    }

    /// The measured mean cost of a save so far.
    pub fn mean_save_cost(&self) -> Option<Duration> {
        self.tracker.mean_cost()
    }

    /// Flushes and marks the job completed. The final checkpoint is kept.
    pub fn complete(mut self) -> Result<()> {
        self.flush()?;
        let now = self.ckpt.now();
        self.ckpt
            .store()
            .finish_job(&self.lease, JobStatus::Completed, None, now)
    }

    /// Flushes and marks the job failed; its checkpoint is kept for a resume
    /// (after a checkpoint dropped unsaved, the one saved before it: a
    /// failed job resumes from what is stored).
    pub fn fail(mut self, error: &str) -> Result<()> {
        self.flush_pending()?;
        let now = self.ckpt.now();
        // Recorded whatever it holds: PostgreSQL's text keeps no NUL.
        let error = error.replace('\0', "\u{fffd}");
        self.ckpt
            .store()
            .finish_job(&self.lease, JobStatus::Failed, Some(&error), now)
    }

    /// Flushes and gives up the lease, leaving the job running for another
    /// worker to resume (a graceful stop), from the checkpoint stored (after
    /// one dropped unsaved, the one saved before it).
    pub fn release(mut self) -> Result<()> {
        self.flush_pending()?;
        let now = self.ckpt.now();
        self.ckpt.store().release_job(&self.lease, now)
    }
}

impl Ckpt {
    /// Acquires the job with default options: see [`Ckpt::job_with`].
    pub fn job(&self, name: &str) -> Result<Job> {
        self.job_with(name, JobOptions::default())
    }

    /// Acquires the job's lease (creating the job if new) and returns a
    /// handle to resume and checkpoint it. Fails with
    /// [`Error::Busy`](crate::Error::Busy) while another live worker holds
    /// it; a holder on this host whose process is gone is taken over at once.
    pub fn job_with(&self, name: &str, options: JobOptions) -> Result<Job> {
        validate::job_name(name)?;
        options.policy.check()?;
        Job::acquire(self.clone(), name, options)
    }
}
