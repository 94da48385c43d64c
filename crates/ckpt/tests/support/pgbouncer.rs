//! A real PgBouncer of a test's own, in front of the test PostgreSQL
//! server, on a free port; stopped when the guard goes. Shared by the
//! library's and the CLI's tests (included with `#[path]`).
//!
//! Skipped, with the reason printed, when `pgbouncer` is not installed,
//! unless `CKPT_REQUIRE_SERVICES=1` (then it fails: `.ci/run` installs it).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running PgBouncer.
pub struct PgBouncer {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

/// The installed `pgbouncer` (Debian puts it in /usr/sbin, which a
/// non-root PATH may lack).
fn binary() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("pgbouncer"))
            .find(|p| p.is_file())
    });
    on_path.or_else(|| {
        let sbin = PathBuf::from("/usr/sbin/pgbouncer");
        sbin.is_file().then_some(sbin)
    })
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl PgBouncer {
    /// PgBouncer in `pool_mode` (`session` or `transaction`) in front of
    /// the server on 127.0.0.1:`server_port`, with `server_pool` server
    /// connections per database and user: fewer than the clients use, so
    /// clients really share server connections. Trust authentication, for
    /// users `postgres` and `root`.
    pub fn start(pool_mode: &str, server_port: u16, server_pool: u32) -> Option<PgBouncer> {
        let Some(bin) = binary() else {
            if std::env::var("CKPT_REQUIRE_SERVICES").is_ok_and(|v| v == "1") {
                panic!("CKPT_REQUIRE_SERVICES=1 but pgbouncer is not installed");
            }
            eprintln!("skipped: pgbouncer is not installed");
            return None;
        };
        // A port found free may be taken before PgBouncer binds it: retry.
        let mut last = String::new();
        for _ in 0..3 {
            match Self::try_start(&bin, pool_mode, server_port, server_pool) {
                Ok(bouncer) => return Some(bouncer),
                Err(e) => last = e,
            }
        }
        panic!("pgbouncer did not start: {last}");
    }

    fn try_start(
        bin: &Path,
        pool_mode: &str,
        server_port: u16,
        server_pool: u32,
    ) -> Result<PgBouncer, String> {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let users = dir.path().join("users.txt");
        std::fs::write(&users, "\"postgres\" \"\"\n\"root\" \"\"\n").unwrap();
        // PgBouncer refuses to run as root; told a user, it becomes that
        // user after start-up (and reads its files as that user).
        // SAFETY: geteuid has no preconditions.
        let as_root = unsafe { libc::geteuid() } == 0;
        let user = if as_root { "user = postgres\n" } else { "" };
        let ini = dir.path().join("pgbouncer.ini");
        std::fs::write(
            &ini,
            format!(
                "[databases]\n* = host=127.0.0.1 port={server_port}\n\
                 [pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\n\
                 unix_socket_dir =\nauth_type = trust\nauth_file = {}\n\
                 pool_mode = {pool_mode}\ndefault_pool_size = {server_pool}\n\
                 max_client_conn = 500\n{user}",
                users.display()
            ),
        )
        .unwrap();
        if as_root {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
            for f in [&users, &ini] {
                std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o644)).unwrap();
            }
        }
        let log = std::fs::File::create(dir.path().join("pgbouncer.log")).unwrap();
        let child = Command::new(bin)
            .arg(&ini)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", bin.display()))?;
        let mut bouncer = PgBouncer { child, port, dir };
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(15) {
            if let Some(status) = bouncer.child.try_wait().unwrap() {
                return Err(format!("exited ({status}): {}", bouncer.log()));
            }
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(bouncer);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(format!("not listening after 15 s: {}", bouncer.log()))
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// What it logged so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("pgbouncer.log")).unwrap_or_default()
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
