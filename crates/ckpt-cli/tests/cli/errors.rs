//! Bad input: one `ckpt: error:` line, the documented exit code, no panic,
//! and the store (or the file that is not one) left exactly as it was.

use std::path::Path;

use crate::util::{dump_db, item_counts, Sandbox};

const STORE_ERROR: i32 = 4;

/// Commands that open the store: one reader, two writers.
fn store_commands(sb: &Sandbox) -> Vec<crate::util::Ckpt> {
    vec![
        sb.ckpt().args(["status", "J"]),
        sb.ckpt().args(["checkpoint", "set", "J", "1"]),
        sb.ckpt()
            .args(["run", "--job", "J", "--", "sh", "-c", "echo ran >> log"])
            .stdin("a\n"),
    ]
}

fn assert_no_sidecars(db: &Path) {
    for suffix in ["-wal", "-shm", "-journal"] {
        let mut p = db.as_os_str().to_owned();
        p.push(suffix);
        assert!(
            !Path::new(&p).exists(),
            "{} was created",
            Path::new(&p).display()
        );
    }
}

#[test]
fn missing_store_directory() {
    let sb = Sandbox::new();
    let dir = sb.join("missing");
    let url = format!("sqlite://{}/x.db", dir.display());
    for args in [
        vec!["checkpoint", "set", "J", "1"],
        vec!["run", "--job", "J", "--", "true"],
    ] {
        let line = sb
            .ckpt_bare()
            .arg("--store")
            .arg(&url)
            .args(&args)
            .stdin("a\n")
            .run()
            .error(STORE_ERROR);
        assert!(line.contains("does not exist"), "{line}");
    }
    assert!(!dir.exists(), "the directory was not created");

    let line = sb
        .ckpt_bare()
        .args([
            "--store",
            "sqlite:///nonexistent/dir/x.db",
            "checkpoint",
            "set",
            "J",
            "1",
        ])
        .run()
        .error(STORE_ERROR);
    assert!(line.contains("/nonexistent/dir"), "{line}");
    assert!(!Path::new("/nonexistent").exists());
}

#[test]
fn text_file_as_store_is_refused_and_untouched() {
    let sb = Sandbox::new();
    let text = b"these are my notes, not a database\n".repeat(200);
    sb.write("ckpt.db", &text);
    for cmd in store_commands(&sb) {
        let line = cmd.run().error(STORE_ERROR);
        assert!(line.contains("is not a ckpt store"), "{line}");
        assert!(line.contains("left untouched"), "{line}");
    }
    assert_eq!(
        std::fs::read(sb.db()).unwrap(),
        text,
        "the file is byte-for-byte unchanged"
    );
    assert_no_sidecars(&sb.db());
    assert!(sb.lines("log").is_empty(), "no item ran");
}

#[test]
fn foreign_sqlite_database_is_refused_and_untouched() {
    let sb = Sandbox::new();
    {
        let conn = rusqlite::Connection::open(sb.db()).unwrap();
        conn.execute_batch(
            "CREATE TABLE jobs (id INTEGER PRIMARY KEY, name TEXT);
             INSERT INTO jobs (name) VALUES ('J'), ('payroll');",
        )
        .unwrap();
    }
    let bytes = std::fs::read(sb.db()).unwrap();
    for cmd in store_commands(&sb) {
        let line = cmd.run().error(STORE_ERROR);
        assert!(line.contains("not a ckpt store"), "{line}");
        assert!(line.contains("another application"), "{line}");
    }
    assert_eq!(
        std::fs::read(sb.db()).unwrap(),
        bytes,
        "the file is byte-for-byte unchanged"
    );
    assert_no_sidecars(&sb.db());
    assert!(sb.lines("log").is_empty(), "no item ran");
}

/// A store holding a checkpoint of job `J`, its schema version then set
/// to `version` by hand.
fn store_at_version(version: i64) -> Sandbox {
    let sb = Sandbox::new();
    sb.ckpt()
        .args(["checkpoint", "set", "J", "1"])
        .run()
        .success();
    let conn = rusqlite::Connection::open(sb.db()).unwrap();
    conn.execute_batch(&format!("PRAGMA user_version = {version};"))
        .unwrap();
    // Closing the last connection folds the WAL into the main file.
    drop(conn);
    sb
}

#[test]
fn store_of_a_newer_schema_is_refused_and_untouched() {
    let sb = store_at_version(99);
    let bytes = std::fs::read(sb.db()).unwrap();
    let before = sb.dump();
    assert!(before.starts_with("user_version=99 "), "{before}");
    for cmd in store_commands(&sb).into_iter().chain([
        sb.ckpt().args(["checkpoint", "clear", "J"]),
        sb.ckpt().args(["checkpoint", "get", "J"]),
    ]) {
        let line = cmd.run().error(STORE_ERROR);
        assert!(line.contains("newer"), "{line}");
        assert!(line.contains("upgrade"), "{line}");
        assert!(line.contains("99"), "{line}");
    }
    assert_eq!(
        std::fs::read(sb.db()).unwrap(),
        bytes,
        "the main file is byte-for-byte unchanged"
    );
    assert_eq!(sb.dump(), before, "the content is unchanged");
    assert!(sb.lines("log").is_empty(), "no item ran");
}

/// A schema version lowered by hand (or damaged): the migration that
/// follows fails on tables that are there already. Named as damage in one
/// line, without the migration's SQL, and the file is left as it was.
#[test]
fn store_whose_version_does_not_match_its_tables_is_named_damaged() {
    for version in [0, 3] {
        let sb = store_at_version(version);
        let bytes = std::fs::read(sb.db()).unwrap();
        for cmd in store_commands(&sb) {
            let line = cmd.run().error(STORE_ERROR);
            assert!(line.contains("the store file is corrupt"), "{line}");
            assert!(
                line.contains(&format!("do not match its schema version {version}")),
                "{line}"
            );
            assert!(!line.contains("CREATE"), "the migration's SQL: {line}");
            assert!(line.len() < 600, "{} bytes: {line}", line.len());
        }
        assert_eq!(std::fs::read(sb.db()).unwrap(), bytes, "version {version}");
        assert!(sb.lines("log").is_empty(), "no item ran");
    }
}

#[test]
fn reading_commands_on_a_missing_store_exit_3_and_create_nothing() {
    let sb = Sandbox::new();
    for args in [
        vec!["status", "J"],
        vec!["status", "J", "--json"],
        vec!["checkpoint", "get", "J"],
        vec!["checkpoint", "clear", "J"],
    ] {
        let line = sb.ckpt().args(&args).run().error(3);
        assert!(line.contains("no ckpt store at"), "{line}");
        assert!(!sb.db().exists(), "{args:?} created the store");
        assert_no_sidecars(&sb.db());
    }
}

#[test]
fn unknown_job_exits_3() {
    let sb = Sandbox::new();
    sb.ckpt()
        .args(["checkpoint", "set", "J", "1"])
        .run()
        .success();
    let before = sb.dump();
    for json in [false, true] {
        let mut cmd = sb.ckpt().args(["status", "nope"]);
        if json {
            cmd = cmd.arg("--json");
        }
        let line = cmd.run().error(3);
        assert!(line.contains("no job named 'nope'"), "{line}");
    }
    assert_eq!(sb.dump(), before);
}

#[test]
fn invalid_job_names_exit_2_before_touching_the_store() {
    let sb = Sandbox::new();
    let long = "x".repeat(201);
    for name in ["", "a\u{1}b", "tab\there", " padded", long.as_str()] {
        for args in [
            vec!["status", name],
            vec!["checkpoint", "set", name, "1"],
            vec!["checkpoint", "get", name],
            vec!["run", "--job", name, "--", "true"],
        ] {
            let line = sb.ckpt().args(&args).stdin("a\n").run().error(2);
            assert!(line.contains("job name"), "{line}");
            assert!(!sb.db().exists(), "{args:?} created the store");
        }
    }
    // 200 bytes is still fine.
    sb.ckpt()
        .args(["checkpoint", "set", &"x".repeat(200), "1"])
        .run()
        .success();
    let before = sb.dump();
    sb.ckpt()
        .args(["checkpoint", "set", &long, "1"])
        .run()
        .error(2);
    assert_eq!(sb.dump(), before);
}

#[test]
fn invalid_utf8_items_file_names_the_line_and_enqueues_nothing() {
    let sb = Sandbox::new();
    // Line 2 is blank: line numbers count every line of the file.
    let file = sb.write("items.txt", b"a\n\n\xff\xfeb\nc\n");
    let run = || {
        sb.ckpt()
            .args(["run", "--job", "J", "--items"])
            .arg(&file)
            .args(["--", "sh", "-c", "echo ran >> log"])
            .run()
    };

    let line = run().error(2);
    assert!(line.contains("line 3"), "{line}");
    assert!(line.contains("UTF-8"), "{line}");
    assert!(sb.lines("log").is_empty(), "nothing ran");
    // Not even the job was created.
    sb.ckpt().args(["status", "J"]).run().error(3);

    // On a job with items already: nothing is added.
    sb.ckpt()
        .args(["run", "--job", "J", "--", "true"])
        .stdin("x\ny\n")
        .run()
        .success();
    let before = sb.dump();
    run().error(2);
    assert_eq!(sb.dump(), before, "the store is unchanged");
    assert_eq!(item_counts(&sb.status("J")), (0, 0, 2, 0, 0));
    assert!(sb.lines("log").is_empty(), "nothing ran");
}

#[test]
fn invalid_item_key_enqueues_nothing() {
    let sb = Sandbox::new();
    sb.ckpt()
        .args(["run", "--job", "J", "--", "true"])
        .stdin("x\n")
        .run()
        .success();
    let before = sb.dump();
    let line = sb
        .ckpt()
        .args(["run", "--job", "J", "--", "sh", "-c", "echo ran >> log"])
        .stdin(&b"ok\nnul\0inside\n"[..])
        .run()
        .error(2);
    assert!(line.contains("NUL"), "{line}");
    assert_eq!(sb.dump(), before);
    assert!(sb.lines("log").is_empty(), "nothing ran");
}

#[test]
fn missing_items_file_exits_2() {
    let sb = Sandbox::new();
    let line = sb
        .ckpt()
        .args([
            "run",
            "--job",
            "J",
            "--items",
            "no-such-file.txt",
            "--",
            "true",
        ])
        .run()
        .error(2);
    assert!(line.contains("no-such-file.txt"), "{line}");
    assert!(!sb.db().exists(), "the store was not created");
}

#[test]
fn command_not_found_exits_2_before_enqueueing() {
    let sb = Sandbox::new();
    // A dry run too: it shows only a run that can happen.
    for dry in [false, true] {
        let line = sb
            .ckpt()
            .args(["run", "--job", "J"])
            .args(dry.then_some("--dry-run"))
            .args(["--", "no-such-command-ckpt-test", "{}"])
            .stdin("a\n")
            .run()
            .error(2);
        assert!(
            line.contains("command not found: no-such-command-ckpt-test"),
            "{line}"
        );
    }
    assert!(!sb.db().exists(), "the store was not created");

    sb.ckpt()
        .args(["checkpoint", "set", "J", "1"])
        .run()
        .success();
    let before = sb.dump();
    sb.ckpt()
        .args(["run", "--job", "J", "--", "no-such-command-ckpt-test"])
        .stdin("a\n")
        .run()
        .error(2);
    assert_eq!(sb.dump(), before, "no item was enqueued");
}

#[test]
fn unknown_store_scheme_and_url_without_scheme() {
    let sb = Sandbox::new();
    let line = sb
        .ckpt_bare()
        .args(["--store", "mysql://h/db", "status", "J"])
        .run()
        .error(STORE_ERROR);
    assert!(line.contains("unsupported store scheme"), "{line}");
    let line = sb
        .ckpt_bare()
        .args(["--store", "ckpt.db", "status", "J"])
        .run()
        .error(STORE_ERROR);
    assert!(line.contains("no scheme"), "{line}");
    let line = sb
        .ckpt_bare()
        .args([
            "--store",
            "sqlite://x.db?durability=fast",
            "checkpoint",
            "set",
            "J",
            "1",
        ])
        .run()
        .error(STORE_ERROR);
    assert!(line.contains("durability"), "{line}");
    assert!(!sb.join("x.db").exists());
}

#[test]
fn password_in_store_url_is_never_printed() {
    let sb = Sandbox::new();
    let url = "postgres://u:secret@h/db";
    let outs = [
        sb.ckpt_bare().args(["--store", url, "status", "J"]).run(),
        sb.ckpt_bare()
            .args(["--store", url, "checkpoint", "set", "J", "1"])
            .run(),
        sb.ckpt_bare()
            .env("CKPT_STORE", url)
            .args(["run", "--job", "J", "--", "true"])
            .stdin("a\n")
            .run(),
    ];
    for out in outs {
        let line = out.error(STORE_ERROR);
        assert!(!out.stderr.contains("secret"), "{}", out.stderr);
        assert!(line.contains("postgres://u:***@h/db"), "{line}");
    }
    // Not percent-encoded, or given as a query parameter: still hidden.
    for (url, secret) in [
        ("postgres://u:se/cr?et@127.0.0.1:1/db", "se/cr?et"),
        ("postgres://u@127.0.0.1:1/db?password=hunter2", "hunter2"),
        ("redis://:Ab3/x+Yz9@127.0.0.1:1/0", "Ab3/x+Yz9"),
        ("redis://:Ab3?xYz9@127.0.0.1:1/0", "xYz9"),
        // `://` mistyped: the URL is echoed as having no scheme.
        (
            "postgres:/app:Hunter2secret@db.internal/prod",
            "Hunter2secret",
        ),
        ("redis//:Ab3xYz9@127.0.0.1:1/0", "Ab3xYz9"),
    ] {
        for args in [vec!["jobs"], vec!["doctor", "--json"], vec!["serve"]] {
            let out = sb.ckpt_bare().args(["--store", url]).args(&args).run();
            assert_ne!(out.code, 0, "{url} {args:?}");
            assert!(
                !out.stderr.contains(secret) && !out.stdout.contains(secret),
                "{url} {args:?}: {}{}",
                out.stdout,
                out.stderr
            );
        }
    }
}

#[test]
fn store_is_a_directory() {
    let sb = Sandbox::new();
    std::fs::create_dir(sb.db()).unwrap();
    let line = sb
        .ckpt()
        .args(["checkpoint", "set", "J", "1"])
        .run()
        .error(STORE_ERROR);
    assert!(line.contains("is a directory"), "{line}");
    assert_eq!(
        std::fs::read_dir(sb.db()).unwrap().count(),
        0,
        "nothing written inside"
    );
}

#[test]
fn usage_errors_from_the_parser_exit_2() {
    let sb = Sandbox::new();
    for args in [
        vec!["run", "--job", "J"],                          // no command
        vec!["run", "--job", "J", "-j", "0", "--", "true"], // -j out of range
        vec!["run", "--job", "J", "--backoff", "soon", "--", "true"],
        vec!["frobnicate"],
    ] {
        let out = sb.ckpt().args(&args).stdin("a\n").run();
        out.code(2);
        assert!(out.stderr.contains("error:"), "{args:?}: {}", out.stderr);
    }
    assert!(!sb.db().exists());
}

/// A usage error stays one line and keeps the parser's tips (a similar
/// option or subcommand, where an option belongs); for a value that starts
/// with '-', the whole of it after '=' when it follows an option (clap's
/// own `-- -1` would make it a positional argument, and names only `-1` of
/// `-1d`), else after `--`; for an unknown long option, none.
#[test]
fn usage_errors_keep_their_tip_on_one_line() {
    let sb = Sandbox::new();
    for (args, line) in [
        (
            vec!["status", "--jsn", "J"],
            "ckpt: error: unexpected argument '--jsn' found (tip: a similar argument exists: '--json') (see ckpt --help)",
        ),
        (
            vec!["stauts", "J"],
            "ckpt: error: unrecognized subcommand 'stauts' (tip: a similar subcommand exists: 'status') (see ckpt --help)",
        ),
        (
            vec!["prune", "--completed-before", "-1d"],
            "ckpt: error: unexpected argument '-1' found (tip: a value that starts with '-' goes after '=': --completed-before=-1d) (see ckpt --help)",
        ),
        (
            vec!["show", "-x"],
            "ckpt: error: unexpected argument '-x' found (tip: a value that starts with '-' goes after '--': -- -x) (see ckpt --help)",
        ),
        (
            vec!["--json", "status", "J"],
            "ckpt: error: unexpected argument '--json' found (tip: 'status --json' exists) (see ckpt --help)",
        ),
        (
            vec!["run", "--job", "J", "--itmes", "f", "--", "true"],
            "ckpt: error: unexpected argument '--itmes' found (tip: a similar argument exists: '--items') (see ckpt --help)",
        ),
        (
            vec!["show", "--frobnicate"],
            "ckpt: error: unexpected argument '--frobnicate' found (see ckpt --help)",
        ),
    ] {
        let out = sb.ckpt().args(&args).run();
        out.code(2);
        assert_eq!(out.stderr, format!("{line}\n"), "{args:?}");
    }
    // Both ways work: a job named "-x".
    sb.ckpt()
        .args(["checkpoint", "set", "--items-processed=3", "--", "-x", "1"])
        .run()
        .success();
    let out = sb.ckpt().args(["show", "--", "-x"]).run();
    out.success();
    assert!(out.stdout.contains("-x"), "{}", out.stdout);
    sb.ckpt().args(["show", "-x"]).run().code(2);
}

/// The "unchanged" checks above are only meaningful if a dump shows a change.
#[test]
fn dump_shows_a_change() {
    let sb = Sandbox::new();
    sb.ckpt()
        .args(["checkpoint", "set", "J", "1"])
        .run()
        .success();
    let one = dump_db(&sb.db());
    sb.ckpt()
        .args(["checkpoint", "set", "J", "2"])
        .run()
        .success();
    assert_ne!(dump_db(&sb.db()), one, "a change shows in the dump");
}

/// `-j` beyond what the open-file limit allows: the soft limit is raised
/// to the hard one when that is enough; when not, the run is refused
/// before the store is touched, rather than charging items for commands
/// ckpt could not start.
#[test]
fn jobs_beyond_the_open_file_limit() {
    let sb = Sandbox::new();
    let file = sb.write_items("items.txt", &crate::util::items("i", 200));
    let run = |ulimit: &str| {
        let wrapper = format!("ulimit {ulimit} || exit 77; exec \"$0\" \"$@\"");
        sb.ckpt_via(&["sh", "-c", &wrapper])
            .arg("--store")
            .arg(sb.store_url())
            .args(["run", "--job", "J", "-q", "-j", "200", "--items"])
            .arg(&file)
            .args(["--", "sh", "-c", "sleep 0.2; echo \"$0\" >> ran.log"])
            .run()
    };
    // Soft and hard limit 256: 200 commands cannot fit.
    let line = run("-n 256").error(2);
    assert!(
        line.contains("-j 200 needs about") && line.contains("ulimit -n"),
        "{line}"
    );
    assert!(!sb.db().exists(), "the store was created");
    // Only the soft limit low: raised, and every item runs once. (200
    // commands need about 1064 files: a host whose hard limit is lower
    // refuses, as above.)
    let mut hard = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills the struct given.
    let known = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut hard) } == 0;
    if known && hard.rlim_max != libc::RLIM_INFINITY && hard.rlim_max < 1_100 {
        eprintln!(
            "skipped: the hard open-file limit is {}, under what -j 200 needs",
            hard.rlim_max
        );
        return;
    }
    let out = run("-Sn 256");
    if out.code == 77 {
        eprintln!("skipped: cannot set the soft limit");
        return;
    }
    out.success();
    assert_eq!(sb.lines("ran.log").len(), 200);
    assert_eq!(item_counts(&sb.status("J")), (0, 0, 200, 0, 0));
}

/// A stdout that cannot be written (a full disk: `/dev/full`) is one error
/// line and exit 4 from every command that prints, never a panic; a
/// stderr that cannot be written leaves the exit code to tell.
#[test]
fn full_disk_on_stdout_is_one_error_line() {
    let sb = Sandbox::new();
    sb.ckpt()
        .args(["checkpoint", "set", "J", "1"])
        .run()
        .success();
    sb.ckpt()
        .args(["run", "--job", "I", "-q", "--", "false"])
        .stdin("a\n")
        .run()
        .code(1);
    let full = || {
        std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .expect("/dev/full")
    };
    let before = dump_db(&sb.db());
    for args in [
        vec!["jobs"],
        vec!["jobs", "--json"],
        vec!["checkpoint", "get", "J"],
        vec!["checkpoint", "get", "J", "--full"],
        vec!["status", "J"],
        vec!["status", "I"],
        vec!["status", "J", "--json"],
        vec!["show", "J"],
        vec!["show", "I"],
        vec!["show", "J", "--json"],
        vec!["items", "I"],
        vec!["items", "I", "--json"],
        vec!["doctor", "--json"],
        vec!["completions", "bash"],
        vec!["man"],
        vec!["--help"],
        vec!["run", "--help"],
        vec!["--version"],
    ] {
        let line = sb
            .ckpt()
            .args(&args)
            .stdout_to(full())
            .run()
            .error(STORE_ERROR);
        assert!(
            line.contains("cannot write the output: No space left on device"),
            "{args:?}: {line}"
        );
    }
    assert_eq!(dump_db(&sb.db()), before, "reading changed the store");
    // Nowhere to say it: the exit code says what went wrong.
    let mut cmd = std::process::Command::new(crate::util::BIN);
    let out = cmd
        .args(["--store", &sb.store_url(), "checkpoint", "get", "nosuch"])
        .stdout(std::process::Stdio::null())
        .stderr(full())
        .status()
        .unwrap();
    assert_eq!(out.code(), Some(3), "{out:?}");
}

/// `ckpt run --json` whose summary cannot be written (a full disk): the
/// run's work stands, and it exits 4 as any command whose output is lost
/// does, saying so; a run that failed keeps its own exit code.
#[test]
fn a_run_summary_that_cannot_be_written_is_exit_4() {
    let sb = Sandbox::new();
    let file = sb.write("items.txt", "a\nb\n");
    let full = || {
        std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .expect("/dev/full")
    };
    let run = |job: &str, command: &str| {
        sb.ckpt()
            .args(["run", "--job", job, "--json", "--retries", "0", "--items"])
            .arg(&file)
            .args(["--", command])
            .stdout_to(full())
            .run()
    };
    let out = run("J", "true");
    out.code(STORE_ERROR);
    assert!(
        out.stderr
            .contains("ckpt: error: cannot write the output: No space left on device"),
        "{}",
        out.stderr
    );
    assert_eq!(item_counts(&sb.status("J")), (0, 0, 2, 0, 0));
    run("F", "false").code(1);
}

/// A `ckpt run` whose stderr cannot be written (a full disk, a reader that
/// went away) logs nowhere but runs every item to its end and exits as
/// its items say: a log line is never worth a panic mid-run.
#[test]
fn a_run_with_an_unwritable_stderr_finishes_its_items() {
    let sb = Sandbox::new();
    let items: String = (1..=6).map(|i| format!("{i}\n")).collect();
    sb.write("items.txt", &items);
    // Items 1 to 3 fail (each failure logs a warning), the rest complete.
    let command = ["sh", "-c", "echo err >&2; [ \"$1\" -gt 3 ]", "sh", "{}"];
    let start = |job: &str, stderr: std::process::Stdio| {
        std::process::Command::new(crate::util::BIN)
            .current_dir(sb.path())
            .args(["--store", &sb.store_url(), "run", "--job", job])
            .args(["--items", "items.txt", "--retries", "0", "--"])
            .args(command)
            .stdout(std::process::Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap()
    };
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .expect("/dev/full");
    let status = start("F", full.into()).wait().unwrap();
    assert_eq!(status.code(), Some(1), "{status:?}");
    assert_eq!(item_counts(&sb.status("F")), (0, 0, 3, 0, 3));
    // stderr a pipe whose reader is gone.
    let mut child = start("P", std::process::Stdio::piped());
    drop(child.stderr.take());
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(1), "{status:?}");
    assert_eq!(item_counts(&sb.status("P")), (0, 0, 3, 0, 3));
}

/// `ckpt ... | head -c1`: a reader that goes away is not an error, and
/// never a panic.
#[test]
fn closed_stdout_pipe_is_not_a_panic() {
    let sb = Sandbox::new();
    let state = sb.write(
        "state.json",
        serde_json::json!({ "x": "y".repeat(256 * 1024) }).to_string(),
    );
    sb.ckpt()
        .args(["checkpoint", "set", "J", "1", "--state"])
        .arg(format!("@{}", state.display()))
        .run()
        .success();
    let mut child = std::process::Command::new(crate::util::BIN)
        .args([
            "--store",
            &sb.store_url(),
            "checkpoint",
            "get",
            "J",
            "--full",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take()); // the reader goes away before reading anything
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    use std::os::unix::process::ExitStatusExt;
    assert!(
        out.status.success() || out.status.signal() == Some(libc_sigpipe()),
        "{:?} {stderr}",
        out.status
    );
}

fn libc_sigpipe() -> i32 {
    13
}
