//! User data printed to a terminal cannot drive it: control characters in
//! item keys, errors and stages are shown escaped; JSON stays JSON.

use ckpt::{Ckpt, NewItem};

use crate::util::Sandbox;

/// ESC (a colour sequence), a newline, BEL, DEL, a C1 CSI and a
/// right-to-left override.
const KEY: &str = "\u{1b}[31mRED\nsecond line\u{7}\u{7f}\u{9b}2J\u{202e}txt";

/// A job name with a right-to-left override.
const BIDI_JOB: &str = "evil\u{202e}abc";

#[track_caller]
fn assert_no_raw_controls(what: &str, text: &str) {
    let raw: Vec<char> = text
        .chars()
        .filter(|&c| (c.is_control() && c != '\n') || ('\u{202a}'..='\u{202e}').contains(&c))
        .collect();
    assert!(raw.is_empty(), "{what} printed raw {raw:?}:\n{text}");
}

#[test]
fn keys_errors_and_stages_are_escaped_in_human_output() {
    let sb = Sandbox::new();
    let ckpt = Ckpt::open(&sb.store_url()).unwrap();
    ckpt.queue("J")
        .unwrap()
        .enqueue([NewItem::key(KEY)])
        .unwrap();
    let mut cp = ckpt::Checkpoint::new(serde_json::json!("\u{1b}]0;title\u{7}"), 1);
    cp.stage = Some("load\u{1b}[2J".into());
    ckpt.set_checkpoint("C", &cp).unwrap();
    // What JSON does not escape: DEL, C1 and the bidirectional overrides,
    // in a cursor and (no control character may be in one) a job's name.
    let cursor = serde_json::json!({"at": "\u{7f}\u{9b}31m\u{202e}Z"});
    for _ in 0..2 {
        ckpt.set_checkpoint(BIDI_JOB, &ckpt::Checkpoint::new(cursor.clone(), 1))
            .unwrap();
    }
    drop(ckpt);
    // The command fails, so the key is in the run's log lines too. (What
    // the command itself prints is its own business, as with xargs.)
    let empty = sb.write("empty.txt", "");
    let run = sb
        .ckpt()
        .args(["run", "--job", "J", "--retries", "0", "--items"])
        .arg(&empty)
        .args(["--", "sh", "-c", "exit 3"])
        .run();
    run.code(1);
    assert_no_raw_controls("ckpt run (stderr)", &run.stderr);
    assert!(run.stderr.contains("item_dead"), "{}", run.stderr);

    let items = sb.ckpt().args(["items", "J"]).run();
    items.success();
    assert_no_raw_controls("ckpt items", &items.stdout);
    assert_eq!(
        items.stdout.lines().count(),
        2,
        "one row per item:\n{}",
        items.stdout
    );
    assert!(
        items
            .stdout
            .contains(r"\u{1b}[31mRED\nsecond line\u{7}\u{7f}\u{9b}2J\u{202e}txt"),
        "{}",
        items.stdout
    );
    for args in [
        &["status", "J"][..],
        &["show", "J"],
        &["status", "C"],
        &["show", "C"],
        &["status", BIDI_JOB],
        &["show", BIDI_JOB],
        &["jobs"],
        &["history", "truncate", "--keep", "1"],
    ] {
        let out = sb.ckpt().args(args).run();
        out.success();
        assert_no_raw_controls(&format!("ckpt {args:?}"), &out.stdout);
        assert_no_raw_controls(&format!("ckpt {args:?} (stderr)"), &out.stderr);
        if args[0] != "jobs" && args.contains(&BIDI_JOB) || args[0] == "history" {
            assert!(
                out.stdout.contains(r"evil\u{202e}abc"),
                "{args:?}: {}",
                out.stdout
            );
        }
    }
    // An error line naming user data (here a file name).
    let line = sb
        .ckpt()
        .args([
            "run",
            "--job",
            "J",
            "--items",
            "no\u{1b}[31mfile",
            "--",
            "true",
        ])
        .run()
        .error(2);
    assert_no_raw_controls("an error line", &line);
    assert!(line.contains(r"no\u{1b}[31mfile"), "{line}");

    // JSON output is JSON, with the key exactly as it is.
    let out = sb.ckpt().args(["items", "J", "--json"]).run();
    out.success();
    assert_eq!(out.json()[0]["key"], KEY);
    assert!(!out.stdout.contains('\u{1b}'), "JSON escapes ESC");
}

/// `ckpt run`'s summary, its changed-command warning, its dry run and
/// `ckpt retry` name the job escaped too.
#[test]
fn run_and_retry_messages_escape_the_job_name() {
    let sb = Sandbox::new();
    let file = sb.write("items.txt", "a\n");
    let run = |command: &[&str], extra: &[&str]| {
        sb.ckpt()
            .args(["run", "--job", BIDI_JOB, "--retries", "0", "--items"])
            .arg(&file)
            .args(extra)
            .arg("--")
            .args(command)
            .run()
    };
    let outputs = [
        run(&["false"], &[]).code(1).stderr.clone(),
        run(&["true"], &["--dry-run"]).code(0).stderr.clone(),
        sb.ckpt()
            .args(["retry", BIDI_JOB])
            .run()
            .code(0)
            .stderr
            .clone(),
        run(&["true"], &[]).code(0).stderr.clone(),
    ];
    for (what, text) in ["failed run", "dry run", "retry", "changed command"]
        .iter()
        .zip(&outputs)
    {
        assert_no_raw_controls(what, text);
        assert!(text.contains(r"job 'evil\u{202e}abc'"), "{what}: {text}");
    }
    assert!(outputs[3].contains("was last run with"), "{}", outputs[3]);
    // The job is completed now: prune names it.
    for extra in [&["--dry-run"][..], &[]] {
        let out = sb
            .ckpt()
            .args(["prune", "--completed-before", "0s"])
            .args(extra)
            .run();
        out.success();
        assert_no_raw_controls("prune", &out.stdout);
        assert!(out.stdout.contains(r"evil\u{202e}abc"), "{}", out.stdout);
    }
}

#[test]
fn debug_logs_quote_and_escape_keys_and_job_names() {
    // A key with controls, and a job name a log parser would read as extra
    // fields if it were left unquoted.
    let sb = Sandbox::new();
    let file = sb.write_items("items.txt", &["k\u{1b}]0;pwned\u{7}\u{1b}[2J x=1".into()]);
    let job = "j level=ERROR event=\"item_dead\"";
    let out = sb
        .ckpt()
        .env("RUST_LOG", "ckpt=debug")
        .args(["run", "-q", "--job", job, "--items"])
        .arg(&file)
        .args(["--", "true"])
        .run();
    out.success();
    assert_no_raw_controls("debug log", &out.stderr);
    for event in ["enqueued", "item_claimed", "item_completed"] {
        let line = out
            .stderr
            .lines()
            .find(|l| l.contains(&format!("event=\"{event}\"")))
            .unwrap_or_else(|| panic!("no {event} line:\n{}", out.stderr));
        assert!(
            line.contains(r#"job="j level=ERROR event=\"item_dead\"""#),
            "{event}: the job name is one quoted field: {line}"
        );
        if event != "enqueued" {
            assert!(line.contains(r#"key="k\u{1b}]0;pwned"#), "{event}: {line}");
        }
    }
}

#[test]
fn suggested_commands_quote_the_job_name_for_the_shell() {
    // Pasted into a shell, each suggestion must name the job: `it's`
    // unquoted would open a quote, `a b` would be two arguments.
    let sb = Sandbox::new();
    let file = sb.write("items.txt", "a\n");
    for (job, word) in [("it's", r"'it'\''s'"), ("a b", "'a b'")] {
        let run = sb
            .ckpt()
            .args(["run", "--job", job, "--retries", "0", "--items"])
            .arg(&file)
            .args(["--", "false"])
            .run();
        run.code(1);
        assert!(
            run.stderr.contains(&format!("see `ckpt status {word}`")),
            "{}",
            run.stderr
        );
        let doctor = sb.ckpt().args(["doctor"]).run();
        assert!(
            doctor.stdout.contains(&format!(
                "`ckpt items {word} --status dead`, then `ckpt retry {word} --dead`"
            )),
            "{}",
            doctor.stdout
        );
        let reset = sb.ckpt().args(["reset", job, "-y"]).run();
        assert!(
            reset
                .stderr
                .contains(&format!("`ckpt retry {word}` re-drives")),
            "{}",
            reset.stderr
        );
        let complete = sb.ckpt().args(["checkpoint", "complete", job]).run();
        assert!(
            complete
                .stderr
                .contains(&format!("(see `ckpt status {word}`)")),
            "{}",
            complete.stderr
        );
    }
}
