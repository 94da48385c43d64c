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
use std::time::Duration;

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

/// The environment variable that marks a process as part of one command a
/// worker started: `CKPT_COMMAND=<n>`, a number unique within that worker,
/// beside [`WORKER_ENV`]. A command's descendants that left its process
/// group (`set -m`, a wrapper that calls `setpgid`) still carry both, so
/// the command can be stopped whole ([`signal_marked_command`]) without a
/// signal to the worker's other commands.
pub const COMMAND_ENV: &str = "CKPT_COMMAND";

/// How long a worker waits for the sentinel of a dead local owner to stop
/// the owner's commands before it runs the owner's items
/// ([`Ckpt::wait_while_stopping`](crate::Ckpt::wait_while_stopping)):
/// longer than a sentinel takes (SIGTERM, SIGKILL 0.5 s later, then the
/// wait for the process groups to empty, given up after 10 s).
pub const SENTINEL_PATIENCE: Duration = Duration::from_secs(15);

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
    /// True if and only if `owner` is a process on this host that is gone
    /// while its sentinel (see [`WorkerId::with_sentinel`]) still runs,
    /// stopping the commands `owner` left: its items must not run again
    /// until the sentinel is done. The default knows no sentinels.
    fn is_stopping(&self, owner: &WorkerId) -> bool {
        let _ = owner;
        false
    }
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

    fn is_stopping(&self, owner: &WorkerId) -> bool {
        if owner.host != host_name() || owner.start == 0 || !cfg!(target_os = "linux") {
            return false;
        }
        owner.sentinel().is_some_and(|(pid, start)| {
            start != 0 && !is_gone(pid, start) && is_gone(owner.pid, owner.start)
        })
    }
}

/// Sends `signal` to every process of this host marked as working for
/// `owner` (its environment holds [`WORKER_ENV`]` = owner`: the commands it
/// started and their descendants), scanning `/proc` again until a scan
/// finds no new one. Returns how many processes were signalled; 0 where
/// there is no `/proc`. `ckpt run` uses it to stop its own commands at
/// shutdown.
pub fn signal_marked(owner: &WorkerId, signal: i32) -> usize {
    signal_all_marked(&[format!("{WORKER_ENV}={owner}")], signal)
}

/// [`signal_marked`] for the processes of one command of `owner`: those
/// whose environment also holds [`COMMAND_ENV`]` = command`.
pub fn signal_marked_command(owner: &WorkerId, command: u64, signal: i32) -> usize {
    signal_all_marked(
        &[
            format!("{WORKER_ENV}={owner}"),
            format!("{COMMAND_ENV}={command}"),
        ],
        signal,
    )
}

/// Signals the processes whose environment holds every one of `markers`.
fn signal_all_marked(markers: &[String], signal: i32) -> usize {
    let markers: Vec<Vec<u8>> = markers
        .iter()
        .map(|m| format!("{m}\0").into_bytes())
        .collect();
    // A process may fork while /proc is scanned: scan again until a scan
    // finds no new process (bounded, in case something keeps respawning).
    // A signalled process can still show up in the next scan while it
    // dies, so each pid is signalled and counted once.
    let mut killed = std::collections::HashSet::new();
    for _ in 0..5 {
        let before = killed.len();
        kill_marked(&markers, signal, &mut killed);
        if killed.len() == before {
            break;
        }
    }
    killed.len()
}

/// One scan of `/proc`: sends `signal` to the processes whose environment
/// holds every one of `markers` (each `NAME=value\0`) and adds their pids
/// to `killed`.
fn kill_marked(markers: &[Vec<u8>], signal: i32, killed: &mut std::collections::HashSet<i32>) {
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
        // Each marker whole: at the start of the environment or after a
        // NUL, so `CKPT_COMMAND=1` does not match `CKPT_COMMAND=21`.
        let holds = |marker: &[u8]| {
            environ.starts_with(marker)
                || environ
                    .windows(marker.len() + 1)
                    .any(|w| w[0] == 0 && &w[1..] == marker)
        };
        if markers.iter().all(|m| holds(m)) {
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
mod tests;
