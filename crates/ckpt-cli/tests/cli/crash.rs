//! A `ckpt run` killed with SIGKILL: its children die with it, and the next
//! run on this host takes over its items at once and finishes the job.

use std::collections::BTreeSet;
use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};

use crate::util::{counts, item_counts, items, process_gone, wait_until, Sandbox};

const SIGKILL: i32 = 9;

/// Each item records "PID ITEM" in `started`, waits while the file `go` is
/// missing, then logs the item. Removing `go` parks the items that start
/// afterwards, so the test knows some are in flight when it kills the run.
const SCRIPT: &str = r#"echo "$$ $0" >> started
while [ ! -e go ]; do sleep 0.01; done
sleep 0.05
echo "$0" >> log"#;

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
    assert_eq!(
        status.signal(),
        Some(SIGKILL),
        "killed by SIGKILL: {status:?}"
    );

    // The killed run's children die with it (PR_SET_PDEATHSIG): the parked
    // ones would otherwise loop until `go` exists again.
    let started = sb.lines("started");
    let pids: Vec<u32> = started
        .iter()
        .map(|l| l.split(' ').next().unwrap().parse().expect("a pid"))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !pids.iter().all(|&p| process_gone(p)) {
        if Instant::now() > deadline {
            let alive: Vec<u32> = pids.iter().copied().filter(|&p| !process_gone(p)).collect();
            for pid in &alive {
                let _ = std::process::Command::new("kill")
                    .args(["-9", &pid.to_string()])
                    .status();
            }
            panic!("children of the killed run still alive 10 s after the kill: {alive:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let logged_by_first = sb.lines("log");
    let parked: Vec<String> = started
        .iter()
        .skip(started_before)
        .map(|l| l.split(' ').nth(1).unwrap().to_string())
        .collect();
    assert!(!parked.is_empty());
    for item in &parked {
        assert!(
            !logged_by_first.contains(item),
            "parked item {item} was logged before the rerun"
        );
    }

    // The same command again finishes the job promptly: the dead run's
    // leases (30 s) are taken over at once because its pid is gone.
    sb.write("go", "");
    let began = Instant::now();
    let out = command().run();
    let took = began.elapsed();
    out.success();
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
    // (finished, but its completion not yet committed).
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
    for item in &parked {
        assert_eq!(times[item], 1, "parked item {item} ran once, in the rerun");
    }
}
