//! The dashboard of `ckpt serve` in a real headless Chromium, driven over
//! W3C WebDriver by chromedriver: the jobs table, a job's page, and Retry
//! with the token. Skipped, with the reason printed, when Chromium or
//! chromedriver is missing, unless `CKPT_REQUIRE_SERVICES=1`.
//!
//! The WebDriver protocol is a few JSON requests over HTTP, spoken here with
//! the same small client as the API tests (no WebDriver crate, and with it
//! no second async runtime in the tests).

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ckpt::{Ckpt, NewItem};
use serde_json::{json, Value};

use crate::server::{cursor_job, items_job, stale_job, Server};
use crate::util::{item_counts, Sandbox};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// The key of an element reference in WebDriver answers.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";
const TOKEN: &str = "browser-token";

/// Chromium and chromedriver, or `None` (skip) when either is missing.
fn browser() -> Option<(PathBuf, PathBuf)> {
    let chromium = Path::new(CHROMIUM);
    let driver = Path::new(CHROMEDRIVER);
    if chromium.is_file() && driver.is_file() {
        return Some((chromium.into(), driver.into()));
    }
    assert!(
        std::env::var("CKPT_REQUIRE_SERVICES").as_deref() != Ok("1"),
        "CKPT_REQUIRE_SERVICES=1 but {CHROMIUM} or {CHROMEDRIVER} is missing (apt-get install chromium chromium-driver)"
    );
    eprintln!(
        "skipped: {CHROMIUM} or {CHROMEDRIVER} is missing (apt-get install chromium chromium-driver)"
    );
    None
}

/// A chromedriver process on a port of its choosing, killed when dropped.
struct Driver {
    child: Child,
    base: String,
}

impl Driver {
    fn start(path: &Path) -> Driver {
        let mut child = Command::new(path)
            .arg("--port=0")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        // "ChromeDriver was started successfully on port 35781."
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let port = loop {
            let line = lines
                .next()
                .expect("chromedriver exited before saying its port")
                .expect("read chromedriver's output");
            if let Some(rest) = line.split("successfully on port ").nth(1) {
                break rest.trim_end_matches('.').to_string();
            }
        };
        // Keep reading, so chromedriver never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        Driver {
            child,
            base: format!("http://127.0.0.1:{port}"),
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A browser session; closed (and its Chromium gone) when dropped.
struct Session {
    base: String,
    agent: ureq::Agent,
}

/// A WebDriver error: its `error` code and message.
#[derive(Debug)]
struct WdError {
    error: String,
    message: String,
}

impl Session {
    fn new(driver: &Driver, chromium: &Path) -> Session {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .into();
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1280,1000"],
            },
        }}});
        let value = send(
            &agent,
            "POST",
            &format!("{}/session", driver.base),
            Some(caps),
        )
        .unwrap_or_else(|e| panic!("cannot start a browser session: {}: {}", e.error, e.message));
        let id = value["sessionId"].as_str().expect("a session id");
        Session {
            base: format!("{}/session/{id}", driver.base),
            agent,
        }
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, WdError> {
        send(&self.agent, method, &format!("{}{path}", self.base), body)
    }

    #[track_caller]
    fn must(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        self.call(method, path, body)
            .unwrap_or_else(|e| panic!("WebDriver {method} {path}: {}: {}", e.error, e.message))
    }

    fn goto(&self, url: &str) {
        self.must("POST", "/url", Some(json!({ "url": url })));
    }

    /// The elements matching a CSS selector, now.
    fn find_all(&self, css: &str) -> Vec<String> {
        let found = self.must(
            "POST",
            "/elements",
            Some(json!({"using": "css selector", "value": css})),
        );
        found
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e[ELEMENT].as_str().unwrap().to_string())
            .collect()
    }

    /// The rendered text of the first match (empty when hidden), or `None`
    /// when nothing matches.
    fn text(&self, css: &str) -> Option<String> {
        let id = self.find_all(css).into_iter().next()?;
        // The page re-renders every 2 s: an element may go stale meanwhile.
        self.call("GET", &format!("/element/{id}/text"), None)
            .ok()
            .map(|v| v.as_str().unwrap_or_default().to_string())
    }

    fn attribute(&self, css: &str, name: &str) -> Option<Value> {
        let id = self.find_all(css).into_iter().next()?;
        self.call("GET", &format!("/element/{id}/attribute/{name}"), None)
            .ok()
    }

    fn property(&self, css: &str, name: &str) -> Option<Value> {
        let id = self.find_all(css).into_iter().next()?;
        self.call("GET", &format!("/element/{id}/property/{name}"), None)
            .ok()
    }

    /// Clicks the first match, finding it again if it went stale.
    #[track_caller]
    fn click(&self, css: &str) {
        wait_for(&format!("a click on {css}"), || {
            let id = self.find_all(css).into_iter().next()?;
            self.call("POST", &format!("/element/{id}/click"), Some(json!({})))
                .ok()
        });
    }

    /// Replaces the value of a (never re-rendered) input.
    fn type_into(&self, css: &str, text: &str) {
        let id = self.find_all(css).into_iter().next().expect(css);
        self.must("POST", &format!("/element/{id}/clear"), Some(json!({})));
        self.must(
            "POST",
            &format!("/element/{id}/value"),
            Some(json!({ "text": text })),
        );
    }

    fn script(&self, js: &str) -> Value {
        self.must(
            "POST",
            "/execute/sync",
            Some(json!({"script": js, "args": []})),
        )
    }

    /// Waits until the text of `css` is `want`; shows the page if not.
    #[track_caller]
    fn wait_text(&self, css: &str, want: &str) {
        let mut last = None;
        let found = try_wait(Duration::from_secs(20), || {
            last = self.text(css);
            (last.as_deref() == Some(want)).then_some(())
        });
        if found.is_none() {
            panic!(
                "{css}: expected text {want:?}, last saw {last:?}; the page says:\n{}",
                self.text("body").unwrap_or_default()
            );
        }
    }

    /// Saves a screenshot into `CKPT_SCREENSHOT_DIR`, when it is set.
    fn screenshot(&self, name: &str) {
        let Some(dir) = std::env::var_os("CKPT_SCREENSHOT_DIR") else {
            return;
        };
        let png = self.must("GET", "/screenshot", None);
        let bytes = base64_decode(png.as_str().unwrap());
        std::fs::write(Path::new(&dir).join(format!("{name}.png")), bytes).unwrap();
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = self.call("DELETE", "", None);
    }
}

/// One WebDriver command: the answer's `value`, or its error.
fn send(
    agent: &ureq::Agent,
    method: &str,
    url: &str,
    body: Option<Value>,
) -> Result<Value, WdError> {
    let result = match (method, body) {
        ("GET", _) => agent.get(url).call(),
        ("DELETE", _) => agent.delete(url).call(),
        (_, body) => agent
            .post(url)
            .header("Content-Type", "application/json")
            .send(body.unwrap_or(json!({})).to_string()),
    };
    let mut res = result.unwrap_or_else(|e| panic!("WebDriver {method} {url}: {e}"));
    let status = res.status().as_u16();
    let text = res
        .body_mut()
        .read_to_string()
        .expect("read WebDriver's answer");
    let doc: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("WebDriver {method} {url}: not JSON ({e}): {text}"));
    let value = doc["value"].clone();
    if status == 200 {
        Ok(value)
    } else {
        Err(WdError {
            error: value["error"].as_str().unwrap_or("?").to_string(),
            message: value["message"].as_str().unwrap_or(&text).to_string(),
        })
    }
}

fn try_wait<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[track_caller]
fn wait_for<T>(what: &str, f: impl FnMut() -> Option<T>) -> T {
    try_wait(Duration::from_secs(20), f).unwrap_or_else(|| panic!("timed out waiting for {what}"))
}

fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {c}"),
        }
    };
    let mut out = Vec::new();
    for chunk in text.trim_end_matches('=').as_bytes().chunks(4) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &c)| n | (value(c) << (18 - 6 * i)));
        out.extend_from_slice(&n.to_be_bytes()[1..chunk.len()]);
    }
    out
}

#[test]
fn dashboard_shows_jobs_and_retries_dead_items_with_the_token() {
    let Some((chromium, chromedriver)) = browser() else {
        return;
    };
    let sb = Sandbox::new();
    items_job(&sb, "thumbs"); // 2 completed, 1 pending, 2 dead of 5
    cursor_job(&sb, "export"); // 300 processed, 3 history entries
    stale_job(&sb, "nightly"); // running, checkpoint 20 minutes old
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
