//! Worker identity and the liveness of local owners.
//!
//! A worker id is `host:pid:start:nonce`: the host name, the process id, the
//! process's start time (clock ticks since boot, from `/proc`) and a random
//! part. The start time tells a live process from a new one that reused the
//! pid, so a run restarted on the same host after a crash can take over the
//! dead run's leases at once instead of sitting out the lease.
//!
//! A worker whose commands outlive it unless a helper process kills them
//! (`ckpt run` and its sentinel) names that helper in the nonce:
//! `nonce.SPID.SSTART` (see [`WorkerId::with_sentinel`]). Such a worker
//! counts as dead only once the helper is gone too, so its items are not
//! taken over while the helper may still be stopping its commands.

use std::fmt;

use rand::Rng;

/// Who holds a lease.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct WorkerId {
    /// Host name.
    pub host: String,
    /// Process id.
    pub pid: u32,
    /// Process start time in clock ticks since boot (0 when unknown).
    pub start: u64,
    /// Random part, unique per worker within a process.
    pub nonce: String,
}

impl WorkerId {
    /// A new id for a worker in this process.
    pub fn for_this_process() -> WorkerId {
        let pid = std::process::id();
        let nonce: u32 = rand::thread_rng().gen();
        WorkerId {
            host: host_name(),
            pid,
            start: process_start_ticks(pid).unwrap_or(0),
            nonce: format!("{nonce:08x}"),
        }
    }

    /// This id with a sentinel: the process (pid and start time, as for the
    /// worker itself) that stops the worker's commands if the worker dies.
    /// It is written into the nonce (`nonce.SPID.SSTART`), so the text form
    /// and [`WorkerId::parse`] are unchanged; an id that names a sentinel is
    /// [dead](ProcessProbe::is_dead) only once both processes are gone.
    pub fn with_sentinel(mut self, pid: u32, start: u64) -> WorkerId {
        let base = self.nonce.split('.').next().unwrap_or_default().to_string();
        self.nonce = format!("{base}.{pid}.{start}");
        self
    }

    /// The sentinel named by this id (pid, start time), if any; see
    /// [`WorkerId::with_sentinel`]. Ids made before sentinels existed name
    /// none.
    pub fn sentinel(&self) -> Option<(u32, u64)> {
        let mut parts = self.nonce.splitn(3, '.');
        let _nonce = parts.next()?;
        let pid = parts.next()?.parse().ok()?;
        let start = parts.next()?.parse().ok()?;
        Some((pid, start))
    }

    /// Parses the text form; `None` for an id not made by [`WorkerId`]
    /// (for example a name chosen by a user), which is never presumed dead.
    pub fn parse(s: &str) -> Option<WorkerId> {
        let mut parts = s.rsplitn(4, ':');
        let nonce = parts.next()?.to_string();
        let start = parts.next()?.parse().ok()?;
        let pid = parts.next()?.parse().ok()?;
        let host = parts.next()?.to_string();
        Some(WorkerId {
            host,
            pid,
            start,
            nonce,
        })
    }
}

impl fmt::Display for WorkerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}:{}",
            self.host, self.pid, self.start, self.nonce
        )
    }
}

/// The environment variable that marks a process as working for a worker:
/// `CKPT_WORKER=<worker id>`. `ckpt run` sets it on every command it
/// starts; when that worker is found dead, its marked processes (and their
/// descendants, which inherit the variable) are killed before its items are
/// taken over, so an orphan never runs an item at the same time as its retry.
pub const WORKER_ENV: &str = "CKPT_WORKER";

/// Answers whether a process on this host is gone, and cleans up after it.
pub trait ProcessProbe: Send + Sync + fmt::Debug {
    /// This host's name.
    fn host(&self) -> String;
    /// True if and only if `owner` names a process on this host that is
    /// certainly gone: its pid is not alive, or is alive with another start
    /// time; and so is its sentinel, if it names one. Unknown or remote
    /// owners, and processes this one may not inspect, are never reported
    /// dead.
    fn is_dead(&self, owner: &WorkerId) -> bool;
    /// Kills the processes left running by a dead `owner`: those whose
    /// environment holds [`WORKER_ENV`]` = owner`. Returns how many.
    fn kill_orphans(&self, owner: &WorkerId) -> usize;
}

/// Probes the real processes of this machine (through `/proc` on Linux;
/// elsewhere it never reports an owner dead, so leases simply expire).
#[derive(Debug, Default, Clone, Copy)]
pub struct LocalProcesses;

impl ProcessProbe for LocalProcesses {
    fn host(&self) -> String {
        host_name()
    }

    fn is_dead(&self, owner: &WorkerId) -> bool {
        if owner.host != host_name() || owner.start == 0 || !cfg!(target_os = "linux") {
            return false;
        }
        is_gone(owner.pid, owner.start)
            && owner
                .sentinel()
                .is_none_or(|(pid, start)| start != 0 && is_gone(pid, start))
    }

    fn kill_orphans(&self, owner: &WorkerId) -> usize {
        signal_marked(owner, libc::SIGKILL)
    }
}

/// Sends `signal` to every process of this host marked as working for
/// `owner` (its environment holds [`WORKER_ENV`]` = owner`: the commands it
/// started and their descendants), scanning `/proc` again until a scan
/// finds no new one. Returns how many processes were signalled; 0 where
/// there is no `/proc`. `ckpt run` uses it to stop its own commands at
/// shutdown.
pub fn signal_marked(owner: &WorkerId, signal: i32) -> usize {
    // A process may fork while /proc is scanned: scan again until a scan
    // finds no new process (bounded, in case something keeps respawning).
    // A signalled process can still show up in the next scan while it
    // dies, so each pid is signalled and counted once.
    let mut killed = std::collections::HashSet::new();
    for _ in 0..5 {
        let before = killed.len();
        kill_marked(owner, signal, &mut killed);
        if killed.len() == before {
            break;
        }
    }
    killed.len()
}

/// One scan of `/proc`: sends `signal` to the processes marked as working
/// for `owner` and adds their pids to `killed`.
fn kill_marked(owner: &WorkerId, signal: i32, killed: &mut std::collections::HashSet<i32>) {
    let marker = format!("{WORKER_ENV}={owner}\0").into_bytes();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        if environ
            .windows(marker.len())
            .any(|w| w == marker.as_slice())
        {
            if killed.contains(&pid) {
                continue;
            }
            // SAFETY: kill(2) has no memory-safety preconditions.
            if unsafe { libc::kill(pid, signal) } == 0 {
                killed.insert(pid);
            }
        }
    }
}

/// This host as worker ids name it: the host name, plus (on Linux) a short
/// tag of the boot and of the pid namespace. Two containers that share a
/// host name but not their pids, or a machine after a reboot, are then other
/// hosts, whose workers are never presumed dead from a pid check.
pub fn host_name() -> String {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".to_string())
        .replace(':', "_");
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    let pid_ns = std::fs::read_link("/proc/self/ns/pid")
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    if boot.is_empty() && pid_ns.is_empty() {
        return name;
    }
    // FNV-1a: a stable tag, the same in every process of this host.
    let tag = format!("{boot}{pid_ns}")
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
    format!("{name}~{:08x}", tag as u32)
}

/// True if and only if the process `pid` that started at `start` (clock
/// ticks since boot) certainly runs no more: `kill(pid, 0)` finds no such
/// pid, or `/proc` shows that pid exited (a zombie) or belongs to a process
/// started at another time (the pid was reused). A pid that exists but
/// cannot be inspected (another user's process under `hidepid`, or no
/// `/proc`) counts as running: nothing is judged dead for being unreadable.
pub fn is_gone(pid: u32, start: u64) -> bool {
    let Ok(id) = libc::pid_t::try_from(pid) else {
        return false;
    };
    if id <= 0 {
        // kill(0, ...) and kill(-1, ...) name groups, not this process.
        return false;
    }
    // SAFETY: kill(2) with signal 0 only checks that the process exists.
    if unsafe { libc::kill(id, 0) } != 0 {
        match std::io::Error::last_os_error().raw_os_error() {
            Some(libc::ESRCH) => return true,
            // It exists, owned by another user: the start time may still
            // tell that the pid was reused.
            Some(libc::EPERM) => {}
            _ => return false,
        }
    }
    match read_stat(pid) {
        Some(Stat::Exited) => true,
        Some(Stat::Running { start: now }) => now != start,
        None => false,
    }
}

/// What `/proc/PID/stat` says about a process.
enum Stat {
    /// A zombie: it exited and waits to be reaped.
    Exited,
    /// Alive, started at `start` clock ticks since boot.
    Running { start: u64 },
}

/// `None` if the file cannot be read or parsed.
fn read_stat(pid: u32) -> Option<Stat> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Field 2 (comm) may contain spaces and parentheses: skip past its last ')'.
    let mut fields = stat[stat.rfind(')')? + 1..].split_whitespace();
    // After comm, fields start at 3 (state); starttime is field 22.
    if matches!(fields.next()?, "Z" | "X" | "x") {
        return Some(Stat::Exited);
    }
    let start = fields.nth(22 - 4)?.parse().ok()?;
    Some(Stat::Running { start })
}

/// Start time of `pid` in clock ticks since boot, or `None` if there is no
/// such process (or no `/proc`). A zombie (exited, not yet reaped by its
/// parent) counts as no process: it will never renew a lease again.
pub fn process_start_ticks(pid: u32) -> Option<u64> {
    match read_stat(pid)? {
        Stat::Running { start } => Some(start),
        Stat::Exited => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_round_trips() {
        let id = WorkerId::for_this_process();
        assert_eq!(WorkerId::parse(&id.to_string()), Some(id.clone()));
        assert_eq!(id.pid, std::process::id());
        assert!(WorkerId::parse("just-a-name").is_none());
        assert!(WorkerId::parse("h:notapid:1:x").is_none());
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn probe_tells_live_from_dead() {
        let me = WorkerId::for_this_process();
        assert!(me.start > 0);
        assert!(!LocalProcesses.is_dead(&me));
        let reused_pid = WorkerId {
            start: me.start + 1,
            ..me.clone()
        };
        assert!(LocalProcesses.is_dead(&reused_pid));
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let child_pid = child.id();
        child.wait().unwrap();
        let gone = WorkerId {
            pid: child_pid,
            ..me.clone()
        };
        assert!(LocalProcesses.is_dead(&gone));
        // A dead run whose sentinel lives on is not dead yet; nor is one
        // whose sentinel's start time is unknown.
        assert!(!LocalProcesses.is_dead(&gone.clone().with_sentinel(me.pid, me.start)));
        assert!(!LocalProcesses.is_dead(&gone.clone().with_sentinel(child_pid, 0)));
        assert!(LocalProcesses.is_dead(&gone.clone().with_sentinel(child_pid, 5)));
        assert!(!LocalProcesses.is_dead(&me.clone().with_sentinel(child_pid, 5)));
        let remote = WorkerId {
            host: "another-host".into(),
            pid: child_pid,
            ..me
        };
        assert!(!LocalProcesses.is_dead(&remote));
    }

    #[test]
    fn sentinel_rides_in_the_nonce_and_old_ids_still_parse() {
        let id = WorkerId::for_this_process().with_sentinel(4242, 99);
        assert_eq!(id.sentinel(), Some((4242, 99)));
        let text = id.to_string();
        assert!(text.ends_with(".4242.99"), "{text}");
        let parsed = WorkerId::parse(&text).unwrap();
        assert_eq!(parsed, id);
        assert_eq!(parsed.sentinel(), Some((4242, 99)));
        // Replacing the sentinel keeps the random part.
        let again = id.clone().with_sentinel(7, 8);
        assert_eq!(again.nonce.split('.').next(), id.nonce.split('.').next());
        assert_eq!(again.sentinel(), Some((7, 8)));
        // An id written before sentinels existed.
        let old = WorkerId::parse("host~1a2b3c4d:123:456:0badcafe").unwrap();
        assert_eq!((old.pid, old.start, old.sentinel()), (123, 456, None));
        assert_eq!(old.to_string(), "host~1a2b3c4d:123:456:0badcafe");
        assert_eq!(WorkerId::parse("h:1:2:n.x.3").unwrap().sentinel(), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn is_gone_asks_kill_then_the_start_time() {
        let me = std::process::id();
        let start = process_start_ticks(me).unwrap();
        assert!(!is_gone(me, start), "this process is alive");
        assert!(is_gone(me, start + 1), "same pid, another start: reused");
        // Never a group or every process.
        assert!(!is_gone(0, 0));
        assert!(!is_gone(u32::MAX, 1));
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        let child_start = process_start_ticks(pid).unwrap_or(1);
        child.wait().unwrap();
        assert!(is_gone(pid, child_start), "reaped: kill() says ESRCH");
        // A zombie still answers kill(): /proc says it exited.
        let zombie = std::process::Command::new("true").spawn().unwrap();
        let zpid = zombie.id();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !matches!(read_stat(zpid), Some(Stat::Exited)) {
            assert!(std::time::Instant::now() < deadline, "child never exited");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        // SAFETY: kill(2) with signal 0 only checks that the process exists.
        assert_eq!(unsafe { libc::kill(zpid as i32, 0) }, 0, "a zombie");
        assert!(is_gone(zpid, 1));
        drop(zombie); // std does not reap; the test harness exits soon
    }

    /// Run by [`another_users_process_is_alive_though_proc_hides_it`] as
    /// another user in a mount namespace with `/proc` mounted `hidepid=2`;
    /// does nothing otherwise.
    #[cfg(target_os = "linux")]
    #[test]
    fn probe_as_another_user() {
        let Ok(target) = std::env::var("CKPT_TEST_PROBE_TARGET") else {
            return;
        };
        let (pid, start) = target.split_once(':').unwrap();
        let (pid, start): (u32, u64) = (pid.parse().unwrap(), start.parse().unwrap());
        assert!(
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_err(),
            "hidepid hides the other user's process"
        );
        // SAFETY: kill(2) with signal 0 only checks that the process exists.
        assert_eq!(unsafe { libc::kill(pid as i32, 0) }, -1);
        assert_eq!(
            std::io::Error::last_os_error().raw_os_error(),
            Some(libc::EPERM)
        );
        assert!(!is_gone(pid, start), "alive though unreadable");
        let owner = WorkerId {
            pid,
            start,
            ..WorkerId::for_this_process()
        };
        assert!(!LocalProcesses.is_dead(&owner));
        // Its own processes it still judges.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let gone = child.id();
        child.wait().unwrap();
        assert!(is_gone(gone, 1));
        println!("probe-as-another-user: ok");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn another_users_process_is_alive_though_proc_hides_it() {
        // SAFETY: geteuid(2) has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            // Not root: pid 1 belongs to someone else; kill() says EPERM.
            // SAFETY: kill(2) with signal 0 only checks that the process exists.
            if unsafe { libc::kill(1, 0) } != 0 {
                let start = process_start_ticks(1).unwrap_or(0);
                assert!(!is_gone(1, start), "pid 1 is alive");
            }
            eprintln!("skipped the hidepid part: it needs root");
            return;
        }
        let me = std::process::id();
        let start = process_start_ticks(me).unwrap();
        let exe = std::env::current_exe().unwrap();
        let script = r#"mount -t proc -o hidepid=2 proc /proc || exit 97
exec setpriv --reuid=65534 --regid=65534 --clear-groups "$0" --exact worker::tests::probe_as_another_user --nocapture"#;
        let out = std::process::Command::new("unshare")
            .args(["--mount", "--propagation", "private", "--fork", "sh", "-c"])
            .arg(script)
            .arg(&exe)
            .env("CKPT_TEST_PROBE_TARGET", format!("{me}:{start}"))
            .output()
            .expect("run unshare");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{text}");
        assert!(text.contains("probe-as-another-user: ok"), "{text}");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn orphans_of_a_dead_worker_are_killed() {
        let dead = WorkerId {
            nonce: "orphan-test".into(),
            ..WorkerId::for_this_process()
        };
        let spawn = |id: &WorkerId| {
            let child = std::process::Command::new("sleep")
                .arg("30")
                .env(WORKER_ENV, id.to_string())
                .spawn()
                .unwrap();
            // spawn() returns while the child is still inside execve, when
            // its /proc environ reads empty: wait until the exec is done.
            let marker = format!("{WORKER_ENV}={id}\0").into_bytes();
            let environ = format!("/proc/{}/environ", child.id());
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while !std::fs::read(&environ)
                .unwrap_or_default()
                .windows(marker.len())
                .any(|w| w == marker.as_slice())
            {
                assert!(std::time::Instant::now() < deadline, "child never exec'd");
                std::thread::yield_now();
            }
            child
        };
        let mut orphan = spawn(&dead);
        let other = WorkerId {
            nonce: "someone-else".into(),
            ..dead.clone()
        };
        let mut bystander = spawn(&other);
        assert_eq!(LocalProcesses.kill_orphans(&dead), 1);
        let status = orphan.wait().unwrap();
        assert!(!status.success());
        assert!(
            bystander.try_wait().unwrap().is_none(),
            "other workers' processes live on"
        );
        bystander.kill().unwrap();
        bystander.wait().unwrap();
    }
}
