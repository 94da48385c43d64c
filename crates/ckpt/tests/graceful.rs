//! The graceful-shutdown example (`examples/graceful.rs`) in a real process:
//! SIGTERM or SIGINT makes it save the last processed position, which its
//! checkpoint policy (at most one save an hour) would not have saved.
//!
//! The process is this test binary run again with [`CHILD_ENV`] set, so
//! that it runs only the `child_loop` test: the example's loop.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ckpt::Ckpt;

#[allow(dead_code)] // its `main` and `usage`: the test calls `run`
#[path = "../../../examples/graceful.rs"]
mod graceful;

/// Set in the child: the store URL its loop uses.
const CHILD_ENV: &str = "CKPT_GRACEFUL_TEST_STORE";

/// The example's loop, when this binary runs as the child; a no-op test
/// otherwise.
#[test]
fn child_loop() {
    let Ok(url) = std::env::var(CHILD_ENV) else {
        return;
    };
    let config = graceful::Config {
        url,
        records: 1_000_000,
        delay: Duration::from_millis(2),
    };
    let code = match graceful::run(&config) {
        Ok(code) => code.unwrap_or(0),
        Err(e) => {
            eprintln!("child_loop: {e}");
            1
        }
    };
    std::process::exit(code);
}

/// A child running the loop, with its stdout collected line by line.
struct Loop {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Loop {
    fn start(url: &str) -> Loop {
        let mut child = Command::new(std::env::current_exe().expect("this test binary"))
            .args(["child_loop", "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, url)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn the loop");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&lines);
        let stdout = child.stdout.take().expect("piped stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push(line);
            }
        });
        Loop { child, lines }
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// The records reported done, in order.
    fn done(&self) -> Vec<u64> {
        self.lines()
            .iter()
            .filter_map(|l| l.strip_prefix("done ")?.parse().ok())
            .collect()
    }

    /// Waits until `cond` holds of the output; fails the test after 60 s.
    fn wait_for(&self, what: &str, cond: impl Fn(&Loop) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !cond(self) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; output:\n{}",
                self.lines().join("\n")
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn signal(&self, sig: i32) {
        // SAFETY: kill(2) has no memory-safety preconditions.
        let rc = unsafe { libc::kill(self.child.id() as i32, sig) };
        assert_eq!(rc, 0, "kill: {}", std::io::Error::last_os_error());
    }

    /// Waits for the exit code; fails the test after 60 s.
    fn exit_code(mut self) -> i32 {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status
                    .code()
                    .unwrap_or_else(|| panic!("the loop died of a signal: {status:?}"));
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "the loop did not stop; output:\n{}",
                    self.lines().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// Stops a loop with `sig` after some records; checks the exit code and
/// that the saved cursor is just after the last record done. Returns that
/// record.
fn stop_after_some_records(url: &str, sig: i32, expected_code: i32, first: u64) -> u64 {
    let run = Loop::start(url);
    // (The test harness prints "test child_loop ... " before it, on the
    // same line.)
    run.wait_for("the loop to start", |l| {
        l.lines().iter().any(|x| x.contains("starting at record"))
    });
    assert!(
        run.lines()
            .iter()
            .any(|l| l.ends_with(&format!("starting at record {first}"))),
        "resumes at {first}: {:?}",
        run.lines()
    );
    run.wait_for("30 records done", |l| l.done().len() >= 30);
    run.signal(sig);
    let lines = run.lines.clone();
    let code = run.exit_code();
    let lines = lines.lock().unwrap().clone();
    assert_eq!(
        code,
        expected_code,
        "exit code; output:\n{}",
        lines.join("\n")
    );
    let done: Vec<u64> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("done ")?.parse().ok())
        .collect();
    let last = *done.last().expect("records done");
    assert_eq!(done.first(), Some(&first));
    assert!(
        lines.iter().any(|l| l.starts_with("stopped: ")),
        "{lines:?}"
    );

    let job = Ckpt::open(url)
        .unwrap()
        .get_job(graceful::JOB)
        .unwrap()
        .expect("the job exists");
    let cp = job.checkpoint.as_ref().expect("a checkpoint was saved");
    assert_eq!(
        cp.cursor,
        serde_json::json!(last + 1),
        "the cursor is the record after the last one done ({last})"
    );
    assert_eq!(cp.items_processed, last);
    assert_eq!(job.owner, None, "the lease was given up");
    last
}

#[test]
fn sigterm_saves_the_last_processed_position() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("g.db").display());
    let last = stop_after_some_records(&url, libc::SIGTERM, 143, 1);
    let saves = |url: &str| {
        Ckpt::open(url)
            .unwrap()
            .get_job(graceful::JOB)
            .unwrap()
            .unwrap()
            .saves
    };
    // One save in all: the policy alone would have saved nothing yet.
    assert_eq!(saves(&url), 1);

    // The next run resumes right after it; Ctrl-C stops it the same way.
    let last2 = stop_after_some_records(&url, libc::SIGINT, 130, last + 1);
    assert!(last2 > last);
    assert_eq!(saves(&url), 2);
}
