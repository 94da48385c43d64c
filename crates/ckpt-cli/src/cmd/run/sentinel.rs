//! The sentinel: one small process per `ckpt run` that stops the run's
//! commands if the run dies, however it dies (`kill -9`, OOM killer, a
//! crash), on any host.
//!
//! Each command runs in a process group of its own. `ckpt run` starts the
//! sentinel (the `ckpt` binary again, with the hidden first argument
//! [`ARG`]) in a session of its own, so that neither a signal to ckpt's
//! process group nor the terminal's SIGHUP reaches it, and keeps one end of
//! a socket pair whose other end is the sentinel's standard input. Over it
//! ckpt writes:
//!
//! - `=WORKER` once: the worker id its commands carry in `CKPT_WORKER`;
//! - `+PGID` when a command starts;
//! - `@PGID TERM KILL` when its fence deadline moves: by `TERM` (ms of
//!   `CLOCK_BOOTTIME`) the command must be told to stop, by `KILL` it must
//!   be gone, because its item's lease can no longer be proven after that
//!   (see `ckpt::policy::fence`);
//! - `-PGID` when that command has exited, before it is reaped.
//!
//! The sentinel enforces the deadlines itself: SIGTERM to the group at
//! `TERM`, SIGKILL at `KILL`. ckpt's own watchdog does the same, but a
//! `ckpt run` that is stopped (SIGSTOP, a debugger) or hung cannot, while
//! its commands run on; the sentinel, in its own session, is not stopped
//! with it. `CLOCK_BOOTTIME` keeps counting while the machine sleeps, so a
//! laptop that wakes up past the deadline kills at once.
//!
//! End of file means that ckpt is gone (the kernel closes the socket of a
//! dead process). The sentinel then sends SIGTERM to every group still
//! registered (and to every process still marked with the worker id, the
//! same sweep as before sentinels existed), SIGKILL [`KILL_AFTER`] later
//! to what is left, waits until those groups are empty and exits. A normal
//! exit of ckpt leaves nothing registered, and the sentinel just exits.
//!
//! The worker id names the sentinel (`WorkerId::with_sentinel`), so a rerun
//! on this host does not take the dead run's items over while the sentinel
//! may still be stopping their commands.
//!
//! Sending uses `send(MSG_NOSIGNAL)`: `ckpt` restores the default SIGPIPE
//! action, and a sentinel that died must cost a warning, not the run.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use ckpt::worker::{process_start_ticks, signal_marked, signal_marked_command, WorkerId};

/// The hidden first argument that makes `ckpt` a sentinel.
pub const ARG: &str = "__sentinel";

/// How long the sentinel lets messages gather before it reads them; the
/// most by which it may act late on a deadline or on ckpt's death.
const BATCH_MESSAGES_FOR: Duration = Duration::from_millis(20);

/// How long the commands of a dead run have between SIGTERM and SIGKILL.
const KILL_AFTER: Duration = Duration::from_millis(500);

/// How long the sentinel waits, after SIGKILL, for the groups to empty (a
/// process in uninterruptible sleep dies when its system call ends).
const GIVE_UP_AFTER: Duration = Duration::from_secs(10);

/// `ckpt run`'s side: the sentinel process and the socket to it.
pub struct Sentinel {
    child: Child,
    start: u64,
    socket: Mutex<Option<UnixStream>>,
}

impl Sentinel {
    /// Starts the sentinel of this run.
    pub fn spawn() -> Result<Sentinel> {
        let (ours, theirs) = UnixStream::pair().context("cannot create the sentinel's socket")?;
        let exe = std::env::current_exe().context("cannot find the ckpt executable")?;
        let mut cmd = Command::new(exe);
        cmd.arg(ARG)
            .stdin(Stdio::from(OwnedFd::from(theirs)))
            .stdout(Stdio::null());
        // SAFETY: setsid(2) is async-signal-safe. The full fork that
        // pre_exec implies is paid once per run, never per item.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() == -1 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().context("cannot start the sentinel process")?;
        // Read now: the child exists from the fork on, with its start time.
        let start = process_start_ticks(child.id()).unwrap_or(0);
        Ok(Sentinel {
            child,
            start,
            socket: Mutex::new(Some(ours)),
        })
    }

    /// `id` naming this sentinel.
    pub fn name_in(&self, id: WorkerId) -> WorkerId {
        id.with_sentinel(self.child.id(), self.start)
    }

    /// Tells the sentinel the worker id its commands are marked with.
    pub fn worker(&self, worker: &str) {
        self.send(&format!("={worker}\n"));
    }

    /// Registers the process group of a command just started, and its
    /// mark (`CKPT_COMMAND`).
    pub fn started(&self, pgid: u32, mark: u64) {
        self.send(&format!("+{pgid} {mark}\n"));
    }

    /// Tells the sentinel when the command of group `pgid` must be told to
    /// stop (`term`) and be gone (`kill`). Returns `term` as sent, in ms on
    /// `CLOCK_BOOTTIME` (see [`past`]).
    pub fn deadline(&self, pgid: u32, term: Instant, kill: Instant) -> i64 {
        let term_ms = boottime_ms(term);
        self.send(&format!("@{pgid} {term_ms} {}\n", boottime_ms(kill)));
        term_ms
    }

    /// Unregisters the process group of a command that has exited, before
    /// it is reaped.
    pub fn reaped(&self, pgid: u32) {
        self.send(&format!("-{pgid}\n"));
    }

    fn send(&self, msg: &str) {
        let mut socket = self.socket.lock().unwrap_or_else(|e| e.into_inner());
        let Some(s) = socket.as_ref() else {
            return;
        };
        let mut bytes = msg.as_bytes();
        while !bytes.is_empty() {
            // SAFETY: the pointer and length describe `bytes`, alive here.
            let n = unsafe {
                libc::send(
                    s.as_raw_fd(),
                    bytes.as_ptr().cast(),
                    bytes.len(),
                    libc::MSG_NOSIGNAL,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                tracing::warn!(
                    event = "sentinel_lost",
                    error = %e,
                    "the sentinel process is gone: if ckpt dies now, its commands live on"
                );
                *socket = None;
                return;
            }
            bytes = &bytes[n as usize..];
        }
    }

    /// Closes the socket and waits for the sentinel to exit: with nothing
    /// registered, it exits at once.
    pub fn close(&mut self) {
        self.socket.lock().unwrap_or_else(|e| e.into_inner()).take();
        let _ = self.child.wait();
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        self.close();
    }
}

/// The sentinel process: reads standard input until ckpt is gone, then
/// stops what ckpt left running.
pub fn main() -> ExitCode {
    // No terminal reaches this session; these are ignored in case a
    // process group or session signal is sent by hand.
    // SAFETY: signal(2) with SIG_IGN, before any thread exists.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_IGN);
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
    // A name of its own, so that `killall -9 ckpt` (which goes by the name)
    // kills the runs and leaves their sentinels to kill the commands.
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes.
    unsafe {
        libc::prctl(libc::PR_SET_NAME, SENTINEL_NAME.as_ptr());
    }
    let mut groups: BTreeMap<i32, Group> = BTreeMap::new();
    let mut worker = None;
    let mut input = Input {
        pending: Vec::new(),
        buf: [0u8; 4096],
    };
    // What ckpt sent is applied before any deadline is enforced: the group
    // of a command that has exited (`-PGID`) is about to be reaped, and its
    // id is then free for another process. (A message sent after the drain
    // is applied at the next pass; ckpt reaps without waiting for it.)
    while input.drain(&mut groups, &mut worker) {
        enforce(&mut groups, worker.as_ref());
        let wait_ms = next_deadline(&groups).map_or(-1, |at| (at - now_ms()).clamp(0, 60_000));
        if readable(wait_ms as i32) {
            // Let messages gather in the socket for a moment rather than
            // wake for each of them (three per command: a thread switch
            // each on a small machine). Nothing is lost meanwhile: if ckpt
            // dies, what it sent is still read before the end of file.
            std::thread::sleep(BATCH_MESSAGES_FOR);
        }
    }
    let groups: BTreeSet<i32> = groups.into_keys().collect();
    if groups.is_empty() {
        return ExitCode::SUCCESS;
    }
    // ckpt died with commands running.
    let left = stop(&groups, worker.as_ref());
    if left > 0 {
        errln!(
            "ckpt sentinel: {left} process group(s) of a dead `ckpt run` still alive {} after SIGKILL",
            humantime::format_duration(GIVE_UP_AFTER)
        );
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

/// Reads of standard input per pass, at most (of 4 KiB: about 200
/// commands' messages).
const DRAIN_READS: usize = 64;

/// Standard input: the protocol's lines as they arrive.
struct Input {
    /// A line not yet complete.
    pending: Vec<u8>,
    buf: [u8; 4096],
}

impl Input {
    /// Reads and applies the lines waiting, without blocking; false once
    /// ckpt is gone (end of file, or the input cannot be read). Reads at
    /// most [`DRAIN_READS`] times, so that deadlines are enforced even if
    /// ckpt never stops writing.
    fn drain(&mut self, groups: &mut BTreeMap<i32, Group>, worker: &mut Option<WorkerId>) -> bool {
        for _ in 0..DRAIN_READS {
            if !readable(0) {
                break;
            }
            // SAFETY: reads into `buf`, which is valid for its length.
            let n = unsafe { libc::read(0, self.buf.as_mut_ptr().cast(), self.buf.len()) };
            if n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            if n <= 0 {
                return false;
            }
            self.pending.extend_from_slice(&self.buf[..n as usize]);
            while let Some(end) = self.pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.pending.drain(..=end).collect();
                let line = String::from_utf8_lossy(&line[..line.len() - 1]).into_owned();
                apply(&line, groups, worker);
            }
        }
        true
    }
}

/// Whether standard input can be read (or has ended) within `wait_ms`
/// (-1: no limit); false on a timeout or an interruption.
fn readable(wait_ms: i32) -> bool {
    let mut fds = libc::pollfd {
        fd: 0,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, for the duration of the call.
    unsafe { libc::poll(&mut fds, 1, wait_ms) > 0 }
}

/// A registered command: its process group's entry.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Group {
    /// Its `CKPT_COMMAND` mark.
    mark: Option<u64>,
    /// When it must be told to stop, once ckpt said.
    deadline: Option<Deadline>,
}

/// When a registered command must be told to stop, and be gone.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Deadline {
    term_ms: i64,
    kill_ms: i64,
    termed: bool,
    killed: bool,
}

/// Applies one line of the protocol.
fn apply(line: &str, groups: &mut BTreeMap<i32, Group>, worker: &mut Option<WorkerId>) {
    let (op, arg) = line.split_at(line.len().min(1));
    match op {
        "=" => *worker = WorkerId::parse(arg),
        // `+PGID MARK`: a command started; `-PGID`: it exited.
        "+" | "-" => {
            let mut f = arg.split(' ');
            if let Some(pgid) = f
                .next()
                .and_then(|p| p.parse::<i32>().ok())
                .filter(|&p| p > 1)
            {
                if op == "+" {
                    let mark = f.next().and_then(|m| m.parse::<u64>().ok());
                    groups.insert(
                        pgid,
                        Group {
                            mark,
                            deadline: None,
                        },
                    );
                } else {
                    groups.remove(&pgid);
                }
            }
        }
        "@" => {
            let mut f = arg.split(' ').map(|x| x.parse::<i64>().ok());
            if let (Some(Some(pgid)), Some(Some(term_ms)), Some(Some(kill_ms))) =
                (f.next(), f.next(), f.next())
            {
                if let Some(group) = groups.get_mut(&(pgid as i32)) {
                    group.deadline = Some(Deadline {
                        term_ms,
                        kill_ms,
                        termed: false,
                        killed: false,
                    });
                }
            }
        }
        _ => {}
    }
}

/// The earliest deadline not yet acted on.
fn next_deadline(groups: &BTreeMap<i32, Group>) -> Option<i64> {
    groups
        .values()
        .filter_map(|g| g.deadline.as_ref())
        .filter_map(|d| match (d.termed, d.killed) {
            (false, _) => Some(d.term_ms),
            (true, false) => Some(d.kill_ms),
            _ => None,
        })
        .min()
}

/// Signals the groups whose deadlines passed, and the processes marked as
/// their commands' (`worker`'s, with the command's mark) that left them:
/// their leases can no longer be proven, and ckpt (stopped, or hung) did
/// not stop them itself.
fn enforce(groups: &mut BTreeMap<i32, Group>, worker: Option<&WorkerId>) {
    let now = now_ms();
    for (&pgid, group) in groups.iter_mut() {
        let Some(d) = &mut group.deadline else {
            continue;
        };
        let sig = if !d.killed && now >= d.kill_ms {
            d.termed = true;
            d.killed = true;
            libc::SIGKILL
        } else if !d.termed && now >= d.term_ms {
            d.termed = true;
            libc::SIGTERM
        } else {
            continue;
        };
        // SAFETY: kill(2) has no memory-safety preconditions.
        unsafe {
            libc::kill(-pgid, sig);
        }
        if let (Some(worker), Some(mark)) = (worker, group.mark) {
            signal_marked_command(worker, mark, sig);
        }
    }
}

/// How long ago a deadline `deadline` returned has passed, as the sentinel
/// sees it (the same clock, which goes on while the machine sleeps, unlike
/// `Instant`); `None` if it has not.
pub fn past(term_ms: i64) -> Option<std::time::Duration> {
    let late = now_ms() - term_ms;
    (late >= 0).then(|| std::time::Duration::from_millis(late as u64))
}

/// The sentinel's process name (`comm`, 15 bytes at most).
const SENTINEL_NAME: &std::ffi::CStr = c"ckpt-sentinel";

/// Now on `CLOCK_BOOTTIME`, in ms.
fn now_ms() -> i64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec to fill.
    unsafe {
        libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts);
    }
    ts.tv_sec * 1000 + ts.tv_nsec / 1_000_000
}

/// `at` on `CLOCK_BOOTTIME`, in ms.
fn boottime_ms(at: Instant) -> i64 {
    let now = Instant::now();
    let base = now_ms();
    if at >= now {
        base + at.duration_since(now).as_millis() as i64
    } else {
        base - now.duration_since(at).as_millis() as i64
    }
}

/// SIGTERM, then SIGKILL, to `groups` (and to the processes marked with
/// `worker`); returns how many groups are still alive in the end.
fn stop(groups: &BTreeSet<i32>, worker: Option<&WorkerId>) -> usize {
    let signal = |groups: &BTreeSet<i32>, sig: i32| {
        for &pgid in groups {
            // SAFETY: kill(2) has no memory-safety preconditions.
            unsafe {
                libc::kill(-pgid, sig);
            }
        }
        if let Some(worker) = worker {
            signal_marked(worker, sig);
        }
    };
    signal(groups, libc::SIGTERM);
    let alive = wait_empty(groups.clone(), Instant::now() + KILL_AFTER);
    if alive.is_empty() {
        return 0;
    }
    signal(&alive, libc::SIGKILL);
    wait_empty(alive, Instant::now() + GIVE_UP_AFTER).len()
}

/// Polls until every group in `groups` is empty, or `until`; returns the
/// groups still alive.
fn wait_empty(mut groups: BTreeSet<i32>, until: Instant) -> BTreeSet<i32> {
    loop {
        groups.retain(|&pgid| group_alive(pgid));
        if groups.is_empty() || Instant::now() >= until {
            return groups;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// True if a process of group `pgid` may still run code. `kill(-pgid, 0)`
/// also finds zombies (exited, never reaped: an init that does not reap
/// orphans keeps them forever), so `/proc` is asked which members are
/// zombies; when it cannot tell, the group counts as alive.
fn group_alive(pgid: i32) -> bool {
    // SAFETY: kill(2) with signal 0 only checks that the group exists.
    if unsafe { libc::kill(-pgid, 0) } != 0
        && io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
    {
        return false;
    }
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return true;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if !name
            .to_str()
            .is_some_and(|s| s.bytes().all(|b| b.is_ascii_digit()))
        {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // After comm: state, ppid, pgrp.
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        let state = fields.next();
        let group = fields.nth(1).and_then(|g| g.parse::<i32>().ok());
        if group == Some(pgid) && !matches!(state, Some("Z" | "X" | "x")) {
            return true;
        }
    }
    false
}

#[cfg(test)]
mod deadline_tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    #[test]
    fn deadlines_apply_only_to_registered_groups_and_reset_when_renewed() {
        let mut groups = BTreeMap::new();
        let mut worker = None;
        apply("@77 10 20", &mut groups, &mut worker);
        assert!(
            groups.is_empty(),
            "a deadline for an unknown group is ignored"
        );
        apply("+77", &mut groups, &mut worker);
        apply("@77 10 20", &mut groups, &mut worker);
        assert_eq!(next_deadline(&groups), Some(10));
        groups
            .get_mut(&77)
            .unwrap()
            .deadline
            .as_mut()
            .unwrap()
            .termed = true;
        assert_eq!(next_deadline(&groups), Some(20), "after TERM, KILL is next");
        apply("@77 30 40", &mut groups, &mut worker);
        assert_eq!(next_deadline(&groups), Some(30), "a renewal starts over");
        apply("@77 x 40", &mut groups, &mut worker);
        assert_eq!(
            next_deadline(&groups),
            Some(30),
            "a bad line changes nothing"
        );
        apply("-77", &mut groups, &mut worker);
        assert_eq!(next_deadline(&groups), None);
        apply("+1", &mut groups, &mut worker);
        assert!(groups.is_empty(), "never pid 1's group");
    }

    #[test]
    fn a_passed_deadline_kills_the_group() {
        let mut child = Command::new("sleep")
            .arg("30")
            .process_group(0)
            .spawn()
            .unwrap();
        let pgid = child.id() as i32;
        let mut groups = BTreeMap::new();
        let mut worker = None;
        apply(&format!("+{pgid}"), &mut groups, &mut worker);
        let later = now_ms() + 60_000;
        apply(
            &format!("@{pgid} {later} {later}"),
            &mut groups,
            &mut worker,
        );
        enforce(&mut groups, None);
        assert!(
            child.try_wait().unwrap().is_none(),
            "not before its deadline"
        );
        let past = now_ms() - 1;
        apply(&format!("@{pgid} {past} {later}"), &mut groups, &mut worker);
        enforce(&mut groups, None);
        let status = child.wait().unwrap();
        assert_eq!(status.signal(), Some(libc::SIGTERM));
    }

    #[test]
    fn a_passed_deadline_also_stops_what_left_the_group_with_the_commands_mark() {
        use ckpt::worker::{COMMAND_ENV, WORKER_ENV};
        let id = format!("host:{}:1:marktest", std::process::id());
        let worker = WorkerId::parse(&id).unwrap();
        let spawn = |mark: &str| {
            Command::new("sleep")
                .arg("30")
                .env(WORKER_ENV, &id)
                .env(COMMAND_ENV, mark)
                .process_group(0)
                .spawn()
                .unwrap()
        };
        // The command (its group registered), a descendant of it in a group
        // of its own, and another command's descendant (mark 21, not 2).
        let (mut command, mut left, mut other) = (spawn("2"), spawn("2"), spawn("21"));
        let pgid = command.id() as i32;
        let mut groups = BTreeMap::new();
        let mut none = None;
        apply(&format!("+{pgid} 2"), &mut groups, &mut none);
        let (past, later) = (now_ms() - 1, now_ms() + 60_000);
        apply(&format!("@{pgid} {past} {later}"), &mut groups, &mut none);
        enforce(&mut groups, Some(&worker));
        assert_eq!(command.wait().unwrap().signal(), Some(libc::SIGTERM));
        assert_eq!(left.wait().unwrap().signal(), Some(libc::SIGTERM));
        std::thread::sleep(Duration::from_millis(100));
        assert!(
            other.try_wait().unwrap().is_none(),
            "another command's process is left alone"
        );
        other.kill().unwrap();
        other.wait().unwrap();
    }

    #[test]
    fn boottime_follows_instants() {
        let now = Instant::now();
        let a = boottime_ms(now);
        let b = boottime_ms(now + Duration::from_secs(2));
        assert!((1900..=2100).contains(&(b - a)), "{}", b - a);
        assert!((a - now_ms()).abs() < 500);
    }
}
