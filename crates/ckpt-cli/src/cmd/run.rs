//! `ckpt run`: run a command once per item with durable resume.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, ExitStatus, Stdio};
use std::time::Instant;

use anyhow::Result;
use ckpt::store::OpenMode;
use ckpt::{ClaimedItem, Outcome, QueueOptions, RetryPolicy, RunOptions, Runner};

use super::items::ItemsFile;
use crate::cli::RunArgs;
use crate::exit::{Usage, FAILED};
use crate::output::{short_duration, RunDoc};

pub fn run(url: &str, args: RunArgs) -> Result<ExitCode> {
    super::job_name(&args.job)?;
    let mut command = args.command.clone();
    if let Some(program) = resolve_program(&command[0])? {
        // Spawning by absolute path spares every item a walk of PATH.
        command[0] = program.to_string_lossy().into_owned();
    }
    // Every line is checked before the store is touched, so a bad items
    // file leaves the store as it was (and creates none).
    let items = ItemsFile::open(args.items.as_deref())?;
    items.check()?;
    let started = Instant::now();
    let ckpt = super::open(url, OpenMode::CreateIfMissing)?;
    let retry = RetryPolicy {
        base_delay: args.backoff,
        // A long --backoff is taken as asked, not capped at 30 s.
        max_delay: args.backoff.max(RetryPolicy::interactive(0).max_delay),
        ..RetryPolicy::interactive(args.retries)
    };
    let queue = ckpt.queue_with(
        &args.job,
        QueueOptions {
            lease: args.lease,
            retry,
        },
    )?;
    let enqueued = items.enqueue(&queue)?;
    let options = RunOptions {
        workers: args.jobs as usize,
        // Claiming ahead lets completions pile up and share one durable
        // commit, while holding few enough items that other `ckpt run`
        // processes on the same job still get their share.
        prefetch: (args.jobs as usize * 2).max(8),
        ..RunOptions::default()
    };
    let worker = queue.owner().to_string();
    let handler = |item: &ClaimedItem| run_item(&command, &args.job, &worker, item);
    let report = Runner::new(&queue, options).run(&handler)?;
    let counts = report.counts;
    let seconds = started.elapsed().as_secs_f64();
    if args.json {
        let doc = RunDoc {
            job: args.job.clone(),
            status: report.status.map(|s| s.to_string()),
            enqueued: enqueued.inserted,
            already_known: enqueued.existing,
            completed_now: report.completed,
            failed_attempts: report.failed,
            dead_now: report.dead,
            lost_leases: report.lost,
            items: counts,
            seconds,
        };
        println!("{}", serde_json::to_string_pretty(&doc)?);
    }
    let took = short_duration(started.elapsed());
    if counts.dead > 0 {
        eprintln!(
            "ckpt: job '{}' failed: {} dead item(s), {} of {} completed ({took}); see `ckpt status {}`",
            args.job,
            counts.dead,
            counts.completed,
            counts.total(),
            args.job
        );
        return Ok(ExitCode::from(FAILED));
    }
    eprintln!(
        "ckpt: job '{}' completed: {} items, {} run now, {} failed attempts ({took})",
        args.job, counts.completed, report.completed, report.failed
    );
    Ok(ExitCode::SUCCESS)
}

/// Finds a bare program name on `PATH` before anything is enqueued, so a
/// typo is one usage error rather than every item dead. `None` for a path
/// or a name that contains `{}`.
fn resolve_program(program: &str) -> Result<Option<PathBuf>> {
    if program.contains('/') || program.contains("{}") {
        return Ok(None);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| is_executable(candidate))
        .map(Some)
        .ok_or_else(|| Usage(format!("command not found: {program}")).into())
}

fn is_executable(path: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        path.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    }
    #[cfg(not(unix))]
    path.is_file()
}

/// Runs the command for one item.
///
/// The child is marked with `CKPT_WORKER`: if this process is killed, the
/// next run on this host kills the marked children (and their descendants)
/// before it takes their items over. (`PR_SET_PDEATHSIG` would kill only the
/// direct child, and would force a full `fork` instead of `posix_spawn`,
/// which costs about a third more per item.)
fn run_item(template: &[String], job: &str, worker: &str, item: &ClaimedItem) -> Outcome {
    let mut cmd = build_command(template, &item.key);
    cmd.env("CKPT_JOB", job)
        .env("CKPT_ITEM", &item.key)
        .env("CKPT_ATTEMPT", item.attempt.to_string())
        .env(ckpt::worker::WORKER_ENV, worker)
        .stdin(Stdio::null());
    match cmd.status() {
        Ok(status) if status.success() => Outcome::Completed(None),
        Ok(status) => Outcome::Failed(describe(status)),
        Err(e) => Outcome::Failed(format!("cannot run {}: {e}", template[0])),
    }
}

/// `{}` in an argument is replaced by the item; with no `{}` anywhere, the
/// item is appended as the last argument.
fn build_command(template: &[String], item: &str) -> Command {
    let has_placeholder = template.iter().any(|a| a.contains("{}"));
    let mut args = template.iter().map(|a| a.replace("{}", item));
    let mut cmd = Command::new(args.next().unwrap_or_default());
    cmd.args(args);
    if !has_placeholder {
        cmd.arg(item);
    }
    cmd
}

fn describe(status: ExitStatus) -> String {
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(signal) = status.signal() {
            return format!("killed by signal {signal}");
        }
    }
    match status.code() {
        Some(code) => format!("exit status {code}"),
        None => status.to_string(),
    }
}
