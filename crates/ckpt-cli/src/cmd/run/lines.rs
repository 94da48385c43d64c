//! Where each item first appears in this run's input: the value of `{#}`.
//!
//! The runner claims items from the store, in no order tied to this run's
//! input (an item may have been enqueued by an earlier run, from another
//! line), so the line number is looked up by key. The index lives in a
//! private temporary SQLite database (deleted when it is closed), not in
//! memory: a ten-million-line input still streams, and memory stays that
//! of SQLite's page cache. It is built only when `{#}` is used (or for
//! `--dry-run`), during the pass that checks every line anyway.

use std::sync::Mutex;

use anyhow::{Context, Result};
use rusqlite::{params, Connection, OptionalExtension};

use crate::cmd::items::ItemsFile;

/// Rows inserted per transaction while building.
const CHUNK: usize = 50_000;

/// The first line of each key in the input.
pub struct LineIndex {
    conn: Mutex<Connection>,
    /// Items (non-empty lines) in the input.
    items: u64,
}

impl LineIndex {
    /// Checks every line of `items` (as [`ItemsFile::check`]) and records
    /// the first line number of each key.
    pub fn build(items: &ItemsFile) -> Result<LineIndex> {
        // An empty name: a private on-disk database, deleted on close.
        let conn = Connection::open("").context("cannot create the line index")?;
        conn.execute_batch(
            "PRAGMA journal_mode = OFF;
             PRAGMA synchronous = OFF;
             CREATE TABLE lines (key TEXT PRIMARY KEY, line INTEGER NOT NULL) WITHOUT ROWID;
             BEGIN;",
        )
        .context("cannot create the line index")?;
        let mut in_tx = 0;
        let mut count = 0;
        items.each(|line, key| {
            count += 1;
            // The first line of a duplicate key wins.
            conn.prepare_cached("INSERT OR IGNORE INTO lines (key, line) VALUES (?1, ?2)")
                .and_then(|mut stmt| stmt.execute(params![key, line as i64]))
                .context("cannot write the line index")?;
            in_tx += 1;
            if in_tx == CHUNK {
                conn.execute_batch("COMMIT; BEGIN;")
                    .context("cannot write the line index")?;
                in_tx = 0;
            }
            Ok(())
        })?;
        conn.execute_batch("COMMIT;")
            .context("cannot write the line index")?;
        Ok(LineIndex {
            conn: Mutex::new(conn),
            items: count,
        })
    }

    /// How many items (non-empty lines) the input holds.
    pub fn items(&self) -> u64 {
        self.items
    }

    /// The first line of `key` in the input; 0 if it is not there (an item
    /// enqueued by another run whose input this one does not repeat).
    pub fn line(&self, key: &str) -> Result<u64> {
        let conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        let line: Option<i64> = conn
            .prepare_cached("SELECT line FROM lines WHERE key = ?1")
            .and_then(|mut stmt| stmt.query_row([key], |r| r.get(0)).optional())
            .context("cannot read the line index")?;
        Ok(line.map_or(0, |l| l as u64))
    }
}
