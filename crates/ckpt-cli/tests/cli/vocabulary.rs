//! One JSON vocabulary: every `--json` output and every API document, read
//! from one store holding a checkpoint with history, items of every status
//! and live leases, follows the conventions of `ckpt::json` (times RFC 3339
//! in `*_at`, durations in `*_seconds`, sizes in `*_bytes`, a job is `job`),
//! and the job documents of `status`, `show` and the API are one shape.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

use ckpt::{Checkpoint, CheckpointPolicy, Ckpt, JobOptions, NewItem, QueueOptions, RetryPolicy};
use serde_json::{json, Value};

use crate::server::Server;
use crate::util::Sandbox;

/// Keys whose values are the user's own JSON, not ckpt's vocabulary.
const USER_DATA: [&str; 4] = ["cursor", "state", "payload", "stats"];

/// Names the vocabulary replaced, and bare units that say nothing.
const FORBIDDEN: [&str; 7] = [
    "name",
    "lease_expires",
    "ready_at",
    "cutoff",
    "at",
    "seconds",
    "id",
];

/// The detail fields a job's list entry leaves out.
const DETAIL_ONLY: [&str; 6] = [
    "state",
    "history",
    "dead_items",
    "failed_items",
    "commands",
    "completed_by_unknown_command",
];

fn queue_options(max_attempts: u32) -> QueueOptions {
    QueueOptions {
        lease: Duration::from_secs(3600),
        retry: RetryPolicy {
            max_attempts,
            base_delay: Duration::from_secs(3600),
            jitter: 0.0,
            ..RetryPolicy::default()
        },
    }
}

/// Job `J`: items `p` pending, `r` running (a live lease, a cursor), `c`
/// completed (stats), `f` failed (retry in an hour), `d` dead (a payload).
/// Job `export`: two checkpoints with a stage and state, held by this
/// process (a live job lease). Returns the held job: drop it at the end.
fn stage(sb: &Sandbox) -> ckpt::Job {
    let ckpt = Ckpt::open(&sb.store_url()).unwrap();
    let once = ckpt.queue_with("J", queue_options(1)).unwrap();
    let thrice = ckpt.queue_with("J", queue_options(3)).unwrap();
    let dead = NewItem {
        key: "d".into(),
        payload: Some(json!({"name": "user data may use any key", "at": 1})),
    };
    once.enqueue(
        [dead]
            .into_iter()
            .chain(["f", "r", "c", "p"].map(NewItem::key)),
    )
    .unwrap();
    let claim = |queue: &ckpt::Queue, key: &str| {
        let item = queue.claim(1).unwrap().remove(0);
        assert_eq!(item.key, key);
        item
    };
    let d = claim(&once, "d");
    once.fail(&d, "d broke").unwrap();
    let f = claim(&thrice, "f");
    thrice.fail(&f, "f broke").unwrap();
    let r = claim(&thrice, "r");
    thrice.save_cursor(&r, json!({"line": 3})).unwrap();
    let c = claim(&thrice, "c");
    thrice
        .complete(&c, Some(json!({"records_total": 2})))
        .unwrap();

    let options = JobOptions {
        lease: Duration::from_secs(3600),
        policy: CheckpointPolicy::Always,
    };
    let mut job = ckpt.job_with("export", options).unwrap();
    for page in [1, 2] {
        let cp = Checkpoint::new(json!({ "page": page }), page * 10)
            .with_stage("load")
            .with_state(json!({"name": "state is the user's too"}));
        job.checkpoint(cp).unwrap();
    }
    job
}

/// True if and only if `s` is RFC 3339 in UTC with milliseconds, within
/// two hours of now (every time staged here is).
fn is_time(s: &str) -> bool {
    let Ok(t) = humantime::parse_rfc3339(s) else {
        return false;
    };
    let now = SystemTime::now();
    let near = Duration::from_secs(2 * 3600);
    s.len() == 24
        && s.as_bytes()[19] == b'.'
        && s.ends_with('Z')
        && t > now - near
        && t < now + near
}

#[derive(Default)]
struct Seen {
    times: usize,
    durations: usize,
}

/// Walks `value` and checks every key ckpt chose against the conventions.
#[track_caller]
fn check(doc: &str, path: &str, value: &Value, seen: &mut Seen) {
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                let here = format!("{path}.{key}");
                let fail = |why: &str| panic!("{doc}: {here} {why}: {child}");
                if FORBIDDEN.contains(&key.as_str()) {
                    fail("is a name the vocabulary does not use");
                }
                if key.ends_with("_at") {
                    match child {
                        Value::Null => {}
                        Value::String(s) if is_time(s) => seen.times += 1,
                        _ => fail("is neither null nor an RFC 3339 time with milliseconds"),
                    }
                } else if key.ends_with("_seconds") {
                    match child {
                        Value::Null => {}
                        Value::Number(_) => seen.durations += 1,
                        _ => fail("is not a number of seconds"),
                    }
                } else if key.ends_with("_bytes") && !child.is_u64() {
                    fail("is not a number of bytes");
                }
                if key == "job" && !child.is_string() {
                    fail("is not a job's name");
                }
                if !USER_DATA.contains(&key.as_str()) {
                    check(doc, &here, child, seen);
                }
            }
        }
        Value::Array(list) => {
            for (i, child) in list.iter().enumerate() {
                check(doc, &format!("{path}[{i}]"), child, seen);
            }
        }
        _ => {}
    }
}

fn keys(value: &Value) -> BTreeSet<String> {
    value
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {value}"))
        .keys()
        .cloned()
        .collect()
}

/// `value` without the fields that move with the clock.
fn still(mut value: Value) -> Value {
    match &mut value {
        Value::Object(map) => {
            map.remove("checkpoint_age_seconds");
        }
        Value::Array(list) => list.iter_mut().for_each(|v| *v = still(v.take())),
        _ => {}
    }
    value
}

#[test]
fn every_json_document_speaks_one_vocabulary() {
    let sb = Sandbox::new();
    let held = stage(&sb);
    let file = sb.write("done.txt", "x\ny\n");
    let cli = |args: &[&str], code: i32| {
        let out = sb.ckpt().args(args).run();
        out.code(code);
        out.json()
    };
    let run = cli(
        &[
            "run",
            "--job",
            "done",
            "--json",
            "--items",
            file.to_str().unwrap(),
            "--",
            "true",
        ],
        0,
    );

    let server = Server::start(&sb, &[]);
    let api = |path: &str| server.get(path).expect(200);
    let mut docs: Vec<(String, Value)> = vec![("ckpt run --json".into(), run)];
    let mut add = |name: &str, value: Value| docs.push((name.to_string(), value));
    add("ckpt jobs --json", cli(&["jobs", "--json"], 0));
    add("GET /api/jobs", api("/api/jobs"));
    for job in ["J", "export", "done"] {
        add(
            &format!("ckpt status {job}"),
            cli(&["status", job, "--json"], 0),
        );
        add(
            &format!("ckpt show {job}"),
            cli(&["show", job, "--json"], 0),
        );
        add(
            &format!("GET /api/jobs/{job}"),
            api(&format!("/api/jobs/{job}")),
        );
        add(
            &format!("ckpt items {job}"),
            cli(&["items", job, "--json"], 0),
        );
        add(
            &format!("GET /api/jobs/{job}/items"),
            api(&format!("/api/jobs/{job}/items")),
        );
    }
    add("GET /api/info", api("/api/info"));
    add(
        "ckpt checkpoint get --full",
        cli(&["checkpoint", "get", "export", "--full"], 0),
    );
    add("ckpt doctor --json", cli(&["doctor", "--json"], 1));
    let prune = cli(
        &["prune", "--completed-before", "0s", "--dry-run", "--json"],
        0,
    );
    add("ckpt prune --json", prune.clone());
    let bench = sb
        .ckpt_bare()
        .args([
            "--store",
            "memory://",
            "bench",
            "--items",
            "20",
            "--workers",
            "1",
        ])
        .args(["--saves", "5", "--batch", "5", "--json"])
        .run();
    add("ckpt bench --json", bench.success().json());
    server.stop();
    drop(held);

    let mut seen = Seen::default();
    for (name, doc) in &docs {
        check(name, "", doc, &mut seen);
    }
    assert!(seen.times > 50, "only {} times seen", seen.times);
    assert!(seen.durations > 5, "only {} durations seen", seen.durations);
    assert!(
        is_time(prune["completed_before"].as_str().unwrap()),
        "{prune}"
    );
    assert_eq!(prune["deleted"][0]["job"], "done");

    let doc = |name: &str| &docs.iter().find(|(n, _)| n == name).unwrap().1;
    // status, show and the API print one document per job, alike.
    for job in ["J", "export", "done"] {
        let status = still(doc(&format!("ckpt status {job}")).clone());
        assert_eq!(
            status,
            still(doc(&format!("ckpt show {job}")).clone()),
            "{job}"
        );
        assert_eq!(
            status,
            still(doc(&format!("GET /api/jobs/{job}")).clone()),
            "{job}"
        );
        let status_keys = keys(doc(&format!("ckpt status {job}")));
        assert_eq!(status_keys, keys(doc("ckpt status J")), "{job}");
        let items = still(doc(&format!("ckpt items {job}")).clone());
        assert_eq!(
            items,
            still(doc(&format!("GET /api/jobs/{job}/items")).clone())
        );
    }
    // A list entry is the detail without the detail-only fields.
    let mut summary = keys(doc("ckpt status J"));
    summary.retain(|k| !DETAIL_ONLY.contains(&k.as_str()));
    let list = doc("ckpt jobs --json");
    assert_eq!(still(list.clone()), still(doc("GET /api/jobs").clone()));
    for entry in list.as_array().unwrap() {
        assert_eq!(keys(entry), summary, "{entry}");
    }
    // One item shape wherever items appear; each time named for its meaning.
    let detail = doc("GET /api/jobs/J");
    let items = doc("ckpt items J").as_array().unwrap();
    let item_keys = keys(&items[0]);
    let listed = items.iter().chain(detail["dead_items"].as_array().unwrap());
    for item in listed.chain(detail["failed_items"].as_array().unwrap()) {
        assert_eq!(keys(item), item_keys, "{item}");
        let (lease, retry) = (&item["lease_expires_at"], &item["retry_at"]);
        match item["status"].as_str().unwrap() {
            "running" => assert!(lease.is_string() && retry.is_null(), "{item}"),
            "failed" => assert!(retry.is_string() && lease.is_null(), "{item}"),
            _ => assert!(lease.is_null() && retry.is_null(), "{item}"),
        }
    }
    let statuses: Vec<&str> = items
        .iter()
        .map(|i| i["status"].as_str().unwrap())
        .collect();
    assert_eq!(
        statuses,
        ["dead", "failed", "running", "completed", "pending"]
    );
    let export = doc("GET /api/jobs/export");
    assert!(
        export["lease_expires_at"].is_string() && export["owner"].is_string(),
        "{export}"
    );
    assert_eq!(export["cursor"], json!({"page": 2}));
    let history = &export["history"][0];
    assert_eq!(
        keys(history),
        ["cursor", "items_processed", "saved_at", "seq"]
            .map(String::from)
            .into()
    );
}
