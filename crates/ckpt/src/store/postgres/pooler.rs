//! Connection poolers between ckpt and the server (PgBouncer, Supavisor,
//! RDS Proxy), named in the URL: `?pooler=session` or
//! `?pooler=transaction`. ckpt does not guess: a pooler cannot be told
//! from a server reliably, and guessing wrong in transaction mode would
//! break statements in ways that look like other faults.
//!
//! - **No pooler** (the default): the schema is set in the startup packet
//!   (`options=-c search_path=…`), statements are prepared once per
//!   connection and cached, and liveness uses session advisory locks and
//!   LISTEN (see [`liveness`](super::liveness), [`notify`](super::notify)).
//! - **Session mode**: each client connection keeps one server connection
//!   for its life, so everything works as without a pooler, except that
//!   poolers refuse the `options` startup parameter. The schema is set by
//!   a `SET search_path` on each new connection instead.
//! - **Transaction mode**: a server connection is ours only for the length
//!   of one transaction. So, here:
//!   - every statement runs inside an explicit transaction, which first
//!     sets `search_path` with `SET LOCAL` (sent with the transaction's
//!     first statement or its BEGIN, so no round trip of its own);
//!   - statements prepared in a transaction are closed before it ends
//!     ([`PgStore::leave`]): a named statement left on a server connection
//!     would clash with another client's of the same name;
//!   - no session advisory locks: a worker's death is found when its
//!     leases expire, and a worker that cannot renew stops its own work
//!     first (self-fencing). Crashed workers' items are taken over after
//!     their lease rather than after a few seconds;
//!   - no LISTEN: idle runners poll.

use deadpool_postgres::{GenericClient, StatementCache};

use super::conn::pg_err;
use super::PgStore;
use crate::error::Result;

/// Which pooler, if any, sits between ckpt and the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Pooler {
    /// Connections go to the server itself (or through a pooler that
    /// passes startup parameters on).
    #[default]
    None,
    /// A session-mode pooler: one server connection per client connection.
    Session,
    /// A transaction-mode pooler: a server connection per transaction.
    Transaction,
}

impl Pooler {
    /// The URL's `pooler=` value.
    pub fn parse(value: &str) -> std::result::Result<Pooler, String> {
        match value {
            "none" => Ok(Pooler::None),
            "session" => Ok(Pooler::Session),
            "transaction" => Ok(Pooler::Transaction),
            _ => Err(format!(
                "pooler must be none, session or transaction, not {value:?}"
            )),
        }
    }

    /// Whether this session keeps state across transactions: advisory
    /// locks, LISTEN, prepared statements, `SET`.
    pub fn keeps_sessions(self) -> bool {
        self != Pooler::Transaction
    }
}

/// The statement that sets the schema for the rest of a session
/// (`SET`) or of a transaction (`SET LOCAL`).
pub(super) fn set_search_path(schema: &str, local: bool) -> String {
    let scope = if local { "SET LOCAL" } else { "SET" };
    // The store's schema first, then `public`, where a caller's own tables
    // (written in the same transaction as a checkpoint) usually live.
    format!("{scope} search_path TO {schema}, public")
}

impl PgStore {
    /// Starts work inside a transaction just begun on `c`: behind a
    /// transaction-mode pooler, sets the schema for it. Nothing otherwise.
    pub(super) async fn enter(&self, c: &impl GenericClient) -> Result<()> {
        if self.pooler.keeps_sessions() {
            return Ok(());
        }
        c.batch_execute(&set_search_path(&self.schema, true))
            .await
            .map_err(pg_err)
    }

    /// The statement that begins a transaction by hand (not through the
    /// driver's `transaction()`): `BEGIN`, and behind a transaction-mode
    /// pooler the schema's `SET LOCAL` with it, in the same round trip.
    pub(super) fn begin_statement(&self) -> String {
        if self.pooler.keeps_sessions() {
            return "BEGIN".to_string();
        }
        format!("BEGIN; {}", set_search_path(&self.schema, true))
    }

    /// Ends work inside a transaction, before its COMMIT or ROLLBACK is
    /// sent: behind a transaction-mode pooler, closes the statements
    /// prepared in it (the Close messages go out ahead of the COMMIT, on
    /// the server connection that holds them). Nothing otherwise.
    pub(super) fn leave(&self, statements: &StatementCache) {
        if !self.pooler.keeps_sessions() {
            statements.clear();
        }
    }

    /// The pooler named in the URL.
    pub fn pooler(&self) -> Pooler {
        self.pooler
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_three_modes_and_refuses_others() {
        assert_eq!(Pooler::parse("none"), Ok(Pooler::None));
        assert_eq!(Pooler::parse("session"), Ok(Pooler::Session));
        assert_eq!(Pooler::parse("transaction"), Ok(Pooler::Transaction));
        for bad in ["", "Transaction", "statement", "on"] {
            let err = Pooler::parse(bad).unwrap_err();
            assert!(err.contains("none, session or transaction"), "{err}");
        }
        assert!(Pooler::None.keeps_sessions());
        assert!(Pooler::Session.keeps_sessions());
        assert!(!Pooler::Transaction.keeps_sessions());
    }

    #[test]
    fn search_path_statements() {
        assert_eq!(
            set_search_path("ckpt", true),
            "SET LOCAL search_path TO ckpt, public"
        );
        assert_eq!(
            set_search_path("jobs_x", false),
            "SET search_path TO jobs_x, public"
        );
    }
}
