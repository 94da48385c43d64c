//! `ckpt reset`, `ckpt prune`, `ckpt history truncate`: repair and upkeep.

use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;

use anyhow::Result;
use ckpt::policy::retention;
use ckpt::store::OpenMode;
use serde::Serialize;

use crate::cli::{HistoryCommand, PruneArgs, ResetArgs};
use crate::exit::Usage;
use crate::output::{rfc3339, short_duration, shown};

pub fn reset(url: &str, args: ResetArgs) -> Result<ExitCode> {
    super::job_name(&args.job)?;
    let ckpt = super::open(url, OpenMode::MustExist)?;
    let now = ckpt.now();
    let job = ckpt.get_job(&args.job)?.ok_or_else(|| {
        ckpt::Error::NotFound(format!(
            "no job named '{}' in {}",
            args.job,
            ckpt.store().describe()
        ))
    })?;
    // A job of work items alone (`ckpt run`'s) has no checkpoint to clear;
    // clearing none would only mark it running, for no run to finish.
    let items = ckpt.store().item_counts(&args.job)?.total();
    if job.checkpoint.is_none() && items > 0 {
        return Err(Usage(format!(
            "job '{job}' has no checkpoint to clear: `ckpt reset` clears a job's checkpoint (its cursor), and this job's {items} work items are kept as they are; `ckpt retry {word}` re-drives its dead ones, and a new job name runs them all again",
            job = shown(&args.job),
            word = super::run::shell_word(&args.job),
        ))
        .into());
    }
    if !args.yes {
        let what = match &job.checkpoint {
            Some(cp) => format!(
                "cursor {}, {} items processed, {} history entries",
                shown(&cp.cursor.to_string()),
                cp.items_processed,
                job.history_len
            ),
            None => "no checkpoint".to_string(),
        };
        if !confirm(&format!(
            "Reset job '{}' ({what}) so it starts from scratch?",
            shown(&args.job)
        ))? {
            errln!("ckpt: nothing changed");
            return Ok(ExitCode::from(crate::exit::FAILED));
        }
    }
    let held_live = job.owner.is_some() && job.lease_expires.is_some_and(|t| t > now);
    if args.force {
        ckpt.clear_checkpoint_forced(&args.job)?;
    } else {
        // Refuses (exit 5) while a live worker holds the job.
        ckpt.clear_checkpoint(&args.job).map_err(|e| match e {
            ckpt::Error::Busy(why) => ckpt::Error::Busy(format!(
                "{why} (add --force to take the job from that worker)"
            )),
            other => other,
        })?;
    }
    let fenced = if args.force && held_live {
        format!(
            "; its holder {} is fenced off",
            shown(job.owner.as_deref().unwrap_or(""))
        )
    } else {
        String::new()
    };
    errln!(
        "ckpt: job '{}' reset: checkpoint and history cleared, it starts from scratch{fenced}",
        shown(&args.job)
    );
    Ok(ExitCode::SUCCESS)
}

/// Asks on the terminal; refuses when there is none to ask on.
fn confirm(question: &str) -> Result<bool> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        return Err(Usage(
            "standard input is not a terminal, so ckpt cannot ask: add --yes to confirm".into(),
        )
        .into());
    }
    // A question that cannot be shown (stderr a full disk or a closed
    // pipe) is no consent.
    let mut stderr = std::io::stderr().lock();
    if write!(stderr, "{question} [y/N] ")
        .and_then(|()| stderr.flush())
        .is_err()
    {
        return Err(Usage("cannot ask on stderr: add --yes to confirm".into()).into());
    }
    drop(stderr);
    let mut answer = String::new();
    stdin.lock().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes" | "YES" | "Yes"))
}

/// `ckpt prune --json`.
#[derive(Debug, Serialize)]
struct PruneDoc {
    dry_run: bool,
    completed_before: String,
    deleted: Vec<PrunedJob>,
    kept_not_completed: usize,
}

#[derive(Debug, Serialize)]
struct PrunedJob {
    job: String,
    completed_at: String,
    /// Its items (all completed). Not `items`: that name is an object of
    /// counts in every other document.
    items_total: u64,
}

/// `ckpt prune`: the retention plan (one rule, `ckpt::policy::retention`),
/// printed with `--dry-run`, executed otherwise.
pub fn prune(url: &str, args: PruneArgs) -> Result<ExitCode> {
    let ckpt = super::open(url, OpenMode::MustExist)?;
    let store = ckpt.store();
    let jobs = store.list_jobs()?;
    let counts = jobs
        .iter()
        .map(|job| store.item_counts(&job.name))
        .collect::<ckpt::Result<Vec<_>>>()?;
    let plan = retention::plan(jobs.iter().zip(&counts), ckpt.now(), args.completed_before);
    let mut deleted = Vec::new();
    for target in &plan.delete {
        // The store applies the same rule again, in the transaction that
        // deletes: a job that changed since the listing is left alone.
        if args.dry_run || store.delete_job(&target.job, plan.cutoff)? {
            deleted.push(PrunedJob {
                job: target.job.clone(),
                completed_at: rfc3339(target.completed_at),
                items_total: target.items,
            });
        }
    }
    let kept = plan.kept_not_completed;
    if args.json {
        let doc = PruneDoc {
            dry_run: args.dry_run,
            completed_before: rfc3339(plan.cutoff),
            deleted,
            kept_not_completed: kept,
        };
        outln!("{}", serde_json::to_string_pretty(&doc)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    let verb = if args.dry_run {
        "would delete"
    } else {
        "deleted"
    };
    for job in &deleted {
        outln!(
            "{verb} {} (completed {}, {} items)",
            shown(&job.job),
            job.completed_at,
            job.items_total
        )?;
    }
    errln!(
        "ckpt: {} job(s) completed before {} ago {verb}; {kept} running or failed job(s) kept{}",
        deleted.len(),
        short_duration(args.completed_before),
        if args.dry_run {
            " (dry run: nothing changed)"
        } else {
            ""
        }
    );
    Ok(ExitCode::SUCCESS)
}

pub fn history(url: &str, cmd: HistoryCommand) -> Result<ExitCode> {
    let HistoryCommand::Truncate { job, keep } = cmd;
    let ckpt = super::open(url, OpenMode::MustExist)?;
    let store = ckpt.store();
    let every_job = job.is_none();
    let names = match job {
        Some(job) => {
            super::job_name(&job)?;
            vec![job]
        }
        None => store.list_jobs()?.into_iter().map(|j| j.name).collect(),
    };
    let (mut total, mut changed, mut failed, mut vanished) = (0, Vec::new(), None, 0);
    for name in &names {
        match store.truncate_history(name, keep) {
            Ok(0) => {}
            Ok(removed) => {
                changed.push((name, removed));
                total += removed;
            }
            // Deleted since the listing (by a prune, or by a Redis
            // retention expiry): it has no history left to cut.
            Err(e) if every_job && e.is_not_found() => vanished += 1,
            Err(e) => {
                failed = Some(e);
                break;
            }
        }
    }
    // Reported once every change is made, so that an output that cannot
    // be written does not stop the truncation half-way; and on a failure,
    // what was changed before it is still reported.
    for (name, removed) in changed {
        outln!("{}: {removed} history entries removed", shown(name))?;
    }
    if let Some(e) = failed {
        return Err(e.into());
    }
    errln!(
        "ckpt: {total} history entries removed from {} job(s); each keeps at most {keep}",
        names.len() - vanished
    );
    Ok(ExitCode::SUCCESS)
}
