//! The Redis store: the same claims, leases, fencing, retries and dead
//! letters as the other stores, on a Redis server, with completed jobs
//! expiring after a retention time.
//!
//! - URL: `redis://[[USER]:PASSWORD@]HOST[:PORT][/DB][?prefix=ckpt&ttl=7d]`.
//!   Every key starts with the prefix (default `ckpt`); a completed job's
//!   keys expire `ttl` after it completed (default 7 days, `ttl=off`
//!   to keep them). A password never appears in messages. `rediss://`
//!   for TLS, with `tls_ca`, `tls_cert`, `tls_key` (see [`tls`]).
//! - Every operation is one Lua script (enqueues of more than
//!   [`ENQUEUE_BATCH`] items: several scripts in one `MULTI`/`EXEC`), so it
//!   applies atomically and nothing is read, modified and written back by
//!   the client. Times are the caller's `now`: the scripts never read the
//!   Redis clock.
//! - Claims read sorted sets: the job's pending items by enqueue number
//!   and its running and failed items by ready time (lease expiry or retry
//!   time). Finished items are in neither, so a claim costs the same with
//!   ten or ten million of them; nothing ever runs `KEYS` or a scan.
//! - Durability is the server's: see `docs/REDIS.md` (AOF with
//!   `appendfsync always` is the only setting under which an acknowledged
//!   checkpoint survives a crash of the server's machine).
//! - The driver is async (redis-rs with a `ConnectionManager`, which
//!   reconnects by itself); the store owns a current-thread tokio runtime
//!   and blocks on it, so it must not be called from inside an async task.
//! - The scripts compute key names from the prefix, so the store needs a
//!   standalone server (or a Sentinel-managed primary), not Redis Cluster.
//!
//! # Key layout
//!
//! With `P` the prefix and `N` a job's number:
//!
//! | key | type | holds |
//! |---|---|---|
//! | `P:meta` | hash | `application` = `ckpt`, `schema_version` |
//! | `P:jobseq` | string | the last job number handed out |
//! | `P:jobs` | sorted set | job names (all scores 0, so ordered by name) |
//! | `P:name:NAME` | string | the number `N` of job `NAME` |
//! | `P:job:N` | hash | the job record and its checkpoint |
//! | `P:job:N:history` | list | checkpoint history entries (JSON), oldest first |
//! | `P:job:N:keys` | hash | item key → item number |
//! | `P:job:N:items` | hash | item number → item record (JSON) |
//! | `P:job:N:pending` … `:dead` | sorted sets | item numbers by status, scored by item number |
//! | `P:job:N:due` | sorted set | running and failed items, scored by lease expiry / retry time |
//!
//! An item's id is `N << 32 | item number`. The first three keys belong to
//! the store and never expire; the others belong to one job, and expire
//! together once it is completed, nobody holds it and none of its items is
//! unfinished.

mod commands;
mod conn;
mod items;
mod jobs;
mod rows;
mod schema;
mod scripts;
#[cfg(test)]
mod tests;
mod tls;

use std::time::Duration;

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::url::{query_pairs, redact_url, scrub, split_query, OpenMode};
use super::{ItemSignals, OwnerSessions, Store};
use crate::error::{Error, Result};
use conn::redis_err;

/// Items per script while enqueueing; larger enqueues send several scripts
/// in one `MULTI`/`EXEC`.
pub const ENQUEUE_BATCH: usize = 5_000;

/// The default retention of a completed job's keys: 7 days.
pub const DEFAULT_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// A ckpt store on a Redis server, under a key prefix.
#[derive(Debug)]
pub struct RedisStore {
    runtime: tokio::runtime::Runtime,
    conn: ConnectionManager,
    prefix: String,
    /// Retention of completed jobs in milliseconds, as the scripts take it
    /// (`"0"`: never expire).
    ttl_ms: String,
    ttl: Option<Duration>,
    /// The URL with any password redacted.
    url: String,
}

/// What the query string of a `redis://` URL sets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RedisOptions {
    prefix: String,
    ttl: Option<Duration>,
    tls: tls::TlsFiles,
}

impl RedisOptions {
    fn from_query(query: &str) -> Result<RedisOptions> {
        let mut options = RedisOptions {
            prefix: "ckpt".to_string(),
            ttl: Some(DEFAULT_TTL),
            tls: tls::TlsFiles::default(),
        };
        for (key, value) in query_pairs(query)? {
            if options.tls.take(key, value) {
                continue;
            }
            match key {
                "prefix" => {
                    if !is_prefix(value) {
                        return Err(Error::Open(format!(
                            "prefix {value:?} must be 1 to 64 letters, digits or _ - . :"
                        )));
                    }
                    options.prefix = value.to_string();
                }
                "ttl" => options.ttl = parse_ttl(value)?,
                other => {
                    return Err(Error::Open(format!(
                        "unknown parameter {other:?} in a redis:// URL; expected prefix, ttl, tls_ca, tls_cert or tls_key"
                    )))
                }
            }
        }
        Ok(options)
    }
}

/// A key prefix: safe in keys and in a `SCAN MATCH` pattern.
fn is_prefix(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'))
}

/// `7d`, `12h`, `30m`, `90s`, `500ms`, or a number of seconds; `off` (or
/// `0`) for no expiry.
fn parse_ttl(value: &str) -> Result<Option<Duration>> {
    let bad = || {
        Error::Open(format!(
            "ttl {value:?} must be a duration such as 7d, 12h, 30m, 90s or 500ms, or off"
        ))
    };
    if value == "off" {
        return Ok(None);
    }
    let digits = value.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = value.split_at(digits);
    let number: u64 = number.parse().map_err(|_| bad())?;
    let ms_per_unit: u64 = match unit {
        "ms" => 1,
        "" | "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(bad()),
    };
    // Redis refuses expiry times past 2^63 ms; a century is plenty.
    const CENTURY_MS: u64 = 100 * 365 * 86_400_000;
    let ms = number
        .checked_mul(ms_per_unit)
        .filter(|&ms| ms <= CENTURY_MS)
        .ok_or_else(bad)?;
    Ok((ms > 0).then(|| Duration::from_millis(ms)))
}

impl RedisStore {
    /// The schema version this build writes in `P:meta` (2: commands).
    pub const SCHEMA_VERSION: i64 = 2;

    /// Connects to the server named by `url` and opens (with
    /// [`OpenMode::CreateIfMissing`], creates) the store under its prefix.
    pub fn open(url: &str, mode: OpenMode) -> Result<RedisStore> {
        let redacted = redact_url(url);
        let (base, query) = split_query(url);
        // `redis://WORD@host`: the driver would take the password for a
        // user name and send no AUTH at all.
        if let Some(pw) = super::url::password_range(url) {
            if url[..pw.start].ends_with("://") {
                return Err(Error::Open(format!(
                    "{redacted}: a Redis URL gives its password after a colon: redis://:PASSWORD@HOST (or redis://USER:PASSWORD@HOST for an ACL user)"
                )));
            }
        }
        let options = RedisOptions::from_query(query)?;
        let client = options
            .tls
            .client(base)
            .map_err(|e| Error::Open(format!("{redacted}: {}", scrub(&e, url))))?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::Open(format!("cannot start the Redis driver: {e}")))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_response_timeout(Some(Duration::from_secs(60)))
            .set_number_of_retries(2)
            .set_min_delay(Duration::from_millis(100))
            .set_max_delay(Duration::from_secs(1));
        let conn = runtime
            .block_on(ConnectionManager::new_with_config(client, config))
            .map_err(|e| {
                // A plain Redis reads a TLS handshake as the start of a
                // command and waits for the rest: the connection times out
                // rather than fails.
                let tls_to_plain = e.is_timeout() && url.starts_with("rediss://");
                match redis_err(e, url) {
                    Error::Storage(m) => Error::Open(m),
                    Error::Unavailable(m) if tls_to_plain => Error::Unavailable(format!(
                        "{m} (no answer to the TLS handshake: is TLS on at that port? A rediss:// URL needs a Redis started with tls-port; redis:// is without TLS)"
                    )),
                    other => other,
                }
            })?;
        let store = RedisStore {
            runtime,
            conn,
            ttl_ms: options
                .ttl
                .map_or(0, |t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX))
                .to_string(),
            ttl: options.ttl,
            prefix: options.prefix,
            url: redacted,
        };
        store.check_schema(mode)?;
        store.warn_if_evicting();
        Ok(store)
    }

    /// Warns when the server may evict keys that never expire (an
    /// `allkeys-*` eviction policy): running jobs could vanish. Servers
    /// that refuse `CONFIG` are not checked.
    fn warn_if_evicting(&self) {
        let mut conn = self.conn.clone();
        let policy: ::redis::RedisResult<Vec<String>> = self.block(
            ::redis::cmd("CONFIG")
                .arg("GET")
                .arg("maxmemory-policy")
                .query_async(&mut conn),
        );
        if let Some(policy) = policy.ok().and_then(|p| p.get(1).cloned()) {
            if policy.starts_with("allkeys") {
                tracing::warn!(
                    store = %self.describe_store(),
                    %policy,
                    "Redis may evict any key under memory pressure, including running jobs; \
                     set maxmemory-policy noeviction (see docs/REDIS.md)"
                );
            }
        }
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// How long a completed job's keys are kept after it completed;
    /// `None`: forever.
    pub fn ttl(&self) -> Option<Duration> {
        self.ttl
    }

    /// The benchmark baseline: `n` raw `SET` round trips of a small JSON
    /// cursor on a scratch key under the prefix (deleted afterwards), as
    /// durable as the server makes writes. Returns writes per second.
    pub fn set_baseline(&self, n: u64) -> Result<f64> {
        let key = format!("{}:bench-raw:{}", self.prefix, std::process::id());
        let mut conn = self.conn.clone();
        self.block(async {
            let started = std::time::Instant::now();
            let mut result = Ok(());
            for i in 0..n {
                let cursor = serde_json::json!({ "offset": i }).to_string();
                if let Err(e) = ::redis::cmd("SET")
                    .arg(&key)
                    .arg(cursor)
                    .exec_async(&mut conn)
                    .await
                {
                    result = Err(e);
                    break;
                }
            }
            let rate = n as f64 / started.elapsed().as_secs_f64().max(1e-9);
            let deleted = ::redis::cmd("DEL").arg(&key).exec_async(&mut conn).await;
            result.and(deleted).map(|()| rate)
        })
        .map_err(|e| redis_err(e, &self.url))
    }

    fn describe_store(&self) -> String {
        format!("{} (prefix {})", self.url, self.prefix)
    }
}

impl Store for RedisStore {
    fn describe(&self) -> String {
        self.describe_store()
    }

    /// None: idle workers poll (a claim reads two small sorted sets).
    fn item_signals(&self) -> Option<&dyn ItemSignals> {
        None
    }

    /// None: Redis cannot tell a dead client from an idle one; owners on
    /// other hosts are taken over when their leases expire.
    fn owner_sessions(&self) -> Option<&dyn OwnerSessions> {
        None
    }

    /// `TIME`: the server's clock (seconds and microseconds).
    fn server_time(&self) -> Result<Option<crate::time::Timestamp>> {
        let mut conn = self.conn.clone();
        let (secs, micros): (i64, i64) = self.run(::redis::cmd("TIME").query_async(&mut conn))?;
        Ok(Some(crate::time::Timestamp(
            secs.saturating_mul(1000).saturating_add(micros / 1000),
        )))
    }
}
