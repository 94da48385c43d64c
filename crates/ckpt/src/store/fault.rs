//! A store wrapper that fails or "crashes" at a chosen operation, to test
//! resume paths without killing the test process.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use super::{FileCheck, ItemSignals, ItemStore, ItemStream, JobStore, OwnerSessions, Store};
use crate::error::{Error, Result};
use crate::model::{
    Checkpoint, ClaimedItem, EnqueueReport, Expect, HistoryEntry, ItemCounts, ItemRecord,
    ItemStatus, ItemUpdate, JobLease, JobRecord, JobStatus,
};
use crate::time::Timestamp;

/// A store operation, as counted by [`FaultStore`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(missing_docs)]
pub enum Op {
    EnsureJob,
    AcquireJob,
    RenewJob,
    SaveCheckpoint,
    FinishJob,
    ReleaseJob,
    FinishIfDone,
    PutCheckpoint,
    Enqueue,
    Claim,
    UpdateItems,
    ExpireOwner,
    Redrive,
    TruncateHistory,
    DeleteJob,
    RecordCommand,
    RedriveCompleted,
}

/// What happens at the chosen call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The call fails with [`Error::Unavailable`] and changes nothing;
    /// later calls work (a transient outage).
    Fail,
    /// The call fails with [`Error::Storage`] (a full disk, say) and
    /// changes nothing; later calls work. Not transient: a caller must not
    /// take it for an outage.
    Refuse,
    /// The process "dies" before the call reaches the store: the call and
    /// every later call fail, and nothing of the call is applied.
    CrashBefore,
    /// The process "dies" after the store applied the call but before the
    /// caller heard back: the call returns an error though it took effect,
    /// and every later call fails.
    CrashAfter,
    /// The call panics before it reaches the store (a bug), and later
    /// calls work.
    Panic,
}

/// Wraps a store; the `nth` call (1-based) of an operation gets a [`Fault`].
/// Reads are never faulted but fail too once "crashed".
#[derive(Debug)]
pub struct FaultStore {
    inner: Arc<dyn Store>,
    plan: Mutex<HashMap<Op, (u64, Fault)>>,
    calls: Mutex<HashMap<Op, u64>>,
    crashed: AtomicBool,
}

impl FaultStore {
    /// Wraps `inner` with no faults planned.
    pub fn new(inner: Arc<dyn Store>) -> Self {
        FaultStore {
            inner,
            plan: Mutex::new(HashMap::new()),
            calls: Mutex::new(HashMap::new()),
            crashed: AtomicBool::new(false),
        }
    }

    /// Plans `fault` at the `nth` call of `op`.
    pub fn inject(self, op: Op, nth: u64, fault: Fault) -> Self {
        self.plan
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(op, (nth, fault));
        self
    }

    /// True once a crash fault fired.
    pub fn crashed(&self) -> bool {
        self.crashed.load(Ordering::SeqCst)
    }

    /// How many times `op` was called.
    pub fn calls(&self, op: Op) -> u64 {
        *self
            .calls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&op)
            .unwrap_or(&0)
    }

    fn dead() -> Error {
        Error::Storage("injected crash: this store handle is dead".into())
    }

    fn check_alive(&self) -> Result<()> {
        if self.crashed() {
            Err(Self::dead())
        } else {
            Ok(())
        }
    }

    fn call<T>(&self, op: Op, f: impl FnOnce() -> Result<T>) -> Result<T> {
        self.check_alive()?;
        let n = {
            let mut calls = self.calls.lock().unwrap_or_else(|e| e.into_inner());
            let n = calls.entry(op).or_insert(0);
            *n += 1;
            *n
        };
        let planned = self
            .plan
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&op)
            .copied();
        match planned {
            Some((nth, fault)) if nth == n => match fault {
                Fault::Fail => Err(Error::Unavailable(format!(
                    "injected outage at {op:?} #{n}"
                ))),
                Fault::Refuse => Err(Error::Storage(format!("injected refusal at {op:?} #{n}"))),
                Fault::CrashBefore => {
                    self.crashed.store(true, Ordering::SeqCst);
                    Err(Self::dead())
                }
                Fault::CrashAfter => {
                    let _applied = f();
                    self.crashed.store(true, Ordering::SeqCst);
                    Err(Self::dead())
                }
                Fault::Panic => panic!("injected panic at {op:?} #{n}"),
            },
            _ => f(),
        }
    }
}

impl Store for FaultStore {
    fn describe(&self) -> String {
        format!("fault({})", self.inner.describe())
    }
    fn identity(&self) -> String {
        self.inner.identity()
    }
    fn item_signals(&self) -> Option<&dyn ItemSignals> {
        self.inner.item_signals()
    }
    /// The inner store's, failing too once "crashed".
    fn owner_sessions(&self) -> Option<&dyn OwnerSessions> {
        self.inner
            .owner_sessions()
            .map(|_| self as &dyn OwnerSessions)
    }
    fn check_files(&self, full: bool) -> Option<Result<FileCheck>> {
        self.inner.check_files(full)
    }

    /// The inner store's (never faulted, but failing once "crashed").
    fn server_time(&self) -> Result<Option<Timestamp>> {
        self.check_alive()?;
        self.inner.server_time()
    }
}

impl OwnerSessions for FaultStore {
    fn expire_lost_owners(&self, job: &str, now: Timestamp) -> Result<u64> {
        self.check_alive()?;
        match self.inner.owner_sessions() {
            Some(sessions) => sessions.expire_lost_owners(job, now),
            None => Ok(0),
        }
    }
    fn session_grace(&self) -> std::time::Duration {
        self.inner
            .owner_sessions()
            .map_or(std::time::Duration::ZERO, |s| s.session_grace())
    }
    /// None once "crashed": its session is gone.
    fn current_session(&self) -> Option<u64> {
        self.check_alive().ok()?;
        self.inner.owner_sessions()?.current_session()
    }
    fn session_confirmed(&self, id: u64) -> Option<std::time::Instant> {
        self.inner.owner_sessions()?.session_confirmed(id)
    }
    fn job_session_ended(&self, job: &str) -> Result<bool> {
        self.check_alive()?;
        match self.inner.owner_sessions() {
            Some(sessions) => sessions.job_session_ended(job),
            None => Ok(false),
        }
    }
}

impl JobStore for FaultStore {
    fn ensure_job(&self, job: &str, now: Timestamp) -> Result<()> {
        self.call(Op::EnsureJob, || self.inner.ensure_job(job, now))
    }
    fn acquire_job(
        &self,
        job: &str,
        owner: &str,
        lease_until: Timestamp,
        steal_from: Option<&str>,
        now: Timestamp,
    ) -> Result<(JobLease, JobRecord)> {
        self.call(Op::AcquireJob, || {
            self.inner
                .acquire_job(job, owner, lease_until, steal_from, now)
        })
    }
    fn renew_job(&self, lease: &JobLease, lease_until: Timestamp, now: Timestamp) -> Result<()> {
        self.call(Op::RenewJob, || {
            self.inner.renew_job(lease, lease_until, now)
        })
    }
    fn save_checkpoint(
        &self,
        lease: &JobLease,
        checkpoint: &Checkpoint,
        history_keep: usize,
        lease_until: Timestamp,
        now: Timestamp,
    ) -> Result<()> {
        self.call(Op::SaveCheckpoint, || {
            self.inner
                .save_checkpoint(lease, checkpoint, history_keep, lease_until, now)
        })
    }
    fn finish_job(
        &self,
        lease: &JobLease,
        status: JobStatus,
        error: Option<&str>,
        now: Timestamp,
    ) -> Result<()> {
        self.call(Op::FinishJob, || {
            self.inner.finish_job(lease, status, error, now)
        })
    }
    fn release_job(&self, lease: &JobLease, now: Timestamp) -> Result<()> {
        self.call(Op::ReleaseJob, || self.inner.release_job(lease, now))
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
        self.call(Op::PutCheckpoint, || {
            self.inner
                .put_checkpoint(job, checkpoint, expect, history_keep, steal_from, now)
        })
    }
    fn get_job(&self, job: &str) -> Result<Option<JobRecord>> {
        self.check_alive()?;
        self.inner.get_job(job)
    }
    fn list_jobs(&self) -> Result<Vec<JobRecord>> {
        self.check_alive()?;
        self.inner.list_jobs()
    }
    fn history(&self, job: &str, limit: usize) -> Result<Vec<HistoryEntry>> {
        self.check_alive()?;
        self.inner.history(job, limit)
    }
    fn truncate_history(&self, job: &str, keep: usize) -> Result<u64> {
        self.call(Op::TruncateHistory, || {
            self.inner.truncate_history(job, keep)
        })
    }
    fn delete_job(&self, job: &str, completed_before: Timestamp) -> Result<bool> {
        self.call(Op::DeleteJob, || {
            self.inner.delete_job(job, completed_before)
        })
    }
}

impl ItemStore for FaultStore {
    fn enqueue(&self, job: &str, items: ItemStream<'_>, now: Timestamp) -> Result<EnqueueReport> {
        self.call(Op::Enqueue, || self.inner.enqueue(job, items, now))
    }
    fn claim(
        &self,
        job: &str,
        owner: &str,
        max: usize,
        lease_until: Timestamp,
        started: bool,
        now: Timestamp,
    ) -> Result<Vec<ClaimedItem>> {
        self.call(Op::Claim, || {
            self.inner.claim(job, owner, max, lease_until, started, now)
        })
    }
    fn update_items(&self, updates: &[ItemUpdate], now: Timestamp) -> Result<Vec<Result<()>>> {
        self.call(Op::UpdateItems, || self.inner.update_items(updates, now))
    }
    fn finish_if_done(&self, job: &str, now: Timestamp) -> Result<Option<JobStatus>> {
        self.call(Op::FinishIfDone, || self.inner.finish_if_done(job, now))
    }
    fn item_counts(&self, job: &str) -> Result<ItemCounts> {
        self.check_alive()?;
        self.inner.item_counts(job)
    }
    fn next_ready_at(&self, job: &str) -> Result<Option<Timestamp>> {
        self.check_alive()?;
        self.inner.next_ready_at(job)
    }
    fn list_items(
        &self,
        job: &str,
        status: Option<ItemStatus>,
        limit: usize,
    ) -> Result<Vec<ItemRecord>> {
        self.check_alive()?;
        self.inner.list_items(job, status, limit)
    }
    fn last_items(&self, job: &str, status: ItemStatus, limit: usize) -> Result<Vec<ItemRecord>> {
        self.check_alive()?;
        self.inner.last_items(job, status, limit)
    }
    fn running_owners(&self, job: &str) -> Result<Vec<String>> {
        self.check_alive()?;
        self.inner.running_owners(job)
    }
    fn expire_owner(&self, job: &str, owner: &str, now: Timestamp) -> Result<u64> {
        self.call(Op::ExpireOwner, || self.inner.expire_owner(job, owner, now))
    }
    fn redrive(
        &self,
        job: &str,
        from: ItemStatus,
        keys: Option<&[String]>,
        now: Timestamp,
    ) -> Result<u64> {
        self.call(Op::Redrive, || self.inner.redrive(job, from, keys, now))
    }
}

impl super::CommandStore for FaultStore {
    fn record_command(
        &self,
        job: &str,
        command: &str,
        now: Timestamp,
    ) -> Result<crate::model::CommandRecord> {
        self.call(Op::RecordCommand, || {
            self.inner.record_command(job, command, now)
        })
    }
    fn commands(&self, job: &str) -> Result<crate::model::JobCommands> {
        self.check_alive()?;
        self.inner.commands(job)
    }
    fn redrive_completed(
        &self,
        job: &str,
        by: crate::model::CompletedBy,
        now: Timestamp,
    ) -> Result<u64> {
        self.call(Op::RedriveCompleted, || {
            self.inner.redrive_completed(job, by, now)
        })
    }
}
