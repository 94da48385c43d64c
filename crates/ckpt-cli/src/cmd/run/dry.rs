//! `ckpt run --dry-run`: the command lines a run would run, changing
//! nothing.
//!
//! One line per item of this run's input that a run would run now (not
//! completed, not dead: dead items wait for `ckpt retry`), in input order,
//! then one per pending, failed or running item of the job that this
//! input does not hold (enqueued by an earlier run, or held by one that
//! died: a run runs those too, with `{#}` 0), each argument quoted for
//! a POSIX shell where it has to be, so a line pastes back into a shell
//! as the same argv. A key repeated in the input
//! runs once, at its first line. The store is opened only if it exists
//! (a missing SQLite file stays missing: nothing is completed) and only
//! read. `{%}` cannot be known before the run; it counts 1..=`-j` in turn,
//! the slots the commands would get if each took as long. Items held by a
//! live run (on this host or another, its lease not expired) are left out,
//! wherever they are in the input, as a run leaves them to it; the summary
//! counts them.
//!
//! With `-n N`, one line per batch: the command for up to N of those items
//! at once, taken in input order. (A run forms its batches from the items
//! ready at once, and runs an item tried before alone, so its batches may
//! be cut differently; the items and their order are these.)

use std::collections::{HashMap, HashSet};
use std::io::{BufWriter, Write};
use std::process::ExitCode;

use anyhow::Result;
use ckpt::store::OpenMode;
use ckpt::ItemStatus;
use regex::Regex;

use super::lines::LineIndex;
use super::template::{shell_word, Context, Template};
use crate::cli::RunArgs;
use crate::cmd::items::ItemsFile;

/// What the store holds of the job: the keys a run would not run, and
/// those it would run that may not be in this run's input.
#[derive(Default)]
struct Finished {
    completed: HashSet<String>,
    dead: HashSet<String>,
    /// Pending, failed (awaiting a retry) and running items whose run is
    /// gone, in the store's order.
    unfinished: Vec<String>,
    /// Running items held by a live run: a run started now leaves them to
    /// it.
    live: HashSet<String>,
    /// Items tried as often as the retries allow: running ones whose run is
    /// gone (their runs died while running them each time), and pending or
    /// failed ones (a run with more retries failed them). A run moves them
    /// to the dead-letter list without running them.
    exhausted: HashSet<String>,
}

pub fn run(url: &str, args: &RunArgs, colsep: Option<&Regex>) -> Result<ExitCode> {
    let template = Template::parse(&args.command);
    let items = ItemsFile::open(args.items.as_deref())?;
    // Checks every line first, as a run does, and tells duplicates apart.
    let index = LineIndex::build(&items)?;
    let finished = finished(url, &args.job, args.retries.saturating_add(1))?;
    let jobs = args.jobs as usize;
    let size = args.max_args.max(1) as usize;
    let mut out = BufWriter::new(std::io::stdout().lock());
    let (mut printed, mut completed, mut dead) = (0u64, 0u64, 0u64);
    // The items of the batch being formed, with their lines.
    let mut batch: Vec<(String, u64)> = Vec::with_capacity(size);
    // Prints the command for the front of `batch` that one command line
    // holds, and takes it out; as in a run, the rest waits at the front
    // for the next batch.
    let mut print = |batch: &mut Vec<(String, u64)>| -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let slot = (printed as usize % jobs) + 1;
        let argv_of = |part: &[(String, u64)]| {
            let cxs: Vec<Context<'_>> = part
                .iter()
                .map(|(item, line)| Context {
                    item,
                    colsep,
                    line: *line,
                    slot,
                })
                .collect();
            template.expand_many(&cxs)
        };
        let n = super::batch::longest_fitting(batch.len(), |n| {
            let part = &batch[..n];
            super::batch::fits(
                &argv_of(part),
                super::batch::joined_len(part.iter().map(|(item, _)| item.as_str())),
            )
        });
        let words: Vec<String> = argv_of(&batch[..n])
            .iter()
            .enumerate()
            .map(|(i, a)| match i {
                0 => command_word(a),
                _ => shell_word(a),
            })
            .collect();
        writeln!(out, "{}", words.join(" "))?;
        printed += 1;
        batch.drain(..n);
        Ok(())
    };
    let mut would_run = 0u64;
    let mut written = items.each(|line, key| {
        if index.line(key)? != line {
            return Ok(());
        }
        if finished.completed.contains(key) {
            completed += 1;
            return Ok(());
        }
        if finished.dead.contains(key) {
            dead += 1;
            return Ok(());
        }
        if finished.exhausted.contains(key) {
            return Ok(());
        }
        if finished.live.contains(key) {
            return Ok(());
        }
        would_run += 1;
        batch.push((key.to_string(), line));
        if batch.len() == size {
            print(&mut batch)?;
        }
        Ok(())
    });
    // The job's unfinished items from earlier inputs: a run runs them too
    // (`{#}` is 0 for them, as in a run).
    if written.is_ok() {
        for key in &finished.unfinished {
            match index.line(key) {
                Ok(0) => {}
                Ok(_) => continue,
                Err(e) => {
                    written = Err(e);
                    break;
                }
            }
            would_run += 1;
            batch.push((key.clone(), 0));
            if batch.len() == size {
                if let Err(e) = print(&mut batch) {
                    written = Err(e);
                    break;
                }
            }
        }
    }
    while written.is_ok() && !batch.is_empty() {
        written = print(&mut batch);
    }
    let written = written.and_then(|()| Ok(out.flush()?));
    if let Err(e) = written {
        // `| head` closing the pipe is a reader that has seen enough.
        if crate::output::is_broken_pipe(&e) {
            return Ok(ExitCode::SUCCESS);
        }
        return Err(e);
    }
    if !args.quiet {
        errln!(
            "ckpt: dry run of job '{}': {printed} command(s) would run{}; skipped {completed} completed and {dead} dead item(s) (`ckpt retry` re-drives dead ones){}{}; nothing was changed",
            crate::output::shown(&args.job),
            match size {
                1 => String::new(),
                _ => format!(" for {would_run} item(s), up to {size} a command"),
            },
            match finished.live.len() {
                0 => String::new(),
                n => format!(", and {n} item(s) running under another live run"),
            },
            match finished.exhausted.len() {
                0 => String::new(),
                n => format!(
                    "; {n} item(s) would move to the dead-letter list unrun: they were tried as often as --retries allows"
                ),
            }
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The program as the first word of a shell line: quoted also where a
/// shell would read it as something else, an assignment (`A=b`) or a
/// reserved word (`if`, `time`), so the line runs that program.
fn command_word(program: &str) -> String {
    const RESERVED: &[&str] = &[
        "!", "{", "}", "[[", "]]", "case", "coproc", "do", "done", "elif", "else", "esac", "fi",
        "for", "function", "if", "in", "select", "then", "time", "until", "while",
    ];
    let word = shell_word(program);
    if word == program && (program.contains('=') || RESERVED.contains(&program)) {
        super::template::shell_quote(program)
    } else {
        word
    }
}

/// The completed and dead keys of `job`, and its unfinished ones (pending,
/// failed, running); none if the store or the job does not exist. Opening with [`OpenMode::MustExist`] creates nothing.
fn finished(url: &str, job: &str, max_attempts: u32) -> Result<Finished> {
    let ckpt = match crate::cmd::open(url, OpenMode::MustExist) {
        Ok(ckpt) => ckpt,
        Err(e)
            if e.downcast_ref::<ckpt::Error>()
                .is_some_and(|e| e.is_not_found()) =>
        {
            return Ok(Finished::default())
        }
        Err(e) => return Err(e),
    };
    let store = ckpt.store();
    if store.get_job(job)?.is_none() {
        return Ok(Finished::default());
    }
    let counts = store.item_counts(job)?;
    let mut finished = Finished::default();
    // A few more than counted: items may change meanwhile.
    let limit = |n: u64| {
        usize::try_from(n)
            .unwrap_or(usize::MAX)
            .saturating_add(1024)
    };
    let keys = |status, n| -> Result<Vec<String>> {
        Ok(store
            .list_items(job, Some(status), limit(n))?
            .into_iter()
            .map(|i| i.key)
            .collect())
    };
    finished.completed = keys(ItemStatus::Completed, counts.completed)?
        .into_iter()
        .collect();
    finished.dead = keys(ItemStatus::Dead, counts.dead)?.into_iter().collect();
    // Pending or failed, tried as often as this run's --retries allows
    // already (a run with more retries failed them; one that stopped gave
    // back its retry): a run moves them to the dead-letter list unrun.
    for (status, n) in [
        (ItemStatus::Pending, counts.pending),
        (ItemStatus::Failed, counts.failed),
    ] {
        for item in store.list_items(job, Some(status), limit(n))? {
            if item.attempts >= max_attempts {
                finished.exhausted.insert(item.key);
            } else {
                finished.unfinished.push(item.key);
            }
        }
    }
    // Held by a run: one that died (its process gone from this host, or its
    // lease expired) leaves them to be taken over, so a run runs them too;
    // one that lives keeps them.
    let now = ckpt.now();
    let mut dead_owners: HashMap<String, bool> = HashMap::new();
    let mut owner_dead = |owner: &str| {
        *dead_owners.entry(owner.to_string()).or_insert_with(|| {
            // A run that died moments ago may still have its sentinel
            // stopping its commands; a run waits for that, then takes
            // its items over.
            ckpt.wait_while_stopping(owner);
            ckpt.is_dead_local_owner(owner)
        })
    };
    for item in store.list_items(job, Some(ItemStatus::Running), limit(counts.running))? {
        let gone = item.ready_at.is_some_and(|lease| lease <= now)
            || item.owner.as_deref().is_some_and(&mut owner_dead);
        // As a takeover counts it (`Claim::attempts_added`): a started
        // attempt that never came back is one more.
        let attempt = item.attempts + u32::from(item.started_at.is_some());
        if gone && attempt > max_attempts {
            finished.exhausted.insert(item.key);
        } else if gone {
            finished.unfinished.push(item.key);
        } else {
            finished.live.insert(item.key);
        }
    }
    Ok(finished)
}
