//! `ckpt run --timeout`, `--no-retry-exit` and `--halt` (GNU parallel's
//! names): a command that runs too long is killed with its descendants, a
//! final exit code is not retried, and a halted run leaves its unstarted
//! items pending and uncharged for the run that continues it.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::util::{items, process_gone, stored_items, wait_until, Sandbox};

/// `key -> (status, attempts, last_error)` from `ckpt items --json`.
fn stored(sb: &Sandbox, job: &str) -> BTreeMap<String, (String, u64, Option<String>)> {
    stored_items(sb, job)
        .into_iter()
        .map(|(key, i)| {
            let status = i["status"].as_str().unwrap().to_string();
            let error = i["last_error"].as_str().map(str::to_string);
            (key, (status, i["attempts"].as_u64().unwrap(), error))
        })
        .collect()
}

/// How many times each item's command ran (lines of `log` naming it).
fn runs(sb: &Sandbox) -> BTreeMap<String, usize> {
    let mut n = BTreeMap::new();
    for line in sb.lines("log") {
        let key = line
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string();
        *n.entry(key).or_default() += 1;
    }
    n
}

#[test]
fn timeout_kills_a_command_that_ignores_sigterm_and_its_children() {
    let sb = Sandbox::new();
    let file = sb.write_items("items.txt", &["quick".into(), "stuck".into()]);
    // `stuck` and its child `sleep` ignore SIGTERM (an ignored signal stays
    // ignored across fork and exec): only the SIGKILL to the process group
    // ends them. Each attempt records both pids.
    let script = r#"echo "$0 $CKPT_ATTEMPT" >> log
[ "$0" = quick ] && exit 0
trap '' TERM
sleep 60 &
echo "$$ $!" >> pids
wait $!"#;
    let out = sb
        .ckpt()
        .args(["run", "--job", "T", "--items"])
        .arg(&file)
        .args([
            "-j",
            "2",
            "--timeout",
            "1s",
            "--retries",
            "1",
            "--backoff",
            "50ms",
        ])
        .args(["--", "sh", "-c", script])
        .run();
    out.code(1);
    let items = stored(&sb, "T");
    assert_eq!(items["quick"].0, "completed");
    assert_eq!(
        items["stuck"],
        ("dead".into(), 2, Some("timed out after 1s".into())),
        "retried once like any failure, then dead with the timeout as its error"
    );
    assert_eq!(runs(&sb)["stuck"], 2);
    let pids = sb.lines("pids");
    assert_eq!(pids.len(), 2, "two attempts: {pids:?}");
    for line in pids {
        for pid in line.split_whitespace() {
            let pid: u32 = pid.parse().unwrap();
            assert!(
                process_gone(pid),
                "process {pid} of a timed-out command lives on"
            );
        }
    }
    // `ckpt show` names the error too.
    let show = sb.ckpt().args(["show", "T"]).run();
    show.success();
    assert!(
        show.stdout.contains("timed out after 1s"),
        "{}",
        show.stdout
    );
}

#[test]
fn a_failed_attempt_also_kills_what_left_its_process_group() {
    // `set -m` puts the background `sleep` in a process group of its own
    // (as a wrapper that calls setpgid does); it ignores SIGTERM. Each
    // attempt first looks whether the previous attempt's `sleep` still
    // runs: it must not, since the item's retry would run beside it.
    let sb = Sandbox::new();
    let file = sb.write_items("items.txt", &["stuck".into()]);
    let script = r#"set -m
if [ -s left ]; then
    p=$(cat left)
    if [ -e /proc/$p ] && ! grep -q ') Z' /proc/$p/stat; then echo "overlap $p" >> log; fi
fi
echo "attempt $CKPT_ATTEMPT" >> log
trap '' TERM
sleep 60 &
echo $! > left
echo $! >> pids
wait $!"#;
    let out = sb
        .ckpt()
        .args(["run", "--job", "G", "--items"])
        .arg(&file)
        .args(["--timeout", "1s", "--retries", "1", "--backoff", "50ms"])
        .args(["--", "bash", "-c", script])
        .run();
    out.code(1);
    assert_eq!(
        sb.lines("log"),
        vec!["attempt 1".to_string(), "attempt 2".to_string()],
        "the retry ran beside the first attempt's leftover"
    );
    let pids = sb.lines("pids");
    assert_eq!(pids.len(), 2, "{pids:?}");
    for pid in pids {
        let pid: u32 = pid.parse().unwrap();
        assert!(
            process_gone(pid),
            "process {pid}, out of its command's group, lives on"
        );
    }
}

#[test]
fn no_retry_exit_makes_the_item_dead_at_once_and_keeps_the_reason() {
    let sb = Sandbox::new();
    let file = sb.write_items("items.txt", &["ok".into(), "final".into(), "flaky".into()]);
    let script = r#"echo "$0 $CKPT_ATTEMPT" >> log
case "$0" in final) exit 3 ;; flaky) exit 4 ;; esac"#;
    let out = sb
        .ckpt()
        .args(["run", "--job", "N", "--items"])
        .arg(&file)
        .args([
            "--retries",
            "2",
            "--backoff",
            "10ms",
            "--no-retry-exit",
            "3,5",
        ])
        .args(["--", "sh", "-c", script])
        .run();
    out.code(1);
    let items = stored(&sb, "N");
    assert_eq!(items["ok"].0, "completed");
    assert_eq!(
        items["final"],
        (
            "dead".into(),
            1,
            Some("exit status 3 (--no-retry-exit: not retried)".into())
        )
    );
    assert_eq!(
        items["flaky"],
        ("dead".into(), 3, Some("exit status 4".into())),
        "another exit code is retried as usual"
    );
    let runs = runs(&sb);
    assert_eq!((runs["final"], runs["flaky"]), (1, 3));
}

/// Items `ok-…` succeed; `bad-…` fail while the file `broken` exists. Each
/// run logs "ITEM ATTEMPT".
const FLAKY_SCRIPT: &str = r#"echo "$0 $CKPT_ATTEMPT" >> log
case "$0" in bad*) [ -e broken ] && exit 1 ;; esac
exit 0"#;

#[test]
fn halt_soon_leaves_the_rest_pending_uncharged_and_a_rerun_continues() {
    let sb = Sandbox::new();
    sb.write("broken", "");
    let mut all = items("ok-a", 3);
    all.extend(items("bad-", 3));
    all.extend(items("ok-b", 12));
    let file = sb.write_items("items.txt", &all);
    let run = |extra: &[&str]| {
        sb.ckpt()
            .args(["run", "--job", "H", "--items"])
            .arg(&file)
            .args(["-j", "1", "--retries", "0"])
            .args(extra)
            .args(["--", "sh", "-c", FLAKY_SCRIPT])
            .run()
    };
    let out = run(&["--halt", "soon,fail=2", "--json"]);
    out.code(1);
    for part in [
        "job 'H' halted: 2 failures (--halt soon,fail=2); 3 completed now,",
        "2 failed attempts (",
        "13 item(s) left, run the same command again to continue; 2 dead item(s): see `ckpt status H`",
    ] {
        assert!(
            out.stderr.contains(part),
            "the summary says why it halted:\n{}",
            out.stderr
        );
    }
    let doc = out.json();
    assert_eq!(doc["halted"], "2 failures (--halt soon,fail=2)");
    assert_eq!(doc["stopped_by"], serde_json::Value::Null);
    assert_eq!(
        doc["status"], "running",
        "a halted run leaves its job running"
    );
    let items = stored(&sb, "H");
    assert_eq!(items["bad-1"].0, "dead");
    assert_eq!(items["bad-2"].0, "dead");
    // Nothing started after the second failure, and what the run had
    // claimed ahead went back with no attempt charged.
    let pending: Vec<_> = items
        .iter()
        .filter(|(_, (status, _, _))| status == "pending")
        .collect();
    assert_eq!(pending.len(), 13, "{items:?}");
    assert!(
        pending.iter().all(|(_, (_, attempts, _))| *attempts == 0),
        "unstarted items are uncharged: {items:?}"
    );
    assert!(!runs(&sb).contains_key("bad-3"));

    // The cause fixed, the dead items re-driven, the same command finishes
    // the rest; nothing that completed runs again.
    std::fs::remove_file(sb.join("broken")).unwrap();
    sb.ckpt().args(["retry", "H"]).run().success();
    run(&["--halt", "soon,fail=2"]).success();
    let items = stored(&sb, "H");
    assert!(
        items.values().all(|(s, _, _)| s == "completed"),
        "{items:?}"
    );
    let runs = runs(&sb);
    for key in &all {
        let expected = if key == "bad-1" || key == "bad-2" {
            2
        } else {
            1
        };
        assert_eq!(runs[key], expected, "{key} ran {} time(s)", runs[key]);
    }
}

#[test]
fn halt_now_stops_running_commands_and_gives_their_items_back() {
    let sb = Sandbox::new();
    let all: Vec<String> = ["slow", "bad-0", "later-0", "later-1"]
        .map(String::from)
        .into();
    let file = sb.write_items("items.txt", &all);
    // `slow` would complete after 30 s unless stopped; `bad-0` fails once
    // `slow` has started.
    let script = r#"echo "$0 $CKPT_ATTEMPT" >> log
case "$0" in
  slow) echo $$ > slow.pid; i=0; while [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done ;;
  bad*) while [ ! -e slow.pid ]; do sleep 0.01; done; exit 1 ;;
esac"#;
    let out = sb
        .ckpt()
        .args(["run", "--job", "K", "--items"])
        .arg(&file)
        .args(["-j", "2", "--retries", "3", "--no-retry-exit", "1"])
        .args(["--halt", "now,fail=1", "--", "sh", "-c", script])
        .run();
    out.code(1);
    assert!(
        out.stderr.contains("halted: 1 failure (--halt now,fail=1)"),
        "{}",
        out.stderr
    );
    let slow: u32 = sb.lines("slow.pid")[0].parse().unwrap();
    wait_until(
        Duration::from_secs(10),
        "the killed command to be reaped",
        || process_gone(slow),
    );
    let items = stored(&sb, "K");
    assert_eq!(items["bad-0"].0, "dead");
    // The killed command's item is given back, as at a shutdown: it did
    // not fail, the halt stopped it.
    assert_eq!(items["slow"].0, "pending");
    assert_eq!(
        items["slow"].1, 0,
        "the killed item is not charged: {items:?}"
    );
    assert_eq!(items["later-0"], ("pending".into(), 0, None));
    assert_eq!(items["later-1"], ("pending".into(), 0, None));
    assert!(!runs(&sb).contains_key("later-0"));
}

#[test]
fn halt_on_success_exits_0_and_bad_halt_values_are_usage_errors() {
    let sb = Sandbox::new();
    let all: Vec<String> = ["bad-1", "ok-1", "ok-2", "ok-3"].map(String::from).into();
    let file = sb.write_items("items.txt", &all);
    sb.write("broken", "");
    let run = |extra: &[&str]| {
        sb.ckpt()
            .args(["run", "--job", "S", "--items"])
            .arg(&file)
            .args(["-j", "1", "--retries", "0"])
            .args(extra)
            .args(["--", "sh", "-c", FLAKY_SCRIPT])
            .run()
    };
    // GNU parallel's `-1` is soon,success=1: the goal reached, exit 0.
    let out = run(&["--halt", "-1"]);
    out.success();
    assert!(
        out.stderr
            .contains("halted: 1 success (--halt soon,success=1)"),
        "{}",
        out.stderr
    );
    let items = stored(&sb, "S");
    assert_eq!(items["bad-1"].0, "dead");
    assert_eq!(items["ok-1"].0, "completed");
    assert_eq!(items["ok-2"], ("pending".into(), 0, None));
    assert_eq!(items["ok-3"], ("pending".into(), 0, None));

    for bad in [
        &["--halt", "soon,fail=0"][..],
        &["--halt", "later,fail=1"],
        &["--timeout", "0s"],
        &["--timeout", "18446744073709551615s"],
        &["--backoff", "18446744073709551615s"],
        &["--lease", "200years"],
        // Exit 0 completes an item; no process exits with more than 255.
        &["--no-retry-exit", "0"],
        &["--no-retry-exit", "3,256"],
    ] {
        let err = run(bad).error(2);
        assert!(err.contains(bad[0]), "{bad:?}: {err}");
    }
}

/// Many programs exit 0 when told to stop (`trap 'exit 0' TERM`), their
/// work unfinished: an exit 0 after ckpt's own SIGTERM is not a completion.
/// A timed-out item fails with the timeout; an item stopped by `--halt now`
/// or at the end of `--grace` is given back uncharged.
#[test]
fn a_command_that_exits_0_when_told_to_stop_is_not_completed() {
    let sb = Sandbox::new();
    // Writes "done ITEM" only if it ran to the end.
    let script = r#"trap 'exit 0' TERM
echo $$ > "$0.pid"
case "$0" in
  bad) while [ ! -e slow.pid ]; do sleep 0.01; done; exit 1 ;;
  *) sleep 30 & wait ;;
esac
echo "done $0" >> log"#;
    let run = |job: &str, items: &[&str], extra: &[&str]| {
        let list: Vec<String> = items.iter().map(|s| s.to_string()).collect();
        let file = sb.write_items(&format!("{job}.txt"), &list);
        sb.ckpt()
            .args(["run", "--job", job, "--items"])
            .arg(&file)
            .args(["--retries", "0"])
            .args(extra)
            .args(["--", "sh", "-c", script])
    };

    run("T", &["slow"], &["--timeout", "1s"]).run().code(1);
    assert_eq!(
        stored(&sb, "T")["slow"],
        ("dead".into(), 1, Some("timed out after 1s".into()))
    );

    let _ = std::fs::remove_file(sb.join("slow.pid"));
    run("H", &["slow", "bad"], &["-j", "2", "--halt", "now,fail=1"])
        .run()
        .code(1);
    let halted = stored(&sb, "H");
    assert_eq!(halted["bad"].0, "dead");
    assert_eq!(halted["slow"], ("pending".into(), 0, None), "{halted:?}");

    let _ = std::fs::remove_file(sb.join("slow.pid"));
    let running = run("G", &["slow"], &["--grace", "500ms"]).start();
    wait_until(Duration::from_secs(30), "the command to start", || {
        sb.join("slow.pid").exists()
    });
    running.signal(15);
    running.wait(Duration::from_secs(30)).code(143);
    assert_eq!(stored(&sb, "G")["slow"], ("pending".into(), 0, None));

    assert!(sb.lines("log").is_empty(), "{:?}", sb.lines("log"));
}

/// A halt that fires on the job's last item stops nothing: the run ends as
/// it would have without it (status, summary and exit code), rather than
/// asking for a rerun with nothing left to do.
#[test]
fn a_halt_on_the_last_item_ends_the_run_as_usual() {
    let sb = Sandbox::new();
    let file = sb.write_items("items.txt", &items("ok", 3));
    let out = sb
        .ckpt()
        .args(["run", "--job", "D", "--items"])
        .arg(&file)
        .args(["--halt", "soon,done=100%", "--", "true"])
        .run();
    out.success();
    assert!(
        out.stderr.contains("job 'D' completed: 3 items"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("halted:"), "{}", out.stderr);

    let file = sb.write_items("last.txt", &["ok-1".into(), "bad".into()]);
    let out = sb
        .ckpt()
        .args(["run", "--job", "F", "--items"])
        .arg(&file)
        .args(["-j", "1", "--retries", "0", "--halt", "soon,fail=1"])
        .args(["--", "sh", "-c", r#"[ "$0" != bad ]"#])
        .run();
    out.code(1);
    assert!(
        out.stderr.contains("job 'F' failed: 1 dead item(s)"),
        "{}",
        out.stderr
    );
    assert!(
        !out.stderr.contains("run the same command again"),
        "{}",
        out.stderr
    );
}
