//! `ckpt retry JOB [--dead | --failed] [KEY...]`: re-drive items;
//! `--completed-by-other-command`, `--completed-by ID`: re-drive completed
//! items by the command that completed them.

use std::process::ExitCode;

use anyhow::Result;
use ckpt::model::CompletedBy;
use ckpt::store::OpenMode;
use ckpt::{ItemStatus, Queue};

use crate::cli::RetryArgs;
use crate::exit::Usage;
use crate::output::shown;

pub fn retry(url: &str, args: RetryArgs) -> Result<ExitCode> {
    super::job_name(&args.job)?;
    let ckpt = super::open(url, OpenMode::MustExist)?;
    if ckpt.get_job(&args.job)?.is_none() {
        return Err(ckpt::Error::NotFound(format!(
            "no job named '{}' in {}",
            args.job,
            ckpt.store().describe()
        ))
        .into());
    }
    let queue = ckpt.queue(&args.job)?;
    if let Some(by) = completed_by(&queue, &args)? {
        let moved = queue.redrive_completed(by)?;
        let which = match by {
            CompletedBy::NotCommand(_) => "by another command than the latest".to_string(),
            CompletedBy::Command(id) => format!("by command {id}"),
            CompletedBy::Unknown => "by an unknown command".to_string(),
        };
        errln!(
            "ckpt: job '{}': {moved} item(s) completed {which} back to pending; run the job again to redo them",
            shown(&args.job)
        );
        return Ok(ExitCode::SUCCESS);
    }
    let from = if args.failed {
        ItemStatus::Failed
    } else {
        ItemStatus::Dead
    };
    let keys = (!args.keys.is_empty()).then_some(args.keys.as_slice());
    let moved = queue.redrive(from, keys)?;
    if let Some(keys) = keys {
        // A key mistyped, or an item not (or no longer) in that state:
        // said, not passed over as "0 back to pending".
        let given = keys.iter().collect::<std::collections::HashSet<_>>().len() as u64;
        let see = format!(
            "see `ckpt items {} --status {from}`",
            super::run::shell_word(&args.job)
        );
        if moved == 0 {
            return Err(ckpt::Error::NotFound(format!(
                "job '{}' has no {from} item with the key(s) given; {see}",
                shown(&args.job)
            ))
            .into());
        }
        if moved < given {
            errln!(
                "ckpt: warning: {} of the {given} keys given match no {from} item of job '{}' (unknown, or not {from}); {see}",
                given - moved,
                shown(&args.job)
            );
        }
    }
    errln!(
        "ckpt: job '{}': {moved} {from} item(s) back to pending; run the job again to process them",
        shown(&args.job)
    );
    Ok(ExitCode::SUCCESS)
}

/// The completed items the options select, if they select any.
fn completed_by(queue: &Queue, args: &RetryArgs) -> Result<Option<CompletedBy>> {
    if args.completed_by_other_command {
        let commands = queue.commands()?;
        let latest = commands.latest().ok_or_else(|| {
            Usage(format!(
                "job '{}' has no recorded command (it was never run by `ckpt run` since ckpt recorded commands); use --completed-by unknown",
                shown(&args.job)
            ))
        })?;
        return Ok(Some(CompletedBy::NotCommand(latest.id)));
    }
    let Some(id) = &args.completed_by else {
        return Ok(None);
    };
    if id == "unknown" {
        return Ok(Some(CompletedBy::Unknown));
    }
    let id: i64 = id.parse().map_err(|_| {
        Usage(format!(
            "--completed-by takes a command id (as `ckpt show` lists them) or `unknown`, not '{id}'"
        ))
    })?;
    if !queue.commands()?.commands.iter().any(|c| c.id == id) {
        // Not found (exit 3), as keys that match no item are.
        return Err(ckpt::Error::NotFound(format!(
            "job '{}' has no command {id} (see `ckpt show {}`)",
            shown(&args.job),
            super::run::shell_word(&args.job)
        ))
        .into());
    }
    Ok(Some(CompletedBy::Command(id)))
}
