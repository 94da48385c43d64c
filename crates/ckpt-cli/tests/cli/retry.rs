//! Retries, the dead-letter list and exit code 1.

use crate::util::{item_counts, Sandbox};

/// Logs "ITEM ATTEMPT"; item "bad" always fails, any other succeeds.
const BAD_FAILS: &str = r#"echo "$0 $CKPT_ATTEMPT" >> log; [ "$0" != bad ]"#;

#[test]
fn no_retries_item_is_dead_after_one_attempt() {
    let sb = Sandbox::new();
    let file = sb.write_items("items.txt", &["bad".into(), "good".into()]);
    let out = sb
        .ckpt()
        .args(["run", "--job", "J", "--items"])
        .arg(&file)
        .args(["--retries", "0", "--", "sh", "-c", BAD_FAILS])
        .run();
    out.code(1);
    assert!(
        out.stderr
            .contains("job 'J' failed: 1 dead item(s), 1 of 2 completed"),
        "{}",
        out.stderr
    );
    let mut log = sb.lines("log");
    log.sort();
    assert_eq!(log, ["bad 1", "good 1"]);

    let status = sb.status("J");
    assert_eq!(status["status"], "failed");
    assert_eq!(item_counts(&status), (0, 0, 1, 0, 1));

    // A dead item stays dead: the same command runs nothing and still fails.
    let out = sb
        .ckpt()
        .args(["run", "--job", "J", "--items"])
        .arg(&file)
        .args(["--retries", "0", "--", "sh", "-c", BAD_FAILS])
        .run();
    out.code(1);
    assert_eq!(sb.lines("log").len(), 2, "nothing ran again");
}

#[test]
fn one_retry_means_two_attempts_then_dead() {
    let sb = Sandbox::new();
    let file = sb.write_items("items.txt", &["bad".into()]);
    let out = sb
        .ckpt()
        .args(["run", "--job", "J", "--items"])
        .arg(&file)
        .args([
            "--retries",
            "1",
            "--backoff",
            "10ms",
            "--json",
            "--",
            "sh",
            "-c",
            BAD_FAILS,
        ])
        .run();
    out.code(1);
    assert_eq!(sb.lines("log"), ["bad 1", "bad 2"]);
    let doc = out.json();
    assert_eq!(doc["failed_attempts"], 2);
    assert_eq!(doc["dead_now"], 1);
    assert_eq!(doc["completed_now"], 0);
    assert_eq!(doc["status"], "failed");
    assert_eq!(item_counts(&sb.status("J")), (0, 0, 0, 0, 1));
}

#[test]
fn item_failing_once_then_succeeding_completes() {
    let sb = Sandbox::new();
    let file = sb.write_items("items.txt", &["flaky".into(), "steady".into()]);
    // "flaky" fails until its marker file exists; the first attempt makes it.
    let script = r#"
        if [ "$0" = flaky ] && [ ! -e marker ]; then
            : > marker; echo "$0 fail $CKPT_ATTEMPT" >> log; exit 3
        fi
        echo "$0 ok $CKPT_ATTEMPT" >> log"#;
    let out = sb
        .ckpt()
        .args(["run", "--job", "J", "--items"])
        .arg(&file)
        .args([
            "--retries",
            "2",
            "--backoff",
            "10ms",
            "--",
            "sh",
            "-c",
            script,
        ])
        .run();
    out.success();
    let mut log = sb.lines("log");
    log.sort();
    assert_eq!(log, ["flaky fail 1", "flaky ok 2", "steady ok 1"]);
    assert!(
        out.stderr
            .contains("job 'J' completed: 2 items, 2 run now, 1 failed attempts"),
        "{}",
        out.stderr
    );
    let status = sb.status("J");
    assert_eq!(status["status"], "completed");
    assert_eq!(item_counts(&status), (0, 0, 2, 0, 0));
}

#[test]
fn a_child_killed_by_a_signal_counts_as_a_failure() {
    let sb = Sandbox::new();
    let file = sb.write_items("items.txt", &["sig".into()]);
    let out = sb
        .ckpt()
        .args(["run", "--job", "J", "--items"])
        .arg(&file)
        .args(["--retries", "0", "--", "sh", "-c", "kill -TERM $$"])
        .run();
    out.code(1);
    assert!(out.stderr.contains("killed by signal 15"), "{}", out.stderr);
    assert_eq!(item_counts(&sb.status("J")), (0, 0, 0, 0, 1));
}
