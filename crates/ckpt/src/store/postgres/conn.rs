//! The PostgreSQL connections: the pool every statement goes through, the
//! liveness connection, the statement cache, transactions and errors.

use std::cell::Cell;
use std::time::Instant;

use deadpool_postgres::{GenericClient, Object};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use super::PgStore;
use crate::error::{Error, Result};

impl PgStore {
    /// The key of this store's current liveness session, establishing one
    /// first if needed (see [`liveness`](super::liveness)); `None` behind a
    /// transaction-mode pooler, where there are no liveness sessions.
    pub(crate) fn liveness_key(&self) -> Result<Option<i64>> {
        if !self.pooler.keeps_sessions() {
            return Ok(None);
        }
        let wait = self
            .config
            .get_connect_timeout()
            .copied()
            .unwrap_or(std::time::Duration::from_secs(5));
        Ok(self
            .liveness
            .session(&self.config, &self.tls, &self.target, wait)?
            .key
            .into())
    }

    pub(super) fn block<F: std::future::Future>(&self, f: F) -> F::Output {
        self.runtime.block_on(f)
    }

    /// Runs a store call, failing it as [`Error::Unavailable`] when the
    /// server leaves a statement unanswered for the response timeout (a
    /// hung server or pooler, a network path that still accepts packets):
    /// otherwise the call, and a lease that can no longer be renewed, would
    /// wait for ever. The time runs from the last answer (see [`answered`]),
    /// so a call of many statements (a large enqueue) may take longer. The
    /// pool's idle connections are dropped, as the stuck one may be among
    /// them; the next call connects anew.
    pub(super) fn call<T>(&self, f: impl std::future::Future<Output = Result<T>>) -> Result<T> {
        if UNBOUNDED.with(Cell::get) {
            return crate::interrupt::block_on(&self.runtime, f);
        }
        let limit = self.response_timeout;
        // Abandoned by the caller's check (`crate::interrupt`) between
        // waits, or by the response timeout within them.
        crate::interrupt::block_on(&self.runtime, async {
            answered();
            let mut f = std::pin::pin!(f);
            loop {
                let since = ANSWERED.with(Cell::get).elapsed();
                match limit.checked_sub(since).filter(|left| !left.is_zero()) {
                    Some(left) => {
                        if let Ok(out) = tokio::time::timeout(left, f.as_mut()).await {
                            return out;
                        }
                    }
                    None => {
                        self.pool.retain(|_, _| false);
                        // Either the server (or a pooler) hangs, or the
                        // statement waits for a row lock: most often
                        // another session's, left idle in a transaction.
                        return Err(Error::Unavailable(format!(
                            "PostgreSQL did not answer within {}s (response_timeout): the server or a pooler hangs, or the statement waits for a lock another session holds (look for 'idle in transaction' in pg_stat_activity)",
                            limit.as_secs()
                        )));
                    }
                }
            }
        })
    }

    pub(super) async fn client(&self) -> Result<Object> {
        self.pool
            .get()
            .await
            .map_err(|e| super::connect_error::pool_error(e, &self.target))
    }
}

thread_local! {
    /// When the server last answered a statement of the call this thread
    /// runs (see [`PgStore::call`]).
    static ANSWERED: Cell<Instant> = Cell::new(Instant::now());
}

thread_local! {
    /// Set while an [`Unbounded`] guard lives on this thread.
    static UNBOUNDED: Cell<bool> = const { Cell::new(false) };
}

/// While it lives, this thread's store calls wait for the server as long as
/// it takes, with no response timeout: for maintenance whose one statement
/// may rightly run for minutes (deleting a job of millions of items,
/// cutting a long history), which an operator starts and can interrupt.
pub(super) struct Unbounded {
    before: bool,
    /// Not `Send`: dropped on another thread, it would reset that one's.
    _here: std::marker::PhantomData<*const ()>,
}

impl Unbounded {
    pub(super) fn new() -> Unbounded {
        Unbounded {
            before: UNBOUNDED.with(|u| u.replace(true)),
            _here: std::marker::PhantomData,
        }
    }
}

impl Drop for Unbounded {
    fn drop(&mut self) {
        UNBOUNDED.with(|u| u.set(self.before));
    }
}

/// Marks an answer from the server: the response timeout starts again.
pub(super) fn answered() {
    ANSWERED.with(|at| at.set(Instant::now()));
}

/// Statements through the connection's prepared-statement cache: one round
/// trip per statement instead of a parse and an execute. Each answer is
/// [`answered`].
pub(super) trait Cached: GenericClient {
    async fn cquery(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, tokio_postgres::Error> {
        let stmt = self.prepare_cached(sql).await?;
        answered();
        let out = self.query(&stmt, params).await;
        answered();
        out
    }
    async fn cquery_one(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Row, tokio_postgres::Error> {
        let stmt = self.prepare_cached(sql).await?;
        answered();
        let out = self.query_one(&stmt, params).await;
        answered();
        out
    }
    async fn cquery_opt(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>, tokio_postgres::Error> {
        let stmt = self.prepare_cached(sql).await?;
        answered();
        let out = self.query_opt(&stmt, params).await;
        answered();
        out
    }
    async fn cexecute(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, tokio_postgres::Error> {
        let stmt = self.prepare_cached(sql).await?;
        answered();
        let out = self.execute(&stmt, params).await;
        answered();
        out
    }
}

impl<T: GenericClient> Cached for T {}

/// Runs `$body` (an async block body evaluating to a `Result`) inside one
/// transaction on a pooled connection, with `$tx` bound to the connection;
/// commits on `Ok`, rolls back on `Err`. A panic in `$body` discards the
/// connection (the server then rolls back) instead of pooling it inside a
/// transaction.
macro_rules! in_tx {
    ($store:expr, |$tx:ident| $body:block) => {
        $store.call(async {
            let held = $crate::store::postgres::conn::InTx::new($store.client().await?);
            let $tx = held.client();
            let begin = $store.begin_statement();
            // Pipelined: BEGIN (and, behind a transaction-mode pooler, the
            // schema's SET LOCAL) goes out with the body's first statement
            // and the server runs them in order, so the transaction costs
            // no round trip of its own to open.
            let done = futures_util::future::try_join(
                async { $tx.batch_execute(&begin).await.map_err(pg_err) },
                async { $body },
            )
            .await
            .map(|((), out)| out);
            $store.leave(&$tx.statement_cache);
            // Ended now, not left to a drop: on this current-thread runtime
            // nothing may drive the connection to send a queued ROLLBACK for
            // a while, and the row locks would stay held.
            let end = if done.is_ok() { "COMMIT" } else { "ROLLBACK" };
            let ended = $tx.batch_execute(end).await;
            if ended.is_ok() {
                held.ended();
            }
            match (done, ended) {
                (Ok(out), Ok(())) => Ok(out),
                (Ok(_), Err(e)) => Err(pg_err(e)),
                (Err(e), _) => Err(e),
            }
        })
    };
}
pub(super) use in_tx;

/// A pooled connection inside a transaction opened by hand. Dropped before
/// [`InTx::ended`] (a panic, or a COMMIT or ROLLBACK that failed), it
/// discards the connection rather than pool it mid-transaction.
pub(crate) struct InTx(Option<Object>);

impl InTx {
    pub(crate) fn new(client: Object) -> InTx {
        InTx(Some(client))
    }

    pub(crate) fn client(&self) -> &Object {
        self.0.as_ref().expect("held until dropped")
    }

    /// The transaction ended: the connection may go back to the pool.
    pub(crate) fn ended(mut self) {
        drop(self.0.take());
    }
}

impl Drop for InTx {
    fn drop(&mut self) {
        if let Some(client) = self.0.take() {
            drop(Object::take(client));
        }
    }
}

/// Runs `$body` (an async block body evaluating to a `Result`) with `$c`
/// bound to a pooled connection: directly (each statement its own
/// transaction) or, behind a transaction-mode pooler, inside one
/// transaction as [`in_tx!`] runs it, since only within a transaction is
/// the server connection ours.
macro_rules! with_client {
    ($store:expr, |$c:ident| $body:block) => {
        if $store.pooler().keeps_sessions() {
            $store.call(async {
                // Discarded, not pooled, if the call is dropped mid-statement
                // (the response timeout).
                let held = $crate::store::postgres::conn::InTx::new($store.client().await?);
                let $c = held.client();
                let out = async { $body }.await;
                held.ended();
                out
            })
        } else {
            in_tx!($store, |$c| $body)
        }
    };
}
pub(super) use with_client;

/// Maps a driver error to the library's error.
pub(crate) fn pg_err(e: tokio_postgres::Error) -> Error {
    if let Some(db) = e.as_db_error() {
        let code = db.code();
        if *code == SqlState::T_R_SERIALIZATION_FAILURE
            || *code == SqlState::T_R_DEADLOCK_DETECTED
            || *code == SqlState::LOCK_NOT_AVAILABLE
        {
            return Error::Busy(format!("PostgreSQL: {}", db.message()));
        }
        if *code == SqlState::ADMIN_SHUTDOWN
            || *code == SqlState::CRASH_SHUTDOWN
            || *code == SqlState::CANNOT_CONNECT_NOW
        {
            return Error::Unavailable(format!("PostgreSQL is restarting: {}", db.message()));
        }
        // PostgreSQL's text and jsonb hold no NUL character, which SQLite's
        // and the other stores keep: the value is refused, nothing else.
        if *code == SqlState::UNTRANSLATABLE_CHARACTER
            || *code == SqlState::CHARACTER_NOT_IN_REPERTOIRE
        {
            return Error::InvalidInput(format!(
                "PostgreSQL cannot store this value (a NUL character, \\u0000?): {}",
                db.message()
            ));
        }
        // A standby, or a server being failed over: a URL without
        // target_session_attrs=read-write (or a name that moves to the new
        // primary before its promotion ends) reaches it. Once promoted, the
        // same sessions may write.
        if *code == SqlState::READ_ONLY_SQL_TRANSACTION {
            return Error::Unavailable(format!(
                "PostgreSQL is read-only (a standby, or a failover in progress): {}; with several hosts in the URL, add target_session_attrs=read-write",
                db.message()
            ));
        }
        // The server ended this session (idle_session_timeout, or
        // idle_in_transaction_session_timeout): the next connection works.
        if *code == SqlState::IDLE_SESSION_TIMEOUT
            || *code == SqlState::IDLE_IN_TRANSACTION_SESSION_TIMEOUT
        {
            return Error::Unavailable(format!(
                "PostgreSQL ended an idle session: {} ({})",
                db.message(),
                code.code()
            ));
        }
        // A statement prepared on one server connection and used on
        // another: a transaction-mode pooler the URL did not name.
        if *code == SqlState::INVALID_SQL_STATEMENT_NAME || *code == SqlState::DUPLICATE_PSTATEMENT
        {
            return Error::Storage(format!(
                "PostgreSQL: {} ({}); if a transaction-mode pooler (PgBouncer, Supavisor, RDS Proxy) sits between ckpt and the server, add pooler=transaction to the store URL",
                db.message(),
                code.code()
            ));
        }
        // A role missing a privilege on the store's schema or tables (a
        // managed database's least-privilege role): say what to grant.
        if *code == SqlState::INSUFFICIENT_PRIVILEGE {
            let grant = if db.message().contains("for database") {
                "have an administrator create the schema and GRANT USAGE, CREATE ON SCHEMA to the role, or grant CREATE on the database"
            } else {
                "the role needs USAGE on the store's schema and SELECT, INSERT, UPDATE, DELETE on its tables, USAGE on its sequences (and CREATE on the schema to create or upgrade the store)"
            };
            return Error::Storage(format!(
                "PostgreSQL: {} ({}); {grant}",
                db.message(),
                code.code()
            ));
        }
        if *code == SqlState::DISK_FULL {
            return Error::Storage(format!("disk full: {}", db.message()));
        }
        // What PgBouncer says while the server behind it is away ("server
        // login has been failing, try again later", "pgbouncer cannot
        // connect to server", "server conn crashed?"): an outage, ridden
        // out like the server's own restart. (Its one lasting 08P01, a
        // startup parameter it does not take, ends at connect.)
        if *code == SqlState::PROTOCOL_VIOLATION
            && !db.message().contains("unsupported startup parameter")
        {
            return Error::Unavailable(format!(
                "the pooler in front of PostgreSQL cannot reach the server: {} ({})",
                db.message(),
                code.code()
            ));
        }
        return Error::Storage(format!("PostgreSQL: {} ({})", db.message(), code.code()));
    }
    let io_failure = std::error::Error::source(&e).is_some_and(|s| s.is::<std::io::Error>());
    if e.is_closed() || io_failure {
        return Error::Unavailable(format!("lost connection to PostgreSQL: {e}"));
    }
    Error::Storage(format!("PostgreSQL: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A write refused by a read-only server (here a read-only session on
    /// the test server) is an outage: a standby about to be promoted.
    #[test]
    fn a_read_only_server_is_an_outage() {
        let url = std::env::var("CKPT_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let err = runtime.block_on(async {
            let (client, connection) =
                match tokio_postgres::connect(&url, tokio_postgres::NoTls).await {
                    Ok(c) => c,
                    Err(e) if std::env::var("CKPT_REQUIRE_SERVICES").is_ok_and(|v| v == "1") => {
                        panic!("CKPT_REQUIRE_SERVICES=1 but PostgreSQL is not usable: {e}")
                    }
                    Err(e) => {
                        eprintln!("skipped: PostgreSQL is not available ({e})");
                        return None;
                    }
                };
            tokio::spawn(connection);
            client
                .batch_execute("SET default_transaction_read_only = on")
                .await
                .unwrap();
            Some(
                client
                    .batch_execute("CREATE TEMP TABLE ckpt_probe (x INT)")
                    .await
                    .unwrap_err(),
            )
        });
        let Some(err) = err else { return };
        assert_eq!(err.code(), Some(&SqlState::READ_ONLY_SQL_TRANSACTION));
        let err = pg_err(err);
        assert!(err.is_transient(), "{err:?}");
        assert!(
            err.to_string().contains("target_session_attrs=read-write"),
            "{err}"
        );
    }
}
