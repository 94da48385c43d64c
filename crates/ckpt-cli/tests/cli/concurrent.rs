//! Several `ckpt run` processes on one store and job share the items.

use std::collections::BTreeSet;

use crate::util::{assert_each_once, item_counts, items, Out, Sandbox};

/// Starts `n` copies of `ckpt run --job J -j 2 -- sh -c SCRIPT` at once and
/// waits for all of them.
fn run_together(sb: &Sandbox, n: usize, items_file: &std::path::Path, script: &str) -> Vec<Out> {
    let running: Vec<_> = (0..n)
        .map(|_| {
            sb.ckpt()
                .args(["run", "--job", "J", "--items"])
                .arg(items_file)
                .args(["-j", "2", "--", "sh", "-c", script])
                .start()
        })
        .collect();
    running
        .into_iter()
        .map(|r| r.wait(std::time::Duration::from_secs(60)))
        .collect()
}

#[test]
fn three_processes_run_each_item_exactly_once_in_total() {
    let sb = Sandbox::new();
    // The store exists (a first open of a fresh file by several processes
    // at once is `fresh_store_opened_by_several_processes_at_once`); the job
    // does not: the three enqueue it concurrently.
    sb.ckpt()
        .args(["checkpoint", "set", "setup", "0"])
        .run()
        .success();
    let all = items("w", 60);
    let file = sb.write_items("items.txt", &all);
    // "PARENT_PID ITEM": the parent of the shell is the `ckpt` that ran it.
    let outs = run_together(&sb, 3, &file, r#"echo "$PPID $0" >> log; sleep 0.05"#);
    for out in &outs {
        out.success();
        assert!(
            out.stderr.contains("job 'J' completed: 60 items"),
            "{}",
            out.stderr
        );
    }
    let log = sb.lines("log");
    let ran: Vec<String> = log
        .iter()
        .map(|l| l.split(' ').nth(1).unwrap().to_string())
        .collect();
    assert_each_once(&ran, &all);
    // The work was shared: one process alone would need 1.5 s.
    let runners: BTreeSet<&str> = log.iter().map(|l| l.split(' ').next().unwrap()).collect();
    assert!(runners.len() >= 2, "items ran under {runners:?} only");

    let status = sb.status("J");
    assert_eq!(status["status"], "completed");
    assert_eq!(item_counts(&status), (0, 0, 60, 0, 0));
}

/// Several processes creating the same new store at once: every one must
/// open it. (This once failed a few % of the time: `PRAGMA journal_mode=WAL`
/// does not wait on the busy timeout, and the store probe read its three
/// values in separate snapshots.)
#[test]
fn fresh_store_opened_by_several_processes_at_once() {
    let sb = Sandbox::new();
    let file = sb.write_items("items.txt", &items("f", 4));
    for round in 0..20 {
        let db = sb.join(&format!("round{round}.db"));
        let url = format!("sqlite://{}", db.display());
        // A job each, so that no process waits for another's items.
        let running: Vec<_> = (0..4)
            .map(|p| {
                sb.ckpt_bare()
                    .args(["--store", &url, "run", "--job", &format!("J{p}"), "--items"])
                    .arg(&file)
                    .args(["--", "true"])
                    .start()
            })
            .collect();
        for r in running {
            r.wait(std::time::Duration::from_secs(60)).success();
        }
    }
}
