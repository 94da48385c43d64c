//! Output shapes: the JSON documents `--json` prints are their own types,
//! so that human wording can change without breaking scripts.
//!
//! The documents of jobs, items and checkpoints are the library's
//! [`ckpt::json`] types; the documents of single commands are here. All
//! follow the conventions of [`ckpt::json`]: times are RFC 3339 strings in
//! `*_at` fields, durations seconds in `*_seconds`, sizes `*_bytes`, a job's
//! name is `job`. They are stable as those are: fields may be added, none
//! renamed or retyped without a major version.

use std::borrow::Cow;
use std::time::Duration;

use ckpt::bench::BenchReport;
use ckpt::inspect::Finding;
use ckpt::json::ItemCountsJson;
use serde::Serialize;

/// The one time formatter, shared with the JSON documents.
pub use ckpt::json::rfc3339;

/// User data (item keys, errors, stages, owners) as human output prints
/// it: control characters (C0 such as ESC, newline and tab; DEL; C1) and
/// the bidirectional overrides are shown escaped (`\u{1b}`, `\n`), so
/// that data cannot recolour, move the cursor, retitle the terminal or
/// reorder what is shown. Everything else is printed as it is. JSON output
/// needs none of this: serde escapes control characters already.
pub fn shown(s: &str) -> Cow<'_, str> {
    if !s.chars().any(needs_escape) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if needs_escape(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// The characters of one line of a failure's output printed at most (its
/// end): a line of megabytes must not flood a listing.
const OUTPUT_LINE_SHOWN: usize = 160;

/// The last `n` non-blank lines of a failure's output (an item's
/// `last_output`), oldest first, each [`shown`] and cut to its last
/// [`OUTPUT_LINE_SHOWN`] characters (marked `…`): what human output prints
/// beside the error. The JSON documents carry the whole of it.
pub fn output_lines(output: &str, n: usize) -> Vec<String> {
    let mut lines: Vec<String> = output
        .lines()
        .rev()
        .filter(|l| !l.trim().is_empty())
        .take(n)
        .map(|l| {
            let chars = l.chars().count();
            let end: String = if chars > OUTPUT_LINE_SHOWN {
                let tail: String = l.chars().skip(chars - OUTPUT_LINE_SHOWN).collect();
                format!("…{tail}")
            } else {
                l.to_string()
            };
            shown(&end).into_owned()
        })
        .collect();
    lines.reverse();
    lines
}

pub fn needs_escape(c: char) -> bool {
    c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// "3.2s", "4m 5s": a short human duration.
pub fn short_duration(d: Duration) -> String {
    if d < Duration::from_secs(60) {
        format!("{:.1}s", d.as_secs_f64())
    } else {
        let secs = d.as_secs();
        humantime::format_duration(Duration::from_secs(secs)).to_string()
    }
}

/// `ckpt run --json`: what this run did, and where the job stands.
#[derive(Debug, Serialize)]
pub struct RunDoc {
    pub job: String,
    pub status: Option<String>,
    pub enqueued: u64,
    pub already_known: u64,
    pub completed_now: u64,
    pub failed_attempts: u64,
    pub dead_now: u64,
    pub lost_leases: u64,
    /// Items given back unfinished because the run was stopped.
    pub released_now: u64,
    /// "SIGTERM", "SIGINT" or "SIGHUP" when a signal stopped the run, else
    /// null.
    pub stopped_by: Option<String>,
    /// Why `--halt` ended the run early (e.g. `3 failures (--halt
    /// soon,fail=3)`), else null.
    pub halted: Option<String>,
    /// The job's items by status at the end (earlier runs' work included).
    pub items: ItemCountsJson,
    /// How long this run took.
    pub elapsed_seconds: f64,
}

/// `ckpt doctor --json`.
#[derive(Debug, Serialize)]
pub struct DoctorDoc<'a> {
    /// True if and only if there are no findings.
    pub healthy: bool,
    pub jobs_checked: usize,
    /// `{"job", "kind", "message"}` each; `kind` is one of
    /// `stale_checkpoint`, `excessive_history`, `large_state`,
    /// `dead_items`, `expired_leases`.
    pub findings: &'a [Finding],
    /// The store file's check (SQLite), `null` for a server store. Only a
    /// passed check is printed: a failed one is an error (exit 4).
    pub file_check: Option<FileCheckDoc>,
}

/// `file_check` in `ckpt doctor --json`.
#[derive(Debug, Serialize)]
pub struct FileCheckDoc {
    /// `"quick_check"`.
    pub check: &'static str,
    pub ok: bool,
    pub elapsed_seconds: f64,
}

impl From<&ckpt::store::FileCheck> for FileCheckDoc {
    fn from(c: &ckpt::store::FileCheck) -> Self {
        FileCheckDoc {
            check: c.check,
            ok: c.is_ok(),
            elapsed_seconds: c.took.as_secs_f64(),
        }
    }
}

/// `ckpt bench --json`: the [`BenchReport`] with its latencies in seconds
/// (`*_seconds`) like every other duration in JSON output.
#[derive(Debug, Serialize)]
pub struct BenchDoc {
    pub store: String,
    pub enqueue_per_s: f64,
    pub items_per_s: f64,
    pub runner_items_per_s: f64,
    pub checkpoints_per_s: f64,
    pub checkpoint_p50_seconds: f64,
    pub checkpoint_p99_seconds: f64,
    pub baseline_upserts_per_s: Option<f64>,
    pub checkpoint_vs_baseline: Option<f64>,
    pub concurrent_jobs: usize,
    pub concurrent_checkpoints_per_s: f64,
    pub concurrent_checkpoints_per_s_separate: Option<f64>,
    pub items: u64,
    pub workers: usize,
    pub saves: u64,
    pub batch: usize,
}

impl From<&BenchReport> for BenchDoc {
    fn from(r: &BenchReport) -> Self {
        BenchDoc {
            store: r.store.clone(),
            enqueue_per_s: r.enqueue_per_s,
            items_per_s: r.items_per_s,
            runner_items_per_s: r.runner_items_per_s,
            checkpoints_per_s: r.checkpoints_per_s,
            checkpoint_p50_seconds: r.checkpoint_p50_us as f64 / 1e6,
            checkpoint_p99_seconds: r.checkpoint_p99_us as f64 / 1e6,
            baseline_upserts_per_s: r.baseline_upserts_per_s,
            checkpoint_vs_baseline: r.checkpoint_vs_baseline,
            concurrent_jobs: r.concurrent_jobs,
            concurrent_checkpoints_per_s: r.concurrent_checkpoints_per_s,
            concurrent_checkpoints_per_s_separate: r.concurrent_checkpoints_per_s_separate,
            items: r.items,
            workers: r.workers,
            saves: r.saves,
            batch: r.batch,
        }
    }
}

/// True if `e` is a write to a pipe whose reader went away (`| head`): a
/// reader that has seen enough, not a failure to report.
pub fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain()
        .filter_map(|c| c.downcast_ref::<std::io::Error>())
        .any(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
}

/// An error writing what a command prints on stdout.
pub fn stdout_error(e: std::io::Error) -> anyhow::Error {
    anyhow::Error::new(e).context("cannot write the output")
}

#[cfg(test)]
mod tests {
    use super::shown;

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(shown("plain key é 日本"), "plain key é 日本");
        assert_eq!(shown("\u{1b}[31mRED\nx\ty\r"), "\\u{1b}[31mRED\\nx\\ty\\r");
        assert_eq!(
            shown("del\u{7f} csi\u{9b} bell\u{7}"),
            "del\\u{7f} csi\\u{9b} bell\\u{7}"
        );
        assert_eq!(shown("a\u{202e}b"), "a\\u{202e}b");
        assert!(matches!(shown("ok"), std::borrow::Cow::Borrowed(_)));
    }
}
