//! # ckpt: durable checkpoint & resume for long-running batch work
//!
//! Two kinds of durable progress in one store:
//!
//! - **Job checkpoints** (the cursor pattern): a long loop saves its
//!   position, items processed, stage and state; on restart it resumes
//!   from there. See [`Job`].
//! - **Work items** (the claim pattern): many workers share a list of items;
//!   each item runs on exactly one live worker at a time, with leases,
//!   retries with backoff and a dead-letter list. See [`Queue`] and
//!   [`Runner`].
//!
//! Every write is fenced: a worker whose lease was taken over gets
//! [`Error::Fenced`] and changes nothing.
//!
//! The JSON documents that the `ckpt` command and its HTTP API print are
//! the stable, documented types of [`json`].
//!
//! # Architecture
//!
//! No two modules import each other, directly or through others
//! (`.ci/module-cycles.py` checks it in CI). From the top:
//!
//! - [`Runner`] runs a handler over a [`Queue`]'s items (the claim pattern);
//!   its coordinator talks only to the queue, which turns outcomes into
//!   fenced changes and emits their events and metrics, once
//!   ([`Queue::settle`]). [`Job`] is the cursor pattern.
//! - [`Ckpt`]: a store with the clock, worker identity and limits that jobs
//!   and queues share (`Ckpt::job` and `Ckpt::queue` are written beside
//!   `Job` and `Queue`, so `Ckpt` knows neither).
//! - [`inspect`] and [`json`]: read-only views over a store, for operators
//!   and `--json`.
//! - [`store`]: the storage contract ([`JobStore`], [`ItemStore`], the
//!   capability traits), the item state machine (`store::machine`) and the
//!   backends, which differ only in dialect.
//! - [`policy`]: pure decisions from their inputs and `now` (retry backoff,
//!   checkpoint interval, retention; the stores apply retention's rule when
//!   they delete).
//! - [`model`], [`Timestamp`] and [`Clock`], [`Error`]: the records, time
//!   and errors everything shares.
//!
//! ```
//! use ckpt::{Ckpt, JobOptions, CheckpointPolicy};
//!
//! # fn main() -> ckpt::Result<()> {
//! let ckpt = Ckpt::open("memory://")?; // or "sqlite://ckpt.db"
//! let options = JobOptions { policy: CheckpointPolicy::Always, ..JobOptions::default() };
//! let mut job = ckpt.job_with("import-users", options)?;
//! let start: u64 = job.resume_cursor()?.unwrap_or(0);
//! for record in start..1_000 {
//!     // ... process `record` ...
//!     job.save(&(record + 1), record + 1)?;
//! }
//! job.complete()?;
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

pub mod bench;
mod ckpt;
mod error;
pub mod inspect;
pub mod interrupt;
mod job;
pub mod json;
pub mod model;
pub mod policy;
mod queue;
mod runner;
pub mod shutdown;
pub mod store;
mod time;
pub mod validate;
pub mod worker;

pub use crate::ckpt::{Ckpt, Limits};
pub use error::{Error, Result};
pub use job::{Job, JobOptions};
pub use model::{
    Checkpoint, ClaimedItem, Expect, ItemCounts, ItemStatus, JobRecord, JobStatus, NewItem,
};
pub use policy::{CheckpointPolicy, RetryDecision, RetryPolicy};
pub use queue::{Attempt, Outcome, Queue, QueueOptions, Settled};
pub use runner::{EarlyOutcomes, Fence, Handler, RunOptions, RunProgress, RunReport, Runner};
pub use shutdown::StopSignal;
pub use store::{CommandStore, ItemStore, JobStore, Store};
pub use time::{Alarm, Clock, ManualClock, Offset, SystemClock, Timestamp};
