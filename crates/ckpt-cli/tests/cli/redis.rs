//! `ckpt` against a real Redis server: a run killed with SIGKILL loses
//! nothing, several processes share one job, and a completed job's keys
//! carry the retention TTL. Uses `CKPT_TEST_REDIS_URL` (default
//! `redis://127.0.0.1:6379/0`), each test under a key prefix of its own;
//! skipped, with the reason printed, when no server is reachable, unless
//! `CKPT_REQUIRE_SERVICES=1`.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};

use crate::util::{
    assert_each_once, counts, item_counts, items, process_gone, wait_until, Sandbox,
};

const SIGKILL: i32 = 9;
const SEVEN_DAYS_MS: i64 = 7 * 24 * 3600 * 1000;

/// A key prefix of this test's own; its keys are deleted when this goes.
pub(crate) struct RedisPrefix {
    pub(crate) base: String,
    prefix: String,
}

impl RedisPrefix {
    pub(crate) fn new(tag: &str) -> Option<RedisPrefix> {
        let base = std::env::var("CKPT_TEST_REDIS_URL")
            .unwrap_or_else(|_| "redis://127.0.0.1:6379/0".to_string());
        let reachable = redis::Client::open(base.as_str())
            .and_then(|c| c.get_connection())
            .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c));
        if let Err(e) = reachable {
            if std::env::var("CKPT_REQUIRE_SERVICES").is_ok_and(|v| v == "1") {
                panic!("CKPT_REQUIRE_SERVICES=1 but Redis is not reachable: {e}");
            }
            eprintln!("skipped: Redis is not reachable ({e})");
            return None;
        }
        let prefix = format!("ckpt_cli_{tag}_{}", std::process::id());
        let p = RedisPrefix { base, prefix };
        p.delete_keys(); // left by an earlier run with the same pid
        Some(p)
    }

    pub(crate) fn url(&self) -> String {
        let sep = if self.base.contains('?') { '&' } else { '?' };
        format!("{}{sep}prefix={}", self.base, self.prefix)
    }

    fn conn(&self) -> redis::Connection {
        redis::Client::open(self.base.as_str())
            .and_then(|c| c.get_connection())
            .expect("connect to Redis")
    }

    /// Every key under the prefix, without it, with its PTTL (SCAN: in
    /// tests only).
    fn pttls(&self) -> BTreeMap<String, i64> {
        let mut conn = self.conn();
        let keys: Vec<String> = redis::cmd("SCAN")
            .cursor_arg(0)
            .arg("MATCH")
            .arg(format!("{}:*", self.prefix))
            .arg("COUNT")
            .arg(1000)
            .clone()
            .iter(&mut conn)
            .expect("scan")
            .map(|k| k.expect("a key"))
            .collect();
        keys.into_iter()
            .map(|k| {
                let ttl: i64 = redis::cmd("PTTL").arg(&k).query(&mut conn).expect("pttl");
                (k[self.prefix.len() + 1..].to_string(), ttl)
            })
            .collect()
    }

    fn delete_keys(&self) {
        let keys: Vec<String> = self
            .pttls()
            .into_keys()
            .map(|k| format!("{}:{k}", self.prefix))
            .collect();
        let mut conn = self.conn();
        for chunk in keys.chunks(500) {
            let _ = redis::cmd("UNLINK").arg(chunk).exec(&mut conn);
        }
    }

    /// Asserts that every key of the one job in the store expires within
    /// the default 7 days, and that the store's own keys never expire.
    #[track_caller]
    fn assert_completed_job_keys_expire(&self) {
        let ttls = self.pttls();
        let store_keys: BTreeSet<&str> = ["meta", "jobseq", "jobs"].into();
        let mut job_keys = 0;
        for (key, ttl) in &ttls {
            if store_keys.contains(key.as_str()) {
                assert_eq!(*ttl, -1, "{key} belongs to the store: {ttls:?}");
            } else {
                job_keys += 1;
                assert!(
                    *ttl > 0 && *ttl <= SEVEN_DAYS_MS,
                    "{key} of the completed job has PTTL {ttl}: {ttls:?}"
                );
            }
        }
        assert!(job_keys >= 5, "the job's keys: {ttls:?}");
    }
}

impl Drop for RedisPrefix {
    fn drop(&mut self) {
        self.delete_keys();
    }
}

/// Each item records "PID ITEM" in `started`, waits while the file `go` is
/// missing, then logs the item (as in crash.rs).
const SCRIPT: &str = r#"echo "$$ $0" >> started
while [ ! -e go ]; do sleep 0.01; done
sleep 0.05
echo "$0" >> log"#;

#[test]
fn sigkill_mid_run_on_redis_then_rerun_loses_nothing() {
    let Some(redis) = RedisPrefix::new("kill") else {
        return;
    };
    let url = redis.url();
    let sb = Sandbox::new();
    let all = items("r", 40);
    let file = sb.write_items("items.txt", &all);
    sb.write("go", "");
    let command = || {
        sb.ckpt_bare()
            .args(["--store", &url, "run", "--job", "J", "--items"])
            .arg(&file)
            .args(["-j", "2", "--", "sh", "-c", SCRIPT])
    };

    let mut first = command().spawn();
    wait_until(Duration::from_secs(20), "a few items to be logged", || {
        sb.lines("log").len() >= 4
    });
    // Park every item that starts from now on, and wait for one to start.
    std::fs::remove_file(sb.join("go")).unwrap();
    let started_before = sb.lines("started").len();
    wait_until(
        Duration::from_secs(10),
        "an item to start after `go` was removed",
        || sb.lines("started").len() > started_before,
    );
    first.kill().unwrap(); // SIGKILL
    let status = first.wait().unwrap();
    assert_eq!(status.signal(), Some(SIGKILL), "{status:?}");
    let parked: Vec<(u32, String)> = sb.lines("started")[started_before..]
        .iter()
        .map(|l| {
            let (pid, item) = l.split_once(' ').expect("PID ITEM");
            (pid.parse().expect("a pid"), item.to_string())
        })
        .collect();
    assert!(!parked.is_empty());

    // The job is held by the dead run: running, its keys kept.
    let ttls = redis.pttls();
    assert!(ttls.values().all(|&t| t == -1), "{ttls:?}");

    let began = Instant::now();
    let rerun = command().start();
    wait_until(
        Duration::from_secs(10),
        "the rerun to kill the dead run's commands",
        || parked.iter().all(|(pid, _)| process_gone(*pid)),
    );
    let logged_by_first = sb.lines("log");
    sb.write("go", "");
    let out = rerun.wait(Duration::from_secs(60));
    out.success();
    let took = began.elapsed();
    assert!(
        took < Duration::from_secs(15),
        "the rerun took {took:?}; it waited for a lease?"
    );
    assert!(
        out.stderr.contains("owner process is gone"),
        "the rerun took the dead run's items over:\n{}",
        out.stderr
    );

    let status = sb
        .ckpt_bare()
        .args(["--store", &url, "status", "J", "--json"])
        .run();
    status.success();
    let status = status.json();
    assert_eq!(status["status"], "completed");
    assert_eq!(item_counts(&status), (0, 0, 40, 0, 0));

    // Every item ran; one that ran twice finished in the killed run before
    // its completion was committed. The parked ones ran once, in the rerun.
    let times = counts(&sb.lines("log"));
    let expected: BTreeSet<&String> = all.iter().collect();
    assert_eq!(times.keys().collect::<BTreeSet<_>>(), expected);
    for (item, n) in &times {
        assert!(*n <= 2, "{item} ran {n} times");
        if *n == 2 {
            assert!(logged_by_first.contains(item), "{item} ran twice");
        }
    }
    for (_, item) in &parked {
        assert_eq!(times[item], 1, "parked item {item} ran once, in the rerun");
    }
    redis.assert_completed_job_keys_expire();
}

#[test]
fn three_processes_on_one_redis_job_run_each_item_once() {
    let Some(redis) = RedisPrefix::new("three") else {
        return;
    };
    let url = redis.url();
    let sb = Sandbox::new();
    let all = items("t", 60);
    let file = sb.write_items("items.txt", &all);
    let running: Vec<_> = (0..3)
        .map(|_| {
            sb.ckpt_bare()
                .args(["--store", &url, "run", "--job", "J", "--items"])
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
        r.wait(Duration::from_secs(60)).success();
    }
    assert_each_once(&sb.lines("log"), &all);
    let status = sb
        .ckpt_bare()
        .args(["--store", &url, "status", "J", "--json"])
        .run();
    status.success();
    let status = status.json();
    assert_eq!(status["status"], "completed");
    assert_eq!(item_counts(&status), (0, 0, 60, 0, 0));
    redis.assert_completed_job_keys_expire();
}

#[test]
fn redis_store_errors_are_one_line_with_their_exit_code() {
    let sb = Sandbox::new();
    // Nothing listens on port 1.
    let out = sb
        .ckpt_bare()
        .args(["--store", "redis://:hunter2@127.0.0.1:1/0", "status", "J"])
        .run();
    let line = out.error(4);
    assert!(line.contains("127.0.0.1:1"), "{line}");
    assert!(!out.stderr.contains("hunter2"), "{}", out.stderr);
    let out = sb
        .ckpt_bare()
        .args([
            "--store",
            "redis://127.0.0.1:6379/0?prefix=a%20b",
            "status",
            "J",
        ])
        .run();
    assert!(out.error(4).contains("prefix"), "{}", out.stderr);
    let Some(redis) = RedisPrefix::new("missing") else {
        return;
    };
    // A read command on a prefix that holds no store: not found, and
    // nothing is created.
    let out = sb
        .ckpt_bare()
        .args(["--store", &redis.url(), "status", "J"])
        .run();
    assert!(out.error(3).contains("no ckpt store"), "{}", out.stderr);
    assert!(redis.pttls().is_empty());
}

#[test]
fn a_rediss_url_to_a_redis_without_tls_says_so() {
    let sb = Sandbox::new();
    let Some(redis) = RedisPrefix::new("tls_to_plain") else {
        return;
    };
    let url = redis.url().replacen("redis://", "rediss://", 1);
    let line = sb
        .ckpt_bare()
        .args(["--store", &url, "status", "J"])
        .run()
        .error(4);
    assert!(line.contains("no answer to the TLS handshake"), "{line}");
    assert!(redis.pttls().is_empty(), "nothing was written");
}

#[test]
fn bench_leaves_none_of_its_jobs_in_the_store_it_measured() {
    let Some(redis) = RedisPrefix::new("bench") else {
        return;
    };
    let sb = Sandbox::new();
    let url = redis.url();
    sb.ckpt_bare()
        .args(["--store", &url, "checkpoint", "set", "mine", "1"])
        .run()
        .success();
    sb.ckpt_bare()
        .args(["--store", &url, "bench", "--items", "100", "--saves", "10"])
        .args(["--workers", "2", "--batch", "10"])
        .run()
        .success();
    let jobs = sb
        .ckpt_bare()
        .args(["--store", &url, "jobs", "--json"])
        .run();
    jobs.success();
    let names: Vec<_> = jobs
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["job"].clone())
        .collect();
    assert_eq!(names, vec![serde_json::json!("mine")], "{}", jobs.stdout);
}
