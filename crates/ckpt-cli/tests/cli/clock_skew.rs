//! Chaos: runs whose clocks disagree by 45 s share one job on PostgreSQL
//! and on Redis, and no item runs twice at the same time.
//!
//! Run A has the system clock; run B runs under `faketime -f '+45s'` and
//! run C under `faketime -f '-45s'` (libfaketime, Debian's `faketime`
//! package, which `.ci/run` installs; `FAKETIME_DONT_FAKE_MONOTONIC=1`):
//! real processes whose wall clocks are really wrong. Leases are judged by the server's clock, so B does not
//! take A's live items (its clock says their leases ran out 40 s ago), and
//! C's leases do not end before they begin. Each command is the ledger's
//! [`RECORDER`] ticking with the real clock (`LEDGER_DATE`: `env -u
//! LD_PRELOAD -u FAKETIME date`, as the commands of B and C inherit the
//! fake clock), so each execution is an interval; the test asserts that
//! every item completed and no two executions of one item overlap.
//!
//! Skipped, with the reason printed, when `faketime` or the server is
//! missing, unless `CKPT_REQUIRE_SERVICES=1`.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::ledger::{Ledger, RECORDER};
use crate::postgres::PgSchema;
use crate::redis::RedisPrefix;
use crate::util::{item_counts, items, wait_until, Sandbox, BIN};

/// The clock of every command: the real one, under `faketime` too.
const REAL_DATE: &str = "env -u LD_PRELOAD -u FAKETIME date +%s%N";

/// True if `faketime` shifts this machine's clock for a child process
/// (the `ckpt` binary included: it reads the clock through libc, which
/// libfaketime intercepts); prints why not, or panics under
/// `CKPT_REQUIRE_SERVICES=1`.
fn faketime_works() -> bool {
    let shifted = Command::new("faketime")
        .args(["-f", "+1d", "date", "+%s"])
        .output();
    let real = chrono_now();
    let ok = match &shifted {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse::<i64>()
            .is_ok_and(|t| (t - real - 86_400).abs() < 60),
        _ => false,
    };
    if !ok {
        let why = format!("faketime is missing or does not shift the clock ({shifted:?})");
        if std::env::var("CKPT_REQUIRE_SERVICES").is_ok_and(|v| v == "1") {
            panic!("CKPT_REQUIRE_SERVICES=1 but {why}; apt-get install faketime");
        }
        eprintln!("skipped: {why}");
    }
    ok
}

fn chrono_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A `ckpt run` (under `faketime` or not) leading a process group of its
/// own, killed with its commands when dropped (`faketime` forks: killing
/// it alone would orphan `ckpt`).
struct Run {
    name: &'static str,
    child: Child,
    status: Option<std::process::ExitStatus>,
}

impl Run {
    /// `ckpt --store URL run --job J --items items.txt -j 2 --lease 6s --
    /// sh -c RECORDER`, under `faketime -f SHIFT` when given, its commands
    /// ticking for 2 s into `ledger` as `NAME-PID-ATTEMPT`; output to
    /// `NAME.out`/`NAME.err` in the sandbox.
    fn start(sb: &Sandbox, url: &str, name: &'static str, shift: Option<&str>) -> Run {
        use std::os::unix::process::CommandExt;
        let mut cmd = match shift {
            Some(shift) => {
                let mut c = Command::new("faketime");
                // Only the wall clock: a host whose date is wrong. (A
                // shifted CLOCK_MONOTONIC would also break the process's
                // own timed waits, which the kernel times by the real
                // one: Rust's futex-based `Condvar::wait_timeout` then
                // waits 45 s too long, or not at all.)
                c.args(["-f", shift, BIN])
                    .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
                c
            }
            None => Command::new(BIN),
        };
        cmd.current_dir(sb.path())
            .env_remove("CKPT_STORE")
            .env_remove("RUST_LOG")
            .env("LEDGER", sb.join("ledger"))
            .env("TICKS", "40")
            .env("HOST_TAG", name)
            .env("LEDGER_DATE", REAL_DATE)
            .args(["--store", url, "run", "--job", "J", "--items"])
            .arg(sb.join("items.txt"))
            .args(["-j", "2", "--lease", "6s", "--", "sh", "-c", RECORDER])
            .args(["_", "{}"])
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(sb.join(&format!("{name}.out"))).unwrap())
            .stderr(std::fs::File::create(sb.join(&format!("{name}.err"))).unwrap());
        Run {
            name,
            child: cmd.spawn().expect("start ckpt run"),
            status: None,
        }
    }

    /// True once the run exited.
    fn done(&mut self) -> bool {
        if self.status.is_none() {
            self.status = self.child.try_wait().expect("wait for ckpt run");
        }
        self.status.is_some()
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        if !self.done() {
            // SAFETY: kill(2) has no memory-safety preconditions.
            unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
            let _ = self.child.wait();
        }
    }
}

/// How many items the runs share: two first claims' worth (a run with
/// `-j 2` claims up to 10 ahead), so that the last run finds none pending.
const ITEMS: usize = 20;

/// The runs start one after the other, each once the ledger shows the
/// previous one running commands: C (-45 s) claims first, then A (system
/// clock), then B (+45 s), which finds nothing pending. Where leases were
/// judged by each claimer's clock, A took C's live items at once (C's
/// leases had ended 39 s before they were written) and B took A's (by B's
/// clock they had ended 39 s ago): both overlapped.
fn skewed_runs_never_overlap(url: &str) {
    let sb = Sandbox::new();
    let all = items("clk", ITEMS);
    sb.write_items("items.txt", &all);
    let ledger = || Ledger::read(&sb.join("ledger"));
    let started = |run: &str| {
        ledger()
            .by_key
            .values()
            .flatten()
            .any(|e| e.id.starts_with(&format!("{run}-")))
    };
    let c = Run::start(&sb, url, "c", Some("-45s"));
    wait_until(Duration::from_secs(30), "run C starts commands", || {
        started("c")
    });
    let a = Run::start(&sb, url, "a", None);
    wait_until(Duration::from_secs(30), "run A starts commands", || {
        started("a")
    });
    let b = Run::start(&sb, url, "b", Some("+45s"));
    let mut runs = [c, a, b];
    let started = Instant::now();
    while !runs.iter_mut().all(Run::done) && started.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let unfinished: Vec<_> = runs
        .iter_mut()
        .filter_map(|r| (!r.done()).then_some(r.name))
        .collect();
    let failed: Vec<String> = runs
        .iter()
        .filter(|r| r.status.is_some_and(|s| !s.success()))
        .map(|r| {
            let err = std::fs::read_to_string(sb.join(&format!("{}.err", r.name)));
            format!("run {} {:?}: {}", r.name, r.status, err.unwrap_or_default())
        })
        .collect();
    drop(runs);
    // Overlaps first: they are what the suite is about.
    ledger().assert_no_overlap(&format!(
        "{url} (runs unfinished after 120 s: {unfinished:?})"
    ));
    assert!(
        unfinished.is_empty(),
        "runs {unfinished:?} did not finish in 120 s"
    );
    assert!(failed.is_empty(), "{failed:#?}");
    let ledger = ledger();
    ledger.assert_completed(url, &all);
    let status = sb
        .ckpt_bare()
        .args(["--store", url, "status", "J", "--json"])
        .run();
    status.success();
    let status = status.json();
    assert_eq!(status["status"], "completed");
    assert_eq!(item_counts(&status), (0, 0, ITEMS as u64, 0, 0));
    let dups = ledger.duplicates();
    let ran: Vec<String> = ["c", "a", "b"]
        .iter()
        .map(|name| {
            let err = std::fs::read_to_string(sb.join(&format!("{name}.err"))).unwrap();
            let n = err
                .split(" run now")
                .next()
                .and_then(|head| head.rsplit(' ').next())
                .unwrap_or("?")
                .to_string();
            format!("{name}={n}")
        })
        .collect();
    eprintln!(
        "{url}: {ITEMS} items, {} executions (by run: {}), {dups} sequential re-runs, 0 overlaps",
        ITEMS + dups,
        ran.join(" ")
    );
}

#[test]
fn postgres_runs_45s_ahead_and_behind_never_overlap() {
    if !faketime_works() {
        return;
    }
    let Some(pg) = PgSchema::new("clock_skew") else {
        return;
    };
    skewed_runs_never_overlap(&pg.url());
}

#[test]
fn redis_runs_45s_ahead_and_behind_never_overlap() {
    if !faketime_works() {
        return;
    }
    let Some(prefix) = RedisPrefix::new("clock_skew") else {
        return;
    };
    skewed_runs_never_overlap(&prefix.url());
}

/// The premise of the suite: `faketime` really shifts the clock of the
/// `ckpt` binary (which reads it through libc). A SQLite store has no
/// clock of its own, so there the shift shows: a checkpoint set under
/// `+1d` is dated a day ahead.
#[test]
fn faketime_shifts_the_ckpt_binary_clock() {
    if !faketime_works() {
        return;
    }
    let sb = Sandbox::new();
    let out = Command::new("faketime")
        .args(["-f", "+1d", BIN, "--store"])
        .arg(sb.store_url())
        .args(["checkpoint", "set", "J", "1"])
        .current_dir(sb.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let conn = rusqlite::Connection::open(sb.db()).unwrap();
    let saved: i64 = conn
        .query_row("SELECT checkpoint_at FROM jobs WHERE name = 'J'", [], |r| {
            r.get(0)
        })
        .unwrap();
    let real = chrono_now() * 1000;
    assert!(
        (saved - real - 86_400_000).abs() < 60_000,
        "saved at {saved}, real {real}"
    );
}
