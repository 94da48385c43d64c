//! `Job`: the cursor pattern, and the records read about a job.

use std::sync::Arc;

use ckpt::{Checkpoint, ItemCounts as LibCounts, JobRecord};
use pyo3::prelude::*;
use pyo3::types::PyString;

use crate::errors::{Error, FencedError, IntoPy};
use crate::exit;
use crate::json;
use crate::options::args;
use crate::queue::ItemCounts;
use crate::shared::Shared;

/// A job held by this worker (the cursor pattern); see ``Store.job``.
///
/// Every write is fenced: once another worker has taken the job over, the
/// next save, heartbeat or completion raises FencedError and writes
/// nothing, and from then on every call of this handle raises it. Use a Job
/// from one thread at a time.
///
/// As a context manager, leaving the block by an exception flushes the last
/// checkpoint and releases the lease (the job stays resumable, at once, by
/// any worker) and lets the exception through; leaving it normally without
/// ``complete()``, ``fail()`` or ``release()`` flushes and releases too. A
/// Job dropped without any of these leaves its lease to expire, as a crash
/// does.
#[pyclass(module = "ckpt")]
pub struct Job {
    shared: Arc<Shared>,
    /// `None` once completed, failed or released.
    job: Option<ckpt::Job>,
    name: String,
    /// The items count of the last `checkpoint()`, for its default.
    last_items: u64,
    /// The first FencedError's message, once the lease was lost: from then
    /// on every call raises it, whether or not it would write (a zombie
    /// learns it is one at its next call, whatever that call is).
    fenced: Option<String>,
    /// Why the handle is spent, once the call that was to end the job
    /// failed after taking the job (see `end`): later calls raise this.
    spent: Option<String>,
    /// What the acquire found, kept apart from the held job so that it
    /// stays readable once the job is finished or fenced.
    acquired: Acquired,
}

/// A job as it was acquired.
struct Acquired {
    resumed: Option<Checkpoint>,
    taken_over_from: Option<String>,
    was_completed: bool,
}

impl Job {
    pub fn new(shared: Arc<Shared>, job: ckpt::Job) -> Job {
        let acquired = Acquired {
            resumed: job.resume_checkpoint().cloned(),
            taken_over_from: job.taken_over_from().map(str::to_string),
            was_completed: job.was_completed(),
        };
        Job {
            shared,
            name: job.name().to_string(),
            last_items: acquired.resumed.as_ref().map_or(0, |c| c.items_processed),
            job: Some(job),
            fenced: None,
            spent: None,
            acquired,
        }
    }

    /// The held job, when this handle still holds it and may use the store.
    fn held(&mut self) -> PyResult<&mut ckpt::Job> {
        self.shared.ckpt()?;
        if let Some(why) = &self.fenced {
            return Err(FencedError::new_err(why.clone()));
        }
        if let Some(why) = &self.spent {
            return Err(Error::new_err(why.clone()));
        }
        match self.job.as_mut() {
            Some(job) => Ok(job),
            None => Err(Error::new_err(format!(
                "job '{}' was already completed, failed or released through this handle; \
                 call store.job() again to hold it",
                self.name
            ))),
        }
    }

    /// Takes the job out to finish it.
    fn take(&mut self) -> PyResult<ckpt::Job> {
        self.held()?;
        Ok(self.job.take().expect("held() checked it"))
    }

    /// Ends the hold on the job with `end` (complete, fail or release),
    /// without the GIL, after `flush` (`ckpt::Job::flush` for complete,
    /// `flush_pending` for the others). The call is counted before the
    /// handle is taken, so one refused at interpreter exit leaves the job
    /// as it was. The flush runs while the handle still holds the job: if
    /// it fails, the handle and the job stay as they were (the library
    /// keeps what it could not save, or refuses to complete without it),
    /// so the same method, or release(), may be called again. Once the
    /// handle is taken, a failure spends it, saying why.
    fn end(
        &mut self,
        py: Python<'_>,
        flush: fn(&mut ckpt::Job) -> ckpt::Result<()>,
        end: impl FnOnce(ckpt::Job) -> ckpt::Result<()> + Send,
    ) -> PyResult<()> {
        let _call = exit::enter().py()?;
        let held = self.held()?;
        let flushed = exit::interruptible(py, || flush(held));
        self.settle(flushed)?;
        let job = self.take()?;
        let result = exit::interruptible(py, || end(job));
        match &result {
            Err(e) if e.is_interrupted() => {
                self.spent = Some(format!(
                    "job '{0}': the call that was to end it was interrupted and may or may not \
                     have taken effect; store.status('{0}') tells",
                    self.name
                ))
            }
            Err(e) if !e.is_fenced() => {
                self.spent = Some(format!(
                    "job '{0}': the call that was to end it failed ({e}) after its checkpoint was \
                     saved; store.status('{0}') tells where it stands, and store.job('{0}') takes \
                     it again once its lease expires",
                    self.name
                ))
            }
            _ => {}
        }
        self.settle(result)
    }

    /// `result`, remembering a lost lease (see `fenced`).
    fn settle<T>(&mut self, result: ckpt::Result<T>) -> PyResult<T> {
        if let Err(e) = &result {
            if e.is_fenced() {
                self.fenced = Some(e.to_string());
            }
        }
        result.py()
    }

    fn resume(&self) -> Option<&Checkpoint> {
        self.acquired.resumed.as_ref()
    }

    /// `checkpoint()`, after its arguments were parsed (see `fastcall`,
    /// which installs the method).
    pub(crate) fn record(
        &mut self,
        py: Python<'_>,
        cursor: &Bound<'_, PyAny>,
        items_processed: Option<&Bound<'_, PyAny>>,
        stage: Option<&Bound<'_, PyAny>>,
        state: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<bool> {
        // As `is_due()` takes it: a wrong type is a `TypeError`, a
        // negative or oversized int an `InvalidInputError`.
        let items = match items_processed {
            Some(v) => args::items_processed(v)?,
            None => self.last_items.saturating_add(1),
        };
        let checkpoint = Checkpoint {
            cursor: json::to_json(cursor, "cursor")?,
            items_processed: items,
            stage: stage
                .map(|s| json::stored_text(s.cast::<PyString>()?, "stage"))
                .transpose()?,
            state: state.map(|s| json::to_json(s, "state")).transpose()?,
        };
        if let Some(state) = &checkpoint.state {
            // At the call, not at the save the policy may hold it back
            // for: the caller learns which checkpoint was refused, and the
            // good one recorded before it stays the one a flush saves.
            let limit = self.shared.ckpt()?.limits().state_bytes;
            ckpt::validate::state_size(state, limit).py()?;
        }
        let job = self.held()?;
        let saved = if job.is_quiet(items) {
            // Only records it: no I/O, so no need to let go of the GIL.
            job.checkpoint(checkpoint)
        } else {
            exit::detach(py, || job.checkpoint(checkpoint))
        };
        let saved = self.settle(saved)?;
        self.last_items = items;
        Ok(saved)
    }
}

#[pymethods]
impl Job {
    /// The job's name.
    #[getter]
    fn name(&self) -> &str {
        &self.name
    }

    /// The worker this one took the job over from (its lease had lapsed,
    /// or its process on this host was gone), else None.
    #[getter]
    fn taken_over_from(&self) -> Option<String> {
        self.acquired.taken_over_from.clone()
    }

    /// True if the job had been completed before this acquire (a finished
    /// job acquired again runs again from its last checkpoint).
    #[getter]
    fn was_completed(&self) -> bool {
        self.acquired.was_completed
    }

    /// The cursor of the checkpoint this job resumed from: None when it
    /// had none (start from the beginning).
    fn resume_cursor(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        json::opt_to_py(py, self.resume().map(|c| &c.cursor))
    }

    /// The state of the checkpoint this job resumed from, or None.
    fn resume_state(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        json::opt_to_py(py, self.resume().and_then(|c| c.state.as_ref()))
    }

    /// The stage of the checkpoint this job resumed from, or None.
    fn resume_stage(&self) -> Option<String> {
        self.resume().and_then(|c| c.stage.clone())
    }

    /// Items processed per the checkpoint this job resumed from (0 when none).
    fn resume_items_processed(&self) -> u64 {
        self.resume().map_or(0, |c| c.items_processed)
    }

    /// Whether a checkpoint with ``items_processed`` items done would be
    /// saved now: build an expensive state only then.
    fn is_due(
        &mut self,
        py: Python<'_>,
        #[pyo3(from_py_with = args::items_processed)] items_processed: u64,
    ) -> PyResult<bool> {
        let job = self.held()?;
        if job.is_quiet(items_processed) {
            return Ok(job.is_due(items_processed));
        }
        // The policy may read the store's clock (a round trip on
        // PostgreSQL and Redis): without the GIL, as every store call.
        let job = &*job;
        exit::detach(py, || Ok(job.is_due(items_processed))).py()
    }

    /// Persists the latest recorded checkpoint now, whatever the policy.
    fn flush(&mut self, py: Python<'_>) -> PyResult<()> {
        let _call = exit::enter().py()?;
        let job = self.held()?;
        let result = exit::interruptible(py, || job.flush());
        self.settle(result)
    }

    /// Renews the lease if a third of it has passed since the last renewal;
    /// call it inside items that take longer than the lease. Raises
    /// FencedError when the lease was lost or could not be renewed in time
    /// (stop: another worker may take the job over).
    fn heartbeat(&mut self, py: Python<'_>) -> PyResult<()> {
        let job = self.held()?;
        let result = exit::detach(py, || job.heartbeat());
        self.settle(result)
    }

    /// The job's saved checkpoints, newest first, at most ``limit`` (the
    /// store keeps the last 100).
    #[pyo3(signature = (limit=100))]
    fn history(
        &mut self,
        py: Python<'_>,
        #[pyo3(from_py_with = args::limit)] limit: usize,
    ) -> PyResult<Vec<HistoryEntry>> {
        // A handle that lost its lease reads no more: the history is the
        // new holder's now.
        if let Some(why) = &self.fenced {
            return Err(FencedError::new_err(why.clone()));
        }
        let ckpt = self.shared.ckpt()?;
        let entries = exit::detach(py, || ckpt.store().history(&self.name, limit)).py()?;
        entries
            .into_iter()
            .map(|e| {
                Ok(HistoryEntry {
                    seq: e.seq,
                    cursor: json::to_py(py, &e.cursor)?,
                    items_processed: e.items_processed,
                    saved_at: e.at.millis() as f64 / 1000.0,
                })
            })
            .collect()
    }

    /// Flushes and marks the job completed; the final checkpoint is kept.
    fn complete(&mut self, py: Python<'_>) -> PyResult<()> {
        self.end(py, ckpt::Job::flush, |job| job.complete())
    }

    /// Flushes and marks the job failed with ``error``; the checkpoint is
    /// kept, so a later run resumes from it.
    fn fail(&mut self, py: Python<'_>, error: &Bound<'_, PyString>) -> PyResult<()> {
        let error = json::message(error)?;
        self.end(py, ckpt::Job::flush_pending, move |job| job.fail(&error))
    }

    /// Flushes and gives up the lease, leaving the job running for any
    /// worker to resume at once (a graceful stop).
    fn release(&mut self, py: Python<'_>) -> PyResult<()> {
        self.end(py, ckpt::Job::flush_pending, |job| job.release())
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    /// Releases the job if this handle still holds it (see the class
    /// documentation). Never swallows the block's exception: when the
    /// block raised and the release fails too (most often FencedError: the
    /// lease was already lost), the failure is logged on the ``ckpt``
    /// logger and the block's exception goes on.
    #[pyo3(signature = (exc_type, _exc, _tb))]
    fn __exit__(
        &mut self,
        py: Python<'_>,
        exc_type: &Bound<'_, PyAny>,
        _exc: &Bound<'_, PyAny>,
        _tb: &Bound<'_, PyAny>,
    ) -> PyResult<bool> {
        if self.job.is_none() {
            return Ok(false);
        }
        match self.release(py) {
            Err(e) if !exc_type.is_none() => {
                let logger = py.import("logging")?.call_method1("getLogger", ("ckpt",))?;
                logger.call_method1(
                    "warning",
                    (
                        "job %r: could not release it while the block raised: %s",
                        &self.name,
                        e.value(py).to_string(),
                    ),
                )?;
                Ok(false)
            }
            other => other.map(|()| false),
        }
    }

    fn __repr__(&self) -> String {
        let state = if self.fenced.is_some() {
            "fenced"
        } else if self.spent.is_some() {
            "spent"
        } else if self.job.is_some() {
            "held"
        } else {
            "finished"
        };
        format!("<ckpt.Job '{}' {state}>", self.name)
    }
}

/// One saved checkpoint of a job's bounded history.
#[pyclass(module = "ckpt", frozen, get_all)]
pub struct HistoryEntry {
    /// The save's sequence number: 1 for the job's first save.
    seq: u64,
    /// The cursor saved.
    cursor: Py<PyAny>,
    /// Items processed at that save.
    items_processed: u64,
    /// When it was saved, in Unix seconds.
    saved_at: f64,
}

#[pymethods]
impl HistoryEntry {
    fn __repr__(&self, py: Python<'_>) -> String {
        format!(
            "<ckpt.HistoryEntry seq={} cursor={} items_processed={}>",
            self.seq,
            self.cursor.bind(py),
            self.items_processed
        )
    }
}

/// A job's record, as ``ckpt status`` shows it (see ``Store.status``).
#[pyclass(module = "ckpt", frozen, get_all)]
pub struct JobInfo {
    /// The job's name.
    name: String,
    /// ``"running"``, ``"completed"`` or ``"failed"``.
    status: String,
    /// The worker holding its lease, if any.
    owner: Option<String>,
    /// The last saved cursor, or None.
    cursor: Py<PyAny>,
    /// Items processed at the last save, or None without a checkpoint.
    items_processed: Option<u64>,
    /// The stage of the last save, or None.
    stage: Option<String>,
    /// The state of the last save, or None.
    state: Py<PyAny>,
    /// How many checkpoints were saved in all.
    saves: u64,
    /// Its work items by status, or None when it has none.
    counts: Option<Py<ItemCounts>>,
    /// Why it failed, when it did.
    last_error: Option<String>,
}

impl JobInfo {
    pub fn new(py: Python<'_>, r: JobRecord, counts: Option<LibCounts>) -> PyResult<JobInfo> {
        let cp = r.checkpoint.as_ref();
        Ok(JobInfo {
            status: r.status.as_str().to_string(),
            owner: r.owner.clone(),
            cursor: json::opt_to_py(py, cp.map(|c| &c.cursor))?,
            items_processed: cp.map(|c| c.items_processed),
            stage: cp.and_then(|c| c.stage.clone()),
            state: json::opt_to_py(py, cp.and_then(|c| c.state.as_ref()))?,
            saves: r.saves,
            counts: counts
                .map(|c| Py::new(py, ItemCounts::from(c)))
                .transpose()?,
            last_error: r.error.clone(),
            name: r.name,
        })
    }
}

#[pymethods]
impl JobInfo {
    fn __repr__(&self) -> String {
        format!("<ckpt.JobInfo '{}' {}>", self.name, self.status)
    }
}
