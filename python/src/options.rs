//! Options given as Python keywords, checked and turned into the
//! library's: durations in seconds, the checkpoint policy.

use std::time::Duration;

use ckpt::CheckpointPolicy;
use pyo3::prelude::*;

use crate::errors::InvalidInputError;

/// The checkpoint policy from `Store.job`'s keywords.
pub fn policy(
    always: bool,
    every_items: Option<u64>,
    every_seconds: Option<f64>,
    target_overhead: f64,
    max_interval: f64,
) -> PyResult<CheckpointPolicy> {
    // Checked whatever the policy, as every option is: a bad value is an
    // error even where another option makes it unused.
    if !(target_overhead.is_finite() && target_overhead > 0.0 && target_overhead < 1.0) {
        return Err(InvalidInputError::new_err(format!(
            "target_overhead must be between 0 and 1 (0.01 = 1 %), not {target_overhead}"
        )));
    }
    let max_interval = seconds("max_interval", max_interval)?;
    if always {
        if every_items.is_some() || every_seconds.is_some() {
            return Err(InvalidInputError::new_err(
                "always=True saves at every call: it takes no every_items or every_seconds",
            ));
        }
        return Ok(CheckpointPolicy::Always);
    }
    if every_items.is_some() || every_seconds.is_some() {
        if every_items == Some(0) {
            return Err(InvalidInputError::new_err(
                "every_items must be at least 1 (or use always=True)",
            ));
        }
        return Ok(CheckpointPolicy::Every {
            items: every_items,
            interval: every_seconds
                .map(|s| seconds("every_seconds", s))
                .transpose()?,
        });
    }
    Ok(CheckpointPolicy::Adaptive {
        target_overhead,
        max_interval,
    })
}

/// `value` seconds as a duration: finite, positive.
pub fn seconds(what: &str, value: f64) -> PyResult<Duration> {
    if value.is_finite() && value > 0.0 && value < 1e9 {
        Ok(Duration::from_secs_f64(value))
    } else {
        Err(InvalidInputError::new_err(format!(
            "{what} must be a positive number of seconds, not {value}"
        )))
    }
}

/// A whole-number argument of type `$ty` named `$name`, for
/// `#[pyo3(from_py_with = …)]`: an int out of the type's range (negative,
/// or too large) is bad input, an `InvalidInputError` that names the
/// argument and the range, not a bare `OverflowError`. Anything that is no
/// int stays a `TypeError`, as for any argument.
macro_rules! whole_arg {
    ($fn:ident, $name:literal, $ty:ty) => {
        whole_arg!($fn, $name, $ty, <$ty>::MAX as u64);
    };
    ($fn:ident, $name:literal, $ty:ty, $max:expr) => {
        pub fn $fn(value: &Bound<'_, PyAny>) -> PyResult<$ty> {
            $crate::options::whole::<$ty>($name, value, $max)
        }
    };
}

/// A number argument named `$name` (as `f64`): an int too large for a
/// float is bad input, not an `OverflowError`.
macro_rules! number_arg {
    ($fn:ident, $name:literal) => {
        pub fn $fn(value: &Bound<'_, PyAny>) -> PyResult<f64> {
            $crate::options::number($name, value)
        }
    };
}

/// As `whole_arg!`, for an optional argument (`None` allowed).
macro_rules! opt_arg {
    ($fn:ident, $inner:path, $ty:ty) => {
        pub fn $fn(value: &Bound<'_, PyAny>) -> PyResult<Option<$ty>> {
            if value.is_none() {
                Ok(None)
            } else {
                $inner(value).map(Some)
            }
        }
    };
}

/// The arguments checked this way, by the methods that take them.
pub mod args {
    use pyo3::prelude::*;

    whole_arg!(every_items, "every_items", u64);
    whole_arg!(max_attempts, "max_attempts", u32);
    // Counts the stores take as SQL integers (i64).
    whole_arg!(max, "max", usize, i64::MAX as u64);
    whole_arg!(limit, "limit", usize, i64::MAX as u64);
    whole_arg!(workers, "workers", usize, 1024);
    whole_arg!(prefetch_value, "prefetch", usize, i64::MAX as u64);
    whole_arg!(items_processed, "items_processed", u64);
    number_arg!(lease, "lease");
    number_arg!(every_seconds_value, "every_seconds");
    number_arg!(target_overhead, "target_overhead");
    number_arg!(max_interval, "max_interval");
    number_arg!(backoff, "backoff");
    number_arg!(backoff_factor, "backoff_factor");
    number_arg!(max_backoff, "max_backoff");
    number_arg!(jitter, "jitter");
    opt_arg!(every_items_opt, every_items, u64);
    opt_arg!(every_seconds, every_seconds_value, f64);
    opt_arg!(prefetch, prefetch_value, usize);
}

/// `value` as a whole number from 0 to `max` (see `whole_arg!`); a lower
/// bound above 0 is the method's to check, with its own message.
pub fn whole<T: TryFrom<u64>>(name: &str, value: &Bound<'_, PyAny>, max: u64) -> PyResult<T> {
    let out_of_range = || {
        InvalidInputError::new_err(format!(
            "{name} must be a whole number from 0 to {max}, not {}",
            repr(value)
        ))
    };
    // Any int, or an object with `__index__` (numpy's ints).
    match value.extract::<u64>() {
        Ok(n) if n <= max => T::try_from(n).map_err(|_| out_of_range()),
        Ok(_) => Err(out_of_range()),
        Err(e) if e.is_instance_of::<pyo3::exceptions::PyOverflowError>(value.py()) => {
            Err(out_of_range())
        }
        Err(e) => Err(e),
    }
}

/// `value` as a float (see `number_arg!`).
pub fn number(name: &str, value: &Bound<'_, PyAny>) -> PyResult<f64> {
    value.extract::<f64>().map_err(|e| {
        if e.is_instance_of::<pyo3::exceptions::PyOverflowError>(value.py()) {
            InvalidInputError::new_err(format!("{name} is out of a float's range: {}", repr(value)))
        } else {
            e
        }
    })
}

/// The value as Python writes it, cut short (an int may have thousands of
/// digits).
fn repr(value: &Bound<'_, PyAny>) -> String {
    let text = value
        .repr()
        .map(|r| r.to_string())
        .unwrap_or_else(|_| "?".into());
    match text.char_indices().nth(40) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text,
    }
}
