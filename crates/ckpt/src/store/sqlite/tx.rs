//! [`SharedTx`] for SQLite: the caller's statements and the store's fenced
//! write in one `BEGIN IMMEDIATE` transaction on the store's connection.

use rusqlite::Transaction;

use super::items::apply_update;
use super::jobs::{write_checkpoint, Writer};
use super::SqliteStore;
use crate::error::Result;
use crate::store::{SharedTx, TxWrite};
use crate::time::Timestamp;

impl SharedTx for SqliteStore {
    /// The open transaction on the store's file; it derefs to a
    /// `rusqlite::Connection`, so `tx.execute(…)` and `tx.prepare(…)` work
    /// as usual.
    type Tx<'t> = Transaction<'t>;

    fn with_tx<T>(
        &self,
        write: TxWrite<'_>,
        now: Timestamp,
        f: impl FnOnce(&mut Transaction<'_>) -> Result<T>,
    ) -> Result<T> {
        self.write_mut(|tx| {
            let out = f(tx)?;
            match write {
                TxWrite::SaveCheckpoint {
                    lease,
                    checkpoint,
                    history_keep,
                    lease_until,
                } => write_checkpoint(
                    tx,
                    Writer::Holder(lease, lease_until),
                    checkpoint,
                    history_keep,
                    now,
                )?,
                TxWrite::UpdateItem(update) => apply_update(tx, update, now)?,
            }
            Ok(out)
        })
    }
}
