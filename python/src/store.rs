//! `ckpt.open()` and `Store`: an open store, and what it makes.

use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::types::PyString;

use crate::errors::{IntoPy, InvalidInputError, StoreError};
use crate::exit;
use crate::job::{Job, JobInfo};
use crate::json;
use crate::options::args;
use crate::options::{policy, seconds};
use crate::queue::Queue;
use crate::shared::Shared;

/// The store of `ckpt` when neither an argument nor `CKPT_STORE` names
/// one: the CLI's default, so both find the same jobs.
const DEFAULT_STORE: &str = "sqlite://ckpt.db";

/// Opens (creating if needed) the store at ``url`` and returns a Store.
///
/// ``url`` is ``sqlite://PATH`` (relative to the working directory;
/// ``sqlite:///abs/path`` absolute), ``postgres://USER@HOST/DB?schema=...``,
/// ``redis://HOST:PORT/?prefix=...`` or ``memory://``: the same URLs as the
/// ``ckpt`` CLI's ``--store``, so jobs made here are seen by ``ckpt status``
/// and ``ckpt serve``. ``None`` reads ``CKPT_STORE``, else
/// ``sqlite://ckpt.db`` (the CLI's default).
///
/// Raises StoreError when the store cannot be opened: a bad URL,
/// unreachable, a wrong password, corrupt, not a ckpt store, a newer schema
/// (the CLI's "cannot open store" line). Passwords in the URL never appear
/// in messages.
#[pyfunction]
#[pyo3(signature = (url=None))]
pub fn open(py: Python<'_>, url: Option<Bound<'_, PyString>>) -> PyResult<Store> {
    let url = match url {
        Some(url) => crate::json::text(&url, "the store URL")?,
        None => match std::env::var("CKPT_STORE") {
            Ok(url) => url,
            Err(std::env::VarError::NotPresent) => DEFAULT_STORE.to_string(),
            // Not the default in its place: the work would go to another
            // store than the one named.
            Err(std::env::VarError::NotUnicode(_)) => {
                return Err(StoreError::new_err(
                    "cannot open store: CKPT_STORE is not valid UTF-8",
                ))
            }
        },
    };
    if url.trim().is_empty() {
        return Err(StoreError::new_err(
            "cannot open store: the URL is empty (for example sqlite://ckpt.db)",
        ));
    }
    let ckpt = exit::detach(py, || ckpt::Ckpt::open(&url)).py()?;
    Ok(Store {
        shared: Arc::new(Shared::new(ckpt)),
        url: ckpt::store::redact_url(&url),
    })
}

/// An open store (see ``ckpt.open``). Safe to share between threads; each
/// ``job()`` and ``queue()`` acts as its own worker. Not usable in the child
/// of ``os.fork()``: open another store there.
#[pyclass(module = "ckpt", frozen)]
pub struct Store {
    shared: Arc<Shared>,
    /// The URL it was opened with, any password redacted.
    url: String,
}

#[pymethods]
impl Store {
    /// The URL the store was opened with, any password redacted (so one
    /// without a password opens the same store again).
    #[getter]
    fn url(&self) -> String {
        self.url.clone()
    }

    /// Acquires the job's lease, creating the job if new, and returns the Job
    /// (the cursor pattern). Raises BusyError when a live worker holds it.
    ///
    /// When ``checkpoint()`` saves: ``always=True`` at every call;
    /// ``every_items`` and/or ``every_seconds``: when that many items or
    /// seconds have passed since the last save, whichever first; otherwise
    /// adaptively, so that saving costs at most ``target_overhead`` of the
    /// run (0.01 = 1 %) and saves are at most ``max_interval`` seconds apart.
    /// ``lease`` (seconds) is renewed by saves and ``heartbeat()``; a worker
    /// that crashes is taken over once it lapses (at once on the same host).
    #[pyo3(signature = (name, *, lease=60.0, every_items=None, every_seconds=None, always=false, target_overhead=0.01, max_interval=30.0))]
    #[allow(clippy::too_many_arguments)]
    fn job(
        &self,
        py: Python<'_>,
        name: &Bound<'_, PyString>,
        #[pyo3(from_py_with = args::lease)] lease: f64,
        #[pyo3(from_py_with = args::every_items_opt)] every_items: Option<u64>,
        #[pyo3(from_py_with = args::every_seconds)] every_seconds: Option<f64>,
        always: bool,
        #[pyo3(from_py_with = args::target_overhead)] target_overhead: f64,
        #[pyo3(from_py_with = args::max_interval)] max_interval: f64,
    ) -> PyResult<Job> {
        let options = ckpt::JobOptions {
            lease: seconds("lease", lease)?,
            policy: policy(
                always,
                every_items,
                every_seconds,
                target_overhead,
                max_interval,
            )?,
        };
        let name = json::text(name, "the job name")?;
        let worker = self.shared.ckpt()?.new_worker();
        let job = exit::detach(py, || worker.job_with(&name, options)).py()?;
        Ok(Job::new(self.shared.clone(), job))
    }

    /// A handle on the job's work items (the claim pattern), acting as a new
    /// worker of this process. ``lease`` (seconds) is how long a claimed
    /// item stays this worker's without a renewal (``Queue.run`` renews
    /// it). A failed item is retried after ``backoff`` seconds, growing by
    /// ``backoff_factor`` up to ``max_backoff``, randomised by ``jitter``
    /// (0.2 = ±20 %), until ``max_attempts`` attempts in all; then it is dead.
    #[pyo3(signature = (name, *, lease=30.0, max_attempts=3, backoff=5.0, backoff_factor=2.0, max_backoff=300.0, jitter=0.2))]
    #[allow(clippy::too_many_arguments)]
    fn queue(
        &self,
        py: Python<'_>,
        name: &Bound<'_, PyString>,
        #[pyo3(from_py_with = args::lease)] lease: f64,
        #[pyo3(from_py_with = args::max_attempts)] max_attempts: u32,
        #[pyo3(from_py_with = args::backoff)] backoff: f64,
        #[pyo3(from_py_with = args::backoff_factor)] backoff_factor: f64,
        #[pyo3(from_py_with = args::max_backoff)] max_backoff: f64,
        #[pyo3(from_py_with = args::jitter)] jitter: f64,
    ) -> PyResult<Queue> {
        if max_attempts == 0 {
            return Err(InvalidInputError::new_err(
                "max_attempts must be at least 1",
            ));
        }
        if !(backoff_factor.is_finite() && backoff_factor >= 1.0) {
            return Err(InvalidInputError::new_err(
                "backoff_factor must be at least 1.0",
            ));
        }
        if !(0.0..=1.0).contains(&jitter) {
            return Err(InvalidInputError::new_err(
                "jitter must be between 0.0 and 1.0",
            ));
        }
        let options = ckpt::QueueOptions {
            lease: seconds("lease", lease)?,
            retry: ckpt::RetryPolicy {
                max_attempts,
                base_delay: seconds("backoff", backoff)?,
                factor: backoff_factor,
                max_delay: seconds("max_backoff", max_backoff)?,
                jitter,
            },
        };
        let name = json::text(name, "the job name")?;
        let worker = self.shared.ckpt()?.new_worker();
        let queue = exit::detach(py, || worker.queue_with(&name, options)).py()?;
        Ok(Queue::new(self.shared.clone(), queue))
    }

    /// The job's record (status, checkpoint, item counts), or None for an
    /// unknown job. Reads only; takes no lease.
    fn status(&self, py: Python<'_>, name: &Bound<'_, PyString>) -> PyResult<Option<JobInfo>> {
        let name = json::text(name, "the job name")?;
        let name = name.as_str();
        let ckpt = self.shared.ckpt()?;
        let (record, counts) = exit::detach(py, || -> ckpt::Result<_> {
            let Some(record) = ckpt.get_job(name)? else {
                return Ok(None);
            };
            let counts = ckpt.store().item_counts(name)?;
            Ok(Some((record, counts)))
        })
        .py()?
        .map_or((None, None), |(r, c)| (Some(r), Some(c)));
        record
            .map(|r| JobInfo::new(py, r, counts.filter(|c| c.total() > 0)))
            .transpose()
    }

    /// Refuses further use of this store and of the jobs and queues made
    /// from it (StoreError); its connections close once the last of them is
    /// gone. Optional: a store is closed when it is garbage-collected.
    fn close(&self) {
        self.shared.close();
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(&self, _args: &Bound<'_, pyo3::types::PyTuple>) -> bool {
        self.close();
        false
    }

    fn __repr__(&self) -> String {
        format!("<ckpt.Store {}>", self.shared.describe())
    }
}
