//! A run stopped with SIGSTOP past its lease (alone, or with its whole
//! process group), a second run takes its items over, then SIGCONT: the
//! stopped run's commands must be gone before the second run starts them.

use std::time::Duration;

use super::{recorder_run, ChaosStore, Ledger};
use crate::util::{items, wait_until, Sandbox};

const SIGSTOP: i32 = libc::SIGSTOP;
const SIGCONT: i32 = libc::SIGCONT;

/// Whom the SIGSTOP and SIGCONT reach.
#[derive(Clone, Copy, Debug)]
enum Target {
    /// `kill -STOP PID`: ckpt alone; its commands run on.
    Run,
    /// `kill -STOP -PGID`: ckpt and whatever shares its process group.
    Group,
}

fn sigstop_past_the_lease(sb: &Sandbox, store: Option<ChaosStore>, target: Target) {
    let Some(store) = store else { return };
    let keys = items("s", 6);
    let file = sb.write_items("items.txt", &keys);
    let ledger = sb.join("ledger");
    // Executions of 4 s (80 ticks) under a 2 s lease.
    let a = recorder_run(sb, &store, &file, "2s", 2, 80, "A")
        .own_process_group()
        .start();
    wait_until(Duration::from_secs(30), "run A to start two items", || {
        Ledger::read(&ledger)
            .by_key
            .values()
            .filter(|e| !e.is_empty())
            .count()
            >= 2
    });
    let pid = a.pid() as i32;
    let signal = |sig| match target {
        Target::Run => a.signal(sig),
        Target::Group => a.signal_group(sig),
    };
    signal(SIGSTOP);
    let b = recorder_run(sb, &store, &file, "2s", 2, 80, "B").start();
    // Stopped well past its lease: B takes its items over meanwhile.
    std::thread::sleep(Duration::from_secs(5));
    signal(SIGCONT);
    let out_b = b.wait(Duration::from_secs(120));
    let out_a = a.wait(Duration::from_secs(120));
    out_b.no_panic();
    out_a.no_panic();
    assert_eq!(out_b.code, 0, "run B: {}", out_b.stderr);
    assert_eq!(out_a.code, 0, "run A (pid {pid}): {}", out_a.stderr);
    // A says what it did when it woke up: its leases were lost.
    assert!(
        out_a.stderr.contains(r#"event="lease_lost""#),
        "run A logged no lease_lost: {}",
        out_a.stderr
    );
    // Two items were running in A at the stop: those run again. Allow two
    // more: on a loaded machine a renewal of B's late by over 0.7 s makes B
    // stop one of its own items (a re-run, never an overlap).
    Ledger::read(&ledger).assert_sound(&format!("sigstop {target:?}"), &keys, 4);
}

#[test]
fn sigstop_of_a_run_on_sqlite() {
    let sb = Sandbox::new();
    sigstop_past_the_lease(&sb, ChaosStore::sqlite(&sb), Target::Run);
}

#[test]
fn sigstop_of_a_run_on_postgres() {
    let sb = Sandbox::new();
    sigstop_past_the_lease(&sb, ChaosStore::postgres("stop_run"), Target::Run);
}

#[test]
fn sigstop_of_a_run_on_redis() {
    let sb = Sandbox::new();
    sigstop_past_the_lease(&sb, ChaosStore::redis("stop_run"), Target::Run);
}

/// Behind a transaction-mode pooler there are no liveness sessions: the
/// lease and the stopped run's self-fencing are all that keep B off A's
/// items.
#[test]
fn sigstop_of_a_run_through_pgbouncer() {
    let sb = Sandbox::new();
    sigstop_past_the_lease(&sb, ChaosStore::pgbouncer("stop_run_pooled"), Target::Run);
}

#[test]
fn sigstop_of_a_process_group_on_sqlite() {
    let sb = Sandbox::new();
    sigstop_past_the_lease(&sb, ChaosStore::sqlite(&sb), Target::Group);
}

#[test]
fn sigstop_of_a_process_group_on_postgres() {
    let sb = Sandbox::new();
    sigstop_past_the_lease(&sb, ChaosStore::postgres("stop_group"), Target::Group);
}

#[test]
fn sigstop_of_a_process_group_through_pgbouncer() {
    let sb = Sandbox::new();
    sigstop_past_the_lease(
        &sb,
        ChaosStore::pgbouncer("stop_group_pooled"),
        Target::Group,
    );
}

#[test]
fn sigstop_of_a_process_group_on_redis() {
    let sb = Sandbox::new();
    sigstop_past_the_lease(&sb, ChaosStore::redis("stop_group"), Target::Group);
}

/// A run stopped (SIGSTOP) past its lease, alone: its sentinel stops the
/// commands at their deadline, and they exit 0 on that SIGTERM. Woken up,
/// ckpt must not take those exits for completions: each first attempt
/// fails, and the retry runs the command to its end. Every item completed
/// is one whose command finished.
#[test]
fn exits_after_the_sentinel_stopped_a_paused_run_are_not_completions() {
    let sb = Sandbox::new();
    let keys = items("p", 2);
    let file = sb.write_items("items.txt", &keys);
    // Writes "started ITEM", then "done ITEM" only if it ran to the end.
    let script = r#"trap 'exit 0' TERM
echo "started $0" >> started
sleep 3 & wait
echo "done $0" >> done"#;
    let run = sb
        .ckpt()
        .args([
            "run",
            "--job",
            "P",
            "-j",
            "2",
            "--lease",
            "2s",
            "--backoff",
            "0s",
        ])
        .arg("--items")
        .arg(&file)
        .args(["--", "sh", "-c", script])
        .start();
    wait_until(Duration::from_secs(30), "both commands to start", || {
        sb.lines("started").len() >= 2
    });
    run.signal(SIGSTOP);
    // Past the lease: the sentinel sends SIGTERM, and the commands exit 0.
    std::thread::sleep(Duration::from_secs(4));
    run.signal(SIGCONT);
    let out = run.wait(Duration::from_secs(60));
    out.no_panic();
    assert_eq!(out.code, 0, "{}", out.stderr);
    let done = sb.lines("done");
    for (key, item) in crate::util::stored_items(&sb, "P") {
        assert_eq!(item["status"], "completed", "{key}: {item}");
        assert!(
            done.contains(&format!("done {key}")),
            "{key} completed, but its command never finished: {item}; done: {done:?}"
        );
        assert!(item["attempts"].as_u64() >= Some(2), "{key}: {item}");
    }
}

/// A run stopped (SIGSTOP) past its lease, alone, with items claimed ahead
/// and not started: woken up, it must neither start them under the lapsed
/// lease (to have them killed at once) nor charge them for the pause. Only
/// the items running at the stop may fail; the others run to their end.
#[test]
fn items_claimed_ahead_are_not_charged_for_a_pause() {
    let sb = Sandbox::new();
    let keys = items("q", 4);
    let file = sb.write_items("items.txt", &keys);
    let script = r#"echo "started $0" >> started
sleep 3
echo "done $0" >> done"#;
    let run = sb
        .ckpt()
        .args(["run", "--job", "Q", "-j", "2", "--lease", "2s"])
        .args(["--retries", "0"])
        .arg("--items")
        .arg(&file)
        .args(["--", "sh", "-c", script])
        .start();
    wait_until(Duration::from_secs(30), "two commands to start", || {
        sb.lines("started").len() >= 2
    });
    run.signal(SIGSTOP);
    let running = sb.lines("started");
    std::thread::sleep(Duration::from_secs(4));
    run.signal(SIGCONT);
    let out = run.wait(Duration::from_secs(60));
    out.no_panic();
    let done = sb.lines("done");
    let mut waiting = 0;
    for (key, item) in crate::util::stored_items(&sb, "Q") {
        if running.contains(&format!("started {key}")) {
            continue;
        }
        waiting += 1;
        assert_eq!(item["status"], "completed", "{key}: {item}\n{}", out.stderr);
        assert!(done.contains(&format!("done {key}")), "{key}: {item}");
    }
    assert_eq!(waiting, 2, "started at the stop: {running:?}");
}
