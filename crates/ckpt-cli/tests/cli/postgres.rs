//! `ckpt` against a real PostgreSQL server: several processes (standing in
//! for several machines) share one job. Skipped, with the reason printed,
//! when no server is reachable, unless `CKPT_REQUIRE_SERVICES=1`.

use std::time::Duration;

use crate::util::{assert_each_once, item_counts, items, Sandbox};

/// A fresh schema on the test server, dropped when this guard goes.
pub(crate) struct PgSchema {
    pub(crate) base: String,
    schema: String,
}

impl PgSchema {
    pub(crate) fn new(tag: &str) -> Option<PgSchema> {
        let base = std::env::var("CKPT_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string());
        if let Err(e) = postgres::Client::connect(&base, postgres::NoTls) {
            if std::env::var("CKPT_REQUIRE_SERVICES").is_ok_and(|v| v == "1") {
                panic!("CKPT_REQUIRE_SERVICES=1 but PostgreSQL is not reachable: {e}");
            }
            eprintln!("skipped: PostgreSQL is not reachable ({e})");
            return None;
        }
        let schema = format!("ckpt_cli_{tag}_{}", std::process::id());
        Some(PgSchema { base, schema })
    }

    /// The schema's name.
    pub(crate) fn name(&self) -> &str {
        &self.schema
    }

    pub(crate) fn url(&self) -> String {
        let sep = if self.base.contains('?') { '&' } else { '?' };
        format!("{}{sep}schema={}", self.base, self.schema)
    }
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        if let Ok(mut c) = postgres::Client::connect(&self.base, postgres::NoTls) {
            let _ = c.batch_execute(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.schema));
        }
    }
}

#[test]
fn three_processes_on_one_postgres_job_run_each_item_once() {
    let Some(pg) = PgSchema::new("three") else {
        return;
    };
    three_runs_run_each_item_once(&pg.url(), 90);
}

/// Three `ckpt run -j 3` processes on one job of `n` items at `url`: each
/// item runs once, and the job completes.
pub(crate) fn three_runs_run_each_item_once(url: &str, n: usize) {
    let sb = Sandbox::new();
    let all = items("pg", n);
    let file = sb.write_items("items.txt", &all);
    let running: Vec<_> = (0..3)
        .map(|_| {
            sb.ckpt_bare()
                .args(["--store", url, "run", "--job", "J", "--items"])
                .arg(&file)
                .args([
                    "-j",
                    "3",
                    "--",
                    "sh",
                    "-c",
                    r#"echo "$0" >> log; sleep 0.02"#,
                ])
                .start()
        })
        .collect();
    for r in running {
        r.wait(Duration::from_secs(90)).success();
    }
    assert_each_once(&sb.lines("log"), &all);
    let status = sb
        .ckpt_bare()
        .args(["--store", url, "status", "J", "--json"])
        .run();
    status.success();
    let status = status.json();
    assert_eq!(status["status"], "completed");
    assert_eq!(item_counts(&status), (0, 0, n as u64, 0, 0));
}

#[test]
fn a_killed_postgres_worker_is_taken_over_by_the_others_at_once() {
    let Some(pg) = PgSchema::new("kill") else {
        return;
    };
    let sb = Sandbox::new();
    let all = items("k", 40);
    let file = sb.write_items("items.txt", &all);
    let script = r#"echo "$0" >> started; sleep 0.3; echo "$0" >> log"#;
    let mut victim = sb
        .ckpt_bare()
        .args([
            "--store",
            &pg.url(),
            "run",
            "--job",
            "J",
            "--lease",
            "10m",
            "--items",
        ])
        .arg(&file)
        .args(["-j", "4", "--", "sh", "-c", script])
        .spawn();
    crate::util::wait_until(Duration::from_secs(20), "the victim starts items", || {
        sb.lines("started").len() >= 4
    });
    victim.kill().unwrap();
    victim.wait().unwrap();
    // The lease is 10 minutes: only the dead-owner check can finish this
    // in time.
    let started = std::time::Instant::now();
    let out = sb
        .ckpt_bare()
        .args([
            "--store",
            &pg.url(),
            "run",
            "--job",
            "J",
            "--lease",
            "10m",
            "--items",
        ])
        .arg(&file)
        .args(["-j", "4", "--", "sh", "-c", script])
        .run();
    out.success();
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
    assert!(
        out.stderr.contains("owner process is gone"),
        "{}",
        out.stderr
    );
    let mut logged = sb.lines("log");
    logged.sort();
    logged.dedup();
    assert_eq!(logged.len(), all.len(), "every item ran to the end");
}
