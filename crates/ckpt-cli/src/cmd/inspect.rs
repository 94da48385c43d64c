//! `ckpt jobs`, `ckpt show JOB`, `ckpt items JOB`: read-only views.

use std::process::ExitCode;
use unicode_width::UnicodeWidthStr;

use anyhow::Result;
use ckpt::inspect::{job_detail, job_documents, job_summaries, JobSummary};
use ckpt::json::ItemJson;
use ckpt::model::{HistoryEntry, ItemRecord};
use ckpt::store::OpenMode;
use ckpt::{Ckpt, ItemStatus, Timestamp};
use serde_json::Value;

use crate::cli::{ItemsArgs, JobsArgs, ShowArgs};
use crate::output::{output_lines, rfc3339, short_duration, shown};

/// Failures listed by `show`: the dead items, then the failed ones, this
/// many in all (`--json`: this many of each).
const FAILURES_SHOWN: usize = 10;

pub fn jobs(url: &str, args: JobsArgs) -> Result<ExitCode> {
    let ckpt = super::open(url, OpenMode::MustExist)?;
    let now = ckpt.now();
    if args.json {
        let jobs = job_documents(ckpt.store().as_ref(), now)?;
        outln!("{}", serde_json::to_string_pretty(&jobs)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    let jobs = job_summaries(ckpt.store().as_ref(), now)?;
    if jobs.is_empty() {
        errln!("ckpt: no jobs in {}", ckpt.store().describe());
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<[String; 7]> = jobs
        .iter()
        .map(|j| {
            [
                j.name.clone(),
                j.status.to_string(),
                progress(j),
                j.items.dead.to_string(),
                j.checkpoint_at.map_or("-".into(), |t| {
                    format!("{} ago", short_duration(now.since(t)))
                }),
                j.history_len.to_string(),
                bytes(j.state_bytes),
            ]
        })
        .collect();
    print_table(
        &[
            "JOB",
            "STATUS",
            "PROGRESS",
            "DEAD",
            "CHECKPOINT",
            "HISTORY",
            "STATE",
        ],
        &rows,
    )?;
    Ok(ExitCode::SUCCESS)
}

/// "1200/5000 (24%)" for item jobs, "1200 processed" for cursor jobs.
fn progress(j: &JobSummary) -> String {
    match j.progress() {
        Some((done, total)) => format!("{done}/{total} ({}%)", done * 100 / total),
        None if j.checkpoint_at.is_some() => format!("{} processed", j.items_processed),
        None => "-".into(),
    }
}

fn bytes(n: u64) -> String {
    match n {
        0..=1023 => format!("{n} B"),
        1024..=1_048_575 => format!("{:.1} KiB", n as f64 / 1024.0),
        _ => format!("{:.1} MiB", n as f64 / 1_048_576.0),
    }
}

/// Left-aligned columns, two spaces apart, by the terminal columns each
/// cell takes (a CJK character takes two); every cell [`shown`].
fn print_table<const N: usize>(header: &[&str; N], rows: &[[String; N]]) -> Result<()> {
    let rows: Vec<[String; N]> = rows
        .iter()
        .map(|row| row.clone().map(|cell| shown(&cell).into_owned()))
        .collect();
    let rows = rows.as_slice();
    let mut widths = header.map(str::len);
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(UnicodeWidthStr::width(cell.as_str()));
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == N {
                out.push_str(cell);
            } else {
                out.push_str(cell);
                let pad = w.saturating_sub(UnicodeWidthStr::width(*cell)) + 2;
                out.extend(std::iter::repeat_n(' ', pad));
            }
        }
        outln!("{}", out.trim_end())
    };
    line(header.to_vec())?;
    for row in rows {
        line(row.iter().map(String::as_str).collect())?;
    }
    Ok(())
}

/// An item's error for a table cell: its first line, and the last line
/// of its output (stderr) beside it.
fn last_error(i: &ItemRecord) -> String {
    let Some(error) = i.last_error.as_deref() else {
        return "-".into();
    };
    let error = error.lines().next().unwrap_or("");
    match i.last_output.as_deref().map(|o| output_lines(o, 1)) {
        Some(last) if !last.is_empty() => format!("{error} (stderr: {})", last[0]),
        _ => error.to_string(),
    }
}

fn not_found(ckpt: &Ckpt, job: &str) -> anyhow::Error {
    ckpt::Error::NotFound(format!(
        "no job named '{job}' in {}",
        ckpt.store().describe()
    ))
    .into()
}

pub fn show(url: &str, args: ShowArgs) -> Result<ExitCode> {
    super::job_name(&args.job)?;
    let ckpt = super::open(url, OpenMode::MustExist)?;
    let store = ckpt.store();
    let now = ckpt.now();
    if args.json {
        // The same document as `ckpt status --json` and the API's.
        let detail = job_detail(store.as_ref(), &args.job, now, args.history, FAILURES_SHOWN)?
            .ok_or_else(|| not_found(&ckpt, &args.job))?;
        outln!("{}", serde_json::to_string_pretty(&detail)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    let record = store
        .get_job(&args.job)?
        .ok_or_else(|| not_found(&ckpt, &args.job))?;
    let summary = JobSummary::new(&record, store.item_counts(&args.job)?, now);
    let history = store.history(&args.job, args.history)?;
    let failures = Failures::read(store.as_ref(), &args.job, &summary.items, FAILURES_SHOWN)?;
    let commands = store.commands(&args.job)?;
    // Everything read before anything is printed: an error is then the
    // only output, never the tail of a half-printed job.
    let cursor = record.checkpoint.as_ref().map(|c| &c.cursor);
    print_show(&summary, cursor, &history, now)?;
    failures.print(&summary.name, now)?;
    print_commands(&commands)?;
    Ok(ExitCode::SUCCESS)
}

/// The job's commands with the items each completed, the latest marked.
fn print_commands(c: &ckpt::model::JobCommands) -> Result<()> {
    if c.commands.is_empty() && c.unknown == 0 {
        return Ok(());
    }
    let latest = c.latest().map(|l| l.id);
    let width = c
        .commands
        .iter()
        .map(|c| c.completed)
        .chain([c.unknown])
        .max()
        .unwrap_or(0)
        .to_string()
        .len();
    outln!("commands (items completed by each):")?;
    for cmd in &c.commands {
        let mark = if Some(cmd.id) == latest {
            " (latest)"
        } else {
            ""
        };
        outln!(
            "  #{:<3} {:>width$} completed  {}{mark}",
            cmd.id,
            cmd.completed,
            shown(&cmd.command)
        )?;
    }
    if c.unknown > 0 {
        outln!(
            "  {:<4} {:>width$} completed  (unknown command)",
            "-",
            c.unknown
        )?;
    }
    Ok(())
}

fn print_show(
    s: &JobSummary,
    cursor: Option<&Value>,
    history: &[HistoryEntry],
    now: Timestamp,
) -> Result<()> {
    outln!("job:        {}", shown(&s.name))?;
    outln!("status:     {}", s.status)?;
    if let Some(error) = &s.error {
        outln!("error:      {}", shown(error))?;
    }
    if s.items.total() > 0 {
        outln!(
            "items:      {} completed, {} running, {} pending, {} failed, {} dead ({} total)",
            s.items.completed,
            s.items.running,
            s.items.pending,
            s.items.failed,
            s.items.dead,
            s.items.total()
        )?;
    }
    match (cursor, s.checkpoint_at) {
        (Some(cursor), Some(at)) => {
            let stage = s
                .stage
                .as_ref()
                .map_or(String::new(), |st| format!(", stage {}", shown(st)));
            outln!(
                "checkpoint: cursor {}, {} items processed{stage}",
                shown(&cursor.to_string()),
                s.items_processed
            )?;
            outln!(
                "saved:      {} ago ({}), {} saves, state {}",
                short_duration(now.since(at)),
                rfc3339(at),
                s.saves,
                bytes(s.state_bytes)
            )?;
        }
        _ => outln!("checkpoint: none")?,
    }
    match (&s.owner, s.lease_expires) {
        (Some(owner), Some(until)) if until > now => outln!(
            "owner:      {} (lease for {} more)",
            shown(owner),
            short_duration(until.since(now))
        )?,
        (Some(owner), _) => outln!("owner:      {} (lease expired: worker gone?)", shown(owner))?,
        _ => {}
    }
    if !history.is_empty() {
        outln!(
            "history ({} of {}, newest first):",
            history.len(),
            s.history_len
        )?;
        for h in history {
            outln!(
                "  #{:<6} {}  cursor {}, {} processed",
                h.seq,
                rfc3339(h.at),
                shown(&h.cursor.to_string()),
                h.items_processed
            )?;
        }
    }
    Ok(())
}

/// A job's latest dead items and items awaiting a retry, as `ckpt show`
/// and `ckpt status` list them: the last of each in input order, the last
/// first (where items fail in input order, the latest failures), with how
/// many more there are and where to see them.
pub(super) struct Failures {
    dead: Vec<ItemRecord>,
    dead_count: u64,
    failed: Vec<ItemRecord>,
    failed_count: u64,
}

impl Failures {
    /// Reads up to `limit` of each from `store` (none when `counts` has
    /// none).
    pub(super) fn read(
        store: &dyn ckpt::store::Store,
        job: &str,
        counts: &ckpt::ItemCounts,
        limit: usize,
    ) -> Result<Failures> {
        let last = |status, count: u64| -> Result<Vec<ItemRecord>> {
            Ok(if count == 0 {
                Vec::new()
            } else {
                store.last_items(job, status, limit)?
            })
        };
        Ok(Failures {
            dead: last(ItemStatus::Dead, counts.dead)?,
            dead_count: counts.dead,
            failed: last(ItemStatus::Failed, counts.failed)?,
            failed_count: counts.failed,
        })
    }

    pub(super) fn print(&self, job: &str, now: Timestamp) -> Result<()> {
        // Pasteable, and safe on a terminal ($'…' where it must be).
        let job = super::run::shell_word(job);
        let heading = format!("dead items, latest first (retry them with `ckpt retry {job}`):");
        print_failures(&heading, &self.dead, self.dead_count, &job, "dead", |_| {
            String::new()
        })?;
        let heading = "failed items awaiting a retry, latest first:";
        print_failures(
            heading,
            &self.failed,
            self.failed_count,
            &job,
            "failed",
            |item| match item.ready_at {
                Some(at) if at > now => {
                    format!("; next try in {}", short_duration(at.since(now)))
                }
                Some(_) => "; due now".to_string(),
                None => String::new(),
            },
        )
    }
}

/// A list of `items` (of `count` of `status` in all) under `heading`, each
/// with its error, its attempts and `then`, and the last lines of its
/// output; nothing when there are none.
fn print_failures(
    heading: &str,
    items: &[ItemRecord],
    count: u64,
    job: &str,
    status: &str,
    then: impl Fn(&ItemRecord) -> String,
) -> Result<()> {
    if items.is_empty() {
        return Ok(());
    }
    outln!("{heading}")?;
    for item in items {
        outln!(
            "  {}: {} (after {}{})",
            shown(&item.key),
            shown(item.last_error.as_deref().unwrap_or("no error recorded")),
            attempts(item.attempts),
            then(item)
        )?;
        print_output(item.last_output.as_deref())?;
    }
    more(count, items.len(), job, status)
}

/// "1 attempt", "3 attempts".
fn attempts(n: u32) -> String {
    format!("{n} attempt{}", if n == 1 { "" } else { "s" })
}

/// The line under a list that shows `shown` of `count` items of `status`.
fn more(count: u64, shown: usize, job: &str, status: &str) -> Result<()> {
    if count > shown as u64 {
        outln!(
            "  ... and {} more (all of them: `ckpt items {job} --status {status}`)",
            count - shown as u64
        )?;
    }
    Ok(())
}

/// The last lines of a failure's stderr, under its line in a listing.
pub(super) fn print_output(output: Option<&str>) -> Result<()> {
    for line in output_lines(output.unwrap_or(""), OUTPUT_LINES_SHOWN) {
        outln!("      | {line}")?;
    }
    Ok(())
}

/// Lines of a failure's stderr `show` and `status` print.
const OUTPUT_LINES_SHOWN: usize = 3;

pub fn items(url: &str, args: ItemsArgs) -> Result<ExitCode> {
    super::job_name(&args.job)?;
    let ckpt = super::open(url, OpenMode::MustExist)?;
    let store = ckpt.store();
    if store.get_job(&args.job)?.is_none() {
        return Err(not_found(&ckpt, &args.job));
    }
    let status = args.status.map(Into::into);
    let items = store.list_items(&args.job, status, args.limit)?;
    if items.len() == args.limit {
        // Cut: said on stderr, so that the list on stdout stays a list.
        let counts = store.item_counts(&args.job)?;
        let matching = status.map_or(counts.total(), |s| counts.of(s));
        if matching > args.limit as u64 {
            errln!(
                "ckpt: the first {} of {matching} items shown (--limit {matching} for all)",
                args.limit
            );
        }
    }
    if args.json {
        let docs: Vec<ItemJson> = items.iter().map(ItemJson::new).collect();
        outln!("{}", serde_json::to_string_pretty(&docs)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<[String; 6]> = items
        .iter()
        .map(|i| {
            [
                i.key.clone(),
                i.status.to_string(),
                i.attempts.to_string(),
                i.owner.clone().unwrap_or_else(|| "-".into()),
                last_error(i),
                i.stats.as_ref().map_or("-".into(), Value::to_string),
            ]
        })
        .collect();
    print_table(
        &["KEY", "STATUS", "ATTEMPTS", "OWNER", "LAST ERROR", "STATS"],
        &rows,
    )?;
    Ok(ExitCode::SUCCESS)
}
