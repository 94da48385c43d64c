//! `ckpt doctor`: health checks for cron, CI and alert probes.

use std::process::ExitCode;

use anyhow::Result;
use ckpt::inspect::{doctor as check, DoctorOptions, Finding};
use ckpt::store::OpenMode;

use crate::cli::DoctorArgs;
use crate::output::DoctorDoc;

/// Exit 0 when healthy, 1 when there are findings (like `grep -q`, so a
/// cron line or probe can act on it), other codes for errors.
pub fn doctor(url: &str, args: DoctorArgs) -> Result<ExitCode> {
    let ckpt = super::open(url, OpenMode::MustExist)?;
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
            findings: &findings,
        };
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        for f in &findings {
            println!("{}: {}: {}", f.job, kind(f), f.message);
        }
        if findings.is_empty() {
            eprintln!("ckpt: healthy: {jobs_checked} job(s) checked, no findings");
        } else {
            eprintln!(
                "ckpt: {} finding(s) in {jobs_checked} job(s) checked",
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
