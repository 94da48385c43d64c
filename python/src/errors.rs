//! The exception hierarchy, and how library errors map onto it.
//!
//! Callers act on the kind (`BusyError`: try later; `FencedError`: stop;
//! `NotFoundError`; `InvalidInputError`: fix the input), so each kind the
//! library tells apart is its own class. Every message is the library's own
//! text, the same line the CLI prints: store URLs in it are already
//! redacted by the library.

use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;

create_exception!(
    ckpt,
    Error,
    PyException,
    "Base of every error ckpt raises; `str(e)` is the line the ckpt CLI would print."
);
create_exception!(
    ckpt,
    BusyError,
    Error,
    "A live worker holds the job, or the store is locked by another writer: try later."
);
create_exception!(
    ckpt,
    FencedError,
    Error,
    "This worker's lease was lost (another worker took over, or it could not be renewed in \
     time): stop working on that job or item. The write that raised this changed nothing."
);
create_exception!(
    ckpt,
    NotFoundError,
    Error,
    "The named job or item does not exist."
);
create_exception!(
    ckpt,
    InvalidInputError,
    Error,
    "Input that can never succeed: a bad job name or key, a value that is not JSON, a value \
     over its size limit. Nothing was written."
);
create_exception!(
    ckpt,
    StoreError,
    Error,
    "The store failed or cannot be used: unreachable, corrupt, not a ckpt store, a newer \
     schema, closed, or opened before a fork (open a new one in the child)."
);

thread_local! {
    /// The exception a signal handler raised while a store call of this
    /// thread waited (see `exit::interruptible`): raised in the call's
    /// place when it returns, as [`ckpt::Error::Interrupted`].
    static RAISED: std::cell::RefCell<Option<PyErr>> = const { std::cell::RefCell::new(None) };
}

/// Keeps `e`, raised by a signal handler while a store call waited.
pub fn keep_raised(e: PyErr) {
    RAISED.with(|r| *r.borrow_mut() = Some(e));
}

/// True if a signal handler raised while this thread's call waited, and
/// its exception was not raised yet.
pub fn signal_raised_meanwhile() -> bool {
    RAISED.with(|r| r.borrow().is_some())
}

/// The Python exception for a library error.
pub fn to_py(e: ckpt::Error) -> PyErr {
    use ckpt::Error as E;
    let message = e.to_string();
    match e {
        E::Fenced(_) => FencedError::new_err(message),
        E::Busy(_) => BusyError::new_err(message),
        E::NotFound(_) => NotFoundError::new_err(message),
        E::InvalidInput(_) | E::LimitExceeded { .. } | E::Decode { .. } => {
            InvalidInputError::new_err(message)
        }
        // A compare-and-set that lost: not a store failure, and not one of
        // the kinds above; the base class carries it.
        E::CursorMismatch { .. } => Error::new_err(message),
        // A signal handler's exception (Ctrl-C) ended the wait: that one.
        E::Interrupted(_) => RAISED
            .with(|r| r.borrow_mut().take())
            .unwrap_or_else(|| pyo3::exceptions::PyKeyboardInterrupt::new_err(message)),
        _ => StoreError::new_err(message),
    }
}

/// `Result` of the library, into a Python result.
pub trait IntoPy<T> {
    /// Maps the error with [`to_py`].
    fn py(self) -> PyResult<T>;
}

impl<T> IntoPy<T> for ckpt::Result<T> {
    fn py(self) -> PyResult<T> {
        self.map_err(to_py)
    }
}

/// Registers the exception classes on the module.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("Error", py.get_type::<Error>())?;
    m.add("BusyError", py.get_type::<BusyError>())?;
    m.add("FencedError", py.get_type::<FencedError>())?;
    m.add("NotFoundError", py.get_type::<NotFoundError>())?;
    m.add("InvalidInputError", py.get_type::<InvalidInputError>())?;
    m.add("StoreError", py.get_type::<StoreError>())?;
    Ok(())
}
