//! The claim pattern: many files, many workers, each file done exactly once.
//!
//! The main process writes 200 small files to a temp dir and enqueues their
//! paths as the items of one job. Then three worker processes (this example
//! started again with `--worker`, plus the main process itself) each run a
//! `Runner` with 4 threads over the same SQLite store: 12 workers claiming
//! items. A worker counts the lines of its file and completes the item with
//! `{"records_total": n}`. One file fails on its first attempt and is retried
//! 50 ms later. At the end the main process checks the item counts, the
//! recorded stats, and that each file was processed successfully exactly once
//! (every handler success is also logged to a per-process file).
//!
//! ```text
//! cargo run -p ckpt --example files [-- STORE_URL]
//! ```
//!
//! Default store: a fresh SQLite file in the temp dir that holds the files.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ckpt::{
    Ckpt, ClaimedItem, ItemStatus, NewItem, Outcome, QueueOptions, RetryPolicy, RunOptions, Runner,
};
use serde_json::json;

const FILES: usize = 200;
const WORKER_PROCESSES: usize = 2; // besides the main process
const THREADS: usize = 4;
const FLAKY: &str = "file-042.txt";

/// The file's expected line count, by construction.
fn lines_in(i: usize) -> u64 {
    (i % 17 + 1) as u64
}

/// Runs one worker: a Runner with 4 threads over the job's items, logging
/// each successful handling to `log_dir/done-PID.log`.
fn work(ckpt: &Ckpt, job: &str, log_dir: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let options = QueueOptions {
        lease: Duration::from_secs(30),
        retry: RetryPolicy {
            max_attempts: 3,
            base_delay: Duration::from_millis(50),
            ..RetryPolicy::default()
        },
    };
    let queue = ckpt.queue_with(job, options)?;
    let pid = std::process::id();
    let done = Mutex::new(Vec::new());
    let handler = |item: &ClaimedItem| -> Outcome {
        if item.key.ends_with(FLAKY) && item.attempt == 1 {
            println!("  [pid {pid}] {FLAKY}: simulated transient error on attempt 1");
            return Outcome::Failed("simulated transient error".into());
        }
        let text = match std::fs::read_to_string(&item.key) {
            Ok(text) => text,
            Err(e) => return Outcome::Failed(e.to_string()),
        };
        std::thread::sleep(Duration::from_millis(10)); // pretend it is real work
        done.lock().unwrap().push(item.key.clone());
        Outcome::Completed(Some(json!({ "records_total": text.lines().count() })))
    };
    let run = RunOptions {
        workers: THREADS,
        prefetch: 2,
        idle_poll: Duration::from_millis(50),
        ..RunOptions::default()
    };
    let report = Runner::new(&queue, run).run(&handler)?;
    let done = done.into_inner().unwrap_or_else(|e| e.into_inner());
    std::fs::write(log_dir.join(format!("done-{pid}.log")), done.join("\n"))?;
    let (completed, failed, lost) = (report.completed, report.failed, report.lost);
    println!(
        "  [pid {pid}] runner done: completed {completed}, failed attempts {failed}, lost {lost}"
    );
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [flag, url, job, log_dir] = args.as_slice() {
        if flag == "--worker" {
            return work(&Ckpt::open(url)?, job, Path::new(log_dir));
        }
    }
    if args.len() > 1 || args.first().is_some_and(|a| !a.contains("://")) {
        eprintln!("usage: files [STORE_URL]");
        std::process::exit(2);
    }

    let dir = tempfile::tempdir()?;
    let url = match args.first() {
        Some(url) => url.clone(),
        None => format!("sqlite://{}", dir.path().join("ckpt.db").display()),
    };
    // A job name unique to this run, so that a shared store starts empty.
    let stamp = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis();
    let job = format!("example/files/{stamp}");
    println!("store: {url}\njob:   {job}");

    // The input: 200 files of 1 to 17 lines.
    let files_dir = dir.path().join("input");
    std::fs::create_dir(&files_dir)?;
    let mut expected = BTreeMap::new();
    for i in 0..FILES {
        let path = files_dir.join(format!("file-{i:03}.txt"));
        let body: String = (0..lines_in(i))
            .map(|l| format!("record {l} of file {i}\n"))
            .collect();
        std::fs::write(&path, body)?;
        expected.insert(path.display().to_string(), lines_in(i));
    }

    // Enqueue the paths. Enqueueing is idempotent per key: running this line
    // twice would not duplicate an item.
    let ckpt = Ckpt::open(&url)?;
    let queue = ckpt.queue(&job)?;
    let report = queue.enqueue(expected.keys().map(NewItem::key))?;
    let (new, old) = (report.inserted, report.existing);
    println!("enqueued {new} files ({old} already present)");

    // Start the other worker processes, then work in this one too.
    let log_dir = dir.path().join("logs");
    std::fs::create_dir(&log_dir)?;
    let started = Instant::now();
    let exe = std::env::current_exe()?;
    // A memory:// store lives inside this process: other processes cannot share it.
    let shared = !url.starts_with("memory://");
    let spawn = |_| {
        Command::new(&exe)
            .args(["--worker", &url, &job])
            .arg(&log_dir)
            .spawn()
    };
    let n = if shared { WORKER_PROCESSES } else { 0 };
    let children: Vec<Child> = (0..n).map(spawn).collect::<Result<_, _>>()?;
    let pid = std::process::id();
    println!("started {n} worker processes; pid {pid} works too");
    work(&ckpt, &job, &log_dir)?;
    for mut child in children {
        if !child.wait()?.success() {
            return Err("a worker process failed".into());
        }
    }
    println!("all workers done in {:.2?}", started.elapsed());

    // Check 1: item counts.
    let counts = queue.counts()?;
    println!(
        "items: {} completed, {} pending, {} running, {} failed, {} dead",
        counts.completed, counts.pending, counts.running, counts.failed, counts.dead
    );
    let mut ok = counts.completed == FILES as u64 && counts.unfinished() == 0 && counts.dead == 0;

    // Check 2: every completed item recorded the right line count.
    let items = queue.items(Some(ItemStatus::Completed), FILES * 2)?;
    let mut total = 0;
    for item in &items {
        let stats = item.stats.clone().unwrap_or_default();
        let got = stats["records_total"].as_u64();
        ok &= got == expected.get(&item.key).copied();
        total += got.unwrap_or(0);
        if item.key.ends_with(FLAKY) {
            let (attempts, error) = (item.attempts, &item.last_error);
            println!("{FLAKY}: completed on attempt {attempts} (last error: {error:?})");
            ok &= item.attempts == 2;
        }
    }
    let want: u64 = expected.values().sum();
    println!("records_total over all files: {total} (expected {want})");

    // Check 3: across all processes, each file was handled successfully
    // exactly once.
    let mut seen: BTreeMap<String, u32> = BTreeMap::new();
    let mut per_process = Vec::new();
    for entry in std::fs::read_dir(&log_dir)? {
        let text = std::fs::read_to_string(entry?.path())?;
        per_process.push(text.lines().count());
        text.lines()
            .for_each(|k| *seen.entry(k.to_string()).or_default() += 1);
    }
    let once = expected.keys().all(|k| seen.get(k) == Some(&1)) && seen.len() == FILES;
    println!("files per process: {per_process:?}; each file handled exactly once: {once}");
    if !(ok && once) {
        eprintln!("WRONG RESULT");
        std::process::exit(1);
    }
    println!("all checks passed");
    Ok(())
}
