//! [`Ckpt`]: a store plus the clock, worker identity and limits that every
//! job and queue shares.
//!
//! `Ckpt::job` and `Ckpt::queue`, which hand out a [`Job`](crate::Job) or a
//! [`Queue`](crate::Queue), are written beside those types: they depend on
//! `Ckpt`, not the other way round.

use std::sync::Arc;

use crate::error::Result;
use crate::job::held::HeldJobs;
use crate::model::{Checkpoint, Expect, JobRecord};
use crate::store::{self, OpenMode, Store};
use crate::time::offset::StoreTime;
use crate::time::{Clock, Offset, SystemClock, Timestamp};
use crate::validate;
use crate::worker::{LocalProcesses, ProcessProbe, WorkerId, SENTINEL_PATIENCE};

/// Size limits applied before anything is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest serialised checkpoint state, in bytes (default 1 MiB).
    pub state_bytes: usize,
    /// History entries kept per job (default 100).
    pub history_keep: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            state_bytes: validate::DEFAULT_STATE_LIMIT,
            history_keep: validate::DEFAULT_HISTORY_KEEP,
        }
    }
}

/// The entry point: a store with a clock, a worker id and limits.
/// Cloning is cheap and clones share the store (and the measured offset to
/// its clock).
///
/// Time is the store's: [`now`](Ckpt::now) is the clock plus the offset
/// from it to the store's clock (PostgreSQL's and Redis's server time;
/// none for SQLite and memory, which live on one host), so every lease,
/// retry time and timestamp this handle writes is on the one timeline that
/// every host sharing the store compares with. Hosts' clocks may disagree
/// by any amount; each must run at real rate within 1% (see
/// [`Offset`] for the assumption and how the offset is measured and kept
/// fresh).
#[derive(Debug, Clone)]
pub struct Ckpt {
    store: Arc<dyn Store>,
    clock: Arc<StoreTime>,
    probe: Arc<dyn ProcessProbe>,
    worker: WorkerId,
    limits: Limits,
    /// Jobs held by live `Job` handles of this handle and its clones.
    held: HeldJobs,
}

impl Ckpt {
    /// Opens the store at `url` (creating a missing SQLite file); see
    /// [`store::open`] for the URL forms.
    pub fn open(url: &str) -> Result<Ckpt> {
        Ok(Ckpt::new(store::open(url, OpenMode::CreateIfMissing)?))
    }

    /// Uses `store` with the system clock, a fresh worker id for this
    /// process and default limits.
    pub fn new(store: Arc<dyn Store>) -> Ckpt {
        Ckpt {
            store,
            clock: Arc::new(StoreTime::new(Arc::new(SystemClock))),
            probe: Arc::new(LocalProcesses),
            worker: WorkerId::for_this_process(),
            limits: Limits::default(),
            held: HeldJobs::default(),
        }
    }

    /// Replaces the clock (tests use [`ManualClock`](crate::ManualClock)).
    /// The offset to the store's clock is measured against this clock,
    /// unless it does not follow real time
    /// ([`Clock::follows_real_time`]), like a `ManualClock`: then its
    /// readings are used as they are.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Ckpt {
        self.clock = Arc::new(StoreTime::new(clock));
        self
    }

    /// Replaces the process probe used to detect dead local owners.
    pub fn with_probe(mut self, probe: Arc<dyn ProcessProbe>) -> Ckpt {
        self.probe = probe;
        self
    }

    /// Replaces the worker id (each simulated worker in a test gets its own).
    pub fn with_worker(mut self, worker: WorkerId) -> Ckpt {
        self.worker = worker;
        self
    }

    /// A copy of this handle acting as a new worker of this process.
    pub fn new_worker(&self) -> Ckpt {
        self.clone().with_worker(WorkerId::for_this_process())
    }

    /// Replaces the limits.
    pub fn with_limits(mut self, limits: Limits) -> Ckpt {
        self.limits = limits;
        self
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The current time on the store's clock: this handle's clock plus the
    /// measured offset, measured first (one round trip) on first use, when
    /// older than 30 s, or when the clock jumped.
    pub fn now(&self) -> Timestamp {
        self.clock.now_with(|| self.store.server_time())
    }

    /// The offset from this handle's clock to the store's, as last
    /// measured: `None` for a store on one host (SQLite, memory), a clock
    /// that does not follow real time, or before the first measurement.
    pub fn clock_offset(&self) -> Option<Offset> {
        self.clock.offset()
    }

    /// The clock on the store's timeline, for arming alarms: an alarm for a
    /// store time rings when the local clock shows the matching local time.
    pub(crate) fn clock(&self) -> &dyn Clock {
        &*self.clock
    }

    /// This handle's worker id.
    pub fn worker(&self) -> &WorkerId {
        &self.worker
    }

    /// The jobs held by live `Job` handles of this handle and its clones.
    pub(crate) fn held_jobs(&self) -> &HeldJobs {
        &self.held
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The job's record, or `None`.
    pub fn get_job(&self, name: &str) -> Result<Option<JobRecord>> {
        validate::job_name(name)?;
        self.store.get_job(name)
    }

    /// Writes a checkpoint as an operator would (`ckpt checkpoint set`):
    /// refused with [`Error::Busy`](crate::Error::Busy) while a live worker
    /// holds the job, and fencing out any earlier holder.
    pub fn set_checkpoint(&self, name: &str, checkpoint: &Checkpoint) -> Result<()> {
        self.set_checkpoint_if(name, checkpoint, &Expect::Anything)
    }

    /// [`Ckpt::set_checkpoint`] as a compare-and-set (`ckpt checkpoint set
    /// --expect`): writes only if the stored cursor meets `expect`, in the
    /// same atomic step, else [`Error::CursorMismatch`](crate::Error::CursorMismatch)
    /// naming the stored cursor, and nothing is written.
    pub fn set_checkpoint_if(
        &self,
        name: &str,
        checkpoint: &Checkpoint,
        expect: &Expect,
    ) -> Result<()> {
        validate::job_name(name)?;
        validate::stored_json("cursor", &checkpoint.cursor)?;
        validate::stage(checkpoint.stage.as_deref())?;
        if let Some(state) = &checkpoint.state {
            validate::stored_json("state", state)?;
            validate::state_size(state, self.limits.state_bytes)?;
        }
        let steal = self.dead_holder(name)?;
        self.store.put_checkpoint(
            name,
            Some(checkpoint),
            expect,
            self.limits.history_keep,
            steal.as_deref(),
            self.now(),
        )
    }

    /// Clears the job's checkpoint and history so it starts from scratch;
    /// same refusal rules as [`Ckpt::set_checkpoint`].
    pub fn clear_checkpoint(&self, name: &str) -> Result<()> {
        validate::job_name(name)?;
        let steal = self.dead_holder(name)?;
        self.store.put_checkpoint(
            name,
            None,
            &Expect::Anything,
            self.limits.history_keep,
            steal.as_deref(),
            self.now(),
        )
    }

    /// Clears the checkpoint even while a live worker holds the job: the
    /// lease is taken from it (the epoch moves on), so its next save or
    /// renewal fails with [`Error::Fenced`](crate::Error::Fenced) and
    /// changes nothing. For operators (`ckpt reset --force`).
    pub fn clear_checkpoint_forced(&self, name: &str) -> Result<()> {
        validate::job_name(name)?;
        let holder = self.store.get_job(name)?.and_then(|r| r.owner);
        self.store.put_checkpoint(
            name,
            None,
            &Expect::Anything,
            self.limits.history_keep,
            holder.as_deref(),
            self.now(),
        )
    }

    /// True if and only if `owner` is a worker on this host whose process
    /// is gone.
    pub fn is_dead_local_owner(&self, owner: &str) -> bool {
        WorkerId::parse(owner).is_some_and(|id| self.probe.is_dead(&id))
    }

    /// Waits while `owner` is a local process that is gone and whose
    /// sentinel is still stopping the commands it left (see
    /// [`ProcessProbe::is_stopping`]), at most [`SENTINEL_PATIENCE`].
    pub fn wait_while_stopping(&self, owner: &str) {
        let Some(id) = WorkerId::parse(owner) else {
            return;
        };
        let deadline = std::time::Instant::now() + SENTINEL_PATIENCE;
        while self.probe.is_stopping(&id) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    /// Kills the processes a dead local `owner` left running (see
    /// [`WORKER_ENV`](crate::worker::WORKER_ENV)); returns how many.
    pub fn kill_orphans_of(&self, owner: &str) -> usize {
        WorkerId::parse(owner).map_or(0, |id| self.probe.kill_orphans(&id))
    }

    /// Refuses a transaction on a store other than this handle's own: the
    /// caller's writes and ckpt's must land in the same database.
    pub(crate) fn check_same_store(&self, store: &dyn Store) -> Result<()> {
        if store.identity() == self.store.identity() {
            Ok(())
        } else {
            Err(crate::Error::InvalidInput(format!(
                "the transaction's store {} is not this job's store {}",
                store.describe(),
                self.store.describe()
            )))
        }
    }

    /// The job's current holder if it is a dead local process.
    pub(crate) fn dead_holder(&self, name: &str) -> Result<Option<String>> {
        Ok(self
            .store
            .get_job(name)?
            .and_then(|r| r.owner)
            .filter(|o| self.is_dead_local_owner(o)))
    }
}
