//! A `ckpt run` killed with SIGKILL: the next run on this host kills the
//! commands the dead run left behind, takes its items over at once (not
//! after the 30 s lease) and finishes the job.

use std::collections::BTreeSet;
use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};

use crate::util::{counts, item_counts, items, process_gone, wait_until, Sandbox};

const SIGKILL: i32 = 9;

/// Each item records "PID ITEM" in `started`, waits while the file `go` is
/// missing, then logs the item. Removing `go` parks the items that start
/// afterwards, so the test knows which are in flight when it kills the run.
const SCRIPT: &str = r#"echo "$$ $0" >> started
while [ ! -e go ]; do sleep 0.01; done
sleep 0.05
echo "$0" >> log"#;

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

#[test]
fn sigkill_mid_run_then_rerun_takes_over_and_completes() {
    let sb = Sandbox::new();
    let all = items("c", 40);
    let file = sb.write_items("items.txt", &all);
    sb.write("go", "");
    let command = || {
        sb.ckpt()
            .args(["run", "--job", "J", "--items"])
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
    let status = first.wait().unwrap(); // reaped: its pid is gone, not a zombie
    assert_eq!(status.signal(), Some(SIGKILL), "{status:?}");
    let parked: Vec<(u32, String)> = started(&sb).split_off(started_before);
    assert!(!parked.is_empty());

    // The same command again, with the parked commands of the dead run still
    // waiting for `go`: the rerun kills them before taking their items over.
    let began = Instant::now();
    let rerun = command().start();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !parked.iter().all(|(pid, _)| process_gone(*pid)) {
        if Instant::now() > deadline {
            let alive: Vec<u32> = parked
                .iter()
                .map(|(pid, _)| *pid)
                .filter(|&pid| !process_gone(pid))
                .collect();
            for pid in &alive {
                let _ = std::process::Command::new("kill")
                    .args(["-9", &pid.to_string()])
                    .status();
            }
            sb.write("go", "");
            let out = rerun.wait(Duration::from_secs(30));
            panic!(
                "commands of the killed run still alive 10 s into the rerun: {alive:?}\n{}",
                out.stderr
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let logged_by_first = sb.lines("log");
    sb.write("go", "");
    let out = rerun.wait(Duration::from_secs(60));
    let took = began.elapsed();
    out.success();
    // The dead run's leases (30 s) are taken over at once: its pid is gone.
    assert!(
        took < Duration::from_secs(15),
        "the rerun took {took:?}; it waited for a lease?"
    );
    assert!(
        out.stderr.contains("owner process is gone"),
        "the rerun took the dead run's items over:\n{}",
        out.stderr
    );

    let status = sb.status("J");
    assert_eq!(status["status"], "completed");
    assert_eq!(item_counts(&status), (0, 0, 40, 0, 0));

    // Every item logged; an item logged twice was logged by the killed run
    // (finished, but its completion not yet committed when it was killed).
    let log = sb.lines("log");
    let times = counts(&log);
    let expected: BTreeSet<&String> = all.iter().collect();
    let got: BTreeSet<&String> = times.keys().collect();
    assert_eq!(got, expected, "every item ran, nothing else was logged");
    for (item, n) in &times {
        assert!(*n <= 2, "{item} ran {n} times");
        if *n == 2 {
            assert!(
                logged_by_first.contains(item),
                "{item} ran twice but not in the killed run"
            );
        }
    }
    // The parked commands were killed, not left to finish beside their retry.
    for (_, item) in &parked {
        assert_eq!(times[item], 1, "parked item {item} ran once, in the rerun");
    }
}
