//! The library's error type.
//!
//! Every fallible operation returns [`Error`]. Variants that callers act on
//! are distinct: [`Error::Fenced`] (this worker's lease was taken over; stop
//! working on that job or item), [`Error::Busy`] (a live owner holds it; try
//! later), [`Error::NotFound`], [`Error::LimitExceeded`], [`Error::SchemaTooNew`],
//! [`Error::CursorMismatch`] (a compare-and-set found another cursor).

/// Shorthand for `Result<T, ckpt::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in ckpt.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The caller's lease was lost: another worker took the job or item over
    /// (its fencing epoch / attempt moved on), or it was finished or reset.
    /// The write that returned this changed nothing.
    #[error("lease lost (fenced): {0}")]
    Fenced(String),
    /// A live owner holds the job, or the store is locked by another writer.
    #[error("busy: {0}")]
    Busy(String),
    /// The named job, item or checkpoint does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// Input that can never succeed: an invalid job name, an item key that is
    /// empty or too long, a cursor or state that is not JSON.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// A value is over its configured size limit; nothing was written.
    #[error("{what} is {size} bytes, over the limit of {limit} bytes; nothing was saved")]
    LimitExceeded {
        /// What was too large (for example "checkpoint state").
        what: &'static str,
        /// Its size in bytes.
        size: usize,
        /// The limit in bytes.
        limit: usize,
    },
    /// A stored cursor or state does not decode into the caller's type.
    /// Resuming never silently restarts from zero, so this is an error.
    #[error("stored {what} of job '{job}' does not decode into the requested type: {reason}")]
    Decode {
        /// "cursor" or "state".
        what: &'static str,
        /// The job.
        job: String,
        /// The decoder's message.
        reason: String,
    },
    /// A compare-and-set checkpoint write found another cursor than the
    /// one it expected (another writer got there first); nothing was
    /// written.
    #[error("job '{job}': the stored cursor is {}, not the expected {}; nothing was written",
        cursor_in_message(.stored), cursor_in_message(.expected))]
    CursorMismatch {
        /// The job.
        job: String,
        /// The stored cursor as canonical JSON, `None` when there is no
        /// checkpoint.
        stored: Option<String>,
        /// The expected cursor as canonical JSON, `None` for "no
        /// checkpoint".
        expected: Option<String>,
    },
    /// The store was written by a newer ckpt. It was left untouched.
    #[error("store {store} has schema version {found}, newer than this ckpt supports ({supported}); upgrade ckpt (the store was not modified)")]
    SchemaTooNew {
        /// The store, with any password redacted.
        store: String,
        /// The version found in the store.
        found: i64,
        /// The newest version this build understands.
        supported: i64,
    },
    /// The target exists but is not a ckpt store (a foreign database, a
    /// corrupt file, a text file). It was left untouched.
    #[error("{0}")]
    NotAStore(String),
    /// The store's file is damaged (SQLite reported corruption, or a row
    /// does not read back as ckpt wrote it). Nothing was changed; the
    /// message names the file and the next step.
    #[error("{}", corrupt_message(.path.as_deref(), .detail))]
    Corrupt {
        /// The store file, when known (see [`Error::with_store_path`]).
        path: Option<String>,
        /// What SQLite or the row decoder said.
        detail: String,
    },
    /// The store could not be opened (missing directory, permissions, bad URL).
    #[error("cannot open store: {0}")]
    Open(String),
    /// The store cannot be reached right now (connection refused or lost);
    /// retrying later may succeed.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The backend failed (I/O error, disk full, corrupt data).
    #[error("store error: {0}")]
    Storage(String),
    /// The caller's check (see [`crate::interrupt`]) abandoned a store
    /// call while it waited for the server: it may or may not have taken
    /// effect.
    #[error("interrupted: {0}")]
    Interrupted(String),
}

/// Longest cursor an error message shows whole, in bytes.
const CURSOR_SHOWN: usize = 200;

/// A cursor (canonical JSON, `None`: no checkpoint) as a message shows it:
/// whole up to [`CURSOR_SHOWN`] bytes, else its start and its size, so a
/// large cursor does not make the error a line of 100 KiB.
fn cursor_in_message(cursor: &Option<String>) -> String {
    let Some(text) = cursor else {
        return "none (no checkpoint)".into();
    };
    if text.len() <= CURSOR_SHOWN {
        return text.clone();
    }
    let mut cut = CURSOR_SHOWN;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}… ({} bytes)", &text[..cut], text.len())
}
impl Error {
    /// True if and only if this is [`Error::Fenced`].
    pub fn is_fenced(&self) -> bool {
        matches!(self, Error::Fenced(_))
    }

    /// True if and only if this is [`Error::Busy`].
    pub fn is_busy(&self) -> bool {
        matches!(self, Error::Busy(_))
    }

    /// True if and only if retrying later may succeed: [`Error::Busy`] or
    /// [`Error::Unavailable`].
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Busy(_) | Error::Unavailable(_))
    }

    /// True if and only if the input itself was refused ([`Error::InvalidInput`],
    /// [`Error::LimitExceeded`]): no retry can save it, and nothing was
    /// written.
    pub fn is_invalid_input(&self) -> bool {
        matches!(self, Error::InvalidInput(_) | Error::LimitExceeded { .. })
    }

    /// True if and only if this is [`Error::Interrupted`]: the caller asked
    /// to abandon the call. Not transient (nothing retries it on the
    /// caller's behalf), but nothing was refused either: a checkpoint the
    /// call was saving stays pending.
    pub fn is_interrupted(&self) -> bool {
        matches!(self, Error::Interrupted(_))
    }

    /// True if and only if the server refused a new connection because
    /// every connection it allows is taken (PostgreSQL's `too many
    /// clients`, SQLSTATE 53300): an outage that ends as other clients
    /// disconnect.
    pub fn is_server_full(&self) -> bool {
        // The store's connection error carries the server's SQLSTATE.
        matches!(self, Error::Unavailable(m) if m.contains("(SQLSTATE 53300)"))
    }

    /// True if and only if this is [`Error::CursorMismatch`].
    pub fn is_cursor_mismatch(&self) -> bool {
        matches!(self, Error::CursorMismatch { .. })
    }

    /// True if and only if this is [`Error::Corrupt`].
    pub fn is_corrupt(&self) -> bool {
        matches!(self, Error::Corrupt { .. })
    }

    /// Names the store file in an [`Error::Corrupt`] that does not name one
    /// yet (a read deep in a store does not know its path); other errors
    /// are returned as they are.
    pub fn with_store_path(self, path: &str) -> Error {
        match self {
            Error::Corrupt { path: None, detail } => Error::Corrupt {
                path: Some(path.to_string()),
                detail,
            },
            other => other,
        }
    }

    /// True if and only if this is [`Error::NotFound`].
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::NotFound(_))
    }
}

fn corrupt_message(path: Option<&str>, detail: &str) -> String {
    let file = path.unwrap_or("FILE");
    format!(
        "the store file is corrupt: {} ({detail}); it was left untouched: restore it from a \
         backup, or salvage what is readable with `sqlite3 {file} .recover | sqlite3 recovered.db`",
        path.unwrap_or("(path unknown)")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mismatch(stored: Option<String>, expected: Option<String>) -> String {
        Error::CursorMismatch {
            job: "j".into(),
            stored,
            expected,
        }
        .to_string()
    }

    #[test]
    fn a_cursor_mismatch_shows_small_cursors_whole_and_large_ones_cut() {
        assert_eq!(
            mismatch(Some("41".into()), None),
            "job 'j': the stored cursor is 41, not the expected none (no checkpoint); nothing was written"
        );
        // A quote and 99 of 'é' (2 bytes each) make 199 bytes: the cut at
        // 200 falls inside a character and moves back to its start.
        let large = format!("\"{}\"", "é".repeat(100_000));
        let message = mismatch(Some(large.clone()), Some("1".into()));
        let shown = format!("\"{}… ({} bytes)", "é".repeat(99), large.len());
        assert_eq!(
            message,
            format!(
                "job 'j': the stored cursor is {shown}, not the expected 1; nothing was written"
            )
        );
        // A cursor of exactly the limit is shown whole.
        let at_limit = "x".repeat(CURSOR_SHOWN);
        assert!(mismatch(Some(at_limit.clone()), None).contains(&at_limit));
    }
}
