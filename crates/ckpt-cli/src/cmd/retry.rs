//! `ckpt retry JOB [--dead | --failed] [KEY...]`: re-drive items.

use std::process::ExitCode;

use anyhow::Result;
use ckpt::store::OpenMode;
use ckpt::ItemStatus;

use crate::cli::RetryArgs;

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
    let from = if args.failed {
        ItemStatus::Failed
    } else {
        ItemStatus::Dead
    };
    let keys = (!args.keys.is_empty()).then_some(args.keys.as_slice());
    let moved = ckpt.queue(&args.job)?.redrive(from, keys)?;
    eprintln!(
        "ckpt: job '{}': {moved} {from} item(s) back to pending; run the job again to process them",
        args.job
    );
    Ok(ExitCode::SUCCESS)
}
