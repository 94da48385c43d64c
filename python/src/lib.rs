//! `ckpt._ckpt`: the Python face of ckpt.
use pyo3::prelude::*;

#[pymodule]
fn _ckpt(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
