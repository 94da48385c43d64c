//! Helpers: a sandbox directory per test and a builder that runs the real
//! `ckpt` binary against a SQLite store inside it.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

/// The binary under test, built by Cargo for this test target.
pub const BIN: &str = env!("CARGO_BIN_EXE_ckpt");

/// A temporary directory holding one test's store, items and logs. The
/// `ckpt` processes run with it as their working directory.
pub struct Sandbox {
    dir: tempfile::TempDir,
}

impl Sandbox {
    pub fn new() -> Sandbox {
        let dir = tempfile::Builder::new()
            .prefix("ckpt-cli-test-")
            .tempdir()
            .expect("create a temporary directory");
        Sandbox { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The store file every `ckpt()` command uses.
    pub fn db(&self) -> PathBuf {
        self.join("ckpt.db")
    }

    pub fn store_url(&self) -> String {
        format!("sqlite://{}", self.db().display())
    }

    /// `ckpt --store sqlite://<sandbox>/ckpt.db ...`
    pub fn ckpt(&self) -> Ckpt {
        self.ckpt_bare().arg("--store").arg(self.store_url())
    }

    /// `ckpt ...` with no `--store` (and no `CKPT_STORE` from the
    /// environment of the test run).
    pub fn ckpt_bare(&self) -> Ckpt {
        self.ckpt_via(&[])
    }

    /// `WRAPPER... ckpt ...` with no `--store`: `ckpt` started through
    /// another program (`unshare`, `setpriv`), which must exec it with the
    /// arguments that follow.
    pub fn ckpt_via(&self, wrapper: &[&str]) -> Ckpt {
        let mut cmd = match wrapper.split_first() {
            None => Command::new(BIN),
            Some((program, args)) => {
                let mut cmd = Command::new(program);
                cmd.args(args).arg(BIN);
                cmd
            }
        };
        cmd.current_dir(self.path())
            .env_remove("CKPT_STORE")
            .env_remove("CKPT_TOKEN")
            .env_remove("RUST_LOG")
            .env_remove("CKPT_JOB")
            .env_remove("CKPT_ITEM")
            .env_remove("CKPT_ATTEMPT");
        Ckpt {
            cmd,
            stdin: None,
            stdout_to: None,
        }
    }

    /// Writes `contents` to `name` in the sandbox and returns its path.
    pub fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let path = self.join(name);
        std::fs::write(&path, contents).expect("write a sandbox file");
        path
    }

    /// Writes one item per line.
    pub fn write_items(&self, name: &str, items: &[String]) -> PathBuf {
        let mut text = items.join("\n");
        text.push('\n');
        self.write(name, text)
    }

    /// The lines of a sandbox file; empty if it does not exist.
    pub fn lines(&self, name: &str) -> Vec<String> {
        match std::fs::read_to_string(self.join(name)) {
            Ok(text) => text.lines().map(str::to_string).collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => panic!("read {name}: {e}"),
        }
    }

    /// `ckpt status JOB --json`, which must succeed.
    pub fn status(&self, job: &str) -> Value {
        let out = self.ckpt().args(["status", job, "--json"]).run();
        out.success();
        out.json()
    }

    /// The logical content of the store: every table's rows, plus
    /// `user_version` and `application_id`, read through a read-only
    /// connection (so it sees what is in the WAL too).
    pub fn dump(&self) -> String {
        dump_db(&self.db())
    }
}

/// See [`Sandbox::dump`].
pub fn dump_db(path: &Path) -> String {
    use rusqlite::{types::ValueRef, Connection, OpenFlags};
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .unwrap_or_else(|e| panic!("open {} read-only: {e}", path.display()));
    let pragma = |name: &str| -> i64 {
        conn.query_row(&format!("PRAGMA {name}"), [], |r| r.get(0))
            .unwrap_or_else(|e| panic!("PRAGMA {name}: {e}"))
    };
    let mut out = format!(
        "user_version={} application_id={}\n",
        pragma("user_version"),
        pragma("application_id")
    );
    let tables: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
        .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
        .expect("list tables");
    for table in tables {
        out.push_str(&format!("table {table}\n"));
        let mut stmt = conn
            .prepare(&format!("SELECT * FROM \"{table}\" ORDER BY 1, 2"))
            .expect("select rows");
        let columns = stmt.column_count();
        let mut rows = stmt.query([]).expect("query rows");
        while let Some(row) = rows.next().expect("read a row") {
            let cells: Vec<String> = (0..columns)
                .map(|i| match row.get_ref(i).expect("read a cell") {
                    ValueRef::Null => "NULL".to_string(),
                    ValueRef::Integer(n) => n.to_string(),
                    ValueRef::Real(x) => x.to_string(),
                    ValueRef::Text(t) => format!("{:?}", String::from_utf8_lossy(t)),
                    ValueRef::Blob(b) => format!("blob{b:?}"),
                })
                .collect();
            out.push_str(&cells.join("|"));
            out.push('\n');
        }
    }
    out
}

/// A pipe read to its end on a thread, into a buffer readable meanwhile.
struct Pipe {
    buf: Arc<Mutex<Vec<u8>>>,
    thread: JoinHandle<()>,
}

impl Pipe {
    fn drain(mut pipe: impl Read + Send + 'static) -> Pipe {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&buf);
        let thread = std::thread::spawn(move || {
            let mut chunk = [0u8; 8192];
            loop {
                match pipe.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => sink.lock().unwrap().extend_from_slice(&chunk[..n]),
                }
            }
        });
        Pipe { buf, thread }
    }

    /// What was read so far.
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.buf.lock().unwrap()).into_owned()
    }

    /// Everything, once the writers have closed the pipe.
    fn finish(self) -> String {
        self.thread.join().expect("pipe reader");
        String::from_utf8_lossy(&self.buf.lock().unwrap()).into_owned()
    }
}

/// A `ckpt` command running in the background.
pub struct Running {
    describe: String,
    child: Child,
    feeder: Option<JoinHandle<()>>,
    /// None when stdout went elsewhere ([`Ckpt::stdout_to`]).
    stdout: Option<Pipe>,
    stderr: Pipe,
}

impl Running {
    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the command wrote to stderr so far.
    pub fn stderr_so_far(&self) -> String {
        self.stderr.text()
    }

    /// Sends `signal` to `ckpt` alone (not to the commands it runs).
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) has no memory-safety preconditions.
        let rc = unsafe { libc::kill(self.child.id() as i32, signal) };
        assert_eq!(rc, 0, "kill: {}", std::io::Error::last_os_error());
    }

    /// Sends `signal` to the process group `ckpt` leads (see
    /// [`Ckpt::own_process_group`]), its commands included: what a Ctrl-C
    /// at a terminal does.
    pub fn signal_group(&self, signal: i32) {
        // SAFETY: kill(2) has no memory-safety preconditions.
        let rc = unsafe { libc::kill(-(self.child.id() as i32), signal) };
        assert_eq!(rc, 0, "kill: {}", std::io::Error::last_os_error());
    }

    /// Waits for the command to exit; kills it and fails the test if it is
    /// still running after `timeout`.
    pub fn wait(mut self, timeout: Duration) -> Out {
        let describe = self.describe;
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait for ckpt") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                // Not joined: a child of `ckpt` may still hold the pipe.
                panic!(
                    "{describe} still running after {timeout:?}; killed. stderr:\n{}",
                    self.stderr.text()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        if let Some(feeder) = self.feeder {
            feeder.join().expect("stdin feeder");
        }
        let stdout = self.stdout.map(Pipe::finish).unwrap_or_default();
        let stderr = self.stderr.finish();
        let code = match status.code() {
            Some(code) => code,
            None => panic!("{describe} was killed: {status:?}; stderr:\n{stderr}"),
        };
        Out {
            describe,
            code,
            stdout,
            stderr,
        }
    }
}

/// A `ckpt` command being built.
pub struct Ckpt {
    cmd: Command,
    stdin: Option<Vec<u8>>,
    /// Where stdout goes instead of a pipe the test reads.
    stdout_to: Option<std::fs::File>,
}

impl Ckpt {
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Ckpt {
        self.cmd.arg(arg);
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Ckpt
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.cmd.args(args);
        self
    }

    pub fn env(mut self, key: &str, value: impl AsRef<OsStr>) -> Ckpt {
        self.cmd.env(key, value);
        self
    }

    /// Runs `ckpt` in a new process group of its own (as a shell runs a
    /// foreground job), so that the test can signal it and its commands
    /// together without signalling itself.
    pub fn own_process_group(mut self) -> Ckpt {
        use std::os::unix::process::CommandExt;
        self.cmd.process_group(0);
        self
    }

    /// Starts the command with SIGHUP ignored (as `nohup` does) or, with
    /// `ignored` false, at its default (whatever the test runner left).
    pub fn sighup_ignored(mut self, ignored: bool) -> Ckpt {
        use std::os::unix::process::CommandExt;
        let disposition = if ignored {
            libc::SIG_IGN
        } else {
            libc::SIG_DFL
        };
        // SAFETY: signal(2) is async-signal-safe, as pre_exec requires.
        unsafe {
            self.cmd.pre_exec(move || {
                libc::signal(libc::SIGHUP, disposition);
                Ok(())
            });
        }
        self
    }

    /// Pipes `bytes` to the command's standard input (otherwise it reads
    /// from /dev/null).
    pub fn stdin(mut self, bytes: impl Into<Vec<u8>>) -> Ckpt {
        self.stdin = Some(bytes.into());
        self
    }

    /// Sends stdout to `file` (then [`Out::stdout`] is empty), e.g.
    /// `/dev/full`.
    pub fn stdout_to(mut self, file: std::fs::File) -> Ckpt {
        self.stdout_to = Some(file);
        self
    }

    /// Runs the command to the end, capturing its output; kills it and
    /// fails the test if it runs for longer than a minute.
    pub fn run(self) -> Out {
        self.start().wait(Duration::from_secs(60))
    }

    /// Starts the command in the background, capturing its output.
    pub fn start(mut self) -> Running {
        let describe = format!("{:?}", self.cmd);
        self.cmd
            .stdin(if self.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(match self.stdout_to.take() {
                Some(file) => Stdio::from(file),
                None => Stdio::piped(),
            })
            .stderr(Stdio::piped());
        let mut child = self
            .cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {describe}: {e}"));
        let feeder = self.stdin.take().map(|bytes| {
            let mut pipe = child.stdin.take().expect("piped stdin");
            // The command may exit before reading everything: ignore EPIPE.
            std::thread::spawn(move || {
                let _ = pipe.write_all(&bytes);
            })
        });
        let stdout = child.stdout.take().map(Pipe::drain);
        let stderr = Pipe::drain(child.stderr.take().expect("piped stderr"));
        Running {
            describe,
            child,
            feeder,
            stdout,
            stderr,
        }
    }

    /// Starts the command in the background, its output discarded.
    pub fn spawn(mut self) -> Child {
        self.cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn ckpt")
    }
}

/// What a finished command did.
#[derive(Debug)]
pub struct Out {
    pub describe: String,
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    /// Asserts the exit code.
    #[track_caller]
    pub fn code(&self, expected: i32) -> &Out {
        assert_eq!(
            self.code, expected,
            "exit code of {}\n--- stdout\n{}--- stderr\n{}",
            self.describe, self.stdout, self.stderr
        );
        self.no_panic();
        self
    }

    /// Asserts exit code 0.
    #[track_caller]
    pub fn success(&self) -> &Out {
        self.code(0)
    }

    #[track_caller]
    pub fn no_panic(&self) -> &Out {
        for bad in ["panicked", "RUST_BACKTRACE", "stack backtrace"] {
            assert!(
                !self.stderr.contains(bad),
                "{} printed {bad:?} on stderr:\n{}",
                self.describe,
                self.stderr
            );
        }
        self
    }

    /// Stdout parsed as JSON.
    #[track_caller]
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout of {} is not JSON ({e}):\n{}",
                self.describe, self.stdout
            )
        })
    }

    /// Asserts a failure reported the way `ckpt` reports errors: the exit
    /// code, nothing on stdout, and exactly one line on stderr starting with
    /// `ckpt: error:`. Returns that line.
    #[track_caller]
    pub fn error(&self, expected_code: i32) -> String {
        self.code(expected_code);
        let lines: Vec<&str> = self.stderr.lines().collect();
        assert!(
            lines.len() == 1 && lines[0].starts_with("ckpt: error: "),
            "{}: expected one `ckpt: error:` line on stderr, got:\n{}",
            self.describe,
            self.stderr
        );
        assert_eq!(
            self.stdout, "",
            "{}: stdout should be empty on error",
            self.describe
        );
        lines[0].to_string()
    }
}

/// Item names `prefix1`..`prefixN`.
pub fn items(prefix: &str, n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("{prefix}{i}")).collect()
}

/// The job's items by key, as `ckpt items JOB --json` prints them.
pub fn stored_items(sb: &Sandbox, job: &str) -> BTreeMap<String, Value> {
    let out = sb.ckpt().args(["items", job, "--json"]).run();
    out.success();
    out.json()
        .as_array()
        .expect("an array of items")
        .iter()
        .map(|i| (i["key"].as_str().unwrap().to_string(), i.clone()))
        .collect()
}

/// How many times each line occurs.
pub fn counts(lines: &[String]) -> BTreeMap<String, usize> {
    let mut map = BTreeMap::new();
    for line in lines {
        *map.entry(line.clone()).or_insert(0) += 1;
    }
    map
}

/// Asserts that `lines` holds each of `expected` exactly once and nothing else.
#[track_caller]
pub fn assert_each_once(lines: &[String], expected: &[String]) {
    let got = counts(lines);
    let want: BTreeMap<String, usize> = expected.iter().map(|k| (k.clone(), 1)).collect();
    assert_eq!(got, want, "each item should have run exactly once");
}

/// Polls `cond` until it holds; panics with `what` after `timeout`.
#[track_caller]
pub fn wait_until(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Item counts of a `status --json` document, as
/// (pending, running, completed, failed, dead).
#[track_caller]
pub fn item_counts(status: &Value) -> (u64, u64, u64, u64, u64) {
    let n = |k: &str| {
        status["items"][k]
            .as_u64()
            .unwrap_or_else(|| panic!("items.{k} missing in {status}"))
    };
    (
        n("pending"),
        n("running"),
        n("completed"),
        n("failed"),
        n("dead"),
    )
}

/// True if and only if `pid` is not running: no such process, or a zombie
/// waiting to be reaped (it can no longer run code).
pub fn process_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => {
            let state = stat
                .rfind(')')
                .and_then(|i| stat[i + 1..].split_whitespace().next());
            matches!(state, Some("Z" | "X" | "x"))
        }
    }
}
