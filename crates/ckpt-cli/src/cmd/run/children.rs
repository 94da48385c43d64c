//! The commands `ckpt run` has running, and how they are stopped at
//! shutdown.
//!
//! Each command runs in a process group of its own (as GNU parallel's jobs
//! do), which the [`Sentinel`] kills if ckpt dies. ckpt passes SIGINT on to
//! those groups, so a Ctrl-C at the terminal still reaches the commands as
//! well as ckpt, while SIGTERM sent to ckpt (`kill -TERM <pid>`) does not.
//! SIGHUP (a terminal gone) is not passed on either: it stops ckpt as
//! SIGTERM does. After the first of them, ckpt starts nothing new and waits up
//! to `--grace` for the running commands. Then it sends SIGTERM to their
//! process groups (and to their marked descendants), and SIGKILL to
//! whatever is left [`KILL_AFTER`] later (or at once on a second signal).
//! An item whose command was stopped this way is given back unfinished,
//! not failed.

use std::collections::{HashMap, HashSet};
use std::process::{Child, ExitStatus};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ckpt::shutdown::{signal_name, Signals, SIGINT};
use ckpt::worker::{signal_marked, signal_marked_command, WorkerId};

use super::sentinel::Sentinel;

/// How long commands have between the SIGTERM that ends the grace period
/// and the SIGKILL.
pub const KILL_AFTER: Duration = Duration::from_secs(2);

/// How long a command that died of SIGINT, SIGTERM or SIGHUP waits for ckpt's own
/// stop request: a terminal's Ctrl-C reaches both, in either order.
const SIGNAL_RACE: Duration = Duration::from_millis(500);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    /// Commands run undisturbed.
    Running,
    /// The grace period is over: commands got SIGTERM.
    Terminating,
    /// SIGKILL is being sent.
    Killing,
    /// Every command and descendant was sent SIGKILL.
    Killed,
}

struct State {
    /// The running commands; each leads a process group of its own.
    pids: HashSet<u32>,
    phase: Phase,
    /// SIGINT was passed on to the commands (a Ctrl-C).
    interrupted: bool,
    /// The commands are being stopped by `--halt now`, not by a signal.
    halted: bool,
    /// A second signal cut the grace period short.
    forced: bool,
    /// The running commands that ckpt sent a signal to stop them (a lost
    /// lease, a timeout, a halt, a shutdown): their exit status cannot
    /// show that their work was done, since many programs exit 0 on
    /// SIGTERM.
    stopped: HashSet<u32>,
    /// The running commands' deadlines as last sent to the sentinel (see
    /// [`Children::overdue`]).
    deadlines: HashMap<u32, i64>,
    /// The running commands' marks (`CKPT_COMMAND`), by pid.
    marks: HashMap<u32, u64>,
    /// The mark of the next command.
    next_mark: u64,
}

/// The commands running for one worker.
pub struct Children {
    /// Marks the commands and their descendants (`CKPT_WORKER`), on Linux.
    worker: Option<WorkerId>,
    sentinel: Option<Sentinel>,
    state: Mutex<State>,
    changed: Condvar,
}

impl Children {
    pub fn new(worker: &str, sentinel: Option<Sentinel>) -> Arc<Children> {
        if let Some(sentinel) = &sentinel {
            sentinel.worker(worker);
        }
        Arc::new(Children {
            worker: WorkerId::parse(worker),
            sentinel,
            state: Mutex::new(State {
                pids: HashSet::new(),
                phase: Phase::Running,
                interrupted: false,
                halted: false,
                forced: false,
                stopped: HashSet::new(),
                deadlines: HashMap::new(),
                marks: HashMap::new(),
                next_mark: 1,
            }),
            changed: Condvar::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A mark for the next command (`CKPT_COMMAND`, see
    /// [`ckpt::worker::COMMAND_ENV`]): its descendants that leave its
    /// process group still carry it, and are stopped with it.
    pub fn next_mark(&self) -> u64 {
        let mut g = self.lock();
        g.next_mark += 1;
        g.next_mark - 1
    }

    /// Registers a command just started, marked `mark`; one started while
    /// commands are being stopped gets the same signal at once.
    pub fn started(&self, child: &Child, mark: u64) {
        if let Some(sentinel) = &self.sentinel {
            sentinel.started(child.id(), mark);
        }
        let mut g = self.lock();
        g.pids.insert(child.id());
        g.marks.insert(child.id(), mark);
        if g.interrupted || g.phase > Phase::Running {
            g.stopped.insert(child.id());
        }
        if g.interrupted {
            signal_group(child.id(), SIGINT);
        }
        match g.phase {
            Phase::Running => {}
            Phase::Terminating => signal_group(child.id(), libc::SIGTERM),
            Phase::Killing | Phase::Killed => signal_group(child.id(), libc::SIGKILL),
        }
    }

    /// Stops one command whose lease was lost or whose time is up: SIGTERM
    /// to its process group and its marked descendants, then SIGKILL
    /// `grace` later if it has not been reaped by then (what it leaves
    /// running outside its group is killed when it is, see
    /// [`Children::kill_marked_command`]). Only a pid still registered is
    /// signalled: a command is unregistered before it is reaped, so a
    /// reused pid is never hit.
    pub fn stop_one(self: &Arc<Self>, pid: u32, grace: Duration) {
        let mark = {
            let mut g = self.lock();
            if !g.pids.contains(&pid) {
                return;
            }
            g.stopped.insert(pid);
            // Under the lock: the command cannot be unregistered (and then
            // reaped) between the check and the signal.
            signal_group(pid, libc::SIGTERM);
            g.marks.get(&pid).copied()
        };
        // Marked processes are found by their environment, not by pid:
        // nothing else carries the mark, so no lock is needed.
        if let Some(mark) = mark {
            self.signal_marked_command(mark, libc::SIGTERM);
        }
        let children = Arc::clone(self);
        let spawned = std::thread::Builder::new()
            .name("ckpt-fence-kill".into())
            .spawn(move || {
                let until = Instant::now() + grace;
                let mut g = children.lock();
                while g.pids.contains(&pid) {
                    let left = until.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        signal_group(pid, libc::SIGKILL);
                        drop(g);
                        if let Some(mark) = mark {
                            children.signal_marked_command(mark, libc::SIGKILL);
                        }
                        return;
                    }
                    g = children
                        .changed
                        .wait_timeout(g, left)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
            });
        if spawned.is_err() {
            // No thread for the grace: kill now rather than never.
            let g = self.lock();
            if g.pids.contains(&pid) {
                signal_group(pid, libc::SIGKILL);
                drop(g);
                if let Some(mark) = mark {
                    self.signal_marked_command(mark, libc::SIGKILL);
                }
            }
        }
    }

    /// Sends SIGKILL to whatever the command marked `mark`, which ended
    /// without completing its item, left running outside its process
    /// group: it must not run on beside the item's retry or another
    /// worker's copy. (A scan of `/proc`, so not done after every command:
    /// a completed item runs no more.)
    pub fn kill_marked_command(&self, mark: u64) {
        self.signal_marked_command(mark, libc::SIGKILL);
    }

    fn signal_marked_command(&self, mark: u64, sig: i32) {
        if let Some(worker) = &self.worker {
            signal_marked_command(worker, mark, sig);
        }
    }

    /// Tells the sentinel the fence deadline of the command `pid` (which
    /// leads its process group), while it is registered.
    pub fn deadline(&self, pid: u32, term: std::time::Instant, kill: std::time::Instant) {
        let mut g = self.lock();
        if let (true, Some(sentinel)) = (g.pids.contains(&pid), &self.sentinel) {
            let term_ms = sentinel.deadline(pid, term, kill);
            // A deadline that has passed stays: the sentinel may have acted
            // on it before it read the later one (after a suspend, say, a
            // renewal can land once the sentinel has already stopped the
            // command).
            let passed = g
                .deadlines
                .get(&pid)
                .is_some_and(|&t| super::sentinel::past(t).is_some());
            if !passed {
                g.deadlines.insert(pid, term_ms);
            }
        }
    }

    /// How long ago the sentinel may have told the command `pid` to stop:
    /// its deadline as last sent, if passed (on the sentinel's clock, so
    /// that a machine that slept past it counts, as the sentinel counts
    /// it). Asked when the command is seen to end: ckpt, stopped or hung
    /// meanwhile, did not hear of that stop.
    pub fn overdue(&self, pid: u32) -> Option<Duration> {
        let term_ms = *self.lock().deadlines.get(&pid)?;
        super::sentinel::past(term_ms)
    }

    /// Sends SIGKILL to what is left of the process group of command `pid`,
    /// which exited and is not reaped yet (nothing, usually: one system
    /// call).
    pub fn kill_leftovers(&self, pid: u32) {
        signal_group(pid, libc::SIGKILL);
    }

    /// Unregisters the command `pid`, which exited; true if ckpt had sent
    /// it a signal to stop it. Called before it is reaped: a registered
    /// pid is then always the command's (a reaped one's may be reused), so
    /// nothing here ever signals another process.
    pub fn exited(&self, pid: u32) -> bool {
        let stopped = {
            let mut g = self.lock();
            g.pids.remove(&pid);
            g.deadlines.remove(&pid);
            g.marks.remove(&pid);
            g.stopped.remove(&pid)
        };
        if let Some(sentinel) = &self.sentinel {
            sentinel.reaped(pid);
        }
        self.changed.notify_all();
        stopped
    }

    /// Decides whether a command that did not complete, ending with
    /// `status`, was interrupted by the shutdown (its item is then given
    /// back) rather than failed; `stopped` if ckpt had sent it a signal to
    /// stop it. Returns the reason, after making sure that nothing the
    /// command started is left running.
    pub fn interrupted(
        &self,
        status: ExitStatus,
        stopped: bool,
        signals: &Signals,
    ) -> Option<String> {
        let (phase, halted, forced) = {
            let g = self.lock();
            (g.phase, g.halted, g.forced)
        };
        if phase > Phase::Running {
            self.wait_killed();
            return Some(if halted {
                "stopped by --halt now".into()
            } else if forced {
                "stopped at shutdown by a second signal".into()
            } else {
                "stopped at shutdown after the grace period".into()
            });
        }
        // Stopped while commands run undisturbed: by the Ctrl-C passed on
        // (a lost lease and a timeout are failures, decided before this).
        if stopped {
            return Some("SIGINT passed on during shutdown".into());
        }
        let by = interrupt_signal(status)?;
        // A Ctrl-C at the terminal: the command and ckpt got it together.
        if signals.is_requested() || signals.wait(1, Some(SIGNAL_RACE)) {
            return Some(format!("{} during shutdown", by));
        }
        None
    }

    /// `--halt now`: on a thread of its own, sends SIGTERM to the running
    /// commands and their descendants (and to those started from now on),
    /// then SIGKILL [`KILL_AFTER`] later, as at the end of a shutdown's
    /// grace period. Their items are given back, as a shutdown's are.
    pub fn halt_now(self: &Arc<Self>, signals: Signals) {
        {
            let mut g = self.lock();
            if g.halted || g.phase > Phase::Running {
                return;
            }
            g.halted = true;
        }
        self.terminate();
        let children = Arc::clone(self);
        let kill = move || {
            children.wait_exited(Instant::now() + KILL_AFTER, &signals);
            children.kill();
        };
        if let Err(e) = std::thread::Builder::new()
            .name("ckpt-halt".into())
            .spawn(kill)
        {
            tracing::warn!(error = %e, "cannot start the halt thread; the running commands get SIGKILL now");
            self.kill();
        }
    }

    /// Passes SIGINT on to the running commands' process groups (and to
    /// those started from now on): with a group of their own, a Ctrl-C at
    /// the terminal reaches ckpt alone.
    fn interrupt(&self) {
        let mut g = self.lock();
        g.interrupted = true;
        let pids = g.pids.clone();
        g.stopped.extend(&pids);
        // Under the lock, as every signal to a registered command: none is
        // unregistered (and reaped) meanwhile.
        for pid in pids {
            signal_group(pid, SIGINT);
        }
    }

    /// Sends SIGTERM to the running commands and their descendants.
    fn terminate(&self) {
        {
            let mut g = self.lock();
            g.phase = g.phase.max(Phase::Terminating);
            signal_registered(&mut g, libc::SIGTERM);
        }
        self.signal_marked(libc::SIGTERM);
    }

    /// Sends SIGKILL to the running commands and their descendants, and
    /// wakes the items waiting for that.
    fn kill(&self) {
        {
            let mut g = self.lock();
            g.phase = g.phase.max(Phase::Killing);
            signal_registered(&mut g, libc::SIGKILL);
        }
        self.signal_marked(libc::SIGKILL);
        self.lock().phase = Phase::Killed;
        self.changed.notify_all();
    }

    /// Signals the descendants marked with this worker's id (those that
    /// left their command's process group).
    fn signal_marked(&self, sig: i32) {
        if let Some(worker) = &self.worker {
            signal_marked(worker, sig);
        }
    }

    /// Waits until no command is running, or `until`; true if none is.
    fn wait_exited(&self, until: Instant, signals: &Signals) -> bool {
        let mut g = self.lock();
        loop {
            if g.pids.is_empty() {
                return true;
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() || signals.count() >= 2 {
                return false;
            }
            // Short waits: a second signal is noticed within them.
            let step = left.min(Duration::from_millis(50));
            g = self
                .changed
                .wait_timeout(g, step)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Waits until the SIGKILL sweep is done.
    fn wait_killed(&self) {
        let mut g = self.lock();
        while g.phase != Phase::Killed {
            g = self.changed.wait(g).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// Marks every registered command stopped and signals its process group,
/// under the lock (`g`): none is unregistered (and reaped) meanwhile.
fn signal_registered(g: &mut State, sig: i32) {
    for &pid in &g.pids {
        signal_group(pid, sig);
    }
    let pids = g.pids.clone();
    g.stopped.extend(pids);
}

/// Waits up to `grace` for a second signal (true if one came). A SIGINT
/// that follows a first SIGHUP is the stop's reason, not a repeat (see
/// [`Signals::signal`]); it is passed on to the commands as a first SIGINT
/// is, unless `interrupted` says that was done.
fn wait_for_repeat(
    children: &Children,
    signals: &Signals,
    grace: Duration,
    interrupted: &mut bool,
) -> bool {
    // A grace too long for the clock (`--grace 100y`) has no deadline.
    let deadline = Instant::now().checked_add(grace);
    loop {
        let left = deadline.map_or(Duration::MAX, |d| {
            d.saturating_duration_since(Instant::now())
        });
        // Short waits: the SIGINT replacing a SIGHUP does not move the count.
        if signals.wait(2, Some(left.min(Duration::from_millis(50)))) {
            return true;
        }
        if !*interrupted && signals.signal() == Some(SIGINT) {
            *interrupted = true;
            tracing::info!(
                event = "shutdown",
                signal = "SIGINT",
                "SIGINT received after SIGHUP: passing it on to the running commands"
            );
            children.interrupt();
        }
        if left.is_zero() {
            return false;
        }
    }
}

/// Runs on its own thread for the whole run: after the first signal, waits
/// for the grace period (or a second signal), then stops the commands.
pub fn supervise(children: Arc<Children>, signals: Signals, grace: Duration) {
    signals.wait(1, None);
    let mut interrupted = signals.signal() == Some(SIGINT);
    if interrupted {
        children.interrupt();
    }
    let first = signals.signal().map_or_else(String::new, signal_name);
    tracing::info!(
        event = "shutdown",
        signal = %first,
        grace_ms = grace.as_millis() as u64,
        "{first} received: starting no new item; running commands have {} to finish (a second signal kills them now)",
        humantime::format_duration(grace)
    );
    // Signals already acted on; the one after them forces the exit.
    let acted_on;
    if !wait_for_repeat(&children, &signals, grace, &mut interrupted) {
        let running = children.lock().pids.len();
        if running > 0 {
            tracing::warn!(
                event = "grace_expired",
                commands = running,
                "grace period over: sending SIGTERM to {running} running command(s)"
            );
        }
        children.terminate();
        children.wait_exited(Instant::now() + KILL_AFTER, &signals);
        // A signal during that wait meant "kill now", which follows.
        acted_on = signals.count().min(2);
    } else {
        acted_on = 2;
        children.lock().forced = true;
        tracing::warn!(
            event = "shutdown_forced",
            "second signal: killing the running commands now"
        );
    }
    children.kill();
    // The run now commits what finished and gives back the rest, which
    // waits for the store if it is unreachable. One more signal ends ckpt
    // at once; the next run takes over what this one still holds.
    if signals.wait(acted_on + 1, None) {
        tracing::error!(
            event = "exit_forced",
            "another signal: exiting now; items still marked running are taken over by the next run"
        );
        std::process::exit(signals.exit_code().unwrap_or(130));
    }
}

/// SIGINT, SIGTERM or SIGHUP, by which `status` says the command died (or
/// exited 130, 143 or 129, as shells do when they catch one). A command
/// on the terminal that hung up may get its SIGHUP too.
fn interrupt_signal(status: ExitStatus) -> Option<&'static str> {
    use std::os::unix::process::ExitStatusExt;
    match (status.signal(), status.code()) {
        (Some(libc::SIGINT), _) | (_, Some(130)) => Some("SIGINT"),
        (Some(libc::SIGTERM), _) | (_, Some(143)) => Some("SIGTERM"),
        (Some(libc::SIGHUP), _) | (_, Some(129)) => Some("SIGHUP"),
        _ => None,
    }
}

/// Sends `sig` to the process group that `pgid` leads.
fn signal_group(pgid: u32, sig: i32) {
    if let Ok(pgid) = i32::try_from(pgid) {
        if pgid > 1 {
            // SAFETY: kill(2) has no memory-safety preconditions.
            unsafe {
                libc::kill(-pgid, sig);
            }
        }
    }
}
