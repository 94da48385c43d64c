//! The SQLite store: the embedded default, for one machine.
//!
//! - WAL journal, so readers never block the writer.
//! - `synchronous=FULL` by default: a checkpoint reported saved survives
//!   power loss. `?durability=normal` gives that up for speed: a save then
//!   survives a crash of the process but the last moments may be lost on
//!   power loss or an OS crash.
//! - Every write is one `BEGIN IMMEDIATE` transaction, so several processes
//!   can share one file; a writer waits up to the busy timeout (default 5 s,
//!   `?busy_timeout=MILLISECONDS`) for another.
//! - Claims, lease renewals and start marks commit without an fsync of
//!   their own even at `full`: losing a claim to power loss only makes the
//!   item pending again, which a crash does anyway, a lost renewal only
//!   shortens the lease of a worker that died with the machine, and a lost
//!   start mark is made again at the next start; the next durable commit
//!   syncs them along.
//! - The schema is versioned in `PRAGMA user_version` and the file is
//!   marked as ckpt's by `PRAGMA application_id`. A file of another
//!   application, a corrupt file, or a store of a newer ckpt is refused
//!   before anything is written to it.
//! - Damage is named: SQLite's corruption errors, and rows that do not read
//!   back as ckpt wrote them, are [`Error::Corrupt`] with the file's path;
//!   [`SqliteStore::check_file`] looks at every page and every value.

mod batch;
mod check;
mod commands;
mod conn;
mod items;
mod jobs;
mod patch;
mod rows;
mod schema;
mod tx;

use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use super::url::{query_pairs, OpenMode};
use super::{FileCheck, ItemSignals, OwnerSessions, Store};
use crate::error::{Error, Result};

pub(crate) use conn::sql_err;

pub use schema::SCHEMA_VERSION;

/// What a commit survives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// `synchronous=FULL`: a committed write survives power loss.
    Full,
    /// `synchronous=NORMAL`: a committed write survives a crash of the
    /// process, not necessarily power loss or an OS crash.
    Normal,
}

/// Options from the URL's query string.
#[derive(Debug, Clone, PartialEq)]
pub struct SqliteOptions {
    /// What a commit survives.
    pub durability: Durability,
    /// How long a writer waits for another.
    pub busy_timeout: Duration,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        SqliteOptions {
            durability: Durability::Full,
            busy_timeout: Duration::from_secs(5),
        }
    }
}

impl SqliteOptions {
    /// Parses `durability=full|normal&busy_timeout=MILLISECONDS`.
    pub fn from_query(query: &str) -> Result<Self> {
        let mut options = SqliteOptions::default();
        for (key, value) in query_pairs(query)? {
            match key {
                "durability" => {
                    options.durability = match value {
                        "full" => Durability::Full,
                        "normal" => Durability::Normal,
                        _ => {
                            return Err(Error::Open(format!(
                                "durability must be full or normal, not {value:?}"
                            )))
                        }
                    }
                }
                "busy_timeout" => {
                    // SQLite takes an int of milliseconds (about 24 days).
                    let ms: u64 = value
                        .parse()
                        .ok()
                        .filter(|ms| *ms <= i32::MAX as u64)
                        .ok_or_else(|| {
                            Error::Open(format!(
                                "busy_timeout must be milliseconds, at most {}, not {value:?}",
                                i32::MAX
                            ))
                        })?;
                    options.busy_timeout = Duration::from_millis(ms);
                }
                _ => {
                    return Err(Error::Open(format!(
                        "unknown sqlite option {key:?} (known: durability, busy_timeout)"
                    )))
                }
            }
        }
        Ok(options)
    }
}

/// A ckpt store in a SQLite file.
#[derive(Debug)]
pub struct SqliteStore {
    conn: Mutex<Connection>,
    path: String,
    /// The file's canonical path (see [`Store::identity`]).
    identity: String,
    options: SqliteOptions,
    /// True while the connection may be at `synchronous=NORMAL` for a claim.
    relaxed: std::sync::atomic::AtomicBool,
}

/// What a file that is neither a regular file nor a directory is, for an
/// error message.
fn special_file_kind(m: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = m.file_type();
    if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_fifo() {
        "a named pipe (FIFO)"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    }
}

impl SqliteStore {
    /// Opens (and, with [`OpenMode::CreateIfMissing`], creates) the store at
    /// `path`, migrating an older schema. A foreign, corrupt or newer file
    /// is refused and left untouched.
    pub fn open(path: &str, options: SqliteOptions, mode: OpenMode) -> Result<Self> {
        if path.is_empty() {
            return Err(Error::Open("sqlite:// URL has no file path".into()));
        }
        let file = Path::new(path);
        match std::fs::metadata(file) {
            Ok(m) if m.is_dir() => {
                return Err(Error::Open(format!(
                    "{path} is a directory, not a store file"
                )))
            }
            // A device, a FIFO or a socket: SQLite would fail with "disk
            // I/O error" (or block on a FIFO) and leave a -journal beside it.
            Ok(m) if !m.is_file() => {
                return Err(Error::Open(format!(
                    "{path} is {}, not a store file",
                    special_file_kind(&m)
                )))
            }
            // An empty file, or a SQLite database without tables, holds no
            // store: a read must not turn it into one.
            Ok(m) if m.len() > 0 => {
                if !schema::inspect_existing(file, path)? && mode == OpenMode::MustExist {
                    return Err(Error::NotFound(format!(
                        "no ckpt store at {path} (an empty SQLite database)"
                    )));
                }
            }
            Ok(_) if mode == OpenMode::MustExist => {
                return Err(Error::NotFound(format!(
                    "no ckpt store at {path} (the file is empty)"
                )))
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if mode == OpenMode::MustExist {
                    return Err(Error::NotFound(format!("no ckpt store at {path}")));
                }
                let parent = file.parent().filter(|p| !p.as_os_str().is_empty());
                if let Some(dir) = parent {
                    if !dir.is_dir() {
                        return Err(Error::Open(format!(
                            "cannot create {path}: directory {} does not exist",
                            dir.display()
                        )));
                    }
                }
            }
            Err(e) => return Err(Error::Open(format!("{path}: {e}"))),
        }
        let conn = Connection::open_with_flags(
            file,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| Error::Open(format!("{path}: {e}")))?;
        let store = SqliteStore {
            conn: Mutex::new(conn),
            path: path.to_string(),
            // The file exists now.
            identity: std::fs::canonicalize(file)
                .map_or_else(|_| path.to_string(), |p| p.display().to_string()),
            options,
            relaxed: std::sync::atomic::AtomicBool::new(false),
        };
        store.configure()?;
        schema::migrate(&mut store.lock(), path).map_err(|e| e.with_store_path(path))?;
        Ok(store)
    }

    /// The durability setting.
    pub fn durability(&self) -> Durability {
        self.options.durability
    }
}

impl Store for SqliteStore {
    fn describe(&self) -> String {
        format!("sqlite://{}", self.path)
    }

    fn identity(&self) -> String {
        format!("sqlite://{}", self.identity)
    }

    /// None: idle workers poll, which on one machine costs an index lookup.
    fn item_signals(&self) -> Option<&dyn ItemSignals> {
        None
    }

    /// None: every owner is a process on this machine, found dead by the
    /// local process check.
    fn owner_sessions(&self) -> Option<&dyn OwnerSessions> {
        None
    }

    fn check_files(&self, full: bool) -> Option<Result<FileCheck>> {
        Some(self.check_file(full))
    }

    /// None: the file is used by processes of one machine, whose clock is
    /// the store's.
    fn server_time(&self) -> Result<Option<crate::time::Timestamp>> {
        Ok(None)
    }
}

/// Lets the closures of `Job::checkpoint_with` and `Queue::complete_with`
/// use `?` on their own statements.
impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Self {
        sql_err(e)
    }
}
