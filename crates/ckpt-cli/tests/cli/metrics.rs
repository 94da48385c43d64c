//! Prometheus metrics: what `ckpt serve` exports from the store (checked
//! with `promtool check metrics` when it is installed) and what
//! `ckpt run --metrics-listen` exports while it runs.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::json;

use ckpt::Ckpt;

use crate::server::{agent, cursor_job, http, items_job, silent_job, stale_job, Server};
use crate::util::{item_counts, wait_until, Sandbox};

// ----- metrics -----

/// One sample of a Prometheus text exposition.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// The samples of an exposition (comments skipped; label values unescaped).
pub fn parse(text: &str) -> Vec<Sample> {
    let mut samples = Vec::new();
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("a sample line");
        let value: f64 = value.parse().unwrap_or_else(|e| panic!("{line}: {e}"));
        let (name, labels) = match series.split_once('{') {
            None => (series.to_string(), BTreeMap::new()),
            Some((name, rest)) => (
                name.to_string(),
                parse_labels(rest.strip_suffix('}').unwrap()),
            ),
        };
        samples.push(Sample {
            name,
            labels,
            value,
        });
    }
    samples
}

fn parse_labels(text: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut chars = text.chars().peekable();
    while chars.peek().is_some() {
        let key: String = chars.by_ref().take_while(|&c| c != '=').collect();
        assert_eq!(chars.next(), Some('"'), "label {key} in {text}");
        let mut value = String::new();
        loop {
            match chars.next().expect("a closed label value") {
                '\\' => match chars.next() {
                    Some('n') => value.push('\n'),
                    Some(c) => value.push(c),
                    None => panic!("dangling escape in {text}"),
                },
                '"' => break,
                c => value.push(c),
            }
        }
        labels.insert(key, value);
        if chars.peek() == Some(&',') {
            chars.next();
        }
    }
    labels
}

/// The value of the series with exactly these labels.
pub fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let want: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let found: Vec<f64> = samples
        .iter()
        .filter(|s| s.name == name && s.labels == want)
        .map(|s| s.value)
        .collect();
    assert!(found.len() <= 1, "{name} {labels:?} appears twice");
    found.first().copied()
}

/// `promtool`, when installed; without it the check is skipped (and fails
/// with CKPT_REQUIRE_SERVICES=1).
pub fn promtool() -> Option<std::path::PathBuf> {
    let found = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|dir| dir.join("promtool"))
        .find(|p| p.is_file());
    if found.is_none() {
        assert!(
            std::env::var("CKPT_REQUIRE_SERVICES").as_deref() != Ok("1"),
            "promtool is not on PATH and CKPT_REQUIRE_SERVICES=1 (apt-get install prometheus)"
        );
        eprintln!(
            "skipping the promtool check: promtool is not on PATH (apt-get install prometheus)"
        );
    }
    found
}

/// `promtool check metrics` on `text`: must pass without a lint.
pub fn promtool_check_metrics(text: &str) {
    let Some(promtool) = promtool() else { return };
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics failed ({}):\n{}{}\n--- exposition\n{text}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn metrics_show_every_job_from_the_store_and_drop_pruned_ones() {
    let sb = Sandbox::new();
    let items = r#"items "quoted" job"#;
    items_job(&sb, items);
    cursor_job(&sb, "export");
    stale_job(&sb, "stale");
    silent_job(&sb, "silent");
    let ckpt = Ckpt::open(&sb.store_url()).unwrap();
    ckpt.job("gone").unwrap().complete().unwrap();
    let server = Server::start(&sb, &[]);

    let res = server.get("/metrics");
    assert_eq!(res.status, 200);
    assert_eq!(res.content_type, "text/plain; version=0.0.4; charset=utf-8");
    promtool_check_metrics(&res.body);
    for family in [
        "# TYPE ckpt_checkpoints_total counter",
        "# TYPE ckpt_items gauge",
        "# TYPE ckpt_checkpoint_age_seconds gauge",
        "# TYPE ckpt_progress_age_seconds gauge",
        "# TYPE ckpt_checkpoint_history_size gauge",
        "# TYPE ckpt_checkpoint_state_bytes gauge",
        "# TYPE ckpt_job_running gauge",
        "# TYPE ckpt_store_up gauge",
        "# HELP ckpt_checkpoints_total ",
    ] {
        assert!(res.body.contains(family), "no {family:?} in\n{}", res.body);
    }
    let m = parse(&res.body);
    fn job(name: &str) -> [(&'static str, &str); 1] {
        [("job", name)]
    }
    assert_eq!(value(&m, "ckpt_store_up", &[]), Some(1.0));

    // The item job, its name escaped and read back intact.
    for (status, n) in [
        ("pending", 1.0),
        ("running", 0.0),
        ("completed", 2.0),
        ("failed", 0.0),
        ("dead", 2.0),
    ] {
        assert_eq!(
            value(&m, "ckpt_items", &[("job", items), ("status", status)]),
            Some(n),
            "{status}"
        );
    }
    assert_eq!(value(&m, "ckpt_job_running", &job(items)), Some(1.0));
    assert_eq!(value(&m, "ckpt_checkpoints_total", &job(items)), Some(0.0));
    assert_eq!(
        value(&m, "ckpt_checkpoint_age_seconds", &job(items)),
        None,
        "no checkpoint, no age"
    );
    assert_eq!(
        value(&m, "ckpt_progress_age_seconds", &job(items)),
        None,
        "an item job's progress is its items"
    );

    // The cursor job.
    let status = sb.status("export");
    assert_eq!(
        value(&m, "ckpt_checkpoints_total", &job("export")),
        Some(3.0)
    );
    assert_eq!(
        value(&m, "ckpt_checkpoint_history_size", &job("export")),
        Some(3.0)
    );
    assert_eq!(
        value(&m, "ckpt_checkpoint_state_bytes", &job("export")),
        Some(13.0)
    );
    assert_eq!(status["state_bytes"], 13);
    assert_eq!(
        value(&m, "ckpt_checkpoint_items_processed", &job("export")),
        Some(300.0)
    );
    let age = value(&m, "ckpt_checkpoint_age_seconds", &job("export")).unwrap();
    assert!((0.0..120.0).contains(&age), "age {age}");
    let progress = value(&m, "ckpt_progress_age_seconds", &job("export")).unwrap();
    assert!((0.0..120.0).contains(&progress), "progress age {progress}");
    for status in ["pending", "running", "completed", "failed", "dead"] {
        assert_eq!(
            value(&m, "ckpt_items", &[("job", "export"), ("status", status)]),
            Some(0.0)
        );
    }

    // The stale job: running, its checkpoint 20 minutes old.
    assert_eq!(value(&m, "ckpt_job_running", &job("stale")), Some(1.0));
    let age = value(&m, "ckpt_checkpoint_age_seconds", &job("stale")).unwrap();
    assert!((1200.0..1500.0).contains(&age), "age {age}");
    let progress = value(&m, "ckpt_progress_age_seconds", &job("stale")).unwrap();
    assert_eq!(progress, age, "a checkpoint is a cursor job's progress");

    // Running 20 minutes without a checkpoint: no checkpoint age, but its
    // progress age is what the stale alert (and `ckpt doctor`) sees.
    assert_eq!(value(&m, "ckpt_job_running", &job("silent")), Some(1.0));
    assert_eq!(
        value(&m, "ckpt_checkpoint_age_seconds", &job("silent")),
        None
    );
    let progress = value(&m, "ckpt_progress_age_seconds", &job("silent")).unwrap();
    assert!((1200.0..1500.0).contains(&progress), "age {progress}");

    // The completed job, then pruned: its series go with it.
    assert_eq!(value(&m, "ckpt_job_running", &job("gone")), Some(0.0));
    assert_eq!(
        value(&m, "ckpt_progress_age_seconds", &job("gone")),
        None,
        "a completed job makes no progress"
    );
    assert!(ckpt
        .store()
        .delete_job("gone", ckpt.now().plus(Duration::from_secs(1)))
        .unwrap());
    let res = server.get("/metrics");
    promtool_check_metrics(&res.body);
    let m = parse(&res.body);
    let stale: Vec<&Sample> = m
        .iter()
        .filter(|s| s.labels.get("job").map(String::as_str) == Some("gone"))
        .collect();
    assert!(stale.is_empty(), "series of a pruned job: {stale:?}");
    assert_eq!(value(&m, "ckpt_job_running", &job("export")), Some(1.0));
    server.stop();
}

/// Job names that differ only in backslashes are distinct series, each
/// label value reading back as the name (the exporter's own sanitiser
/// took `\\` for an escape already made).
#[test]
fn job_names_with_backslashes_are_distinct_series() {
    let sb = Sandbox::new();
    let names = [r"a\b", r"a\\b", r#"q\"x"#];
    for (i, name) in names.iter().enumerate() {
        sb.ckpt()
            .args(["checkpoint", "set", name, "1", "--items-processed"])
            .arg((i + 1).to_string())
            .run()
            .success();
    }
    let server = Server::start(&sb, &[]);
    let res = server.get("/metrics");
    promtool_check_metrics(&res.body);
    let m = parse(&res.body);
    for (i, name) in names.iter().enumerate() {
        assert_eq!(
            value(&m, "ckpt_checkpoint_items_processed", &[("job", name)]),
            Some((i + 1) as f64),
            "{name}: {}",
            res.body
        );
    }
    server.stop();
}

#[test]
fn metrics_of_an_empty_store_are_valid() {
    let sb = Sandbox::new();
    Ckpt::open(&sb.store_url()).unwrap();
    let server = Server::start(&sb, &[]);
    let res = server.get("/metrics");
    promtool_check_metrics(&res.body);
    let m = parse(&res.body);
    assert_eq!(m.len(), 1, "{m:?}");
    assert_eq!(value(&m, "ckpt_store_up", &[]), Some(1.0));
    assert_eq!(server.get("/api/jobs").expect(200), json!([]));
    server.stop();
}

// ----- `ckpt run --metrics-listen` -----

#[test]
fn run_serves_its_metrics_while_it_runs() {
    let sb = Sandbox::new();
    let file = sb.write_items("items.txt", &["one".into(), "two".into()]);
    // "two" waits for the file `go`.
    let script = r#"[ "$0" = one ] || while [ ! -e go ]; do sleep 0.02; done"#;
    let run = sb
        .ckpt()
        .args([
            "run",
            "--job",
            "J",
            "--metrics-listen",
            "127.0.0.1:0",
            "--items",
        ])
        .arg(&file)
        .args(["--", "sh", "-c", script])
        .start();
    let mut addr = None;
    wait_until(Duration::from_secs(30), "the metrics address", || {
        let stderr = run.stderr_so_far();
        addr = stderr
            .find("metrics on http://")
            .map(|i| &stderr[i + "metrics on http://".len()..])
            .and_then(|rest| rest.split('/').next())
            .map(str::to_string);
        addr.is_some()
    });
    let url = format!("http://{}/metrics", addr.unwrap());
    let completed = [("job", "J"), ("outcome", "completed")];
    let mut res = None;
    wait_until(Duration::from_secs(30), "item one's duration", || {
        let r = http(agent().get(&url).call(), "/metrics");
        let done = value(
            &parse(&r.body),
            "ckpt_item_duration_seconds_count",
            &completed,
        );
        res = Some(r);
        done == Some(1.0)
    });
    let res = res.unwrap();
    assert_eq!(res.status, 200);
    assert_eq!(res.content_type, "text/plain; version=0.0.4; charset=utf-8");
    promtool_check_metrics(&res.body);
    let m = parse(&res.body);
    // Both items were claimed at once; "two" is still running.
    assert_eq!(
        value(&m, "ckpt_item_attempts_total", &[("job", "J")]),
        Some(2.0)
    );
    assert_eq!(
        value(&m, "ckpt_item_lead_time_seconds_count", &[("job", "J")]),
        Some(1.0)
    );
    assert!(
        res.body
            .contains("# TYPE ckpt_item_duration_seconds histogram")
            && res.body.contains(
                r#"ckpt_item_duration_seconds_bucket{job="J",outcome="completed",le="+Inf"} 1"#
            ),
        "item durations are a histogram with buckets:\n{}",
        res.body
    );
    assert!(
        !res.body.contains("ckpt_store_up"),
        "a run serves its own metrics, not the store's"
    );
    sb.write("go", "");
    run.wait(Duration::from_secs(60)).success();
    assert_eq!(item_counts(&sb.status("J")), (0, 0, 2, 0, 0));
}

#[test]
fn run_with_a_taken_metrics_port_fails_before_touching_the_store() {
    let sb = Sandbox::new();
    let file = sb.write_items("items.txt", &["one".into()]);
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = sb
        .ckpt()
        .args(["run", "--job", "J", "--metrics-listen", &addr, "--items"])
        .arg(&file)
        .args(["--", "true"])
        .run();
    assert!(out.error(2).contains(&format!("cannot listen on {addr}")));
    assert!(!sb.db().exists(), "no store was created");
}
