//! Checking the store file for damage: `PRAGMA quick_check` (or
//! `integrity_check`), then every stored value read back.

use std::time::Instant;

use rusqlite::types::ValueRef;
use rusqlite::Connection;

use super::rows::{
    command_from_row, history_from_row, item_from_row, job_from_row, COMMAND_COLUMNS,
    HISTORY_COLUMNS, ITEM_COLUMNS, JOB_COLUMNS,
};
use super::{sql_err, SqliteStore};
use crate::error::Result;
use crate::model::{ItemStatus, JobStatus};
use crate::store::FileCheck;

/// How a column's text must read back.
type Valid = fn(&str) -> bool;

fn json(text: &str) -> bool {
    serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok()
}

fn job_status(text: &str) -> bool {
    JobStatus::parse(text).is_some()
}

fn item_status(text: &str) -> bool {
    ItemStatus::parse(text).is_some()
}

/// ckpt's tables, and the columns of each whose text has a form.
const TABLES: [(&str, &[(&str, Valid)]); 4] = [
    (
        "jobs",
        &[("cursor", json), ("state", json), ("status", job_status)],
    ),
    ("history", &[("cursor", json)]),
    (
        "items",
        &[
            ("payload", json),
            ("stats", json),
            ("cursor", json),
            ("status", item_status),
        ],
    ),
    ("commands", &[]),
];

/// Problems reported at most (a badly damaged file has thousands).
const MAX_PROBLEMS: usize = 20;

impl SqliteStore {
    /// Checks the store file, reading only (in WAL mode, without blocking
    /// writers):
    ///
    /// 1. `PRAGMA quick_check`: every page of every table and index is read
    ///    and its structure checked; with `full`, `PRAGMA integrity_check`,
    ///    which also checks that every index matches its rows (about three
    ///    times the cost);
    /// 2. then every row of ckpt's tables is read back: text must be UTF-8,
    ///    JSON columns JSON and statuses known, as ckpt wrote them, and every
    ///    row must decode as the store reads it (numbers where numbers
    ///    belong, counts not negative). Damage inside a row passes the page
    ///    check but fails the reads of `ckpt items`.
    ///
    /// Corruption that stops the check itself is
    /// [`Error::Corrupt`](crate::Error::Corrupt) naming the file.
    pub fn check_file(&self, full: bool) -> Result<FileCheck> {
        let check = if full {
            "integrity_check"
        } else {
            "quick_check"
        };
        let conn = self.lock();
        let start = Instant::now();
        let rows = conn
            .prepare(&format!("PRAGMA {check}"))
            .and_then(|mut s| {
                s.query_map([], |r| r.get::<_, String>(0))?
                    .collect::<rusqlite::Result<Vec<String>>>()
            })
            .map_err(|e| sql_err(e).with_store_path(&self.path))?;
        let mut problems = match rows.as_slice() {
            [ok] if ok == "ok" => Vec::new(),
            _ => rows,
        };
        if problems.is_empty() {
            problems =
                unreadable_values(&conn).map_err(|e| sql_err(e).with_store_path(&self.path))?;
        }
        Ok(FileCheck {
            path: self.path.clone(),
            check,
            took: start.elapsed(),
            problems,
        })
    }
}

/// How each table's rows are read by the store, to read every one back as
/// the commands would: the query, and the decoder.
type Decode = fn(&rusqlite::Row<'_>) -> rusqlite::Result<()>;

fn decoders() -> [(&'static str, String, Decode); 4] {
    [
        ("jobs", format!("SELECT {JOB_COLUMNS} FROM jobs"), |r| {
            job_from_row(r).map(drop)
        }),
        (
            "history",
            format!("SELECT {HISTORY_COLUMNS} FROM history h"),
            |r| history_from_row(r).map(drop),
        ),
        ("items", format!("SELECT {ITEM_COLUMNS} FROM items"), |r| {
            item_from_row(r).map(drop)
        }),
        (
            "commands",
            format!("SELECT {COMMAND_COLUMNS} FROM commands"),
            |r| command_from_row(r).map(drop),
        ),
    ]
}

/// Values of ckpt's tables that do not read back: text that is not UTF-8,
/// JSON columns that are not JSON, unknown statuses; then every row read
/// by the store's own decoders, so that a value of the wrong type (text
/// where a number belongs, a negative count) is found here rather than by
/// `ckpt items` or `ckpt show`.
fn unreadable_values(conn: &Connection) -> rusqlite::Result<Vec<String>> {
    let mut problems = text_problems(conn)?;
    for (table, query, decode) in decoders() {
        if problems.len() >= MAX_PROBLEMS {
            break;
        }
        let mut stmt = conn.prepare(&query)?;
        let mut rows = stmt.query([])?;
        let mut n = 0u64;
        while let Some(row) = rows.next()? {
            n += 1;
            if let Err(e) = decode(row) {
                let seen = format!("{table}: row {n}, ");
                // A row the text check already named is not named twice.
                if !problems.iter().any(|p| p.starts_with(&seen)) {
                    problems.push(format!("{table}: row {n}: {}", decode_error(e)));
                }
                if problems.len() >= MAX_PROBLEMS {
                    break;
                }
            }
        }
    }
    Ok(problems)
}

/// A decoder's error, without rusqlite's wording around it.
fn decode_error(e: rusqlite::Error) -> String {
    match e {
        rusqlite::Error::FromSqlConversionFailure(_, ty, why) => {
            format!("unexpected {ty} value: {why}")
        }
        rusqlite::Error::InvalidColumnType(_, name, ty) => {
            format!("column {name}: unexpected {ty} value")
        }
        rusqlite::Error::IntegralValueOutOfRange(_, n) => format!("number {n} out of range"),
        e => e.to_string(),
    }
}

/// Text values that do not read back: not UTF-8, or not of their
/// column's form.
fn text_problems(conn: &Connection) -> rusqlite::Result<Vec<String>> {
    let mut problems = Vec::new();
    for (table, forms) in TABLES {
        let mut stmt = conn.prepare(&format!("SELECT * FROM {table}"))?;
        let names: Vec<String> = stmt.column_names().iter().map(|n| n.to_string()).collect();
        let mut rows = stmt.query([])?;
        let mut n = 0u64;
        while let Some(row) = rows.next()? {
            n += 1;
            for (i, name) in names.iter().enumerate() {
                let ValueRef::Text(bytes) = row.get_ref(i)? else {
                    continue;
                };
                let why = match std::str::from_utf8(bytes) {
                    Err(e) => Some(format!("invalid UTF-8 ({e})")),
                    Ok(text) => forms
                        .iter()
                        .find(|(column, valid)| column == name && !valid(text))
                        .map(|_| format!("unexpected value {text:?}")),
                };
                if let Some(why) = why {
                    problems.push(format!("{table}: row {n}, column {name}: {why}"));
                    if problems.len() >= MAX_PROBLEMS {
                        return Ok(problems);
                    }
                }
            }
        }
    }
    Ok(problems)
}
