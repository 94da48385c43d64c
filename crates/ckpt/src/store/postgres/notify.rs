//! Wake-up by LISTEN/NOTIFY: a commit that makes items claimable (enqueue,
//! redrive) notifies `ckpt_items_<schema>` with the job's name, and idle
//! runners waiting on that job wake at once instead of at their next poll.
//!
//! The listening connection is driven by a thread of its own. If it fails,
//! waiting falls back to plain timeouts: runners still poll.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::poll_fn;
use tokio_postgres::AsyncMessage;

use super::tls::MakeTls;
use super::PgStore;
use crate::store::ItemSignals;

/// Notifications seen so far, per job, and whether the listener still runs.
#[derive(Debug, Default)]
pub(super) struct Wakeups {
    seen: Mutex<(HashMap<String, u64>, bool)>,
    changed: Condvar,
}

impl Wakeups {
    fn notify(&self, job: &str) {
        let mut g = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        *g.0.entry(job.to_string()).or_insert(0) += 1;
        self.changed.notify_all();
    }

    fn set_listening(&self, on: bool) {
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

/// The channel a store's notifications go to.
pub(super) fn channel(schema: &str) -> String {
    format!("ckpt_items_{schema}")
}

/// Starts the listening thread; it ends when `stop` is dropped.
pub(super) fn listen(
    config: tokio_postgres::Config,
    tls: MakeTls,
    schema: &str,
    wakeups: Arc<Wakeups>,
) -> std::sync::mpsc::Sender<()> {
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    let channel = channel(schema);
    let spawned = std::thread::Builder::new()
        .name("ckpt-listen".into())
        .spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async {
                let Ok((client, mut connection)) = config.connect(tls).await else {
                    return;
                };
                let events = wakeups.clone();
                let driver = tokio::spawn(async move {
                    while let Some(message) = poll_fn(|cx| connection.poll_message(cx)).await {
                        match message {
                            Ok(AsyncMessage::Notification(n)) => events.notify(n.payload()),
                            Ok(_) => {}
                            Err(_) => break,
                        }
                    }
                    events.set_listening(false);
                });
                if client
                    .batch_execute(&format!("LISTEN {channel}"))
                    .await
                    .is_err()
                {
                    return;
                }
                wakeups.set_listening(true);
                // Wait for the store to go away (or the connection to end).
                let stopper = tokio::task::spawn_blocking(move || {
                    let _ = stopped.recv();
                });
                tokio::select! {
                    _ = stopper => {}
                    _ = driver => {}
                }
                wakeups.set_listening(false);
                drop(client);
            });
            // Do not wait for the blocked `recv`: it ends when the store
            // drops or replaces this listener.
            runtime.shutdown_background();
        });
    if spawned.is_err() {
        tracing::warn!("cannot start the LISTEN thread; idle runners will poll");
    }
    stop
}

impl ItemSignals for PgStore {
    /// Starts the listener on the first call, and again (at most every
    /// 5 s) after it ended; `None` while it is down.
    fn wait_for_items(&self, job: &str, timeout: Duration) -> Option<bool> {
        if !self.wakeups.is_listening() {
            let mut listener = self.listener.lock().unwrap_or_else(|e| e.into_inner());
            let due = listener
                .as_ref()
                .is_none_or(|(_, started)| started.elapsed() >= Duration::from_secs(5));
            if due {
                // Replacing the old sender stops the old thread, if any.
                *listener = Some((
                    listen(
                        self.config.clone(),
                        self.tls.clone(),
                        &self.schema,
                        self.wakeups.clone(),
                    ),
                    std::time::Instant::now(),
                ));
                drop(listener);
                // Let it subscribe first, so that a notification right
                // after this call is not missed.
                self.wakeups.wait_listening(Duration::from_secs(2));
            }
            if !self.wakeups.is_listening() {
                return None;
            }
        }
        Some(self.wakeups.wait(job, timeout))
    }
}
