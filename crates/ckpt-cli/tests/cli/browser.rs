//! The dashboard of `ckpt serve` in a real headless Chromium, driven over
//! W3C WebDriver by chromedriver: the jobs table, a job's page, and Retry
//! with the token, and a rebound name refused. Skipped, with the reason printed, when Chromium or
//! chromedriver is missing, unless `CKPT_REQUIRE_SERVICES=1`.
//!
//! The WebDriver protocol is a few JSON requests over HTTP, spoken here with
//! the same small client as the API tests (no WebDriver crate, and with it
//! no second async runtime in the tests).

use ckpt::{Ckpt, NewItem};
use serde_json::json;

use crate::server::{cursor_job, items_job, stale_job, Server};
use crate::util::{item_counts, Sandbox};
use crate::webdriver::{browser, wait_for, Driver, Session};

const TOKEN: &str = "browser-token";

#[test]
fn dashboard_shows_jobs_and_retries_dead_items_with_the_token() {
    let Some((chromium, chromedriver)) = browser() else {
        return;
    };
    let sb = Sandbox::new();
    items_job(&sb, "thumbs"); // 2 completed, 1 pending, 2 dead of 5
    cursor_job(&sb, "export"); // 300 processed, 3 history entries
    stale_job(&sb, "nightly"); // running, checkpoint 20 minutes old
                               // 199 of 200 completed, one awaiting its retry: 99.5%, shown as 99%.
    let q = Ckpt::open(&sb.store_url())
        .unwrap()
        .queue("almost")
        .unwrap();
    q.enqueue((0..200).map(|i| NewItem::key(format!("k{i}"))))
        .unwrap();
    for item in q.claim(200).unwrap() {
        if item.key == "k0" {
            q.fail(&item, "not yet").unwrap();
        } else {
            q.complete(&item, None).unwrap();
        }
    }
    let server = Server::start(&sb, &["--token", TOKEN]);
    let driver = Driver::start(&chromedriver);
    let page = Session::new(&driver, &chromium);

    // The jobs table.
    page.goto(&server.url("/"));
    page.wait_text(r#"tr[data-job="thumbs"] .progress-text"#, "2/5");
    let bar = r#"tr[data-job="thumbs"] progress"#;
    let number = |name| page.property(bar, name).and_then(|v| v.as_f64());
    assert_eq!((number("value"), number("max")), (Some(2.0), Some(5.0)));
    page.wait_text(r#"tr[data-job="thumbs"] .dead-note"#, "2 dead");
    page.wait_text(r#"tr[data-job="almost"] .progress-text"#, "199/200");
    assert_eq!(
        page.attribute(r#"tr[data-job="almost"] progress"#, "title"),
        Some(json!("99% completed")),
        "rounded down, as the CLI does"
    );
    page.wait_text(r#"tr[data-job="export"] .progress-text"#, "300 processed");
    page.wait_text(r#"tr[data-job="export"] .history"#, "3");
    page.wait_text(r#"tr[data-job="export"] .state"#, "13 B");
    let class = |job: &str| {
        page.attribute(&format!(r#"tr[data-job="{job}"]"#), "class")
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default()
    };
    assert!(class("nightly").contains("stale"), "{}", class("nightly"));
    assert!(!class("export").contains("stale"), "{}", class("export"));
    let age = page.text(r#"tr[data-job="nightly"] .stale-age"#).unwrap();
    assert!(age.starts_with("⚠ 20m"), "{age}");
    page.wait_text("#store", &sb.store_url());
    page.wait_text("#mode", "retry enabled");
    page.screenshot("jobs");

    // The job's page, by clicking its name.
    page.click(r#"tr[data-job="thumbs"] a"#);
    page.wait_text("#job-name", "thumbs");
    assert_eq!(page.script("return location.hash"), json!("#/jobs/thumbs"));
    page.wait_text("#count-dead", "2");
    page.wait_text("#count-pending", "1");
    page.wait_text("#count-completed", "2");
    page.wait_text("#job-progress-text", "2/5 completed (40%)");
    page.wait_text(
        r#"#dead-items tr[data-key="c"] .error-text"#,
        "exit status 3",
    );
    // An error with markup in it shows as text and makes no element.
    page.wait_text(
        r#"#dead-items tr[data-key="d"] .error-text"#,
        "<b>not bold</b> & timeout",
    );
    assert!(page.find_all("#dead-items b").is_empty());
    // The end of its stderr, under the error: as text, ESC shown escaped.
    page.wait_text(
        r#"#dead-items tr[data-key="c"] .output-text"#,
        r"<i>not italic</i> \u{1b}[31mred",
    );
    assert!(page.find_all("#dead-items i").is_empty());
    page.wait_text("#retry-dead", "Retry 2 dead items");

    // A wrong token: refused, and nothing moves.
    page.type_into("#token", "not-the-token");
    page.click("#retry-dead");
    page.wait_text("#action-message", "Retry refused (403): wrong token");
    assert_eq!(item_counts(&sb.status("thumbs")), (1, 0, 2, 0, 2));

    // The right one: the dead items become pending, in the store and on
    // the page.
    page.type_into("#token", TOKEN);
    page.click("#retry-dead");
    page.wait_text("#action-message", "Moved 2 dead items back to pending.");
    assert_eq!(item_counts(&sb.status("thumbs")), (3, 0, 2, 0, 0));
    page.wait_text("#count-dead", "0");
    page.wait_text("#count-pending", "3");
    page.wait_text("#no-dead", "No dead items.");
    assert!(page.find_all("#dead-items tbody tr").is_empty());
    assert_eq!(
        page.property("#retry-dead", "disabled"),
        Some(json!(true)),
        "nothing left to retry"
    );
    assert_eq!(
        page.script("return sessionStorage.getItem('ckpt.token')"),
        json!(TOKEN),
        "the token is kept for the session"
    );
    page.screenshot("job");

    // Back to the table: no dead items any more.
    page.click("a[href='#/']");
    page.wait_text(r#"tr[data-job="thumbs"] .progress-text"#, "2/5");
    assert!(page
        .find_all(r#"tr[data-job="thumbs"] .dead-note"#)
        .is_empty());

    // A cursor job's page: its cursor, state and history, and every time
    // read from the API's RFC 3339 strings.
    page.click(r#"tr[data-job="export"] a"#);
    page.wait_text("#job-name", "export");
    page.wait_text("#cursor", "300");
    assert_eq!(
        page.script("return document.getElementById('state').textContent"),
        json!("{\n  \"rows\": 1200\n}")
    );
    let texts = |css: &str| -> Vec<String> {
        let js = format!(
            "return Array.from(document.querySelectorAll({css:?})).map(e => e.textContent)"
        );
        serde_json::from_value(page.script(&js)).unwrap()
    };
    let saved = texts("#history tbody td:nth-child(2)");
    assert_eq!(saved.len(), 3, "{saved:?}");
    let facts = texts("#job-facts dt, #job-facts dd");
    let fact = |name: &str| {
        let i = facts.iter().position(|f| f == name).expect(name);
        facts[i + 1].clone()
    };
    let last = fact("Last checkpoint");
    assert!(last.contains(" ago ("), "{last}");
    for time in saved
        .iter()
        .chain([&last, &fact("Created"), &fact("Updated")])
    {
        assert!(
            time.chars().any(|c| c.is_ascii_digit()) && !time.contains("Invalid"),
            "a time the page could not read: {time:?}"
        );
    }
    assert_eq!(fact("Completed"), "—", "a null time");

    drop(page);
    drop(driver);
    server.stop();
}

#[test]
fn dashboard_measures_rate_and_eta_and_is_read_only_without_a_token() {
    let Some((chromium, chromedriver)) = browser() else {
        return;
    };
    let sb = Sandbox::new();
    let ckpt = Ckpt::open(&sb.store_url()).unwrap();
    let queue = ckpt.queue("flow").unwrap();
    queue
        .enqueue((1..=20).map(|i| NewItem::key(format!("item{i}"))))
        .unwrap();
    let complete = |n: usize| {
        for item in queue.claim(n).unwrap() {
            queue.complete(&item, None).unwrap();
        }
    };
    complete(2);
    let server = Server::start(&sb, &[]);
    let driver = Driver::start(&chromedriver);
    let page = Session::new(&driver, &chromium);

    page.goto(&server.url("/"));
    page.wait_text(r#"tr[data-job="flow"] .progress-text"#, "2/20");
    page.wait_text("#mode", "read-only");
    // Work moves on between polls: the page measures a rate and an ETA.
    complete(4);
    page.wait_text(r#"tr[data-job="flow"] .progress-text"#, "6/20");
    let rate = wait_for("a rate", || {
        page.text(r#"tr[data-job="flow"] .rate"#)
            .filter(|r| r.ends_with("/s") || r.ends_with("/min"))
            .filter(|r| r != "0/s")
    });
    let eta = page.text(r#"tr[data-job="flow"] .eta"#).unwrap();
    assert!(
        eta.ends_with('s') && eta.chars().next().unwrap().is_ascii_digit(),
        "an ETA such as \"12s\" or \"1m 5s\" with {rate}: {eta:?}"
    );

    // Read-only: the token field and the buttons are disabled.
    page.click(r#"tr[data-job="flow"] a"#);
    page.wait_text("#job-name", "flow");
    page.wait_text("#count-pending", "14");
    let disabled = |css: &str| page.property(css, "disabled");
    assert_eq!(disabled("#retry-dead"), Some(json!(true)));
    assert_eq!(disabled("#token"), Some(json!(true)));
    let title = page.attribute("#retry-dead", "title").unwrap();
    assert!(title.as_str().unwrap().contains("--token"), "{title}");

    // A job that does not exist (or was pruned).
    page.goto(&server.url("/#/jobs/no%20such"));
    page.wait_text(
        "#job-missing",
        "No job named “no such” (it may have been pruned).",
    );
    drop(page);
    drop(driver);
    server.stop();
}

/// DNS rebinding, as a browser meets it: a name the attacker controls
/// resolves to the loopback address `ckpt serve` listens on (here by
/// Chromium's own resolver rules). The page gets 421 and no job data, and
/// neither does a script on it asking the API; the server's own address
/// still works in the same browser.
#[test]
fn a_rebound_name_gets_no_data_in_the_browser() {
    let Some((chromium, chromedriver)) = browser() else {
        return;
    };
    let sb = Sandbox::new();
    items_job(&sb, "secret-job");
    let server = Server::start(&sb, &[]);
    let port = server
        .url("/")
        .rsplit(':')
        .next()
        .unwrap()
        .trim_end_matches('/')
        .to_string();
    let driver = Driver::start(&chromedriver);
    let page = Session::with_args(
        &driver,
        &chromium,
        &["--host-resolver-rules=MAP attacker.example 127.0.0.1"],
    );
    page.goto(&format!("http://attacker.example:{port}/"));
    let body = page
        .script("return document.body ? document.body.innerText : ''")
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(body.contains("misdirected request"), "{body}");
    assert!(!body.contains("secret-job"), "{body}");
    let api = page.script(
        "const r = new XMLHttpRequest(); r.open('GET', '/api/jobs', false); r.send(); \
         return r.status + ' ' + r.responseText;",
    );
    let api = api.as_str().unwrap_or_default().to_string();
    assert!(api.starts_with("421 "), "{api}");
    assert!(!api.contains("secret-job"), "{api}");
    // The same browser, by the address the server listens on: the data.
    page.goto(&server.url("/"));
    page.wait_text(r#"tr[data-job="secret-job"] .progress-text"#, "2/5");
    drop(page);
    drop(driver);
    server.stop();
}

/// A job's page lists the commands it was run with, as `ckpt show` does:
/// id, template, items completed, first and last use, the latest marked;
/// a job run through the library untagged has none, and says so.
#[test]
fn dashboard_lists_a_jobs_commands() {
    let Some((chromium, chromedriver)) = browser() else {
        return;
    };
    let sb = Sandbox::new();
    let first = sb.write("first.txt", "a\nb\nc\n");
    sb.ckpt()
        .args(["run", "--job", "thumbs", "-q", "--items"])
        .arg(&first)
        .args(["--", "true", "{}"])
        .run()
        .success();
    let second = sb.write("second.txt", "a\nb\nc\nd\n");
    sb.ckpt()
        .args(["run", "--job", "thumbs", "-q", "--items"])
        .arg(&second)
        .args(["--", "echo", "it's {}"])
        .run()
        .success();
    items_job(&sb, "untagged"); // 2 completed through the library
    let server = Server::start(&sb, &[]);
    let driver = Driver::start(&chromedriver);
    let page = Session::new(&driver, &chromium);

    page.goto(&server.url("/#/jobs/thumbs"));
    page.wait_text("#job-name", "thumbs");
    page.wait_text(r#"#commands tr[data-command="1"] code"#, "true '{}'");
    page.wait_text(r#"#commands tr[data-command="1"] .completed"#, "3");
    // Markup-free text, quoted as `ckpt show` quotes it.
    page.wait_text(
        r#"#commands tr[data-command="2"] code"#,
        r"echo 'it'\''s {}'",
    );
    page.wait_text(r#"#commands tr[data-command="2"] .completed"#, "1");
    assert!(page
        .find_all(r#"#commands tr[data-command="1"] .latest"#)
        .is_empty());
    page.wait_text(r#"#commands tr[data-command="2"] .latest"#, "latest");
    for css in [".first-used", ".last-used"] {
        let time = page
            .text(&format!(r#"#commands tr[data-command="2"] {css}"#))
            .unwrap();
        assert!(
            time.chars().any(|c| c.is_ascii_digit()) && !time.contains("Invalid"),
            "a time the page could not read: {time:?}"
        );
    }
    assert_eq!(
        page.property("#no-commands", "hidden"),
        Some(json!(true)),
        "{:?}",
        page.text("#no-commands")
    );
    page.screenshot("commands");

    page.goto(&server.url("/#/jobs/untagged"));
    page.wait_text("#job-name", "untagged");
    page.wait_text("#no-commands", "No commands recorded.");
    page.wait_text(
        "#commands-unknown",
        "2 completed item(s) with no command recorded.",
    );
    assert!(page.find_all("#commands tbody tr").is_empty());
    drop(page);
    drop(driver);
    server.stop();
}

/// User data on the dashboard is shown as the CLI shows it: control
/// characters and bidirectional overrides escaped, so a key cannot
/// reorder what is shown (`evil`, U+202E, `gpj.exe` reading as `evilexe.jpg`).
#[test]
fn dashboard_escapes_controls_and_bidi_overrides_in_user_data() {
    let Some((chromium, chromedriver)) = browser() else {
        return;
    };
    let sb = Sandbox::new();
    let ckpt = Ckpt::open(&sb.store_url()).unwrap();
    let queue = ckpt
        .queue_with(
            "bidi",
            ckpt::QueueOptions {
                retry: ckpt::RetryPolicy::interactive(0),
                ..ckpt::QueueOptions::default()
            },
        )
        .unwrap();
    queue
        .enqueue([NewItem::key("evil\u{202e}gpj.exe")])
        .unwrap();
    let claimed = queue.claim(1).unwrap();
    queue
        .fail(&claimed[0], "exit\u{2066}status\tthree\nsecond line")
        .unwrap();
    drop((queue, ckpt));
    let server = Server::start(&sb, &[]);
    let driver = Driver::start(&chromedriver);
    let page = Session::new(&driver, &chromium);
    page.goto(&server.url("/#/jobs/bidi"));
    page.wait_text("#job-name", "bidi");
    page.wait_text("#dead-items tbody code", r"evil\u{202e}gpj.exe");
    page.wait_text(
        "#dead-items tbody .error-text",
        r"exit\u{2066}status\tthree\nsecond line",
    );
}
