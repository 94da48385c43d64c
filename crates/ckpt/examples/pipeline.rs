//! A resumable multi-stage pipeline: extract → transform → load.
//!
//! One job, one checkpoint: `stage` names the stage in progress, `cursor` is
//! the position inside it, and `state` carries the intermediate results
//! between stages (a few hundred bytes here; it must stay under the 1 MiB
//! state limit, so big intermediates belong in files or tables, with only
//! their position in the checkpoint).
//!
//! - extract:   scan 1_000 synthetic orders, drop malformed ones, total the
//!   amount per customer (40 customers).
//! - transform: per customer, apply a volume discount and 8 % tax.
//! - load:      per customer, "load" the net amount into the warehouse
//!   (here: add it to the loaded totals).
//!
//! ```text
//! cargo run -p ckpt --example pipeline -- --crash-in transform  # dies mid-transform
//! cargo run -p ckpt --example pipeline                          # skips extract, resumes transform
//! cargo run -p ckpt --example pipeline -- --fresh               # start over
//! ```
//!
//! An optional first argument is the store URL (default: a SQLite file in
//! the system temp dir).

use std::time::Duration;

use ckpt::{Checkpoint, CheckpointPolicy, Ckpt, JobOptions};
use serde::{Deserialize, Serialize};

const JOB: &str = "example/pipeline";
const ORDERS: u64 = 1_000;
const CUSTOMERS: u64 = 40;
const STAGES: [&str; 3] = ["extract", "transform", "load"];

/// Intermediate and final results, carried in the checkpoint's state.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
struct State {
    valid: u64,
    rejected: u64,
    /// Per customer, filled by extract (cents).
    raw_cents: Vec<u64>,
    /// Per customer, filled by transform (cents).
    net_cents: Vec<u64>,
    /// Filled by load.
    loaded_rows: u64,
    loaded_cents: u64,
}

/// How many positions stage `s` has.
fn stage_len(s: usize) -> u64 {
    if s == 0 {
        ORDERS
    } else {
        CUSTOMERS
    }
}

/// Processes position `pos` of stage `s`. The same function serves the
/// checkpointed run and the reference run used to check the result.
fn step(s: usize, pos: u64, st: &mut State) {
    match STAGES[s] {
        "extract" => {
            if st.raw_cents.is_empty() {
                st.raw_cents = vec![0; CUSTOMERS as usize];
            }
            if pos % 97 == 13 {
                st.rejected += 1; // a malformed source row
                return;
            }
            let customer = (pos * 31 % CUSTOMERS) as usize;
            st.raw_cents[customer] += pos * 7_919 % 10_000;
            st.valid += 1;
        }
        "transform" => {
            let raw = st.raw_cents[pos as usize];
            let discounted = if raw > 200_000 { raw * 90 / 100 } else { raw };
            st.net_cents.push(discounted * 108 / 100);
        }
        "load" => {
            st.loaded_rows += 1;
            st.loaded_cents += st.net_cents[pos as usize];
        }
        _ => unreachable!(),
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let default = std::env::temp_dir().join("ckpt-example-pipeline.db");
    let mut url = format!("sqlite://{}", default.display());
    let (mut crash_in, mut fresh) = (None, false);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--crash-in" => {
                crash_in = args
                    .next()
                    .and_then(|s| STAGES.iter().position(|x| *x == s))
            }
            "--fresh" => fresh = true,
            u if u.contains("://") => url = u.to_string(),
            _ => {
                eprintln!(
                    "usage: pipeline [STORE_URL] [--crash-in extract|transform|load] [--fresh]"
                );
                std::process::exit(2);
            }
        }
    }
    println!("store: {url}");
    let ckpt = Ckpt::open(&url)?;
    if fresh {
        match ckpt.clear_checkpoint(JOB) {
            Ok(()) => println!("--fresh: cleared the previous checkpoint"),
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e.into()),
        }
    }

    let options = JobOptions {
        lease: Duration::from_secs(60),
        policy: CheckpointPolicy::Every {
            items: Some(20),
            interval: Some(Duration::from_secs(1)),
        },
    };
    // A lease left by a crashed run of this host is taken over at once.
    let mut job = ckpt.job_with(JOB, options)?;
    if job.was_completed() {
        let st: State = job.resume_state()?.unwrap_or_default();
        println!(
            "already completed: loaded {} rows, {} cents; pass --fresh to run again",
            st.loaded_rows, st.loaded_cents
        );
        job.release()?;
        return Ok(());
    }

    // Where to resume: the stage in progress and the position inside it.
    let cp = job.resume_checkpoint().cloned();
    let mut stage = match cp.as_ref().and_then(|c| c.stage.as_deref()) {
        Some(name) => STAGES
            .iter()
            .position(|s| *s == name)
            .ok_or("unknown stage in checkpoint")?,
        None => 0,
    };
    let mut pos: u64 = job.resume_cursor()?.unwrap_or(0);
    let mut items = cp.as_ref().map_or(0, |c| c.items_processed);
    let mut st: State = job.resume_state()?.unwrap_or_default();
    match &cp {
        Some(_) => println!(
            "resuming in stage '{}' at position {pos} (attempt {})",
            STAGES[stage],
            job.record().attempts
        ),
        None => println!("starting a new run"),
    }
    for done in &STAGES[..stage] {
        println!("  {done:9}: skipped, completed by an earlier run");
    }

    while stage < STAGES.len() {
        let len = stage_len(stage);
        println!("  {:9}: running positions {pos}..{len}", STAGES[stage]);
        while pos < len {
            if crash_in == Some(stage) && pos == len / 2 + 5 {
                println!("  CRASH in stage '{}' at position {pos}", STAGES[stage]);
                std::process::exit(1);
            }
            step(stage, pos, &mut st);
            pos += 1;
            items += 1;
            let cp = Checkpoint::new(pos.into(), items)
                .with_stage(STAGES[stage])
                .with_state(serde_json::to_value(&st)?);
            job.checkpoint(cp)?;
        }
        stage += 1;
        if stage < STAGES.len() {
            // Stage boundary: persist "next stage, position 0" right away so
            // that a crash from now on never redoes the finished stage.
            pos = 0;
            let cp = Checkpoint::new(pos.into(), items)
                .with_stage(STAGES[stage])
                .with_state(serde_json::to_value(&st)?);
            job.checkpoint(cp)?;
            job.flush()?;
        }
    }
    job.complete()?;

    // Check against a straight run without checkpoints.
    let mut expected = State::default();
    for s in 0..STAGES.len() {
        (0..stage_len(s)).for_each(|p| step(s, p, &mut expected));
    }
    let record = ckpt.get_job(JOB)?.ok_or("job vanished")?;
    println!(
        "done: {} valid and {} rejected orders, loaded {} rows = {} cents; state {} bytes, {} saves, {} attempt(s)",
        st.valid, st.rejected, st.loaded_rows, st.loaded_cents, record.state_bytes, record.saves, record.attempts
    );
    if st != expected {
        eprintln!("WRONG RESULT: expected {expected:?}");
        std::process::exit(1);
    }
    println!("result matches a straight run without checkpoints");
    Ok(())
}
