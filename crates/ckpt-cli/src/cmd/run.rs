//! `ckpt run`: run a command once per item with durable resume.
//!
//! SIGTERM, SIGINT and SIGHUP stop a run gracefully (see [`children`]):
//! nothing new starts, the items claimed ahead are given back, the running
//! commands get `--grace` to finish, every outcome is committed, and ckpt
//! exits 143 (SIGTERM), 130 (SIGINT) or 129 (SIGHUP) holding nothing in the
//! store. SIGHUP, a terminal that went away (a dropped ssh session), is
//! left alone when ignored at start (`nohup ckpt run …` runs on).

mod batch;
mod capture;
mod children;
mod dry;
mod lines;
mod results;
pub mod sentinel;
mod slots;
mod summary;
mod template;
mod timeout;
mod which;

use summary::{left_to_do, left_unfinished};
pub(crate) use template::shell_word;

use std::io::IsTerminal;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, ExitStatus, Stdio};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use ckpt::shutdown::{signal_name, Signals, StopSignal};
use ckpt::store::OpenMode;
use ckpt::{
    ClaimedItem, EarlyOutcomes, Fence, Handler, Outcome, QueueOptions, RetryPolicy, RunOptions,
    Runner,
};

use regex::Regex;

use self::capture::Output;
use self::children::Children;
use self::lines::LineIndex;
use self::sentinel::Sentinel;
use self::slots::Slots;
use self::template::Template;
use self::timeout::Timeouts;
use super::items::ItemsFile;
use crate::cli::RunArgs;
use crate::exit::{Usage, FAILED};
use crate::halt::{HaltPolicy, Tally, When};
use crate::output::{short_duration, RunDoc};
use crate::progress::{self, Progress};

pub fn run(url: &str, args: RunArgs) -> Result<ExitCode> {
    super::job_name(&args.job)?;
    let colsep = args.colsep.as_deref().map(colsep).transpose()?;
    if args.results.is_some() && args.max_args > 1 {
        // One command's output cannot be told apart per item.
        return Err(
            Usage("--results keeps each item's output: it cannot be used with -n".into()).into(),
        );
    }
    // Refused in a dry run too, which shows only a run that can happen.
    let program = resolve_program(&args.command[0])?;
    if args.dry_run {
        return dry::run(url, &args, colsep.as_ref());
    }
    capture::remember_terminals();
    let mut command = args.command.clone();
    if let Some(program) = program {
        // Spawning by absolute path spares every item a walk of PATH.
        command[0] = program.to_string_lossy().into_owned();
    }
    let template = Template::parse(&command);
    // Every line is checked before the store is touched, so a bad items
    // file leaves the store as it was (and creates none).
    let items = ItemsFile::open(args.items.as_deref())?;
    let (lines, item_count) = if template.uses_line() {
        let index = LineIndex::build(&items)?;
        let count = index.items();
        (Some(index), count)
    } else {
        (None, items.check()?)
    };
    // Before the store is touched: a --results that cannot hold the files
    // leaves the store as it was (and creates none).
    if let Some(dir) = &args.results {
        results::check_dir(dir)?;
    }
    open_files_for(args.jobs, args.results.is_some())?;
    if let Some(addr) = &args.metrics_listen {
        let bound = crate::exporter::spawn_metrics_listener(addr)?;
        tracing::info!("serving this run's metrics on http://{bound}/metrics");
    }
    let started = Instant::now();
    let ckpt = open_waiting_for_room(url)?;
    // Stops this run's commands if ckpt dies; the worker id names it, so a
    // rerun on this host waits for it before taking the items over.
    let sentinel = match Sentinel::spawn() {
        Ok(sentinel) => Some(sentinel),
        Err(e) => {
            tracing::warn!(event = "no_sentinel", error = %format!("{e:#}"), "if ckpt dies, its commands live on");
            None
        }
    };
    let ckpt = match &sentinel {
        Some(sentinel) => {
            let id = sentinel.name_in(ckpt.worker().clone());
            ckpt.with_worker(id)
        }
        None => ckpt,
    };
    let halt = args.halt.and_then(|h| h.0);
    let retry = RetryPolicy {
        base_delay: args.backoff,
        // A long --backoff is taken as asked, not capped at 30 s.
        max_delay: args.backoff.max(RetryPolicy::interactive(0).max_delay),
        ..RetryPolicy::interactive(args.retries)
    };
    let max_attempts = retry.max_attempts;
    let queue = ckpt.queue_with(
        &args.job,
        QueueOptions {
            lease: args.lease,
            retry,
        },
    )?;
    let mode = if args.quiet {
        progress::Mode::Quiet
    } else if std::io::stderr().is_terminal() {
        progress::Mode::Bar
    } else {
        progress::Mode::Lines(args.progress_interval)
    };
    let enqueued = {
        let added = Arc::new(AtomicU64::new(0));
        let display = Progress::adding(mode, &args.job, item_count, Arc::clone(&added));
        let enqueued = items.enqueue(&queue, &added);
        display.finish();
        enqueued?
    };
    // After the enqueue, which reopens the job: a job pruned (or expired)
    // between the two is recreated by the enqueue, and the command must be
    // recorded in the job this run completes items of, not the old one.
    let queue = which::record(queue, &args.job, &args.command)?;
    let options = RunOptions {
        workers: args.jobs as usize,
        // Claiming ahead lets completions pile up and share one durable
        // commit; the runner holds this many only while items are quick,
        // so that other `ckpt run` processes on the job get their share.
        prefetch: (args.jobs as usize * 2).max(8) * args.max_args as usize,
        batch: args.max_args as usize,
        ..RunOptions::default()
    };
    let worker = queue.owner().to_string();
    // From here on SIGTERM, SIGINT and SIGHUP stop the run instead of killing ckpt
    // (before, nothing is held: the enqueue is idempotent).
    let signals = Signals::install().context("cannot install the signal handlers")?;
    signals.exit_on_repeat(false);
    let children = Children::new(&worker, sentinel);
    {
        let (children, grace) = (Arc::clone(&children), args.grace);
        std::thread::Builder::new()
            .name("ckpt-shutdown".into())
            .spawn(move || children::supervise(children, signals, grace))
            .context("cannot start the shutdown thread")?;
    }
    let timeouts = args
        .timeout
        .map(|limit| Timeouts::start(limit, Arc::clone(&children)))
        .transpose()?;
    let runner = Runner::new(&queue, options).with_stop(signals.stop_signal());
    let at_start = match (mode, halt) {
        (progress::Mode::Quiet, None) => Default::default(),
        _ => queue.counts()?,
    };
    let halting = halt.map(|policy| Halting {
        policy,
        // A percentage is of what this run sets out to do: a run that
        // resumes a job counts against what is left of it.
        todo: at_start.unfinished(),
        max_attempts,
        tally: Mutex::default(),
        halted: OnceLock::new(),
    });
    let start = progress::Start {
        job: args.job.clone(),
        // Where the job stands: earlier runs' work counts as progress.
        counts: at_start,
        stop: signals.stop_signal(),
    };
    let display = Progress::start(mode, start, runner.progress());
    let slots = Slots::new(args.jobs as usize);
    let output = Output {
        mode: if args.group {
            capture::Mode::Group
        } else if args.ungroup {
            capture::Mode::Ungroup
        } else {
            capture::Mode::Line
        },
        tag: args.tag,
        results: args.results.clone(),
        stderr_tail: args.stderr_tail as usize,
    };
    let handler = CommandHandler {
        output: &output,
        template: &template,
        colsep: colsep.as_ref(),
        lines: lines.as_ref(),
        slots: &slots,
        job: &args.job,
        worker: &worker,
        children: &children,
        signals: &signals,
        timeouts: timeouts.as_deref(),
        no_retry_exit: &args.no_retry_exit,
        halting: halting.as_ref(),
        stop: signals.stop_signal(),
        fault: OnceLock::new(),
    };
    let report = runner.run(&handler);
    display.finish();
    let report = report?;
    if let Some(why) = handler.fault.get() {
        return Err(anyhow::anyhow!(
            "{why}; the run stopped: {} completed now, {} given back unfinished (no attempt counted), {} failed attempts; run the same command again once it is fixed",
            report.completed,
            report.released,
            report.failed
        ));
    }
    let counts = report.counts;
    let seconds = started.elapsed().as_secs_f64();
    let stopped_by = report.stopped.then(|| signals.signal()).flatten();
    // A halt on the job's last item stopped nothing: the run ended as it
    // would have anyway, and says so (`--halt soon,done=100%`).
    let halt_stopped_nothing = stopped_by.is_none()
        && halting.as_ref().is_some_and(|h| h.halted.get().is_some())
        && counts.unfinished() == 0;
    let stopped = report.stopped && !halt_stopped_nothing;
    // A signal that came too wins: it is what stopped the commands.
    let halted = match (&halting, stopped_by) {
        _ if halt_stopped_nothing => None,
        (Some(h), None) => h.halted.get().map(|&tally| {
            let why = format!("{} (--halt {})", h.policy.describe(tally), h.policy);
            (why, h.policy.halt_is_success())
        }),
        _ => None,
    };
    let mut summary_lost = false;
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
            released_now: report.released,
            stopped_by: stopped_by.map(signal_name),
            halted: halted.as_ref().map(|(why, _)| why.clone()),
            items: counts.into(),
            elapsed_seconds: seconds,
        };
        // A reader that went away (`| head`) has seen enough, and a
        // terminal that hung up has no one to show it to. Otherwise (a
        // full disk) a run that ended well exits 4, as any command whose
        // output is lost does; one that did not keeps its own exit code.
        // On a line of its own, after a command's output without a
        // final newline. Output `--ungroup` hands straight to stdout is not
        // seen: with it, a line always starts (an empty one, if the
        // output ended a line).
        let newline = if capture::stdout_mid_line() || args.ungroup {
            "\n"
        } else {
            ""
        };
        if let Err(e) = outln!("{newline}{}", serde_json::to_string(&doc)?) {
            if !crate::output::is_broken_pipe(&e) && !capture::stdout_is_terminal() {
                errln!("ckpt: error: {e:#}");
                summary_lost = true;
            }
        }
    }
    let took = short_duration(started.elapsed());
    if let Some((why, success)) = halted {
        errln!(
            "ckpt: job '{}' halted: {why}; {} completed now, {} given back unfinished, {} failed attempts ({took}); {}",
            crate::output::shown(&args.job),
            report.completed,
            report.released,
            report.failed,
            left_to_do(counts.unfinished(), counts.dead, &args.job, "continue"),
        );
        return Ok(if success && summary_lost {
            ExitCode::from(crate::exit::STORE)
        } else if success {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(FAILED)
        });
    }
    if stopped {
        let by = stopped_by.map_or_else(|| "a stop request".to_string(), signal_name);
        errln!(
            "ckpt: job '{}' stopped by {by}: {} completed now, {} given back unfinished, {} failed attempts; {} of {} completed in all ({took}); {}",
            crate::output::shown(&args.job),
            report.completed,
            report.released,
            report.failed,
            counts.completed,
            counts.total(),
            // Another run may have finished what this one gave back.
            left_to_do(counts.unfinished(), counts.dead, &args.job, "resume")
        );
        // 128 + the signal, as a shell reports a process it ended.
        let code = stopped_by.map_or(FAILED, |sig| (128 + sig) as u8);
        return Ok(ExitCode::from(code));
    }
    if counts.dead > 0 {
        errln!(
            "ckpt: job '{}' failed: {} dead item(s), {} of {} completed ({took}); see `ckpt status {}`",
            crate::output::shown(&args.job),
            counts.dead,
            counts.completed,
            counts.total(),
            shell_word(&args.job)
        );
        return Ok(ExitCode::from(FAILED));
    }
    if let Some(why) = left_unfinished(&counts) {
        errln!(
            "ckpt: job '{}' not completed: {} of {} completed ({took}); {why}",
            crate::output::shown(&args.job),
            counts.completed,
            counts.total(),
        );
        return Ok(ExitCode::from(FAILED));
    }
    if !args.quiet {
        errln!(
            "ckpt: job '{}' completed: {} items, {} run now, {} failed attempts ({took})",
            crate::output::shown(&args.job),
            counts.completed,
            report.completed,
            report.failed
        );
    }
    if summary_lost {
        return Ok(ExitCode::from(crate::exit::STORE));
    }
    Ok(ExitCode::SUCCESS)
}

/// Open files a run needs besides its commands' (the store, its sockets,
/// the sentinel, the metrics listener).
const OPEN_FILES_BASE: u64 = 64;

/// Checks that `-j` commands fit in the limit on open files, raising the
/// soft limit as far as they need (never past the hard limit; only then,
/// so the commands, which inherit it, keep the usual one otherwise). A
/// command holds five descriptors while it starts (`/dev/null` and two
/// pipes), and all `-j` may start at once; once started, it holds two pipe
/// ends, a pidfd and, with `--group`, up to two spill files; `--results`
/// adds two files. A run that would run out is refused before the store
/// is touched, rather than charging items for ckpt's own failure to start
/// their commands.
fn open_files_for(jobs: u32, results: bool) -> Result<()> {
    let per_command = if results { 7 } else { 5 };
    let needed = OPEN_FILES_BASE + u64::from(jobs) * per_command;
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write the struct given.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return Ok(()); // Unknown: let the spawns say.
        }
        if limit.rlim_cur < needed && limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: needed.min(limit.rlim_max),
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
    }
    if limit.rlim_cur != libc::RLIM_INFINITY && limit.rlim_cur < needed {
        return Err(Usage(format!(
            "-j {jobs} needs about {needed} open files, and this process may open {} (ulimit -n): lower -j or raise the limit",
            limit.rlim_cur
        ))
        .into());
    }
    Ok(())
}

/// `--colsep`: a regular expression, as GNU parallel's; one that matches
/// the empty string would split between every character.
fn colsep(pattern: &str) -> Result<Regex> {
    let re = Regex::new(pattern).map_err(|e| {
        // The parser's message draws a caret under the pattern; its last
        // line says what is wrong.
        let e = e.to_string();
        let why = e.lines().last().unwrap_or_default().trim();
        Usage(format!(
            "--colsep {pattern:?} is not a regular expression: {why}"
        ))
    })?;
    if re.is_match("") {
        return Err(Usage(format!("--colsep {pattern:?} matches the empty string")).into());
    }
    Ok(re)
}

/// Opens the store, waiting while the server has no connection to spare
/// (PostgreSQL's `too many clients`, SQLSTATE 53300): other runs sharing
/// the server free theirs as they end, so for a run that is an outage like
/// any other, ridden out with backoff for as long as the runner rides out
/// one (`max_outage`). Any other failure, a server that is down included,
/// ends the run at once, as it ends every other command.
fn open_waiting_for_room(url: &str) -> Result<ckpt::Ckpt> {
    let patience = RunOptions::default().max_outage;
    let started = Instant::now();
    let mut backoff = Duration::from_millis(100);
    let mut warned = false;
    loop {
        match ckpt::store::open(url, OpenMode::CreateIfMissing) {
            Ok(store) => return Ok(ckpt::Ckpt::new(store)),
            Err(e) if e.is_server_full() && started.elapsed() < patience => {
                if !warned {
                    tracing::warn!("store unavailable, waiting for a free connection: {e}");
                    warned = true;
                }
                // Spread, so that runs refused together do not all come
                // back at the same moment.
                let spread = 0.5 + f64::from(std::process::id() % 1000) / 1000.0;
                std::thread::sleep(backoff.mul_f64(spread));
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Finds a bare program name on `PATH` before anything is enqueued, so a
/// typo is one usage error rather than every item dead. `None` for a path
/// or a name that holds a replacement string.
fn resolve_program(program: &str) -> Result<Option<PathBuf>> {
    if program.contains('/') || Template::has_replacement(program) {
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

/// Runs the command for each item.
struct CommandHandler<'a> {
    output: &'a Output,
    template: &'a Template,
    colsep: Option<&'a Regex>,
    /// For `{#}`, when it is used.
    lines: Option<&'a LineIndex>,
    slots: &'a Slots,
    job: &'a str,
    worker: &'a str,
    children: &'a Arc<Children>,
    signals: &'a Signals,
    timeouts: Option<&'a Timeouts>,
    no_retry_exit: &'a [i32],
    halting: Option<&'a Halting>,
    /// The runner's: stopping it starts nothing new.
    stop: StopSignal,
    /// Why the run stopped for a fault of its own, not of an item (the
    /// first such).
    fault: OnceLock<String>,
}

impl Handler for CommandHandler<'_> {
    fn handle(&self, item: &ClaimedItem) -> Outcome {
        self.handle_fenced(item, &Fence::new(children::KILL_AFTER))
    }

    fn handle_fenced(&self, item: &ClaimedItem, fence: &Fence) -> Outcome {
        let outcome = run_item(self, std::slice::from_ref(item), fence);
        self.observe(&outcome, item.attempt);
        outcome
    }

    fn handle_batch(
        &self,
        items: &[ClaimedItem],
        fences: &[Fence],
        early: &EarlyOutcomes<'_>,
    ) -> Vec<Outcome> {
        batch::run(self, items, fences, early)
    }

    fn batch_fits(&self, items: &[ClaimedItem]) -> usize {
        batch::fitting(self, items)
    }
}

impl CommandHandler<'_> {
    /// Stops the run for a fault that is not the item's (`--results`
    /// cannot hold its files): the item is given back uncharged, nothing
    /// new starts, and the run ends with `why` as its error.
    fn fault(&self, why: String) -> Outcome {
        tracing::error!(event = "run_fault", "{why}; stopping the run");
        let _ = self.fault.set(why.clone());
        self.stop.stop();
        Outcome::Interrupted(format!("not run: {why}"))
    }

    /// Counts a final outcome for `--halt`, and halts when it says so.
    fn observe(&self, outcome: &Outcome, attempt: u32) {
        let Some(h) = self.halting else {
            return;
        };
        if let Some(when) = h.observe(outcome, attempt) {
            let tally = h.halted.get().copied().unwrap_or_default();
            tracing::warn!(
                event = "halt",
                "halting: {} (--halt {}); {}",
                h.policy.describe(tally),
                h.policy,
                match when {
                    When::Soon => "starting no new item, the running commands may finish",
                    When::Now => "stopping the running commands",
                }
            );
            // Before this outcome goes back, so this worker starts nothing
            // more; the runner gives back what it claimed ahead.
            self.stop.stop();
            if when == When::Now {
                self.children.halt_now(*self.signals);
            }
        }
    }
}

/// `--halt`: what this run's items came to, and whether it halted.
struct Halting {
    policy: HaltPolicy,
    /// The items this run set out to do (the job's unfinished ones).
    todo: u64,
    max_attempts: u32,
    tally: Mutex<Tally>,
    /// The tally that made the run halt.
    halted: OnceLock<Tally>,
}

impl Halting {
    /// Counts `outcome` of attempt `attempt` if it is final (completed, or
    /// failed for good); says how to halt when it is the one that makes
    /// the run halt.
    fn observe(&self, outcome: &Outcome, attempt: u32) -> Option<When> {
        let mut tally = self.tally.lock().unwrap_or_else(|e| e.into_inner());
        match outcome.base() {
            Outcome::Completed(_) => tally.succeeded += 1,
            Outcome::Fatal(_) => tally.failed += 1,
            Outcome::Failed(_) if attempt >= self.max_attempts => tally.failed += 1,
            _ => return None,
        }
        let when = self.policy.check(*tally, self.todo)?;
        self.halted.set(*tally).ok().map(|()| when)
    }
}

/// Runs the command for one item, or for a batch of items at once (`-n`).
///
/// The child leads a process group of its own, which the [`Sentinel`]
/// kills if this process dies, and is marked with `CKPT_WORKER` (the next
/// run on this host also kills marked processes of a dead run before it
/// takes their items over). `process_group(0)` keeps std's `posix_spawn`
/// path; `pre_exec` (or `PR_SET_PDEATHSIG`, which would also kill only the
/// direct child) would force a full `fork`, about a third more per item.
///
/// When the item's lease can no longer be proven ours, `fence` trips: the
/// command's group gets SIGTERM, and SIGKILL after the fence's grace, so it
/// is gone before another worker may take the item over; the attempt fails
/// (it ran), and is refused if the item was taken meanwhile.
fn run_item(h: &CommandHandler<'_>, items: &[ClaimedItem], fence: &Fence) -> Outcome {
    let (job, worker, children) = (h.job, h.worker, h.children);
    // Held until the command and what it left behind are gone.
    let slot = h.slots.take();
    let argv = match batch::argv(h, items, slot.number()) {
        Ok(argv) => argv,
        Err(e) => return Outcome::Failed(format!("{e:#}")),
    };
    let program = &argv[0];
    let mut cmd = Command::new(program);
    cmd.args(&argv[1..]);
    let mark = children.next_mark();
    cmd.env("CKPT_JOB", job)
        .env("CKPT_ITEM", batch::keys(items))
        .env("CKPT_ATTEMPT", items[0].attempt.to_string())
        .env(ckpt::worker::WORKER_ENV, worker)
        .env(ckpt::worker::COMMAND_ENV, mark.to_string())
        .stdin(Stdio::null())
        .process_group(0);
    h.output.prepare(&mut cmd);
    // A batch's lines are tagged with all its items (`--tag`); `--results`
    // refuses batches.
    let tag = items
        .iter()
        .map(|i| i.key.as_str())
        .collect::<Vec<_>>()
        .join(" ");
    // Not the item's fault (a full disk, a directory made read-only): no
    // attempt is charged, and the run stops.
    let files = match h.output.files(&tag) {
        Ok(files) => files,
        Err(e) => {
            return h.fault(format!(
                "--results: cannot create the files of item {}: {e}",
                crate::output::shown(&tag)
            ))
        }
    };
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        // Out of file descriptors, processes or memory: the machine's
        // fault, not the item's.
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EMFILE | libc::ENFILE | libc::EAGAIN | libc::ENOMEM)
            ) =>
        {
            return h.fault(format!("cannot start a command: {e}"))
        }
        Err(e) => return Outcome::Failed(format!("cannot run {program}: {e}")),
    };
    children.started(&child, mark);
    if let Some(timeouts) = h.timeouts {
        timeouts.arm(child.id());
    }
    {
        let (children, pid, grace) = (Arc::clone(children), child.id(), fence.kill_grace());
        fence.on_lost(move |_| children.stop_one(pid, grace));
    }
    {
        let (children, pid) = (Arc::clone(children), child.id());
        fence.on_deadline(move |term, kill| children.deadline(pid, term, kill));
    }
    let pid = child.id();
    // Reads the command's output until it ends (see `capture`). The exit
    // is handled before the command is reaped, while its pid cannot be
    // another process's: after `exited`, no timeout, fence or shutdown
    // signals that pid.
    let (status, (timed_out, stopped), captured) = h.output.wait(&mut child, &tag, files, || {
        // Seen ending only after its deadline as the sentinel keeps it
        // (ckpt was stopped or hung, the machine slept): the sentinel may
        // have stopped it meanwhile, without ckpt hearing of it. Tripping
        // the fence marks the command stopped.
        if let Some(late) = children.overdue(pid) {
            if fence.trip_overdue(late) {
                // Counted and logged as every self-fence is (RELIABILITY.md).
                metrics::counter!("ckpt_lease_lost_total", "job" => job.to_string(), "reason" => "unconfirmed")
                    .increment(1);
                tracing::warn!(
                    event = "lease_lost",
                    job,
                    key = tag.as_str(),
                    reason = "unconfirmed",
                    "its command was seen ending {} past its deadline: not taken as done",
                    humantime::format_duration(Duration::from_millis(late.as_millis() as u64))
                );
            }
        }
        let timed_out = h.timeouts.is_some_and(|t| t.disarm(pid));
        // Whatever the command left running in its process group (`work &`)
        // is this item's work: it must not run on beside a retry or another
        // worker's copy, nor escape the fence and the sentinel. Its end
        // closes the pipes.
        children.kill_leftovers(pid);
        // A fence tripped by now counts as a stop even if its hook has not
        // signalled the command yet: the watchdog trips the fence first and
        // runs the hooks after, on its own thread, so the command may have
        // been stopped from outside (the sentinel) with its hook still on
        // the way. Its exit cannot show that the work was done.
        let stopped = children.exited(pid);
        (timed_out, stopped || fence.is_lost())
    });
    // Output the files do not hold is lost for good once the item is
    // completed: as when they cannot be created, the item goes back
    // uncharged (to run again, files and all) and the run stops.
    if let Some(e) = captured.results_error {
        children.kill_marked_command(mark);
        return h.fault(format!(
            "--results: cannot write the output of item {}: {e}",
            crate::output::shown(&tag)
        ));
    }
    // The same for its output on ckpt's stdout, which is the run's result
    // when it is redirected to a file.
    if let Some(e) = captured.output_error {
        children.kill_marked_command(mark);
        return h.fault(format!(
            "cannot write the output of item {} to stdout: {e}",
            crate::output::shown(&tag)
        ));
    }
    // A failure keeps the tail of the command's stderr beside its error.
    let outcome = ended(h, program, status, timed_out, stopped, fence).with_output(captured.tail);
    if !matches!(outcome, Outcome::Completed(_)) {
        // What it left running outside its process group (`set -m`, a
        // wrapper that calls `setpgid`) is this attempt's work too, and must
        // not run on beside the retry.
        children.kill_marked_command(mark);
    }
    outcome
}

/// How a command that ended with `status` went, its tail aside; `stopped`
/// if ckpt sent it a signal to stop it.
fn ended(
    h: &CommandHandler<'_>,
    program: &str,
    status: std::io::Result<ExitStatus>,
    timed_out: bool,
    stopped: bool,
    fence: &Fence,
) -> Outcome {
    let (children, signals) = (h.children, h.signals);
    // A command that exits 0 completed (the completion is refused if the
    // item was taken meanwhile), unless ckpt had told it to stop: then its
    // exit status cannot show that the work was done, as many programs
    // exit 0 on SIGTERM. Its item is retried or given back, never
    // completed unfinished; one that finished just as it was told to stop
    // runs again.
    let succeeded = !stopped && status.as_ref().is_ok_and(|s| s.success());
    // A command stopped by its fence ran: the attempt counts (a command
    // that starves its own renewals must still run out of attempts), and
    // the item is retried per the policy, if it is still ours.
    if let (false, Some(why)) = (succeeded, fence.reason()) {
        return Outcome::Failed(format!(
            "stopped because its lease could not be proven: {why}"
        ));
    }
    if let (false, Some(timeouts)) = (succeeded, h.timeouts.filter(|_| timed_out)) {
        return Outcome::Failed(timeouts.error());
    }
    match status {
        Ok(_) if succeeded => Outcome::Completed(None),
        Ok(status) => match children.interrupted(status, stopped, signals) {
            Some(why) => Outcome::Interrupted(format!("{}: {why}", describe(status))),
            None if status.code().is_some_and(|c| h.no_retry_exit.contains(&c)) => Outcome::Fatal(
                format!("{} (--no-retry-exit: not retried)", describe(status)),
            ),
            None => Outcome::Failed(describe(status)),
        },
        Err(e) => Outcome::Failed(format!("cannot wait for {program}: {e}")),
    }
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
