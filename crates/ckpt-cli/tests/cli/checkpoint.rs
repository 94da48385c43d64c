//! `ckpt checkpoint get|set|clear` and the checkpoint in `ckpt status`.

use serde_json::json;

use crate::util::Sandbox;

#[test]
fn set_get_full_status_clear() {
    let sb = Sandbox::new();
    sb.ckpt()
        .args([
            "checkpoint",
            "set",
            "J",
            r#"{"offset":5}"#,
            "--items-processed",
            "5",
        ])
        .args(["--stage", "load", "--state", r#"{"sum":3}"#])
        .run()
        .success();
    assert!(sb.db().is_file(), "set creates the store");

    let out = sb.ckpt().args(["checkpoint", "get", "J"]).run();
    out.success();
    assert_eq!(out.stdout, "{\"offset\":5}\n");

    let out = sb.ckpt().args(["checkpoint", "get", "J", "--full"]).run();
    out.success();
    assert_eq!(
        out.json(),
        json!({"cursor": {"offset": 5}, "items_processed": 5, "stage": "load", "state": {"sum": 3}})
    );

    let cp = sb.status("J");
    assert_eq!(cp["cursor"], json!({"offset": 5}));
    assert_eq!(cp["items_processed"], 5);
    assert_eq!(cp["stage"], "load");
    assert_eq!(cp["state"], json!({"sum": 3}));
    assert_eq!(cp["saves"], 1);
    let age = cp["checkpoint_age_seconds"]
        .as_f64()
        .expect("checkpoint_age_seconds is a number");
    assert!((0.0..60.0).contains(&age), "checkpoint_age_seconds {age}");
    let human = sb.ckpt().args(["status", "J"]).run();
    human.success();
    assert!(
        human
            .stdout
            .contains(r#"checkpoint: cursor {"offset":5}, 5 items processed, stage load"#),
        "{}",
        human.stdout
    );

    // A second save replaces the first.
    sb.ckpt()
        .args([
            "checkpoint",
            "set",
            "J",
            "\"page-2\"",
            "--items-processed",
            "9",
        ])
        .run()
        .success();
    let out = sb.ckpt().args(["checkpoint", "get", "J", "--full"]).run();
    out.success();
    assert_eq!(
        out.json(),
        json!({"cursor": "page-2", "items_processed": 9, "stage": null, "state": null})
    );
    assert_eq!(sb.status("J")["saves"], 2);

    sb.ckpt().args(["checkpoint", "clear", "J"]).run().success();
    let line = sb.ckpt().args(["checkpoint", "get", "J"]).run().error(3);
    assert!(line.contains("no checkpoint"), "{line}");
    let out = sb.ckpt().args(["checkpoint", "get", "J", "--full"]).run();
    out.error(3);
    let status = sb.status("J");
    assert!(status["checkpoint_at"].is_null(), "{status}");
    assert!(status["cursor"].is_null(), "{status}");
}

#[test]
fn store_from_env_for_checkpoint_commands() {
    let sb = Sandbox::new();
    let url = format!("sqlite://{}", sb.join("env.db").display());
    sb.ckpt_bare()
        .env("CKPT_STORE", &url)
        .args(["checkpoint", "set", "J", "42"])
        .run()
        .success();
    let out = sb
        .ckpt_bare()
        .env("CKPT_STORE", &url)
        .args(["checkpoint", "get", "J"])
        .run();
    out.success();
    assert_eq!(out.stdout, "42\n");
    // --store wins over CKPT_STORE.
    let out = sb
        .ckpt()
        .env("CKPT_STORE", &url)
        .args(["checkpoint", "get", "J"])
        .run();
    out.error(3);
}

#[test]
fn get_on_a_job_without_checkpoint_exits_3() {
    let sb = Sandbox::new();
    // The job exists (it has items) but never saved a checkpoint.
    sb.ckpt()
        .args(["run", "--job", "J", "--", "true"])
        .stdin("a\n")
        .run()
        .success();
    let before = sb.dump();
    let line = sb.ckpt().args(["checkpoint", "get", "J"]).run().error(3);
    assert!(line.contains("'J' has no checkpoint"), "{line}");
    // An unknown job is not found either.
    let line = sb
        .ckpt()
        .args(["checkpoint", "get", "other"])
        .run()
        .error(3);
    assert!(line.contains("other"), "{line}");
    assert_eq!(sb.dump(), before, "get wrote nothing");
}

#[test]
fn clear_of_an_unknown_job_exits_3_and_creates_nothing() {
    let sb = Sandbox::new();
    sb.ckpt()
        .args(["checkpoint", "set", "J", "1"])
        .run()
        .success();
    let before = sb.dump();
    sb.ckpt()
        .args(["checkpoint", "clear", "nope"])
        .run()
        .error(3);
    assert_eq!(sb.dump(), before, "no job was created");
}

#[test]
fn cursor_that_is_not_json_exits_2() {
    let sb = Sandbox::new();
    // No store yet: a refused save does not create one.
    let line = sb
        .ckpt()
        .args(["checkpoint", "set", "J", "{offset:5}"])
        .run()
        .error(2);
    assert!(line.contains("cursor is not JSON"), "{line}");
    assert!(!sb.db().exists(), "the store was not created");

    // With a store and a checkpoint: both are kept.
    sb.ckpt()
        .args(["checkpoint", "set", "J", "7"])
        .run()
        .success();
    let before = sb.dump();
    sb.ckpt()
        .args(["checkpoint", "set", "J", "not json"])
        .run()
        .error(2);
    let line = sb
        .ckpt()
        .args(["checkpoint", "set", "J", "8", "--state", "{"])
        .run()
        .error(2);
    assert!(line.contains("state is not JSON"), "{line}");
    // An integer that a JSON number cannot keep exactly, as a cursor, a
    // state or an expected cursor: refused, not rounded.
    for args in [
        vec!["18446744073709551616"],
        vec!["8", "--state", r#"{"id":123456789012345678901234567890}"#],
        vec!["8", "--expect", "-9223372036854775809"],
    ] {
        let line = sb
            .ckpt()
            .args(["checkpoint", "set", "J"])
            .args(&args)
            .run()
            .error(2);
        assert!(line.contains("beyond the 64 bits"), "{args:?}: {line}");
    }
    assert_eq!(sb.dump(), before);
    let out = sb.ckpt().args(["checkpoint", "get", "J"]).run();
    out.success();
    assert_eq!(out.stdout, "7\n");
}

#[test]
fn a_negative_cursor_is_a_cursor_and_not_an_option() {
    let sb = Sandbox::new();
    sb.ckpt()
        .args(["checkpoint", "set", "J", "-5"])
        .run()
        .success();
    sb.ckpt()
        .args(["checkpoint", "set", "J", "-6", "--expect", "-5"])
        .run()
        .success();
    let line = sb
        .ckpt()
        .args(["checkpoint", "set", "J", "1", "--expect", "-5"])
        .run()
        .error(5);
    assert!(line.contains("the stored cursor is -6"), "{line}");
    // What is not a number stays an unknown option.
    let line = sb
        .ckpt()
        .args(["checkpoint", "set", "J", "-x"])
        .run()
        .error(2);
    assert!(line.contains("'-x'"), "{line}");
    let out = sb.ckpt().args(["checkpoint", "get", "J"]).run();
    out.success();
    assert_eq!(out.stdout, "-6\n");
}

#[test]
fn large_state_round_trips() {
    let sb = Sandbox::new();
    // As large as one command-line argument can be on Linux (128 KiB).
    let state = json!({ "blob": "x".repeat(120 * 1024) }).to_string();
    sb.ckpt()
        .args(["checkpoint", "set", "J", "1", "--state", &state])
        .run()
        .success();
    let out = sb.ckpt().args(["checkpoint", "get", "J", "--full"]).run();
    out.success();
    assert_eq!(
        out.json()["state"]["blob"].as_str().map(str::len),
        Some(120 * 1024)
    );
    assert_eq!(sb.status("J")["state_bytes"], state.len());
}

/// A state over the 1 MiB limit, given as `--state @FILE` (Linux refuses a
/// single argument over 128 KiB), is refused and the old checkpoint kept.
#[test]
fn state_over_one_mib_exits_2_and_keeps_the_previous_checkpoint() {
    let sb = Sandbox::new();
    sb.ckpt()
        .args(["checkpoint", "set", "J", "1", "--state", r#"{"sum":1}"#])
        .run()
        .success();
    let before = sb.dump();
    let big = json!({ "blob": "x".repeat(1024 * 1024) }).to_string();
    let file = sb.path().join("big-state.json");
    std::fs::write(&file, &big).unwrap();
    let line = sb
        .ckpt()
        .args(["checkpoint", "set", "J", "2", "--state"])
        .arg(format!("@{}", file.display()))
        .run()
        .error(2);
    assert!(line.contains("over the limit"), "{line}");
    assert_eq!(sb.dump(), before, "the previous checkpoint is kept");
    let out = sb.ckpt().args(["checkpoint", "get", "J", "--full"]).run();
    out.success();
    assert_eq!(out.json()["state"], json!({"sum": 1}));
}

/// `--state @FILE` and `--state -` read at most 16 MiB: a wrong file or an
/// endless pipe (`/dev/zero`) is refused once past it, in bounded memory,
/// with nothing written; a state laid out over more than 1 MiB of text but
/// within the limit serialised is kept.
#[test]
fn state_input_is_read_up_to_16_mib_only() {
    let sb = Sandbox::new();
    for source in ["@/dev/zero", "-"] {
        let cmd = sb
            .ckpt()
            .args(["checkpoint", "set", "J", "1", "--state", source]);
        let cmd = match source {
            "-" => cmd.stdin(vec![b' '; 17 << 20]),
            _ => cmd,
        };
        let line = cmd.run().error(2);
        assert!(
            line.contains("is over 16 MiB of text, and a state may be at most 1 MiB serialised"),
            "{line}"
        );
    }
    assert!(
        !sb.path().join("ckpt.db").exists(),
        "no store for refused input"
    );
    // 16 MiB exactly is read (and refused for its size, serialised).
    let file = sb.path().join("state.json");
    let at_most = format!("\"{}\"", "x".repeat(16 * 1024 * 1024 - 2));
    std::fs::write(&file, &at_most).unwrap();
    let line = sb
        .ckpt()
        .args(["checkpoint", "set", "J", "1", "--state"])
        .arg(format!("@{}", file.display()))
        .run()
        .error(2);
    assert!(line.contains("over the limit"), "{line}");
    // 2 MiB of text, most of it blanks: 3 bytes serialised.
    std::fs::write(&file, format!("[{}1]", " ".repeat(2 * 1024 * 1024))).unwrap();
    sb.ckpt()
        .args(["checkpoint", "set", "J", "1", "--state"])
        .arg(format!("@{}", file.display()))
        .run()
        .success();
    assert_eq!(sb.status("J")["state_bytes"], 3);
}

/// `--expect`: a compare-and-set; a mismatch exits 5 naming the stored
/// cursor and writes nothing.
#[test]
fn set_with_expect_writes_only_on_the_expected_cursor() {
    let sb = Sandbox::new();
    let set = |cursor: &str, expect: &str| {
        sb.ckpt()
            .args(["checkpoint", "set", "J", cursor, "--expect", expect])
            .run()
    };
    // No store: a cursor cannot match, and no store is created for it.
    let line = set("1", "0").error(5);
    assert!(line.contains("the stored cursor is none"), "{line}");
    assert!(!sb.db().exists(), "a refused write created the store");
    set(r#"{"b":2,"a":1}"#, "none").success();
    let before = sb.dump();
    let line = set("9", "none").error(5);
    assert!(
        line.contains(r#"the stored cursor is {"a":1,"b":2}"#)
            && line.contains("nothing was written"),
        "{line}"
    );
    let line = set("9", r#"{"a":1}"#).error(5);
    assert!(line.contains(r#"not the expected {"a":1}"#), "{line}");
    assert_eq!(sb.dump(), before, "a refused write changes nothing");
    // Key order and spacing do not matter.
    set("2", r#"{ "a": 1, "b": 2 }"#).success();
    let out = sb.ckpt().args(["checkpoint", "get", "J"]).run();
    out.success();
    assert_eq!(out.stdout, "2\n");
    // `none` also means a cleared checkpoint, and an unknown job.
    let line = set("3", "1").error(5);
    assert!(line.contains("the stored cursor is 2"), "{line}");
    sb.ckpt().args(["checkpoint", "clear", "J"]).run().success();
    set("3", "none").success();
    let line = sb
        .ckpt()
        .args(["checkpoint", "set", "K", "1", "--expect", "0"])
        .run()
        .error(5);
    assert!(line.contains("the stored cursor is none"), "{line}");
    let out = sb.ckpt().args(["checkpoint", "get", "K"]).run();
    out.error(3);
}

#[test]
fn set_with_bad_expect_json_is_a_usage_error() {
    let sb = Sandbox::new();
    let line = sb
        .ckpt()
        .args(["checkpoint", "set", "J", "1", "--expect", "{oops"])
        .run()
        .error(2);
    assert!(line.contains("--expect cursor is not JSON"), "{line}");
    assert!(!sb.db().exists(), "bad input creates no store");
}

/// Shell writers racing from the same old cursor: exactly one wins, the
/// others exit 5 and name the winner's cursor.
#[test]
fn racing_writers_with_expect_have_one_winner() {
    const N: usize = 6;
    let sb = Sandbox::new();
    sb.ckpt()
        .args(["checkpoint", "set", "J", "0"])
        .run()
        .success();
    let running: Vec<_> = (1..=N)
        .map(|i| {
            sb.ckpt()
                .args(["checkpoint", "set", "J", &i.to_string(), "--expect", "0"])
                .start()
        })
        .collect();
    let outs: Vec<_> = running
        .into_iter()
        .map(|r| r.wait(std::time::Duration::from_secs(60)))
        .collect();
    let winners: Vec<usize> = (0..N).filter(|i| outs[*i].code == 0).collect();
    assert_eq!(winners.len(), 1, "{outs:?}");
    let won = (winners[0] + 1).to_string();
    for out in outs.iter().filter(|o| o.code != 0) {
        let line = out.error(5);
        assert!(
            line.contains(&format!("the stored cursor is {won}")),
            "{line}"
        );
    }
    let out = sb.ckpt().args(["checkpoint", "get", "J"]).run();
    assert_eq!(out.stdout.trim(), won);
    assert_eq!(sb.status("J")["saves"], 2);
}
