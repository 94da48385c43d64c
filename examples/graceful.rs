//! Graceful shutdown of a cursor loop: the Kubernetes eviction case.
//!
//! A pod being evicted gets SIGTERM, then SIGKILL after its grace period
//! (30 s by default). This loop saves its checkpoint rarely (at most once
//! an hour: saves may be expensive), so a plain kill would lose everything
//! since the last save. With `ckpt::shutdown::Signals` installed, SIGTERM
//! (or Ctrl-C) only raises a flag: the loop finishes the record in hand,
//! then `release` saves the latest checkpoint at once and gives up the
//! lease, and the process exits 143 (130 for Ctrl-C). The next run resumes
//! exactly after the last record processed.
//!
//! ```text
//! cargo run -p ckpt --example graceful        # press Ctrl-C after a few records
//! cargo run -p ckpt --example graceful        # resumes after the last record done
//! cargo run -p ckpt --example graceful -- --records 100 --delay-ms 50 sqlite:///tmp/g.db
//! ```
//!
//! The loop, in short:
//!
//! ```text
//! let stop = Signals::install()?;
//! for record in start..=n {
//!     if stop.is_requested() { job.release()?; exit(stop.exit_code()) }
//!     process(record);
//!     job.checkpoint(Checkpoint::new(json!(record + 1), record))?;
//! }
//! ```
//!
//! `crates/ckpt/tests/graceful.rs` runs this loop in a real process, sends
//! it SIGTERM and checks the saved cursor.

use std::error::Error;
use std::time::Duration;

use ckpt::shutdown::Signals;
use ckpt::{Checkpoint, CheckpointPolicy, Ckpt, JobOptions};
use serde::{Deserialize, Serialize};

/// The job's name in the store.
pub const JOB: &str = "example/graceful";

/// What the loop accumulates: the sum of `record²` so far.
#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    sum: u64,
}

/// What to run.
pub struct Config {
    /// The store URL.
    pub url: String,
    /// Records 1..=records are processed.
    pub records: u64,
    /// Time one record takes.
    pub delay: Duration,
}

/// Runs the loop. Returns `None` when every record was processed, or the
/// exit code (128 + the signal) when a signal stopped it.
pub fn run(config: &Config) -> Result<Option<i32>, Box<dyn Error>> {
    // First, before any work: from now on SIGTERM and SIGINT only set a
    // flag (a second one ends the process at once).
    let stop = Signals::install()?;
    let ckpt = Ckpt::open(&config.url)?;
    let options = JobOptions {
        lease: Duration::from_secs(60),
        // Rare saves: only the graceful stop below saves the last position.
        policy: CheckpointPolicy::Every {
            items: None,
            interval: Some(Duration::from_secs(3600)),
        },
    };
    let mut job = ckpt.job_with(JOB, options)?;
    let start: u64 = job.resume_cursor()?.unwrap_or(1);
    let mut state: State = job.resume_state()?.unwrap_or_default();
    println!("starting at record {start}");
    for record in start..=config.records {
        if stop.is_requested() {
            // Saves the latest checkpoint now, whatever the policy, and gives
            // up the lease so that the next worker resumes without waiting.
            // (`job.flush()` alone saves and keeps the lease until it expires.)
            job.release()?;
            println!(
                "stopped: records up to {} done, checkpoint saved (next record {record})",
                record - 1
            );
            return Ok(stop.exit_code());
        }
        std::thread::sleep(config.delay); // the "work"
        state.sum += record * record;
        let cp = Checkpoint::new(serde_json::json!(record + 1), record)
            .with_state(serde_json::to_value(&state)?);
        job.checkpoint(cp)?; // persisted only when the policy says so
        println!("done {record}");
    }
    job.complete()?;
    println!("all {} records done, sum {}", config.records, state.sum);
    Ok(None)
}

fn main() {
    let default = std::env::temp_dir().join("ckpt-example-graceful.db");
    let mut config = Config {
        url: format!("sqlite://{}", default.display()),
        records: 10_000,
        delay: Duration::from_millis(10),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut number = |what: &str| -> u64 {
            args.next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| usage(&format!("{what} needs a number")))
        };
        match arg.as_str() {
            "--records" => config.records = number("--records"),
            "--delay-ms" => config.delay = Duration::from_millis(number("--delay-ms")),
            url if url.contains("://") => config.url = url.to_string(),
            other => usage(&format!("unknown argument {other:?}")),
        }
    }
    match run(&config) {
        Ok(None) => {}
        Ok(Some(code)) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}

fn usage(why: &str) -> ! {
    eprintln!("{why}\nusage: graceful [STORE_URL] [--records N] [--delay-ms MS]");
    std::process::exit(2)
}
