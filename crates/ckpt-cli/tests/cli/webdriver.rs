//! A small W3C WebDriver client for the dashboard tests: chromedriver
//! driving a headless Chromium, spoken as a few JSON requests over HTTP
//! with the same client as the API tests (no WebDriver crate, and with it
//! no second async runtime in the tests).

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// The key of an element reference in WebDriver answers.
pub const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// Chromium and chromedriver, or `None` (skip) when either is missing.
pub fn browser() -> Option<(PathBuf, PathBuf)> {
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
pub struct Driver {
    child: Child,
    base: String,
}

impl Driver {
    pub fn start(path: &Path) -> Driver {
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
pub struct Session {
    base: String,
    agent: ureq::Agent,
}

/// A WebDriver error: its `error` code and message.
#[derive(Debug)]
pub struct WdError {
    error: String,
    message: String,
}

impl Session {
    pub fn new(driver: &Driver, chromium: &Path) -> Session {
        Session::with_args(driver, chromium, &[])
    }

    /// A session whose Chromium gets `extra` command-line flags too.
    pub fn with_args(driver: &Driver, chromium: &Path, extra: &[&str]) -> Session {
        let mut args = vec![
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--window-size=1280,1000",
        ];
        args.extend_from_slice(extra);
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .into();
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": args,
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

    pub fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, WdError> {
        send(&self.agent, method, &format!("{}{path}", self.base), body)
    }

    #[track_caller]
    pub fn must(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        self.call(method, path, body)
            .unwrap_or_else(|e| panic!("WebDriver {method} {path}: {}: {}", e.error, e.message))
    }

    pub fn goto(&self, url: &str) {
        self.must("POST", "/url", Some(json!({ "url": url })));
    }

    /// The elements matching a CSS selector, now.
    pub fn find_all(&self, css: &str) -> Vec<String> {
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
    pub fn text(&self, css: &str) -> Option<String> {
        let id = self.find_all(css).into_iter().next()?;
        // The page re-renders every 2 s: an element may go stale meanwhile.
        self.call("GET", &format!("/element/{id}/text"), None)
            .ok()
            .map(|v| v.as_str().unwrap_or_default().to_string())
    }

    pub fn attribute(&self, css: &str, name: &str) -> Option<Value> {
        let id = self.find_all(css).into_iter().next()?;
        self.call("GET", &format!("/element/{id}/attribute/{name}"), None)
            .ok()
    }

    pub fn property(&self, css: &str, name: &str) -> Option<Value> {
        let id = self.find_all(css).into_iter().next()?;
        self.call("GET", &format!("/element/{id}/property/{name}"), None)
            .ok()
    }

    /// Clicks the first match, finding it again if it went stale.
    #[track_caller]
    pub fn click(&self, css: &str) {
        wait_for(&format!("a click on {css}"), || {
            let id = self.find_all(css).into_iter().next()?;
            self.call("POST", &format!("/element/{id}/click"), Some(json!({})))
                .ok()
        });
    }

    /// Replaces the value of a (never re-rendered) input.
    pub fn type_into(&self, css: &str, text: &str) {
        let id = self.find_all(css).into_iter().next().expect(css);
        self.must("POST", &format!("/element/{id}/clear"), Some(json!({})));
        self.must(
            "POST",
            &format!("/element/{id}/value"),
            Some(json!({ "text": text })),
        );
    }

    pub fn script(&self, js: &str) -> Value {
        self.must(
            "POST",
            "/execute/sync",
            Some(json!({"script": js, "args": []})),
        )
    }

    /// Waits until the text of `css` is `want`; shows the page if not.
    #[track_caller]
    pub fn wait_text(&self, css: &str, want: &str) {
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
    pub fn screenshot(&self, name: &str) {
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

pub fn try_wait<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
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
pub fn wait_for<T>(what: &str, f: impl FnMut() -> Option<T>) -> T {
    try_wait(Duration::from_secs(20), f).unwrap_or_else(|| panic!("timed out waiting for {what}"))
}

pub fn base64_decode(text: &str) -> Vec<u8> {
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
