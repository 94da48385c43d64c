//! The jobs that live [`Job`](super::Job) handles of one [`Ckpt`] (and its
//! clones) hold, so that the same worker cannot hold a job twice.
//!
//! The store lets a job's owner acquire it again (a worker re-acquiring
//! after dropping its handle, which cannot release on drop), which bumps
//! the epoch and fences the first handle only at its next write: until
//! then two loops of one worker would run the same job. This registry,
//! shared by a `Ckpt` and its clones, refuses the second while the first
//! handle lives; [`Ckpt::new_worker`](crate::Ckpt::new_worker) handles are
//! other workers, which the store itself keeps apart.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};

/// The `(owner, job)` pairs held by live handles.
#[derive(Debug, Default, Clone)]
pub(crate) struct HeldJobs(Arc<Mutex<HashSet<(String, String)>>>);

impl HeldJobs {
    /// Marks `job` held by `owner` until the returned guard is dropped;
    /// [`Error::Busy`] if a live handle of `owner` holds it already.
    pub(crate) fn hold(&self, owner: &str, job: &str) -> Result<HeldGuard> {
        let key = (owner.to_string(), job.to_string());
        let mut held = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if !held.insert(key.clone()) {
            return Err(Error::Busy(format!(
                "job '{job}' is held by this worker already ({owner}, through another Job handle): complete or release that one first, or take a second worker with Ckpt::new_worker()"
            )));
        }
        Ok(HeldGuard {
            jobs: self.clone(),
            key,
        })
    }
}

/// Held while a [`Job`](super::Job) handle lives.
#[derive(Debug)]
pub(crate) struct HeldGuard {
    jobs: HeldJobs,
    key: (String, String),
}

impl Drop for HeldGuard {
    fn drop(&mut self) {
        let mut held = self.jobs.0.lock().unwrap_or_else(|e| e.into_inner());
        held.remove(&self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pair_is_held_once_until_its_guard_drops() {
        let jobs = HeldJobs::default();
        let guard = jobs.hold("w1", "j").unwrap();
        assert!(matches!(jobs.hold("w1", "j"), Err(Error::Busy(_))));
        assert!(matches!(jobs.clone().hold("w1", "j"), Err(Error::Busy(_))));
        // Another worker, another job: the store's business, not this.
        let _other_worker = jobs.hold("w2", "j").unwrap();
        let _other_job = jobs.hold("w1", "k").unwrap();
        drop(guard);
        let _again = jobs.hold("w1", "j").unwrap();
    }
}
