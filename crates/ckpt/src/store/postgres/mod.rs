//! The PostgreSQL store: many machines share one job.
//!
//! - Everything lives in one schema (default `ckpt`, `?schema=NAME` in the
//!   URL), created and migrated on first open under a transaction-level
//!   advisory lock, so several processes opening a new store at once is safe.
//! - Claims are one statement: `FOR UPDATE SKIP LOCKED` picks ready items
//!   (pending, due for a retry, or with an expired lease) and the same
//!   statement takes them, so no separate rescuer is needed.
//! - Commits are durable as PostgreSQL's own settings make them
//!   (`synchronous_commit` on by default: a saved checkpoint survives a crash
//!   of the database server).
//! - The driver is async (tokio-postgres with a deadpool pool); the store
//!   owns a current-thread tokio runtime and blocks on it, so it must not be called
//!   from inside an async task (use `spawn_blocking`).
//! - Checkpoint saves of several threads share transactions (group
//!   commit); `?group_commit=off` gives each its own.
//! - URLs: `postgres://USER[:PASSWORD]@HOST[:PORT]/DB[?schema=ckpt&pool_size=16&group_commit=on]`;
//!   `pooler=session|transaction` behind a connection pooler (see
//!   [`pooler`]); other query parameters go to the driver. TLS in libpq's words
//!   (`sslmode`, `sslrootcert`, `sslcert`, `sslkey`; see [`tls`]). A
//!   password never appears in messages: they carry the redacted URL.

mod checkpoint;
mod commands;
mod conn;
mod connect_error;
mod group;
mod items;
mod jobs;
mod json;
mod libpq;
mod liveness;
mod notify;
mod patch;
mod pooler;
mod rows;
mod schema;
mod tls;
mod tx;

pub use pooler::Pooler;
pub use tokio_postgres::types::ToSql as PgToSql;
pub use tokio_postgres::Row as PgRow;
pub use tx::PgTx;

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};

use super::url::{query_pairs, redact_url, scrub, split_query, OpenMode};
use super::{ItemSignals, OwnerSessions, Store};
use crate::error::{Error, Result};
use conn::{in_tx, pg_err, with_client};

/// How long a pooled connection may sit unused before it is checked with
/// a round trip when taken again (see the pool's `pre_recycle` hook).
const IDLE_CHECK_AFTER: Duration = Duration::from_secs(1);

/// A ckpt store in a PostgreSQL schema.
#[derive(Debug)]
pub struct PgStore {
    runtime: tokio::runtime::Runtime,
    /// How long a call waits for the server to answer a statement
    /// (`response_timeout`, see [`PgStore::call`]).
    response_timeout: Duration,
    pool: Pool,
    schema: String,
    url: String,
    /// What connections aim at, for connection errors.
    target: connect_error::ConnectTarget,
    /// This store's liveness session (see [`liveness`]), started on the
    /// first claim or acquire. Items and jobs it holds carry its key.
    liveness: std::sync::Arc<liveness::Liveness>,
    config: tokio_postgres::Config,
    /// The TLS connector every connection is made with (see [`tls`]).
    tls: tls::MakeTls,
    group: group::GroupCommit,
    /// Notifications of claimable items, fed by the liveness session,
    /// which also LISTENs (see [`notify`]).
    wakeups: std::sync::Arc<notify::Wakeups>,
    /// Whether saves of several threads share transactions (`?group_commit=on`, the default).
    pub(crate) group_commit: bool,
    /// The pooler between ckpt and the server (`?pooler=`; see [`pooler`]).
    pooler: Pooler,
}

impl PgStore {
    /// Connects to the server named by `url` and opens (with
    /// [`OpenMode::CreateIfMissing`], creates) the store in its schema.
    pub fn open(url: &str, mode: OpenMode) -> Result<PgStore> {
        let redacted = redact_url(url);
        // The driver ends the user name and password at the first `@`,
        // ckpt's redaction at the last: with two, a password holding an
        // unencoded `@` would be split, the rest taken for the host (and
        // shown in messages as one). Refused before anything is parsed.
        if url.matches('@').count() > 1 {
            return Err(Error::Open(format!(
                "{redacted}: the URL holds more than one '@': percent-encode an '@' in the user name or password as %40 (or give the password by PGPASSWORD or ~/.pgpass)"
            )));
        }
        let (base, query) = split_query(url);
        let mut schema = "ckpt".to_string();
        let mut pool_size = 16usize;
        let mut group_commit = true;
        // As the Redis store's response timeout.
        let mut response_timeout = Duration::from_secs(60);
        let mut pooler = Pooler::None;
        let mut driver_params = Vec::new();
        let mut tls_params = tls::TlsParams::default();
        for (key, value) in query_pairs(query)? {
            let is_tls = tls_params
                .take(key, value)
                .map_err(|e| Error::Open(format!("{redacted}: {e}")))?;
            match key {
                _ if is_tls => {}
                "schema" => schema = value.to_string(),
                "pooler" => {
                    pooler =
                        Pooler::parse(value).map_err(|e| Error::Open(format!("{redacted}: {e}")))?
                }
                "group_commit" => {
                    group_commit = match value {
                        "on" => true,
                        "off" => false,
                        _ => {
                            return Err(Error::Open(format!(
                                "group_commit must be on or off, not {value:?}"
                            )))
                        }
                    }
                }
                "response_timeout" => {
                    response_timeout = value
                        .parse::<u64>()
                        .ok()
                        .filter(|s| (1..=86_400).contains(s))
                        .map(Duration::from_secs)
                        .ok_or_else(|| {
                            Error::Open(format!(
                                "response_timeout must be seconds from 1 to 86400, not {value:?}"
                            ))
                        })?
                }
                "pool_size" => {
                    // Far above any server's max_connections.
                    pool_size = value
                        .parse()
                        .ok()
                        .filter(|n| (1..=10_000).contains(n))
                        .ok_or_else(|| {
                            Error::Open(format!(
                                "pool_size must be a number from 1 to 10000, not {value:?}"
                            ))
                        })?
                }
                _ => driver_params.push(format!("{key}={value}")),
            }
        }
        if !is_identifier(&schema) {
            return Err(Error::Open(format!(
                "schema {schema:?} must be a lowercase SQL identifier ([a-z_][a-z0-9_]*, at most 63 bytes)"
            )));
        }
        let conn_str = if driver_params.is_empty() {
            base.to_string()
        } else {
            format!("{base}?{}", driver_params.join("&"))
        };
        let mut config: tokio_postgres::Config =
            conn_str.parse().map_err(|e: tokio_postgres::Error| {
                // "invalid connection string" says little; its cause names
                // the option ("unknown option `bogus`", "invalid value for
                // option `port`").
                let why = match std::error::Error::source(&e) {
                    Some(cause) if cause.to_string().starts_with("unknown option") => format!(
                        "{e}: {cause} (ckpt's own are schema, pool_size, pooler, group_commit, response_timeout, sslmode, sslrootcert, sslcert and sslkey; the others libpq's, as the driver knows them)"
                    ),
                    Some(cause) => format!("{e}: {cause}"),
                    None => e.to_string(),
                };
                Error::Open(format!("{redacted}: {}", scrub(&why, url)))
            })?;
        if pooler == Pooler::None {
            // The schema in the startup packet: no round trip. Poolers
            // refuse this parameter; behind one it is set by a statement.
            config.options(format!("-c search_path={schema},public"));
        }
        // Operators find ckpt's sessions in pg_stat_activity by this name,
        // unless the URL names them otherwise.
        if config.get_application_name().is_none() {
            config.application_name("ckpt");
        }
        let (ssl_mode, tls) = tls_params
            .connector()
            .map_err(|e| Error::Open(format!("{redacted}: {e}")))?;
        config.ssl_mode(ssl_mode);
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(5));
        }
        let password = libpq::apply_password(&mut config);
        let target =
            connect_error::ConnectTarget::new(&config, redacted.clone(), password, pool_size);
        let manager = Manager::from_config(
            config.clone(),
            tls.clone(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        // A connection that sat unused may have been ended by the server
        // (`idle_session_timeout`, `tcp_keepalives`, a pooler's
        // `server_idle_timeout`) without its task noticing yet (it runs
        // only while a call blocks on the runtime): one round trip tells,
        // and a dead one is replaced instead of failing the call. Busy
        // connections, taken again within the second, skip it.
        let mut pool = Pool::builder(manager).pre_recycle(deadpool_postgres::Hook::async_fn(
            |client, metrics| {
                let idle = metrics.last_used() >= IDLE_CHECK_AFTER;
                Box::pin(async move {
                    if idle {
                        client
                            .simple_query("")
                            .await
                            .map_err(deadpool_postgres::HookError::Backend)?;
                    }
                    Ok(())
                })
            },
        ));
        if pooler == Pooler::Session {
            let set = pooler::set_search_path(&schema, false);
            pool = pool.post_create(deadpool_postgres::Hook::async_fn(move |client, _| {
                let set = set.clone();
                Box::pin(async move {
                    client
                        .batch_execute(&set)
                        .await
                        .map_err(deadpool_postgres::HookError::Backend)
                })
            }));
        }
        let pool = pool
            .max_size(pool_size)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .create_timeout(Some(target.create_timeout))
            .wait_timeout(Some(target.wait_timeout))
            .build()
            .map_err(|e| Error::Open(format!("{redacted}: {e}")))?;
        // A current-thread runtime: the connection is driven by the thread
        // that waits for it, with no hand-off between threads per round trip.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::Open(format!("cannot start the PostgreSQL driver: {e}")))?;
        // One connection carries both the liveness lock and the LISTEN.
        let wakeups = std::sync::Arc::new(notify::Wakeups::default());
        let liveness = liveness::Liveness::listening(liveness::Listen {
            channel: notify::channel(&schema),
            wakeups: wakeups.clone(),
        });
        let store = PgStore {
            runtime,
            response_timeout,
            pool,
            schema,
            url: redacted,
            target,
            liveness: std::sync::Arc::new(liveness),
            config,
            tls,
            group: group::GroupCommit::default(),
            wakeups,
            group_commit,
            pooler,
        };
        store.block(schema::migrate(&store, mode))?;
        Ok(store)
    }

    /// The LISTEN/NOTIFY channel of this store.
    pub(crate) fn channel(&self) -> String {
        notify::channel(&self.schema)
    }

    /// The schema the store lives in.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// The benchmark baseline: `n` raw single-row `UPDATE` round trips
    /// (autocommit, so durable as the server makes commits) on a scratch
    /// table in this schema, which is dropped afterwards. Prepared once,
    /// except behind a transaction-mode pooler, where a raw client sends
    /// each as one simple query. Returns updates per second.
    pub fn update_baseline(&self, n: u64) -> Result<f64> {
        self.block(async {
            let client = self.client().await?;
            let table = format!("{}.bench_raw_{}", self.schema, std::process::id());
            client
                .batch_execute(&format!(
                    "CREATE TABLE {table} (job TEXT PRIMARY KEY, cursor JSONB, items BIGINT, at BIGINT);
                     INSERT INTO {table} VALUES ('bench', '0', 0, 0)"
                ))
                .await
                .map_err(pg_err)?;
            let sql = format!("UPDATE {table} SET cursor = $1, items = $2, at = $2 WHERE job = 'bench'");
            let update = match self.pooler.keeps_sessions() {
                true => Some(client.prepare(&sql).await.map_err(pg_err)?),
                false => None,
            };
            let started = std::time::Instant::now();
            let mut result = Ok(());
            for i in 0..n as i64 {
                let cursor = serde_json::json!({ "offset": i });
                let done = match &update {
                    Some(update) => client.execute(update, &[&cursor, &i]).await.map(drop),
                    None => {
                        client
                            .batch_execute(&format!(
                                "UPDATE {table} SET cursor = '{cursor}', items = {i}, at = {i} WHERE job = 'bench'"
                            ))
                            .await
                    }
                };
                if let Err(e) = done {
                    result = Err(pg_err(e));
                    break;
                }
            }
            let rate = n as f64 / started.elapsed().as_secs_f64().max(1e-9);
            drop(update);
            let dropped = client
                .batch_execute(&format!("DROP TABLE {table}"))
                .await
                .map_err(pg_err);
            result.and(dropped).map(|()| rate)
        })
    }

    /// Deletes the whole store: `DROP SCHEMA … CASCADE`. Irreversible.
    pub fn drop_schema(&self) -> Result<()> {
        self.block(async {
            let client = self.client().await?;
            client
                .batch_execute(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.schema))
                .await
                .map_err(pg_err)
        })
    }
}

impl Store for PgStore {
    fn describe(&self) -> String {
        format!("{} (schema {})", self.url, self.schema)
    }

    /// LISTEN/NOTIFY: enqueue and redrive notify at commit. Not behind a
    /// transaction-mode pooler, which does not deliver notifications.
    fn item_signals(&self) -> Option<&dyn ItemSignals> {
        self.pooler
            .keeps_sessions()
            .then_some(self as &dyn ItemSignals)
    }

    /// Session advisory locks: an owner whose lock is free is gone. Not
    /// behind a transaction-mode pooler, which would hand the lock's
    /// server connection to other clients: leases alone tell death there.
    fn owner_sessions(&self) -> Option<&dyn OwnerSessions> {
        self.pooler
            .keeps_sessions()
            .then_some(self as &dyn OwnerSessions)
    }

    /// `clock_timestamp()`: the server's clock when the statement runs (not
    /// `now()`, which is the transaction's start).
    fn server_time(&self) -> Result<Option<crate::time::Timestamp>> {
        with_client!(self, |client| {
            let row = client
                .query_one(
                    "SELECT (extract(epoch FROM clock_timestamp()) * 1000)::int8",
                    &[],
                )
                .await
                .map_err(pg_err)?;
            Ok(Some(crate::time::Timestamp(row.get(0))))
        })
    }
}

/// True for a lowercase SQL identifier that needs no quoting.
fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some('a'..='z' | '_'))
        && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_'))
        && s.len() <= 63
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers() {
        assert!(is_identifier("ckpt"));
        assert!(is_identifier("ckpt_test_01"));
        for bad in ["", "Ckpt", "1abc", "a-b", "a;drop", &"x".repeat(64)] {
            assert!(!is_identifier(bad), "{bad:?}");
        }
    }

    #[test]
    fn passwords_are_scrubbed_from_driver_messages() {
        let url = "postgres://bob:hunter2@db/x";
        assert_eq!(
            scrub("bad password hunter2 given", url),
            "bad password *** given"
        );
        assert_eq!(scrub("nothing", "postgres://bob@db/x"), "nothing");
    }

    #[test]
    fn bad_options_are_clear_errors_without_secrets() {
        for (url, want) in [
            ("postgres://u:pw1@127.0.0.1/db?schema=Bad-Name", "schema"),
            ("postgres://u:pw1@127.0.0.1/db?pool_size=0", "pool_size"),
            (
                "postgres://u:pw1@127.0.0.1/db?pool_size=99999999999999",
                "pool_size",
            ),
            (
                "postgres://u:pw1@127.0.0.1:notaport/db",
                "invalid connection string: invalid value for option `port`",
            ),
            // The option named, and ckpt's own listed.
            (
                "postgres://u:pw1@127.0.0.1/db?bogus=1",
                "unknown option `bogus` (ckpt's own are schema, pool_size",
            ),
            // An unencoded `@` in the password: the driver would take
            // `1@127.0.0.1` for the host.
            ("postgres://u:pw1@1@127.0.0.1/db", "%40"),
            ("postgres://u:p@pw1@127.0.0.1/db", "%40"),
        ] {
            let err = PgStore::open(url, OpenMode::MustExist)
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{url}: {err}");
            assert!(!err.contains("pw1"), "{url}: {err}");
        }
    }
}
