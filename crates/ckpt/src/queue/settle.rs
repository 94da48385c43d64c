//! Recording how attempts ended: the outcome becomes a fenced change (per
//! the retry policy), the change is applied, and the event and metrics of
//! what happened are emitted, here and nowhere else.
//!
//! # Events and metrics
//! `tracing` events (field `event`): `item_completed` (debug),
//! `item_failed` (warn), `item_dead` (error), `item_released` (info when
//! the item had started, debug when it had not) and `lease_lost` (warn).
//! Metrics through the `metrics` facade (no-ops unless the program
//! installs a recorder): `ckpt_item_duration_seconds` (histogram, labels
//! `job` and `outcome`: completed, failed, dead, interrupted, lost; the run
//! time of one attempt that started) and `ckpt_item_lead_time_seconds`
//! (histogram, label `job`: from enqueue to completion).
//! (`ckpt_item_attempts_total` is counted where items are claimed.)

use std::time::Duration;

use serde_json::{json, Value};

use super::Queue;
use crate::error::{Error, Result};
use crate::model::{ClaimedItem, ItemChange, ItemUpdate};
use crate::policy::RetryDecision;
use crate::time::Timestamp;

/// How an attempt of an item ended, as its handler saw it.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Done, with optional stats (a JSON object of counters).
    Completed(Option<Value>),
    /// Failed with this message; retried or dead per the retry policy.
    Failed(String),
    /// Failed with this message, and retrying would not help (a bad input,
    /// an exit code the operator declared final): the item is dead at once,
    /// whatever attempts it has left, with the message as its last error.
    /// The attempt counts, as a [`Failed`](Outcome::Failed) one does.
    Fatal(String),
    /// Not finished because the run is stopping (the handler was told to
    /// stop, or its work was killed at shutdown), with a note on why: the
    /// item is given back, pending again with no attempt counted, and is
    /// not a failure. Meant for a stopping run: an item given back while
    /// the run goes on is claimed again at once.
    Interrupted(String),
    /// A [`Failed`](Outcome::Failed) or [`Fatal`](Outcome::Fatal) outcome
    /// with the tail of what the work wrote to its error output (a
    /// command's stderr), kept beside the error as the item's
    /// `last_output`. Wrapped any other outcome, the output is ignored.
    WithOutput(Box<Outcome>, String),
}

impl Outcome {
    /// `self` with `output` kept beside its error when it is a failure
    /// ([`Failed`](Outcome::Failed) or [`Fatal`](Outcome::Fatal)); any
    /// other outcome is returned as it is.
    pub fn with_output(self, output: Option<String>) -> Outcome {
        match (output, self.base()) {
            (Some(output), Outcome::Failed(_) | Outcome::Fatal(_)) => {
                Outcome::WithOutput(Box::new(self), output)
            }
            _ => self,
        }
    }

    /// The outcome without any output attached.
    pub fn base(&self) -> &Outcome {
        match self {
            Outcome::WithOutput(inner, _) => inner.base(),
            other => other,
        }
    }

    /// The output attached, if any.
    pub fn output(&self) -> Option<&str> {
        match self {
            Outcome::WithOutput(_, output) => Some(output),
            _ => None,
        }
    }
}

/// An attempt of a claimed item that ended, to record with
/// [`Queue::settle`].
#[derive(Debug, Clone, PartialEq)]
pub struct Attempt {
    /// The item, as claimed.
    pub item: ClaimedItem,
    /// How it ended.
    pub outcome: Outcome,
    /// How long the handler ran; `None` for an item given back before it
    /// started (and for single-item calls that do not time the work).
    pub ran_for: Option<Duration>,
}

/// What recording an attempt did.
#[derive(Debug)]
pub enum Settled {
    /// The item is completed.
    Completed,
    /// The attempt failed; the item is retried at this time.
    Retrying(Timestamp),
    /// The attempt failed and was the last allowed: the item is dead.
    Dead,
    /// Given back unfinished: pending again, no attempt counted.
    Released,
    /// Refused: this worker's lease on the item was lost (another worker
    /// holds it now, or it was reset); nothing was written.
    Lost(Error),
}

impl Queue {
    /// Records how `attempts` ended, in one fenced transaction (one durable
    /// commit for all of them); one [`Settled`] per attempt, in order. A
    /// lost lease is that attempt's [`Settled::Lost`] and the others still
    /// apply; the outer `Err` is a storage failure, in which case nothing
    /// was recorded (record them again later).
    pub fn settle(&self, attempts: &[Attempt]) -> Result<Vec<Settled>> {
        self.start_and_settle(&[], attempts)
    }

    /// [`start`](Queue::start) for `started` and [`settle`](Queue::settle)
    /// for `attempts`, in one transaction (one durable commit): a runner
    /// records the starts of items claimed ahead along with the outcomes
    /// of others. The starts' results are not reported (a start refused
    /// because the lease is lost needs nothing: the heartbeat fences it).
    pub fn start_and_settle(
        &self,
        started: &[ClaimedItem],
        attempts: &[Attempt],
    ) -> Result<Vec<Settled>> {
        if attempts.is_empty() && started.is_empty() {
            return Ok(Vec::new());
        }
        for item in started.iter().chain(attempts.iter().map(|a| &a.item)) {
            self.check_own(item)?;
        }
        let now = self.ckpt.now();
        let lease_until = now.plus(self.options.lease);
        let verdicts: Vec<Verdict> = attempts.iter().map(|a| self.verdict(a, now)).collect();
        let updates: Vec<ItemUpdate> =
            super::lease_updates(started, ItemChange::Start { lease_until })
                .into_iter()
                .chain(
                    attempts
                        .iter()
                        .zip(&verdicts)
                        .map(|(a, v)| v.update(&a.item, self.completed_by)),
                )
                .collect();
        let mut results = self.apply(&updates)?;
        let results = results.split_off(started.len().min(results.len()));
        Ok(attempts
            .iter()
            .zip(verdicts)
            .zip(results)
            .map(|((a, v), r)| self.record(a, v, r))
            .collect())
    }

    /// [`settle`](Queue::settle) for one untimed attempt of `item`.
    pub(super) fn settle_one(&self, item: &ClaimedItem, outcome: Outcome) -> Result<Settled> {
        let attempt = Attempt {
            item: item.clone(),
            outcome,
            ran_for: None,
        };
        let mut settled = self.settle(std::slice::from_ref(&attempt))?;
        settled
            .pop()
            .ok_or_else(|| Error::Storage("the store answered no result for an update".into()))
    }

    /// What `attempt` becomes at `now`: a completion (with the run time
    /// added to its stats when timed), a failure retried per the retry
    /// policy or dead, or a release.
    pub(super) fn verdict(&self, attempt: &Attempt, now: Timestamp) -> Verdict {
        let output = attempt.outcome.output().map(str::to_string);
        match attempt.outcome.base() {
            Outcome::Completed(stats) => {
                let stats = self.keepable(attempt, stats);
                Verdict::Complete(match attempt.ran_for {
                    Some(took) => Some(with_duration(stats, took)),
                    None => stats,
                })
            }
            Outcome::Failed(error) => {
                let decision = self
                    .options
                    .retry
                    .decide(attempt.item.attempt, now, rand::random());
                match decision {
                    RetryDecision::RetryAt(at) => Verdict::Retry(error.clone(), at, output),
                    RetryDecision::Dead => Verdict::Dead(error.clone(), output),
                }
            }
            Outcome::Fatal(error) => Verdict::Dead(error.clone(), output),
            Outcome::Interrupted(_) => Verdict::Release,
            Outcome::WithOutput(..) => unreachable!("base() unwraps it"),
        }
    }

    /// The stats a handler returned, if they can be kept
    /// ([`validate::stats`]); otherwise none, with a warning: the work is
    /// done, and failing the item for its stats would run it again.
    fn keepable(&self, attempt: &Attempt, stats: &Option<Value>) -> Option<Value> {
        let stats = stats.as_ref()?;
        match crate::validate::stats(stats) {
            Ok(()) => Some(stats.clone()),
            Err(e) => {
                tracing::warn!(
                    job = self.job.as_str(),
                    key = attempt.item.key.as_str(),
                    "item completed without its stats: {e}"
                );
                None
            }
        }
    }

    /// Emits the event and metrics of `verdict` having been applied (`Ok`)
    /// or refused (`Err`) for `attempt`; says what it was.
    pub(super) fn record(
        &self,
        attempt: &Attempt,
        verdict: Verdict,
        result: Result<()>,
    ) -> Settled {
        let job = self.job.as_str();
        let key = attempt.item.key.as_str();
        let n = attempt.item.attempt;
        let ran = |outcome: &'static str| {
            if let Some(took) = attempt.ran_for {
                metrics::histogram!("ckpt_item_duration_seconds", "job" => job.to_string(), "outcome" => outcome)
                    .record(took.as_secs_f64());
            }
        };
        let duration_ms = attempt.ran_for.map(|d| d.as_millis() as u64);
        if let Err(e) = result {
            ran("lost");
            tracing::warn!(event = "lease_lost", job, key, attempt = n, error = %e, "outcome discarded: another worker holds this item now");
            return Settled::Lost(e);
        }
        match verdict {
            Verdict::Complete(_) => {
                ran("completed");
                let lead = self.ckpt.now().since(attempt.item.enqueued_at);
                metrics::histogram!("ckpt_item_lead_time_seconds", "job" => job.to_string())
                    .record(lead.as_secs_f64());
                tracing::debug!(event = "item_completed", job, key, attempt = n, duration_ms);
                Settled::Completed
            }
            Verdict::Retry(error, at, _) => {
                ran("failed");
                let max = self.options.retry.max_attempts;
                let retry_in = at.since(self.ckpt.now());
                tracing::warn!(
                    event = "item_failed",
                    job,
                    key,
                    attempt = n,
                    max_attempts = max,
                    retry_in_ms = retry_in.as_millis() as u64,
                    "item failed: {error}; retrying in {:.1}s",
                    retry_in.as_secs_f64()
                );
                Settled::Retrying(at)
            }
            Verdict::Bury(error) => {
                tracing::error!(
                    event = "item_dead",
                    job,
                    key,
                    attempt = n.saturating_sub(1),
                    "item tried as often as the retry policy allows (max_attempts {}), not run again: moved to the dead-letter list with its last recorded error, or, none recorded, as {error}",
                    self.options.retry.max_attempts
                );
                Settled::Dead
            }
            Verdict::Dead(error, _) => {
                ran("dead");
                let why = match attempt.outcome.base() {
                    Outcome::Fatal(_) => "not to be retried",
                    _ => "no attempts left",
                };
                tracing::error!(
                    event = "item_dead",
                    job,
                    key,
                    attempt = n,
                    "item failed: {error}; {why}, moved to the dead-letter list"
                );
                Settled::Dead
            }
            Verdict::Release => {
                let why = match attempt.outcome.base() {
                    Outcome::Interrupted(why) => why.as_str(),
                    _ => "",
                };
                if attempt.ran_for.is_some() {
                    ran("interrupted");
                    tracing::info!(
                        event = "item_released",
                        job,
                        key,
                        attempt = n,
                        started = true,
                        duration_ms,
                        "item interrupted ({why}); back to pending, attempt not counted"
                    );
                } else {
                    tracing::debug!(
                        event = "item_released",
                        job,
                        key,
                        attempt = n,
                        started = false,
                        "item given back unstarted"
                    );
                }
                Settled::Released
            }
        }
    }
}

/// What an attempt's outcome becomes under the retry policy.
#[derive(Debug, Clone)]
pub(super) enum Verdict {
    /// Completed, with these stats.
    Complete(Option<Value>),
    /// Failed with this error (and output); retried at this time.
    Retry(String, Timestamp, Option<String>),
    /// Failed with this error (and output), the last attempt allowed (or a
    /// fatal one).
    Dead(String, Option<String>),
    /// Given back unfinished.
    Release,
    /// Dead unrun, its attempts used up before this claim (see
    /// `Queue::bury_exhausted`): the claim's attempt is taken back, and
    /// the error kept unless the item has one recorded.
    Bury(String),
}

impl Verdict {
    /// The fenced update that writes this verdict for `item`.
    pub(super) fn update(&self, item: &ClaimedItem, completed_by: Option<i64>) -> ItemUpdate {
        let change = match self {
            Verdict::Complete(stats) => ItemChange::Complete {
                stats: stats.clone(),
                command: completed_by,
            },
            Verdict::Retry(error, at, output) => ItemChange::Fail {
                error: error.clone(),
                retry_at: Some(*at),
                output: output.clone(),
            },
            Verdict::Dead(error, output) => ItemChange::Fail {
                error: error.clone(),
                retry_at: None,
                output: output.clone(),
            },
            Verdict::Release => ItemChange::Release,
            Verdict::Bury(error) => ItemChange::Bury {
                error: error.clone(),
            },
        };
        ItemUpdate {
            lease: item.lease.clone(),
            change,
        }
    }
}

/// `stats` with the attempt's run time added as `duration_ms` (kept if the
/// handler set it).
fn with_duration(stats: Option<Value>, took: Duration) -> Value {
    let ms = took.as_millis() as u64;
    match stats {
        Some(Value::Object(mut map)) => {
            map.entry("duration_ms").or_insert(json!(ms));
            Value::Object(map)
        }
        Some(other) => json!({ "value": other, "duration_ms": ms }),
        None => json!({ "duration_ms": ms }),
    }
}
