//! Resume: running the same command again skips what is done.

use crate::util::{assert_each_once, item_counts, items, Sandbox};

const LOG_ITEM: &str = r#"echo "$0" >> log"#;

#[test]
fn rerun_skips_completed_items_and_runs_only_new_ones() {
    let sb = Sandbox::new();
    let first = items("r", 6);
    let file = sb.write_items("items.txt", &first);
    let run = || {
        sb.ckpt()
            .args(["run", "--job", "J", "--items"])
            .arg(&file)
            .args(["-j", "2", "--json", "--", "sh", "-c", LOG_ITEM])
            .run()
    };

    let out = run();
    out.success();
    assert_each_once(&sb.lines("log"), &first);

    // Same command again: nothing runs.
    let out = run();
    out.success();
    assert_each_once(&sb.lines("log"), &first);
    let doc = out.json();
    assert_eq!(doc["enqueued"], 0);
    assert_eq!(doc["already_known"], 6);
    assert_eq!(doc["completed_now"], 0);
    assert_eq!(doc["status"], "completed");

    // Two more lines: only they run.
    let mut all = first.clone();
    all.extend(["r7".to_string(), "r8".to_string()]);
    sb.write_items("items.txt", &all);
    let out = run();
    out.success();
    assert_each_once(&sb.lines("log"), &all);
    let doc = out.json();
    assert_eq!(doc["enqueued"], 2);
    assert_eq!(doc["already_known"], 6);
    assert_eq!(doc["completed_now"], 2);

    let status = sb.status("J");
    assert_eq!(status["status"], "completed");
    assert_eq!(item_counts(&status), (0, 0, 8, 0, 0));
}

#[test]
fn jobs_are_independent() {
    let sb = Sandbox::new();
    let file = sb.write_items("items.txt", &items("k", 3));
    for job in ["A", "B"] {
        sb.ckpt()
            .args(["run", "--job", job, "--items"])
            .arg(&file)
            .args(["--", "sh", "-c", r#"echo "$CKPT_JOB $0" >> log"#])
            .run()
            .success();
    }
    // Completing the items of job A did not complete those of job B.
    let mut expected: Vec<String> = ["A", "B"]
        .iter()
        .flat_map(|j| items("k", 3).into_iter().map(move |k| format!("{j} {k}")))
        .collect();
    expected.sort();
    assert_each_once(&sb.lines("log"), &expected);
    assert_eq!(item_counts(&sb.status("A")), (0, 0, 3, 0, 0));
    assert_eq!(item_counts(&sb.status("B")), (0, 0, 3, 0, 0));
}
