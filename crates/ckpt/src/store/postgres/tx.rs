//! Transactions shared with the caller: exactly-once for database sinks.

use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use super::checkpoint::save_fenced;
use super::conn::{pg_err, InTx};
use super::patch::apply_update;
use super::PgStore;
use crate::error::{Error, Result};
use crate::store::{SharedTx, TxWrite};
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
            .call(async { self.client.execute(sql, params).await.map_err(pg_err) })
    }

    /// Runs a query; returns its rows.
    pub fn query(&mut self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>> {
        self.store
            .call(async { self.client.query(sql, params).await.map_err(pg_err) })
    }
}

impl SharedTx for PgStore {
    /// A handle on the transaction's connection: `execute` and `query`.
    type Tx<'t> = PgTx<'t>;

    fn with_tx<T>(
        &self,
        write: TxWrite<'_>,
        now: Timestamp,
        f: impl FnOnce(&mut PgTx<'_>) -> Result<T>,
    ) -> Result<T> {
        // Every statement runs under the response timeout (`PgStore::call`).
        let batch = |client: &deadpool_postgres::Object, sql: &str| {
            self.call(async { client.batch_execute(sql).await.map_err(pg_err) })
        };
        // Discarded, never pooled, unless the transaction ends cleanly: a
        // panic (the caller's code, or a row that does not read), or a
        // statement left unanswered, drops it.
        let held = InTx::new(self.call(self.client())?);
        let client = held.client();
        batch(client, &self.begin_statement())?;
        let called = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            f(&mut PgTx {
                store: self,
                client,
            })
        }));
        let called = match called {
            Ok(r) => r,
            Err(panic) => {
                self.leave(&client.statement_cache);
                if batch(client, "ROLLBACK").is_ok() {
                    held.ended();
                }
                std::panic::resume_unwind(panic);
            }
        };
        let result = called.and_then(|out| {
            let written = match write {
                TxWrite::SaveCheckpoint {
                    lease,
                    checkpoint,
                    history_keep,
                    lease_until,
                } => self.call(save_fenced(
                    client,
                    lease,
                    checkpoint,
                    history_keep,
                    lease_until,
                    now,
                )),
                TxWrite::UpdateItem(update) => self.call(apply_update(client, update, None, now)),
            };
            written.map(|()| out)
        });
        self.leave(&client.statement_cache);
        match result {
            Ok(out) => {
                batch(client, "COMMIT")?;
                held.ended();
                Ok(out)
            }
            // The connection is in doubt (a statement went unanswered, and
            // would hold a ROLLBACK up as long again): dropped, the server
            // rolls back.
            Err(e @ Error::Unavailable(_)) => Err(e),
            Err(e) => {
                if batch(client, "ROLLBACK").is_ok() {
                    held.ended();
                }
                Err(e)
            }
        }
    }
}
