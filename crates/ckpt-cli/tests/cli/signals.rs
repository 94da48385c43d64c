//! Graceful shutdown of `ckpt run`: SIGTERM, SIGINT and SIGHUP stop
//! claiming, let the running commands finish within `--grace`, give back
//! everything not finished (pending again, no attempt counted) and exit 143,
//! 130 or 129, with nothing left running in the store. A rerun completes
//! the rest.

use std::path::PathBuf;
use std::time::Duration;

use crate::util::{assert_each_once, item_counts, items, process_gone, wait_until, Sandbox};

const SIGHUP: i32 = 1;
const SIGINT: i32 = 2;
const SIGTERM: i32 = 15;

/// Each item records "PID ITEM" in `started`. Items named `quick…` then
/// finish at once; the others wait for the file `go`. A finished item logs
/// "ITEM ATTEMPT".
const SCRIPT: &str = r#"echo "$$ $0" >> started
case "$0" in
  quick*) ;;
  *) while [ ! -e go ]; do sleep 0.01; done ;;
esac
echo "$0 $CKPT_ATTEMPT" >> log"#;

fn run_command(sb: &Sandbox, file: &PathBuf, extra: &[&str]) -> crate::util::Ckpt {
    sb.ckpt()
        .args(["run", "--job", "J", "--items"])
        .arg(file)
        .args(["-j", "2"])
        .args(extra)
        .args(["--", "sh", "-c", SCRIPT])
}

/// `(item, attempt)` of the `log` lines.
fn logged(sb: &Sandbox) -> Vec<(String, u32)> {
    sb.lines("log")
        .iter()
        .map(|l| {
            let (item, attempt) = l.split_once(' ').expect("ITEM ATTEMPT");
            (item.to_string(), attempt.parse().expect("an attempt"))
        })
        .collect()
}

/// `(pid, item)` of the `started` lines.
fn started(sb: &Sandbox) -> Vec<(u32, String)> {
    sb.lines("started")
        .iter()
        .map(|l| {
            let (pid, item) = l.split_once(' ').expect("PID ITEM");
            (pid.parse().expect("a pid"), item.to_string())
        })
        .collect()
}

/// `(key, status, attempts)` of every item, read from the store file.
fn stored_items(sb: &Sandbox) -> Vec<(String, String, u32)> {
    let conn =
        rusqlite::Connection::open_with_flags(sb.db(), rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("open the store");
    let mut stmt = conn
        .prepare("SELECT key, status, attempts FROM items ORDER BY id")
        .expect("select items");
    let rows = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .expect("query items");
    rows.map(|r| r.expect("an item")).collect()
}

/// Asserts that every pending item has no attempt counted.
#[track_caller]
fn assert_pending_uncharged(sb: &Sandbox) {
    for (key, status, attempts) in stored_items(sb) {
        if status == "pending" {
            assert_eq!(attempts, 0, "{key} was given back without an attempt");
        }
    }
}

/// Waits until ckpt reports the signal (from then on it starts nothing).
fn wait_for_shutdown(run: &crate::util::Running) {
    wait_until(Duration::from_secs(20), "ckpt to report the signal", || {
        run.stderr_so_far().contains("starting no new item")
    });
}

#[test]
fn sigterm_lets_running_commands_finish_and_gives_back_the_rest() {
    let sb = Sandbox::new();
    let mut all = items("quick", 4);
    all.extend(items("slow", 16));
    let file = sb.write_items("items.txt", &all);

    let run = run_command(&sb, &file, &[]).start();
    wait_until(
        Duration::from_secs(30),
        "4 quick items and 2 slow ones",
        || sb.lines("log").len() == 4 && sb.lines("started").len() == 6,
    );
    run.signal(SIGTERM); // ckpt alone: its commands go on
    wait_for_shutdown(&run);
    sb.write("go", ""); // the two running commands may finish now
    let out = run.wait(Duration::from_secs(60));
    out.code(143);
    assert!(
        out.stderr.contains("stopped by SIGTERM")
            && out.stderr.contains("run the same command again to resume"),
        "a summary says why it stopped, and what to do:\n{}",
        out.stderr
    );

    // The commands that were running finished and count as completed;
    // nothing was started after the signal.
    let log = logged(&sb);
    assert_eq!(log.len(), 6, "{log:?}");
    let running_then: Vec<String> = started(&sb)
        .into_iter()
        .map(|(_, item)| item)
        .filter(|item| item.starts_with("slow"))
        .collect();
    assert_eq!(running_then.len(), 2);
    for item in &running_then {
        assert!(log.contains(&(item.clone(), 1)), "{item} finished: {log:?}");
    }
    assert_eq!(
        sb.lines("started").len(),
        6,
        "nothing started after SIGTERM"
    );
    let status = sb.status("J");
    assert_eq!(item_counts(&status), (14, 0, 6, 0, 0), "{status}");
    assert_pending_uncharged(&sb);

    // The rerun completes the rest and runs no finished item again.
    run_command(&sb, &file, &[]).run().success();
    let log = logged(&sb);
    let names: Vec<String> = log.iter().map(|(i, _)| i.clone()).collect();
    assert_each_once(&names, &all);
    assert!(
        log.iter().all(|(_, a)| *a == 1),
        "first attempts only: {log:?}"
    );
    assert_eq!(item_counts(&sb.status("J")), (0, 0, 20, 0, 0));
}

/// A dropped ssh session: the terminal's SIGHUP stops the run as SIGTERM
/// does, and the same hangup delivered again (by the kernel, then by the
/// shell) does not count as the second signal that kills the commands.
#[test]
fn a_hangup_stops_the_run_gracefully_even_when_delivered_twice() {
    let sb = Sandbox::new();
    let all = items("slow", 6);
    let file = sb.write_items("items.txt", &all);
    let run = run_command(&sb, &file, &[]).sighup_ignored(false).start();
    wait_until(Duration::from_secs(30), "2 items to start", || {
        sb.lines("started").len() == 2
    });
    run.signal(SIGHUP);
    wait_for_shutdown(&run);
    run.signal(SIGHUP);
    // Had the second SIGHUP counted, the commands would be killed now.
    std::thread::sleep(Duration::from_millis(300));
    sb.write("go", "");
    let out = run.wait(Duration::from_secs(60));
    out.code(129);
    assert!(
        out.stderr.contains("SIGHUP received: starting no new item")
            && out.stderr.contains("stopped by SIGHUP")
            && !out.stderr.contains("killing the running commands now"),
        "{}",
        out.stderr
    );
    let log = logged(&sb);
    assert_eq!(log.len(), 2, "the two running commands finished: {log:?}");
    assert_eq!(sb.lines("started").len(), 2, "nothing started after SIGHUP");
    assert_eq!(item_counts(&sb.status("J")), (4, 0, 2, 0, 0));
    assert_pending_uncharged(&sb);
    run_command(&sb, &file, &[]).run().success();
    assert_eq!(item_counts(&sb.status("J")), (0, 0, 6, 0, 0));
}

/// A terminal closed while a stopped run waits for its commands (a Ctrl-C,
/// then the ssh window closed) asks for nothing more: the SIGHUP is not the
/// second signal that kills the commands.
#[test]
fn a_hangup_after_another_signal_is_not_a_second_signal() {
    let sb = Sandbox::new();
    let file = sb.write_items("items.txt", &items("slow", 4));
    let run = run_command(&sb, &file, &[]).sighup_ignored(false).start();
    wait_until(Duration::from_secs(30), "2 items to start", || {
        sb.lines("started").len() == 2
    });
    run.signal(SIGTERM);
    wait_for_shutdown(&run);
    run.signal(SIGHUP);
    std::thread::sleep(Duration::from_millis(300));
    sb.write("go", "");
    let out = run.wait(Duration::from_secs(60));
    out.code(143);
    assert!(
        !out.stderr.contains("killing the running commands now"),
        "{}",
        out.stderr
    );
    assert_eq!(logged(&sb).len(), 2, "the running commands finished");
    assert_eq!(item_counts(&sb.status("J")), (2, 0, 2, 0, 0));
    assert_pending_uncharged(&sb);
}

/// A SIGINT after a SIGHUP is the stop's reason (exit 130), and is passed
/// on to the running commands as a first SIGINT is: they stop now, not
/// after the hour of grace, and their items are given back uncharged.
#[test]
fn a_sigint_after_a_hangup_is_passed_on_to_the_commands() {
    let sb = Sandbox::new();
    let file = sb.write_items("items.txt", &items("slow", 4));
    let run = run_command(&sb, &file, &["--grace", "1h"])
        .sighup_ignored(false)
        .start();
    wait_until(Duration::from_secs(30), "2 items to start", || {
        sb.lines("started").len() == 2
    });
    run.signal(SIGHUP);
    wait_for_shutdown(&run);
    run.signal(SIGINT); // to ckpt alone, as `kill -INT` sends it
    let out = run.wait(Duration::from_secs(60));
    out.code(130);
    assert!(
        out.stderr.contains("passing it on to the running commands")
            && out.stderr.contains("stopped by SIGINT")
            && !out.stderr.contains("killing the running commands now")
            && !out.stderr.contains("item failed"),
        "{}",
        out.stderr
    );
    assert!(sb.lines("log").is_empty(), "the commands were interrupted");
    assert_eq!(item_counts(&sb.status("J")), (4, 0, 0, 0, 0));
    assert_pending_uncharged(&sb);
}

/// `nohup ckpt run …` asks to outlive the terminal: an ignored SIGHUP
/// stays ignored, and the run goes on to the end.
#[test]
fn a_hangup_ignored_at_start_stays_ignored() {
    let sb = Sandbox::new();
    let all = items("slow", 3);
    let file = sb.write_items("items.txt", &all);
    let run = run_command(&sb, &file, &[]).sighup_ignored(true).start();
    wait_until(Duration::from_secs(30), "2 items to start", || {
        sb.lines("started").len() == 2
    });
    run.signal(SIGHUP);
    std::thread::sleep(Duration::from_millis(300));
    sb.write("go", "");
    let out = run.wait(Duration::from_secs(60));
    out.code(0);
    assert!(!out.stderr.contains("SIGHUP"), "{}", out.stderr);
    assert_eq!(logged(&sb).len(), 3);
    assert_eq!(item_counts(&sb.status("J")), (0, 0, 3, 0, 0));
}

/// Stopped while its last items run, which then finish: nothing is left,
/// and the summary does not send the operator to run it again.
#[test]
fn a_stop_that_leaves_nothing_to_do_says_so() {
    let sb = Sandbox::new();
    let all = items("slow", 2);
    let file = sb.write_items("items.txt", &all);
    let run = run_command(&sb, &file, &[]).start();
    wait_until(Duration::from_secs(30), "both items to start", || {
        sb.lines("started").len() == 2
    });
    run.signal(SIGTERM);
    wait_for_shutdown(&run);
    sb.write("go", "");
    let out = run.wait(Duration::from_secs(60));
    out.code(143);
    assert!(
        out.stderr.contains("2 of 2 completed in all")
            && out.stderr.contains("nothing is left to run"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("again"), "{}", out.stderr);
}

#[test]
fn commands_still_running_after_the_grace_period_are_killed_and_their_items_given_back() {
    let sb = Sandbox::new();
    let mut all = items("quick", 2);
    all.extend(items("slow", 4));
    let file = sb.write_items("items.txt", &all);

    let run = run_command(&sb, &file, &["--grace", "1s"]).start();
    wait_until(
        Duration::from_secs(30),
        "2 quick items and 2 slow ones",
        || sb.lines("log").len() == 2 && sb.lines("started").len() == 4,
    );
    run.signal(SIGTERM);
    let out = run.wait(Duration::from_secs(60));
    out.code(143);
    assert!(out.stderr.contains("grace period over"), "{}", out.stderr);
    assert!(!out.stderr.contains("item failed"), "{}", out.stderr);

    let killed: Vec<(u32, String)> = started(&sb)
        .into_iter()
        .filter(|(_, item)| item.starts_with("slow"))
        .collect();
    assert_eq!(killed.len(), 2, "{killed:?}");
    for (pid, item) in &killed {
        assert!(process_gone(*pid), "the command of {item} was killed");
    }
    let status = sb.status("J");
    assert_eq!(item_counts(&status), (4, 0, 2, 0, 0), "{status}");
    assert_pending_uncharged(&sb);

    // The rerun runs the killed items again, as their first attempt.
    sb.write("go", "");
    run_command(&sb, &file, &[]).run().success();
    let log = logged(&sb);
    let names: Vec<String> = log.iter().map(|(i, _)| i.clone()).collect();
    assert_each_once(&names, &all);
    for (_, item) in &killed {
        assert!(
            log.contains(&(item.clone(), 1)),
            "{item} rerun as attempt 1: {log:?}"
        );
    }
    assert_eq!(item_counts(&sb.status("J")), (0, 0, 6, 0, 0));
}

#[test]
fn a_second_signal_kills_the_commands_at_once() {
    let sb = Sandbox::new();
    let all = items("slow", 5);
    let file = sb.write_items("items.txt", &all);

    // A grace period longer than the test's patience.
    let run = run_command(&sb, &file, &["--grace", "1h"]).start();
    wait_until(Duration::from_secs(30), "2 items to start", || {
        sb.lines("started").len() == 2
    });
    run.signal(SIGTERM);
    wait_for_shutdown(&run);
    run.signal(SIGTERM);
    let out = run.wait(Duration::from_secs(60));
    out.code(143);
    assert!(out.stderr.contains("second signal"), "{}", out.stderr);
    // Each item says what stopped it: not the grace period, which was cut.
    assert!(
        out.stderr
            .contains("stopped at shutdown by a second signal")
            && !out.stderr.contains("after the grace period"),
        "{}",
        out.stderr
    );
    for (pid, item) in started(&sb) {
        assert!(process_gone(pid), "the command of {item} was killed");
    }
    assert_eq!(item_counts(&sb.status("J")), (5, 0, 0, 0, 0));
    assert_pending_uncharged(&sb);
    assert!(sb.lines("log").is_empty());
}

#[test]
fn ctrl_c_stops_commands_and_ckpt_together_and_exits_130() {
    let sb = Sandbox::new();
    let all = items("slow", 5);
    let file = sb.write_items("items.txt", &all);

    // As at a terminal: ckpt and its commands in one foreground group.
    let run = run_command(&sb, &file, &[]).own_process_group().start();
    wait_until(Duration::from_secs(30), "2 items to start", || {
        sb.lines("started").len() == 2
    });
    run.signal_group(SIGINT);
    let out = run.wait(Duration::from_secs(60));
    out.code(130);
    assert!(out.stderr.contains("stopped by SIGINT"), "{}", out.stderr);
    // Interrupted, not failed: no attempt is charged.
    assert!(!out.stderr.contains("item failed"), "{}", out.stderr);
    assert_eq!(item_counts(&sb.status("J")), (5, 0, 0, 0, 0));
    assert_pending_uncharged(&sb);

    sb.write("go", "");
    run_command(&sb, &file, &[]).run().success();
    let log = logged(&sb);
    assert!(
        log.iter().all(|(_, a)| *a == 1),
        "first attempts only: {log:?}"
    );
    assert_eq!(log.len(), 5);
}

#[test]
fn a_third_signal_exits_even_while_the_store_is_locked() {
    let sb = Sandbox::new();
    let all = items("slow", 4);
    let file = sb.write_items("items.txt", &all);
    let run = run_command(&sb, &file, &["--grace", "1h"]).start();
    wait_until(Duration::from_secs(30), "2 items to start", || {
        sb.lines("started").len() == 2
    });
    // Another process holds the store's write lock: ckpt can commit nothing
    // and would retry for minutes.
    let locker = rusqlite::Connection::open(sb.db()).unwrap();
    locker.busy_timeout(Duration::from_secs(10)).unwrap();
    locker.execute_batch("BEGIN EXCLUSIVE").unwrap();
    run.signal(SIGTERM);
    wait_for_shutdown(&run);
    run.signal(SIGTERM); // kills the commands
    wait_until(Duration::from_secs(20), "the commands to be killed", || {
        run.stderr_so_far()
            .contains("killing the running commands now")
    });
    let before = std::time::Instant::now();
    run.signal(SIGTERM);
    let out = run.wait(Duration::from_secs(30));
    out.code(143);
    assert!(out.stderr.contains("exiting now"), "{}", out.stderr);
    assert!(before.elapsed() < Duration::from_secs(20));
    locker.execute_batch("ROLLBACK").unwrap();
    drop(locker);

    // What the forced exit left running is taken over by the next run.
    sb.write("go", "");
    run_command(&sb, &file, &[]).run().success();
    assert_eq!(item_counts(&sb.status("J")), (0, 0, 4, 0, 0));
}
