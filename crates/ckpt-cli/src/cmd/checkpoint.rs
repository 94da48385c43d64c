//! `ckpt checkpoint get|set|clear|complete`: the cursor pattern for shell scripts.

use std::process::ExitCode;

use anyhow::Result;
use ckpt::json::CheckpointJson;
use ckpt::store::OpenMode;
use ckpt::validate::parse_json;
use ckpt::{Checkpoint, Expect};

use crate::cli::CheckpointCommand;
use crate::exit::Usage;

pub fn checkpoint(url: &str, cmd: CheckpointCommand) -> Result<ExitCode> {
    match cmd {
        CheckpointCommand::Get { job, full } => {
            super::job_name(&job)?;
            let ckpt = super::open(url, OpenMode::MustExist)?;
            let record = ckpt.get_job(&job)?;
            let Some(cp) = record.and_then(|r| r.checkpoint) else {
                return Err(ckpt::Error::NotFound(format!("job '{job}' has no checkpoint")).into());
            };
            if full {
                outln!("{}", serde_json::to_string(&CheckpointJson::from(&cp))?)?;
            } else {
                outln!("{}", cp.cursor)?;
            }
        }
        CheckpointCommand::Set {
            job,
            cursor,
            items_processed,
            stage,
            state,
            expect,
        } => {
            super::job_name(&job)?;
            let expect = match expect.as_deref() {
                None => Expect::Anything,
                Some("none") => Expect::NoCheckpoint,
                Some(text) => Expect::Cursor(parse_json("--expect cursor", text)?),
            };
            let mut cp = Checkpoint::new(parse_json("cursor", &cursor)?, items_processed);
            cp.stage = stage;
            cp.state = state
                .map(|s| read_state_arg(&s).and_then(|text| Ok(parse_json("state", &text)?)))
                .transpose()?;
            // Checked before the store is opened, so that bad input never
            // creates a store.
            if let Some(state) = &cp.state {
                ckpt::validate::state_size(state, ckpt::validate::DEFAULT_STATE_LIMIT)?;
            }
            // A cursor expected where there is no store cannot match: it is
            // refused as a store without the job would refuse it, and no
            // store is created for a write that is not made.
            let mode = match expect {
                Expect::Cursor(_) => OpenMode::MustExist,
                _ => OpenMode::CreateIfMissing,
            };
            let store = match ckpt::store::open(url, mode) {
                Err(ckpt::Error::NotFound(_)) => {
                    return Err(ckpt::Error::CursorMismatch {
                        job,
                        stored: None,
                        expected: expect.cursor_text(),
                    }
                    .into())
                }
                opened => opened?,
            };
            ckpt::Ckpt::new(store).set_checkpoint_if(&job, &cp, &expect)?;
        }
        CheckpointCommand::Clear { job } => {
            super::job_name(&job)?;
            let ckpt = super::open(url, OpenMode::MustExist)?;
            ckpt.clear_checkpoint(&job)?;
        }
        CheckpointCommand::Complete { job } => {
            super::job_name(&job)?;
            let ckpt = super::open(url, OpenMode::MustExist)?;
            let Some(record) = ckpt.get_job(&job)? else {
                return Err(ckpt::Error::NotFound(format!(
                    "no job named '{job}' in {}",
                    ckpt.store().describe()
                ))
                .into());
            };
            if record.status == ckpt::JobStatus::Completed {
                return Ok(ExitCode::SUCCESS); // as asked: nothing to change
            }
            // A job of items completes when its last item does: marking it
            // completed before would hide the work still to do, or the
            // items that died. (Prune checks again, atomically, that every
            // item of a job it deletes is completed.)
            let counts = ckpt.store().item_counts(&job)?;
            let left = counts.pending + counts.running + counts.failed + counts.dead;
            if left > 0 {
                return Err(Usage(format!(
                    "job '{job}' has {left} item(s) not completed ({} dead): it completes when they do (see `ckpt status {}`)",
                    counts.dead,
                    super::run::shell_word(&job)
                ))
                .into());
            }
            // Taken as a worker would take it, so a live holder is refused
            // (busy, exit 5) and a lapsed one is fenced off.
            ckpt.job(&job)?.complete()?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Most text `--state @FILE` or `--state -` reads: 16 times the state
/// limit, room for any state within it however it is laid out, and a
/// bound on what a wrong file (or an endless pipe) costs in memory.
const MAX_STATE_INPUT: u64 = 16 * ckpt::validate::DEFAULT_STATE_LIMIT as u64;

/// The text of `--state`: inline JSON, `@FILE`, or `-` for standard input
/// (at most [`MAX_STATE_INPUT`] bytes of it).
fn read_state_arg(arg: &str) -> Result<String> {
    let (what, reader): (String, Box<dyn std::io::Read>) = match arg {
        "-" => ("standard input".into(), Box::new(std::io::stdin())),
        _ => match arg.strip_prefix('@') {
            Some(path) => match std::fs::File::open(path) {
                Ok(file) => (path.to_string(), Box::new(file)),
                Err(e) => return Err(Usage(format!("cannot read state from {path}: {e}")).into()),
            },
            None => return Ok(arg.to_string()),
        },
    };
    read_bounded(reader, MAX_STATE_INPUT).map_err(|e| match e {
        Bounded::Io(e) => Usage(format!("cannot read state from {what}: {e}")).into(),
        Bounded::TooLong => Usage(format!(
            "state from {what} is over {} MiB of text, and a state may be at most {} MiB serialised",
            MAX_STATE_INPUT >> 20,
            ckpt::validate::DEFAULT_STATE_LIMIT >> 20
        ))
        .into(),
    })
}

/// Why [`read_bounded`] failed.
enum Bounded {
    Io(std::io::Error),
    TooLong,
}

/// All of `reader` as UTF-8 text, if it holds at most `max` bytes: reading
/// stops one byte past them.
fn read_bounded(reader: impl std::io::Read, max: u64) -> std::result::Result<String, Bounded> {
    use std::io::Read;
    let mut bytes = Vec::new();
    reader
        .take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(Bounded::Io)?;
    // Before decoding: the cut may split a character.
    if bytes.len() as u64 > max {
        return Err(Bounded::TooLong);
    }
    String::from_utf8(bytes).map_err(|_| {
        Bounded::Io(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "stream did not contain valid UTF-8",
        ))
    })
}
