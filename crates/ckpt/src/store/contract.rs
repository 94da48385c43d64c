//! The storage contract: what every store promises, method by method.
//!
//! A store is two small traits cut along the seam between the two kinds of
//! progress: [`JobStore`] (a job's lease and checkpoint: the cursor
//! pattern) and [`ItemStore`] (a job's work items: the claim pattern).
//! [`Store`] is both, plus a description for messages and the optional
//! abilities a store may have, each a trait of its own:
//!
//! - [`ItemSignals`]: wakes idle workers when items arrive (PostgreSQL's
//!   LISTEN/NOTIFY), so they need not poll;
//! - [`OwnerSessions`]: knows when a worker's session ended, wherever it
//!   ran (PostgreSQL's session advisory locks), so its items are taken
//!   over within a short grace instead of when their leases expire;
//! - [`SharedTx`]: lets the caller's own writes commit in the same
//!   transaction as a checkpoint or a completion (exactly-once for a sink
//!   in the store's database).
//!
//! # What every method promises
//!
//! Every method is atomic: it applies entirely or not at all, and
//! concurrent callers (threads, or processes sharing the store) see it
//! applied as a whole. Methods that take a lease are *fenced*: they change
//! nothing and return [`Error::Fenced`](crate::Error::Fenced) unless the
//! lease is still current (same owner and epoch for a job; same owner and
//! claim token for an item). Input is validated by the layers above; a
//! store trusts the names and sizes it is given. A store decides by time
//! only through the `now` it is given: every decision that depends on time
//! compares with that `now`. That `now` is on the store's own clock: a
//! store shared by hosts reports its time ([`Store::server_time`]) and
//! [`Ckpt`](crate::Ckpt) adds the measured offset to its local clock (see
//! the clock assumption at [`Offset`](crate::Offset)), so hosts whose
//! clocks disagree still agree on when a lease expires.
//!
//! The values a change writes into an item are computed by the item state
//! machine ([`machine`](super::machine)), the same for every store; a
//! store binds them into its own fenced statement.

use std::time::Duration;

use crate::error::Result;
use crate::model::{
    Checkpoint, ClaimedItem, CommandRecord, CompletedBy, EnqueueReport, Expect, HistoryEntry,
    ItemCounts, ItemRecord, ItemStatus, ItemUpdate, JobCommands, JobLease, JobRecord, JobStatus,
    NewItem,
};
use crate::time::Timestamp;

/// A stream of items to enqueue; an `Err` aborts the whole enqueue.
pub type ItemStream<'a> = &'a mut dyn Iterator<Item = Result<NewItem>>;

/// A job's record, lease and checkpoint: the cursor pattern.
pub trait JobStore: Send + Sync + std::fmt::Debug {
    /// Creates the job (status running, no checkpoint, no owner) unless it
    /// exists; an existing job is left exactly as it is.
    fn ensure_job(&self, job: &str, now: Timestamp) -> Result<()>;

    /// Takes the job's lease for `owner` until `lease_until`, creating the
    /// job if needed, and returns the lease with the record as it now is.
    ///
    /// Succeeds if the job has no owner, its lease expired (`<= now`), or
    /// its owner equals `owner` or `steal_from`. Then the epoch and the
    /// attempt count go up by one (fencing out the previous holder) and a
    /// failed job becomes running again; a completed job stays completed.
    /// Otherwise returns [`Error::Busy`](crate::Error::Busy).
    fn acquire_job(
        &self,
        job: &str,
        owner: &str,
        lease_until: Timestamp,
        steal_from: Option<&str>,
        now: Timestamp,
    ) -> Result<(JobLease, JobRecord)>;

    /// Renews the job's lease. Fenced.
    fn renew_job(&self, lease: &JobLease, lease_until: Timestamp, now: Timestamp) -> Result<()>;

    /// Saves a checkpoint, appends it to the history, trims the history to
    /// its newest `history_keep` entries and renews the lease, in one
    /// transaction that is durable when this returns (per the store's
    /// durability setting). Fenced: a stale lease changes nothing. A
    /// completed job becomes running again.
    fn save_checkpoint(
        &self,
        lease: &JobLease,
        checkpoint: &Checkpoint,
        history_keep: usize,
        lease_until: Timestamp,
        now: Timestamp,
    ) -> Result<()>;

    /// Sets the job's status and gives up the lease (bumping the epoch so no
    /// later write with this lease succeeds). `Completed` sets
    /// `completed_at`; `Failed` records `error`. The checkpoint is kept.
    /// Fenced.
    fn finish_job(
        &self,
        lease: &JobLease,
        status: JobStatus,
        error: Option<&str>,
        now: Timestamp,
    ) -> Result<()>;

    /// Gives up the lease, leaving status and checkpoint as they are, and
    /// bumps the epoch. Fenced.
    fn release_job(&self, lease: &JobLease, now: Timestamp) -> Result<()>;

    /// Writes (`Some`) or clears (`None`) the checkpoint without a lease, as
    /// an operator would. Refused with [`Error::Busy`](crate::Error::Busy)
    /// while a live owner holds the job (lease not expired, owner not in
    /// `steal_from`). Bumps the epoch, so any earlier holder is fenced out.
    /// Writing appends to the history like a save; clearing also empties the
    /// history. Writing creates the job if needed; clearing an unknown job is
    /// [`Error::NotFound`](crate::Error::NotFound).
    ///
    /// A compare-and-set when `expect` is not [`Expect::Anything`]: in the
    /// same atomic step, the stored cursor (none when the job is missing or
    /// has no checkpoint) is compared as canonical JSON text
    /// ([`Expect::is_met_by`]); if it does not meet `expect`, nothing is
    /// written (not even the job created) and the result is
    /// [`Error::CursorMismatch`](crate::Error::CursorMismatch) naming the
    /// stored cursor. Of writers racing from the same expectation, exactly
    /// one wins. A live owner is refused first (`Busy`).
    ///
    /// History follows commit order: each write's history entry has the
    /// next `seq`, and its `at` (and the job's `checkpoint_at`) is never
    /// before the previous save's, even when a writer that read its `now`
    /// earlier commits later.
    fn put_checkpoint(
        &self,
        job: &str,
        checkpoint: Option<&Checkpoint>,
        expect: &Expect,
        history_keep: usize,
        steal_from: Option<&str>,
        now: Timestamp,
    ) -> Result<()>;

    /// The job's record, or `None`.
    fn get_job(&self, job: &str) -> Result<Option<JobRecord>>;

    /// Every job, ordered by name.
    fn list_jobs(&self) -> Result<Vec<JobRecord>>;

    /// The newest `limit` history entries of the job, newest first.
    fn history(&self, job: &str, limit: usize) -> Result<Vec<HistoryEntry>>;

    /// Keeps only the newest `keep` history entries of the job, in one
    /// transaction; returns how many were removed. Not fenced (an operator
    /// write): a running worker's next save appends as usual.
    /// [`Error::NotFound`](crate::Error::NotFound) when there is no such job.
    fn truncate_history(&self, job: &str, keep: usize) -> Result<u64>;

    /// Deletes the job with its checkpoint, history and items, atomically,
    /// but only if [`retention::deletable`](crate::policy::retention::deletable)
    /// holds for it at `completed_before` (completed by then, not leased
    /// past it, every item completed). The check and the delete are one
    /// transaction, so an enqueue racing it either reopens the job first
    /// (and nothing is deleted) or comes after (and creates a new job).
    /// Returns whether it deleted; a missing job is `Ok(false)`.
    fn delete_job(&self, job: &str, completed_before: Timestamp) -> Result<bool>;
}

/// A job's work items: the claim pattern.
pub trait ItemStore: Send + Sync + std::fmt::Debug {
    /// Adds the items to the job (creating the job if needed), in one
    /// transaction over the whole stream: if the stream yields an `Err`,
    /// nothing is added and that error is returned. Idempotent per key: an
    /// existing key is neither duplicated nor changed. A job that was
    /// completed becomes running again if a new item arrives.
    fn enqueue(&self, job: &str, items: ItemStream<'_>, now: Timestamp) -> Result<EnqueueReport>;

    /// Claims up to `max` ready items for `owner` until `lease_until`, in one
    /// transaction. Ready means [`machine::claimable`](super::machine::claimable):
    /// pending; failed with its retry time `<= now`; or running with its
    /// lease expired (`<= now`) under another owner: a takeover. (An owner
    /// never re-claims its own running items: a late heartbeat must not
    /// make it run an item twice. A store with [`OwnerSessions`] counts as
    /// its own only a lease written under the owner's current session: one
    /// left lapsed under an ended session is one the owner did not renew,
    /// so it no longer holds it, as after a failover that lost the write
    /// ending it.) Pending items come in enqueue order.
    /// Each claim writes [`machine::Claim`](super::machine::Claim): the
    /// claim count (the fencing token, which nothing resets) goes up by
    /// one, the attempt count by one unless the item is taken over from a
    /// claim that never started it; `started` says whether the caller
    /// starts the items now or claims them ahead (then marking each with
    /// [`ItemChange::Start`](crate::model::ItemChange::Start) when it
    /// does). No item is ever held by two live leases.
    fn claim(
        &self,
        job: &str,
        owner: &str,
        max: usize,
        lease_until: Timestamp,
        started: bool,
        now: Timestamp,
    ) -> Result<Vec<ClaimedItem>>;

    /// Applies fenced changes to claimed items in one transaction, durable
    /// when this returns. Each update applies only if its item is running
    /// under exactly that lease (owner and claim token), and then writes the
    /// [`ItemPatch`](super::machine::ItemPatch) of its change; the result
    /// for an update that does not is [`Error::Fenced`](crate::Error::Fenced)
    /// and the others still apply, in order. The outer `Err` is a storage
    /// failure, in which case nothing applied.
    fn update_items(&self, updates: &[ItemUpdate], now: Timestamp) -> Result<Vec<Result<()>>>;

    /// Finishes a job that is driven by its items (no lease is involved),
    /// atomically: if none of its items is pending, running or failed, sets
    /// the job completed (no dead item) or failed (some dead) and returns
    /// that status; otherwise changes nothing and returns `None` (an item
    /// enqueued meanwhile keeps the job running). A job already in that
    /// status keeps its `completed_at` and `updated_at`: a rerun that found
    /// nothing to do does not restart the retention of a finished job.
    /// [`Error::NotFound`](crate::Error::NotFound) for an unknown job.
    fn finish_if_done(&self, job: &str, now: Timestamp) -> Result<Option<JobStatus>>;

    /// Item counts by status (all zero for an unknown job).
    fn item_counts(&self, job: &str) -> Result<ItemCounts>;

    /// The earliest time at which some unfinished item of the job becomes
    /// claimable (`None` when no item is unfinished).
    fn next_ready_at(&self, job: &str) -> Result<Option<Timestamp>>;

    /// Items of the job, optionally of one status, in enqueue order, at most
    /// `limit`.
    fn list_items(
        &self,
        job: &str,
        status: Option<ItemStatus>,
        limit: usize,
    ) -> Result<Vec<ItemRecord>>;

    /// The last `limit` items of the job in `status`, in enqueue order, the
    /// last first: the latest failures, where items fail in input order
    /// (`ckpt show`, `ckpt status` and the dashboard list these).
    fn last_items(&self, job: &str, status: ItemStatus, limit: usize) -> Result<Vec<ItemRecord>>;

    /// Distinct owners of the job's running items, ordered.
    fn running_owners(&self, job: &str) -> Result<Vec<String>>;

    /// Expires the leases of every running item of `owner` in the job (it is
    /// known to be dead), so the next claim takes them over. Returns how many.
    fn expire_owner(&self, job: &str, owner: &str, now: Timestamp) -> Result<u64>;

    /// Moves items of status `from` (dead or failed) back to pending with
    /// their attempt count reset ([`machine::Redrive`](super::machine::Redrive)):
    /// all of them, or only those in `keys`. Returns how many moved; a job
    /// that had items moved is running again.
    /// [`Error::NotFound`](crate::Error::NotFound) for an unknown job.
    fn redrive(
        &self,
        job: &str,
        from: ItemStatus,
        keys: Option<&[String]>,
        now: Timestamp,
    ) -> Result<u64>;
}

/// Which command did it: the command templates a job has run, and for each
/// completed item the one that completed it (the `command` of
/// [`ItemChange::Complete`](crate::model::ItemChange::Complete), written by
/// [`ItemStore::update_items`] with the completion; optional, so an
/// untagged completion is counted as [`JobCommands::unknown`]). A store
/// that predates commands gains them by migration, its completed items
/// counted as unknown.
pub trait CommandStore: Send + Sync + std::fmt::Debug {
    /// Records `command` for the job (creating the job if needed, as
    /// [`JobStore::ensure_job`] does) and returns its record, in one
    /// transaction: the same text gets the same id every time (its
    /// `last_used` moves to `now`, so it becomes the latest); new text gets
    /// the next id, with `first_used = last_used = now`. The returned
    /// `completed` is its count at that moment.
    fn record_command(&self, job: &str, command: &str, now: Timestamp) -> Result<CommandRecord>;

    /// The job's commands in order of id, each with the count of the job's
    /// items now completed by it, and the count of completed items with no
    /// command, read in one snapshot (empty for an unknown job).
    fn commands(&self, job: &str) -> Result<JobCommands>;

    /// Moves the job's completed items selected by `by` back to pending
    /// ([`machine::Redrive`](super::machine::Redrive): attempts afresh, no
    /// command), in one transaction with the selection; returns how many
    /// moved. A job that had items moved is running again. Only completed
    /// items move, so an item a worker holds is never touched.
    /// [`Error::NotFound`](crate::Error::NotFound) for an unknown job.
    fn redrive_completed(&self, job: &str, by: CompletedBy, now: Timestamp) -> Result<u64>;
}

/// A store: jobs and items, with its optional abilities.
///
/// The abilities are answered, not defaulted: each store says whether it
/// has them, and a caller that gets `None` falls back (polls; waits for
/// leases to expire) knowing that it must.
pub trait Store: JobStore + ItemStore + CommandStore {
    /// A description for messages: the URL with any password redacted.
    fn describe(&self) -> String;

    /// Which data this handle reaches, for telling whether two handles are
    /// on one database (a shared transaction must be): equal for handles
    /// on the same data however their URLs were spelt, where the store can
    /// tell (SQLite: the file's canonical path; memory: the instance).
    /// Defaults to [`describe`](Store::describe).
    fn identity(&self) -> String {
        self.describe()
    }

    /// The store's wake-up signal for idle workers, if it has one.
    fn item_signals(&self) -> Option<&dyn ItemSignals>;

    /// The store's knowledge of which owners' sessions ended, if it has it.
    fn owner_sessions(&self) -> Option<&dyn OwnerSessions>;

    /// Checks the store's own files for damage, reading only: `Some` for a
    /// store that keeps its data in a file (SQLite: `PRAGMA quick_check`,
    /// or with `full` the slower `integrity_check`, which also checks that
    /// indexes match their rows), `None` for a store on a server, whose
    /// server checks its own storage.
    /// `Err` only when the check could not run (corruption so bad that it
    /// stops the check is [`Error::Corrupt`](crate::Error::Corrupt)).
    fn check_files(&self, full: bool) -> Option<Result<FileCheck>> {
        let _ = full;
        None
    }

    /// The store's own clock, read now (one round trip), by which every
    /// host's leases are judged: `Some` for a store shared over the network
    /// (PostgreSQL's `clock_timestamp()`, Redis's `TIME`); `None` for a
    /// store on one host (SQLite, memory), whose clock is that host's. An
    /// `Err` is a failed read (the caller keeps its last offset).
    fn server_time(&self) -> Result<Option<Timestamp>>;
}

/// What [`Store::check_files`] found.
#[derive(Debug, Clone)]
pub struct FileCheck {
    /// The file checked.
    pub path: String,
    /// The check that ran (`"quick_check"` or `"integrity_check"`).
    pub check: &'static str,
    /// How long it took.
    pub took: Duration,
    /// The problems it reported; empty when the file is sound.
    pub problems: Vec<String>,
}

impl FileCheck {
    /// True if and only if the check found no problem.
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }

    /// The problems as an [`Error::Corrupt`](crate::Error::Corrupt) naming
    /// the file, or `None` when there are none.
    pub fn error(&self) -> Option<crate::Error> {
        let first = self.problems.first()?;
        Some(crate::Error::Corrupt {
            path: Some(self.path.clone()),
            detail: format!(
                "PRAGMA {} and a read of every row found {} problem(s) in {} ms, the first: {first}",
                self.check,
                self.problems.len(),
                self.took.as_millis()
            ),
        })
    }
}

/// A store that can wake idle workers when items may have become
/// claimable (enqueued, or re-driven).
pub trait ItemSignals: Send + Sync {
    /// Blocks up to `timeout` (real time) until the store signals that
    /// items of `job` may have become claimable: `Some(true)` when
    /// signalled, `Some(false)` on timeout, `None` at once when the signal
    /// is down right now (the caller then polls). A signal is a hint,
    /// never a promise: the caller still claims to find out.
    fn wait_for_items(&self, job: &str, timeout: Duration) -> Option<bool>;
}

/// A store that knows when a worker's session with it ended, on any host.
///
/// A session can end while its process lives on (a dropped connection, a
/// server restart), so an ended session is not taken as death at once: its
/// leases are shortened to [`session_grace`](OwnerSessions::session_grace),
/// and the owner, which re-establishes its session and renews its leases
/// under the new one, stops the work of any lease still written under a
/// session it has not confirmed alive within that grace (the runner's
/// watchdog asks [`session_confirmed`](OwnerSessions::session_confirmed)).
pub trait OwnerSessions: Send + Sync {
    /// Shortens the leases of the job's running items whose owner's
    /// session ended to at most `now +` [`session_grace`](Self::session_grace),
    /// so that they are taken over then rather than when their leases
    /// expire. Leases renewed under a newer session of the same owner are
    /// not touched. Returns how many were shortened.
    fn expire_lost_owners(&self, job: &str, now: Timestamp) -> Result<u64>;

    /// How long after its last confirmation a session that ended may have
    /// its leases taken over.
    fn session_grace(&self) -> Duration;

    /// This process's current session with the store (an id local to this
    /// process), if one is established right now. Writes made while this
    /// stays the same were made under it.
    fn current_session(&self) -> Option<u64>;

    /// When a check that session `id` was alive was last sent (it
    /// succeeded), on this process's monotonic clock; `None` for a session
    /// never confirmed or long gone.
    fn session_confirmed(&self, id: u64) -> Option<std::time::Instant>;

    /// True if and only if the job's lease is held under a session that
    /// ended (so its lease is cut, or about to be, to the session grace);
    /// false when the holder's session is alive, when it carries none (an
    /// operator write), or when there is no such job.
    fn job_session_ended(&self, job: &str) -> Result<bool>;
}

/// The store's own write in a transaction shared with the caller.
#[derive(Debug, Clone, Copy)]
pub enum TxWrite<'a> {
    /// [`JobStore::save_checkpoint`], fenced the same way.
    SaveCheckpoint {
        /// The lease the save is fenced on.
        lease: &'a JobLease,
        /// What to save.
        checkpoint: &'a Checkpoint,
        /// History entries to keep.
        history_keep: usize,
        /// The renewed lease's expiry.
        lease_until: Timestamp,
    },
    /// One update of [`ItemStore::update_items`], fenced the same way.
    UpdateItem(&'a ItemUpdate),
}

/// A store whose transactions a caller may share: the caller's own writes
/// and the store's fenced write commit together or not at all, so a crash
/// never leaves rows without their checkpoint (duplicated on resume) nor a
/// checkpoint without its rows (lost). SQLite and PostgreSQL have it.
pub trait SharedTx: Store {
    /// The caller's handle on the open transaction.
    type Tx<'t>;

    /// Opens a transaction, runs `f` in it (the caller's writes), then the
    /// store's own `write`, and commits only if both succeeded. Otherwise
    /// everything is rolled back and the error returned: `f`'s own error,
    /// or [`Error::Fenced`](crate::Error::Fenced) when the lease behind
    /// `write` was lost (a zombie's writes vanish with its refused
    /// checkpoint). Durable when this returns, as the store's commits are.
    fn with_tx<T>(
        &self,
        write: TxWrite<'_>,
        now: Timestamp,
        f: impl FnOnce(&mut Self::Tx<'_>) -> Result<T>,
    ) -> Result<T>;
}
