//! `ckpt run --stderr-tail`: the end of a failed command's stderr is kept
//! with the item and shown beside its error by `items`, `show` and
//! `status` (escaped for terminals; whole in `--json`).

use serde_json::Value;

use crate::util::{stored_items, Out, Sandbox};

/// Runs one item "i" whose command is `sh -c script`, dead after one
/// failure, with `flags`.
fn run_failing(sb: &Sandbox, script: &str, flags: &[&str]) -> Out {
    let file = sb.write_items("items.txt", &["i".into()]);
    let out = sb
        .ckpt()
        .args(["run", "--job", "J", "-q", "--retries", "0", "--items"])
        .arg(&file)
        .args(flags)
        .args(["--", "sh", "-c", script, "_"])
        .run();
    out.code(1);
    out
}

/// The dead item "i" as `ckpt items --json` shows it.
fn dead_item(sb: &Sandbox) -> Value {
    let out = sb
        .ckpt()
        .args(["items", "J", "--status", "dead", "--json"])
        .run();
    out.success();
    let doc = out.json();
    assert_eq!(doc.as_array().map(Vec::len), Some(1), "{doc}");
    doc[0].clone()
}

fn text(sb: &Sandbox, args: &[&str]) -> String {
    let out = sb.ckpt().args(args).run();
    out.success();
    out.stdout.clone()
}

/// No control character but the newline reaches the terminal.
#[track_caller]
fn no_control_chars(text: &str) {
    let bad: Vec<char> = text
        .chars()
        .filter(|&c| c.is_control() && c != '\n')
        .collect();
    assert!(bad.is_empty(), "control characters {bad:?} in {text:?}");
}

const CORRUPT: &str = "echo working; echo 'convert: corrupt JPEG data' >&2; exit 1";

#[test]
fn a_failed_commands_stderr_is_shown_beside_its_error() {
    for mode in [&[][..], &["--group"], &["--ungroup"], &["--tag"]] {
        let sb = Sandbox::new();
        let out = run_failing(&sb, CORRUPT, mode);
        // Still passed on to ckpt's own stderr, as ever.
        assert!(
            out.stderr.contains("convert: corrupt JPEG data"),
            "{mode:?}: {}",
            out.stderr
        );
        let item = dead_item(&sb);
        assert_eq!(item["last_error"], "exit status 1", "{mode:?}");
        // The command's own bytes: untagged with --tag.
        assert_eq!(
            item["last_output"], "convert: corrupt JPEG data\n",
            "{mode:?}"
        );
        let items = text(&sb, &["items", "J", "--status", "dead"]);
        assert!(
            items.contains("exit status 1 (stderr: convert: corrupt JPEG data)"),
            "{items}"
        );
        let show = text(&sb, &["show", "J"]);
        assert!(show.contains("| convert: corrupt JPEG data"), "{show}");
        let status = text(&sb, &["status", "J"]);
        assert!(status.contains("| convert: corrupt JPEG data"), "{status}");
        let out = sb.ckpt().args(["show", "J", "--json"]).run();
        out.success();
        assert_eq!(
            out.json()["dead_items"][0]["last_output"],
            "convert: corrupt JPEG data\n"
        );
        let out = sb.ckpt().args(["status", "J", "--json"]).run();
        out.success();
        assert_eq!(
            out.json()["dead_items"][0]["last_output"],
            "convert: corrupt JPEG data\n"
        );
    }
}

#[test]
fn binary_garbage_on_stderr_is_escaped_for_terminals_and_valid_json() {
    let sb = Sandbox::new();
    // ESC sequences (colour, terminal title), BEL, invalid UTF-8, NUL, CR,
    // a bidirectional override.
    let garbage = r"printf '\033[31mred\033]0;pwned\007 \377\376 nul:\000 cr:\r \342\200\256rtl\n' >&2; exit 3";
    run_failing(&sb, garbage, &[]);
    let item = dead_item(&sb);
    let kept = item["last_output"].as_str().expect("a string");
    assert!(kept.contains("\u{1b}[31mred"), "{kept:?}");
    assert!(
        kept.contains('\u{fffd}'),
        "invalid UTF-8 replaced: {kept:?}"
    );
    for args in [
        &["items", "J"][..],
        &["items", "J", "--status", "dead"],
        &["show", "J"],
        &["status", "J"],
    ] {
        let shown = text(&sb, args);
        no_control_chars(&shown);
        assert!(!shown.contains('\u{202e}'), "{args:?}: {shown:?}");
        assert!(shown.contains(r"\u{1b}[31mred"), "{args:?}: {shown}");
    }
}

#[test]
fn megabytes_of_stderr_keep_only_the_tail() {
    let sb = Sandbox::new();
    // 5 MB in lines of 1000 bytes, then the line that says why.
    let script = "yes \"$(printf '%0999d' 0)\" | head -c 5000000 >&2; \
                  echo 'the real error' >&2; exit 1";
    let out = run_failing(&sb, script, &[]);
    assert!(out.stderr.len() >= 5_000_000, "passed on whole");
    let item = dead_item(&sb);
    let kept = item["last_output"].as_str().unwrap();
    assert!(kept.len() <= 4096, "{} bytes kept", kept.len());
    assert!(kept.ends_with("the real error\n"), "{kept:?}");
    // Cut at a line: every line kept is a whole one.
    assert!(kept
        .lines()
        .all(|l| l.len() == 999 || l == "the real error"));

    // A smaller tail keeps less; 0 keeps none.
    let sb = Sandbox::new();
    run_failing(&sb, script, &["--stderr-tail", "100"]);
    let kept = dead_item(&sb)["last_output"].as_str().unwrap().to_string();
    assert!(kept.len() <= 100 && kept.ends_with("the real error\n"));
    for mode in [&[][..], &["--ungroup"]] {
        let sb = Sandbox::new();
        let flags = [mode, &["--stderr-tail", "0"]].concat();
        let out = run_failing(&sb, CORRUPT, &flags);
        assert!(out.stderr.contains("convert: corrupt JPEG data"));
        let item = dead_item(&sb);
        assert_eq!(item["last_output"], Value::Null, "{mode:?}");
        assert_eq!(item["last_error"], "exit status 1");
    }
}

#[test]
fn stderr_tail_beyond_what_an_item_keeps_is_refused() {
    let sb = Sandbox::new();
    let out = sb
        .ckpt()
        .args(["run", "--job", "J", "--stderr-tail", "1MiB", "--", "true"])
        .run();
    out.code(2);
    assert!(out.stderr.contains("--stderr-tail"), "{}", out.stderr);
}

#[test]
fn a_succeeding_commands_stderr_is_not_kept() {
    let sb = Sandbox::new();
    let file = sb.write_items("items.txt", &["i".into()]);
    sb.ckpt()
        .args(["run", "--job", "J", "-q", "--items"])
        .arg(&file)
        .args(["--", "sh", "-c", "echo 'just a warning' >&2"])
        .run()
        .success();
    assert_eq!(stored_items(&sb, "J")["i"]["last_output"], Value::Null);
}
