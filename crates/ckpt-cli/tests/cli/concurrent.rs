//! Several `ckpt run` processes on one store and job share the items.

use std::collections::BTreeSet;

use crate::util::{assert_each_once, item_counts, items, Sandbox};

#[test]
fn three_processes_run_each_item_exactly_once_in_total() {
    let sb = Sandbox::new();
    let all = items("w", 60);
    let file = sb.write_items("items.txt", &all);
    // "PARENT_PID ITEM": the parent of the shell is the `ckpt` that ran it.
    let script = r#"echo "$PPID $0" >> log; sleep 0.05"#;
    let outs = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..3)
            .map(|_| {
                let cmd = sb
                    .ckpt()
                    .args(["run", "--job", "J", "--items"])
                    .arg(&file)
                    .args(["-j", "2", "--", "sh", "-c", script]);
                scope.spawn(move || cmd.run())
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .collect::<Vec<_>>()
    });
    for out in &outs {
        out.success();
        assert!(
            out.stderr.contains("job 'J' completed: 60 items"),
            "{}",
            out.stderr
        );
    }
    let log = sb.lines("log");
    let ran: Vec<String> = log
        .iter()
        .map(|l| l.split(' ').nth(1).unwrap().to_string())
        .collect();
    assert_each_once(&ran, &all);
    // The work was shared: one process alone would need 1.5 s.
    let runners: BTreeSet<&str> = log.iter().map(|l| l.split(' ').next().unwrap()).collect();
    assert!(runners.len() >= 2, "items ran under {runners:?} only");

    let status = sb.status("J");
    assert_eq!(status["status"], "completed");
    assert_eq!(item_counts(&status), (0, 0, 60, 0, 0));
}
