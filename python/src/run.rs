//! `Queue.run`: the library's `Runner` with a Python callable as handler.
//!
//! The runner runs on a thread of its own; its workers take the GIL only to
//! call the handler, so handlers that wait on I/O overlap. The calling
//! thread waits without the GIL and wakes every 50 ms to let Python run its
//! signal handlers: while the run lasts (and only when called from the main
//! thread, where Python delivers signals), SIGTERM, SIGINT and SIGHUP are
//! handled as the `ckpt` CLI handles them. The first stops the run
//! gracefully: nothing new is claimed, running handlers finish, items
//! claimed but not started are given back. A second ends the process at
//! once, as if no handler were installed (a SIGHUP is never the second:
//! one hangup often arrives twice, and a terminal closed after a Ctrl-C
//! asks for nothing more). SIGHUP is handled only if its handler
//! was the default: one ignored (`nohup`) or the program's own is left
//! alone. The previous handlers are restored when the run returns.

use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use ckpt::{ClaimedItem, Outcome, RunOptions, Runner, StopSignal};
use pyo3::exceptions::{PyException, PyTypeError};
use pyo3::prelude::*;
use pyo3::types::{PyCFunction, PyDict, PyTuple};

use crate::errors::{IntoPy, InvalidInputError, StoreError};
use crate::item::{stats_json, Item};
use crate::shared::Shared;

/// Why an `async def` handler is refused: its call only makes a coroutine,
/// so completing the item would record work that never ran.
const ASYNC_HANDLER: &str = "the handler is a coroutine function (async def): ckpt calls \
     handlers on worker threads and does not await them; make it a plain function (it may \
     call asyncio.run)";

/// Why a generator handler is refused: its call only makes a generator, so
/// completing the item would record work that never ran.
const GENERATOR_HANDLER: &str = "the handler is a generator function (it has yield): calling \
     it only makes a generator, and none of its work runs; make it a plain function (it may \
     consume its generator: list(gen(item)))";

/// A job: its store's identity (the same for two handles on the same
/// data) and its name.
type JobId = (String, String);

thread_local! {
    /// The jobs whose handlers this thread is running inside of, directly
    /// or through the runs those handlers started (A's handler runs B,
    /// whose handler runs A): a `run` of one of them would wait for ever
    /// for the item the outer handler holds.
    /// One list per handler call in progress on this thread, shared with
    /// its run (a pointer pushed per call, nothing copied).
    static IN_HANDLER: std::cell::RefCell<Vec<Arc<[JobId]>>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// The jobs this thread runs inside the handlers of.
fn jobs_inside() -> Vec<JobId> {
    IN_HANDLER.with(|h| h.borrow().iter().flat_map(|l| l.iter().cloned()).collect())
}

/// Marks this thread as running inside the handlers of `jobs` until
/// dropped (a worker thread of a run started by a handler inherits its
/// caller's jobs).
struct InHandler;

impl InHandler {
    fn enter(jobs: &Arc<[JobId]>) -> InHandler {
        IN_HANDLER.with(|h| h.borrow_mut().push(Arc::clone(jobs)));
        InHandler
    }
}

impl Drop for InHandler {
    fn drop(&mut self) {
        IN_HANDLER.with(|h| h.borrow_mut().pop());
    }
}

/// How often the waiting caller lets Python handle signals.
const SIGNAL_POLL: Duration = Duration::from_millis(50);

pub fn run(
    shared: &Arc<Shared>,
    queue: &Arc<ckpt::Queue>,
    py: Python<'_>,
    handler: Py<PyAny>,
    workers: usize,
    prefetch: Option<usize>,
) -> PyResult<RunReport> {
    if !(1..=1024).contains(&workers) {
        return Err(InvalidInputError::new_err(format!(
            "workers must be between 1 and 1024, not {workers}"
        )));
    }
    if !handler.bind(py).is_callable() {
        return Err(PyTypeError::new_err(
            "the handler must be callable: handler(item)",
        ));
    }
    let is_async = py
        .import("inspect")?
        .call_method1("iscoroutinefunction", (handler.bind(py),))?
        .is_truthy()?;
    if is_async {
        return Err(PyTypeError::new_err(ASYNC_HANDLER));
    }
    let this_job: JobId = (queue.ckpt().store().identity(), queue.job().to_string());
    // What the handlers run inside of: this job, and whatever the caller
    // (a handler itself, maybe) runs inside of.
    let mut inside = jobs_inside();
    if inside.contains(&this_job) {
        return Err(InvalidInputError::new_err(format!(
            "run() of job '{}' called from one of its own handlers: it would wait for ever for the item that handler holds; enqueue the new items and return (the run takes them), or run them as another job",
            queue.job()
        )));
    }
    inside.push(this_job);
    let inside: Arc<[JobId]> = inside.into();
    let is_generator = ["isgeneratorfunction", "isasyncgenfunction"]
        .iter()
        .map(|f| {
            py.import("inspect")?
                .call_method1(*f, (handler.bind(py),))?
                .is_truthy()
        })
        .collect::<PyResult<Vec<bool>>>()?
        .contains(&true);
    if is_generator {
        return Err(PyTypeError::new_err(GENERATOR_HANDLER));
    }
    let options = RunOptions {
        workers,
        // As `ckpt run` does.
        prefetch: prefetch.unwrap_or((workers * 2).max(8)),
        ..RunOptions::default()
    };
    let stop = StopSignal::new();
    // Counted until the run is back in Python; stopped at interpreter exit.
    let _call = crate::exit::enter_run(&stop).py()?;
    let signals = Signals::install(py, &stop)?;
    let live = Arc::new(thread_state::Live::default());
    let escaped: Arc<std::sync::Mutex<Option<PyErr>>> = Default::default();
    // Set when the store's closing stopped the run (not a close after it).
    let stopped_by_close = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let handler = PyHandler {
        inside,
        stopped_by_close: stopped_by_close.clone(),
        handler,
        live: live.clone(),
        warned: Default::default(),
        shared: shared.clone(),
        queue: queue.clone(),
        stop: stop.clone(),
        escaped: escaped.clone(),
    };
    let queue = queue.clone();
    let runner_stop = stop.clone();
    let (done, result) = mpsc::channel();
    // Waited on without the GIL, so it must be shareable.
    let result = std::sync::Mutex::new(result);
    let thread = std::thread::Builder::new()
        .name("ckpt-run".into())
        .spawn(move || {
            let runner = Runner::new(&queue, options).with_stop(runner_stop);
            let _ = done.send(runner.run(&handler));
        })
        .map_err(|e| StoreError::new_err(format!("cannot start the run's thread: {e}")))?;
    // Polls Python's signal handlers (ours among them) while it waits. A
    // handler that raises (the program's own, for another signal) stops the
    // run, which then ends as a stop would before the error is raised; the
    // polling goes on meanwhile, so a second SIGTERM still ends the process.
    let mut raised: Option<PyErr> = None;
    let outcome =
        loop {
            match py.detach(|| lock(&result).recv_timeout(SIGNAL_POLL)) {
                Ok(report) => break Ok(report),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    // Closed under the run: it claims nothing more.
                    if shared.is_closed() {
                        stopped_by_close.store(true, Ordering::Relaxed);
                        stop.stop();
                    }
                    if let Err(e) = py.check_signals() {
                        stop.stop();
                        raised.get_or_insert(e);
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break Err(StoreError::new_err(
                    "the run ended without a report (its thread panicked); see the output above",
                )),
            }
        };
    // A signal that came in the last poll is ours to handle, not the handler
    // restored below's (it would raise KeyboardInterrupt after a clean run).
    if let Err(e) = py.check_signals() {
        raised.get_or_insert(e);
    }
    // The runner's worker threads give their Python thread states back as
    // they exit, which may be after the run returned (see `thread_state`):
    // wait for that, without the GIL they need, before going back to Python.
    py.detach(|| {
        let _ = thread.join();
        live.wait_until_none();
    });
    // A handler's SystemExit or KeyboardInterrupt goes on up, once the run
    // has stopped and given its items back.
    if let Some(e) = lock(&escaped).take() {
        raised.get_or_insert(e);
    }
    if let Some(e) = raised {
        drop(signals);
        return Err(e);
    }
    let signal = signals.as_ref().and_then(Signals::first);
    drop(signals);
    let report = outcome?.py()?;
    if stopped_by_close.load(Ordering::Relaxed) {
        return Err(StoreError::new_err(format!(
            "store {} was closed during the run: it stopped, {} item(s) completed, {} given back unfinished (no attempt counted)",
            shared.describe(),
            report.completed,
            report.released
        )));
    }
    Ok(RunReport {
        completed: report.completed,
        failed: report.failed,
        dead: report.dead,
        released: report.released,
        lost: report.lost,
        stopped: report.stopped,
        signal,
    })
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A Python callable as the runner's handler.
struct PyHandler {
    handler: Py<PyAny>,
    /// The Python thread states its worker threads keep.
    live: Arc<thread_state::Live>,
    /// Whether a return value was dropped yet (see `completed`).
    warned: std::sync::atomic::AtomicBool,
    shared: Arc<Shared>,
    queue: Arc<ckpt::Queue>,
    /// Stops the run when a handler raises what is not an `Exception`.
    stop: StopSignal,
    /// The first such exception, raised again once the run has stopped.
    escaped: Arc<std::sync::Mutex<Option<PyErr>>>,
    /// Set when this handler stopped the run because the store closed.
    stopped_by_close: Arc<std::sync::atomic::AtomicBool>,
    /// The jobs its calls run inside of (see `IN_HANDLER`).
    inside: Arc<[JobId]>,
}

impl ckpt::Handler for PyHandler {
    fn handle(&self, item: &ClaimedItem) -> Outcome {
        thread_state::keep(&self.live);
        // The store was closed under the run (`store.close()` in another
        // thread, or its `with` left): not the item's failure. It is given
        // back uncharged, and the run stops.
        let closed = || {
            self.stopped_by_close.store(true, Ordering::Relaxed);
            self.stop.stop();
            Outcome::Interrupted("the store was closed during the run".into())
        };
        if self.shared.is_closed() {
            return closed();
        }
        let _in_handler = InHandler::enter(&self.inside);
        Python::attach(|py| {
            let arg = Item::new(self.shared.clone(), self.queue.clone(), item.clone());
            let result = Py::new(py, arg).and_then(|arg| self.handler.call1(py, (arg,)));
            match result {
                Ok(value) => self.completed(item, value.bind(py)),
                // SystemExit, KeyboardInterrupt, GeneratorExit: not the
                // item's failure but a request to stop. The item is given
                // back uncharged, the run stops as on a signal, and run()
                // raises it again.
                Err(e) if !e.is_instance_of::<PyException>(py) => {
                    let why = describe(py, &e);
                    lock(&self.escaped).get_or_insert(e);
                    self.stop.stop();
                    Outcome::Interrupted(format!("the handler raised {why}"))
                }
                Err(_) if self.shared.is_closed() => closed(),
                Err(e) => {
                    let error = describe(py, &e);
                    log_failure(py, item, &e);
                    Outcome::Failed(error)
                }
            }
        })
    }
}

impl PyHandler {
    /// Whether `value` is a generator (sync or async) of the handler's own
    /// code: its `__code__`, or its `__call__`'s.
    fn is_own_generator(&self, value: &Bound<'_, PyAny>) -> bool {
        let Ok(code) = value
            .getattr("gi_code")
            .or_else(|_| value.getattr("ag_code"))
        else {
            return false;
        };
        let handler = self.handler.bind(value.py());
        let own = handler.getattr("__code__").or_else(|_| {
            handler
                .getattr("__call__")
                .and_then(|call| call.getattr("__code__"))
        });
        own.is_ok_and(|own| own.is(&code))
    }

    /// What a handler's return value means: it returned, so the item's
    /// work is done and it completes. A dict of JSON values is kept as its
    /// stats; anything else (a value returned by habit, stats that are not
    /// JSON) is dropped with a warning, once per run: failing the item
    /// instead would run work that was done again.
    fn completed(&self, item: &ClaimedItem, value: &Bound<'_, PyAny>) -> Outcome {
        // An awaitable (a callable object whose `__call__` is async): the
        // work has not run. The item is given back uncharged and the run
        // stops, raising TypeError, as for an `async def` handler.
        // (None, what most handlers return, is let through at once.)
        if !value.is_none() && value.hasattr("__await__").unwrap_or(false) {
            if value.hasattr("close").unwrap_or(false) {
                // Else Python warns that the coroutine was never awaited.
                let _ = value.call_method0("close");
            }
            lock(&self.escaped).get_or_insert(PyTypeError::new_err(ASYNC_HANDLER));
            self.stop.stop();
            return Outcome::Interrupted("the handler returned an awaitable, not a result".into());
        }
        // The handler's own generator (a callable object whose `__call__`
        // yields): likewise, none of its work has run. (A generator made
        // by work that did run, `(r.id for r in rows)`, is a return value
        // like any other.)
        if !value.is_none() && self.is_own_generator(value) {
            // An async generator has no `close` (its `aclose` must be awaited).
            let _ = value.call_method0("close");
            lock(&self.escaped).get_or_insert(PyTypeError::new_err(GENERATOR_HANDLER));
            self.stop.stop();
            return Outcome::Interrupted("the handler returned a generator, not a result".into());
        }
        match stats_json(Some(value)) {
            Ok(stats) => Outcome::Completed(stats),
            Err(e) => {
                if !self.warned.swap(true, Ordering::Relaxed) {
                    let why = describe(value.py(), &e);
                    let _ = warn(
                        value.py(),
                        &format!(
                            "job '{}': item '{}' completed, but the handler's return value \
                             was not kept as its stats ({why}); return None or a dict of JSON \
                             values (said once per run)",
                            item.job, item.key
                        ),
                    );
                }
                Outcome::Completed(None)
            }
        }
    }
}

/// A warning on the `ckpt` logger.
fn warn(py: Python<'_>, message: &str) -> PyResult<()> {
    py.import("logging")?
        .call_method1("getLogger", ("ckpt",))?
        .call_method1("warning", ("%s", message))?;
    Ok(())
}

/// `Type: message`, as the item's error.
fn describe(py: Python<'_>, e: &PyErr) -> String {
    let kind = e
        .get_type(py)
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "Exception".into());
    // A lone surrogate becomes one U+FFFD, as in `fail()`.
    let message = e
        .value(py)
        .str()
        .and_then(|s| crate::json::message(&s))
        .unwrap_or_else(|_| e.value(py).to_string());
    if message.is_empty() {
        kind
    } else {
        format!("{kind}: {message}")
    }
}

/// Logs a handler's exception with its traceback on the `ckpt` logger
/// (Python's last-resort handler prints warnings to stderr when logging is
/// not configured), so the operator sees more than the one line stored.
fn log_failure(py: Python<'_>, item: &ClaimedItem, e: &PyErr) {
    let logged = (|| -> PyResult<()> {
        let logger = py.import("logging")?.call_method1("getLogger", ("ckpt",))?;
        let kwargs = PyDict::new(py);
        kwargs.set_item("exc_info", e.clone_ref(py).into_value(py))?;
        logger.call_method(
            "warning",
            (
                "item %r of job %r failed on attempt %d",
                &item.key,
                &item.job,
                item.attempt,
            ),
            Some(&kwargs),
        )?;
        Ok(())
    })();
    if let Err(log_error) = logged {
        log_error.print(py);
    }
}

/// What ``Queue.run`` did.
#[pyclass(module = "ckpt", frozen, get_all)]
pub struct RunReport {
    /// Items this run completed.
    completed: u64,
    /// Failed attempts it recorded (retried or dead).
    failed: u64,
    /// Items it moved to the dead-letter list.
    dead: u64,
    /// Items it gave back unfinished when it stopped.
    released: u64,
    /// Outcomes refused because the lease had been lost to another worker.
    lost: u64,
    /// True when the run was stopped (a signal) rather than finding no item left.
    stopped: bool,
    /// The signal that stopped it (15 for SIGTERM, 2 for SIGINT, 1 for SIGHUP), if any.
    signal: Option<i32>,
}

#[pymethods]
impl RunReport {
    fn __repr__(&self) -> String {
        format!(
            "<ckpt.RunReport completed={} failed={} dead={} released={} lost={} stopped={}>",
            self.completed,
            self.failed,
            self.dead,
            self.released,
            self.lost,
            if self.stopped { "True" } else { "False" }
        )
    }
}

/// SIGTERM, SIGINT and SIGHUP handled by a run, and the handlers they
/// replaced.
struct Signals {
    state: Arc<SignalState>,
    previous: Vec<(i32, Py<PyAny>)>,
}

#[derive(Default)]
struct SignalState {
    received: AtomicUsize,
    first: AtomicI32,
    /// SIGTERMs and SIGINTs received.
    forcing: AtomicUsize,
}

impl Signals {
    /// Installs the run's handlers, when called from the main thread (the
    /// only one Python lets set them); `None` elsewhere.
    fn install(py: Python<'_>, stop: &StopSignal) -> PyResult<Option<Signals>> {
        let threading = py.import("threading")?;
        let current = threading.call_method0("current_thread")?;
        if !current.is(&threading.call_method0("main_thread")?) {
            return Ok(None);
        }
        let state = Arc::new(SignalState::default());
        let (seen, stop) = (state.clone(), stop.clone());
        let on_signal =
            move |args: &Bound<'_, PyTuple>, _kwargs: Option<&Bound<'_, PyDict>>| -> PyResult<()> {
                let signum: i32 = args.get_item(0)?.extract()?;
                let hangup = signum == libc::SIGHUP;
                let first = seen.received.load(Ordering::SeqCst) == 0;
                // A hangup is never the second signal: the kernel and the
                // shell often both send it, and a terminal closed after a
                // Ctrl-C asks for nothing more.
                if hangup && !first {
                    return Ok(());
                }
                let forcing = if hangup {
                    0
                } else {
                    seen.forcing.fetch_add(1, Ordering::SeqCst) + 1
                };
                // Nor is it the first of two: the first SIGTERM or SIGINT
                // after it is the stop's reason (Python runs the handlers of
                // signals pending together lowest number first, so
                // systemd's SIGTERM-then-SIGHUP comes as SIGHUP, SIGTERM).
                if !first && forcing == 1 && seen.first.load(Ordering::SeqCst) == libc::SIGHUP {
                    seen.first.store(signum, Ordering::SeqCst);
                    return Ok(());
                }
                if seen.received.fetch_add(1, Ordering::SeqCst) == 0 {
                    seen.first.store(signum, Ordering::SeqCst);
                    stop.stop();
                    let py = args.py();
                    let logger = py.import("logging")?.call_method1("getLogger", ("ckpt",))?;
                    // A SIGHUP again is ignored (see above): say what ends it.
                    let again = if signum == libc::SIGHUP {
                        "send SIGTERM or SIGINT twice to end at once"
                    } else {
                        "send it again to end at once"
                    };
                    logger.call_method1(
                        "warning",
                        (
                            "signal %d: stopping (running items finish, unstarted ones are given \
                         back); %s",
                            signum,
                            again,
                        ),
                    )?;
                } else {
                    // SAFETY: restores the default action and re-raises it on
                    // this process: it ends, as if no handler were installed.
                    unsafe {
                        libc::signal(signum, libc::SIG_DFL);
                        libc::raise(signum);
                    }
                }
                Ok(())
            };
        let handler = PyCFunction::new_closure(py, Some(c"ckpt_stop_run"), None, on_signal)?;
        let signal = py.import("signal")?;
        let mut previous = Vec::new();
        let mut handled = vec![libc::SIGTERM, libc::SIGINT];
        if signal
            .call_method1("getsignal", (libc::SIGHUP,))?
            .eq(signal.getattr("SIG_DFL")?)?
        {
            handled.push(libc::SIGHUP);
        }
        for signum in handled {
            let old = signal.call_method1("signal", (signum, &handler))?;
            previous.push((signum, old.unbind()));
        }
        Ok(Some(Signals { state, previous }))
    }

    /// The first signal received, if any.
    fn first(&self) -> Option<i32> {
        (self.state.received.load(Ordering::SeqCst) > 0)
            .then(|| self.state.first.load(Ordering::SeqCst))
    }
}

impl Drop for Signals {
    fn drop(&mut self) {
        Python::attach(|py| {
            let restored = (|| -> PyResult<()> {
                let signal = py.import("signal")?;
                for (signum, old) in self.previous.drain(..) {
                    // `None` is a handler installed from C, which Python
                    // cannot reinstall: the default action is the closest.
                    let old = if old.is_none(py) {
                        signal.getattr("SIG_DFL")?.unbind()
                    } else {
                        old
                    };
                    signal.call_method1("signal", (signum, old))?;
                }
                Ok(())
            })();
            if let Err(e) = restored {
                e.print(py);
            }
        });
    }
}

/// A Python thread state kept for the life of a runner's worker thread.
///
/// `Python::attach` on a thread Python does not know creates a thread
/// state and destroys it again on the way out: per item, that cost more
/// than everything else a no-op handler does. A worker thread keeps one
/// instead, released (without the GIL) between items, and gives it back
/// when the thread ends, from a thread-local destructor.
///
/// The runner's workers are scoped threads: the scope ends when their
/// closures have returned, and their thread-local destructors run after
/// that, as the threads exit. So `Queue.run` waits, without the GIL, for
/// its run's states to be given back ([`Live`]) before it returns: no
/// destructor may take the GIL later, when the interpreter may be shutting
/// down.
mod thread_state {
    use std::cell::RefCell;
    use std::sync::{Arc, Condvar, Mutex};

    use pyo3::ffi;

    /// How many of a run's worker threads hold a kept thread state.
    #[derive(Default)]
    pub struct Live {
        count: Mutex<usize>,
        none: Condvar,
    }

    impl Live {
        /// Waits until every kept state was given back. Call without the
        /// GIL: giving a state back takes it.
        pub fn wait_until_none(&self) {
            let mut count = super::lock(&self.count);
            while *count > 0 {
                count = self
                    .none
                    .wait(count)
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
            }
        }

        fn add(&self, delta: isize) {
            let mut count = super::lock(&self.count);
            *count = count.saturating_add_signed(delta);
            if *count == 0 {
                self.none.notify_all();
            }
        }
    }

    struct Kept {
        state: ffi::PyGILState_STATE,
        thread: *mut ffi::PyThreadState,
        live: Arc<Live>,
    }

    impl Drop for Kept {
        fn drop(&mut self) {
            // SAFETY: this thread registered `thread` in `keep` and holds no
            // GIL now; it takes the GIL back to delete its state. The
            // interpreter is alive: its `Queue.run` waits for this (`Live`).
            unsafe {
                ffi::PyEval_RestoreThread(self.thread);
                ffi::PyGILState_Release(self.state);
            }
            self.live.add(-1);
        }
    }

    thread_local! {
        static KEPT: RefCell<Option<Kept>> = const { RefCell::new(None) };
    }

    /// Registers a thread state for this thread, once, counted in `live`.
    pub fn keep(live: &Arc<Live>) {
        KEPT.with(|kept| {
            let mut kept = kept.borrow_mut();
            if kept.is_none() {
                live.add(1);
                // SAFETY: takes the GIL with a new thread state, then lets
                // go of the GIL but keeps the state registered (its count
                // stays at one), so later attaches only take the GIL.
                unsafe {
                    let state = ffi::PyGILState_Ensure();
                    let thread = ffi::PyEval_SaveThread();
                    *kept = Some(Kept {
                        state,
                        thread,
                        live: live.clone(),
                    });
                }
            }
        });
    }
}
