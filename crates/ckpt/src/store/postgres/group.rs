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

use super::checkpoint::save_fenced;
use super::conn::{in_tx, pg_err, with_client};
use super::PgStore;
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

/// Where a waiting save stands.
enum Turn {
    Waiting,
    /// Its batch ran: here is its result.
    Done(Result<()>),
    /// The previous leader's own save is done: this caller leads now.
    Lead,
}

struct Slot {
    turn: Mutex<Turn>,
    ready: Condvar,
}

impl Default for Slot {
    fn default() -> Self {
        Slot {
            turn: Mutex::new(Turn::Waiting),
            ready: Condvar::new(),
        }
    }
}

impl Slot {
    fn set(&self, turn: Turn) {
        *self.turn.lock().unwrap_or_else(|e| e.into_inner()) = turn;
        self.ready.notify_all();
    }

    /// Waits until this save is done (`Some`) or its caller must lead (`None`).
    fn wait(&self) -> Option<Result<()>> {
        let mut g = self.turn.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            match std::mem::replace(&mut *g, Turn::Waiting) {
                Turn::Done(r) => return Some(r),
                Turn::Lead => return None,
                Turn::Waiting => g = self.ready.wait(g).unwrap_or_else(|e| e.into_inner()),
            }
        }
    }

    fn is_done(&self) -> bool {
        matches!(
            *self.turn.lock().unwrap_or_else(|e| e.into_inner()),
            Turn::Done(_)
        )
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
        Error::InvalidInput(m) => Error::InvalidInput(m.clone()),
        Error::NotFound(m) => Error::NotFound(m.clone()),
        Error::Storage(m) => Error::Storage(m.clone()),
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
        // From within an interrupt check (a signal handler run between the
        // waits of this thread's own save): alone, since the group may be
        // waiting for that save, which waits for this one.
        let alone = || {
            with_client!(self, |client| {
                save_fenced(client, lease, checkpoint, history_keep, lease_until, now).await
            })
        };
        if crate::interrupt::in_check() {
            return alone();
        }
        // Fast path: nobody is saving, so save directly, without copying
        // the checkpoint into the queue; then pass the lead to whoever
        // queued meanwhile.
        {
            let mut g = self.group.state.lock().unwrap_or_else(|e| e.into_inner());
            if !g.1 {
                g.1 = true;
                drop(g);
                let result = alone();
                let mut g = self.group.state.lock().unwrap_or_else(|e| e.into_inner());
                match g.0.first() {
                    Some(next) => next.done.set(Turn::Lead),
                    None => g.1 = false,
                }
                return result;
            }
        }
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
                if let Some(result) = done.wait() {
                    return result;
                }
                // Handed the lead: this caller's save is still queued.
            } else {
                g.1 = true;
            }
        }
        // A batch carries other threads' saves: one thread's interrupt
        // (`crate::interrupt`) must not abandon theirs.
        crate::interrupt::without_check(|| self.lead(&done))
    }

    /// Runs batches until this caller's own save is done, then hands the
    /// lead to the next queued save (so no caller serves others forever).
    fn lead(&self, mine: &Slot) -> Result<()> {
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
                        save.done.set(Turn::Done(r));
                    }
                }
                // One save the server refuses (a value it cannot store)
                // must not fail its neighbours: each alone, so that only it
                // fails. An outage or a busy server fails them all alike.
                Err(e) if batch.len() > 1 && !e.is_transient() => {
                    for save in &batch {
                        let alone = self
                            .save_batch(std::slice::from_ref(save))
                            .and_then(|mut r| r.pop().unwrap_or(Ok(())));
                        save.done.set(Turn::Done(alone));
                    }
                }
                Err(e) => {
                    for save in &batch {
                        save.done.set(Turn::Done(Err(replicate(&e))));
                    }
                }
            }
            if mine.is_done() {
                let mut g = self.group.state.lock().unwrap_or_else(|e| e.into_inner());
                match g.0.first() {
                    Some(next) => next.done.set(Turn::Lead),
                    None => g.1 = false,
                }
                break;
            }
        }
        mine.wait()
            .unwrap_or_else(|| Err(Error::Storage("group commit lost a save".into())))
    }

    /// Runs the saves in one transaction (or alone, for a batch of one);
    /// one result per save. The outer `Err` failed them all.
    fn save_batch(&self, batch: &[Save]) -> Result<Vec<Result<()>>> {
        self.call(async {
            // Discarded, not pooled, unless the batch ends cleanly: a call
            // dropped by the response timeout (or a COMMIT that failed)
            // must not hand a connection inside a transaction to the next.
            let held = super::conn::InTx::new(self.client().await?);
            let client = held.client();
            if let ([single], true) = (batch, self.pooler().keeps_sessions()) {
                let result = save_one(client, single).await;
                held.ended();
                return Ok(vec![result]);
            }
            client
                .batch_execute(&self.begin_statement())
                .await
                .map_err(pg_err)?;
            // Issued together, the statements are pipelined on the connection.
            let results = join_all(batch.iter().map(|s| save_one(client, s))).await;
            let fatal = results.iter().find_map(|r| match r {
                Err(e) if !e.is_fenced() => Some(replicate(e)),
                _ => None,
            });
            self.leave(&client.statement_cache);
            if let Some(e) = fatal {
                if client.batch_execute("ROLLBACK").await.is_ok() {
                    held.ended();
                }
                return Err(e);
            }
            client.batch_execute("COMMIT").await.map_err(pg_err)?;
            held.ended();
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
