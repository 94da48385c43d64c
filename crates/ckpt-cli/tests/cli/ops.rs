//! Operating a job from the command line: re-driving dead items, reading
//! why they died, and one-line usage errors.

use crate::util::{item_counts, Sandbox};

#[test]
fn dead_items_are_listed_and_retry_redrives_them() {
    let sb = Sandbox::new();
    let file = sb.write("items.txt", "good\nbad\n");
    sb.ckpt()
        .args(["run", "--job", "J", "--retries", "0", "--items"])
        .arg(&file)
        .args([
            "--",
            "sh",
            "-c",
            r#"[ "$0" != bad ] || { echo boom >&2; exit 7; }"#,
        ])
        .run()
        .code(1);
    let status = sb.ckpt().args(["status", "J"]).run();
    status.success();
    assert!(
        status
            .stdout
            .contains("bad: exit status 7 (after 1 attempt)"),
        "{}",
        status.stdout
    );
    assert!(status.stdout.contains("ckpt retry J"), "{}", status.stdout);
    // A plain re-run leaves dead items dead...
    sb.ckpt()
        .args(["run", "--job", "J", "--items"])
        .arg(&file)
        .args(["--", "true"])
        .run()
        .code(1);
    // ...until they are re-driven; only the given keys move, and a key
    // that matches no dead item is said so (exit 3, nothing changed).
    let line = sb.ckpt().args(["retry", "J", "nope"]).run().error(3);
    assert!(
        line.contains("no dead item with the key(s) given")
            && line.contains("ckpt items J --status dead"),
        "{line}"
    );
    assert_eq!(
        item_counts(&sb.status("J")).4,
        1,
        "an unknown key re-drives nothing"
    );
    let line = sb.ckpt().args(["retry", "J", "good"]).run().error(3);
    assert!(line.contains("no dead item"), "a completed item: {line}");
    let out = sb.ckpt().args(["retry", "J", "bad", "nope", "bad"]).run();
    out.success();
    assert!(
        out.stderr.contains("1 dead item(s) back to pending")
            && out
                .stderr
                .contains("1 of the 2 keys given match no dead item of job 'J'"),
        "{}",
        out.stderr
    );
    sb.ckpt()
        .args(["run", "--job", "J", "--items"])
        .arg(&file)
        .args(["--", "true"])
        .run()
        .success();
    let status = sb.status("J");
    assert_eq!(item_counts(&status), (0, 0, 2, 0, 0));
    assert_eq!(status["status"], "completed");
    assert!(sb
        .ckpt()
        .args(["retry", "no-such-job"])
        .run()
        .error(3)
        .contains("no-such-job"));
}

#[test]
fn usage_errors_are_one_line_with_exit_2() {
    let sb = Sandbox::new();
    for args in [
        &["run", "--job", "J"][..],
        &["run", "--job", "J", "-j", "0", "--", "true"],
        &["run", "--job", "J", "--lease", "0s", "--", "true"],
        &["run", "--job", "J", "--lease", "soon", "--", "true"],
        &["frobnicate"],
    ] {
        let line = sb.ckpt().args(args.iter().copied()).run().error(2);
        assert!(line.contains("see ckpt --help"), "{args:?}: {line}");
    }
    assert!(!sb.db().exists(), "no usage error creates a store");
}

#[test]
fn a_bad_items_file_creates_no_store() {
    let sb = Sandbox::new();
    let file = sb.write("items.txt", b"ok\n\xff\xfe\n".as_slice());
    let line = sb
        .ckpt()
        .args(["run", "--job", "J", "--items"])
        .arg(&file)
        .args(["--", "true"])
        .run()
        .error(2);
    assert!(line.contains("line 2"), "{line}");
    assert!(!sb.db().exists(), "the store was created: {line}");
    let long = format!("short\n{}\n", "k".repeat(70 * 1024));
    let file = sb.write("long.txt", long);
    let line = sb
        .ckpt()
        .args(["run", "--job", "J", "--items"])
        .arg(&file)
        .args(["--", "true"])
        .run()
        .error(2);
    assert!(line.contains("line 2") && line.contains("limit"), "{line}");
    assert!(!sb.db().exists());
}

#[test]
fn an_oversize_state_creates_no_store() {
    let sb = Sandbox::new();
    let state = sb.write("state.json", format!("\"{}\"", "x".repeat(1024 * 1024 + 1)));
    let line = sb
        .ckpt()
        .args(["checkpoint", "set", "J", "1", "--state"])
        .arg(format!("@{}", state.display()))
        .run()
        .error(2);
    assert!(line.contains("over the limit"), "{line}");
    assert!(!sb.db().exists());
}

#[test]
fn help_does_not_show_the_store_url_from_the_environment() {
    let sb = Sandbox::new();
    let out = sb
        .ckpt_bare()
        .env("CKPT_STORE", "postgres://u:hunter2@db.example/x")
        .arg("--help")
        .run();
    out.success();
    assert!(!out.stdout.contains("hunter2"), "{}", out.stdout);
}
