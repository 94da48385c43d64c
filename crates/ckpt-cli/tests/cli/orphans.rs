//! Commands die with their run: after `kill -9` of `ckpt run`, its
//! commands (even those that reset their environment, and their children)
//! are stopped within about a second by the run's sentinel, on any host;
//! a rerun, on this host or another, never runs an item beside the copy
//! the killed run left; and a run that cannot read another user's `/proc`
//! entries does not take that user's live items.
//!
//! Each command ticks into the ledger `ledger` ([`crate::ledger`]) as it
//! runs, and logs its pids to `pids`.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::ledger::{tick_fn, Ledger};
use crate::postgres::PgSchema;
use crate::redis::RedisPrefix;
use crate::util::{items, process_gone, wait_until, Sandbox};

/// Runs as `env -i PATH=... sh inner.sh KEY`: nothing of ckpt's
/// environment (no `CKPT_WORKER`) is left. It ticks into `ledger` as
/// `HOSTNAME-PID`, every 50 ms: with the file `park` present, while its
/// background `sleep 60` lives; with `slow`, for 3 s; otherwise for 0.2 s.
/// Keys starting `stubborn` ignore SIGTERM (and so do their children);
/// the others tick once more when SIGTERM stops them.
const INNER: &str = concat!(
    r#"KEY=$1 ID="$(uname -n)-$$" LEDGER=ledger
"#,
    tick_fn!(),
    r#"tick
# Is an earlier copy of this item still alive on this host? (A zombie is
# not: it runs no code.)
if [ -e keypids ]; then
  while read -r k p; do
    [ "$k" = "$KEY" ] || continue
    s=$(cut -d' ' -f3 "/proc/$p/stat" 2>/dev/null)
    if [ -n "$s" ] && [ "$s" != Z ]; then echo "$KEY $$ overlaps $p" >> overlaps; fi
  done < keypids
fi
echo "$KEY $$" >> keypids
echo $$ >> pids
case "$KEY" in
  stubborn*) trap '' TERM ;;
  *) trap 'tick; exit 143' TERM ;;
esac
if [ -e park ]; then
  sleep 60 &
  child=$!
  echo $child >> pids
  echo "$KEY $child" >> keypids
  while kill -0 $child 2>/dev/null; do tick; sleep 0.05; done
else
  if [ -e slow ]; then n=60; else n=4; fi
  while [ "$n" -gt 0 ]; do tick; sleep 0.05; n=$((n - 1)); done
fi
tick done
"#
);

/// The command template: the environment reset before the script runs.
fn command(sb: &Sandbox) -> Vec<String> {
    let script = sb.join("inner.sh");
    if !script.exists() {
        sb.write("inner.sh", INNER);
    }
    ["env", "-i", "PATH=/usr/local/bin:/usr/bin:/bin", "sh"]
        .iter()
        .map(|s| s.to_string())
        .chain([script.display().to_string()])
        .collect()
}

/// `ckpt --store URL run --job J --items items.txt ARGS -- COMMAND`,
/// through `wrapper` (see [`Sandbox::ckpt_via`]).
fn run(sb: &Sandbox, url: &str, wrapper: &[&str], args: &[&str]) -> crate::util::Ckpt {
    sb.ckpt_via(wrapper)
        .arg("--store")
        .arg(url)
        .args(["run", "--job", "J", "--items"])
        .arg(sb.join("items.txt"))
        .args(args)
        .arg("--")
        .args(command(sb))
}

fn pids(sb: &Sandbox) -> Vec<u32> {
    sb.lines("pids")
        .iter()
        .map(|l| l.parse().expect("a pid"))
        .collect()
}

/// The ledger of the sandbox's commands.
fn ledger(sb: &Sandbox) -> Ledger {
    Ledger::read(&sb.join("ledger"))
}

/// How many executions started.
fn starts(sb: &Sandbox) -> usize {
    ledger(sb).executions()
}

/// True if the test may use root-only tools; otherwise prints why it is
/// skipped (or fails, under `CKPT_REQUIRE_SERVICES=1`).
fn root(what: &str) -> bool {
    // SAFETY: geteuid(2) has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var("CKPT_REQUIRE_SERVICES").is_ok_and(|v| v == "1") {
        panic!("CKPT_REQUIRE_SERVICES=1 but {what} needs root");
    }
    eprintln!("skipped: {what} needs root");
    false
}

/// Starts a run whose commands park, waits until `n` of them are parked
/// (each with its `sleep`), kills the run with SIGKILL and reaps it.
/// Returns the pids of the parked commands and their children.
fn start_park_and_kill(sb: &Sandbox, url: &str, n: usize, args: &[&str]) -> Vec<u32> {
    sb.write("park", "");
    let mut first = run(sb, url, &[], args).spawn();
    wait_until(
        Duration::from_secs(60),
        &format!("{n} commands to park"),
        || pids(sb).len() >= 2 * n,
    );
    first.kill().expect("SIGKILL ckpt run");
    first.wait().expect("reap ckpt run");
    let parked = pids(sb);
    assert_eq!(parked.len(), 2 * n, "no command started beyond -j");
    parked
}

/// `kill -9` of `ckpt run` whose commands reset their environment, some
/// of them ignoring SIGTERM: every command and child is gone within a
/// bound, with no other ckpt running. Returns how long that took.
fn commands_die_with_their_run(url: &str) -> Duration {
    let sb = Sandbox::new();
    let keys = ["stubborn1", "stubborn2", "k1", "k2"].map(String::from);
    sb.write_items("items.txt", &keys);
    let parked = start_park_and_kill(&sb, url, 4, &["-j", "4"]);
    let killed = Instant::now();
    wait_until(
        Duration::from_secs(20),
        "the killed run's commands to die",
        || parked.iter().all(|&p| process_gone(p)),
    );
    let took = killed.elapsed();
    eprintln!("commands of the killed run gone {took:?} after its death");
    // SIGTERM, 0.5 s, SIGKILL: well under this bound even on a busy machine.
    assert!(took < Duration::from_secs(3), "took {took:?}");
    took
}

#[test]
fn kill9_of_a_sqlite_run_kills_commands_that_reset_their_environment() {
    let sb = Sandbox::new();
    commands_die_with_their_run(&sb.store_url());
}

#[test]
fn kill9_of_a_redis_run_kills_commands_that_reset_their_environment() {
    let Some(redis) = RedisPrefix::new("orphans_die") else {
        return;
    };
    commands_die_with_their_run(&redis.url());
}

#[test]
fn kill9_of_a_postgres_run_kills_commands_that_reset_their_environment() {
    let Some(pg) = PgSchema::new("orphans_die") else {
        return;
    };
    commands_die_with_their_run(&pg.url());
}

/// Kills a run with three parked commands (SIGTERM stops them), reruns the
/// job at once (through `wrapper`), and checks: every item finished, no two
/// executions of one item overlapped, and the only duplicates are the
/// parked items. Returns the rerun's stderr.
fn rerun_after_kill9(sb: &Sandbox, url: &str, wrapper: &[&str], args: &[&str]) -> String {
    let keys = items("k", 6);
    sb.write_items("items.txt", &keys);
    let mut all_args = vec!["-j", "3"];
    all_args.extend_from_slice(args);
    start_park_and_kill(sb, url, 3, &all_args);
    assert_eq!(starts(sb), 3);
    std::fs::remove_file(sb.join("park")).unwrap();
    let out = run(sb, url, wrapper, &all_args).run();
    out.success();
    let ledger = ledger(sb);
    ledger.assert_no_overlap("rerun after kill -9");
    ledger.assert_completed("rerun after kill -9", &keys);
    assert_eq!(
        ledger.duplicates(),
        3,
        "the 3 parked items ran again, nothing else: {ledger:?}"
    );
    assert_eq!(sb.lines("overlaps"), Vec::<String>::new());
    out.stderr.clone()
}

#[test]
fn rerun_on_the_same_host_after_kill9_never_overlaps_on_sqlite() {
    let sb = Sandbox::new();
    let began = Instant::now();
    let stderr = rerun_after_kill9(&sb, &sb.store_url(), &[], &[]);
    // Taken over at once (the owner and its sentinel are gone), not after
    // the 30 s lease.
    assert!(stderr.contains("owner process is gone"), "{stderr}");
    assert!(began.elapsed() < Duration::from_secs(25));
}

#[test]
fn rerun_on_the_same_host_after_kill9_never_overlaps_on_redis() {
    let Some(redis) = RedisPrefix::new("orphans_rerun") else {
        return;
    };
    let sb = Sandbox::new();
    let began = Instant::now();
    let stderr = rerun_after_kill9(&sb, &redis.url(), &[], &[]);
    assert!(stderr.contains("owner process is gone"), "{stderr}");
    assert!(began.elapsed() < Duration::from_secs(25));
}

#[test]
fn rerun_on_the_same_host_after_kill9_never_overlaps_on_postgres() {
    let Some(pg) = PgSchema::new("orphans_rerun") else {
        return;
    };
    let sb = Sandbox::new();
    let began = Instant::now();
    rerun_after_kill9(&sb, &pg.url(), &[], &[]);
    assert!(began.elapsed() < Duration::from_secs(25));
}

/// Kills a run whose three parked commands ignore SIGTERM (the sentinel
/// needs its SIGKILL, 0.5 s later) and reruns at once on this host: the
/// rerun must wait for the sentinel before it takes the items over. Each
/// command checks, as it starts, that no earlier copy of its item is alive.
fn rerun_waits_for_the_sentinel(url: &str) {
    let sb = Sandbox::new();
    let keys = items("stubborn", 3);
    sb.write_items("items.txt", &keys);
    start_park_and_kill(&sb, url, 3, &["-j", "3"]);
    std::fs::remove_file(sb.join("park")).unwrap();
    run(&sb, url, &[], &["-j", "3"]).run().success();
    assert_eq!(sb.lines("overlaps"), Vec::<String>::new());
    let ledger = ledger(&sb);
    ledger.assert_no_overlap("rerun after the sentinel");
    ledger.assert_completed("rerun after the sentinel", &keys);
    for (key, runs) in &ledger.by_key {
        assert_eq!(runs.len(), 2, "{key}: {runs:?}");
        assert!(!runs[0].done, "killed by SIGKILL: {runs:?}");
        assert!(runs[1].done, "rerun to its end: {runs:?}");
    }
}

#[test]
fn rerun_on_the_same_host_waits_for_the_sentinel_on_sqlite() {
    let sb = Sandbox::new();
    rerun_waits_for_the_sentinel(&sb.store_url());
}

#[test]
fn rerun_on_the_same_host_waits_for_the_sentinel_on_redis() {
    let Some(redis) = RedisPrefix::new("orphans_wait") else {
        return;
    };
    rerun_waits_for_the_sentinel(&redis.url());
}

#[test]
fn rerun_on_the_same_host_waits_for_the_sentinel_on_postgres() {
    let Some(pg) = PgSchema::new("orphans_wait") else {
        return;
    };
    rerun_waits_for_the_sentinel(&pg.url());
}

/// `unshare` gives the rerun other UTS and pid namespaces: another host
/// name and host tag, and no sight of the killed run's processes.
const OTHER_HOST: &[&str] = &[
    "unshare",
    "--uts",
    "--pid",
    "--fork",
    "--mount-proc",
    "sh",
    "-c",
    r#"hostname ckpt-other-host && exec "$@""#,
    "sh",
];

#[test]
fn rerun_on_another_host_after_kill9_waits_for_the_lease_and_never_overlaps() {
    if !root("a rerun in other namespaces (unshare)") {
        return;
    }
    let sb = Sandbox::new();
    rerun_on_another_host(&sb, &sb.store_url());
}

/// On PostgreSQL the killed run's session ends at once; the rerun on
/// another host still waits out the session grace, by which time the
/// sentinel has long killed the orphans.
#[test]
fn rerun_on_another_host_after_kill9_never_overlaps_on_postgres() {
    if !root("a rerun in other namespaces (unshare)") {
        return;
    }
    let Some(pg) = PgSchema::new("other_host") else {
        return;
    };
    rerun_on_another_host(&Sandbox::new(), &pg.url());
}

#[test]
fn rerun_on_another_host_after_kill9_never_overlaps_on_redis() {
    if !root("a rerun in other namespaces (unshare)") {
        return;
    }
    let Some(r) = RedisPrefix::new("other_host") else {
        return;
    };
    rerun_on_another_host(&Sandbox::new(), &r.url());
}

fn rerun_on_another_host(sb: &Sandbox, url: &str) {
    let stderr = rerun_after_kill9(sb, url, OTHER_HOST, &["--lease", "3s"]);
    // It could not see the killed run's pid: the lease had to expire.
    assert!(!stderr.contains("owner process is gone"), "{stderr}");
    let ledger = ledger(sb);
    let gaps = ledger.handovers_ms();
    assert_eq!(gaps.len(), 3, "{ledger:?}");
    for gap in gaps {
        // The lease is renewed every lease/3 or so: at least ~2 s were left.
        assert!(
            gap > 1000.0,
            "rerun {gap:.0} ms after the orphan ended: {ledger:?}"
        );
    }
}

/// Mounts a private `/proc` with `hidepid=2` and runs as `nobody`: the
/// processes of other users are invisible, though `kill(pid, 0)` still
/// finds them (EPERM).
const HIDEPID_NOBODY: &[&str] = &[
    "unshare",
    "--mount",
    "--propagation",
    "private",
    "--fork",
    "sh",
    "-c",
    r#"mount -t proc -o hidepid=2 proc /proc && exec setpriv --reuid=65534 --regid=65534 --clear-groups "$@""#,
    "sh",
];

/// Makes `name` in the sandbox a file every user may write.
fn shared_file(sb: &Sandbox, name: &str) -> PathBuf {
    let path = sb.write(name, "");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
    path
}

#[test]
fn a_run_that_cannot_see_another_users_live_run_does_not_take_its_items() {
    if !root("running as two users with /proc mounted hidepid=2") {
        return;
    }
    let sb = Sandbox::new();
    std::fs::set_permissions(sb.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
    // SQLite gives the -wal and -shm files the database file's mode.
    shared_file(&sb, "ckpt.db");
    shared_file(&sb, "ledger");
    shared_file(&sb, "pids");
    sb.write("slow", "");
    let keys = items("h", 4);
    sb.write_items("items.txt", &keys);
    let url = sb.store_url();

    // Run A (root) runs all four items for 3 s each.
    let a = run(&sb, &url, &[], &["-j", "4"]).start();
    wait_until(Duration::from_secs(60), "run A to start 4 items", || {
        starts(&sb) == 4
    });
    // Run B (nobody, /proc hidden) finds A's items held by a process it
    // cannot inspect: it must wait for A, not take them over.
    let b = run(&sb, &url, HIDEPID_NOBODY, &["-j", "4"]).start();
    let b = b.wait(Duration::from_secs(120));
    let a = a.wait(Duration::from_secs(60));
    a.success();
    b.success();
    assert!(!b.stderr.contains("owner process is gone"), "{}", b.stderr);
    assert!(!b.stderr.contains("took over"), "{}", b.stderr);
    let ledger = ledger(&sb);
    ledger.assert_no_overlap("hidden /proc");
    ledger.assert_completed("hidden /proc", &keys);
    assert_eq!(ledger.duplicates(), 0, "each item ran once, in run A");
}

/// The sentinel goes by a name of its own, so that `killall -9 ckpt`
/// (which matches process names) kills the runs and leaves their
/// sentinels to kill the commands.
#[test]
fn the_sentinel_is_named_apart_from_the_run() {
    let sb = Sandbox::new();
    sb.write("items.txt", "a\n");
    let mut running = sb
        .ckpt()
        .args(["run", "--job", "N", "--items"])
        .arg(sb.join("items.txt"))
        .args(["--", "sh", "-c", "echo started > started; sleep 30"])
        .spawn();
    wait_until(Duration::from_secs(30), "the command to start", || {
        sb.join("started").exists()
    });
    let run = running.id();
    let sentinel = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            // ppid is the 4th field, after the parenthesised name.
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse::<u32>().ok());
            ppid == Some(run) && cmdline.windows(10).any(|w| w == b"__sentinel")
        })
        .expect("the run's sentinel");
    let comm = std::fs::read_to_string(format!("/proc/{sentinel}/comm")).unwrap();
    assert_eq!(comm.trim_end(), "ckpt-sentinel");
    let comm = std::fs::read_to_string(format!("/proc/{run}/comm")).unwrap();
    assert_eq!(comm.trim_end(), "ckpt");
    // Killed alone, as `killall -9 ckpt` would: the sentinel ends the
    // command, then itself.
    running.kill().unwrap();
    running.wait().unwrap();
    wait_until(Duration::from_secs(10), "the sentinel to end", || {
        process_gone(sentinel)
    });
}
