//! Progress of `ckpt run` when stderr is not a terminal: a plain line per
//! interval (`--progress-interval`, hidden, for tests), counting what
//! earlier runs completed; nothing with `--quiet`.

use std::path::PathBuf;
use std::time::Duration;

use crate::util::{items, wait_until, Running, Sandbox};

/// Items named `old…` finish at once; the others log their start in
/// `started` and wait for the file `go`.
const SCRIPT: &str = r#"case "$0" in
  old*) ;;
  *) echo "$0" >> started; while [ ! -e go ]; do sleep 0.01; done ;;
esac"#;

fn run(sb: &Sandbox, file: &PathBuf, extra: &[&str]) -> crate::util::Ckpt {
    sb.ckpt()
        .args(["run", "--job", "J", "--items"])
        .arg(file)
        .args(["-j", "2"])
        .args(extra)
        .args(["--", "sh", "-c", SCRIPT])
}

fn progress_lines(stderr: &str) -> Vec<String> {
    stderr
        .lines()
        .filter(|l| l.starts_with("ckpt: J: ") && l.contains(" done ("))
        .map(str::to_string)
        .collect()
}

/// The first run completes the 30 `old` items; the items file then gains
/// 10 new ones, which wait for `go`.
fn resumable_job(sb: &Sandbox) -> PathBuf {
    let old = items("old", 30);
    let first = sb.write_items("first.txt", &old);
    run(sb, &first, &[]).run().success();
    let mut all = old;
    all.extend(items("new", 10));
    sb.write_items("items.txt", &all)
}

fn wait_for_lines(run: &Running, n: usize) {
    wait_until(Duration::from_secs(30), "progress lines", || {
        progress_lines(&run.stderr_so_far()).len() >= n
    });
}

#[test]
fn progress_lines_count_what_earlier_runs_completed() {
    let sb = Sandbox::new();
    let file = resumable_job(&sb);

    let running = run(&sb, &file, &["--progress-interval", "50ms"]).start();
    wait_for_lines(&running, 3);
    // None of the new items can finish before `go`: the job stands at the
    // first run's 30 of 40.
    let lines = progress_lines(&running.stderr_so_far());
    for line in &lines {
        assert!(
            line.starts_with("ckpt: J: 30/40 done (75.0%), "),
            "progress counts the earlier run: {line}"
        );
        assert!(
            line.contains(" items/s, eta ") && line.ends_with(", 0 dead, 0 failed attempts"),
            "{line}"
        );
    }
    sb.write("go", "");
    let out = running.wait(Duration::from_secs(60));
    out.success();
    assert!(
        out.stderr.contains("completed: 40 items, 10 run now"),
        "{}",
        out.stderr
    );
}

#[test]
fn quiet_prints_no_progress_and_no_summary() {
    let loud = Sandbox::new();
    let quiet = Sandbox::new();
    let loud_file = resumable_job(&loud);
    let quiet_file = resumable_job(&quiet);

    let interval = ["--progress-interval", "20ms"];
    let loud_run = run(&loud, &loud_file, &interval).start();
    let quiet_run = run(&quiet, &quiet_file, &[&interval[..], &["--quiet"]].concat()).start();
    // Once the quiet run is running items, give it the time in which the
    // loud one prints 3 more lines.
    wait_until(
        Duration::from_secs(30),
        "the quiet run to start items",
        || quiet.lines("started").len() >= 2,
    );
    let before = progress_lines(&loud_run.stderr_so_far()).len();
    wait_for_lines(&loud_run, before + 3);
    quiet.write("go", "");
    loud.write("go", "");
    let out = quiet_run.wait(Duration::from_secs(60));
    out.success();
    assert_eq!(out.stderr, "", "--quiet printed something");
    loud_run.wait(Duration::from_secs(60)).success();

    // Errors still reach stderr with --quiet.
    let bad = quiet.write_items("bad.txt", &["broken".to_string()]);
    let out = quiet
        .ckpt()
        .args(["run", "--job", "B", "--items"])
        .arg(&bad)
        .args(["--retries", "0", "--quiet", "--", "false"])
        .run();
    out.code(1);
    assert!(out.stderr.contains("1 dead item"), "{}", out.stderr);
    assert!(progress_lines(&out.stderr).is_empty());
}
