//! `--timeout`: a command that runs longer is stopped, with its process
//! group, by the same path as a command whose lease is lost (SIGTERM, then
//! SIGKILL [`KILL_AFTER`](super::children::KILL_AFTER) later, see
//! [`Children::stop_one`]); its attempt fails with `timed out after …`.
//!
//! One thread keeps every deadline, rather than a thread per command: it
//! sleeps until the earliest one.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::children::{Children, KILL_AFTER};

/// The deadlines of the running commands, by process id.
pub struct Timeouts {
    limit: Duration,
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Default)]
struct State {
    armed: HashMap<u32, Instant>,
    /// Commands that were stopped because their time was up.
    fired: HashSet<u32>,
}

impl Timeouts {
    /// Starts the thread that stops the commands of `children` running
    /// longer than `limit`.
    pub fn start(limit: Duration, children: Arc<Children>) -> Result<Arc<Timeouts>> {
        let timeouts = Arc::new(Timeouts {
            limit,
            state: Mutex::default(),
            changed: Condvar::new(),
        });
        let t = Arc::clone(&timeouts);
        std::thread::Builder::new()
            .name("ckpt-timeout".into())
            .spawn(move || t.watch(&children))
            .context("cannot start the timeout thread")?;
        Ok(timeouts)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The error of an attempt that ran out of time: `timed out after 30s`.
    pub fn error(&self) -> String {
        format!("timed out after {}", humantime::format_duration(self.limit))
    }

    /// Starts the clock of command `pid`, just started (none for a limit
    /// beyond what the clock can count to).
    pub fn arm(&self, pid: u32) {
        if let Some(deadline) = Instant::now().checked_add(self.limit) {
            self.lock().armed.insert(pid, deadline);
            self.changed.notify_one();
        }
    }

    /// Stops the clock of command `pid`, which exited; true if and only if
    /// it was stopped because its time was up.
    pub fn disarm(&self, pid: u32) -> bool {
        let mut g = self.lock();
        g.armed.remove(&pid);
        g.fired.remove(&pid)
    }

    fn watch(&self, children: &Arc<Children>) {
        let mut g = self.lock();
        loop {
            let now = Instant::now();
            let due: Vec<u32> = g
                .armed
                .iter()
                .filter(|(_, &at)| at <= now)
                .map(|(&pid, _)| pid)
                .collect();
            for pid in &due {
                g.armed.remove(pid);
                g.fired.insert(*pid);
            }
            if !due.is_empty() {
                drop(g);
                for pid in due {
                    tracing::warn!(
                        event = "timeout",
                        pid,
                        "{}: stopping the command",
                        self.error()
                    );
                    // Signals only a command still registered, so a reaped
                    // command's reused pid is never hit.
                    children.stop_one(pid, KILL_AFTER);
                }
                g = self.lock();
                continue;
            }
            g = match g.armed.values().min().copied() {
                Some(at) => {
                    let wait = at.saturating_duration_since(now);
                    self.changed
                        .wait_timeout(g, wait)
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
                None => self.changed.wait(g).unwrap_or_else(|e| e.into_inner()),
            };
        }
    }
}
