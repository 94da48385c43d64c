//! Stores: where checkpoints and items live.
//!
//! # Architecture
//! [`Store`] is the one trait every backend implements: [`MemoryStore`]
//! (tests, development) and [`SqliteStore`] (the embedded default). The
//! higher layers ([`Ckpt`](crate::Ckpt), [`Job`](crate::Job),
//! [`Queue`](crate::Queue), [`Runner`](crate::Runner)) validate input and
//! apply the policies; a store only stores, atomically and fenced.
//! [`FaultStore`] wraps any store and fails or "crashes" at a chosen
//! operation, for resume tests.
//!
//! Open a store from a URL with [`open`].

mod fault;
mod memory;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "redis")]
mod redis;
mod rules;
#[cfg(feature = "sqlite")]
mod sqlite;
mod url;

use std::sync::Arc;

#[cfg(feature = "redis")]
pub use self::redis::RedisStore;
pub use fault::{Fault, FaultStore, Op};
pub use memory::MemoryStore;
#[cfg(feature = "postgres")]
pub use postgres::{PgRow, PgStore, PgToSql, PgTx};
#[cfg(feature = "sqlite")]
pub use sqlite::{Durability, SqliteOptions, SqliteStore, SCHEMA_VERSION};
pub use url::{redact_url, OpenMode};

use crate::error::Result;
use crate::model::{
    Checkpoint, ClaimedItem, EnqueueReport, HistoryEntry, ItemCounts, ItemRecord, ItemStatus,
    ItemUpdate, JobLease, JobRecord, JobStatus, NewItem,
};
use crate::time::Timestamp;

/// A stream of items to enqueue; an `Err` aborts the whole enqueue.
pub type ItemStream<'a> = &'a mut dyn Iterator<Item = Result<NewItem>>;

/// The storage contract.
///
/// Every method is atomic: it applies entirely or not at all, and concurrent
/// callers (threads, or processes sharing the store) see it applied as a
/// whole. Methods that take a lease are *fenced*: they change nothing and
/// return [`Error::Fenced`](crate::Error::Fenced) unless the lease is still
/// current (same owner and epoch / attempt). Input is validated by the
/// layers above; a store trusts names and sizes it is given.
///
/// A store reports time only through the `now` it is given.
pub trait Store: Send + Sync + std::fmt::Debug {
    /// A description for messages: the URL with any password redacted.
    fn describe(&self) -> String;

    // ----- jobs -----

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

    /// Finishes a job that is driven by its items (no lease is involved),
    /// atomically: if none of its items is pending, running or failed, sets
    /// the job completed (no dead item) or failed (some dead) and returns
    /// that status; otherwise changes nothing and returns `None` (an item
    /// enqueued meanwhile keeps the job running).
    /// [`Error::NotFound`](crate::Error::NotFound) for an unknown job.
    fn finish_if_done(&self, job: &str, now: Timestamp) -> Result<Option<JobStatus>>;

    /// Writes (`Some`) or clears (`None`) the checkpoint without a lease, as
    /// an operator would. Refused with [`Error::Busy`](crate::Error::Busy)
    /// while a live owner holds the job (lease not expired, owner not in
    /// `steal_from`). Bumps the epoch, so any earlier holder is fenced out.
    /// Writing appends to the history like a save; clearing also empties the
    /// history. Writing creates the job if needed; clearing an unknown job is
    /// [`Error::NotFound`](crate::Error::NotFound).
    fn put_checkpoint(
        &self,
        job: &str,
        checkpoint: Option<&Checkpoint>,
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
    /// but only if it is completed, finished at or before
    /// `completed_before`, not leased past `completed_before` (a worker that
    /// took the completed job up again), and has no unfinished (pending,
    /// running, failed) or dead item; the check and the delete are one transaction, so an
    /// enqueue racing it either reopens the job first (and nothing is
    /// deleted) or comes after (and creates a new job). Returns whether it
    /// deleted; a missing job is `Ok(false)`.
    fn delete_job(&self, job: &str, completed_before: Timestamp) -> Result<bool>;

    // ----- items -----

    /// Adds the items to the job (creating the job if needed), in one
    /// transaction over the whole stream: if the stream yields an `Err`,
    /// nothing is added and that error is returned. Idempotent per key: an
    /// existing key is neither duplicated nor changed. A job that was
    /// completed becomes running again if a new item arrives.
    fn enqueue(&self, job: &str, items: ItemStream<'_>, now: Timestamp) -> Result<EnqueueReport>;

    /// Claims up to `max` ready items for `owner` until `lease_until`, in one
    /// transaction. Ready means: pending; failed with its retry time `<= now`;
    /// or running with its lease expired (`<= now`) under another owner: a
    /// takeover. (An owner never re-claims its own running items: a late
    /// heartbeat must not make it run an item twice.) Pending items come in
    /// enqueue order. Each claim bumps the item's attempt count and its
    /// claim count, the fencing token of the lease, which nothing resets. No
    /// item is ever held by two live leases.
    fn claim(
        &self,
        job: &str,
        owner: &str,
        max: usize,
        lease_until: Timestamp,
        now: Timestamp,
    ) -> Result<Vec<ClaimedItem>>;

    /// Applies fenced changes to claimed items in one transaction, durable
    /// when this returns. Each update applies only if its item is running
    /// under exactly that lease (owner and attempt); the result for an
    /// update that does not is [`Error::Fenced`](crate::Error::Fenced) and
    /// the others still apply. The outer `Err` is a storage failure, in which
    /// case nothing applied.
    fn update_items(&self, updates: &[ItemUpdate], now: Timestamp) -> Result<Vec<Result<()>>>;

    /// Item counts by status.
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

    /// Distinct owners of the job's running items.
    fn running_owners(&self, job: &str) -> Result<Vec<String>>;

    /// Expires the leases of every running item of `owner` in the job (it is
    /// known to be dead), so the next claim takes them over. Returns how many.
    fn expire_owner(&self, job: &str, owner: &str, now: Timestamp) -> Result<u64>;

    /// Blocks up to `timeout` (real time) until the store signals that
    /// items of `job` may have become claimable: `Some(true)` when signalled,
    /// `Some(false)` on timeout, `None` at once when the store cannot signal
    /// (the caller then polls). A signal is a hint, never a promise.
    fn wait_for_items(&self, job: &str, timeout: std::time::Duration) -> Option<bool> {
        let _ = (job, timeout);
        None
    }

    /// Expires the leases of running items whose owner the store itself
    /// knows to be gone, wherever it ran (PostgreSQL: its session's advisory
    /// lock was released, as when its process or connection died). Returns
    /// how many. Stores that cannot tell return 0 and leave it to lease
    /// expiry and the local process check.
    fn expire_lost_owners(&self, job: &str, now: Timestamp) -> Result<u64> {
        let _ = (job, now);
        Ok(0)
    }

    /// Moves items of status `from` (dead or failed) back to pending with
    /// their attempt count reset: all of them, or only those in `keys`.
    /// Returns how many moved.
    fn redrive(
        &self,
        job: &str,
        from: ItemStatus,
        keys: Option<&[String]>,
        now: Timestamp,
    ) -> Result<u64>;
}

/// Opens the store named by `url`:
///
/// - `sqlite://PATH[?durability=full|normal&busy_timeout=DURATION_MS]`: the
///   embedded default. `sqlite://ckpt.db` is relative to the working
///   directory, `sqlite:///var/lib/ckpt.db` absolute.
/// - `redis://[[USER]:PASSWORD@]HOST[:PORT][/DB][?prefix=ckpt&ttl=7d]`
///   (feature `redis`): a store on a Redis server under a key prefix; a
///   completed job's keys expire after `ttl` (`off`: never). See
///   `RedisStore` and `docs/REDIS.md`.
/// - `memory://`: a fresh in-memory store, gone when the process exits.
///
/// `mode` says whether a missing SQLite file (or PostgreSQL schema, or
/// Redis prefix) may be created.
pub fn open(url: &str, mode: OpenMode) -> Result<Arc<dyn Store>> {
    url::open(url, mode)
}
