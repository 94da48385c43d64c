//! The connection budget (docs/OPERATIONS.md, "Connection budget"): how
//! many PostgreSQL connections ckpt holds, on servers with the default
//! `max_connections` of 100.
//!
//! - 40 `ckpt run` processes on one job fit a server of 100 connections:
//!   each holds 2 (its pooled connection, and its liveness session, which
//!   also carries LISTEN), and every item runs exactly once.
//! - A run started while the server is full waits for a free connection
//!   instead of failing.
//! - `ckpt bench --workers 64` shares one pool among its workers.
//!
//! Private clusters for the first two (they fill a server); the shared test
//! server for the bench, counting only its own sessions by a unique
//! `application_name`. Skipped, with the reason printed, when the server or
//! its binaries are missing, unless `CKPT_REQUIRE_SERVICES=1`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::pg_restart::PrivateCluster;
use crate::postgres::PgSchema;
use crate::util::{assert_each_once, item_counts, items, wait_until, Sandbox};

/// Connections a `ckpt run` holds: its pooled one (only the coordinator
/// thread talks to the store) and its liveness session (with LISTEN).
const PER_RUN: i64 = 2;

/// Polls `pg_stat_activity` on its own connection and keeps the peaks.
struct Peaks {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<(i64, i64)>,
}

impl Peaks {
    /// Watches the server at `url`: the peak of sessions named `app`, and
    /// of all client sessions (this watcher's included).
    fn watch(url: &str, app: &str) -> Peaks {
        let mut client = postgres::Client::connect(url, postgres::NoTls).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let (flag, app) = (stop.clone(), app.to_string());
        let thread = std::thread::spawn(move || {
            let (mut named, mut all) = (0, 0);
            while !flag.load(Ordering::Relaxed) {
                let row = client
                    .query_one(
                        "SELECT count(*) FILTER (WHERE application_name = $1), count(*)
                         FROM pg_stat_activity WHERE backend_type = 'client backend'",
                        &[&app],
                    )
                    .unwrap();
                named = named.max(row.get::<_, i64>(0));
                all = all.max(row.get::<_, i64>(1));
                std::thread::sleep(Duration::from_millis(10));
            }
            (named, all)
        });
        Peaks { stop, thread }
    }

    /// (peak of the named sessions, peak of all client sessions).
    fn stop(self) -> (i64, i64) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

#[test]
fn forty_runs_on_one_job_fit_a_server_of_a_hundred_connections() {
    let Some(cluster) = PrivateCluster::start_configured("max_connections = 100", None) else {
        return;
    };
    let sb = Sandbox::new();
    let all = items("b", 400);
    let file = sb.write_items("items.txt", &all);
    let runs = 40;
    let peaks = Peaks::watch(&cluster.url(), "ckpt");
    // All at once: every one creates (or finds) the store and enqueues the
    // same items; then they share them, two at a time each.
    let running: Vec<_> = (0..runs)
        .map(|_| {
            sb.ckpt_bare()
                .args(["--store", &cluster.url(), "run", "--job", "J", "-q"])
                .arg("--items")
                .arg(&file)
                .args(["-j", "2", "--", "sh", "-c", r#"echo "$0" >> log"#])
                .start()
        })
        .collect();
    let outs: Vec<_> = running
        .into_iter()
        .map(|r| r.wait(Duration::from_secs(120)))
        .collect();
    let (peak_ckpt, peak_all) = peaks.stop();
    eprintln!(
        "{runs} runs: peak {peak_ckpt} ckpt sessions, {peak_all} client sessions in all (max_connections = 100)"
    );
    for out in &outs {
        out.success();
    }
    // The commands: each item ran exactly once.
    assert_each_once(&sb.lines("log"), &all);
    // The store: each item completed, at its first attempt.
    let status = sb
        .ckpt_bare()
        .args(["--store", &cluster.url(), "status", "J", "--json"])
        .run();
    status.success();
    assert_eq!(item_counts(&status.json()), (0, 0, 400, 0, 0));
    let mut client = postgres::Client::connect(&cluster.url(), postgres::NoTls).unwrap();
    let row = client
        .query_one(
            "SELECT count(*), count(DISTINCT key), count(*) FILTER (WHERE attempts = 1 AND status = 'completed')
             FROM ckpt.items",
            &[],
        )
        .unwrap();
    let (rows, keys, once): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
    assert_eq!((rows, keys, once), (400, 400, 400));
    // The budget held: never more than two connections per run.
    assert!(
        peak_ckpt <= runs * PER_RUN,
        "{peak_ckpt} ckpt sessions at once, more than {PER_RUN} per run"
    );
}

#[test]
fn a_run_on_a_full_server_waits_for_a_free_connection() {
    let Some(cluster) = PrivateCluster::start_configured(
        "max_connections = 4\nsuperuser_reserved_connections = 0",
        None,
    ) else {
        return;
    };
    let sb = Sandbox::new();
    let all = items("f", 3);
    let file = sb.write_items("items.txt", &all);
    let held: Vec<postgres::Client> = (0..4)
        .map(|_| postgres::Client::connect(&cluster.url(), postgres::NoTls).unwrap())
        .collect();
    let running = sb
        .ckpt_bare()
        .args(["--store", &cluster.url(), "run", "--job", "J", "-q"])
        .arg("--items")
        .arg(&file)
        .args(["--", "sh", "-c", r#"echo "$0" >> log"#])
        .start();
    wait_until(Duration::from_secs(30), "the run to wait", || {
        running
            .stderr_so_far()
            .contains("waiting for a free connection")
    });
    let waiting = running.stderr_so_far();
    assert!(waiting.contains("SQLSTATE 53300"), "{waiting}");
    // Another command still fails at once, with the one line.
    let jobs = sb
        .ckpt_bare()
        .args(["--store", &cluster.url(), "jobs"])
        .run();
    let line = jobs.error(4);
    assert!(line.contains("too many clients already"), "{line}");
    assert!(sb.lines("log").is_empty(), "nothing ran while it waited");
    drop(held);
    running.wait(Duration::from_secs(60)).success();
    assert_each_once(&sb.lines("log"), &all);
}

#[test]
fn bench_with_64_workers_shares_one_pool() {
    let Some(pg) = PgSchema::new("bench64") else {
        return;
    };
    let sb = Sandbox::new();
    // Only this test's sessions count: other tests share the server.
    let app = format!("ckpt_bench64_{}", std::process::id());
    let url = format!("{}&application_name={app}", pg.url());
    let peaks = Peaks::watch(&pg.base, &app);
    let out = sb
        .ckpt_bare()
        .args([
            "--store",
            &url,
            "bench",
            "--items",
            "640",
            "--workers",
            "64",
        ])
        .args(["--saves", "50", "--batch", "10", "--json"])
        .run();
    let (peak, peak_all) = peaks.stop();
    eprintln!("bench --workers 64: peak {peak} sessions ({peak_all} on the server in all)");
    out.success();
    assert_eq!(out.json()["workers"], 64);
    // One pool (pool_size 16) and one liveness session at a time: 17, and
    // 18 while the first store's liveness session closes (its keeper
    // notices within a ping) as the second store opens; 2 more of room for
    // backends slow to exit on a loaded machine. A store per worker held
    // two connections per worker (peaks of 66 to 96 were measured).
    assert!(
        (1..=20).contains(&peak),
        "{peak} connections at once for 64 workers"
    );
    // It measured the store in use, and leaves none of its jobs there.
    let jobs = sb
        .ckpt_bare()
        .args(["--store", &url, "jobs", "--json"])
        .run();
    jobs.success();
    assert_eq!(jobs.json(), serde_json::json!([]), "{}", jobs.stdout);
}
