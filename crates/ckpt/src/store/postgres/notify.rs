//! Wake-up by LISTEN/NOTIFY: a commit that makes items claimable (enqueue,
//! redrive) notifies `ckpt_items_<schema>` with the job's name, and idle
//! runners waiting on that job wake at once instead of at their next poll.
//!
//! The `LISTEN` rides on the liveness session's connection (see
//! [`liveness`](super::liveness)), which the keeper thread reads: no
//! connection of its own. While that session is down, waiting falls back to
//! plain timeouts: runners still poll.

use std::collections::HashMap;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use super::PgStore;
use crate::store::ItemSignals;

/// Notifications seen so far, per job, and whether the listener still runs.
#[derive(Debug, Default)]
pub(super) struct Wakeups {
    seen: Mutex<(HashMap<String, u64>, bool)>,
    changed: Condvar,
}

impl Wakeups {
    pub(super) fn notify(&self, job: &str) {
        let mut g = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        *g.0.entry(job.to_string()).or_insert(0) += 1;
        self.changed.notify_all();
    }

    pub(super) fn set_listening(&self, on: bool) {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).1 = on;
        self.changed.notify_all();
    }

    /// True while a listener is subscribed.
    pub(super) fn is_listening(&self) -> bool {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).1
    }

    /// Waits up to `timeout` until the listener is subscribed; true if it is.
    pub(super) fn wait_listening(&self, timeout: Duration) -> bool {
        let g = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let (g, _) = self
            .changed
            .wait_timeout_while(g, timeout, |s| !s.1)
            .unwrap_or_else(|e| e.into_inner());
        g.1
    }

    /// Waits up to `timeout` for a notification about `job`; true if one
    /// came, false on timeout or when nothing is listening.
    pub(super) fn wait(&self, job: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut g = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if !g.1 {
            return false;
        }
        let start = g.0.get(job).copied().unwrap_or(0);
        loop {
            if g.0.get(job).copied().unwrap_or(0) != start {
                return true;
            }
            let now = Instant::now();
            if now >= deadline || !g.1 {
                return false;
            }
            g = self
                .changed
                .wait_timeout(g, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

/// The channel a store's notifications go to: `ckpt_items_<schema>`, or
/// for a schema name too long for that to fit PostgreSQL's 63 bytes, its
/// first 35 characters and a stable hash of the whole (every process of
/// every version derives the same name).
pub(super) fn channel(schema: &str) -> String {
    let name = format!("ckpt_items_{schema}");
    if name.len() <= 63 {
        return name;
    }
    // FNV-1a, 64 bits: small, and fixed forever, unlike std's hashers.
    let hash = schema.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    // A schema name is ASCII (see `is_identifier`): any cut is a boundary.
    format!("ckpt_items_{}_{hash:016x}", &schema[..35])
}

impl ItemSignals for PgStore {
    /// Listens on the liveness session's connection: the first call starts
    /// that session if no claim did yet, and lets it subscribe first, so
    /// that a notification right after this call is not missed. `None`
    /// while the session is down (its keeper re-establishes it at once).
    fn wait_for_items(&self, job: &str, timeout: Duration) -> Option<bool> {
        if !self.wakeups.is_listening() {
            if !self.liveness.started() {
                // Starts the keeper without waiting for its session; a
                // failure to connect shows as not listening.
                let _ =
                    self.liveness
                        .session(&self.config, &self.tls, &self.target, Duration::ZERO);
                self.wakeups.wait_listening(Duration::from_secs(2));
            }
            if !self.wakeups.is_listening() {
                return None;
            }
        }
        Some(self.wakeups.wait(job, timeout))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn channels_fit_postgres_names_and_stay_distinct() {
        assert_eq!(super::channel("ckpt"), "ckpt_items_ckpt");
        let exact = "s".repeat(52);
        assert_eq!(super::channel(&exact), format!("ckpt_items_{exact}"));
        let (a, b) = ("a".repeat(63), format!("{}b", "a".repeat(62)));
        let (ca, cb) = (super::channel(&a), super::channel(&b));
        assert_eq!((ca.len(), cb.len()), (63, 63), "{ca} {cb}");
        assert_ne!(ca, cb);
        assert_eq!(ca, super::channel(&a), "stable");
    }
}
