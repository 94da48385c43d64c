//! Transactions shared with the caller: exactly-once for database sinks.

use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use super::sql::{apply_update, save_fenced};
use super::{pg_err, PgStore};
use crate::error::Result;
use crate::model::{Checkpoint, ItemUpdate, JobLease};
use crate::time::Timestamp;

/// The caller's side of a transaction that also saves a checkpoint or
/// completes an item (exactly-once for a sink in the same database). Its
/// statements run on the transaction's connection; the store commits after
/// its own fenced write, or rolls everything back.
pub struct PgTx<'a> {
    store: &'a PgStore,
    client: &'a deadpool_postgres::Object,
}

impl PgTx<'_> {
    /// Runs a statement; returns the rows changed.
    pub fn execute(&mut self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<u64> {
        self.store
            .block(self.client.execute(sql, params))
            .map_err(pg_err)
    }

    /// Runs a query; returns its rows.
    pub fn query(&mut self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>> {
        self.store
            .block(self.client.query(sql, params))
            .map_err(pg_err)
    }
}

/// The store's own write in a caller's transaction.
enum StoreWrite<'a> {
    Checkpoint {
        lease: &'a JobLease,
        checkpoint: &'a Checkpoint,
        history_keep: usize,
        lease_until: Timestamp,
        now: Timestamp,
    },
    Item {
        update: &'a ItemUpdate,
        now: Timestamp,
    },
}

impl PgStore {
    /// Runs `f` and then `write` in one transaction on one connection:
    /// commits when both succeed, rolls back otherwise.
    fn with_caller_tx<T>(
        &self,
        f: impl FnOnce(&mut PgTx<'_>) -> Result<T>,
        write: StoreWrite<'_>,
    ) -> Result<T> {
        let client = self.block(self.client())?;
        self.block(client.batch_execute("BEGIN")).map_err(pg_err)?;
        // A panic in the caller's code must not hand a connection that is
        // inside a transaction back to the pool: roll back, then re-raise.
        let called = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            f(&mut PgTx {
                store: self,
                client: &client,
            })
        }));
        let called = match called {
            Ok(r) => r,
            Err(panic) => {
                if self.block(client.batch_execute("ROLLBACK")).is_err() {
                    drop(deadpool_postgres::Object::take(client));
                }
                std::panic::resume_unwind(panic);
            }
        };
        let result = called.and_then(|out| {
            let written = match write {
                StoreWrite::Checkpoint {
                    lease,
                    checkpoint,
                    history_keep,
                    lease_until,
                    now,
                } => self.block(save_fenced(
                    &client,
                    lease,
                    checkpoint,
                    history_keep,
                    lease_until,
                    now,
                )),
                StoreWrite::Item { update, now } => self.block(apply_update(&client, update, now)),
            };
            written.map(|()| out)
        });
        match result {
            Ok(out) => {
                self.block(client.batch_execute("COMMIT")).map_err(pg_err)?;
                Ok(out)
            }
            Err(e) => {
                if self.block(client.batch_execute("ROLLBACK")).is_err() {
                    // Never hand a connection stuck in a transaction back to the pool.
                    drop(deadpool_postgres::Object::take(client));
                }
                Err(e)
            }
        }
    }

    /// Runs `f` and saves the checkpoint in one transaction, fenced like
    /// [`Store::save_checkpoint`]: see `Job::checkpoint_with_postgres`.
    pub fn save_checkpoint_with<T>(
        &self,
        lease: &JobLease,
        checkpoint: &Checkpoint,
        history_keep: usize,
        lease_until: Timestamp,
        now: Timestamp,
        f: impl FnOnce(&mut PgTx<'_>) -> Result<T>,
    ) -> Result<T> {
        self.with_caller_tx(
            f,
            StoreWrite::Checkpoint {
                lease,
                checkpoint,
                history_keep,
                lease_until,
                now,
            },
        )
    }

    /// Runs `f` and applies `update` in one transaction; a fenced update
    /// rolls everything back: see `Queue::complete_with_postgres`.
    pub fn update_item_with<T>(
        &self,
        update: &ItemUpdate,
        now: Timestamp,
        f: impl FnOnce(&mut PgTx<'_>) -> Result<T>,
    ) -> Result<T> {
        self.with_caller_tx(f, StoreWrite::Item { update, now })
    }
}
