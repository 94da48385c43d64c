//! `ckpt run`: every item once, how the item reaches the command, where the
//! items come from.

use crate::util::{assert_each_once, item_counts, items, Sandbox};

/// Appends the item (appended as the last argument, so `$0` of `sh -c`).
const LOG_ITEM: &str = r#"echo "$0" >> log"#;

/// `--json`'s summary is one line, the last on stdout, after whatever the
/// commands print there.
#[test]
fn the_json_summary_is_the_last_line_of_stdout() {
    let sb = Sandbox::new();
    let file = sb.write_items("items.txt", &items("i", 3));
    let out = sb
        .ckpt()
        .args(["run", "--job", "J", "--json", "--items"])
        .arg(&file)
        .args([
            "--",
            "sh",
            "-c",
            r#"echo "processing $1"; printf "{ not json""#,
            "sh",
        ])
        .run();
    out.success();
    // Each command ends mid-line (as GNU parallel, ckpt adds no newline
    // to a command's output); the summary starts a line of its own.
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 5, "{}", out.stdout);
    let (last, before) = lines.split_last().unwrap();
    assert_eq!(
        before.concat().matches("processing i").count(),
        3,
        "{}",
        out.stdout
    );
    assert_eq!(
        before.concat().matches("{ not json").count(),
        3,
        "{}",
        out.stdout
    );
    let doc: serde_json::Value = serde_json::from_str(last).expect(last);
    assert_eq!(
        (doc["job"].as_str(), doc["completed_now"].as_u64()),
        (Some("J"), Some(3))
    );

    // --ungroup hands the output straight to stdout, unseen: the summary
    // still starts a line of its own.
    let out = sb
        .ckpt()
        .args(["run", "--job", "U", "--json", "-u", "--items"])
        .arg(&file)
        .args(["--", "printf", "no-newline"])
        .run();
    out.success();
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{}", out.stdout);
    assert_eq!(lines[0], "no-newline".repeat(3));
    let doc: serde_json::Value = serde_json::from_str(lines[1]).expect(lines[1]);
    assert_eq!(doc["completed_now"], 3);
}

#[test]
fn runs_every_item_once_and_reports_completed() {
    let sb = Sandbox::new();
    let all = items("item-", 25);
    let file = sb.write_items("items.txt", &all);
    let out = sb
        .ckpt()
        .args(["run", "--job", "J", "--items"])
        .arg(&file)
        .args(["-j", "4", "--json", "--", "sh", "-c", LOG_ITEM])
        .run();
    out.success();
    assert_each_once(&sb.lines("log"), &all);
    assert!(
        out.stderr.contains("job 'J' completed: 25 items"),
        "summary line on stderr: {}",
        out.stderr
    );

    let doc = out.json();
    assert_eq!(doc["job"], "J");
    assert_eq!(doc["status"], "completed");
    assert_eq!(doc["enqueued"], 25);
    assert_eq!(doc["already_known"], 0);
    assert_eq!(doc["completed_now"], 25);
    assert_eq!(doc["failed_attempts"], 0);
    assert_eq!(doc["dead_now"], 0);

    let status = sb.status("J");
    let keys: Vec<&str> = status
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    for key in ["job", "status", "items", "cursor", "checkpoint_at"] {
        assert!(keys.contains(&key), "status --json lacks {key:?}: {status}");
    }
    let mut item_keys: Vec<&str> = status["items"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    item_keys.sort_unstable();
    assert_eq!(
        item_keys,
        ["completed", "dead", "failed", "pending", "running", "total"]
    );
    assert_eq!(status["job"], "J");
    assert_eq!(status["status"], "completed");
    assert_eq!(item_counts(&status), (0, 0, 25, 0, 0));
    assert!(
        status["checkpoint_at"].is_null(),
        "no checkpoint was saved: {status}"
    );

    // The human form says the same.
    let human = sb.ckpt().args(["status", "J"]).run();
    human.success();
    assert!(
        human.stdout.contains("status:     completed"),
        "{}",
        human.stdout
    );
    assert!(human.stdout.contains("25 completed"), "{}", human.stdout);
    assert!(
        human.stdout.contains("checkpoint: none"),
        "{}",
        human.stdout
    );
}

#[test]
fn placeholder_is_substituted_and_item_is_not_appended() {
    let sb = Sandbox::new();
    let file = sb.write_items("items.txt", &["a".into(), "b c".into()]);
    // `{}` inside a larger argument; `$#` shows nothing was appended.
    sb.ckpt()
        .args(["run", "--job", "J", "--items"])
        .arg(&file)
        .args([
            "--",
            "sh",
            "-c",
            r#"printf '%s|%s\n' "$#" "$1" >> log"#,
            "sh",
            "<{}>",
        ])
        .run()
        .success();
    let mut log = sb.lines("log");
    log.sort();
    assert_eq!(log, ["1|<a>", "1|<b c>"]);
}

#[test]
fn placeholder_may_be_the_program() {
    let sb = Sandbox::new();
    sb.write("tool.sh", "#!/bin/sh\necho \"tool $CKPT_ITEM\" >> log\n");
    std::fs::set_permissions(
        sb.join("tool.sh"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let file = sb.write_items("items.txt", &["./tool.sh".into()]);
    sb.ckpt()
        .args(["run", "--job", "J", "--items"])
        .arg(&file)
        .args(["--", "{}"])
        .run()
        .success();
    assert_eq!(sb.lines("log"), ["tool ./tool.sh"]);
}

#[test]
fn item_is_appended_as_last_argument_without_placeholder() {
    let sb = Sandbox::new();
    let file = sb.write_items("items.txt", &["x1".into(), "with space".into()]);
    sb.ckpt()
        .args(["run", "--job", "J", "--items"])
        .arg(&file)
        .args([
            "--",
            "sh",
            "-c",
            r#"printf '%s|%s|%s\n' "$#" "$1" "$2" >> log"#,
            "sh",
            "fixed",
        ])
        .run()
        .success();
    let mut log = sb.lines("log");
    log.sort();
    assert_eq!(log, ["2|fixed|with space", "2|fixed|x1"]);
}

#[test]
fn job_item_and_attempt_reach_the_child_environment() {
    let sb = Sandbox::new();
    let file = sb.write_items("items.txt", &["one".into(), "two".into()]);
    sb.ckpt()
        .args(["run", "--job", "env/job 1", "--items"])
        .arg(&file)
        .args([
            "--",
            "sh",
            "-c",
            r#"echo "$CKPT_JOB|$CKPT_ITEM|$CKPT_ATTEMPT" >> log"#,
        ])
        .run()
        .success();
    let mut log = sb.lines("log");
    log.sort();
    assert_eq!(log, ["env/job 1|one|1", "env/job 1|two|1"]);
}

#[test]
fn items_from_stdin_with_dash() {
    let sb = Sandbox::new();
    sb.ckpt()
        .args([
            "run", "--job", "J", "--items", "-", "--", "sh", "-c", LOG_ITEM,
        ])
        .stdin("s1\ns2\ns3\n")
        .run()
        .success();
    assert_each_once(&sb.lines("log"), &items("s", 3));
    assert_eq!(item_counts(&sb.status("J")), (0, 0, 3, 0, 0));
}

/// An items file that is a pipe, read once (`--items <(find …)`, a FIFO,
/// `/dev/stdin`): spooled like standard input, for the check and the
/// enqueue, and for `--dry-run`.
#[test]
fn items_file_that_is_a_pipe() {
    let sb = Sandbox::new();
    sb.ckpt()
        .args([
            "run",
            "--job",
            "J",
            "--items",
            "/dev/stdin",
            "--",
            "sh",
            "-c",
            LOG_ITEM,
        ])
        .stdin("d1\nd2\n")
        .run()
        .success();
    assert_each_once(&sb.lines("log"), &items("d", 2));
    let fifo = sb.join("fifo");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status();
    if !made.is_ok_and(|s| s.success()) {
        eprintln!("skipped the FIFO: no mkfifo");
        return;
    }
    for (job, dry) in [("F", true), ("F", false)] {
        let writer = {
            let fifo = fifo.clone();
            std::thread::spawn(move || std::fs::write(fifo, "f1\nf2\nf3\n").unwrap())
        };
        let mut cmd = sb.ckpt().args(["run", "--job", job, "--items"]).arg(&fifo);
        if dry {
            cmd = cmd.arg("--dry-run");
        }
        let out = cmd.args(["--", "sh", "-c", LOG_ITEM]).run();
        out.success();
        writer.join().unwrap();
        if dry {
            assert_eq!(out.stdout.lines().count(), 3, "{}", out.stdout);
        }
    }
    assert_eq!(item_counts(&sb.status("F")), (0, 0, 3, 0, 0));
    assert_each_once(
        &sb.lines("log"),
        &["d1", "d2", "f1", "f2", "f3"].map(String::from),
    );
}

#[test]
fn items_from_piped_stdin_without_items_flag() {
    let sb = Sandbox::new();
    sb.ckpt()
        .args(["run", "--job", "J", "--", "sh", "-c", LOG_ITEM])
        .stdin("p1\np2") // no final newline: the last line still counts
        .run()
        .success();
    assert_each_once(&sb.lines("log"), &items("p", 2));
    assert_eq!(item_counts(&sb.status("J")), (0, 0, 2, 0, 0));
}

#[test]
fn blank_lines_are_skipped_and_crlf_is_stripped() {
    let sb = Sandbox::new();
    let file = sb.write("items.txt", "a\r\n\r\n\nb\r\n  c  \n\n");
    sb.ckpt()
        .args(["run", "--job", "J", "--items"])
        .arg(&file)
        .args(["--", "sh", "-c", r#"printf '[%s]\n' "$0" >> log"#])
        .run()
        .success();
    let mut log = sb.lines("log");
    log.sort();
    // No "\r" kept, no empty item; other whitespace is part of the item.
    assert_eq!(log, ["[  c  ]", "[a]", "[b]"]);
    assert_eq!(item_counts(&sb.status("J")), (0, 0, 3, 0, 0));
}

#[test]
fn store_from_ckpt_store_env() {
    let sb = Sandbox::new();
    let db = sb.join("env.db");
    sb.ckpt_bare()
        .env("CKPT_STORE", format!("sqlite://{}", db.display()))
        .args(["run", "--job", "J", "--", "sh", "-c", LOG_ITEM])
        .stdin("e1\n")
        .run()
        .success();
    assert!(db.is_file(), "the store named by CKPT_STORE was created");
    assert!(!sb.db().exists(), "the default ./ckpt.db was not used");
    let out = sb
        .ckpt_bare()
        .env("CKPT_STORE", format!("sqlite://{}", db.display()))
        .args(["status", "J", "--json"])
        .run();
    out.success();
    assert_eq!(out.json()["items"]["completed"], 1);
}

#[test]
fn empty_input_completes_an_empty_job() {
    let sb = Sandbox::new();
    let out = sb
        .ckpt()
        .args(["run", "--job", "J", "--", "sh", "-c", LOG_ITEM])
        .stdin("")
        .run();
    out.success();
    assert!(sb.lines("log").is_empty());
    let status = sb.status("J");
    assert_eq!(status["status"], "completed");
    assert_eq!(item_counts(&status), (0, 0, 0, 0, 0));
}

#[test]
fn default_store_is_ckpt_db_in_the_working_directory() {
    let sb = Sandbox::new();
    sb.ckpt_bare()
        .args(["run", "--job", "J", "--", "sh", "-c", LOG_ITEM])
        .stdin("d1\n")
        .run()
        .success();
    assert!(sb.join("ckpt.db").is_file(), "./ckpt.db was created");
    assert_eq!(sb.lines("log"), ["d1"]);
    let out = sb.ckpt_bare().args(["status", "J", "--json"]).run();
    out.success();
    assert_eq!(out.json()["items"]["completed"], 1);
}

/// Keys an attacker could put in an items file.
fn hostile_keys() -> Vec<String> {
    [
        "a; touch PWNED1",
        "$(touch PWNED2)",
        "`touch PWNED3`",
        "it's ' ; touch PWNED4 ; '",
        "*",
        "-n",
    ]
    .map(String::from)
    .to_vec()
}

#[track_caller]
fn assert_no_injection(sb: &Sandbox) {
    let pwned: Vec<_> = std::fs::read_dir(sb.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("PWNED"))
        .collect();
    assert!(pwned.is_empty(), "an item ran as shell code: {pwned:?}");
}

/// `{q}` is the item quoted for the shell: inside `sh -c '…'` it is one
/// word, printed literally, never run.
#[test]
fn q_placeholder_is_shell_quoted() {
    let sb = Sandbox::new();
    let keys = hostile_keys();
    let file = sb.write_items("items.txt", &keys);
    sb.ckpt()
        .args(["run", "--job", "J", "--items"])
        .arg(&file)
        .args(["--", "sh", "-c", r#"printf '%s\n' {q} >> log"#])
        .run()
        .success();
    assert_each_once(&sb.lines("log"), &keys);
    assert_no_injection(&sb);
}

/// The form the README recommends: the item as a positional parameter.
#[test]
fn item_as_a_positional_parameter_is_safe() {
    let sb = Sandbox::new();
    let keys = hostile_keys();
    let file = sb.write_items("items.txt", &keys);
    sb.ckpt()
        .args(["run", "--job", "J", "--items"])
        .arg(&file)
        .args(["--", "sh", "-c", r#"printf '%s\n' "$1" >> log"#, "_", "{}"])
        .run()
        .success();
    assert_each_once(&sb.lines("log"), &keys);
    assert_no_injection(&sb);
}

/// What the README warns about: `{}` pasted into a shell string is code.
#[test]
fn bare_placeholder_inside_a_shell_string_is_injection() {
    let sb = Sandbox::new();
    let file = sb.write_items("items.txt", &["a; touch PWNED".to_string()]);
    sb.ckpt()
        .args(["run", "--job", "J", "--items"])
        .arg(&file)
        .args(["--", "sh", "-c", "echo {}"])
        .run()
        .success();
    assert!(sb.join("PWNED").exists(), "the warned-about injection");
}

/// What a command leaves running in its process group when it exits is
/// killed: it is the item's work, and must not run on beside a retry.
#[test]
fn what_a_command_leaves_running_is_killed_when_it_exits() {
    let sb = Sandbox::new();
    let file = sb.write_items("items.txt", &["a".to_string()]);
    sb.ckpt()
        .args(["run", "--job", "J", "--items"])
        .arg(&file)
        .args(["--", "sh", "-c", r#"sleep 30 & echo $! > bg; exit 0"#])
        .run()
        .success();
    let pid: u32 = sb.lines("bg")[0].parse().unwrap();
    crate::util::wait_until(
        std::time::Duration::from_secs(10),
        "the background sleep to be killed",
        || crate::util::process_gone(pid),
    );
}
