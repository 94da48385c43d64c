//! The SQLite connection: configuring it, and the transactions every
//! write runs in.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::MutexGuard;
use std::time::Duration;

use rusqlite::{Connection, Transaction, TransactionBehavior};

use super::{Durability, SqliteStore};
use crate::error::{Error, Result};

/// Statements kept prepared per connection: more than the store has.
const STATEMENT_CACHE: usize = 128;

impl SqliteStore {
    /// Runs `f` in a `BEGIN IMMEDIATE` transaction and commits it.
    pub(super) fn write<T>(&self, f: impl FnOnce(&Transaction<'_>) -> Result<T>) -> Result<T> {
        self.write_mut(|tx| f(tx))
    }

    /// [`write`](Self::write), with the transaction lent mutably (for a
    /// caller's closure, which may open savepoints).
    pub(super) fn write_mut<T>(
        &self,
        f: impl FnOnce(&mut Transaction<'_>) -> Result<T>,
    ) -> Result<T> {
        let mut conn = self.lock();
        // A claim that could not switch back to FULL must not leave later
        // durable writes unsynced.
        if self.relaxed.load(Ordering::SeqCst) {
            conn.execute_batch("PRAGMA synchronous=FULL")
                .map_err(sql_err)?;
            self.relaxed.store(false, Ordering::SeqCst);
        }
        Self::transact(&mut conn, f)
    }

    fn transact<T>(
        conn: &mut Connection,
        f: impl FnOnce(&mut Transaction<'_>) -> Result<T>,
    ) -> Result<T> {
        let mut tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql_err)?;
        // On an error (or a panic) the transaction rolls back when dropped.
        let out = f(&mut tx)?;
        tx.commit().map_err(sql_err)?;
        Ok(out)
    }

    /// Like [`write`](Self::write), but the commit is not fsynced on its
    /// own (`synchronous=NORMAL` for this transaction only): for writes
    /// whose loss on power failure is harmless, such as claims.
    pub(super) fn write_unsynced<T>(
        &self,
        f: impl FnOnce(&Transaction<'_>) -> Result<T>,
    ) -> Result<T> {
        let f = |tx: &mut Transaction<'_>| f(tx);
        let mut conn = self.lock();
        if self.durability() == Durability::Normal {
            return Self::transact(&mut conn, f);
        }
        self.relaxed.store(true, Ordering::SeqCst);
        conn.execute_batch("PRAGMA synchronous=NORMAL")
            .map_err(sql_err)?;
        let out = Self::transact(&mut conn, f);
        if conn.execute_batch("PRAGMA synchronous=FULL").is_ok() {
            self.relaxed.store(false, Ordering::SeqCst);
        }
        out
    }

    pub(super) fn configure(&self) -> Result<()> {
        let conn = self.lock();
        conn.busy_timeout(self.options.busy_timeout)
            .map_err(|e| self.open_err(e))?;
        // The store prepares about 50 statements (rusqlite keeps 16 by
        // default): a run's dozen in turn must not evict one another.
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        // Switching to WAL takes an exclusive lock and does not wait on the
        // busy handler, so several processes opening a new store at once
        // retry here until the busy timeout runs out.
        let deadline = std::time::Instant::now() + self.options.busy_timeout;
        let mode: String = loop {
            match conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0)) {
                Ok(mode) => break mode,
                Err(e) if is_busy(&e) && std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => return Err(self.open_err(e)),
            }
        };
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(Error::Open(format!(
                "{}: cannot switch to WAL journal (got {mode})",
                self.path
            )));
        }
        conn.execute_batch(&format!(
            "PRAGMA synchronous={}; PRAGMA cache_size=-65536; PRAGMA temp_store=MEMORY;",
            self.sync_pragma()
        ))
        .map_err(|e| self.open_err(e))?;
        Ok(())
    }

    fn sync_pragma(&self) -> &'static str {
        match self.options.durability {
            Durability::Full => "FULL",
            Durability::Normal => "NORMAL",
        }
    }

    pub(super) fn open_err(&self, e: rusqlite::Error) -> Error {
        match sql_err(e) {
            Error::Storage(m) => match unwritable(Path::new(&self.path)) {
                // Even a read needs the -wal and -shm files beside the store.
                Some(why) => Error::Open(format!(
                    "{}: cannot open the store where it is ({why}): SQLite writes beside the file (its -wal and -shm) even to read it; copy the store, with its -wal file if there is one, to a writable directory to read it there",
                    self.path
                )),
                // SQLite says only "disk I/O error" when it cannot grow the
                // -shm file it needs even to read.
                None if no_space_left(Path::new(&self.path)) => Error::Open(format!(
                    "{}: {m}: the disk is full (no space left where the store is; SQLite needs some beside the file, its -wal and -shm, even to read it): free some space",
                    self.path
                )),
                None => Error::Open(format!("{}: {m}", self.path)),
            },
            other => other.with_store_path(&self.path),
        }
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, Connection> {
        // The connection holds no half-applied state across a panic: an
        // open transaction is rolled back when its guard drops.
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }
}

pub(super) fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _)
        if matches!(f.code, rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked))
}

/// Maps a SQLite error to the library's error.
pub(crate) fn sql_err(e: rusqlite::Error) -> Error {
    use rusqlite::ErrorCode as C;
    if let rusqlite::Error::SqliteFailure(f, _) = &e {
        match f.code {
            C::DatabaseBusy | C::DatabaseLocked => {
                return Error::Busy(format!("the store is locked by another writer ({e})"))
            }
            C::DiskFull => return Error::Storage(format!("disk full: {e}")),
            C::NotADatabase | C::DatabaseCorrupt => {
                return Error::Corrupt {
                    path: None,
                    detail: e.to_string(),
                }
            }
            C::ReadOnly | C::CannotOpen | C::PermissionDenied => {
                return Error::Storage(format!("cannot write the store: {e}"))
            }
            _ => {}
        }
    }
    // ckpt wrote every column with its type and valid JSON: a value that
    // does not read back ("invalid utf-8", a blob for a text) is damage.
    if matches!(
        e,
        rusqlite::Error::FromSqlConversionFailure(..)
            | rusqlite::Error::InvalidColumnType(..)
            | rusqlite::Error::IntegralValueOutOfRange(..)
            | rusqlite::Error::Utf8Error(..)
    ) {
        return Error::Corrupt {
            path: None,
            detail: format!("a row does not read back: {e}"),
        };
    }
    Error::Storage(e.to_string())
}

/// Whether the file system holding `file` has no space left for an
/// unprivileged write (`statvfs`'s available blocks are 0).
fn no_space_left(file: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let dir = file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: a valid NUL-terminated path, and a plain C struct for which
    // all zeroes is valid, which statvfs(3) fills.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    r == 0 && st.f_bavail == 0
}

/// Why the store file or its directory cannot be written (a read-only
/// file system, no permission), if so.
fn unwritable(file: &Path) -> Option<String> {
    use std::os::unix::ffi::OsStrExt;
    let dir = file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    [(file, "the file"), (dir, "its directory")]
        .into_iter()
        .find_map(|(path, what)| {
            let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
            // SAFETY: a valid NUL-terminated path; access(2) only reads it.
            let r = unsafe { libc::access(c.as_ptr(), libc::W_OK) };
            (r != 0).then(|| format!("{what}: {}", std::io::Error::last_os_error()))
        })
}
