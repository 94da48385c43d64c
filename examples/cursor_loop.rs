//! The cursor pattern: a long loop that saves where it is and resumes there
//! after a crash.
//!
//! The loop "processes" records 1..=10_000 (cheap arithmetic: it adds
//! `record²` to a running sum). The checkpoint's cursor is the next record
//! to process and its state is the sum so far. A save is due every 500
//! records or every second, whichever comes first.
//!
//! ```text
//! cargo run -p ckpt --example cursor_loop -- --crash-at 7777   # dies at record 7777
//! cargo run -p ckpt --example cursor_loop                      # resumes, finishes, checks the sum
//! cargo run -p ckpt --example cursor_loop                      # already completed: nothing to do
//! cargo run -p ckpt --example cursor_loop -- --fresh           # forget the old run, start over
//! ```
//!
//! An optional first argument is the store URL (default: a SQLite file in
//! the system temp dir, so that successive runs share it).

use std::time::Duration;

use ckpt::{Checkpoint, CheckpointPolicy, Ckpt, JobOptions};
use serde::{Deserialize, Serialize};

const JOB: &str = "example/cursor-loop";
const N: u64 = 10_000;

/// What the loop accumulates: kept in the checkpoint's `state`, so that a
/// resumed run continues the sum instead of restarting it.
#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    sum: u64,
}

/// The "work" done for one record.
fn process(record: u64) -> u64 {
    record * record
}

struct Args {
    url: String,
    crash_at: Option<u64>,
    fresh: bool,
}

fn parse_args() -> Args {
    let default = std::env::temp_dir().join("ckpt-example-cursor_loop.db");
    let mut args = Args {
        url: format!("sqlite://{}", default.display()),
        crash_at: None,
        fresh: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--crash-at" => {
                let k = it.next().and_then(|k| k.parse().ok());
                args.crash_at =
                    Some(k.unwrap_or_else(|| usage("--crash-at needs a record number")));
            }
            "--fresh" => args.fresh = true,
            url if url.contains("://") => args.url = url.to_string(),
            other => usage(&format!("unknown argument {other:?}")),
        }
    }
    args
}

fn usage(why: &str) -> ! {
    eprintln!("{why}\nusage: cursor_loop [STORE_URL] [--crash-at K] [--fresh]");
    std::process::exit(2)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = parse_args();
    println!("store: {}", args.url);
    let ckpt = Ckpt::open(&args.url)?;

    if args.fresh {
        // Refused (Busy) while a live worker holds the job; a dead holder is
        // fenced out. NotFound just means there is nothing to forget.
        match ckpt.clear_checkpoint(JOB) {
            Ok(()) => println!("--fresh: cleared the previous checkpoint"),
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e.into()),
        }
    }

    // Show what acquiring is about to do: a lease still held by a process of
    // this host that is gone (our earlier crash) is taken over at once.
    if let Some(owner) = ckpt.get_job(JOB)?.and_then(|r| r.owner) {
        if ckpt.is_dead_local_owner(&owner) {
            println!(
                "lease still held by crashed worker {owner}: its process is gone, taking over"
            );
        }
    }

    let options = JobOptions {
        lease: Duration::from_secs(60),
        policy: CheckpointPolicy::Every {
            items: Some(500),
            interval: Some(Duration::from_secs(1)),
        },
    };
    let mut job = ckpt.job_with(JOB, options)?;

    if job.was_completed() {
        let state: State = job.resume_state()?.unwrap_or_default();
        println!(
            "job already completed earlier (sum = {}); nothing to do, pass --fresh to run it again",
            state.sum
        );
        job.release()?;
        return Ok(());
    }

    // Resume: the cursor is the next record to process; the state is the sum
    // of every record before it. No checkpoint means a first run.
    let start: u64 = job.resume_cursor()?.unwrap_or(1);
    let mut state: State = job.resume_state()?.unwrap_or_default();
    if start > 1 {
        println!(
            "resuming from record {start} (sum so far {}, attempt {})",
            state.sum,
            job.record().attempts
        );
    } else {
        println!("starting from record 1 (attempt {})", job.record().attempts);
    }

    let mut last_saved = start;
    for record in start..=N {
        if args.crash_at == Some(record) {
            // A crash: no flush, no release. The lease stays held and every
            // record after the last saved checkpoint will be redone.
            println!("CRASH at record {record}: exiting without saving (last checkpoint: next record {last_saved})");
            std::process::exit(1);
        }
        state.sum += process(record);
        // Record progress after the record is fully processed: cursor = the
        // next record. `checkpoint` persists only when the policy says so.
        let cp = Checkpoint::new(serde_json::json!(record + 1), record)
            .with_state(serde_json::to_value(&state)?);
        if job.checkpoint(cp)? {
            last_saved = record + 1;
        }
    }
    let expected = N * (N + 1) * (2 * N + 1) / 6; // Σ i² for i in 1..=N
    println!("sum = {} (expected {expected})", state.sum);
    if state.sum != expected {
        // `fail` flushes the last checkpoint and marks the job failed; a
        // later run resumes from that checkpoint (or use --fresh).
        job.fail("wrong sum")?;
        eprintln!("WRONG RESULT: job marked failed");
        std::process::exit(1);
    }
    // `complete` flushes the final checkpoint and marks the job completed.
    job.complete()?;

    let record = ckpt.get_job(JOB)?.ok_or("job vanished")?;
    println!(
        "sum is correct; job {}, {} checkpoints saved in all, {} attempt(s)",
        record.status, record.saves, record.attempts
    );
    Ok(())
}
