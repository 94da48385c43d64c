//! `-n N` / `--max-args N`: up to N items per command.
//!
//! The runner hands a worker up to N claimed items at once (first attempts
//! only: an item tried before runs alone) with every start recorded. One
//! command runs for all of them, under a fence that trips when any of
//! their leases is lost ([`Fence::any`]), with `--timeout` per command.
//! Its exit 0 completes them all, recorded in one transaction and so one
//! durable commit.
//!
//! A batch whose command fails (an exit status, a signal not ours, a
//! timeout, `--no-retry-exit` included) cannot say which item was bad, so
//! each of its items is run again alone, at once, one after another by the
//! same worker; that run's outcome is the item's. The batch is not charged to anyone: each
//! item's attempt is the batch and its lone run together, so the good
//! items complete without losing an attempt, and only the bad one fails
//! (and is retried alone, as a retry always is, or dies). A batch stopped
//! from outside (its lease lost, the run stopping or halting) is not
//! split: every item gets that outcome. Nor is a batch that fails while
//! the run is stopping (a stopping run starts nothing new): its items are
//! given back uncharged, and the next run splits it.

use anyhow::Result;
use ckpt::{ClaimedItem, Fence, Outcome};

use super::template::Context as Expand;
use super::{run_item, CommandHandler};

/// Runs `items` as one command; on failure, each alone.
pub(super) fn run(h: &CommandHandler<'_>, items: &[ClaimedItem], fences: &[Fence]) -> Vec<Outcome> {
    let fence = Fence::any(fences);
    let outcome = run_item(h, items, &fence);
    let failed = matches!(outcome.base(), Outcome::Failed(_) | Outcome::Fatal(_));
    if failed && !fence.is_lost() && h.stop.is_stopped() {
        // Which item was bad is unknown, and a stopping run starts nothing
        // new: every item is given back uncharged, and the next run splits
        // the batch. Not failures, so no halt counts them.
        let back = Outcome::Interrupted(format!(
            "the batch failed as the run was stopping, so not run alone: {}",
            why(&outcome)
        ));
        return vec![back; items.len()];
    }
    if !failed || fence.is_lost() {
        for item in items {
            h.observe(&outcome, item.attempt);
        }
        return vec![outcome; items.len()];
    }
    tracing::info!(
        event = "batch_split",
        job = h.job,
        items = items.len(),
        "a batch of {} items failed ({}); running each alone",
        items.len(),
        why(&outcome)
    );
    items
        .iter()
        .zip(fences)
        .map(|(item, fence)| {
            // Given back unstarted, as the runner gives back what it
            // claimed ahead when it stops.
            if h.stop.is_stopped() {
                return Outcome::Interrupted("not run alone: the run is stopping".into());
            }
            if let Some(lost) = fence.reason() {
                return Outcome::Interrupted(format!("not run alone: {lost}"));
            }
            let outcome = run_item(h, std::slice::from_ref(item), fence);
            h.observe(&outcome, item.attempt);
            outcome
        })
        .collect()
}

/// The command line for `items` in worker slot `slot`.
pub(super) fn argv(
    h: &CommandHandler<'_>,
    items: &[ClaimedItem],
    slot: usize,
) -> Result<Vec<String>> {
    let cxs = items
        .iter()
        .map(|item| {
            let line = h.lines.map(|l| l.line(&item.key)).transpose()?;
            Ok(Expand {
                item: &item.key,
                colsep: h.colsep,
                line: line.unwrap_or(0),
                slot,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(h.template.expand_many(&cxs))
}

/// `CKPT_ITEM`: the item, or a batch's items one per line (an item is a
/// line of input, so it holds no newline).
pub(super) fn keys(items: &[ClaimedItem]) -> String {
    match items {
        [one] => one.key.clone(),
        _ => items
            .iter()
            .map(|i| i.key.as_str())
            .collect::<Vec<_>>()
            .join("\n"),
    }
}

fn why(outcome: &Outcome) -> &str {
    match outcome.base() {
        Outcome::Failed(why) | Outcome::Fatal(why) | Outcome::Interrupted(why) => why,
        _ => "",
    }
}
