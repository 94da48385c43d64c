//! The numbers behind `ckpt bench`: checkpoint save latency beside a raw
//! single-row UPSERT, and claim + complete throughput; and, with
//! `--checkpoint-loop`, what `checkpoint()` and `is_due()` cost a tight
//! loop ([`checkpoint_loop`]).
//!
//! The benchmark never touches a user's data: on SQLite it works in a fresh
//! file beside the named one and deletes it afterwards.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::error::Result;
use crate::job::JobOptions;
use crate::model::{ItemChange, ItemUpdate, NewItem};
use crate::policy::CheckpointPolicy;
use crate::queue::Outcome;
use crate::runner::{RunOptions, Runner};
use crate::store::Store;
use crate::{Ckpt, QueueOptions};

mod cursor_loop;

pub use cursor_loop::{checkpoint_loop, LoopOptions, LoopReport, LoopVariant};

/// Jobs checkpointing at once in the concurrent measurement.
pub const CONCURRENT_JOBS: usize = 64;
/// Saves per job in the concurrent measurement.
pub const CONCURRENT_SAVES: u64 = 50;

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Items enqueued, claimed and completed.
    pub items: u64,
    /// Worker threads.
    pub workers: usize,
    /// Checkpoint saves timed.
    pub saves: u64,
    /// Items a worker claims (and then completes) at once.
    pub batch: usize,
}

/// The results; `--json` prints this.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// The store measured (password redacted).
    pub store: String,
    /// Items enqueued per second (one streaming transaction).
    pub enqueue_per_s: f64,
    /// Items claimed and completed per second by `workers` threads, each
    /// with the store handle `connect` gave it (its own, or a shared one),
    /// claiming `batch` items at a time and completing them in one commit.
    pub items_per_s: f64,
    /// The same through one [`Runner`] with `workers` threads (the path of
    /// `ckpt run`: prefetch, group commit, heartbeats), over as many items.
    pub runner_items_per_s: f64,
    /// Durable checkpoint saves per second, one job, one thread.
    pub checkpoints_per_s: f64,
    /// Median save latency in microseconds.
    pub checkpoint_p50_us: u64,
    /// 99th percentile save latency in microseconds.
    pub checkpoint_p99_us: u64,
    /// The baseline: raw single-row writes per second with the same
    /// durability (SQLite: an UPSERT per transaction; PostgreSQL: an UPDATE
    /// round trip; Redis: a `SET` round trip). `None` for the memory store.
    pub baseline_upserts_per_s: Option<f64>,
    /// `checkpoints_per_s / baseline_upserts_per_s`.
    pub checkpoint_vs_baseline: Option<f64>,
    /// Jobs checkpointing at once, one thread each, in one process.
    pub concurrent_jobs: usize,
    /// Their saves per second in all (group commit where the store has it).
    pub concurrent_checkpoints_per_s: f64,
    /// The same with a commit per save (PostgreSQL with group commit off).
    pub concurrent_checkpoints_per_s_separate: Option<f64>,
    /// Items, workers, saves.
    pub items: u64,
    /// Worker threads.
    pub workers: usize,
    /// Saves timed.
    pub saves: u64,
    /// Claim batch size.
    pub batch: usize,
}

/// Rounds the saves and the baseline alternate in, so that a noisy
/// neighbour slows both alike instead of whichever ran during the noise.
const ROUNDS: u64 = 10;

/// A baseline: `n` raw single-row writes with the store's durability,
/// returning their rate per second.
pub type Baseline<'a> = &'a mut dyn FnMut(u64) -> Result<f64>;

/// Runs the benchmark against `store`; `connect` gives each worker its
/// handle on the same store: a new one (its own connections, like another
/// process), or a shared one (`ckpt bench` shares one PostgreSQL store, so
/// that many workers fit a server's connection budget).
pub fn run(
    store: Arc<dyn Store>,
    connect: &(dyn Fn() -> Result<Arc<dyn Store>> + Sync),
    options: &BenchOptions,
) -> Result<BenchReport> {
    run_with_baseline(store, connect, options, None)
}

/// [`run`], with the checkpoint saves timed in rounds alternating with
/// rounds of `baseline`, which the report compares them with.
pub fn run_with_baseline(
    store: Arc<dyn Store>,
    connect: &(dyn Fn() -> Result<Arc<dyn Store>> + Sync),
    options: &BenchOptions,
    mut baseline: Option<Baseline<'_>>,
) -> Result<BenchReport> {
    let ckpt = Ckpt::new(store.clone());
    let suffix = format!("{:08x}", rand::random::<u32>());

    // Checkpoint saves: every call persisted, each timed.
    let mut job = ckpt.job_with(
        &format!("bench-checkpoint-{suffix}"),
        JobOptions {
            policy: CheckpointPolicy::Always,
            ..JobOptions::default()
        },
    )?;
    let mut latencies = Vec::with_capacity(options.saves as usize);
    let mut save_time = Duration::ZERO;
    let mut baseline_time = Duration::ZERO;
    let rounds = ROUNDS.min(options.saves.max(1));
    let mut done = 0;
    for round in 0..rounds {
        let chunk = if round + 1 == rounds {
            options.saves - done
        } else {
            options.saves / rounds
        };
        let started = Instant::now();
        for i in done..done + chunk {
            let t = Instant::now();
            job.save(&serde_json::json!({ "offset": i }), i)?;
            latencies.push(t.elapsed());
        }
        save_time += started.elapsed();
        done += chunk;
        if let Some(baseline) = baseline.as_mut() {
            let rate = baseline(chunk)?;
            baseline_time += Duration::from_secs_f64(chunk as f64 / rate.max(1e-9));
        }
    }
    job.complete()?;
    latencies.sort();
    let pct = |p: f64| {
        let idx = ((latencies.len() as f64 - 1.0) * p).round() as usize;
        latencies.get(idx).copied().unwrap_or_default().as_micros() as u64
    };

    // Items: enqueue, then W workers claim + complete in batches.
    let lease = QueueOptions {
        lease: Duration::from_secs(60),
        ..QueueOptions::default()
    };
    let items_job = format!("bench-items-{suffix}");
    let queue = ckpt.queue_with(&items_job, lease.clone())?;
    let started = Instant::now();
    queue.enqueue((0..options.items).map(|i| NewItem::key(format!("item-{i}"))))?;
    let enqueue_time = started.elapsed();
    let workers = options.workers.max(1);
    let handles = (0..workers)
        .map(|_| connect())
        .collect::<Result<Vec<_>>>()?;
    let started = Instant::now();
    std::thread::scope(|s| {
        let threads: Vec<_> = handles
            .into_iter()
            .map(|handle| {
                let q = Ckpt::new(handle).queue_with(&items_job, lease.clone());
                s.spawn(move || -> Result<()> {
                    let q = q?;
                    loop {
                        let batch = q.claim(options.batch.max(1))?;
                        if batch.is_empty() {
                            return Ok(());
                        }
                        let updates: Vec<_> = batch
                            .into_iter()
                            .map(|item| ItemUpdate {
                                lease: item.lease,
                                change: ItemChange::Complete {
                                    stats: None,
                                    command: None,
                                },
                            })
                            .collect();
                        for result in q.apply(&updates)? {
                            result?;
                        }
                    }
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|t| {
                t.join()
                    .unwrap_or_else(|_| Err(crate::Error::Storage("bench worker panicked".into())))
            })
            .collect::<Result<Vec<()>>>()
    })?;
    let batch_time = started.elapsed();

    // The same through the Runner that `ckpt run` uses.
    let runner_queue = ckpt.queue_with(&format!("bench-runner-{suffix}"), lease)?;
    runner_queue.enqueue((0..options.items).map(|i| NewItem::key(format!("item-{i}"))))?;
    let started = Instant::now();
    let handler = |_: &crate::ClaimedItem| Outcome::Completed(None);
    let run_options = RunOptions {
        workers,
        prefetch: workers * 8,
        ..RunOptions::default()
    };
    Runner::new(&runner_queue, run_options).run(&handler)?;
    let run_time = started.elapsed();

    let concurrent = concurrent_saves(store.clone(), CONCURRENT_JOBS, CONCURRENT_SAVES)?;
    remove_jobs(
        &ckpt,
        &[
            format!("bench-checkpoint-{suffix}"),
            items_job,
            format!("bench-runner-{suffix}"),
        ],
    );

    let per_s = |n: u64, d: Duration| n as f64 / d.as_secs_f64().max(1e-9);
    let checkpoints_per_s = per_s(options.saves, save_time);
    let baseline_upserts_per_s = baseline
        .is_some()
        .then(|| per_s(options.saves, baseline_time));
    Ok(BenchReport {
        store: store.describe(),
        enqueue_per_s: per_s(options.items, enqueue_time),
        items_per_s: per_s(options.items, batch_time),
        runner_items_per_s: per_s(options.items, run_time),
        checkpoints_per_s,
        checkpoint_p50_us: pct(0.50),
        checkpoint_p99_us: pct(0.99),
        baseline_upserts_per_s,
        checkpoint_vs_baseline: baseline_upserts_per_s.map(|b| checkpoints_per_s / b),
        concurrent_jobs: CONCURRENT_JOBS,
        concurrent_checkpoints_per_s: concurrent,
        concurrent_checkpoints_per_s_separate: None,
        items: options.items,
        workers,
        saves: options.saves,
        batch: options.batch,
    })
}

/// `jobs` jobs checkpointing at once, one thread each, all through `store`
/// (one process): `per_job` durable saves each. Returns saves per second.
pub fn concurrent_saves(store: Arc<dyn Store>, jobs: usize, per_job: u64) -> Result<f64> {
    let ckpt = Ckpt::new(store);
    let suffix = format!("{:08x}", rand::random::<u32>());
    let started = Instant::now();
    std::thread::scope(|s| {
        let threads: Vec<_> = (0..jobs)
            .map(|j| {
                let ckpt = ckpt.new_worker();
                let name = format!("bench-concurrent-{suffix}-{j}");
                s.spawn(move || -> Result<()> {
                    let mut job = ckpt.job_with(
                        &name,
                        JobOptions {
                            policy: CheckpointPolicy::Always,
                            ..JobOptions::default()
                        },
                    )?;
                    for i in 0..per_job {
                        job.save(&i, i)?;
                    }
                    job.complete()
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|t| {
                t.join()
                    .unwrap_or_else(|_| Err(crate::Error::Storage("bench thread panicked".into())))
            })
            .collect::<Result<Vec<()>>>()
    })?;
    let rate = (jobs as u64 * per_job) as f64 / started.elapsed().as_secs_f64().max(1e-9);
    let names: Vec<String> = (0..jobs)
        .map(|j| format!("bench-concurrent-{suffix}-{j}"))
        .collect();
    remove_jobs(&ckpt, &names);
    Ok(rate)
}

/// Deletes the benchmark's own jobs, all finished by then, so that it
/// leaves nothing in the store it measured (often the one in use). A job
/// of items is marked completed first: its last item completing does not
/// do that by itself.
/// One that cannot be deleted is named in a warning: the measurement
/// stands.
fn remove_jobs(ckpt: &Ckpt, names: &[String]) {
    let store = ckpt.store();
    for name in names {
        let removed = store
            .finish_if_done(name, ckpt.now())
            .and_then(|_| store.delete_job(name, ckpt.now()));
        match removed {
            Ok(true) => {}
            Ok(false) => tracing::warn!(
                job = name.as_str(),
                "the benchmark's job is not finished, so it was left in the store"
            ),
            Err(e) => tracing::warn!(
                job = name.as_str(),
                "cannot delete the benchmark's job: {e}"
            ),
        }
    }
}

/// Raw rusqlite: `n` single-row UPSERTs, each its own transaction, in a
/// fresh WAL file at `path` with the given durability. Returns the rate.
#[cfg(feature = "sqlite")]
pub fn sqlite_upsert_baseline(
    path: &std::path::Path,
    durability: crate::store::Durability,
    n: u64,
) -> Result<f64> {
    use crate::store::Durability;
    let err = |e: rusqlite::Error| crate::Error::Storage(e.to_string());
    let conn = rusqlite::Connection::open(path).map_err(err)?;
    let sync = match durability {
        Durability::Full => "FULL",
        Durability::Normal => "NORMAL",
    };
    conn.execute_batch(&format!(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous={sync};
         CREATE TABLE IF NOT EXISTS checkpoints (job TEXT PRIMARY KEY, cursor TEXT, items INTEGER, at INTEGER);"
    ))
    .map_err(err)?;
    let mut stmt = conn
        .prepare(
            "INSERT INTO checkpoints (job, cursor, items, at) VALUES ('bench', ?1, ?2, ?3)
             ON CONFLICT (job) DO UPDATE SET cursor = excluded.cursor, items = excluded.items, at = excluded.at",
        )
        .map_err(err)?;
    let started = Instant::now();
    for i in 0..n {
        let cursor = serde_json::json!({ "offset": i }).to_string();
        stmt.execute(rusqlite::params![cursor, i as i64, i as i64])
            .map_err(err)?;
    }
    Ok(n as f64 / started.elapsed().as_secs_f64().max(1e-9))
}
