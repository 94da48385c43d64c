//! `ckpt status JOB`.

use std::process::ExitCode;

use anyhow::Result;
use ckpt::store::OpenMode;

use crate::cli::StatusArgs;
use crate::output::{rfc3339, short_duration, shown};

/// Dead items and items awaiting a retry listed, of each.
const FAILURES_SHOWN: usize = 10;
/// History entries in the `--json` document (as `ckpt show`'s default).
const HISTORY_SHOWN: usize = 20;

pub fn status(url: &str, args: StatusArgs) -> Result<ExitCode> {
    super::job_name(&args.job)?;
    let ckpt = super::open(url, OpenMode::MustExist)?;
    let store = ckpt.store();
    let not_found = || {
        ckpt::Error::NotFound(format!(
            "no job named '{}' in {}",
            args.job,
            store.describe()
        ))
    };
    let now = ckpt.now();
    if args.json {
        // The same document as `ckpt show --json` and the API's.
        let detail = ckpt::inspect::job_detail(
            store.as_ref(),
            &args.job,
            now,
            HISTORY_SHOWN,
            FAILURES_SHOWN,
        )?
        .ok_or_else(not_found)?;
        outln!("{}", serde_json::to_string_pretty(&detail)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    // Everything is read before anything is printed: a store that fails
    // half-way prints one error line, not half a report.
    let job = store.get_job(&args.job)?.ok_or_else(not_found)?;
    let counts = store.item_counts(&args.job)?;
    let failures =
        super::inspect::Failures::read(store.as_ref(), &args.job, &counts, FAILURES_SHOWN)?;
    outln!("job:        {}", shown(&job.name))?;
    outln!("status:     {}", job.status)?;
    outln!(
        "items:      {} completed, {} running, {} pending, {} failed (awaiting retry), {} dead ({} total)",
        counts.completed,
        counts.running,
        counts.pending,
        counts.failed,
        counts.dead,
        counts.total()
    )?;
    match (&job.checkpoint, job.checkpoint_at) {
        (Some(cp), Some(at)) => {
            let mut line = format!(
                "cursor {}, {} items processed",
                shown(&cp.cursor.to_string()),
                cp.items_processed
            );
            if let Some(stage) = &cp.stage {
                line.push_str(&format!(", stage {}", shown(stage)));
            }
            outln!("checkpoint: {line}")?;
            outln!(
                "saved:      {} ago ({}), {} saves, {} in history, state {} bytes",
                short_duration(now.since(at)),
                rfc3339(at),
                job.saves,
                job.history_len,
                job.state_bytes
            )?;
        }
        _ => outln!("checkpoint: none")?,
    }
    if let (Some(owner), Some(until)) = (&job.owner, job.lease_expires) {
        let state = if until > now {
            format!("lease expires in {}", short_duration(until.since(now)))
        } else {
            format!("lease expired {} ago", short_duration(now.since(until)))
        };
        outln!("owner:      {}, {state}", shown(owner))?;
    }
    if let Some(error) = &job.error {
        outln!("error:      {}", shown(error))?;
    }
    failures.print(&job.name, now)?;
    Ok(ExitCode::SUCCESS)
}
