//! A `ckpt serve` process under test, an HTTP client for it, and the jobs
//! the serve, metrics, browser and vocabulary tests show it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ckpt::{
    Checkpoint, Ckpt, Clock as _, ManualClock, NewItem, QueueOptions, RetryPolicy, Timestamp,
};
use serde_json::{json, Value};

use crate::util::{process_gone, wait_until, Out, Running, Sandbox};

// ----- a `ckpt serve` process -----

/// A running `ckpt serve` on a port it chose itself (`--listen
/// 127.0.0.1:0`); killed if the test ends without [`Server::stop`].
pub struct Server {
    running: Option<Running>,
    pid: u32,
    base: String,
}

impl Server {
    /// `ckpt --store <sandbox store> serve --listen 127.0.0.1:0 ARGS...`,
    /// once it answers `/healthz`.
    pub fn start(sb: &Sandbox, args: &[&str]) -> Server {
        Server::start_with(sb, &sb.store_url(), args, &[])
    }

    /// Like [`Server::start`], with another store URL and environment.
    pub fn start_with(sb: &Sandbox, store: &str, args: &[&str], env: &[(&str, &str)]) -> Server {
        Server::start_on(sb, store, "127.0.0.1:0", args, env)
    }

    /// Like [`Server::start_with`], listening on `listen`.
    pub fn start_on(
        sb: &Sandbox,
        store: &str,
        listen: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Server {
        let mut cmd = sb
            .ckpt_bare()
            .args(["--store", store, "serve", "--listen", listen])
            .args(args);
        for (k, v) in env {
            cmd = cmd.env(k, v);
        }
        let running = cmd.start();
        let pid = running.pid();
        let mut server = Server {
            running: Some(running),
            pid,
            base: String::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let stderr = server.stderr();
            if let Some(addr) = listening_on(&stderr) {
                server.base = format!("http://{addr}");
                break;
            }
            assert!(
                !process_gone(pid),
                "ckpt serve exited before listening:\n{stderr}"
            );
            assert!(
                Instant::now() < deadline,
                "ckpt serve not listening after 30 s:\n{stderr}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        wait_until(Duration::from_secs(30), "/healthz to answer 200", || {
            server.try_get("/healthz").is_some_and(|r| r.status == 200)
        });
        server
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Sends `head` (a request line and headers, without the blank line)
    /// on a connection of its own and returns all the server answered.
    /// For requests an HTTP client cannot send without racing the server:
    /// a body declared over the limit, which the server refuses unread.
    pub fn raw(&self, head: &str) -> String {
        use std::io::{Read, Write};
        let authority = self
            .base
            .trim_start_matches("http://")
            .trim_end_matches('/');
        let mut conn = std::net::TcpStream::connect(authority).expect("connect");
        conn.set_read_timeout(Some(std::time::Duration::from_secs(30)))
            .unwrap();
        write!(
            conn,
            "{head}\r\nHost: {authority}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut answer = Vec::new();
        conn.read_to_end(&mut answer).expect("read the answer");
        String::from_utf8_lossy(&answer).into_owned()
    }

    /// What the server logged so far.
    pub fn stderr(&self) -> String {
        self.running
            .as_ref()
            .map(Running::stderr_so_far)
            .unwrap_or_default()
    }

    pub fn get(&self, path: &str) -> Resp {
        http(agent().get(&self.url(path)).call(), path)
    }

    fn try_get(&self, path: &str) -> Option<Resp> {
        let mut res = agent().get(&self.url(path)).call().ok()?;
        Some(Resp::read(&mut res))
    }

    /// `POST path` with an optional bearer token and JSON body.
    pub fn post(&self, path: &str, token: Option<&str>, body: Option<&str>) -> Resp {
        let mut req = agent().post(&self.url(path));
        if let Some(token) = token {
            req = req.header("Authorization", &format!("Bearer {token}"));
        }
        let result = match body {
            Some(body) => req.header("Content-Type", "application/json").send(body),
            None => req.send_empty(),
        };
        http(result, path)
    }

    /// SIGTERM, then the exit: a graceful stop exits 0 within seconds.
    pub fn stop(mut self) -> Out {
        let running = self.running.take().expect("running");
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.pid as libc::pid_t, libc::SIGTERM);
        }
        let out = running.wait(Duration::from_secs(15));
        out.success();
        assert!(
            out.stderr.contains("stopping"),
            "no stop message:\n{}",
            out.stderr
        );
        out
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.running.is_some() {
            // SAFETY: kill(2) on our own child's pid.
            unsafe {
                libc::kill(self.pid as libc::pid_t, libc::SIGKILL);
            }
        }
    }
}

/// The address in `listening on http://ADDR/`.
fn listening_on(stderr: &str) -> Option<String> {
    let rest = &stderr[stderr.find("listening on http://")? + "listening on http://".len()..];
    Some(rest[..rest.find('/')?].to_string())
}

pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

/// A response read whole.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub content_type: String,
    pub headers: BTreeMap<String, String>,
    pub body: String,
}

impl Resp {
    fn read(res: &mut ureq::http::Response<ureq::Body>) -> Resp {
        let headers = res
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
            .collect::<BTreeMap<_, _>>();
        Resp {
            status: res.status().as_u16(),
            content_type: headers.get("content-type").cloned().unwrap_or_default(),
            headers,
            body: res.body_mut().read_to_string().expect("read the body"),
        }
    }

    #[track_caller]
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    /// Asserts the status and, for JSON, returns the document.
    #[track_caller]
    pub fn expect(&self, status: u16) -> Value {
        assert_eq!(self.status, status, "status; body: {}", self.body);
        if self.content_type.starts_with("application/json") {
            self.json()
        } else {
            Value::Null
        }
    }

    /// Asserts a JSON error with this status whose message contains `words`.
    #[track_caller]
    pub fn error(&self, status: u16, words: &str) {
        let doc = self.expect(status);
        let message = doc["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no error in {doc}"));
        assert!(
            message.contains(words),
            "{message:?} should contain {words:?}"
        );
    }
}

#[track_caller]
pub fn http(result: Result<ureq::http::Response<ureq::Body>, ureq::Error>, path: &str) -> Resp {
    let mut res = result.unwrap_or_else(|e| panic!("request {path}: {e}"));
    Resp::read(&mut res)
}

/// `name` as one path segment.
pub fn encode(name: &str) -> String {
    let mut out = String::new();
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

// ----- fixtures, written through the library into the sandbox store -----

/// An item job: keys a..e; a and b completed, c and d dead (with `<b>` in
/// an error and `<i>` and an ESC in c's output, to show they stay text),
/// e pending.
pub fn items_job(sb: &Sandbox, job: &str) {
    let ckpt = Ckpt::open(&sb.store_url()).expect("open the store");
    let queue = ckpt
        .queue_with(
            job,
            QueueOptions {
                retry: RetryPolicy::interactive(0),
                ..QueueOptions::default()
            },
        )
        .unwrap();
    queue
        .enqueue(["a", "b", "c", "d", "e"].map(NewItem::key))
        .unwrap();
    let claimed = queue.claim(4).unwrap();
    let keys: Vec<&str> = claimed.iter().map(|c| c.key.as_str()).collect();
    assert_eq!(keys, ["a", "b", "c", "d"]);
    queue.complete(&claimed[0], None).unwrap();
    queue.complete(&claimed[1], None).unwrap();
    queue
        .settle(&[ckpt::Attempt {
            item: claimed[2].clone(),
            outcome: ckpt::Outcome::Failed("exit status 3".into())
                .with_output(Some("<i>not italic</i> \u{1b}[31mred\n".into())),
            ran_for: None,
        }])
        .unwrap();
    queue
        .fail(&claimed[3], "<b>not bold</b> & timeout")
        .unwrap();
}

/// A cursor job with three checkpoints (100, 200, 300) and a state, saved
/// with `ckpt checkpoint set`.
pub fn cursor_job(sb: &Sandbox, job: &str) {
    for n in [100, 200, 300] {
        sb.ckpt()
            .args(["checkpoint", "set", job, &n.to_string()])
            .args(["--items-processed", &n.to_string(), "--stage", "load"])
            .args(["--state", r#"{"rows":1200}"#])
            .run()
            .success();
    }
}

/// A running cursor job whose only checkpoint was saved 20 minutes ago.
pub fn stale_job(sb: &Sandbox, job: &str) {
    twenty_minutes_ago(sb)
        .set_checkpoint(job, &Checkpoint::new(json!(7), 7))
        .unwrap();
}

/// A running job started 20 minutes ago that never saved a checkpoint.
pub fn silent_job(sb: &Sandbox, job: &str) {
    twenty_minutes_ago(sb).job(job).unwrap().release().unwrap();
}

/// The store of `sb`, its clock 20 minutes behind.
fn twenty_minutes_ago(sb: &Sandbox) -> Ckpt {
    let past = Timestamp(ckpt::SystemClock.now().millis() - 20 * 60 * 1000);
    Ckpt::open(&sb.store_url())
        .unwrap()
        .with_clock(Arc::new(ManualClock::new(past)))
}

// ----- the API -----
