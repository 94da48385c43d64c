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
/// How many positions each stage has.
const STAGE_LEN: [u64; 3] = [ORDERS, CUSTOMERS, CUSTOMERS];
const USAGE: &str = "usage: pipeline [STORE_URL] [--crash-in extract|transform|load] [--fresh]";

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

/// The checkpoint for "at `pos` of `stage`, with `st` accumulated".
fn snapshot(stage: usize, pos: u64, items: u64, st: &State) -> serde_json::Result<Checkpoint> {
    let state = serde_json::to_value(st)?;
    Ok(Checkpoint::new(pos.into(), items)
        .with_stage(STAGES[stage])
        .with_state(state))
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
                let stage = args
                    .next()
                    .and_then(|s| STAGES.iter().position(|x| *x == s));
                crash_in = Some(stage.ok_or(USAGE)?);
            }
            "--fresh" => fresh = true,
            u if u.contains("://") => url = u.to_string(),
            _ => return Err(USAGE.into()),
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
    let name = cp
        .as_ref()
        .and_then(|c| c.stage.as_deref())
        .unwrap_or(STAGES[0]);
    let mut stage = STAGES
        .iter()
        .position(|s| *s == name)
        .ok_or("unknown stage")?;
    let mut pos: u64 = job.resume_cursor()?.unwrap_or(0);
    let mut items = cp.as_ref().map_or(0, |c| c.items_processed);
    let mut st: State = job.resume_state()?.unwrap_or_default();
    let attempt = job.record().attempts;
    match &cp {
        Some(_) => println!("resuming in stage '{name}' at position {pos} (attempt {attempt})"),
        None => println!("starting a new run"),
    }
    for done in &STAGES[..stage] {
        println!("  {done:9}: skipped, completed by an earlier run");
    }

    while stage < STAGES.len() {
        let len = STAGE_LEN[stage];
        println!("  {:9}: running positions {pos}..{len}", STAGES[stage]);
        while pos < len {
            if crash_in == Some(stage) && pos == len / 2 + 5 {
                println!("  CRASH in stage '{}' at position {pos}", STAGES[stage]);
                std::process::exit(1);
            }
            step(stage, pos, &mut st);
            pos += 1;
            items += 1;
            // Persisted only when the policy says a save is due.
            job.checkpoint(snapshot(stage, pos, items, &st)?)?;
        }
        (stage, pos) = (stage + 1, 0);
        if stage < STAGES.len() {
            // Stage boundary: persist "next stage, position 0" right away so
            // that a crash from now on never redoes the finished stage.
            job.checkpoint(snapshot(stage, pos, items, &st)?)?;
            job.flush()?;
        }
    }
    job.complete()?;

    // Check against a straight run without checkpoints.
    let mut expected = State::default();
    for (s, len) in STAGE_LEN.into_iter().enumerate() {
        (0..len).for_each(|p| step(s, p, &mut expected));
    }
    let record = ckpt.get_job(JOB)?.ok_or("job vanished")?;
    println!(
        "done: {} valid + {} rejected orders; loaded {} rows = {} cents",
        st.valid, st.rejected, st.loaded_rows, st.loaded_cents
    );
    let (bytes, saves, attempts) = (record.state_bytes, record.saves, record.attempts);
    println!("state {bytes} bytes; {saves} checkpoints saved in all; {attempts} attempt(s)");
    if st != expected {
        eprintln!("WRONG RESULT: expected {expected:?}");
        std::process::exit(1);
    }
    println!("result matches a straight run without checkpoints");
    Ok(())
}
