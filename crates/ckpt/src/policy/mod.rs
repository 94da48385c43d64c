//! Pure policies: each decision is a function of its inputs and `now`.
//!
//! - [`RetryPolicy`]: after a failure, retry when (exponential backoff with
//!   jitter) or give up (dead-letter).
//! - [`CheckpointPolicy`] and [`IntervalTracker`]: when a `checkpoint()` call
//!   is persisted (every N items, every T, or adaptively from the measured
//!   cost of a write).
//! - [`fence`]: when a lease holder renews, and when it must stop work it
//!   can no longer prove it owns (self-fencing).
//! - [`retention`]: which jobs a prune deletes, as a plan that
//!   `--dry-run` prints and the real prune executes.
//! - [`prefetch`]: how many items a runner keeps claimed ahead of its
//!   workers, from the rate they finish them.

pub mod fence;
mod interval;
pub mod prefetch;
pub mod retention;
mod retry;

pub use interval::{CheckpointPolicy, IntervalTracker, NextDue};
pub use retry::{RetryDecision, RetryPolicy};
