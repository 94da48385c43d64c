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

/// The text of `--state`: inline JSON, `@FILE`, or `-` for standard input.
fn read_state_arg(arg: &str) -> Result<String> {
    use std::io::Read;
    let from = |what: String, r: std::io::Result<String>| {
        r.map_err(|e| anyhow::Error::new(Usage(format!("cannot read state from {what}: {e}"))))
    };
    match arg {
        "-" => {
            let mut text = String::new();
            from(
                "standard input".into(),
                std::io::stdin().read_to_string(&mut text).map(|_| text),
            )
        }
        _ => match arg.strip_prefix('@') {
            Some(path) => from(path.to_string(), std::fs::read_to_string(path)),
            None => Ok(arg.to_string()),
        },
    }
}
