//! `ckpt serve`: the JSON API, its token, `/healthz` and `/metrics`, against
//! real `ckpt serve` processes on real SQLite stores; and
//! `ckpt run --metrics-listen`.

use std::time::Duration;

use ckpt::{Ckpt, QueueOptions, RetryPolicy};
use serde_json::{json, Value};

use crate::metrics::{parse, promtool_check_metrics, value};
use crate::util::{item_counts, Sandbox};

use crate::server::{agent, cursor_job, encode, http, items_job, Server};

#[test]
fn api_lists_jobs_and_shows_one_with_history_and_failures() {
    let sb = Sandbox::new();
    let items = "batch/2026 run";
    items_job(&sb, items);
    cursor_job(&sb, "export");
    let server = Server::start(&sb, &[]);

    let jobs = server.get("/api/jobs").expect(200);
    let names: Vec<&str> = jobs
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["job"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["batch/2026 run", "export"], "ordered by name");
    let job = &jobs[0];
    assert_eq!(job["status"], "running");
    assert_eq!(
        job["items"],
        json!({"pending": 1, "running": 0, "completed": 2, "failed": 0, "dead": 2, "total": 5})
    );
    assert_eq!(job["checkpoint_age_seconds"], Value::Null);
    let export = &jobs[1];
    assert_eq!(export["items_processed"], 300);
    assert_eq!(export["stage"], "load");
    assert_eq!(export["saves"], 3);
    assert_eq!(export["history_len"], 3);
    assert_eq!(export["state_bytes"], r#"{"rows":1200}"#.len());
    let age = export["checkpoint_age_seconds"].as_f64().unwrap();
    assert!((0.0..120.0).contains(&age), "age {age}");

    // One job: the summary, the checkpoint, the history newest first.
    let detail = server.get("/api/jobs/export").expect(200);
    assert_eq!(detail["job"], "export");
    assert_eq!(detail["saves"], 3);
    let checkpoint = ["cursor", "items_processed", "stage", "state"].map(|k| &detail[k]);
    assert_eq!(
        checkpoint,
        [
            &json!(300),
            &json!(300),
            &json!("load"),
            &json!({"rows": 1200})
        ]
    );
    let history = detail["history"].as_array().unwrap();
    let seqs: Vec<u64> = history.iter().map(|h| h["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, [3, 2, 1]);
    let cursors: Vec<&Value> = history.iter().map(|h| &h["cursor"]).collect();
    assert_eq!(cursors, [&json!(300), &json!(200), &json!(100)]);
    assert_eq!(detail["dead_items"], json!([]));

    // The item job, by its name with a space and a slash in it.
    let path = format!("/api/jobs/{}", encode(items));
    assert_eq!(path, "/api/jobs/batch%2F2026%20run");
    let detail = server.get(&path).expect(200);
    assert_eq!(detail["job"], items);
    assert_eq!(detail["checkpoint_at"], Value::Null);
    assert_eq!(detail["cursor"], Value::Null);
    assert_eq!(detail["history"], json!([]));
    let dead: Vec<(&str, &str)> = detail["dead_items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["key"].as_str().unwrap(),
                i["last_error"].as_str().unwrap(),
            )
        })
        .collect();
    // The last in input order first: the latest failures.
    assert_eq!(
        dead,
        [("d", "<b>not bold</b> & timeout"), ("c", "exit status 3")]
    );
    assert_eq!(detail["failed_items"], json!([]));

    // Items by status, with a limit.
    let keys = |doc: &Value| -> Vec<String> {
        doc.as_array()
            .unwrap()
            .iter()
            .map(|i| i["key"].as_str().unwrap().to_string())
            .collect()
    };
    let dead = server.get(&format!("{path}/items?status=dead")).expect(200);
    assert_eq!(keys(&dead), ["c", "d"]);
    assert!(dead
        .as_array()
        .unwrap()
        .iter()
        .all(|i| i["status"] == "dead" && i["attempts"] == 1));
    let done = server
        .get(&format!("{path}/items?status=completed"))
        .expect(200);
    assert_eq!(keys(&done), ["a", "b"]);
    let first = server
        .get(&format!("{path}/items?status=completed&limit=1"))
        .expect(200);
    assert_eq!(keys(&first), ["a"]);
    let all = server.get(&format!("{path}/items")).expect(200);
    assert_eq!(keys(&all), ["a", "b", "c", "d", "e"]);
    let pending = server
        .get(&format!("{path}/items?status=pending"))
        .expect(200);
    assert_eq!(keys(&pending), ["e"]);

    // Refusals.
    server
        .get(&format!("{path}/items?status=zombie"))
        .error(400, "unknown status \"zombie\"");
    server
        .get(&format!("{path}/items?limit=0"))
        .error(400, "limit");
    server
        .get(&format!("{path}/items?limit=many"))
        .error(400, "limit");
    server
        .get("/api/jobs/nope")
        .error(404, "no job named 'nope'");
    server
        .get("/api/jobs/nope/items?status=dead")
        .error(404, "no job named 'nope'");
    server.get("/api/jobs/%20padded").error(400, "whitespace");
    server.get("/api/nothing").error(404, "no such endpoint");
    let info = server.get("/api/info").expect(200);
    assert_eq!(info["store"], sb.store_url());
    assert_eq!(info["mutations"], false);
    server.stop();
}

#[test]
fn retry_needs_a_configured_token_and_the_right_one() {
    let sb = Sandbox::new();
    items_job(&sb, "J");

    // No token configured: mutations are disabled, whatever is sent.
    let server = Server::start(&sb, &[]);
    for token in [None, Some("anything")] {
        server
            .post("/api/jobs/J/retry", token, None)
            .error(403, "start ckpt serve with --token");
    }
    server.stop();
    assert_eq!(
        item_counts(&sb.status("J")),
        (1, 0, 2, 0, 2),
        "nothing moved"
    );

    // A token from CKPT_TOKEN.
    let server = Server::start_with(&sb, &sb.store_url(), &[], &[("CKPT_TOKEN", "s3cret")]);
    assert_eq!(server.get("/api/info").expect(200)["mutations"], true);
    let missing = server.post("/api/jobs/J/retry", None, None);
    missing.error(401, "Authorization: Bearer");
    assert_eq!(
        missing.headers["www-authenticate"],
        r#"Bearer realm="ckpt""#
    );
    server
        .post("/api/jobs/J/retry", Some("s3cre"), None)
        .error(403, "wrong token");
    server
        .post("/api/jobs/J/retry", Some("s3cret2"), None)
        .error(403, "wrong token");
    let basic = agent()
        .post(&server.url("/api/jobs/J/retry"))
        .header("Authorization", "Basic czNjcmV0")
        .send_empty();
    http(basic, "basic").error(401, "Bearer");
    assert_eq!(
        item_counts(&sb.status("J")),
        (1, 0, 2, 0, 2),
        "nothing moved"
    );

    // With the token: bad requests are refused before anything moves.
    let token = Some("s3cret");
    server
        .post(
            "/api/jobs/J/retry",
            token,
            Some(r#"{"status":"completed"}"#),
        )
        .error(400, "only dead or failed");
    server
        .post("/api/jobs/J/retry", token, Some(r#"{"keyz":["c"]}"#))
        .error(400, "unknown field");
    server
        .post("/api/jobs/J/retry", token, Some("not json"))
        .error(400, "not a retry request");
    server
        .post("/api/jobs/J/retry", token, Some(r#"{"keys":[]}"#))
        .error(400, "keys is empty");
    server
        .post("/api/jobs/nope/retry", token, None)
        .error(404, "no job named 'nope'");
    assert_eq!(
        item_counts(&sb.status("J")),
        (1, 0, 2, 0, 2),
        "nothing moved"
    );

    // One key, then the rest (no body: every dead item).
    let moved = server
        .post(
            "/api/jobs/J/retry",
            token,
            Some(r#"{"status":"dead","keys":["d"]}"#),
        )
        .expect(200);
    assert_eq!(moved, json!({"moved": 1}));
    assert_eq!(item_counts(&sb.status("J")), (2, 0, 2, 0, 1));
    let moved = server.post("/api/jobs/J/retry", token, None).expect(200);
    assert_eq!(moved, json!({"moved": 1}));
    let status = sb.status("J");
    assert_eq!(item_counts(&status), (3, 0, 2, 0, 0));
    let moved = server.post("/api/jobs/J/retry", token, None).expect(200);
    assert_eq!(moved, json!({"moved": 0}), "nothing left to move");

    // Failed items (awaiting a retry an hour away) move with "failed".
    let ckpt = Ckpt::open(&sb.store_url()).unwrap();
    let queue = ckpt
        .queue_with(
            "J",
            QueueOptions {
                retry: RetryPolicy {
                    base_delay: Duration::from_secs(3600),
                    max_delay: Duration::from_secs(3600),
                    ..RetryPolicy::interactive(5)
                },
                ..QueueOptions::default()
            },
        )
        .unwrap();
    let claimed = queue.claim(1).unwrap();
    queue.fail(&claimed[0], "flaky").unwrap();
    assert_eq!(item_counts(&sb.status("J")), (2, 0, 2, 1, 0));
    let detail = server.get("/api/jobs/J").expect(200);
    assert_eq!(detail["failed_items"][0]["key"], claimed[0].key.as_str());
    assert_eq!(detail["failed_items"][0]["last_error"], "flaky");
    let moved = server
        .post("/api/jobs/J/retry", token, Some(r#"{"status":"failed"}"#))
        .expect(200);
    assert_eq!(moved, json!({"moved": 1}));
    assert_eq!(item_counts(&sb.status("J")), (3, 0, 2, 0, 0));

    let out = server.stop();
    assert!(
        out.stderr.contains("wrong token"),
        "refusals are logged:\n{}",
        out.stderr
    );
    assert!(!out.stderr.contains("s3cret"), "the token is never logged");
}

#[test]
fn retry_with_a_token_given_as_an_option() {
    let sb = Sandbox::new();
    items_job(&sb, "J");
    // With the trailing newline a token file or secret often has.
    let server = Server::start(&sb, &["--token", "opt-token\n"]);
    server
        .post("/api/jobs/J/retry", Some("s3cret"), None)
        .error(403, "wrong token");
    let moved = server
        .post("/api/jobs/J/retry", Some("opt-token"), None)
        .expect(200);
    assert_eq!(moved, json!({"moved": 2}));
    assert_eq!(item_counts(&sb.status("J")), (3, 0, 2, 0, 0));
    server.stop();
}

/// Every error under `/api/` is `{"error": ...}` (docs/JSON.md), axum's
/// own rejections too; and they change nothing.
#[test]
fn every_api_error_is_json() {
    let sb = Sandbox::new();
    items_job(&sb, "J");
    let server = Server::start(&sb, &["--token", "t0ken"]);
    let before = sb.dump();
    let wrong_method = http(
        agent().get(&server.url("/api/jobs/J/retry")).call(),
        "GET retry",
    );
    wrong_method.error(405, "method not allowed");
    assert_eq!(
        wrong_method.headers.get("allow").map(String::as_str),
        Some("POST")
    );
    http(
        agent().delete(&server.url("/api/jobs/J")).call(),
        "DELETE job",
    )
    .error(405, "method not allowed");
    server.get("/api/jobs/%FF").error(400, "UTF-8");
    server.get("/api/jobs/J/items?limit=x").error(400, "limit");
    server.get("/api/nothing").error(404, "no such endpoint");
    // A body declared over the limit is refused before it is sent (an
    // HTTP client sending it would race the server's close).
    let answer = server.raw(
        "POST /api/jobs/J/retry HTTP/1.1\r\nAuthorization: Bearer t0ken\r\nContent-Type: application/json\r\nContent-Length: 3145728",
    );
    assert!(answer.starts_with("HTTP/1.1 413 "), "{answer}");
    assert!(
        answer.contains("application/json")
            && answer.ends_with(
                "\"the request body is 3145728 bytes, over the length limit of 2097152 bytes\"}"
            ),
        "{answer}"
    );
    // At the limit it is read, and judged on what it says.
    let at_limit = format!("{{\"keys\": [\"{}\"]}}", "k".repeat((2 << 20) - 14));
    assert_eq!(at_limit.len(), 2 << 20);
    server
        .post("/api/jobs/J/retry", Some("t0ken"), Some(&at_limit))
        .expect(200);
    assert_eq!(sb.dump(), before, "an error changed the store");
    // Outside the API, errors stay as they were (the dashboard's 404).
    let page = server.get("/nothing");
    assert_eq!((page.status, page.body.as_str()), (404, "not found\n"));
    server.stop();
}

// ----- PostgreSQL, and health -----

/// A fresh schema on the test server, dropped when this guard goes; `None`
/// (with the reason printed) when no server is reachable, unless
/// `CKPT_REQUIRE_SERVICES=1`.
struct PgSchema {
    base: String,
    schema: String,
}

impl PgSchema {
    fn new(tag: &str) -> Option<PgSchema> {
        let base = std::env::var("CKPT_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string());
        if let Err(e) = postgres::Client::connect(&base, postgres::NoTls) {
            assert!(
                std::env::var("CKPT_REQUIRE_SERVICES").as_deref() != Ok("1"),
                "CKPT_REQUIRE_SERVICES=1 but PostgreSQL is not reachable: {e}"
            );
            eprintln!("skipped: PostgreSQL is not reachable ({e})");
            return None;
        }
        let schema = format!("ckpt_serve_{tag}_{}", std::process::id());
        Some(PgSchema { base, schema })
    }

    fn url(&self) -> String {
        let sep = if self.base.contains('?') { '&' } else { '?' };
        format!("{}{sep}schema={}", self.base, self.schema)
    }

    fn drop_schema(&self) {
        let mut client = postgres::Client::connect(&self.base, postgres::NoTls).unwrap();
        client
            .batch_execute(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.schema))
            .unwrap();
    }
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        if let Ok(mut c) = postgres::Client::connect(&self.base, postgres::NoTls) {
            let _ = c.batch_execute(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.schema));
        }
    }
}

/// PostgreSQL's store runs a runtime of its own: every call from the
/// server goes through the blocking pool. When the store stops answering
/// (its schema dropped under it), `/healthz` says so in one line, the API
/// answers 5xx and `/metrics` has `ckpt_store_up 0` and no job series.
#[test]
fn serve_on_postgres_then_healthz_503_when_the_store_fails() {
    let Some(pg) = PgSchema::new("health") else {
        return;
    };
    let sb = Sandbox::new();
    let store = pg.url();
    let file = sb.write_items("items.txt", &["good".into(), "bad".into()]);
    let out = sb
        .ckpt_bare()
        .args([
            "--store",
            &store,
            "run",
            "--job",
            "J",
            "--retries",
            "0",
            "--items",
        ])
        .arg(&file)
        .args([
            "--",
            "sh",
            "-c",
            r#"[ "$0" = good ] || { echo "bad input: $0" >&2; exit 1; }"#,
        ])
        .run();
    out.code(1);
    sb.ckpt_bare()
        .args(["--store", &store, "checkpoint", "set", "export", "42"])
        .run()
        .success();
    let server = Server::start_with(&sb, &store, &["--token", "t"], &[]);

    let ok = server.get("/healthz");
    assert_eq!((ok.status, ok.body.as_str()), (200, "ok\n"));
    assert!(ok.content_type.starts_with("text/plain"));
    let jobs = server.get("/api/jobs").expect(200);
    assert_eq!(jobs[0]["job"], "J");
    assert_eq!(jobs[0]["items"]["dead"], 1);
    assert_eq!(jobs[1]["job"], "export");
    assert_eq!(jobs[1]["saves"], 1);
    let detail = server.get("/api/jobs/J").expect(200);
    assert_eq!(detail["dead_items"][0]["key"], "bad");
    assert_eq!(detail["dead_items"][0]["last_error"], "exit status 1");
    // The end of its stderr, beside the error.
    assert_eq!(detail["dead_items"][0]["last_output"], "bad input: bad\n");
    let body = server.get("/metrics").body;
    promtool_check_metrics(&body);
    let m = parse(&body);
    assert_eq!(
        value(&m, "ckpt_items", &[("job", "J"), ("status", "dead")]),
        Some(1.0)
    );
    assert_eq!(
        value(&m, "ckpt_checkpoints_total", &[("job", "export")]),
        Some(1.0)
    );
    let moved = server
        .post("/api/jobs/J/retry", Some("t"), None)
        .expect(200);
    assert_eq!(moved, json!({"moved": 1}));
    let out = sb
        .ckpt_bare()
        .args(["--store", &store, "status", "J", "--json"])
        .run();
    out.success();
    assert_eq!(item_counts(&out.json()), (1, 0, 1, 0, 0));

    pg.drop_schema();
    let down = server.get("/healthz");
    assert_eq!(down.status, 503, "{}", down.body);
    assert_eq!(down.body.lines().count(), 1, "one line: {:?}", down.body);
    assert!(down.body.len() > 10, "a reason: {:?}", down.body);
    let res = server.get("/api/jobs");
    assert!(res.status >= 500, "{} {}", res.status, res.body);
    assert!(res.json()["error"].is_string());
    let body = server.get("/metrics").body;
    promtool_check_metrics(&body);
    let m = parse(&body);
    assert_eq!(value(&m, "ckpt_store_up", &[]), Some(0.0));
    assert!(
        m.iter().all(|s| !s.labels.contains_key("job")),
        "no job series while the store fails: {m:?}"
    );
    let out = server.stop();
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
}

// ----- the dashboard's files -----

#[test]
fn dashboard_is_served_from_the_binary_with_a_strict_policy() {
    let sb = Sandbox::new();
    cursor_job(&sb, "export");
    let server = Server::start(&sb, &[]);
    let page = server.get("/");
    assert_eq!(page.status, 200);
    assert_eq!(page.content_type, "text/html; charset=utf-8");
    assert!(page
        .body
        .contains(r#"<script src="/assets/app.js" defer></script>"#));
    let csp = &page.headers["content-security-policy"];
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe"),
        "{csp}"
    );
    assert!(
        !page.body.contains("http://") && !page.body.contains("https://"),
        "no CDN"
    );
    let js = server.get("/assets/app.js");
    assert_eq!(js.status, 200);
    assert!(js.content_type.starts_with("text/javascript"));
    assert!(!js.body.contains("innerHTML"), "data goes in as text only");
    let css = server.get("/assets/style.css");
    assert_eq!(css.status, 200);
    assert!(css.content_type.starts_with("text/css"));
    assert_eq!(server.get("/assets/secret.txt").status, 404);
    assert_eq!(server.get("/nothing/here").status, 404);
    server.stop();
}

// ----- failures at start -----

#[test]
fn serve_start_failures_are_one_line_with_their_exit_code() {
    let sb = Sandbox::new();
    // No store file: read commands never create one.
    let out = sb.ckpt().args(["serve", "--listen", "127.0.0.1:0"]).run();
    assert!(out.error(3).contains("no ckpt store"), "{}", out.stderr);
    assert!(!sb.db().exists());

    cursor_job(&sb, "export");
    // The port is taken.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = sb.ckpt().args(["serve", "--listen", &addr]).run();
    let line = out.error(2);
    assert!(
        line.contains(&format!("cannot listen on {addr}")) && line.contains("in use"),
        "{line}"
    );
    let out = sb
        .ckpt()
        .args(["serve", "--listen", "not-an-address"])
        .run();
    assert!(out.error(2).contains("cannot listen on not-an-address"));

    // An empty token is a mistake, not "no token".
    let out = sb.ckpt().args(["serve"]).env("CKPT_TOKEN", "").run();
    assert!(out.error(2).contains("token is empty"));

    // A password in the store URL is never shown.
    let out = sb
        .ckpt_bare()
        .args(["--store", "postgres://ckpt:hunter2@127.0.0.1:1/db", "serve"])
        .run();
    let line = out.error(4);
    assert!(
        !line.contains("hunter2") && line.contains("ckpt:***@"),
        "{line}"
    );
}

/// The job document's lists are cut to different lengths by the commands
/// (20 history entries, or `show --history N`; 10 dead and 10 failed items)
/// and by the API (100 of each), while the counts stay whole: as the README
/// says.
#[test]
fn the_job_document_lists_are_cut_to_their_documented_lengths() {
    let sb = Sandbox::new();
    let ckpt = Ckpt::open(&sb.store_url()).expect("open the store");
    for n in 1..=120 {
        ckpt.set_checkpoint("export", &ckpt::Checkpoint::new(json!(n), n))
            .unwrap();
    }
    let queue = ckpt
        .queue_with(
            "import",
            QueueOptions {
                // A failure waits an hour for its retry: it stays failed.
                retry: RetryPolicy {
                    max_attempts: 2,
                    base_delay: Duration::from_secs(3600),
                    ..RetryPolicy::default()
                },
                ..QueueOptions::default()
            },
        )
        .unwrap();
    queue
        .enqueue((0..240).map(|i| ckpt::NewItem::key(format!("item-{i:03}"))))
        .unwrap();
    let claimed = queue.claim(240).unwrap();
    let attempts: Vec<ckpt::Attempt> = claimed
        .into_iter()
        .enumerate()
        .map(|(i, item)| ckpt::Attempt {
            item,
            outcome: if i % 2 == 0 {
                ckpt::Outcome::Fatal("bad input".into())
            } else {
                ckpt::Outcome::Failed("flaky".into())
            },
            ran_for: None,
        })
        .collect();
    queue.settle(&attempts).unwrap();

    let lengths = |doc: &Value| -> [usize; 3] {
        ["history", "dead_items", "failed_items"].map(|k| {
            doc[k]
                .as_array()
                .unwrap_or_else(|| panic!("{k} in {doc}"))
                .len()
        })
    };
    let counts = |doc: &Value| (doc["items"]["dead"].clone(), doc["items"]["failed"].clone());
    let cli = |args: &[&str]| -> Value {
        let out = sb.ckpt().args(args.iter().copied()).run();
        out.success();
        out.json()
    };

    let status = cli(&["status", "export", "--json"]);
    assert_eq!(lengths(&status)[0], 20, "status: 20 of 100 kept entries");
    assert_eq!(status["history_len"], 100);
    let status = cli(&["status", "import", "--json"]);
    assert_eq!(lengths(&status)[1..], [10, 10]);
    assert_eq!(counts(&status), (json!(120), json!(120)), "whole counts");
    let show = cli(&["show", "export", "--json"]);
    assert_eq!(lengths(&show)[0], 20);
    let show = cli(&["show", "export", "--json", "--history", "5"]);
    assert_eq!(lengths(&show)[0], 5);
    let show = cli(&["show", "import", "--json"]);
    assert_eq!(lengths(&show)[1..], [10, 10]);

    let server = Server::start(&sb, &[]);
    let api = server.get("/api/jobs/export").expect(200);
    assert_eq!(lengths(&api)[0], 100);
    let api = server.get("/api/jobs/import").expect(200);
    assert_eq!(lengths(&api)[1..], [100, 100]);
    assert_eq!(counts(&api), (json!(120), json!(120)));
    server.stop();
}
