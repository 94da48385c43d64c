//! Interpreter exit: no thread may be inside a ckpt call without the GIL
//! when finalization starts.
//!
//! Up to Python 3.13, a thread that takes the GIL back once the interpreter
//! is finalizing is ended with `pthread_exit`. Inside a ckpt call that is
//! a forced unwind through Rust frames and PyO3's panic trap, which aborts
//! the process ("FATAL: exception not rethrown"): a `queue.run()` in a
//! daemon thread did so at nearly every exit. (3.14 hangs such threads
//! instead, which is no better.)
//!
//! So every call that lets the GIL go is counted ([`detach`], [`enter`]),
//! and an `atexit` hook, which runs before finalization, stops every
//! `queue.run()` as a first SIGTERM would (nothing new starts, running
//! handlers finish, unstarted items are given back) and waits until no
//! call is in progress. Meanwhile calls still go through (a running
//! handler may save its cursor), but no new run starts; once none is in
//! progress, every later call is refused.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ckpt::StopSignal;
use pyo3::marker::Ungil;
use pyo3::prelude::*;

use crate::shared::fork_generation;

/// Set by the `atexit` hook once no call is in progress: calls are refused
/// from then on.
static EXITING: AtomicBool = AtomicBool::new(false);

struct Calls {
    /// The fork generation the counts are of (see [`fork_generation`]).
    generation: u64,
    /// Calls between [`enter`] and the drop of their [`Call`].
    in_flight: usize,
    /// The stop signals of the runs in progress, by run.
    runs: Vec<(u64, StopSignal)>,
    next_run: u64,
    /// The exit hook is stopping the runs: no new run may start.
    stopping: bool,
}

static CALLS: Mutex<Calls> = Mutex::new(Calls {
    generation: 0,
    in_flight: 0,
    runs: Vec::new(),
    next_run: 0,
    stopping: false,
});
static RETURNED: Condvar = Condvar::new();

/// The counts, of this process: a `fork()` child starts from none, since
/// the calls its parent had in progress were made by threads it does not
/// have (they would never return, and exit would wait for them forever).
/// `fork()` is called with the GIL held, and the lock is only taken with
/// the GIL held, or by the exit hook, so no thread holds it across a fork.
fn calls() -> MutexGuard<'static, Calls> {
    let mut g = CALLS.lock().unwrap_or_else(|e| e.into_inner());
    let generation = fork_generation();
    if g.generation != generation {
        g.generation = generation;
        g.in_flight = 0;
        g.runs.clear();
        g.stopping = false;
    }
    g
}

fn refused() -> ckpt::Error {
    ckpt::Error::Storage(
        "the Python interpreter is exiting: ckpt calls are refused from now on".into(),
    )
}

/// A call that may let the GIL go, counted until dropped (with the GIL
/// held again, so that the exit hook's wait ends only once it is back in
/// Python).
pub struct Call {
    generation: u64,
    run: Option<u64>,
}

/// Counts a call in; refused once the interpreter is exiting.
pub fn enter() -> ckpt::Result<Call> {
    let mut g = calls();
    // Read under the lock the hook sets it under: a call is either refused
    // or counted before the hook's wait can end.
    if EXITING.load(Ordering::SeqCst) {
        return Err(refused());
    }
    g.in_flight += 1;
    Ok(Call {
        generation: g.generation,
        run: None,
    })
}

/// [`enter`] for a run, which the exit hook stops with `stop`; refused
/// while the hook stops the others.
pub fn enter_run(stop: &StopSignal) -> ckpt::Result<Call> {
    let mut call = enter()?;
    let mut g = calls();
    if g.stopping {
        drop(g);
        drop(call);
        return Err(refused());
    }
    let id = g.next_run;
    g.next_run += 1;
    g.runs.push((id, stop.clone()));
    call.run = Some(id);
    Ok(call)
}

impl Drop for Call {
    fn drop(&mut self) {
        let mut g = calls();
        if g.generation == self.generation {
            g.in_flight -= 1;
            if let Some(id) = self.run {
                g.runs.retain(|(run, _)| *run != id);
            }
        }
        drop(g);
        RETURNED.notify_all();
    }
}

/// `py.detach(f)`, counted (see the module's doc), and interruptible
/// (see [`interruptible`]).
pub fn detach<T, F>(py: Python<'_>, f: F) -> ckpt::Result<T>
where
    F: Ungil + Send + FnOnce() -> ckpt::Result<T>,
    T: Send,
{
    let _call = enter()?;
    interruptible(py, f)
}

/// `py.detach(f)`, with Python's signal handlers run while a store call
/// of `f` waits for the server (every 100 ms, see `ckpt::interrupt`): they
/// run only in the main thread, and otherwise would wait until the call
/// returns, up to the response timeout (Ctrl-C doing nothing for a
/// minute). One that raises (Ctrl-C's KeyboardInterrupt) abandons the call;
/// the result is then [`ckpt::Error::Interrupted`], which
/// [`to_py`](crate::errors::to_py) turns back into that exception,
/// whatever the call returned.
pub fn interruptible<T, F>(py: Python<'_>, f: F) -> ckpt::Result<T>
where
    F: Ungil + Send + FnOnce() -> ckpt::Result<T>,
    T: Send,
{
    // Signal handlers run in the main thread only: elsewhere the check
    // could only take the GIL for nothing (and at interpreter exit, a
    // thread that takes it back is ended mid-call).
    if !is_main_thread() {
        return py.detach(f);
    }
    let out = py.detach(|| ckpt::interrupt::with_check(signal_raised, f));
    if crate::errors::signal_raised_meanwhile() {
        return Err(ckpt::Error::Interrupted(
            "a signal handler raised while the store call waited".into(),
        ));
    }
    out
}

/// True on the process's first thread, where CPython runs signal handlers
/// (on Linux its thread id is the process id; elsewhere every thread is
/// taken for it, at the cost of some needless checks).
fn is_main_thread() -> bool {
    #[cfg(target_os = "linux")]
    // SAFETY: neither call has preconditions. (The system call, not glibc's
    // gettid(), which only glibc 2.30 and later have.)
    return unsafe { libc::syscall(libc::SYS_gettid) == libc::c_long::from(libc::getpid()) };
    #[cfg(not(target_os = "linux"))]
    return true;
}

/// The check of `ckpt::interrupt`: runs the pending signal handlers; true
/// if one raised, its exception kept to be raised when the call returns
/// (see `errors::keep_raised`).
fn signal_raised() -> bool {
    if crate::errors::signal_raised_meanwhile() {
        return true;
    }
    Python::attach(|py| match py.check_signals() {
        Ok(()) => false,
        Err(e) => {
            crate::errors::keep_raised(e);
            true
        }
    })
}

/// The `atexit` hook: stops the runs, waits until no call is in progress,
/// then refuses every later call. A signal handler that raises (Ctrl-C)
/// ends the wait.
#[pyfunction]
pub fn _at_exit(py: Python<'_>) -> PyResult<()> {
    {
        let mut g = calls();
        g.stopping = true;
        for (_, stop) in &g.runs {
            stop.stop();
        }
    }
    let started = Instant::now();
    let mut told = false;
    loop {
        let idle = py.detach(|| {
            let g = calls();
            let (g, _) = RETURNED
                .wait_timeout_while(g, Duration::from_millis(50), |c| c.in_flight > 0)
                .unwrap_or_else(|e| e.into_inner());
            if g.in_flight > 0 {
                return false;
            }
            // Still under the lock: no call can come in between the last
            // one's return and the refusal of the next.
            EXITING.store(true, Ordering::SeqCst);
            true
        });
        if idle {
            return Ok(());
        }
        py.check_signals()?;
        if !told && started.elapsed() >= Duration::from_secs(1) {
            told = true;
            let logger = py.import("logging")?.call_method1("getLogger", ("ckpt",))?;
            logger.call_method1(
                "warning",
                (
                    "the interpreter is exiting: waiting for ckpt calls in other threads to \
                  return (a queue.run() lets its running handlers finish and gives the \
                  unstarted items back)",
                ),
            )?;
        }
    }
}
