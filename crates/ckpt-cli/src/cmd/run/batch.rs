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
//! same worker; that run's outcome is the item's, recorded as soon as it
//! ends (not with the rest of the batch). The batch is not charged to anyone: each
//! item's attempt is the batch and its lone run together, so the good
//! items complete without losing an attempt, and only the bad one fails
//! (and is retried alone, as a retry always is, or dies). A batch stopped
//! from outside (its lease lost, the run stopping or halting) is not
//! split: every item gets that outcome. Nor is a batch that fails while
//! the run is stopping (a stopping run starts nothing new): its items are
//! given back uncharged, and the next run splits it.
//!
//! A batch whose command line would not fit what `exec` takes (see
//! [`fits`]) is cut to its first half, quarter, … that fits, as `xargs`
//! sizes its commands, before any of it starts ([`fitting`], through
//! `Handler::batch_fits`): the rest goes back unstarted, for the next free
//! worker. Without that, `exec` refuses the whole batch (`E2BIG`), and
//! every item would run alone.

use std::sync::OnceLock;

use anyhow::Result;
use ckpt::{ClaimedItem, EarlyOutcomes, Fence, Outcome};

use super::template::Context as Expand;
use super::{run_item, CommandHandler};

/// How many of the front of `items` one command line can hold
/// ([`longest_fitting`]).
pub(super) fn fitting(h: &CommandHandler<'_>, items: &[ClaimedItem]) -> usize {
    // `{%}` is at most the highest slot: its digits bound any slot's.
    let slot = h.slots.count();
    longest_fitting(items.len(), |n| {
        let part = &items[..n];
        // An error is for the run to report, with the command.
        argv(h, part, slot).map_or(true, |argv| {
            fits(&argv, joined_len(part.iter().map(|i| i.key.as_str())))
        })
    })
}

/// Of the first `n` items, the most that one command line holds: `n`, or
/// its half, quarter, … (at least 1), the first for which `fits_first`
/// says so. The run and its dry run cut alike.
pub(super) fn longest_fitting(n: usize, mut fits_first: impl FnMut(usize) -> bool) -> usize {
    let mut k = n;
    while k > 1 && !fits_first(k) {
        k /= 2;
    }
    k
}

/// The length of `keys` one per line, as [`keys`] joins them.
pub(super) fn joined_len<'a>(keys: impl IntoIterator<Item = &'a str>) -> usize {
    keys.into_iter()
        .map(|k| k.len() + 1)
        .sum::<usize>()
        .saturating_sub(1)
}

/// Linux's limit on one argument or environment string, its NUL included
/// (`MAX_ARG_STRLEN`, 32 pages), which `CKPT_ITEM` reaches first.
const MAX_ARG_STRLEN: usize = 128 * 1024;

/// Whether a command line `argv`, with a `CKPT_ITEM` of `item_len` bytes,
/// fits what `exec` takes: each string within [`MAX_ARG_STRLEN`], and all
/// of them with their pointers, beside ckpt's environment, within
/// `ARG_MAX` (less 4 KiB for the other `CKPT_` variables, as `xargs` keeps
/// 2 KiB spare).
pub(super) fn fits(argv: &[String], item_len: usize) -> bool {
    let item_env = "CKPT_ITEM=".len() + item_len + 1;
    if item_env > MAX_ARG_STRLEN || argv.iter().any(|a| a.len() + 1 > MAX_ARG_STRLEN) {
        return false;
    }
    let pointer = std::mem::size_of::<usize>();
    let args: usize = argv.iter().map(|a| a.len() + 1 + pointer).sum();
    args + item_env + pointer <= exec_budget()
}

/// `ARG_MAX` less ckpt's own environment (which every command inherits)
/// and 4 KiB to spare; asked once.
fn exec_budget() -> usize {
    static BUDGET: OnceLock<usize> = OnceLock::new();
    *BUDGET.get_or_init(|| {
        // SAFETY: sysconf takes a name and returns a value, or -1.
        let max = unsafe { libc::sysconf(libc::_SC_ARG_MAX) };
        let max = usize::try_from(max).unwrap_or(0).max(MAX_ARG_STRLEN);
        let pointer = std::mem::size_of::<usize>();
        let env: usize = std::env::vars_os()
            .map(|(k, v)| k.len() + v.len() + 2 + pointer)
            .sum();
        max.saturating_sub(env + 4096)
    })
}

/// Runs `items` as one command; on failure, each alone, each lone
/// outcome handed to `early` as it ends (recorded at once: a crash during
/// the split loses none of the items already done).
pub(super) fn run(
    h: &CommandHandler<'_>,
    items: &[ClaimedItem],
    fences: &[Fence],
    early: &EarlyOutcomes<'_>,
) -> Vec<Outcome> {
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
        .enumerate()
        .map(|(index, (item, fence))| {
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
            early.report(index, outcome.clone());
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
