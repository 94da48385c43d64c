//! `ckpt bench`: measure a store. On SQLite it works in fresh files beside
//! the named store and removes them, so a user's data is never touched.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Result;
use ckpt::bench::{self, BenchOptions};
use ckpt::store::{self, OpenMode, PgStore, RedisStore, SqliteOptions, SqliteStore};

use crate::cli::BenchArgs;
use crate::output::BenchDoc;

pub fn bench(url: &str, args: BenchArgs) -> Result<ExitCode> {
    if args.checkpoint_loop {
        return checkpoint_loop(url, &args);
    }
    let options = BenchOptions {
        items: args.items.unwrap_or(20_000),
        workers: args.workers,
        saves: args.saves,
        batch: args.batch as usize,
    };
    let report = match url.strip_prefix("sqlite://") {
        Some(rest) => {
            let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
            let sqlite_options = SqliteOptions::from_query(query)?;
            let dir = Path::new(path)
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            let scratch = Scratch(vec![
                dir.join(format!(".ckpt-bench-{}.db", std::process::id())),
                dir.join(format!(".ckpt-bench-{}-raw.db", std::process::id())),
            ]);
            let db = scratch.0[0].to_string_lossy().into_owned();
            let open = || -> ckpt::Result<Arc<dyn ckpt::Store>> {
                Ok(Arc::new(SqliteStore::open(
                    &db,
                    sqlite_options.clone(),
                    OpenMode::CreateIfMissing,
                )?))
            };
            let mut baseline =
                |n| bench::sqlite_upsert_baseline(&scratch.0[1], sqlite_options.durability, n);
            let mut report =
                bench::run_with_baseline(open()?, &open, &options, Some(&mut baseline))?;
            report.store = url.to_string();
            report
        }
        None if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
            // The workers share this one store: its pool (pool_size, 16 by
            // default) and its liveness session. A store per worker held a
            // pool and a session each, two connections per worker, and
            // `--workers 64` ran out of a default server's 100.
            let pg = Arc::new(PgStore::open(url, OpenMode::CreateIfMissing)?);
            let open = || -> ckpt::Result<Arc<dyn ckpt::Store>> { Ok(pg.clone()) };
            let mut baseline = |n| pg.update_baseline(n);
            let mut report =
                bench::run_with_baseline(pg.clone(), &open, &options, Some(&mut baseline))?;
            // Closed before the next store opens, so that the two pools are
            // never held at once.
            drop(pg);
            let separate = PgStore::open(
                &format!(
                    "{url}{}group_commit=off",
                    if url.contains('?') { '&' } else { '?' }
                ),
                OpenMode::MustExist,
            )?;
            report.concurrent_checkpoints_per_s_separate = Some(bench::concurrent_saves(
                Arc::new(separate),
                bench::CONCURRENT_JOBS,
                bench::CONCURRENT_SAVES,
            )?);
            report
        }
        None if url.starts_with("redis://") => {
            let redis = Arc::new(RedisStore::open(url, OpenMode::CreateIfMissing)?);
            let open = || -> ckpt::Result<Arc<dyn ckpt::Store>> {
                Ok(Arc::new(RedisStore::open(url, OpenMode::MustExist)?))
            };
            let mut baseline = |n| redis.set_baseline(n);
            bench::run_with_baseline(redis.clone(), &open, &options, Some(&mut baseline))?
        }
        None => {
            let store = store::open(url, OpenMode::CreateIfMissing)?;
            let memory = url.starts_with("memory:");
            // Each worker gets its own connection, like another process;
            // a memory store can only be shared.
            let open = || -> ckpt::Result<Arc<dyn ckpt::Store>> {
                if memory {
                    Ok(store.clone())
                } else {
                    store::open(url, OpenMode::MustExist)
                }
            };
            bench::run(store.clone(), &open, &options)?
        }
    };
    if args.json {
        let doc = BenchDoc::from(&report);
        outln!("{}", serde_json::to_string_pretty(&doc)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    outln!("store:              {}", report.store)?;
    outln!(
        "checkpoint saves:   {:.0}/s (p50 {} µs, p99 {} µs, {} saves)",
        report.checkpoints_per_s,
        report.checkpoint_p50_us,
        report.checkpoint_p99_us,
        report.saves
    )?;
    if let (Some(base), Some(ratio)) =
        (report.baseline_upserts_per_s, report.checkpoint_vs_baseline)
    {
        outln!("raw baseline:       {base:.0}/s single-row writes (checkpoint/raw = {ratio:.2})")?;
    }
    match report.concurrent_checkpoints_per_s_separate {
        Some(separate) => outln!(
            "{} jobs at once:     {:.0} saves/s with group commit, {separate:.0}/s with a commit each",
            report.concurrent_jobs, report.concurrent_checkpoints_per_s
        ),
        None => outln!(
            "{} jobs at once:     {:.0} saves/s",
            report.concurrent_jobs, report.concurrent_checkpoints_per_s
        ),
    }?;
    outln!("enqueue:            {:.0} items/s", report.enqueue_per_s)?;
    outln!(
        "claim + complete:   {:.0} items/s ({} workers, batches of {}, {} items)",
        report.items_per_s,
        report.workers,
        report.batch,
        report.items
    )?;
    outln!(
        "through the Runner: {:.0} items/s ({} threads, as `ckpt run` does)",
        report.runner_items_per_s,
        report.workers
    )?;
    Ok(ExitCode::SUCCESS)
}

/// `ckpt bench --checkpoint-loop`: on SQLite in a fresh file beside the
/// named store, elsewhere in the named store under job names of its own.
fn checkpoint_loop(url: &str, args: &BenchArgs) -> Result<ExitCode> {
    let options = bench::LoopOptions {
        items: args.items.unwrap_or(5_000_000),
        work_ns: args.work_ns,
        rounds: args.rounds,
    };
    let report = match url.strip_prefix("sqlite://") {
        Some(rest) => {
            let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
            let dir = Path::new(path)
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            let scratch = Scratch(vec![
                dir.join(format!(".ckpt-bench-{}-loop.db", std::process::id()))
            ]);
            let store = SqliteStore::open(
                &scratch.0[0].to_string_lossy(),
                SqliteOptions::from_query(query)?,
                OpenMode::CreateIfMissing,
            )?;
            let mut report = bench::checkpoint_loop(Arc::new(store), &options)?;
            report.store = url.to_string();
            report
        }
        None => bench::checkpoint_loop(store::open(url, OpenMode::CreateIfMissing)?, &options)?,
    };
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&report)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    outln!("store:   {} (policy {})", report.store, report.policy)?;
    outln!(
        "loop:    {} items x {} rounds, {} ns of work per item ({} iterations)",
        report.items,
        report.rounds,
        report.work_ns,
        report.work_iterations
    )?;
    outln!("Overhead against the baseline of the same round, by the wall clock: the median")?;
    outln!("over rounds, the best round, and the median without the time inside saves; then")?;
    outln!("the median by the thread's CPU time.")?;
    outln!("variant      ns/item  median    best   calls     CPU   saves  in saves")?;
    for v in &report.variants {
        outln!(
            "{:<12} {:>7.1} {:>+7.2}% {:>+7.2}% {:>+7.2}% {:>+7.2}%  {:>6}  {:>7.2}%",
            v.name,
            v.median_ns_per_item,
            v.overhead_median_pct,
            v.overhead_best_pct,
            v.calls_overhead_median_pct,
            v.cpu_overhead_median_pct,
            v.saves,
            v.saves_pct
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Files removed (with their WAL and shared-memory files) when dropped.
struct Scratch(Vec<PathBuf>);

impl Drop for Scratch {
    fn drop(&mut self) {
        for path in &self.0 {
            for suffix in ["", "-wal", "-shm"] {
                let mut p = path.clone().into_os_string();
                p.push(suffix);
                let _ = std::fs::remove_file(p);
            }
        }
    }
}
