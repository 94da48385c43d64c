//! `ckpt._ckpt`: the Python face of ckpt (PyO3), re-exported by the `ckpt`
//! package (`python/ckpt/__init__.py`); its contract is the stub
//! `python/ckpt/_ckpt.pyi`.
//!
//! Every call that may touch the store lets go of the GIL while it does;
//! `Job.checkpoint()` keeps it when it only records (no I/O), which is
//! most calls. Values cross as JSON (`json`), errors as the exception
//! hierarchy of `errors`, and everything made from a store shares its
//! handle (`shared`), which refuses use after close or fork.

use pyo3::prelude::*;

mod errors;
mod exit;
mod fastcall;
mod item;
mod job;
mod json;
mod options;
mod queue;
mod run;
mod shared;
mod store;

#[pymodule]
fn _ckpt(m: &Bound<'_, PyModule>) -> PyResult<()> {
    shared::install_fork_hook();
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    errors::register(m)?;
    m.add_function(wrap_pyfunction!(store::open, m)?)?;
    m.add_class::<store::Store>()?;
    m.add_class::<job::Job>()?;
    fastcall::install(m.py())?;
    m.add_class::<job::HistoryEntry>()?;
    m.add_class::<job::JobInfo>()?;
    m.add_class::<queue::Queue>()?;
    m.add_class::<item::Item>()?;
    m.add_class::<queue::ItemRecord>()?;
    m.add_class::<queue::ItemCounts>()?;
    m.add_class::<queue::EnqueueReport>()?;
    m.add_class::<queue::Retry>()?;
    m.add_class::<run::RunReport>()?;
    let at_exit = wrap_pyfunction!(exit::_at_exit, m)?;
    m.py()
        .import("atexit")?
        .call_method1("register", (at_exit,))?;
    Ok(())
}
