//! Which command did it: the warning when a job's command changes, the
//! commands in `ckpt show`, and re-running the items an older command
//! completed.

use crate::util::Sandbox;

/// Logs "VERSION ITEM".
const V1: &str = r#"echo "v1 $0" >> log"#;
const V2: &str = r#"echo "v2 $0" >> log"#;

fn run(sb: &Sandbox, items: &[&str], script: &str) -> String {
    let file = sb.write_items(
        "items.txt",
        &items.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
    );
    let out = sb
        .ckpt()
        .args(["run", "--job", "J", "--items"])
        .arg(&file)
        .args(["--", "sh", "-c", script])
        .run();
    out.success();
    out.stderr.clone()
}

fn warnings(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| l.starts_with("ckpt: warning: job"))
        .collect()
}

/// `ckpt show J --json`'s commands as (id, completed, latest), and the
/// count of completions by no known command.
fn commands(sb: &Sandbox) -> (Vec<(i64, u64, bool)>, u64) {
    let out = sb.ckpt().args(["show", "J", "--json"]).run();
    out.success();
    let doc = out.json();
    let list = doc["commands"]
        .as_array()
        .expect("commands")
        .iter()
        .map(|c| {
            (
                c["command_id"].as_i64().unwrap(),
                c["completed"].as_u64().unwrap(),
                c["latest"].as_bool().unwrap(),
            )
        })
        .collect();
    (list, doc["completed_by_unknown_command"].as_u64().unwrap())
}

fn sorted_log(sb: &Sandbox) -> Vec<String> {
    let mut log = sb.lines("log");
    log.sort();
    log
}

#[test]
fn a_changed_command_warns_once_and_its_old_items_can_be_redone() {
    let sb = Sandbox::new();
    let first = run(&sb, &["a", "b"], V1);
    assert!(warnings(&first).is_empty(), "a first run: {first}");
    let same = run(&sb, &["a", "b"], V1);
    assert!(warnings(&same).is_empty(), "the same command: {same}");

    // A new item and a new command: one warning naming both commands.
    let changed = run(&sb, &["a", "b", "c"], V2);
    let lines = warnings(&changed);
    assert_eq!(lines.len(), 1, "{changed}");
    assert!(
        lines[0].starts_with(
            r#"ckpt: warning: job 'J' was last run with `sh -c 'echo "v1 $0" >> log'` (completed 2 items); now `sh -c 'echo "v2 $0" >> log'`"#
        ),
        "{}",
        lines[0]
    );
    assert_eq!(sorted_log(&sb), ["v1 a", "v1 b", "v2 c"]);
    assert_eq!(commands(&sb), (vec![(1, 2, false), (2, 1, true)], 0));
    let text = sb.ckpt().args(["show", "J"]).run();
    text.success();
    assert!(
        text.stdout
            .contains(r#"#2   1 completed  sh -c 'echo "v2 $0" >> log' (latest)"#),
        "{}",
        text.stdout
    );

    // Re-drive what v1 completed; v2 then redoes exactly those, warning no more.
    let retry = sb
        .ckpt()
        .args(["retry", "J", "--completed-by-other-command"])
        .run();
    retry.success();
    assert!(
        retry
            .stderr
            .contains("2 item(s) completed by another command"),
        "{}",
        retry.stderr
    );
    assert_eq!(commands(&sb), (vec![(1, 0, false), (2, 1, true)], 0));
    let redo = run(&sb, &["a", "b", "c"], V2);
    assert!(warnings(&redo).is_empty(), "{redo}");
    assert_eq!(sorted_log(&sb), ["v1 a", "v1 b", "v2 a", "v2 b", "v2 c"]);
    assert_eq!(commands(&sb), (vec![(1, 0, false), (2, 3, true)], 0));
}

#[test]
fn retry_by_command_id() {
    let sb = Sandbox::new();
    run(&sb, &["a"], V1);
    run(&sb, &["a", "b"], V2);
    let line = sb
        .ckpt()
        .args(["retry", "J", "--completed-by", "9"])
        .run()
        .error(3);
    assert_eq!(
        line,
        "ckpt: error: not found: job 'J' has no command 9 (see `ckpt show J`)"
    );
    let bad = sb.ckpt().args(["retry", "J", "--completed-by", "x"]).run();
    bad.code(2);
    let mixed = sb
        .ckpt()
        .args(["retry", "J", "--failed", "--completed-by", "1"])
        .run();
    mixed.code(2);
    sb.ckpt()
        .args(["retry", "J", "--completed-by", "unknown"])
        .run()
        .success();
    assert_eq!(commands(&sb), (vec![(1, 1, false), (2, 1, true)], 0));
    sb.ckpt()
        .args(["retry", "J", "--completed-by", "2"])
        .run()
        .success();
    assert_eq!(commands(&sb), (vec![(1, 1, false), (2, 0, true)], 0));
    // The item v2 completed runs again; v1's stays done.
    run(&sb, &["a", "b"], V2);
    assert_eq!(sorted_log(&sb), ["v1 a", "v2 b", "v2 b"]);
}
