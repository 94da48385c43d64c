//! `Job.checkpoint` with the fast calling convention.
//!
//! `checkpoint()` is the call made once per item, so its cost is what a
//! loop pays for ckpt (the target: at most 3× an empty Python method). This
//! wheel is built for the stable ABI of Python 3.9 so that one wheel serves
//! every Python from 3.9 on, and that ABI only offers methods the old
//! calling convention, a tuple plus a dict of keywords, whose keyword names
//! PyO3 must turn into UTF-8 to match: measured, `checkpoint(i,
//! items_processed=i)` took 3.6–4.2× the empty method that way, against
//! 2.3× with the fast convention of 3.10's stable ABI.
//!
//! So this one method is registered by hand with `METH_FASTCALL |
//! METH_KEYWORDS` (PEP 590's vector of arguments plus a tuple of keyword
//! names): CPython has called methods that way since 3.7, so every
//! interpreter that can load this wheel (CPython 3.9 and later) supports
//! it; the flag only entered the stable ABI's headers in 3.10. Keyword
//! names are matched by pointer against interned strings (the compiler
//! interns the names in calls), with equality as the fallback.
//!
//! Everything after the arguments is `Job::record`, shared with nothing
//! else: this file only parses, and turns the result or error into what
//! CPython expects.

use std::ffi::c_int;
use std::panic::{catch_unwind, AssertUnwindSafe};

use pyo3::exceptions::{PyRuntimeError, PyTypeError};
use pyo3::ffi;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyString, PyTuple};

use crate::job::Job;

/// `METH_FASTCALL`, as CPython defines it (see the module documentation).
const METH_FASTCALL: c_int = 0x0080;

type FastWithKeywords = unsafe extern "C" fn(
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> *mut ffi::PyObject;

const DOC: &std::ffi::CStr =
    c"checkpoint($self, cursor, items_processed=None, *, stage=None, state=None)
--

Records progress, and persists it when the policy says a save is due (then
renews the lease too); returns whether it saved. Call it after every item:
when nothing is due it costs about as much as an empty method call plus
converting its arguments.

``cursor`` and ``state`` are any JSON values, converted at the call (a dict
changed afterwards does not change what is saved; build a large state only
when ``is_due()``). ``items_processed`` defaults to the previous call's value
plus one. Raises InvalidInputError (not JSON, state over the size limit,
``items_processed`` negative or over 2**64-1) and TypeError (an argument of
the wrong type) with nothing written, and FencedError when the lease was
lost.";

/// Installs `checkpoint` on the `Job` type.
pub fn install(py: Python<'_>) -> PyResult<()> {
    let fast: FastWithKeywords = checkpoint;
    let def = Box::leak(Box::new(ffi::PyMethodDef {
        ml_name: c"checkpoint".as_ptr(),
        // SAFETY: function pointers all have one size and representation;
        // the flags tell CPython the real signature, and it calls this one
        // only as that.
        ml_meth: ffi::PyMethodDefPointer {
            PyCFunction: unsafe { std::mem::transmute::<FastWithKeywords, ffi::PyCFunction>(fast) },
        },
        ml_flags: METH_FASTCALL | ffi::METH_KEYWORDS,
        ml_doc: DOC.as_ptr(),
    }));
    let ty = py.get_type::<Job>();
    // SAFETY: `def` lives for the rest of the process; the type pointer is
    // valid while `ty` is held. A new reference or NULL with an exception.
    let descr = unsafe {
        let p = ffi::PyDescr_NewMethod(ty.as_type_ptr(), def);
        Bound::from_owned_ptr_or_err(py, p)?
    };
    ty.setattr("checkpoint", descr)
}

/// The method itself: CPython holds the GIL when it calls it.
unsafe extern "C" fn checkpoint(
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: called by CPython with the GIL held.
    let py = unsafe { Python::assume_attached() };
    let result = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: CPython passes `nargs` positional arguments followed by
        // one per name in `kwnames` (a tuple, or NULL), all borrowed for
        // the call, and `slf` is an instance of the type the method was
        // installed on.
        unsafe { call(py, slf, args, nargs, kwnames) }
    }));
    let result = result.unwrap_or_else(|_| {
        Err(PyRuntimeError::new_err(
            "ckpt: Job.checkpoint panicked (a bug: please report it)",
        ))
    });
    match result {
        Ok(saved) => PyBool::new(py, saved).to_owned().into_ptr(),
        Err(e) => {
            e.restore(py);
            std::ptr::null_mut()
        }
    }
}

unsafe fn call(
    py: Python<'_>,
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> PyResult<bool> {
    let nargs = nargs.max(0) as usize;
    // SAFETY: see `checkpoint`.
    let arg = |i: usize| unsafe { Borrowed::from_ptr(py, *args.add(i)) };
    if nargs > 2 {
        return Err(PyTypeError::new_err(format!(
            "checkpoint() takes at most 2 positional arguments (cursor, items_processed), \
             {nargs} given"
        )));
    }
    let mut slots: [Option<Borrowed<'_, '_, PyAny>>; 4] = [None; 4];
    for (i, slot) in slots.iter_mut().enumerate().take(nargs) {
        *slot = Some(arg(i));
    }
    if !kwnames.is_null() {
        // SAFETY: a tuple of str, borrowed for the call.
        let names = unsafe { Borrowed::from_ptr(py, kwnames) };
        let names = names.cast::<PyTuple>()?;
        let known = [
            intern!(py, "cursor"),
            intern!(py, "items_processed"),
            intern!(py, "stage"),
            intern!(py, "state"),
        ];
        for (k, name) in names.iter().enumerate() {
            let index = match known.iter().position(|n| name.is(n)) {
                Some(i) => i,
                None => known
                    .iter()
                    .position(|n| name.eq(n).unwrap_or(false))
                    .ok_or_else(|| {
                        PyTypeError::new_err(format!(
                            "checkpoint() got an unexpected keyword argument '{name}'"
                        ))
                    })?,
            };
            if slots[index].is_some() {
                return Err(PyTypeError::new_err(format!(
                    "checkpoint() got multiple values for argument '{}'",
                    known[index]
                )));
            }
            slots[index] = Some(arg(nargs + k));
        }
    }
    let [cursor, items_processed, stage, state] = slots;
    let Some(cursor) = cursor else {
        return Err(PyTypeError::new_err(
            "checkpoint() missing 1 required argument: 'cursor'",
        ));
    };
    // SAFETY: see `checkpoint`.
    let slf = unsafe { Borrowed::from_ptr(py, slf) };
    let mut job = slf.cast::<Job>()?.try_borrow_mut()?;
    let stage = stage.filter(|s| !s.is_none());
    if let Some(s) = &stage {
        if !s.is_instance_of::<PyString>() {
            return Err(PyTypeError::new_err("stage must be a str or None"));
        }
    }
    job.record(
        py,
        &cursor,
        items_processed.filter(|v| !v.is_none()).as_deref(),
        stage.as_deref(),
        state.filter(|v| !v.is_none()).as_deref(),
    )
}
