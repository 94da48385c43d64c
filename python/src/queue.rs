//! `Queue` and `Item`: the claim pattern, driven by hand. `Queue.run` is in
//! `run`.

use std::sync::Arc;

use ckpt::{ClaimedItem, ItemStatus, NewItem, RetryDecision};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyMapping, PyString, PyTuple};

use crate::errors::{IntoPy, InvalidInputError};
use crate::exit;
use crate::item::{stats_json, Item};
use crate::json;
use crate::options::args;
use crate::shared::Shared;

/// One worker's handle on a job's work items (see ``Store.queue``). Safe to
/// share between threads.
#[pyclass(module = "ckpt", frozen)]
pub struct Queue {
    pub(crate) shared: Arc<Shared>,
    pub(crate) queue: Arc<ckpt::Queue>,
}

impl Queue {
    pub fn new(shared: Arc<Shared>, queue: ckpt::Queue) -> Queue {
        Queue {
            shared,
            queue: Arc::new(queue),
        }
    }

    /// The queue, when the store may be used.
    pub(crate) fn live(&self) -> PyResult<&ckpt::Queue> {
        self.shared.ckpt()?;
        Ok(&self.queue)
    }
}

#[pymethods]
impl Queue {
    /// The job's name.
    #[getter]
    fn name(&self) -> &str {
        self.queue.job()
    }

    /// This worker's id, as the store records it on the items it holds.
    #[getter]
    fn owner(&self) -> &str {
        self.queue.owner()
    }

    /// Adds items, in one transaction: an iterable of keys (str), of
    /// ``(key, payload)`` pairs, or a ``{key: payload}`` mapping (any
    /// ``Mapping``); payloads
    /// are any JSON values. Idempotent per key: an existing key is neither
    /// duplicated nor changed. Returns an EnqueueReport (inserted, existing).
    fn enqueue(&self, py: Python<'_>, items: &Bound<'_, PyAny>) -> PyResult<EnqueueReport> {
        let queue = self.live()?;
        let mut new = Vec::new();
        if let Ok(map) = items.cast::<PyDict>() {
            for (k, v) in map.iter() {
                new.push(item(&k, Some(&v))?);
            }
        } else if let Ok(map) = items.cast::<PyMapping>() {
            // Any other mapping (MappingProxyType, UserDict, ChainMap): its
            // items, not its keys alone (its payloads would be lost).
            for pair in map.items()?.iter() {
                let (k, v): (Bound<'_, PyAny>, Bound<'_, PyAny>) = pair.extract()?;
                new.push(item(&k, Some(&v))?);
            }
        } else if items.is_instance_of::<PyString>() {
            return Err(InvalidInputError::new_err(
                "enqueue() takes an iterable of keys, not one string: enqueue([key])",
            ));
        } else {
            for entry in items.try_iter()? {
                let entry = entry?;
                match entry.cast::<PyTuple>() {
                    Ok(pair) if pair.len() == 2 => {
                        new.push(item(&pair.get_item(0)?, Some(&pair.get_item(1)?))?)
                    }
                    _ => new.push(item(&entry, None)?),
                }
            }
        }
        let report = exit::detach(py, || queue.enqueue(new)).py()?;
        Ok(EnqueueReport {
            inserted: report.inserted,
            existing: report.existing,
        })
    }

    /// Runs ``handler(item)`` on ``workers`` threads until the job has no
    /// unfinished item left (waiting for retries that are due, and for items
    /// other live workers hold). Returning completes the item, durably,
    /// keeping a returned dict of JSON values as its stats (any other value
    /// is dropped, with a warning once per run); raising fails it (``Type: message`` becomes its
    /// error; the traceback is logged on the ``ckpt`` logger): it is retried
    /// with backoff, then dead. Leases are renewed while handlers run. An
    /// ``async def`` or generator handler (none of its work would run)
    /// raises ``TypeError``; a run of this job from inside its own handlers
    /// (it would wait for ever for their items) ``InvalidInputError``.
    /// At most ``prefetch`` items are claimed ahead of the workers (default:
    /// twice the workers, at least 8, as ``ckpt run``; more helps tiny
    /// items); slow handlers get one, so other processes get their share.
    ///
    /// Called from the main thread, it handles SIGTERM, SIGINT and SIGHUP
    /// (SIGHUP only if its handler is the default: under ``nohup``, or
    /// with a handler of the program's own, it is left alone) while it
    /// runs: the first stops the run gracefully (nothing new starts,
    /// running handlers finish, unstarted items are given back) and it
    /// returns with ``stopped`` and ``signal`` set; a second SIGTERM or
    /// SIGINT ends the process at once (after a SIGHUP, the first SIGTERM
    /// or SIGINT is the stop's reason, not the second). Returns a
    /// RunReport; store errors raise.
    #[pyo3(signature = (handler, *, workers=1, prefetch=None))]
    fn run(
        &self,
        py: Python<'_>,
        handler: Py<PyAny>,
        #[pyo3(from_py_with = args::workers)] workers: usize,
        #[pyo3(from_py_with = args::prefetch)] prefetch: Option<usize>,
    ) -> PyResult<crate::run::RunReport> {
        self.live()?;
        crate::run::run(&self.shared, &self.queue, py, handler, workers, prefetch)
    }

    /// Claims up to ``max`` ready items for this worker, started now: pending
    /// ones, failed ones whose retry time has come, and ones whose holder's
    /// lease lapsed (another handle's: a handle never claims back an item it
    /// holds itself, whose attempt may still be running). Each must then be
    /// completed, failed or released (or renewed with ``heartbeat()`` within
    /// the lease).
    #[pyo3(signature = (max=1))]
    fn claim(
        &self,
        py: Python<'_>,
        #[pyo3(from_py_with = args::max)] max: usize,
    ) -> PyResult<Vec<Item>> {
        let queue = self.live()?;
        let claimed = exit::detach(py, || queue.claim(max)).py()?;
        Ok(claimed
            .into_iter()
            .map(|item| Item::new(self.shared.clone(), self.queue.clone(), item))
            .collect())
    }

    /// Marks the item completed, with an optional dict of stats, durably.
    /// FencedError when its lease was lost (nothing written).
    #[pyo3(signature = (item, stats=None))]
    fn complete(
        &self,
        py: Python<'_>,
        item: &Item,
        stats: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let queue = self.live()?;
        let stats = stats_json(stats)?;
        exit::detach(py, || queue.complete(&item.item, stats)).py()
    }

    /// Records a failed attempt with ``error``: the item is retried after
    /// its backoff, or dead when it has no attempt left. Returns the Retry
    /// decided.
    fn fail(&self, py: Python<'_>, item: &Item, error: &Bound<'_, PyString>) -> PyResult<Retry> {
        let error = json::message(error)?;
        let queue = self.live()?;
        let decision = exit::detach(py, || queue.fail(&item.item, &error)).py()?;
        Ok(match decision {
            RetryDecision::Dead => Retry {
                dead: true,
                retry_at: None,
            },
            RetryDecision::RetryAt(at) => Retry {
                dead: false,
                retry_at: Some(at.millis() as f64 / 1000.0),
            },
        })
    }

    /// Gives the item back unfinished: pending again, no attempt counted.
    fn release(&self, py: Python<'_>, item: &Item) -> PyResult<()> {
        let queue = self.live()?;
        exit::detach(py, || queue.release(&item.item)).py()
    }

    /// Renews the leases of the items (work longer than the lease), in one
    /// transaction. FencedError if any was lost (the others are renewed).
    fn heartbeat(&self, py: Python<'_>, items: Vec<PyRef<'_, Item>>) -> PyResult<()> {
        let queue = self.live()?;
        let claimed: Vec<&ClaimedItem> = items.iter().map(|i| &i.item).collect();
        let results = exit::detach(py, || queue.heartbeat(claimed.iter().copied())).py()?;
        results
            .into_iter()
            .collect::<ckpt::Result<Vec<()>>>()
            .py()?;
        Ok(())
    }

    /// The job's items by status.
    fn counts(&self, py: Python<'_>) -> PyResult<ItemCounts> {
        let queue = self.live()?;
        Ok(exit::detach(py, || queue.counts()).py()?.into())
    }

    /// The job's items in enqueue order, optionally of one status
    /// (``"pending"``, ``"running"``, ``"completed"``, ``"failed"``,
    /// ``"dead"``), at most ``limit``.
    #[pyo3(signature = (status=None, limit=1000))]
    fn items(
        &self,
        py: Python<'_>,
        status: Option<Bound<'_, PyString>>,
        #[pyo3(from_py_with = args::limit)] limit: usize,
    ) -> PyResult<Vec<ItemRecord>> {
        let queue = self.live()?;
        let status = match status {
            Some(s) => Some(parse_status(&crate::json::text(&s, "status")?)?),
            None => None,
        };
        let records = exit::detach(py, || queue.items(status, limit)).py()?;
        records
            .into_iter()
            .map(|r| {
                Ok(ItemRecord {
                    key: r.key,
                    status: r.status.as_str().to_string(),
                    attempts: r.attempts,
                    payload: json::opt_to_py(py, r.payload.as_ref())?,
                    stats: json::opt_to_py(py, r.stats.as_ref())?,
                    last_error: r.last_error,
                    last_output: r.last_output,
                    owner: r.owner,
                })
            })
            .collect()
    }

    /// Moves dead items (all, or only those ``keys``) back to pending with
    /// their attempts afresh, as ``ckpt retry`` does; returns how many.
    #[pyo3(signature = (keys=None))]
    fn retry_dead(&self, py: Python<'_>, keys: Option<Vec<Bound<'_, PyString>>>) -> PyResult<u64> {
        let keys = keys
            .map(|keys| {
                keys.iter()
                    .map(|k| json::text(k, "an item key"))
                    .collect::<PyResult<Vec<_>>>()
            })
            .transpose()?;
        let queue = self.live()?;
        exit::detach(py, || queue.redrive(ItemStatus::Dead, keys.as_deref())).py()
    }

    fn __repr__(&self) -> String {
        format!("<ckpt.Queue '{}'>", self.queue.job())
    }
}

fn item(key: &Bound<'_, PyAny>, payload: Option<&Bound<'_, PyAny>>) -> PyResult<NewItem> {
    let Ok(key) = key.cast::<PyString>() else {
        return Err(InvalidInputError::new_err(format!(
            "an item key must be a str, not {}; nothing was enqueued",
            key.get_type().name()?
        )));
    };
    Ok(NewItem {
        key: json::text(key, "an item key")?,
        payload: payload
            .filter(|p| !p.is_none())
            .map(|p| json::to_json(p, "payload"))
            .transpose()?,
    })
}

fn parse_status(s: &str) -> PyResult<ItemStatus> {
    ItemStatus::parse(s).ok_or_else(|| {
        InvalidInputError::new_err(format!(
            "unknown item status '{s}' (pending, running, completed, failed or dead)"
        ))
    })
}

/// A job's work items by status.
#[pyclass(module = "ckpt", frozen, get_all)]
pub struct ItemCounts {
    /// Waiting to be claimed.
    pending: u64,
    /// Held by a worker.
    running: u64,
    /// Done.
    completed: u64,
    /// Failed, waiting for a retry.
    failed: u64,
    /// Out of attempts: the dead-letter list.
    dead: u64,
}

impl From<ckpt::ItemCounts> for ItemCounts {
    fn from(c: ckpt::ItemCounts) -> ItemCounts {
        ItemCounts {
            pending: c.pending,
            running: c.running,
            completed: c.completed,
            failed: c.failed,
            dead: c.dead,
        }
    }
}

#[pymethods]
impl ItemCounts {
    fn __repr__(&self) -> String {
        format!(
            "<ckpt.ItemCounts pending={} running={} completed={} failed={} dead={}>",
            self.pending, self.running, self.completed, self.failed, self.dead
        )
    }
}

/// What ``Queue.enqueue`` did.
#[pyclass(module = "ckpt", frozen, get_all)]
pub struct EnqueueReport {
    /// New items added.
    inserted: u64,
    /// Keys already there, left as they were.
    existing: u64,
}

#[pymethods]
impl EnqueueReport {
    fn __repr__(&self) -> String {
        format!(
            "<ckpt.EnqueueReport inserted={} existing={}>",
            self.inserted, self.existing
        )
    }
}

/// What ``Queue.fail`` decided.
#[pyclass(module = "ckpt", frozen, get_all)]
pub struct Retry {
    /// True when the item had no attempt left and is now dead.
    dead: bool,
    /// When it may run again (Unix seconds), unless dead.
    retry_at: Option<f64>,
}

#[pymethods]
impl Retry {
    fn __repr__(&self) -> String {
        match self.retry_at {
            Some(at) => format!("<ckpt.Retry at {at:.3}>"),
            None => "<ckpt.Retry dead>".to_string(),
        }
    }
}

/// One item as the store keeps it (see ``Queue.items``).
#[pyclass(module = "ckpt", frozen, get_all)]
pub struct ItemRecord {
    /// The item's key.
    key: String,
    /// ``"pending"``, ``"running"``, ``"completed"``, ``"failed"`` or ``"dead"``.
    status: String,
    /// Attempts so far.
    attempts: u32,
    /// Its payload, or None.
    payload: Py<PyAny>,
    /// The stats its completion recorded, or None.
    stats: Py<PyAny>,
    /// The error of its last failed attempt.
    last_error: Option<String>,
    /// The tail of the last failed attempt's error output, when kept (the
    /// ``ckpt run`` CLI keeps a command's stderr).
    last_output: Option<String>,
    /// The worker holding it, while running.
    owner: Option<String>,
}

#[pymethods]
impl ItemRecord {
    fn __repr__(&self) -> String {
        format!("<ckpt.ItemRecord '{}' {}>", self.key, self.status)
    }
}
