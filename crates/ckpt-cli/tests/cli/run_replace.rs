//! `ckpt run`: GNU parallel's replacement strings, `--colsep` and
//! `--dry-run`.

use std::collections::{BTreeMap, BTreeSet};

use std::time::Duration;

use serde_json::{json, Value};

use crate::util::{process_gone, stored_items, wait_until, Sandbox};

/// Appends its arguments, joined by `|`, as one line to `log`.
const LOG_ARGS: &str = r#"IFS='|'; echo "$*" >> log"#;

fn sorted(mut lines: Vec<String>) -> Vec<String> {
    lines.sort();
    lines
}

#[test]
fn path_replacement_strings_reach_the_command() {
    let sb = Sandbox::new();
    let file = sb.write(
        "items.txt",
        "dir/x.tar.gz\nplain\na.b/c\n.bashrc\nsub/dir/\n",
    );
    sb.ckpt()
        .args(["run", "--job", "J", "--items"])
        .arg(&file)
        .args(["--", "sh", "-c", LOG_ARGS, "_"])
        .args(["{}", "{.}", "{/}", "{//}", "{/.}", "<{q}>"])
        .run()
        .success();
    assert_eq!(
        sorted(sb.lines("log")),
        [
            ".bashrc||.bashrc|.||<'.bashrc'>",
            "a.b/c|a.b/c|c|a.b|c|<'a.b/c'>",
            "dir/x.tar.gz|dir/x.tar|x.tar.gz|dir|x.tar|<'dir/x.tar.gz'>",
            "plain|plain|plain|.|plain|<'plain'>",
            "sub/dir/|sub/dir/||sub||<'sub/dir/'>",
        ]
    );
}

#[test]
fn unknown_patterns_are_left_alone_and_the_item_appended() {
    let sb = Sandbox::new();
    let file = sb.write("items.txt", "it\n");
    sb.ckpt()
        .args(["run", "--job", "J", "--items"])
        .arg(&file)
        .args(["--", "sh", "-c", LOG_ARGS, "_"])
        .args(["{x}", "{", "{0}", "{=uc=}", "${HOME}", "{1x}"])
        .run()
        .success();
    assert_eq!(sb.lines("log"), ["{x}|{|{0}|{=uc=}|${HOME}|{1x}|it"]);
}

/// `{#}` is the item's line in this run's input (blank lines counted, a
/// repeated key at its first line); an item resumed by a later run takes
/// its line in that run's input, and one not in it gets 0.
#[test]
fn line_number_is_the_line_in_this_runs_input() {
    let sb = Sandbox::new();
    // c and d fail (dead) until `ok` exists.
    let cmd = [
        "sh",
        "-c",
        r#"case "$1" in c|d) [ -e ok ] || exit 1;; esac; echo "$1 $2" >> log"#,
        "_",
        "{}",
        "{#}",
    ];
    let first = sb.write("first.txt", "a\n\nb\na\nc\nd\n");
    sb.ckpt()
        .args(["run", "--job", "J", "--retries", "0", "-q", "--items"])
        .arg(&first)
        .arg("--")
        .args(cmd)
        .run()
        .code(1);
    assert_eq!(sorted(sb.lines("log")), ["a 1", "b 3"]);

    std::fs::remove_file(sb.join("log")).unwrap();
    sb.write("ok", "");
    sb.ckpt().args(["retry", "J"]).run().success();
    // c moved to line 3; d is not in this input at all.
    let second = sb.write("second.txt", "x\nb\n\nc\n");
    sb.ckpt()
        .args(["run", "--job", "J", "-q", "--items"])
        .arg(&second)
        .arg("--")
        .args(cmd)
        .run()
        .success();
    assert_eq!(sorted(sb.lines("log")), ["c 4", "d 0", "x 1"]);
}

/// With `-j 3`, `{%}` takes every value of 1..=3 and never one that a
/// command still running holds: each command holds a lock directory named
/// after its slot (mkdir fails if it exists) and logs when it held it.
#[test]
fn slot_numbers_are_one_to_j_and_never_shared() {
    let sb = Sandbox::new();
    let items: Vec<String> = (1..=18).map(|i| format!("i{i}")).collect();
    let file = sb.write_items("items.txt", &items);
    let script = r#"
        mkdir "held-$1" || echo "clash $1" >> clashes
        start=$(date +%s%N)
        sleep 0.15
        end=$(date +%s%N)
        rmdir "held-$1"
        echo "$1 $start $end" >> log
    "#;
    sb.ckpt()
        .args(["run", "--job", "J", "-j", "3", "-q", "--items"])
        .arg(&file)
        .args(["--", "sh", "-c", script, "_", "{%}"])
        .run()
        .success();
    assert_eq!(sb.lines("clashes"), Vec::<String>::new());
    let log = sb.lines("log");
    assert_eq!(log.len(), 18, "{log:?}");
    let mut by_slot: BTreeMap<u32, Vec<(u128, u128)>> = BTreeMap::new();
    for line in &log {
        let f: Vec<&str> = line.split(' ').collect();
        let slot: u32 = f[0].parse().unwrap();
        by_slot
            .entry(slot)
            .or_default()
            .push((f[1].parse().unwrap(), f[2].parse().unwrap()));
    }
    assert_eq!(
        by_slot.keys().copied().collect::<Vec<_>>(),
        [1, 2, 3],
        "{log:?}"
    );
    for (slot, mut spans) in by_slot {
        spans.sort();
        for pair in spans.windows(2) {
            assert!(
                pair[0].1 <= pair[1].0,
                "slot {slot} held by two commands at once: {pair:?}"
            );
        }
    }
}

#[test]
fn colsep_splits_columns_and_the_whole_line_stays_the_key() {
    let sb = Sandbox::new();
    let file = sb.write("items.txt", "a/x.c\tb\tc\nonly\n");
    sb.ckpt()
        .args(["run", "--job", "T", "--colsep", "\t", "--items"])
        .arg(&file)
        .args(["--", "sh", "-c", LOG_ARGS, "_"])
        .args(["{1}", "{2}", "{3}", "{-1}", "{1/.}", "{}"])
        .run()
        .success();
    assert_eq!(
        sorted(sb.lines("log")),
        ["a/x.c|b|c|c|x|a/x.c\tb\tc", "only|||only|only|only"]
    );
    let keys: BTreeSet<String> = stored_items(&sb, "T").into_keys().collect();
    assert_eq!(keys, BTreeSet::from(["a/x.c\tb\tc".into(), "only".into()]));

    // A multi-character separator, and a regular expression (`\t` as GNU
    // parallel users write it, and runs of spaces).
    std::fs::remove_file(sb.join("log")).unwrap();
    let file = sb.write("multi.txt", "k1::v:1\nk2::\n");
    sb.ckpt()
        .args(["run", "--job", "M", "--colsep", "::", "--items"])
        .arg(&file)
        .args(["--", "sh", "-c", LOG_ARGS, "_", "{2}", "{1}"])
        .run()
        .success();
    assert_eq!(sorted(sb.lines("log")), ["v:1|k1", "|k2"]);
    std::fs::remove_file(sb.join("log")).unwrap();
    let file = sb.write("re.txt", "p\tq  r\n");
    sb.ckpt()
        .args(["run", "--job", "R", "--colsep", r"\t| +", "--items"])
        .arg(&file)
        .args(["--", "sh", "-c", LOG_ARGS, "_", "{3}", "{2}", "{1}"])
        .run()
        .success();
    assert_eq!(sb.lines("log"), ["r|q|p"]);

    // With no replacement string, the columns are appended, each its own
    // argument, as GNU parallel does.
    std::fs::remove_file(sb.join("log")).unwrap();
    let file = sb.write("append.csv", "x y,z\n");
    sb.ckpt()
        .args(["run", "--job", "A", "--colsep", ",", "--items"])
        .arg(&file)
        .args(["--", "sh", "-c", LOG_ARGS, "_"])
        .run()
        .success();
    assert_eq!(sb.lines("log"), ["x y|z"]);
}

#[test]
fn bad_colsep_is_a_usage_error_that_creates_no_store() {
    let sb = Sandbox::new();
    let file = sb.write("items.txt", "a\n");
    for bad in ["(", "x*"] {
        let out = sb
            .ckpt()
            .args(["run", "--job", "J", "--colsep", bad, "--items"])
            .arg(&file)
            .args(["--", "true"])
            .run();
        let line = out.error(2);
        assert!(line.contains("--colsep"), "{line}");
    }
    assert!(!sb.db().exists());
}

#[test]
fn dry_run_without_a_store_prints_every_command_and_creates_nothing() {
    let sb = Sandbox::new();
    let file = sb.write("items.txt", "b.txt\n\nit's here\nb.txt\nc\td\ne\u{1b}[1m\n");
    let out = sb
        .ckpt()
        .args(["run", "--job", "J", "-j", "2", "--dry-run", "--items"])
        .arg(&file)
        .args(["--", "convert", "{}", "{.}.png", "{#}", "{%}"])
        .run();
    out.success();
    // Input order, a repeated key once, quoted only where needed; control
    // characters escaped in bash's `$'…'`, never printed raw.
    assert_eq!(
        out.stdout,
        "convert b.txt b.png 1 1\n\
         convert 'it'\\''s here' 'it'\\''s here.png' 3 2\n\
         convert $'c\\td' $'c\\td.png' 5 1\n\
         convert $'e\\x1b[1m' $'e\\x1b[1m.png' 6 2\n"
    );
    assert!(
        out.stderr.contains("4 command(s) would run"),
        "{}",
        out.stderr
    );
    assert!(!sb.db().exists(), "--dry-run created the store file");
    assert!(!sb.join("ckpt.db-wal").exists());
    // Without a replacement string the item is appended, as in a run.
    let out = sb
        .ckpt()
        .args(["run", "--job", "J", "--dryrun", "--items"])
        .arg(&file)
        .args(["--", "sh", "-c", "x \"$0\""])
        .run();
    out.success();
    assert_eq!(out.stdout.lines().next(), Some(r#"sh -c 'x "$0"' b.txt"#));
    assert!(!sb.db().exists());
    // An item as the program: quoted where a shell would not run it as one
    // (an assignment, a reserved word).
    let file = sb.write("words.txt", "FOO=bar\nif\ntime\nls\n");
    let out = sb
        .ckpt()
        .args(["run", "--job", "W", "--dry-run", "--items"])
        .arg(&file)
        .args(["--", "{}", "arg=1", "if"])
        .run();
    out.success();
    assert_eq!(
        out.stdout,
        "'FOO=bar' arg=1 if\n'if' arg=1 if\n'time' arg=1 if\nls arg=1 if\n"
    );
}

/// A run also runs the job's unfinished items of earlier inputs; so does
/// its dry run, after this input's (`{#}` 0, as in the run).
#[test]
fn dry_run_includes_the_jobs_unfinished_items_of_earlier_inputs() {
    let sb = Sandbox::new();
    let first = sb.write("first.txt", "x\ny\nz\n");
    sb.ckpt()
        .args([
            "run",
            "--job",
            "J",
            "-j",
            "1",
            "--retries",
            "0",
            "--halt",
            "now,fail=1",
        ])
        .arg("--items")
        .arg(&first)
        .args(["--", "sh", "-c", "exit 1"])
        .run()
        .code(1);
    let second = sb.write("second.txt", "w\ny\n");
    let out = sb
        .ckpt()
        .args(["run", "--job", "J", "--dry-run", "--items"])
        .arg(&second)
        .args(["--", "echo", "{}", "{#}"])
        .run();
    out.success();
    assert_eq!(out.stdout, "echo w 1\necho y 2\necho z 0\n");
    assert!(
        out.stderr.contains("3 command(s) would run"),
        "{}",
        out.stderr
    );
    // The run does just that.
    let out = sb
        .ckpt()
        .args(["run", "--job", "J", "-j", "1", "--items"])
        .arg(&second)
        .args(["--", "sh", "-c", "echo \"$0 $1\" >> log", "{}", "{#}"])
        .run();
    out.code(1); // x is dead
    assert_eq!(sorted(sb.lines("log")), ["w 1", "y 2", "z 0"]);
}

/// A run holding items `a` and `b` (claimed, `a` running) until the file
/// `go` exists, started in the background.
fn run_holding_a_and_b(sb: &Sandbox) -> crate::util::Running {
    let items = sb.write("held.txt", "a\nb\n");
    let run = sb
        .ckpt()
        .args(["run", "--job", "J", "-j", "1", "--items"])
        .arg(&items)
        .args([
            "--",
            "sh",
            "-c",
            "touch started; while [ ! -e go ]; do sleep 0.01; done",
        ])
        .start();
    wait_until(Duration::from_secs(30), "the first item to start", || {
        sb.join("started").exists()
    });
    run
}

/// Items a run that died still holds (running, their lease to lapse) are
/// unfinished too: the next run takes them over, and its dry run lists
/// them, though its input does not.
#[test]
fn dry_run_includes_the_items_a_dead_run_held() {
    let sb = Sandbox::new();
    let run = run_holding_a_and_b(&sb);
    let pid = run.pid();
    run.signal(libc::SIGKILL);
    wait_until(Duration::from_secs(30), "ckpt to die", || process_gone(pid));
    let empty = sb.write("empty.txt", "");
    let dry = |sb: &Sandbox| {
        let out = sb
            .ckpt()
            .args(["run", "--job", "J", "--dry-run", "--items"])
            .arg(&empty)
            .args(["--", "echo"])
            .run();
        out.success();
        out.stdout
    };
    assert_eq!(dry(&sb), "echo a\necho b\n");
    // The run does just that.
    sb.write("go", "");
    let out = sb
        .ckpt()
        .args(["run", "--job", "J", "--items"])
        .arg(&empty)
        .args(["--", "sh", "-c", "echo $0 >> log"])
        .run();
    out.success();
    assert_eq!(sorted(sb.lines("log")), ["a", "b"]);
}

/// An item whose run died while running it, its attempts used up
/// (`--retries 0`), is moved to the dead-letter list unrun by the next
/// run: its dry run leaves it out and says so, as the run then does.
#[test]
fn dry_run_leaves_out_the_items_a_run_would_bury() {
    let sb = Sandbox::new();
    let run = run_holding_a_and_b(&sb);
    wait_until(
        Duration::from_secs(30),
        "`a`'s start to be recorded",
        || !crate::util::stored_items(&sb, "J")["a"]["started_at"].is_null(),
    );
    let pid = run.pid();
    run.signal(libc::SIGKILL);
    wait_until(Duration::from_secs(30), "ckpt to die", || process_gone(pid));
    let empty = sb.write("empty.txt", "");
    let run = |extra: &[&str], command: &[&str]| {
        sb.ckpt()
            .args(["run", "--job", "J", "--retries", "0", "--items"])
            .arg(&empty)
            .args(extra)
            .arg("--")
            .args(command)
            .run()
    };
    let dry = run(&["--dry-run"], &["echo"]);
    dry.success();
    assert_eq!(dry.stdout, "echo b\n", "`a` started once already");
    assert!(
        dry.stderr
            .contains("1 item(s) would move to the dead-letter list unrun"),
        "{}",
        dry.stderr
    );
    let out = run(&[], &["sh", "-c", "echo $0 >> log"]);
    out.code(1);
    assert_eq!(sb.lines("log"), ["b"]);
    let dead = crate::util::stored_items(&sb, "J");
    assert_eq!(dead["a"]["status"], "dead", "{dead:?}");
}

/// A failed item whose attempts a re-run's lower `--retries` has used up is
/// moved to the dead-letter list unrun, its own failure kept as its error
/// and output (its command did report back: nothing died); the dry run
/// says so beforehand, and the run counts it as dead now.
#[test]
fn a_lower_retries_buries_a_failed_item_keeping_its_failure() {
    let sb = Sandbox::new();
    let items = sb.write("items.txt", "bad\ngood\n");
    // `bad` fails once, then blocks in its retry until stopped.
    let script = [
        "sh",
        "-c",
        r#"echo $0 >> log; [ $0 = good ] && exit 0
if [ -e failed-once ]; then touch blocked; while :; do sleep 0.05; done; fi
touch failed-once; echo corrupt $0 >&2; exit 1"#,
    ];
    let run = |extra: &[&str]| {
        sb.ckpt()
            .args(["run", "--job", "J", "-j", "1", "--items"])
            .arg(&items)
            .args(extra)
            .arg("--")
            .args(script)
    };
    // Stopped during the retry (--retries 1), killed at once (--grace 0s):
    // it is given back, pending, its one failed attempt and that failure
    // kept.
    let first = run(&["--retries", "1", "--backoff", "1ms", "--grace", "0s"]).start();
    wait_until(Duration::from_secs(30), "the retry to start", || {
        sb.join("blocked").exists()
    });
    first.signal(libc::SIGTERM);
    first.wait(Duration::from_secs(30)).code(143);
    let stored = crate::util::stored_items(&sb, "J");
    assert_eq!(
        (&stored["bad"]["status"], &stored["bad"]["attempts"]),
        (&json!("pending"), &json!(1)),
        "{stored:?}"
    );

    let dry = run(&["--retries", "0", "--dry-run"]).run();
    dry.success();
    assert!(!dry.stdout.contains(" bad"), "{}", dry.stdout);
    assert!(
        dry.stderr
            .contains("1 item(s) would move to the dead-letter list unrun: they were tried as often as --retries allows"),
        "{}",
        dry.stderr
    );
    let out = run(&["--retries", "0", "--json"]).run();
    out.code(1);
    let summary: Value = serde_json::from_str(out.stdout.lines().last().unwrap()).unwrap();
    assert_eq!(summary["dead_now"], 1, "{summary}");
    let ran = sb.lines("log");
    assert_eq!(
        ran.iter().filter(|l| *l == "bad").count(),
        2,
        "`bad` not run again: {ran:?}"
    );
    let stored = crate::util::stored_items(&sb, "J");
    let bad = &stored["bad"];
    assert_eq!(bad["status"], "dead", "{stored:?}");
    assert_eq!(bad["last_error"], "exit status 1", "{bad}");
    assert_eq!(bad["last_output"], "corrupt bad\n", "{bad}");
    assert_eq!(bad["attempts"], 1, "{bad}");
    assert_eq!(stored["good"]["status"], "completed", "{stored:?}");
}

/// Items a live run holds are its own: a run started meanwhile leaves them
/// to it, and so does its dry run, which says how many it left out.
#[test]
fn dry_run_leaves_out_the_items_a_live_run_holds() {
    let sb = Sandbox::new();
    let run = run_holding_a_and_b(&sb);
    let items = sb.write("items.txt", "a\nb\nc\n");
    let out = sb
        .ckpt()
        .args(["run", "--job", "J", "--dry-run", "--items"])
        .arg(&items)
        .args(["--", "echo"])
        .run();
    out.success();
    assert_eq!(out.stdout, "echo c\n");
    assert!(
        out.stderr.contains("1 command(s) would run")
            && out
                .stderr
                .contains("and 2 item(s) running under another live run"),
        "{}",
        out.stderr
    );
    sb.write("go", "");
    run.wait(Duration::from_secs(60)).success();
}

#[test]
fn dry_run_skips_completed_and_dead_items_and_changes_nothing() {
    let sb = Sandbox::new();
    let first = sb.write("first.txt", "a\nb\nbad\n");
    sb.ckpt()
        .args(["run", "--job", "J", "--retries", "0", "-q", "--items"])
        .arg(&first)
        .args(["--", "sh", "-c", r#"[ "$0" != bad ] && echo "$0" >> log"#])
        .run()
        .code(1);
    let before = sb.dump();
    let log_before = sb.lines("log");
    assert_eq!(sorted(log_before.clone()), ["a", "b"]);

    let second = sb.write("second.txt", "z\nb\nbad\na\ny\n");
    let out = sb
        .ckpt()
        .args(["run", "--job", "J", "--dry-run", "--items"])
        .arg(&second)
        .args(["--", "sh", "-c", r#"echo "$0" >> log"#, "{}", "{#}"])
        .run();
    out.success();
    assert_eq!(
        out.stdout,
        "sh -c 'echo \"$0\" >> log' z 1\nsh -c 'echo \"$0\" >> log' y 5\n"
    );
    assert!(
        out.stderr
            .contains("skipped 2 completed and 1 dead item(s)"),
        "{}",
        out.stderr
    );
    assert_eq!(sb.dump(), before, "--dry-run changed the store");
    assert_eq!(sb.lines("log"), log_before, "--dry-run ran a command");

    // An unknown job in an existing store: everything would run.
    let out = sb
        .ckpt()
        .args(["run", "--job", "other", "--dry-run", "--items"])
        .arg(&second)
        .args(["--", "echo"])
        .run();
    out.success();
    assert_eq!(out.stdout, "echo z\necho b\necho bad\necho a\necho y\n");
    assert_eq!(sb.dump(), before);
}
