//! `ckpt doctor`: health checks for cron, CI and alert probes.

use std::process::ExitCode;

use anyhow::Result;
use ckpt::inspect::{doctor as check, DoctorOptions, Finding};
use ckpt::store::{FileCheck, OpenMode};

use crate::cli::DoctorArgs;
use crate::output::{shown, DoctorDoc, FileCheckDoc};

/// Exit 0 when healthy, 1 when there are findings (like `grep -q`, so a
/// cron line or probe can act on it), other codes for errors.
///
/// A store kept in a file (SQLite) is checked first with `PRAGMA
/// quick_check` (`--full`: `integrity_check`) and every stored value read
/// back; damage is an error naming the file (exit 4), before any
/// job is looked at.
pub fn doctor(url: &str, args: DoctorArgs) -> Result<ExitCode> {
    let ckpt = super::open(url, OpenMode::MustExist)?;
    let file_check = ckpt.store().check_files(args.full).transpose()?;
    if let Some(err) = file_check.as_ref().and_then(FileCheck::error) {
        return Err(err.into());
    }
    let options = DoctorOptions {
        stale: args.stale,
        max_history: args.max_history,
        max_state_bytes: args.max_state,
    };
    let jobs_checked = ckpt.store().list_jobs()?.len();
    let findings = check(ckpt.store().as_ref(), &options, ckpt.now())?;
    if args.json {
        let doc = DoctorDoc {
            healthy: findings.is_empty(),
            jobs_checked,
            file_check: file_check.as_ref().map(FileCheckDoc::from),
            findings: &findings,
        };
        outln!("{}", serde_json::to_string_pretty(&doc)?)?;
    } else {
        for f in &findings {
            outln!("{}: {}: {}", shown(&f.job), kind(f), shown(&f.message))?;
        }
        let file = file_check
            .as_ref()
            .map(|c| format!("; store file {} ok in {} ms", c.check, c.took.as_millis()))
            .unwrap_or_default();
        if findings.is_empty() {
            errln!("ckpt: healthy: {jobs_checked} job(s) checked, no findings{file}");
        } else {
            errln!(
                "ckpt: {} finding(s) in {jobs_checked} job(s) checked{file}",
                findings.len()
            );
        }
    }
    Ok(if findings.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(crate::exit::FAILED)
    })
}

fn kind(f: &Finding) -> &'static str {
    use ckpt::inspect::FindingKind::*;
    match f.kind {
        StaleCheckpoint => "stale checkpoint",
        ExcessiveHistory => "history growth",
        LargeState => "large state",
        DeadItems => "dead items",
        ExpiredLeases => "expired lease",
    }
}
