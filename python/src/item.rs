//! `Item`: a claimed item, as handlers and `Queue.claim` get it.

use std::sync::Arc;

use ckpt::ClaimedItem;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyMapping};

use crate::errors::{IntoPy, InvalidInputError};
use crate::exit;
use crate::json;
use crate::shared::Shared;

/// Stats: None or a dict.
pub(crate) fn stats_json(stats: Option<&Bound<'_, PyAny>>) -> PyResult<Option<serde_json::Value>> {
    match stats {
        None => Ok(None),
        Some(s) if s.is_none() => Ok(None),
        Some(s) if s.is_instance_of::<PyDict>() || s.cast::<PyMapping>().is_ok() => {
            // Any mapping, as a dict (the stubs promise a Mapping).
            let as_dict;
            let s = match s.cast::<PyDict>() {
                Ok(_) => s,
                Err(_) => {
                    as_dict = PyDict::new(s.py());
                    as_dict.update(s.cast::<PyMapping>()?)?;
                    as_dict.as_any()
                }
            };
            let stats = json::to_json(s, "stats")?;
            // The library's limits, checked here too so that a handler's
            // oversize stats are named in the run's one warning.
            ckpt::validate::stats(&stats).map_err(crate::errors::to_py)?;
            Ok(Some(stats))
        }
        Some(s) => Err(InvalidInputError::new_err(format!(
            "stats must be a mapping (a dict) or None, not {}",
            s.get_type().name()?
        ))),
    }
}

/// A claimed item; valid while its lease is held.
#[pyclass(module = "ckpt", frozen)]
pub struct Item {
    shared: Arc<Shared>,
    queue: Arc<ckpt::Queue>,
    pub(crate) item: ClaimedItem,
}

impl Item {
    pub fn new(shared: Arc<Shared>, queue: Arc<ckpt::Queue>, item: ClaimedItem) -> Item {
        Item {
            shared,
            queue,
            item,
        }
    }
}

#[pymethods]
impl Item {
    /// The item's key.
    #[getter]
    fn key(&self) -> &str {
        &self.item.key
    }

    /// Its payload (any JSON value), or None.
    #[getter]
    fn payload(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        json::opt_to_py(py, self.item.payload.as_ref())
    }

    /// Which attempt this is: 1 for the first.
    #[getter]
    fn attempt(&self) -> u32 {
        self.item.attempt
    }

    /// The per-item cursor an earlier attempt saved with ``save_cursor()``
    /// (resume inside a big item), or None.
    #[getter]
    fn cursor(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        json::opt_to_py(py, self.item.cursor.as_ref())
    }

    /// Saves a per-item cursor (any JSON value) durably, so that a retry of
    /// this item resumes inside it. FencedError when the lease was lost.
    fn save_cursor(&self, py: Python<'_>, cursor: &Bound<'_, PyAny>) -> PyResult<()> {
        self.shared.ckpt()?;
        let cursor = json::to_json(cursor, "cursor")?;
        exit::detach(py, || self.queue.save_cursor(&self.item, cursor)).py()
    }

    fn __repr__(&self) -> String {
        format!(
            "<ckpt.Item '{}' attempt {}>",
            self.item.key, self.item.attempt
        )
    }
}
