//! Graceful shutdown: a [`StopSignal`] that tells a [`Runner`](crate::Runner)
//! to stop, and [`Signals`], which turns SIGTERM, SIGINT and SIGHUP into a
//! stop request instead of an abrupt death.
//!
//! A process that is told to stop (a Kubernetes eviction, a deploy,
//! `systemctl stop`, Ctrl-C) gets SIGTERM or SIGINT, and usually some
//! seconds before a SIGKILL; one whose terminal goes away (a dropped ssh
//! session) gets SIGHUP. Used well, those seconds save the progress made
//! since the last checkpoint:
//!
//! ```no_run
//! use ckpt::shutdown::Signals;
//! use ckpt::{CheckpointPolicy, Ckpt, JobOptions};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let stop = Signals::install()?; // SIGTERM, SIGINT (and SIGHUP) now request a stop
//! let ckpt = Ckpt::open("sqlite://ckpt.db")?;
//! let mut job = ckpt.job_with("export", JobOptions::default())?;
//! let mut next: u64 = job.resume_cursor()?.unwrap_or(0);
//! while next < 1_000_000 {
//!     if stop.is_requested() {
//!         // Saves the latest checkpoint now, whatever the policy, and gives
//!         // up the lease so that the next worker resumes at once. (`flush`
//!         // alone saves and keeps the lease until it expires.)
//!         job.release()?;
//!         std::process::exit(stop.exit_code().unwrap_or(1));
//!     }
//!     next += 1; // ... process record `next` ...
//!     job.save(&next, next)?; // persisted when the policy says so
//! }
//! job.complete()?;
//! # Ok(()) }
//! ```
//!
//! For the claim pattern, hand [`Signals::stop_signal`] to
//! [`Runner::with_stop`](crate::Runner::with_stop): the runner then stops
//! claiming, lets running items finish, gives the items it holds back
//! unfinished and returns a report that says it stopped.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

/// Something to wake when a stop is requested (a running [`Runner`](crate::Runner)).
pub(crate) trait Wake: Send + Sync {
    fn wake(&self);
}

#[derive(Default)]
struct StopInner {
    stopped: AtomicBool,
    wakers: Mutex<Vec<Weak<dyn Wake>>>,
}

/// A cloneable "please stop" flag shared between whoever decides to stop (a
/// signal handler thread, a UI, a test) and the [`Runner`](crate::Runner)s
/// that watch it. Once stopped it stays stopped.
///
/// A runner that sees it stops claiming items, lets the items already
/// running finish (their outcomes are recorded as usual), gives the items
/// it claimed but had not started back unfinished (pending again, no attempt
/// counted), commits all of that and returns a report with
/// [`stopped`](crate::RunReport::stopped) set.
#[derive(Clone, Default)]
pub struct StopSignal {
    inner: Arc<StopInner>,
}

impl StopSignal {
    /// A signal not stopped yet.
    pub fn new() -> StopSignal {
        StopSignal::default()
    }

    /// Requests the stop, and wakes the runners watching this signal.
    pub fn stop(&self) {
        self.inner.stopped.store(true, Ordering::SeqCst);
        let wakers: Vec<Arc<dyn Wake>> = self.wakers().iter().filter_map(Weak::upgrade).collect();
        for w in wakers {
            w.wake();
        }
    }

    /// True if and only if a stop was requested.
    pub fn is_stopped(&self) -> bool {
        self.inner.stopped.load(Ordering::SeqCst)
    }

    /// Registers `w` to be woken by [`stop`](StopSignal::stop), for as long
    /// as it lives.
    pub(crate) fn register(&self, w: Weak<dyn Wake>) {
        let mut wakers = self.wakers();
        wakers.retain(|w| w.strong_count() > 0);
        wakers.push(w);
    }

    fn wakers(&self) -> std::sync::MutexGuard<'_, Vec<Weak<dyn Wake>>> {
        self.inner.wakers.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl fmt::Debug for StopSignal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StopSignal")
            .field("stopped", &self.is_stopped())
            .finish()
    }
}

/// SIGTERM.
pub const SIGTERM: i32 = signal_hook::consts::SIGTERM;
/// SIGINT.
pub const SIGINT: i32 = signal_hook::consts::SIGINT;
/// SIGHUP.
pub const SIGHUP: i32 = signal_hook::consts::SIGHUP;

#[derive(Default)]
struct Received {
    /// The first signal received.
    first: Option<i32>,
    /// How many were received in all, as far as a repeat goes: a SIGHUP
    /// counts only alone (see `handle`).
    count: usize,
    /// SIGTERMs and SIGINTs received.
    forcing: usize,
}

struct State {
    /// Set by the signal handler itself, so it is true as soon as the
    /// signal is delivered, before the handling thread runs.
    requested: Arc<AtomicBool>,
    received: Mutex<Received>,
    changed: Condvar,
    stop: StopSignal,
    exit_on_repeat: AtomicBool,
}

static STATE: OnceLock<State> = OnceLock::new();

/// A handle on this process's SIGTERM, SIGINT and SIGHUP, once
/// [`install`](Signals::install)ed: instead of ending the process, the first
/// of them requests a stop ([`is_requested`](Signals::is_requested) becomes
/// true, and [`stop_signal`](Signals::stop_signal) is stopped).
///
/// SIGHUP (the terminal hung up: a closed ssh session) is watched only if
/// its disposition was the default, which ends the process, when
/// [`install`](Signals::install) ran. One ignored (`nohup`, which asks
/// that the process outlive its terminal) stays ignored, and one the
/// program handles itself stays its own.
///
/// A second signal ends the process at once (a SIGHUP is not counted as a
/// second signal: one hangup is often delivered twice, and a terminal
/// closed after a Ctrl-C asks for nothing more), as if no handler were
/// installed (the usual "press Ctrl-C twice"), unless
/// [`exit_on_repeat(false)`](Signals::exit_on_repeat) says that the program
/// handles repeats itself (see [`count`](Signals::count) and
/// [`wait`](Signals::wait)).
///
/// The handlers stay installed for the life of the process: installing
/// again returns a handle on the same state.
#[derive(Clone, Copy)]
pub struct Signals {
    state: &'static State,
}

impl Signals {
    /// Installs the handlers (once per process; later calls return a handle
    /// on the same state). Fails only if the operating system refuses to
    /// install a signal handler.
    pub fn install() -> std::io::Result<Signals> {
        static INSTALL: Mutex<()> = Mutex::new(());
        let _one_at_a_time = INSTALL.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(state) = STATE.get() {
            return Ok(Signals { state });
        }
        let requested = Arc::new(AtomicBool::new(false));
        let mut watched = vec![SIGTERM, SIGINT];
        if left_to_default(SIGHUP) {
            watched.push(SIGHUP);
        }
        for &sig in &watched {
            signal_hook::flag::register(sig, Arc::clone(&requested))?;
        }
        let mut iter = signal_hook::iterator::Signals::new(&watched)?;
        let state = STATE.get_or_init(|| State {
            requested,
            received: Mutex::new(Received::default()),
            changed: Condvar::new(),
            stop: StopSignal::new(),
            exit_on_repeat: AtomicBool::new(true),
        });
        std::thread::Builder::new()
            .name("ckpt-signals".into())
            .spawn(move || {
                for sig in iter.forever() {
                    handle(state, sig);
                }
            })?;
        Ok(Signals { state })
    }

    /// True if and only if SIGTERM, SIGINT or SIGHUP was received.
    pub fn is_requested(&self) -> bool {
        self.state.requested.load(Ordering::SeqCst)
    }

    /// The signal that requested the stop (`SIGTERM`, `SIGINT` or
    /// `SIGHUP`), if any: the first received, except that a SIGTERM or
    /// SIGINT following a first SIGHUP takes its place. Once
    /// [`is_requested`](Signals::is_requested) is true this names the
    /// signal: the handler flags the request at once and the handling
    /// thread records which signal a moment later, so this waits for it.
    pub fn signal(&self) -> Option<i32> {
        let received = self.received();
        if received.first.is_some() || !self.is_requested() {
            return received.first;
        }
        self.state
            .changed
            .wait_timeout_while(received, Duration::from_secs(5), |r| r.first.is_none())
            .map_or_else(|e| e.into_inner().0.first, |(r, _)| r.first)
    }

    /// How many signals were received in all (a SIGHUP after the first
    /// signal is not counted).
    pub fn count(&self) -> usize {
        self.received().count
    }

    /// The conventional exit status of a process stopped by the first
    /// signal: 128 + its number (143 for SIGTERM, 130 for SIGINT, 129 for
    /// SIGHUP).
    pub fn exit_code(&self) -> Option<i32> {
        self.signal().map(|s| 128 + s)
    }

    /// A [`StopSignal`] stopped by the first signal, for a
    /// [`Runner`](crate::Runner).
    pub fn stop_signal(&self) -> StopSignal {
        self.state.stop.clone()
    }

    /// Whether a second signal ends the process at once (the default), or
    /// is only counted.
    pub fn exit_on_repeat(&self, yes: bool) -> &Self {
        self.state.exit_on_repeat.store(yes, Ordering::SeqCst);
        self
    }

    /// Blocks until at least `count` signals were received in all (true),
    /// or `timeout` passed (false); `None` waits without limit.
    pub fn wait(&self, count: usize, timeout: Option<Duration>) -> bool {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut g = self.received();
        while g.count < count {
            match deadline {
                None => {
                    g = self
                        .state
                        .changed
                        .wait(g)
                        .unwrap_or_else(|e| e.into_inner())
                }
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return false;
                    }
                    g = self
                        .state
                        .changed
                        .wait_timeout(g, left)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
            }
        }
        true
    }

    fn received(&self) -> std::sync::MutexGuard<'_, Received> {
        self.state.received()
    }
}

impl State {
    fn received(&self) -> std::sync::MutexGuard<'_, Received> {
        self.received.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl fmt::Debug for Signals {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signals")
            .field("signal", &self.signal())
            .field("count", &self.count())
            .finish()
    }
}

/// True if `sig`'s disposition is the default one (not ignored, not
/// handled).
fn left_to_default(sig: i32) -> bool {
    // SAFETY: with a null new action, sigaction(2) only reads the current
    // one into `old`, a plain C struct for which all zeroes is valid.
    let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::sigaction(sig, std::ptr::null(), &mut old) };
    rc == 0 && old.sa_sigaction == libc::SIG_DFL
}

/// Runs on the handling thread for each signal received.
fn handle(state: &'static State, sig: i32) {
    // The signal is recorded before the stop can be seen, so whoever sees
    // the stop (a runner returning, then its caller asking for the exit
    // code) finds which signal it was.
    let first = {
        let mut g = state.received();
        // A hangup after the first signal is not a second one: it may be
        // the same hangup again (the kernel sends it to the terminal's
        // foreground group, the shell to its jobs), or the terminal closed
        // after a Ctrl-C; neither asks to kill the commands now.
        if sig == SIGHUP && g.first.is_some() {
            return;
        }
        if sig != SIGHUP {
            g.forcing += 1;
        }
        let first = g.first.is_none();
        // Nor is a hangup the first of two: the first SIGTERM or SIGINT
        // after it is the stop's reason, not a repeat. (Signals pending
        // together are handed over lowest number first, so systemd's
        // SIGTERM-then-SIGHUP arrives here as SIGHUP, SIGTERM.)
        if first || (g.first == Some(SIGHUP) && g.forcing == 1) {
            g.first = Some(sig);
        }
        first
    };
    if first {
        // Before the count moves: whoever sees a signal counted knows the
        // stop signal is already stopped.
        state.stop.stop();
    }
    let repeat = {
        let mut g = state.received();
        let was = g.count;
        g.count = g.forcing.max(1);
        g.count > was && !first
    };
    state.changed.notify_all();
    if first {
        tracing::debug!(event = "shutdown_requested", signal = %signal_name(sig));
    } else if repeat && state.exit_on_repeat.load(Ordering::SeqCst) {
        // What the signal would have done without a handler: end the process.
        let _ = signal_hook::low_level::emulate_default_handler(sig);
        std::process::exit(128 + sig);
    }
}

/// "SIGTERM", "SIGINT" or the number.
pub fn signal_name(sig: i32) -> String {
    signal_hook::low_level::signal_name(sig)
        .map(str::to_string)
        .unwrap_or_else(|| format!("signal {sig}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Counter(Mutex<u32>);

    impl Wake for Counter {
        fn wake(&self) {
            *self.0.lock().unwrap() += 1;
        }
    }

    /// `handle` on a state of its own, signal by signal: (the signal that
    /// stopped, the count a repeat is judged by).
    fn after(signals: &[i32]) -> (Option<i32>, usize) {
        let state: &'static State = Box::leak(Box::new(State {
            requested: Arc::new(AtomicBool::new(false)),
            received: Mutex::new(Received::default()),
            changed: Condvar::new(),
            stop: StopSignal::new(),
            exit_on_repeat: AtomicBool::new(false),
        }));
        for &sig in signals {
            handle(state, sig);
        }
        assert_eq!(state.stop.is_stopped(), !signals.is_empty());
        let g = state.received();
        (g.first, g.count)
    }

    #[test]
    fn a_hangup_is_never_a_repeat() {
        assert_eq!(after(&[SIGTERM]), (Some(SIGTERM), 1));
        assert_eq!(after(&[SIGTERM, SIGTERM]), (Some(SIGTERM), 2));
        assert_eq!(after(&[SIGINT, SIGTERM]), (Some(SIGINT), 2));
        assert_eq!(after(&[SIGHUP]), (Some(SIGHUP), 1));
        // The same hangup twice; a window closed after a Ctrl-C.
        assert_eq!(after(&[SIGHUP, SIGHUP]), (Some(SIGHUP), 1));
        assert_eq!(after(&[SIGINT, SIGHUP]), (Some(SIGINT), 1));
        // systemd's SIGTERM and SIGHUP, handed over lowest number first:
        // SIGTERM is the reason, and nothing repeats.
        assert_eq!(after(&[SIGHUP, SIGTERM]), (Some(SIGTERM), 1));
        assert_eq!(after(&[SIGHUP, SIGTERM, SIGHUP]), (Some(SIGTERM), 1));
        assert_eq!(after(&[SIGHUP, SIGTERM, SIGTERM]), (Some(SIGTERM), 2));
        assert_eq!(after(&[SIGTERM, SIGHUP, SIGINT]), (Some(SIGTERM), 2));
    }

    #[test]
    fn stop_wakes_live_registrations_only() {
        let stop = StopSignal::new();
        let live = Arc::new(Counter(Mutex::new(0)));
        let gone = Arc::new(Counter(Mutex::new(0)));
        let live_dyn: Arc<dyn Wake> = live.clone();
        let gone_dyn: Arc<dyn Wake> = gone.clone();
        stop.register(Arc::downgrade(&live_dyn));
        stop.register(Arc::downgrade(&gone_dyn));
        drop(gone_dyn);
        drop(gone);
        let clone = stop.clone();
        assert!(!clone.is_stopped());
        stop.stop();
        assert!(clone.is_stopped(), "clones share the flag");
        assert_eq!(*live.0.lock().unwrap(), 1);
    }
}
