//! `ckpt run` rides out a failover: a private primary with a streaming
//! standby (`pg_basebackup -R`, each on a spare port), one run given both
//! hosts (`target_session_attrs=read-write`), the primary stopped mid-run
//! (immediate shutdown) and the standby promoted (`pg_ctl promote`).
//!
//! What asynchronous replication can lose is made to happen rather than
//! hoped for: the primary's WAL sender is stopped (SIGSTOP) first, so the
//! primary goes on committing what the standby never receives, as when a
//! standby has fallen behind. Asynchronously, those commits are
//! acknowledged: completions ckpt was told were saved are gone after the
//! failover, and those items run again. With a synchronous standby they
//! are never acknowledged (they wait for the standby), so ckpt retries
//! them on the new primary and no item that ran to its end runs again.
//!
//! A planned switchover (`pg_ctl stop -m fast`: the primary ships all
//! its WAL first) loses nothing, even asynchronously.
//!
//! The writes the old primary had and the standby lacked are found
//! exactly: once the run is over, the old primary is started again, alone,
//! and its items compared with the standby's at promotion.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::ledger::{Ledger, RECORDER};
use crate::pg_restart::PrivateCluster;
use crate::util::{item_counts, items, process_gone, wait_until, Sandbox};

const ITEMS: usize = 300;
const WORKERS: usize = 8;

/// How the primary goes away.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Scenario {
    /// Asynchronous replication; the WAL sender stalls, then the primary
    /// dies (immediate shutdown).
    AsyncCrash,
    /// The same with a synchronous standby (`synchronous_standby_names`,
    /// `synchronous_commit = on`).
    SyncCrash,
    /// A planned switchover: asynchronous replication, `pg_ctl stop -m
    /// fast` (sessions end with 57P01; the primary ships all its WAL
    /// before it stops), and a URL without `target_session_attrs`.
    Switchover,
}

/// Each item's (status, claims) on a server, by key: two servers agree on
/// an item if and only if they saw the same claims and the same end.
fn item_rows(cluster: &PrivateCluster) -> BTreeMap<String, (String, i64)> {
    cluster
        .sql("SELECT key, status, claims FROM ckpt.items")
        .lines()
        .map(|line| {
            let f: Vec<&str> = line.split('|').collect();
            assert_eq!(f.len(), 3, "an items row: {line}");
            (f[0].to_string(), (f[1].to_string(), f[2].parse().unwrap()))
        })
        .collect()
}

fn completed(rows: &BTreeMap<String, (String, i64)>) -> BTreeSet<String> {
    rows.iter()
        .filter(|(_, (status, _))| status == "completed")
        .map(|(key, _)| key.clone())
        .collect()
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

fn signal(pid: i32, signal: i32) {
    // SAFETY: kill(2) has no memory-safety preconditions.
    let rc = unsafe { libc::kill(pid, signal) };
    assert_eq!(rc, 0, "kill {pid}: {}", std::io::Error::last_os_error());
}

/// An immediate shutdown of the primary (SIGQUIT to the server) whose WAL
/// sender is stopped, then SIGKILL to the sender: not one byte more
/// reaches the standby. (The sender is killed after the shutdown began:
/// a child killed before would make the server restart instead.)
fn kill_primary_with_stalled_sender(primary: &PrivateCluster, sender: i32) {
    let pid = primary.postmaster_pid().expect("the primary runs");
    signal(pid, libc::SIGQUIT);
    signal(sender, libc::SIGKILL);
    wait_until(Duration::from_secs(30), "the primary to stop", || {
        process_gone(pid as u32)
    });
}

/// Waits until the standby has replayed all it received: its replay
/// position stays put for half a second. (Not "replayed up to received":
/// the WAL may end inside a record, which is never replayed.)
fn wait_replayed(standby: &PrivateCluster) {
    let mut last = (String::new(), 0);
    wait_until(
        Duration::from_secs(30),
        "the standby to replay all it received",
        || {
            std::thread::sleep(Duration::from_millis(100));
            let now = standby.sql("SELECT pg_last_wal_replay_lsn()");
            last = if now == last.0 {
                (now, last.1 + 1)
            } else {
                (now, 0)
            };
            last.1 >= 5
        },
    );
}

/// The standby falls behind (the primary's WAL sender stops), the primary
/// commits on for a while, then dies.
fn stall_and_crash(case: Scenario, primary: &PrivateCluster, standby: &PrivateCluster) {
    let sender: i32 = primary
        .sql("SELECT pid FROM pg_stat_replication")
        .parse()
        .expect("one WAL sender");
    signal(sender, libc::SIGSTOP);
    if case == Scenario::SyncCrash {
        // Commits wait for the standby: not acknowledged, not yet visible.
        wait_until(
            Duration::from_secs(30),
            "a commit to wait for the standby",
            || {
                std::thread::sleep(Duration::from_millis(50));
                primary.sql("SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'SyncRep'")
                    != "0"
            },
        );
    } else {
        // Commits go on: completions the standby will never see.
        wait_until(
            Duration::from_secs(30),
            "the primary to complete items the standby has not received",
            || {
                std::thread::sleep(Duration::from_millis(50));
                completed(&item_rows(primary)).len() > completed(&item_rows(standby)).len()
            },
        );
    }
    std::thread::sleep(Duration::from_millis(500));
    kill_primary_with_stalled_sender(primary, sender);
}

fn failover(case: Scenario) {
    let scenario = match case {
        Scenario::AsyncCrash => "failover, async replication, primary crashed",
        Scenario::SyncCrash => "failover, synchronous standby, primary crashed",
        Scenario::Switchover => "switchover, async replication, fast stop, any host",
    };
    let Some(primary) = PrivateCluster::start() else {
        return;
    };
    let standby = PrivateCluster::standby_of(&primary);
    if case == Scenario::SyncCrash {
        // Set after the copy, so that the promoted standby does not wait
        // for a standby of its own.
        primary.sql("ALTER SYSTEM SET synchronous_standby_names = '*'");
        primary.sql("SELECT pg_reload_conf()");
        wait_until(
            Duration::from_secs(30),
            "the standby to be synchronous",
            || primary.sql("SELECT sync_state FROM pg_stat_replication") == "sync",
        );
    }
    let url = format!(
        "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/postgres?{}connect_timeout=2",
        primary.port(),
        standby.port(),
        // A switchover is also run without it, as through a name that
        // moves to the new primary: the standby is then reached before its
        // promotion, and its refusals (25006) are an outage too.
        if case == Scenario::Switchover {
            ""
        } else {
            "target_session_attrs=read-write&"
        }
    );
    let sb = Sandbox::new();
    let keys = items("f", ITEMS);
    let file = sb.write_items("items.txt", &keys);
    let ledger = sb.join("ledger");
    let run = sb
        .ckpt_bare()
        .args(["--store", &url, "run", "--job", "J", "--items"])
        .arg(&file)
        .args(["-j", &WORKERS.to_string(), "--retries", "10", "--"])
        .args(["sh", "-c", RECORDER, "_", "{}"])
        .env("LEDGER", &ledger)
        .env("TICKS", "2")
        .env("HOST_TAG", "run")
        .start();
    wait_until(
        Duration::from_secs(60),
        "a quarter of the items to complete",
        || Ledger::read(&ledger).completed() >= ITEMS / 4,
    );

    if case == Scenario::Switchover {
        primary.pg_ctl_stop("fast");
    } else {
        stall_and_crash(case, &primary, &standby);
    }
    let killed_at = now_ns();
    wait_replayed(&standby);
    let shipped = item_rows(&standby);
    standby.promote();

    let out = run.wait(Duration::from_secs(120));
    assert_eq!(out.code, 0, "{scenario}: the run failed: {}", out.stderr);
    let status = sb
        .ckpt_bare()
        .args(["--store", &standby.url(), "status", "J", "--json"])
        .run();
    status.success();
    let status = status.json();
    assert_eq!(status["status"], "completed", "{scenario}: {status}");
    assert_eq!(
        item_counts(&status),
        (0, 0, ITEMS as u64, 0, 0),
        "{scenario}"
    );

    // The old primary, alone now, shows every write it committed.
    primary.pg_ctl_start();
    let had = item_rows(&primary);
    let lost: BTreeSet<String> = had
        .iter()
        .filter(|(key, row)| shipped.get(*key) != Some(*row))
        .map(|(key, _)| key.clone())
        .collect();
    let lost_completions = completed(&had).difference(&completed(&shipped)).count();

    let ledger = Ledger::read(&ledger);
    // Items that ran again after an execution that ran to its end, and
    // after one that did not (stopped by its fence, or cut short).
    let mut after_done = BTreeSet::new();
    let mut after_unfinished = BTreeSet::new();
    for (key, execs) in &ledger.by_key {
        for pair in execs.windows(2) {
            if pair[0].done {
                after_done.insert(key.clone());
            } else {
                after_unfinished.insert(key.clone());
            }
        }
    }
    let in_flight = ledger
        .by_key
        .values()
        .filter(|execs| {
            execs
                .iter()
                .any(|e| e.first_ns <= killed_at && (!e.done || e.last_ns >= killed_at))
        })
        .count();
    eprintln!(
        "{}; writes lost {} (completions {}), re-runs after a completed execution {}, after an unfinished one {}, in flight at the stop {in_flight}",
        ledger.summary(scenario, &keys),
        lost.len(),
        lost_completions,
        after_done.len(),
        after_unfinished.len(),
    );

    // Nothing lost: every item ran to its end, and only the given ones.
    ledger.assert_completed(scenario, &keys);
    // A completion the standby had is never undone.
    let shipped_done = completed(&shipped);
    let rerun: Vec<_> = after_done
        .iter()
        .chain(&after_unfinished)
        .filter(|k| shipped_done.contains(*k))
        .collect();
    assert!(
        rerun.is_empty(),
        "{scenario}: completed on the standby, yet ran again: {rerun:?}"
    );
    // A completed item runs again only if its writes were among those
    // the standby never received.
    let unexplained: Vec<_> = after_done.difference(&lost).collect();
    assert!(
        unexplained.is_empty(),
        "{scenario}: ran again after completing, though the standby had all its writes: {unexplained:?}"
    );
    // The work cut short is at most what was in flight.
    assert!(
        after_unfinished.len() <= WORKERS,
        "{scenario}: {} items re-ran after an unfinished execution, more than the {WORKERS} workers",
        after_unfinished.len()
    );
    match case {
        Scenario::SyncCrash => {
            ledger.assert_no_overlap(scenario);
            assert!(
                after_done.is_empty(),
                "{scenario}: acknowledged completions ran again: {after_done:?}"
            );
        }
        Scenario::Switchover => {
            ledger.assert_no_overlap(scenario);
            assert!(lost.is_empty(), "{scenario}: writes lost: {lost:?}");
            assert!(
                after_done.is_empty(),
                "{scenario}: completions ran again: {after_done:?}"
            );
        }
        Scenario::AsyncCrash => assert!(
            !after_done.is_empty() && lost_completions > 0,
            "{scenario}: the primary acknowledged completions the standby never received, \
             yet none ran again; the stall did not happen as planned"
        ),
    }
}

#[test]
fn a_run_rides_out_a_failover_with_asynchronous_replication() {
    failover(Scenario::AsyncCrash);
}

#[test]
fn a_run_rides_out_a_failover_with_a_synchronous_standby() {
    failover(Scenario::SyncCrash);
}

#[test]
fn a_run_rides_out_a_planned_switchover() {
    failover(Scenario::Switchover);
}
