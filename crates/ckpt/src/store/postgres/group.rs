//! Group commit of checkpoint saves: many jobs saving at once in one
//! process share a transaction, so they share its commit (one WAL flush on
//! the server) instead of paying one each.
//!
//! The first caller to find no batch in progress becomes the leader: it
//! takes every save queued so far, runs them in one transaction with their
//! statements pipelined on one connection, hands each caller its own result
//! (a fenced save is refused alone; the others commit), and goes on while
//! more saves arrived meanwhile. Everyone else waits for their result.

use std::sync::{Arc, Condvar, Mutex};

use futures_util::future::join_all;

use super::sql::save_fenced;
use super::{pg_err, PgStore};
use crate::error::{Error, Result};
use crate::model::{Checkpoint, JobLease};
use crate::time::Timestamp;

/// One save waiting for its batch.
pub(super) struct Save {
    lease: JobLease,
    checkpoint: Checkpoint,
    history_keep: usize,
    lease_until: Timestamp,
    now: Timestamp,
    done: Arc<Slot>,
}

#[derive(Default)]
struct Slot {
    result: Mutex<Option<Result<()>>>,
    ready: Condvar,
}

impl Slot {
    fn set(&self, r: Result<()>) {
        *self.result.lock().unwrap_or_else(|e| e.into_inner()) = Some(r);
        self.ready.notify_all();
    }

    fn wait(&self) -> Result<()> {
        let mut g = self.result.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(r) = g.take() {
                return r;
            }
            g = self.ready.wait(g).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// The queue of saves and whether a leader is running it.
#[derive(Default)]
pub(super) struct GroupCommit {
    state: Mutex<(Vec<Save>, bool)>,
}

/// The same error again, for every save of a failed batch.
fn replicate(e: &Error) -> Error {
    match e {
        Error::Busy(m) => Error::Busy(m.clone()),
        Error::Unavailable(m) => Error::Unavailable(m.clone()),
        Error::Fenced(m) => Error::Fenced(m.clone()),
        other => Error::Storage(other.to_string()),
    }
}

impl PgStore {
    /// Saves a checkpoint, sharing a transaction with the saves of other
    /// threads that arrive meanwhile.
    pub(super) fn save_grouped(
        &self,
        lease: &JobLease,
        checkpoint: &Checkpoint,
        history_keep: usize,
        lease_until: Timestamp,
        now: Timestamp,
    ) -> Result<()> {
        let done = Arc::new(Slot::default());
        let save = Save {
            lease: lease.clone(),
            checkpoint: checkpoint.clone(),
            history_keep,
            lease_until,
            now,
            done: done.clone(),
        };
        {
            let mut g = self.group.state.lock().unwrap_or_else(|e| e.into_inner());
            g.0.push(save);
            if g.1 {
                drop(g);
                return done.wait();
            }
            g.1 = true;
        }
        loop {
            let batch = {
                let mut g = self.group.state.lock().unwrap_or_else(|e| e.into_inner());
                if g.0.is_empty() {
                    g.1 = false;
                    break;
                }
                std::mem::take(&mut g.0)
            };
            match self.save_batch(&batch) {
                Ok(results) => {
                    for (save, r) in batch.iter().zip(results) {
                        save.done.set(r);
                    }
                }
                Err(e) => {
                    for save in &batch {
                        save.done.set(Err(replicate(&e)));
                    }
                }
            }
        }
        done.wait()
    }

    /// Runs the saves in one transaction (or alone, for a batch of one);
    /// one result per save. The outer `Err` failed them all.
    fn save_batch(&self, batch: &[Save]) -> Result<Vec<Result<()>>> {
        self.block(async {
            let client = self.client().await?;
            if let [single] = batch {
                return Ok(vec![save_one(&client, single).await]);
            }
            client.batch_execute("BEGIN").await.map_err(pg_err)?;
            // Issued together, the statements are pipelined on the connection.
            let results = join_all(batch.iter().map(|s| save_one(&client, s))).await;
            let fatal = results.iter().find_map(|r| match r {
                Err(e) if !e.is_fenced() => Some(replicate(e)),
                _ => None,
            });
            if let Some(e) = fatal {
                if client.batch_execute("ROLLBACK").await.is_err() {
                    drop(deadpool_postgres::Object::take(client));
                }
                return Err(e);
            }
            client.batch_execute("COMMIT").await.map_err(pg_err)?;
            Ok(results)
        })
    }
}

fn save_one<'a>(
    conn: &'a deadpool_postgres::Object,
    s: &'a Save,
) -> impl std::future::Future<Output = Result<()>> + 'a {
    save_fenced(
        conn,
        &s.lease,
        &s.checkpoint,
        s.history_keep,
        s.lease_until,
        s.now,
    )
}

impl std::fmt::Debug for GroupCommit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GroupCommit")
    }
}
