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
    if !(target_overhead.is_finite() && target_overhead > 0.0 && target_overhead < 1.0) {
        return Err(InvalidInputError::new_err(format!(
            "target_overhead must be between 0 and 1 (0.01 = 1 %), not {target_overhead}"
        )));
    }
    Ok(CheckpointPolicy::Adaptive {
        target_overhead,
        max_interval: seconds("max_interval", max_interval)?,
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
