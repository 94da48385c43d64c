//! Python values to and from JSON (`serde_json::Value`), directly, without
//! the `json` module: cursors, states, payloads and stats are converted at
//! the call, so a dict mutated afterwards cannot change what is saved.
//!
//! What converts is what `json.dumps(v, allow_nan=False)` accepts: None,
//! bool, int (within 64 bits), finite float, str, list and tuple, dict with
//! str keys, and subclasses of those. Anything else is an
//! `InvalidInputError` naming the type and where it was found.

use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};
use serde_json::{Map, Number, Value};

use crate::errors::InvalidInputError;

/// Lists and dicts nested deeper than this are refused: the stores could
/// not read the value back (the library refuses it too; checking here
/// stops a cycle before the recursion goes deep).
const MAX_NESTING: usize = ckpt::validate::MAX_JSON_NESTING;

/// `obj` as JSON; `what` names it in errors ("cursor", "state").
pub fn to_json(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<Value> {
    convert(obj, what, 0)
}

/// `depth`: the lists and dicts `obj` is inside.
fn convert(obj: &Bound<'_, PyAny>, what: &str, depth: usize) -> PyResult<Value> {
    let nest = || {
        if depth + 1 > MAX_NESTING {
            Err(InvalidInputError::new_err(format!(
                "{what} has lists or dicts nested more than {MAX_NESTING} deep (a cycle?), \
                 more than can be read back; nothing was written"
            )))
        } else {
            Ok(())
        }
    };
    if obj.is_none() {
        return Ok(Value::Null);
    }
    // bool before int: bool is a subclass of int.
    if let Ok(b) = obj.cast::<PyBool>() {
        return Ok(Value::Bool(b.is_true()));
    }
    if obj.is_instance_of::<PyInt>() {
        if let Ok(i) = obj.extract::<i64>() {
            return Ok(Value::Number(i.into()));
        }
        if let Ok(u) = obj.extract::<u64>() {
            return Ok(Value::Number(u.into()));
        }
        // Its digits, unless Python refuses to print so many (over 4300).
        let shown = obj
            .repr()
            .map(|r| r.to_string())
            .unwrap_or_else(|_| "of thousands of digits".into());
        return Err(InvalidInputError::new_err(format!(
            "{what} holds an integer beyond 64 bits ({shown}); store it as a string; nothing was written"
        )));
    }
    if let Ok(f) = obj.cast::<PyFloat>() {
        let v = f.value();
        return Number::from_f64(v).map(Value::Number).ok_or_else(|| {
            InvalidInputError::new_err(format!(
                "{what} holds {v}, which JSON cannot represent; nothing was written"
            ))
        });
    }
    if let Ok(s) = obj.cast::<PyString>() {
        return stored_text(s, what).map(Value::String);
    }
    if let Ok(d) = obj.cast::<PyDict>() {
        nest()?;
        let mut map = Map::with_capacity(d.len());
        for (k, v) in d.iter() {
            let Ok(k) = k.cast::<PyString>() else {
                return Err(InvalidInputError::new_err(format!(
                    "{what} has a dict key of type {}; JSON keys are strings; nothing was written",
                    type_name(&k)
                )));
            };
            map.insert(stored_text(k, what)?, convert(&v, what, depth + 1)?);
        }
        return Ok(Value::Object(map));
    }
    if let Ok(l) = obj.cast::<PyList>() {
        nest()?;
        return l
            .iter()
            .map(|v| convert(&v, what, depth + 1))
            .collect::<PyResult<_>>()
            .map(Value::Array);
    }
    if let Ok(t) = obj.cast::<PyTuple>() {
        nest()?;
        return t
            .iter()
            .map(|v| convert(&v, what, depth + 1))
            .collect::<PyResult<_>>()
            .map(Value::Array);
    }
    Err(InvalidInputError::new_err(format!(
        "{what} holds a {}, which is not JSON (use None, bool, int, float, str, list, tuple \
         or dict); nothing was written",
        type_name(obj)
    )))
}

/// A Python str as UTF-8: `InvalidInputError` for one that is not valid
/// Unicode (a lone surrogate, as `os.fsdecode` makes of undecodable bytes).
pub fn text(s: &Bound<'_, PyString>, what: &str) -> PyResult<String> {
    s.to_cow().map(|t| t.into_owned()).map_err(|_| {
        InvalidInputError::new_err(format!(
            "{what} holds a str that is not valid Unicode (a lone surrogate, as from \
             undecodable bytes); nothing was written"
        ))
    })
}

/// A str inside a stored value (or a stage): [`text`], and no NUL
/// character, which not every store can keep (the library refuses it too,
/// but only at the save; this refuses it at the call).
pub fn stored_text(s: &Bound<'_, PyString>, what: &str) -> PyResult<String> {
    let t = text(s, what)?;
    if t.contains('\0') {
        return Err(InvalidInputError::new_err(format!(
            "{what} holds a NUL character (\\u0000), which not every store can keep; nothing was written"
        )));
    }
    Ok(t)
}

/// A Python str kept for people to read (an error message): each code
/// point that is not valid Unicode (a surrogate) becomes U+FFFD rather than
/// an error, so that a failure is recorded whatever its message holds.
pub fn message(s: &Bound<'_, PyString>) -> PyResult<String> {
    if let Ok(text) = s.to_cow() {
        return Ok(text.into_owned());
    }
    // `surrogatepass` writes each surrogate as its own three bytes, the
    // only sequences in the result that are not UTF-8 (a pair stays two
    // surrogates: it was two code points in the str, so it stays two
    // replacement characters).
    let bytes = s.call_method1("encode", ("utf-8", "surrogatepass"))?;
    let mut rest: &[u8] = bytes.cast::<pyo3::types::PyBytes>()?.as_bytes();
    let mut out = String::with_capacity(rest.len());
    loop {
        match std::str::from_utf8(rest) {
            Ok(valid) => {
                out.push_str(valid);
                return Ok(out);
            }
            Err(e) => {
                let (valid, bad) = rest.split_at(e.valid_up_to());
                out.push_str(std::str::from_utf8(valid).unwrap_or_default());
                out.push('\u{FFFD}');
                rest = &bad[bad.len().min(3)..];
            }
        }
    }
}

fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "?".into())
}

/// `value` as a Python object.
pub fn to_py(py: Python<'_>, value: &Value) -> PyResult<Py<PyAny>> {
    Ok(match value {
        Value::Null => py.None(),
        Value::Bool(b) => PyBool::new(py, *b).to_owned().into_any().unbind(),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                i.into_pyobject(py)?.into_any().unbind()
            } else if let Some(u) = n.as_u64() {
                u.into_pyobject(py)?.into_any().unbind()
            } else {
                n.as_f64()
                    .unwrap_or(f64::NAN)
                    .into_pyobject(py)?
                    .into_any()
                    .unbind()
            }
        }
        Value::String(s) => PyString::new(py, s).into_any().unbind(),
        Value::Array(a) => {
            let items = a
                .iter()
                .map(|v| to_py(py, v))
                .collect::<PyResult<Vec<_>>>()?;
            PyList::new(py, items)?.into_any().unbind()
        }
        Value::Object(o) => {
            let d = PyDict::new(py);
            for (k, v) in o {
                d.set_item(k, to_py(py, v)?)?;
            }
            d.into_any().unbind()
        }
    })
}

/// An optional value as a Python object (`None` for `None`).
pub fn opt_to_py(py: Python<'_>, value: Option<&Value>) -> PyResult<Py<PyAny>> {
    value.map_or_else(|| Ok(py.None()), |v| to_py(py, v))
}
