//! Command-line definitions.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

mod ops;
pub use ops::*;

/// Durable checkpoint & resume for long-running batch work.
#[derive(Debug, Parser)]
#[command(
    name = "ckpt",
    version,
    about = "Durable checkpoint & resume for long-running batch work",
    long_about = None
)]
pub struct Cli {
    /// Store URL: sqlite://PATH (the default store, ./ckpt.db),
    /// postgres://USER@HOST/DB[?schema=NAME],
    /// redis://HOST:PORT/DB[?prefix=NAME&ttl=7d] or memory://. A URL
    /// with a password is better set in CKPT_STORE than given here: any
    /// user on the host can read a command line (ps).
    #[arg(
        long,
        global = true,
        env = "CKPT_STORE",
        hide_env_values = true,
        default_value = "sqlite://ckpt.db"
    )]
    pub store: String,

    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One readable line per event.
    Human,
    /// One JSON object per event.
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a command once per item, with durable resume: completed items are
    /// skipped when the same command runs again.
    Run(RunArgs),
    /// Show a job's items by status and its checkpoint.
    Status(StatusArgs),
    /// Re-drive dead (or failed) items: back to pending with fresh attempts.
    Retry(RetryArgs),
    /// Read, write or clear a job checkpoint (the cursor pattern for scripts).
    #[command(subcommand)]
    Checkpoint(CheckpointCommand),
    /// Measure checkpoint saves and item throughput of a store.
    Bench(BenchArgs),
    /// List every job: status, progress, checkpoint age, history, state size.
    Jobs(JobsArgs),
    /// Show a job: its checkpoint, history and recent failures.
    Show(ShowArgs),
    /// List a job's items with attempts, owner, last error and stats.
    Items(ItemsArgs),
    /// Clear a job's checkpoint so it starts from scratch.
    Reset(ResetArgs),
    /// Delete completed jobs (and their items) finished before a cutoff.
    Prune(PruneArgs),
    /// Maintain checkpoint histories.
    #[command(subcommand)]
    History(HistoryCommand),
    /// Check every job for problems; exit 1 when there are findings.
    Doctor(DoctorArgs),
    /// Print a shell completion script.
    Completions(CompletionsArgs),
    /// Print the man page (roff).
    Man,
    /// Serve a dashboard, a JSON API and Prometheus metrics over HTTP.
    Serve(ServeArgs),
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on. Loopback by default: the API is plain HTTP,
    /// and GET requests need no token.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9464")]
    pub listen: String,
    /// Bearer token that mutating requests (retry) must carry; without one
    /// they are refused. Prefer CKPT_TOKEN: arguments show in `ps`.
    #[arg(long, env = "CKPT_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Another name (NAME or NAME:PORT) to answer besides the addresses it
    /// listens on, e.g. a reverse proxy's; repeatable. Requests for any
    /// other Host get 421 (against DNS rebinding); '*' allows every Host.
    #[arg(long, value_name = "NAME")]
    pub allowed_host: Vec<String>,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The job's name; items and progress are kept under it.
    #[arg(long)]
    pub job: String,
    /// File with one item per line ("-" or absent: standard input).
    #[arg(long)]
    pub items: Option<PathBuf>,
    /// Split each line into the columns {1}, {2}, … at matches of this
    /// regular expression, as GNU parallel does (e.g. '\t', ',', ' +');
    /// the whole line stays the item.
    #[arg(long, value_name = "REGEX")]
    pub colsep: Option<String>,
    /// Print the command line of each item a run would run now (not
    /// completed, not dead), in input order; change nothing in the store.
    #[arg(long, alias = "dryrun", conflicts_with_all = ["json", "metrics_listen"])]
    pub dry_run: bool,
    /// Items to run at once.
    #[arg(short = 'j', long = "jobs", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub jobs: u32,
    /// Up to N items per command (`{}` and the other replacement strings
    /// expand to N arguments, a word holding one repeated per item; the
    /// items appended if none is used); exit 0 completes them all in one
    /// commit, a failed command's items are run again one by one.
    #[arg(short = 'n', long = "max-args", value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub max_args: u32,
    /// Retries of a failed item before it is dead (0: dead after one failure).
    #[arg(long, default_value_t = 2)]
    pub retries: u32,
    /// Delay before the first retry; doubles for each later one (max 30s).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub backoff: Duration,
    /// Lease of a claimed item; renewed while it runs. A crashed run's items
    /// are taken over when it expires (at once on the same host).
    #[arg(long, default_value = "30s", value_parser = parse_lease)]
    pub lease: Duration,
    /// Print the run's summary as JSON: one line, the last on stdout (the
    /// commands' output shares stdout: `| tail -n 1` takes the summary).
    #[arg(long)]
    pub json: bool,
    /// After SIGTERM, SIGINT or SIGHUP, how long running commands may take to
    /// finish before they are killed; their items then go back to pending.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub grace: Duration,
    /// Print no progress and no summary (errors and warnings still go to
    /// stderr).
    #[arg(short, long)]
    pub quiet: bool,
    /// How often a progress line is printed when stderr is not a terminal.
    #[arg(long, default_value = "10s", value_parser = parse_duration, hide = true)]
    pub progress_interval: Duration,
    /// Serve this run's Prometheus metrics (item attempts and durations,
    /// checkpoint writes) at http://ADDR/metrics while it runs.
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<String>,
    /// Stop a command that runs longer (SIGTERM to its process group,
    /// SIGKILL 2s later); the attempt fails with `timed out after
    /// DURATION` and is retried like any failure.
    #[arg(long, value_name = "DURATION", value_parser = parse_timeout)]
    pub timeout: Option<Duration>,
    /// Exit codes (comma-separated) that are final: an attempt ending with
    /// one makes its item dead at once, whatever retries are left.
    #[arg(long, value_name = "CODES", value_delimiter = ',', value_parser = parse_final_exit)]
    pub no_retry_exit: Vec<i32>,
    /// Give up early, as GNU parallel does: `soon,fail=N` starts nothing
    /// new after N dead items and lets running commands finish; `now,…`
    /// also stops them; `fail=P%` counts a percentage of the items to do;
    /// `success=` and `done=` count completed (or all finished) items.
    /// Unstarted items stay pending: run again to continue. Exit status 1
    /// (0 after `success=`).
    #[arg(long, value_name = "WHEN,WHY=N", allow_hyphen_values = true, value_parser = crate::halt::HaltArg::parse)]
    pub halt: Option<crate::halt::HaltArg>,
    /// Write each line of the commands' output whole, as it comes, so
    /// lines of different items never mix (the default).
    #[arg(long, conflicts_with_all = ["group", "ungroup"])]
    pub line_buffer: bool,
    /// Hold each item's output until its command ends, then write its
    /// stdout and its stderr each in one piece (GNU parallel's default).
    #[arg(long, conflicts_with = "ungroup")]
    pub group: bool,
    /// Pass the commands' output straight through, as it comes: fastest,
    /// but lines of different items may mix mid-line.
    #[arg(short = 'u', long)]
    pub ungroup: bool,
    /// Put the item and a TAB before each line of output.
    #[arg(long, conflicts_with = "ungroup")]
    pub tag: bool,
    /// Also keep each item's full stdout and stderr (its last attempt's)
    /// in DIR/<item>/stdout and DIR/<item>/stderr; in <item>, bytes other
    /// than letters, digits and -_.,+=@ are written %XX.
    #[arg(long, value_name = "DIR")]
    pub results: Option<PathBuf>,
    /// Keep the last SIZE of a failed attempt's stderr with the item (its
    /// `last_output`, shown by items, show and status beside the error);
    /// 0 keeps none. At most 64KiB. With --ungroup, stderr then goes
    /// through a pipe (still straight through, as it comes).
    #[arg(long, value_name = "SIZE", default_value = "4KiB", value_parser = parse_tail)]
    pub stderr_tail: u64,
    /// The command. GNU parallel's replacement strings are replaced in
    /// its arguments: {} the item, {.} without extension, {/} basename,
    /// {//} dirname, {/.} basename without extension, {#} line number,
    /// {%} worker slot, {1} {2} … columns (--colsep), {1.} etc.; a `q`
    /// before the `}` ({q}, {.q}, {2q}) quotes for a shell. With none, the
    /// item (with --colsep, its columns) is appended. Never put {} inside
    /// `sh -c '…'`: pass it as an argument (`sh -c 'do "$1"' _ {}`) or use
    /// {q}.
    #[arg(last = true, required = true, num_args = 1..)]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct RetryArgs {
    /// The job.
    pub job: String,
    /// Re-drive dead items (the default).
    #[arg(long, conflicts_with = "failed")]
    pub dead: bool,
    /// Re-drive failed items now instead of at their retry time.
    #[arg(long)]
    pub failed: bool,
    /// Only these items (by key); all of them when none is given.
    pub keys: Vec<String>,
    /// Re-drive the completed items that another command than the job's
    /// latest (or an unknown one) completed, so the next run redoes them.
    #[arg(long, conflicts_with_all = ["dead", "failed", "keys", "completed_by"])]
    pub completed_by_other_command: bool,
    /// Re-drive the completed items of command ID (from `ckpt show`), or
    /// of no known command (`unknown`).
    #[arg(long, value_name = "ID", conflicts_with_all = ["dead", "failed", "keys"])]
    pub completed_by: Option<String>,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The job.
    pub job: String,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum CheckpointCommand {
    /// Print the job's cursor as JSON (exit 3 when there is none).
    Get {
        /// The job.
        job: String,
        /// Print the whole checkpoint (cursor, items, stage, state) as JSON.
        #[arg(long)]
        full: bool,
    },
    /// Save a checkpoint.
    Set {
        /// The job.
        job: String,
        /// The cursor, as JSON (a number, a string in quotes, an object...).
        /// A negative number is a cursor, not an option.
        #[arg(allow_negative_numbers = true)]
        cursor: String,
        /// Items processed so far.
        #[arg(long, default_value_t = 0)]
        items_processed: u64,
        /// The pipeline stage.
        #[arg(long)]
        stage: Option<String>,
        /// Accumulated state, as JSON (at most 1 MiB); `@FILE` reads it from
        /// a file and `-` from standard input (one argument holds at most
        /// 128 KiB on Linux).
        #[arg(long)]
        state: Option<String>,
        /// Compare-and-set: write only if the stored cursor equals this JSON
        /// (key order and spacing do not matter; `1` and `1.0` differ), or
        /// `none` for "no checkpoint yet". Otherwise nothing is written and
        /// the exit code is 5, naming the stored cursor.
        #[arg(long, value_name = "OLD_CURSOR", allow_negative_numbers = true)]
        expect: Option<String>,
    },
    /// Delete the checkpoint and its history, so the job starts from scratch.
    Clear {
        /// The job.
        job: String,
    },
    /// Mark the job completed, its checkpoint kept: the script is done, so
    /// `doctor` stops reporting it as stale and `prune` may delete it. Exit
    /// 5 while a live worker holds the job, 2 while it has items not
    /// completed (a job of items completes with its last item).
    Complete {
        /// The job.
        job: String,
    },
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Items to enqueue, claim and complete [default: 20000]; with
    /// --checkpoint-loop, items per loop [default: 5000000].
    #[arg(long)]
    pub items: Option<u64>,
    /// Worker threads claiming and completing.
    #[arg(long, default_value_t = 4)]
    pub workers: usize,
    /// Durable checkpoint saves to time.
    #[arg(long, default_value_t = 2_000)]
    pub saves: u64,
    /// Items a worker claims and completes at once.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub batch: u64,
    /// Measure instead what `checkpoint()` and `is_due()` cost a tight loop
    /// when no save is due, against the same loop without ckpt.
    #[arg(long)]
    pub checkpoint_loop: bool,
    /// With --checkpoint-loop: CPU work per item, in nanoseconds.
    #[arg(
        long,
        value_name = "NS",
        default_value_t = 270,
        requires = "checkpoint_loop"
    )]
    pub work_ns: u64,
    /// With --checkpoint-loop: rounds, each running every variant once.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=1000), requires = "checkpoint_loop")]
    pub rounds: u32,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    // Far beyond any use, and far below where deadlines (now + it) overflow.
    const CENTURY: Duration = Duration::from_secs(3_155_760_000);
    match humantime::parse_duration(s) {
        Ok(d) if d > CENTURY => Err(format!("{s} is too long: at most 100 years")),
        Ok(d) => Ok(d),
        Err(e) => Err(format!("{e} (examples: 500ms, 30s, 5m)")),
    }
}

/// A lease is renewed every third of it and must outlast a busy store
/// (writers wait up to 5 s for each other): below a second, live workers
/// would lose their items to each other.
fn parse_lease(s: &str) -> Result<Duration, String> {
    let lease = parse_duration(s)?;
    if lease < Duration::from_secs(1) {
        return Err(format!(
            "{s} is too short: a lease must be at least 1s (default 30s)"
        ));
    }
    Ok(lease)
}

fn parse_timeout(s: &str) -> Result<Duration, String> {
    match parse_duration(s)? {
        d if d.is_zero() => Err("a timeout must be above 0 (e.g. 30s, 5m)".into()),
        d => Ok(d),
    }
}

/// An exit code of `--no-retry-exit`: 1 to 255, since exit 0 completes
/// the item and no process exits with more (a death by a signal has no
/// exit code).
fn parse_final_exit(s: &str) -> Result<i32, String> {
    match s.parse::<i32>() {
        Ok(code) if (1..=255).contains(&code) => Ok(code),
        Ok(0) => {
            Err("exit 0 completes an item; --no-retry-exit takes failing codes, 1 to 255".into())
        }
        _ => Err(format!("{s:?} is not an exit code of a failure (1 to 255)")),
    }
}

/// Sets up `tracing` on stderr: `RUST_LOG` if set, else info for ckpt.
pub fn init_logging(cli: &Cli) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("ckpt=info,ckpt_cli=info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(crate::progress::LogWriter)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match cli.log_format {
        LogFormat::Human => builder.without_time().compact().init(),
        LogFormat::Json => builder.json().init(),
    }
}
