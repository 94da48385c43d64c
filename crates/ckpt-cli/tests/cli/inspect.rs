//! The inspect and repair commands: jobs, show, items, reset, prune,
//! history truncate, doctor, completions and the man page.

use serde_json::{json, Value};

use crate::util::Sandbox;

/// A store with: `files` (an item job: 2 completed, 1 dead), `import` (a
/// cursor job with 5 saves).
fn seeded() -> Sandbox {
    let sb = Sandbox::new();
    let file = sb.write("items.txt", "a\nb\nbad\n");
    sb.ckpt()
        .args(["run", "--job", "files", "--retries", "0", "--items"])
        .arg(&file)
        .args([
            "--",
            "sh",
            "-c",
            r#"[ "$0" != bad ] || { echo "no such file: $0" >&2; exit 3; }"#,
        ])
        .run()
        .code(1);
    for i in 1..=5 {
        sb.ckpt()
            .args(["checkpoint", "set", "import", &format!(r#"{{"page":{i}}}"#)])
            .args(["--items-processed", &(i * 100).to_string()])
            .args(["--state", r#"{"sum":12}"#])
            .run()
            .success();
    }
    sb
}

/// Sets columns of a job or item row directly, to stage what only time or
/// another host would otherwise produce.
fn sql(sb: &Sandbox, statement: &str) {
    let conn = rusqlite::Connection::open(sb.db()).unwrap();
    let changed = conn.execute(statement, []).unwrap();
    assert!(changed > 0, "{statement} changed nothing");
}

fn job<'a>(jobs: &'a Value, name: &str) -> &'a Value {
    jobs.as_array()
        .unwrap()
        .iter()
        .find(|j| j["job"] == name)
        .unwrap_or_else(|| panic!("no job {name} in {jobs}"))
}

#[test]
fn jobs_lists_progress_checkpoint_history_and_state() {
    let sb = seeded();
    let out = sb.ckpt().args(["jobs", "--json"]).run();
    out.success();
    let jobs = out.json();
    assert_eq!(jobs.as_array().unwrap().len(), 2);
    let files = job(&jobs, "files");
    assert_eq!(files["status"], "failed");
    assert_eq!(
        files["items"],
        json!({"pending": 0, "running": 0, "completed": 2, "failed": 0, "dead": 1, "total": 3})
    );
    let import = job(&jobs, "import");
    assert_eq!(import["status"], "running");
    assert_eq!(import["items_processed"], 500);
    assert_eq!(import["saves"], 5);
    assert_eq!(import["history_len"], 5);
    assert_eq!(import["state_bytes"], r#"{"sum":12}"#.len());
    assert!(import["checkpoint_age_seconds"].as_f64().unwrap() >= 0.0);

    let out = sb.ckpt().args(["jobs"]).run();
    out.success();
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert!(lines[0].starts_with("JOB"), "{}", out.stdout);
    let files_line = lines.iter().find(|l| l.starts_with("files")).unwrap();
    assert!(files_line.contains("2/3 (66%)"), "{files_line}");
    let import_line = lines.iter().find(|l| l.starts_with("import")).unwrap();
    assert!(import_line.contains("500 processed"), "{import_line}");
}

#[test]
fn show_prints_checkpoint_history_and_failures() {
    let sb = seeded();
    let out = sb.ckpt().args(["show", "import", "--json"]).run();
    out.success();
    let doc = out.json();
    assert_eq!(doc["cursor"], json!({"page": 5}));
    assert_eq!(doc["state"], json!({"sum": 12}));
    let seqs: Vec<u64> = doc["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [5, 4, 3, 2, 1]);
    assert_eq!(doc["history"][0]["cursor"], json!({"page": 5}));
    assert_eq!(doc["history"][0]["items_processed"], 500);

    let out = sb.ckpt().args(["show", "import", "--history", "2"]).run();
    out.success();
    assert!(out.stdout.contains("history (2 of 5"), "{}", out.stdout);
    assert!(
        out.stdout.contains(r#"cursor {"page":5}"#),
        "{}",
        out.stdout
    );

    let doc = sb.ckpt().args(["show", "files", "--json"]).run().json();
    assert_eq!(doc["failed_items"], json!([]));
    let failures = doc["dead_items"].as_array().unwrap();
    assert_eq!(failures.len(), 1);
    assert_eq!(failures[0]["key"], "bad");
    assert_eq!(failures[0]["status"], "dead");
    assert!(
        failures[0]["last_error"]
            .as_str()
            .unwrap()
            .contains("exit status 3"),
        "{doc}"
    );
    let out = sb.ckpt().args(["show", "files"]).run();
    assert!(
        out.stdout.contains("dead items, latest first")
            && out
                .stdout
                .contains("  bad: exit status 3 (after 1 attempt)"),
        "{}",
        out.stdout
    );

    let err = sb.ckpt().args(["show", "nope"]).run().error(3);
    assert!(err.contains("no job named 'nope'"), "{err}");
    sb.ckpt().args(["show", " padded"]).run().error(2);
}

/// The failures an operator needs at 3 a.m. are the latest: `show` and
/// `status` (text and JSON) list the last dead items first, and the items
/// awaiting a retry even when many are dead, with how many more there are.
#[test]
fn show_and_status_list_the_latest_failures_first() {
    let sb = Sandbox::new();
    let fail = |items: &str, retries: &str, message: &str| {
        let file = sb.write("items.txt", items);
        sb.ckpt()
            .args(["run", "--job", "j", "--items"])
            .arg(&file)
            .args(["--retries", retries, "--backoff", "1h", "--", "sh", "-c"])
            .arg(format!("echo '{message}' >&2; exit 1"))
    };
    let old: String = (1..=12).map(|i| format!("old{i}\n")).collect();
    fail(&old, "0", "yesterday").run().code(1);
    fail("newdead\n", "0", "today").run().code(1);
    // Failed once; the run would wait an hour for its retry: stopped.
    let run = fail("newfailed\n", "3", "now").start();
    crate::util::wait_until(
        std::time::Duration::from_secs(30),
        "the first attempt to fail",
        || run.stderr_so_far().contains("item failed"),
    );
    run.signal(15);
    run.wait(std::time::Duration::from_secs(30)).code(143);

    for command in ["show", "status"] {
        let out = sb.ckpt().args([command, "j"]).run();
        out.success();
        let text = &out.stdout;
        let dead = text.find("dead items, latest first").expect(text);
        let failed = text
            .find("failed items awaiting a retry, latest first:")
            .expect(text);
        let newdead = text.find("  newdead: exit status 1").expect(text);
        assert!(dead < newdead && newdead < text.find("  old12:").expect(text));
        assert!(!text.contains("  old3:"), "only 10 dead items: {text}");
        assert!(
            text.contains("... and 3 more (all of them: `ckpt items j --status dead`)"),
            "{text}"
        );
        assert!(
            failed
                < text
                    .find("  newfailed: exit status 1 (after 1 attempt; next try in")
                    .expect(text)
        );
        assert!(text.contains("      | now"), "its stderr: {text}");
    }
    let doc = sb.ckpt().args(["status", "j", "--json"]).run().json();
    let keys = |field: &str| -> Vec<String> {
        doc[field]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["key"].as_str().unwrap().to_string())
            .collect()
    };
    let dead = keys("dead_items");
    assert_eq!(dead.len(), 10, "{dead:?}");
    assert_eq!(&dead[..3], ["newdead", "old12", "old11"]);
    assert_eq!(keys("failed_items"), ["newfailed"]);
}

#[test]
fn items_filters_by_status() {
    let sb = seeded();
    let out = sb
        .ckpt()
        .args(["items", "files", "--status", "dead", "--json"])
        .run();
    out.success();
    let items = out.json();
    assert_eq!(items.as_array().unwrap().len(), 1);
    assert_eq!(items[0]["key"], "bad");
    assert_eq!(items[0]["attempts"], 1);
    assert!(items[0]["last_error"]
        .as_str()
        .unwrap()
        .contains("exit status 3"));

    let all = sb.ckpt().args(["items", "files", "--json"]).run().json();
    let keys: Vec<&str> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["a", "b", "bad"], "enqueue order");

    let out = sb.ckpt().args(["items", "files"]).run();
    out.success();
    assert!(out.stdout.starts_with("KEY"), "{}", out.stdout);
    assert_eq!(out.stdout.lines().count(), 4);

    sb.ckpt()
        .args(["items", "files", "--status", "sleeping"])
        .run()
        .error(2);
    sb.ckpt().args(["items", "nope"]).run().error(3);

    // A list cut by --limit says so on stderr (stdout stays the list),
    // counting the items of the status asked for; a list not cut says
    // nothing.
    let out = sb.ckpt().args(["items", "files", "--limit", "2"]).run();
    out.success();
    assert_eq!(out.stdout.lines().count(), 3);
    assert_eq!(
        out.stderr,
        "ckpt: the first 2 of 3 items shown (--limit 3 for all)\n"
    );
    let out = sb
        .ckpt()
        .args([
            "items",
            "files",
            "--status",
            "completed",
            "--limit",
            "1",
            "--json",
        ])
        .run();
    assert_eq!(out.json().as_array().unwrap().len(), 1);
    assert_eq!(
        out.stderr,
        "ckpt: the first 1 of 2 items shown (--limit 2 for all)\n"
    );
    // Exactly as many as the limit: nothing cut, nothing said.
    let out = sb
        .ckpt()
        .args(["items", "files", "--status", "completed", "--limit", "2"])
        .run();
    out.success();
    assert_eq!(out.stderr, "");
}

#[test]
fn reset_asks_refuses_a_live_holder_and_clears() {
    let sb = seeded();
    let before = sb.dump();
    // No terminal to ask on, and no --yes: refused, nothing changed.
    let err = sb
        .ckpt()
        .args(["reset", "import"])
        .stdin("y\n")
        .run()
        .error(2);
    assert!(err.contains("--yes"), "{err}");
    assert_eq!(sb.dump(), before);

    // A worker on another host holds the job, its lease current.
    sql(
        &sb,
        "UPDATE jobs SET owner = 'elsewhere~w:1:1:x', lease_expires = 99999999999999
         WHERE name = 'import'",
    );
    let held = sb.dump();
    let err = sb.ckpt().args(["reset", "import", "--yes"]).run().error(5);
    assert!(err.contains("--force"), "{err}");
    assert_eq!(sb.dump(), held, "a refused reset changes nothing");

    let out = sb
        .ckpt()
        .args(["reset", "import", "--yes", "--force"])
        .run();
    out.success();
    assert!(out.stderr.contains("fenced off"), "{}", out.stderr);
    sb.ckpt()
        .args(["checkpoint", "get", "import"])
        .run()
        .code(3);
    let doc = sb.ckpt().args(["show", "import", "--json"]).run().json();
    assert_eq!(doc["history"], json!([]));
    assert_eq!(doc["owner"], Value::Null, "the holder lost the job");

    sb.ckpt().args(["reset", "nope", "--yes"]).run().error(3);
}

/// `ckpt reset` clears a checkpoint: a job of work items alone (a finished
/// `ckpt run`) has none, and is refused with what to do instead, left as
/// it was (not marked running for no run to finish).
#[test]
fn reset_refuses_a_job_of_work_items_alone() {
    let sb = Sandbox::new();
    sb.ckpt()
        .args(["run", "--job", "g", "-q", "--", "true"])
        .stdin("a\nb\n")
        .run()
        .success();
    let before = sb.dump();
    let err = sb.ckpt().args(["reset", "g", "--yes"]).run().error(2);
    assert!(
        err.contains("job 'g' has no checkpoint to clear")
            && err.contains("2 work items are kept")
            && err.contains("`ckpt retry g` re-drives"),
        "{err}"
    );
    assert_eq!(sb.dump(), before, "a refused reset changes nothing");
    assert_eq!(sb.status("g")["status"], "completed");
}

/// `prune --dry-run` lists exactly what `prune` deletes, even for a
/// completed job that a worker took up again: its lease, current past the
/// cutoff, spares it in both (a listing that ignored the lease once showed
/// it as deleted while the store kept it).
#[test]
fn prune_dry_run_and_prune_agree_on_a_held_completed_job() {
    let sb = Sandbox::new();
    let file = sb.write("ok.txt", "x\ny\n");
    for job in ["held", "idle"] {
        sb.ckpt()
            .args(["run", "--job", job, "--items"])
            .arg(&file)
            .args(["--", "true"])
            .run()
            .success();
    }
    sql(
        &sb,
        "UPDATE jobs SET owner = 'elsewhere~w:1:1:x', lease_expires = 99999999999999
         WHERE name = 'held'",
    );
    let prune = |dry_run: bool| {
        let mut cmd = sb
            .ckpt()
            .args(["prune", "--completed-before", "0s", "--json"]);
        if dry_run {
            cmd = cmd.arg("--dry-run");
        }
        let doc = cmd.run().json();
        let jobs: Vec<String> = doc["deleted"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| j["job"].as_str().unwrap().to_string())
            .collect();
        jobs
    };
    let planned = prune(true);
    assert_eq!(planned, ["idle"], "the held job is not listed");
    assert_eq!(prune(false), planned, "prune deletes what --dry-run listed");
    sb.ckpt().args(["status", "held"]).run().success();
    sb.ckpt().args(["status", "idle"]).run().error(3);
}

#[test]
fn prune_deletes_only_completed_jobs_past_the_cutoff() {
    let sb = seeded();
    let file = sb.write("ok.txt", "x\ny\n");
    sb.ckpt()
        .args(["run", "--job", "done", "--items"])
        .arg(&file)
        .args(["--", "true"])
        .run()
        .success();
    // Completed just now: a cutoff of an hour keeps it.
    let doc = sb
        .ckpt()
        .args(["prune", "--completed-before", "1h", "--json"])
        .run()
        .json();
    assert_eq!(doc["deleted"], json!([]));

    let before = sb.dump();
    let out = sb
        .ckpt()
        .args(["prune", "--completed-before", "0s", "--dry-run"])
        .run();
    out.success();
    assert!(out.stdout.contains("would delete done"), "{}", out.stdout);
    assert!(
        !out.stdout.contains("files"),
        "a failed job is never pruned"
    );
    assert!(out.stderr.contains("dry run"), "{}", out.stderr);
    assert_eq!(sb.dump(), before, "--dry-run changes nothing");

    let doc = sb
        .ckpt()
        .args(["prune", "--completed-before", "0s", "--json"])
        .run()
        .json();
    assert_eq!(doc["dry_run"], false);
    assert_eq!(doc["deleted"].as_array().unwrap().len(), 1);
    assert_eq!(doc["deleted"][0]["job"], "done");
    assert_eq!(doc["deleted"][0]["items_total"], 2);
    assert_eq!(doc["kept_not_completed"], 2);
    sb.ckpt().args(["status", "done"]).run().error(3);
    let jobs = sb.ckpt().args(["jobs", "--json"]).run().json();
    let names: Vec<&str> = jobs
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["job"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["files", "import"]);

    sb.ckpt()
        .args(["prune", "--completed-before", "soon"])
        .run()
        .error(2);
}

#[test]
fn history_truncate_keeps_the_newest_entries() {
    let sb = seeded();
    let out = sb
        .ckpt()
        .args(["history", "truncate", "import", "--keep", "2"])
        .run();
    out.success();
    assert!(out.stdout.contains("import: 3 history entries removed"));
    let doc = sb.ckpt().args(["show", "import", "--json"]).run().json();
    let seqs: Vec<u64> = doc["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [5, 4]);
    assert_eq!(doc["cursor"], json!({"page": 5}), "the checkpoint stays");
    // Every job at once.
    sb.ckpt()
        .args(["history", "truncate", "--keep", "0"])
        .run()
        .success();
    let doc = sb.ckpt().args(["show", "import", "--json"]).run().json();
    assert_eq!(doc["history"], json!([]));
    sb.ckpt()
        .args(["history", "truncate", "nope", "--keep", "1"])
        .run()
        .error(3);
    sb.ckpt()
        .args(["history", "truncate", "import", "--keep", "-1"])
        .run()
        .error(2);
}

#[test]
fn doctor_is_quiet_when_healthy_and_names_each_finding() {
    let sb = Sandbox::new();
    sb.ckpt()
        .args(["checkpoint", "set", "fine", "1"])
        .run()
        .success();
    let out = sb.ckpt().args(["doctor"]).run();
    out.success();
    assert!(out.stderr.contains("healthy"), "{}", out.stderr);
    let doc = sb.ckpt().args(["doctor", "--json"]).run().json();
    assert_eq!(doc["healthy"], true);
    assert_eq!(doc["findings"], json!([]));

    let sb = seeded();
    // A running item whose lease ran out (its worker died elsewhere).
    sql(
        &sb,
        "UPDATE items SET status = 'running', owner = 'elsewhere~w:1:1:x', ready_at = 1,
             finished_at = NULL WHERE key = 'a'",
    );
    let out = sb
        .ckpt()
        .args(["doctor", "--stale", "0s", "--max-history", "3"])
        .args(["--max-state", "8", "--json"])
        .run();
    out.code(1);
    let doc = out.json();
    assert_eq!(doc["healthy"], false);
    let mut found: Vec<(String, String)> = doc["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["job"].as_str().unwrap().to_string(),
                f["kind"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    found.sort();
    let expected = [
        ("files", "dead_items"),
        ("files", "expired_leases"),
        ("import", "excessive_history"),
        ("import", "large_state"),
        ("import", "stale_checkpoint"),
    ]
    .map(|(j, k)| (j.to_string(), k.to_string()));
    assert_eq!(found, expected);

    // The defaults (10m, 100, 1MiB) see only the dead item and the lease.
    let out = sb.ckpt().args(["doctor"]).run();
    out.code(1);
    assert_eq!(out.stdout.lines().count(), 2, "{}", out.stdout);
    assert!(out.stdout.contains("files: dead items: 1 dead item(s)"));
    // Its advice is what repairs it: a rerun takes the item over. (`ckpt
    // reset` would clear the checkpoint and leave the item as it is.)
    let lease = out
        .stdout
        .lines()
        .find(|l| l.contains("expired lease"))
        .expect("the lease finding");
    assert!(
        lease.contains("1 running item(s) expired") && lease.contains("the next run of the job"),
        "{lease}"
    );
    assert!(!lease.contains("reset"), "{lease}");
    sb.ckpt()
        .args(["doctor", "--max-state", "lots"])
        .run()
        .error(2);
    // No store: an error, not "healthy".
    let empty = Sandbox::new();
    empty.ckpt().args(["doctor"]).run().error(3);
}

#[test]
fn completions_and_man_page_come_from_the_definitions() {
    let sb = Sandbox::new();
    let out = sb.ckpt_bare().args(["completions", "bash"]).run();
    out.success();
    assert!(out.stdout.contains("complete -F"), "{}", out.stdout);
    for sub in ["doctor", "prune", "history", "run"] {
        assert!(out.stdout.contains(sub), "completion for {sub}");
    }
    let out = sb.ckpt_bare().args(["completions", "zsh"]).run();
    out.success();
    assert!(out.stdout.starts_with("#compdef ckpt"), "{}", out.stdout);
    let out = sb.ckpt_bare().args(["man"]).run();
    out.success();
    assert!(out.stdout.starts_with(".ie"), "roff: {}", &out.stdout[..80]);
    assert!(out.stdout.contains(".TH ckpt"), "{}", out.stdout);
    sb.ckpt_bare()
        .args(["completions", "cmd.exe"])
        .run()
        .error(2);
}

/// The shell pattern's end: `checkpoint complete` marks the job completed,
/// its checkpoint kept, so doctor stops calling it stale and prune may
/// delete it. Refused for an unknown job, a job with unfinished items and a
/// job a live worker holds, each changing nothing.
#[test]
fn checkpoint_complete_ends_a_script_job() {
    let sb = Sandbox::new();
    sb.ckpt()
        .args(["checkpoint", "set", "export", "100"])
        .run()
        .success();
    let stale = sb.ckpt().args(["doctor", "--stale", "0s"]).run();
    stale.code(1);
    assert!(
        stale.stdout.contains("export: stale checkpoint"),
        "{}",
        stale.stdout
    );
    sb.ckpt()
        .args(["checkpoint", "complete", "export"])
        .run()
        .success();
    let status = sb.status("export");
    assert_eq!(
        (&status["status"], &status["cursor"]),
        (&json!("completed"), &json!(100))
    );
    sb.ckpt().args(["doctor", "--stale", "0s"]).run().success();
    // Again: nothing changes (its completion time, which prune goes by,
    // included).
    let before = sb.dump();
    sb.ckpt()
        .args(["checkpoint", "complete", "export"])
        .run()
        .success();
    assert_eq!(sb.dump(), before);
    sb.ckpt()
        .args(["checkpoint", "complete", "nope"])
        .run()
        .error(3);

    // Dead items: refused, the job left failed.
    let items = sb.write_items("items.txt", &["a".into(), "b".into()]);
    sb.ckpt()
        .args(["run", "--job", "J", "--retries", "0", "--items"])
        .arg(&items)
        .args(["--", "sh", "-c", "exit 1"])
        .run()
        .code(1);
    let complete_j = || {
        sb.ckpt()
            .args(["checkpoint", "complete", "J"])
            .run()
            .error(2)
    };
    let line = complete_j();
    assert!(line.contains("2 item(s) not completed (2 dead)"), "{line}");
    assert_eq!(sb.status("J")["status"], "failed");
    // Items still to do: refused, the job left running.
    sb.ckpt().args(["retry", "J"]).run().success();
    let line = complete_j();
    assert!(line.contains("2 item(s) not completed (0 dead)"), "{line}");
    assert_eq!(sb.status("J")["status"], "running");

    // A live holder: busy, exit 5.
    let ckpt = ckpt::Ckpt::open(&sb.store_url()).unwrap();
    let held = ckpt.job("held").unwrap();
    sb.ckpt()
        .args(["checkpoint", "complete", "held"])
        .run()
        .error(5);
    assert_eq!(sb.status("held")["status"], "running");
    drop(held);

    sb.ckpt()
        .args(["prune", "--completed-before", "0s"])
        .run()
        .success();
    sb.ckpt().args(["status", "export"]).run().error(3);
}

/// `ckpt items` lines its columns up by the terminal columns a key takes:
/// a CJK character takes two.
#[test]
fn items_columns_line_up_with_wide_keys() {
    use unicode_width::UnicodeWidthStr;
    let sb = Sandbox::new();
    let file = sb.write("items.txt", "日本語キー\nabc\n");
    sb.ckpt()
        .args(["run", "--job", "k", "--retries", "0", "--items"])
        .arg(&file)
        .args(["--", "false"])
        .run()
        .code(1);
    let out = sb.ckpt().args(["items", "k"]).run();
    out.success();
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{}", out.stdout);
    // Where the STATUS column starts, in terminal columns.
    let column = |line: &str, word: &str| UnicodeWidthStr::width(&line[..line.find(word).unwrap()]);
    assert_eq!(
        column(lines[0], "STATUS"),
        column(lines[1], "dead"),
        "{}",
        out.stdout
    );
    assert_eq!(
        column(lines[0], "STATUS"),
        column(lines[2], "dead"),
        "{}",
        out.stdout
    );
}
