//! `ckpt run` survives a PostgreSQL restart in the middle of a run.
//!
//! Restarting the shared test server would break the tests running beside
//! this one, so this test starts a private cluster of its own (`initdb` and
//! `pg_ctl` from the installed server, in a temporary folder, on a free
//! port). Skipped, with the reason printed, when no server binaries are
//! installed, unless `CKPT_REQUIRE_SERVICES=1`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::util::{item_counts, items, wait_until, Sandbox};

/// A PostgreSQL cluster of this test's own, stopped when the guard goes.
pub(crate) struct PrivateCluster {
    bin: PathBuf,
    data: PathBuf,
    port: u16,
    // Holds the folder (and so the cluster's files) until the guard goes.
    _dir: tempfile::TempDir,
}

/// The newest installed server's `bin` folder (Debian's layout).
fn server_bin() -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|bin| bin.join("initdb").is_file() && bin.join("pg_ctl").is_file())
        .collect();
    found.sort();
    found.pop()
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

impl PrivateCluster {
    pub(crate) fn start() -> Option<PrivateCluster> {
        Self::start_with(|_| {})
    }

    /// A cluster with `conf` appended to its postgresql.conf and, when
    /// given, `hba` as its whole pg_hba.conf.
    pub(crate) fn start_configured(conf: &str, hba: Option<&str>) -> Option<PrivateCluster> {
        Self::start_with(|data| {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(data.join("postgresql.conf"))
                .unwrap();
            writeln!(f, "{conf}").unwrap();
            if let Some(hba) = hba {
                std::fs::write(data.join("pg_hba.conf"), hba).unwrap();
            }
        })
    }

    /// Starts a cluster after `setup` has changed its fresh data folder
    /// (configuration files, certificates), which is then given to the
    /// server's user.
    pub(crate) fn start_with(setup: impl FnOnce(&Path)) -> Option<PrivateCluster> {
        let Some(bin) = server_bin() else {
            if std::env::var("CKPT_REQUIRE_SERVICES").is_ok_and(|v| v == "1") {
                panic!("CKPT_REQUIRE_SERVICES=1 but no PostgreSQL server binaries (initdb, pg_ctl) are installed");
            }
            eprintln!("skipped: no PostgreSQL server binaries (initdb, pg_ctl) are installed");
            return None;
        };
        let (dir, data) = data_folder();
        let port = free_port();
        let cluster = PrivateCluster {
            bin,
            data,
            port,
            _dir: dir,
        };
        cluster.pg(
            "initdb",
            &[
                "-D",
                cluster.data.to_str().unwrap(),
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
            ],
        );
        setup(&cluster.data);
        if is_root() {
            let chown = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&cluster.data)
                .status()
                .unwrap();
            assert!(chown.success(), "chown of the cluster folder failed");
        }
        cluster.pg_ctl_start();
        Some(cluster)
    }

    /// A streaming standby of `primary` on a port of its own: a copy by
    /// `pg_basebackup -R` (which writes `primary_conninfo` and
    /// `standby.signal`), started and waited for until the primary lists
    /// it as streaming.
    pub(crate) fn standby_of(primary: &PrivateCluster) -> PrivateCluster {
        let (dir, data) = data_folder();
        let standby = PrivateCluster {
            bin: primary.bin.clone(),
            data,
            port: free_port(),
            _dir: dir,
        };
        let port = primary.port.to_string();
        standby.pg(
            "pg_basebackup",
            &[
                "-D",
                standby.data.to_str().unwrap(),
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-U",
                "postgres",
                "-R",
                "-X",
                "stream",
                "-c",
                "fast",
                "--no-sync",
            ],
        );
        standby.pg_ctl_start();
        wait_until(
            Duration::from_secs(30),
            "the standby to stream from the primary",
            || {
                primary.sql("SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'")
                    == "1"
            },
        );
        standby
    }

    /// Promotes this standby to a primary (`pg_ctl promote`, waiting until
    /// it accepts writes).
    pub(crate) fn promote(&self) {
        self.pg(
            "pg_ctl",
            &["-D", self.data.to_str().unwrap(), "-w", "promote"],
        );
    }

    /// Runs `sql` on this cluster's `postgres` database; its output, one
    /// row a line (`psql -At`), trimmed.
    pub(crate) fn sql(&self, sql: &str) -> String {
        let port = self.port.to_string();
        let out = Command::new(self.bin.join("psql"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-U",
                "postgres",
                "-d",
                "postgres",
            ])
            .args(["-v", "ON_ERROR_STOP=1", "-Atc", sql])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "psql {sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// The server's process id (the first line of `postmaster.pid`), if
    /// it runs.
    pub(crate) fn postmaster_pid(&self) -> Option<i32> {
        let text = std::fs::read_to_string(self.data.join("postmaster.pid")).ok()?;
        text.lines().next()?.trim().parse().ok()
    }

    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    pub(crate) fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Runs one of the server's programs, as `postgres` when we are root.
    fn pg(&self, program: &str, args: &[&str]) {
        let exe = self.bin.join(program);
        let mut cmd = if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        let out = cmd.args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{program} {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub(crate) fn pg_ctl_start(&self) {
        let data = self.data.to_str().unwrap();
        let log = self.data.join("server.log");
        let options = format!(
            "-p {} -k {data} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port
        );
        self.pg(
            "pg_ctl",
            &[
                "-D",
                data,
                "-l",
                log.to_str().unwrap(),
                "-o",
                &options,
                "-w",
                "start",
            ],
        );
    }

    pub(crate) fn pg_ctl_stop(&self, mode: &str) {
        self.pg(
            "pg_ctl",
            &["-D", self.data.to_str().unwrap(), "-m", mode, "-w", "stop"],
        );
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        let exe = self.bin.join("pg_ctl");
        let data = self.data.to_str().unwrap_or_default().to_string();
        let args = ["-D", data.as_str(), "-m", "immediate", "-w", "stop"];
        let _ = if is_root() {
            Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(&exe)
                .args(args)
                .output()
        } else {
            Command::new(&exe).args(args).output()
        };
    }
}

/// A temporary folder with an empty `data` folder in it that the server's
/// user may use (initdb and pg_basebackup refuse to run as root: the
/// cluster then belongs to `postgres`, who must be able to reach it).
fn data_folder() -> (tempfile::TempDir, PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    // The server refuses a data folder others may read.
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).unwrap();
    if is_root() {
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let chown = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(&data)
            .status()
            .unwrap();
        assert!(chown.success(), "chown of the cluster folder failed");
    }
    (dir, data)
}

/// A port nothing listens on right now (the kernel's pick).
pub(crate) fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

fn log_path(sb: &Sandbox) -> PathBuf {
    sb.join("log")
}

fn lines_in(path: &Path) -> usize {
    std::fs::read_to_string(path).map_or(0, |s| s.lines().count())
}

#[test]
fn a_run_survives_a_postgres_restart_and_loses_nothing() {
    let Some(cluster) = PrivateCluster::start() else {
        return;
    };
    let sb = Sandbox::new();
    let all = items("r", 80);
    let file = sb.write_items("items.txt", &all);
    let running = start_run(&sb, &cluster.url(), &file);
    let log = log_path(&sb);
    wait_until(
        Duration::from_secs(30),
        "a quarter of the items run",
        || lines_in(&log) >= all.len() / 4,
    );
    // A fast shutdown ends every session (the liveness locks with them),
    // and the server stays down long enough for claims, completions and
    // heartbeats to fail and be retried.
    cluster.pg_ctl_stop("fast");
    let done_while_up = lines_in(&log);
    std::thread::sleep(Duration::from_secs(3));
    cluster.pg_ctl_start();
    let out = running.wait(Duration::from_secs(120));
    out.success();
    assert!(
        done_while_up < all.len(),
        "the restart came after the run had finished; the test proves nothing"
    );

    assert_nothing_lost(&sb, &cluster.url(), &all);
}

/// `ckpt run -j 4` of job `J` over `file` at `url`; each command logs its
/// item to `log` once it is done.
fn start_run(sb: &Sandbox, url: &str, file: &Path) -> crate::util::Running {
    sb.ckpt_bare()
        .args(["--store", url, "run", "--job", "J", "--items"])
        .arg(file)
        .args([
            "-j",
            "4",
            "--",
            "sh",
            "-c",
            r#"sleep 0.1; echo "$0" >> log"#,
        ])
        .start()
}

/// Every item ran to its end at least once (an item in flight during the
/// outage may run again, never zero times), and job `J` completed them all.
fn assert_nothing_lost(sb: &Sandbox, url: &str, all: &[String]) {
    let mut logged = sb.lines("log");
    logged.sort();
    logged.dedup();
    let mut expected = all.to_vec();
    expected.sort();
    assert_eq!(logged, expected, "every item ran to its end");
    let status = sb
        .ckpt_bare()
        .args(["--store", url, "status", "J", "--json"])
        .run();
    status.success();
    let status = status.json();
    assert_eq!(status["status"], "completed");
    assert_eq!(item_counts(&status), (0, 0, all.len() as u64, 0, 0));
}

/// The same restart behind PgBouncer: while the server is away, PgBouncer
/// answers `08P01 server login has been failing, try again later` for a
/// while (`server_login_retry`) even after it is back. Two runs through it
/// ride that out as an outage and lose nothing, rather than ending with a
/// store error and leaving finished items unrecorded.
#[test]
fn runs_through_pgbouncer_survive_a_postgres_restart() {
    let Some(cluster) = PrivateCluster::start() else {
        return;
    };
    let Some(bouncer) = crate::pgbouncer::PgBouncer::start("transaction", cluster.port(), 4) else {
        return;
    };
    let url = format!(
        "postgres://postgres@127.0.0.1:{}/postgres?pooler=transaction",
        bouncer.port()
    );
    let sb = Sandbox::new();
    let all = items("b", 120);
    let file = sb.write_items("items.txt", &all);
    let runs = [start_run(&sb, &url, &file), start_run(&sb, &url, &file)];
    let log = log_path(&sb);
    wait_until(Duration::from_secs(30), "a sixth of the items run", || {
        lines_in(&log) >= all.len() / 6
    });
    cluster.pg_ctl_stop("fast");
    let done_while_up = lines_in(&log);
    std::thread::sleep(Duration::from_secs(3));
    cluster.pg_ctl_start();
    for run in runs {
        let out = run.wait(Duration::from_secs(180));
        assert_eq!(out.code, 0, "{}", out.stderr);
    }
    assert!(
        done_while_up < all.len(),
        "the restart came after the runs had finished; the test proves nothing"
    );
    assert_nothing_lost(&sb, &url, &all);
}
