//! Schema versions, migrations, and the check that a file is ours.

use std::path::Path;

use rusqlite::{Connection, OpenFlags, TransactionBehavior};

use super::sql_err;
use crate::error::{Error, Result};

/// `PRAGMA application_id` of a ckpt store: "ckpt" in ASCII.
pub const APPLICATION_ID: i64 = 0x636b_7074;

/// Migrations: entry `i` brings a store from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    // 1: jobs with their checkpoints, bounded history, work items.
    "CREATE TABLE jobs (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        status TEXT NOT NULL,
        cursor TEXT,
        items_processed INTEGER NOT NULL DEFAULT 0,
        stage TEXT,
        state TEXT,
        state_bytes INTEGER NOT NULL DEFAULT 0,
        checkpoint_at INTEGER,
        owner TEXT,
        lease_expires INTEGER,
        epoch INTEGER NOT NULL DEFAULT 0,
        attempts INTEGER NOT NULL DEFAULT 0,
        saves INTEGER NOT NULL DEFAULT 0,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        completed_at INTEGER,
        error TEXT
    );
    CREATE TABLE history (
        job_id INTEGER NOT NULL,
        seq INTEGER NOT NULL,
        cursor TEXT NOT NULL,
        items_processed INTEGER NOT NULL,
        at INTEGER NOT NULL,
        PRIMARY KEY (job_id, seq)
    ) WITHOUT ROWID;
    CREATE TABLE items (
        id INTEGER PRIMARY KEY,
        job_id INTEGER NOT NULL,
        key TEXT NOT NULL,
        payload TEXT,
        status TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        claims INTEGER NOT NULL DEFAULT 0,
        owner TEXT,
        ready_at INTEGER,
        last_error TEXT,
        stats TEXT,
        cursor TEXT,
        enqueued_at INTEGER NOT NULL,
        started_at INTEGER,
        finished_at INTEGER,
        UNIQUE (job_id, key)
    );
    CREATE INDEX items_ready ON items (job_id, ready_at, id) WHERE ready_at IS NOT NULL;
    CREATE INDEX items_status ON items (job_id, status);",
    // 2: which command did it: a job's command templates, and the one that
    // completed each item (NULL: unknown, as for every item completed
    // before this step).
    "CREATE TABLE commands (
        job_id INTEGER NOT NULL,
        id INTEGER NOT NULL,
        command TEXT NOT NULL,
        first_used INTEGER NOT NULL,
        last_used INTEGER NOT NULL,
        PRIMARY KEY (job_id, id),
        UNIQUE (job_id, command)
    ) WITHOUT ROWID;
    ALTER TABLE items ADD COLUMN command_id INTEGER;",
    // 3: the tail of the last failure's output, beside its error (NULL for
    // every failure before this step).
    "ALTER TABLE items ADD COLUMN last_output TEXT;",
    // 4: no index on every item's status, as in PostgreSQL's schema 3: every
    // claim and completion changes the status, so that index cost two index
    // moves per item (claim + complete about 1.25x faster without it, see
    // bench/sqlite-variants.py). Unfinished items are found through
    // items_ready (ready_at is set exactly while an item is pending, running
    // or failed), dead ones through items_dead; completed ones are counted
    // as the rest of the job's total, kept by enqueue (items are only ever
    // deleted with their job).
    "DROP INDEX items_status;
    CREATE INDEX items_dead ON items (job_id, id) WHERE status = 'dead';
    ALTER TABLE jobs ADD COLUMN items_total INTEGER NOT NULL DEFAULT 0;
    UPDATE jobs SET items_total = (SELECT count(*) FROM items WHERE items.job_id = jobs.id)
    WHERE EXISTS (SELECT 1 FROM items WHERE items.job_id = jobs.id);",
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Checks that an existing non-empty file is a ckpt store this build can
/// use, changing nothing: not the file, and no `-wal`/`-shm` files beside a
/// foreign database. The 100-byte header answers when no write-ahead log is
/// pending; otherwise a read-only connection does. `Ok(false)`: a SQLite
/// database without tables, which a store may be created in.
pub(super) fn inspect_existing(file: &Path, path: &str) -> Result<bool> {
    let not_ours = |why: String| {
        Error::NotAStore(format!(
            "{path} is not a ckpt store ({why}); it was left untouched"
        ))
    };
    let mut header = [0u8; 100];
    let read = std::fs::File::open(file).and_then(|mut f| {
        use std::io::Read;
        f.read_exact(&mut header)
    });
    let ckpt_id = i32::from_be_bytes([header[68], header[69], header[70], header[71]]);
    match read {
        Ok(()) if header.starts_with(b"SQLite format 3\0") => {}
        // The rest of the header still says ckpt: a damaged store.
        Ok(()) if i64::from(ckpt_id) == APPLICATION_ID => {
            return Err(Error::Corrupt {
                path: Some(path.to_string()),
                detail: "its SQLite header is damaged".into(),
            })
        }
        Ok(()) => return Err(not_ours("not a SQLite database".into())),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            return Err(not_ours("not a SQLite database".into()))
        }
        Err(e) => return Err(Error::Open(format!("{path}: {e}"))),
    }
    let field = |at: usize| {
        u32::from_be_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]])
    };
    let (app, version, pages) = (
        i64::from(field(68) as i32),
        i64::from(field(60) as i32),
        field(28),
    );
    if app == APPLICATION_ID {
        return usable_version(path, version).map(|()| true);
    }
    // SQLite keeps the WAL beside the file a symlink points to, not
    // beside the link.
    let real = std::fs::canonicalize(file).unwrap_or_else(|_| file.to_path_buf());
    let mut wal = real.into_os_string();
    wal.push("-wal");
    let wal_pending = std::fs::metadata(&wal).is_ok_and(|m| m.len() > 0);
    if !wal_pending {
        // The header is the whole truth: a database without tables has one page.
        return match (app, pages) {
            (0, 0..=1) => Ok(false),
            _ => Err(not_ours(format!(
                "a SQLite database of another application, application_id {app}"
            ))),
        };
    }
    let conn = Connection::open_with_flags(
        file,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| Error::Open(format!("{path}: {e}")))?;
    // One statement, so one snapshot: another process may be creating the
    // store right now, and must not be caught half-way.
    let probe = conn.query_row(
        "SELECT a.application_id, v.user_version, (SELECT count(*) FROM sqlite_master)
         FROM pragma_application_id a, pragma_user_version v",
        [],
        |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
            ))
        },
    );
    let (app, version, objects) = match probe {
        Ok(v) => v,
        Err(e) => {
            return Err(match sql_err(e) {
                Error::Corrupt { .. } => not_ours("not a SQLite database, or corrupt".into()),
                Error::Busy(m) => Error::Busy(m),
                other => Error::Open(format!("{path}: {other}")),
            })
        }
    };
    match (app, objects) {
        (APPLICATION_ID, _) => usable_version(path, version).map(|()| true),
        (0, 0) => Ok(false),
        _ => Err(not_ours(format!(
            "a SQLite database of another application, application_id {app}"
        ))),
    }
}

/// A stored schema version this build can open (and migrate from): not
/// newer than its own, and not negative (only damage writes that).
fn usable_version(path: &str, version: i64) -> Result<()> {
    if version > SCHEMA_VERSION {
        return Err(too_new(path, version));
    }
    if version < 0 {
        return Err(Error::Corrupt {
            path: Some(path.to_string()),
            detail: format!("its schema version is {version}"),
        });
    }
    Ok(())
}

fn too_new(path: &str, found: i64) -> Error {
    Error::SchemaTooNew {
        store: format!("sqlite://{path}"),
        found,
        supported: SCHEMA_VERSION,
    }
}

/// Brings the store to [`SCHEMA_VERSION`] in one transaction; safe when
/// several processes open a new store at once.
/// A migration that SQLite refused as SQL ("table jobs already exists",
/// "no such index") ran on tables that do not match the file's schema
/// version: the version was changed by hand, or the file is damaged. Named
/// as damage (the transaction is rolled back: nothing changed), with
/// SQLite's message alone, not the migration's text. Anything else (a
/// full disk, a lock) is what it is.
fn migration_err(e: rusqlite::Error, path: &str, version: i64) -> Error {
    let refused = match &e {
        rusqlite::Error::SqlInputError { error, msg, .. } => Some((error.code, msg.clone())),
        rusqlite::Error::SqliteFailure(error, msg) => {
            Some((error.code, msg.clone().unwrap_or_else(|| error.to_string())))
        }
        _ => None,
    };
    match refused {
        Some((rusqlite::ErrorCode::Unknown, msg)) => Error::Corrupt {
            path: Some(path.to_string()),
            detail: format!(
                "its tables do not match its schema version {version}; upgrading it to version {SCHEMA_VERSION} failed: {msg}"
            ),
        },
        _ => sql_err(e),
    }
}

pub(super) fn migrate(conn: &mut Connection, path: &str) -> Result<()> {
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(sql_err)?;
    if version == SCHEMA_VERSION {
        return Ok(());
    }
    usable_version(path, version)?;
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(sql_err)?;
    // Another process may have migrated while this one waited for the lock.
    let version: i64 = tx
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(sql_err)?;
    usable_version(path, version)?;
    for sql in &MIGRATIONS[version as usize..] {
        tx.execute_batch(sql)
            .map_err(|e| migration_err(e, path, version))?;
    }
    tx.execute_batch(&format!(
        "PRAGMA application_id = {APPLICATION_ID}; PRAGMA user_version = {SCHEMA_VERSION};"
    ))
    .map_err(sql_err)?;
    tx.commit().map_err(sql_err)
}
