//! Opening a store from its URL: the one place that knows every backend.

use std::sync::Arc;

use super::url::{redact_url, OpenMode};
use super::{MemoryStore, Store};
use crate::error::{Error, Result};

/// Opens the store named by `url`:
///
/// - `sqlite://PATH[?durability=full|normal&busy_timeout=DURATION_MS]`: the
///   embedded default. `sqlite://ckpt.db` is relative to the working
///   directory, `sqlite:///var/lib/ckpt.db` absolute.
/// - `postgres://…` (feature `postgres`): see `PgStore`.
/// - `redis://[[USER]:PASSWORD@]HOST[:PORT][/DB][?prefix=ckpt&ttl=7d]`
///   (feature `redis`): a store on a Redis server under a key prefix; a
///   completed job's keys expire after `ttl` (`off`: never). See
///   `RedisStore` and `docs/REDIS.md`. `rediss://` for TLS.
/// - `memory://`: a fresh in-memory store, gone when the process exits.
///
/// `mode` says whether a missing SQLite file (or PostgreSQL schema, or
/// Redis prefix) may be created.
// `rest` is read by the SQLite arm only; `mode` by every persistent store.
#[cfg_attr(not(feature = "sqlite"), allow(unused_variables))]
pub fn open(url: &str, mode: OpenMode) -> Result<Arc<dyn Store>> {
    let (scheme, rest) = url.split_once("://").ok_or_else(|| {
        if is_libpq_keywords(url) {
            Error::Open(format!(
                "store URL {:?} looks like a PostgreSQL key=value connection string; ckpt takes a URL: postgres://USER@HOST:PORT/DB?sslmode=… (the password from PGPASSWORD or ~/.pgpass)",
                redact_url(url)
            ))
        } else {
            Error::Open(format!(
                "store URL {:?} has no scheme; expected one of: {}",
                redact_url(url),
                supported_schemes()
            ))
        }
    })?;
    match scheme {
        "memory" => Ok(Arc::new(MemoryStore::new())),
        #[cfg(feature = "sqlite")]
        "sqlite" => {
            let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
            let options = super::SqliteOptions::from_query(query)?;
            Ok(Arc::new(super::SqliteStore::open(path, options, mode)?))
        }
        #[cfg(feature = "postgres")]
        "postgres" | "postgresql" => Ok(Arc::new(super::PgStore::open(url, mode)?)),
        #[cfg(feature = "redis")]
        "redis" | "rediss" => Ok(Arc::new(super::RedisStore::open(url, mode)?)),
        other => Err(Error::Open(format!(
            "unsupported store scheme {other:?} in {}; this build supports: {}",
            redact_url(url),
            supported_schemes()
        ))),
    }
}

/// Whether `s` starts like a libpq `key=value` connection string.
fn is_libpq_keywords(s: &str) -> bool {
    let Some((key, _)) = s.split_once('=') else {
        return false;
    };
    let keys = [
        "host", "hostaddr", "port", "dbname", "user", "password", "passfile", "sslmode", "service",
    ];
    keys.contains(&key.trim())
}

fn supported_schemes() -> String {
    let mut schemes = Vec::new();
    if cfg!(feature = "sqlite") {
        schemes.push("sqlite://");
    }
    if cfg!(feature = "postgres") {
        schemes.push("postgres://");
    }
    if cfg!(feature = "redis") {
        schemes.push("redis://");
        schemes.push("rediss://");
    }
    schemes.push("memory://");
    schemes.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_urls_are_clear_errors() {
        let e = open("ckpt.db", OpenMode::MustExist)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no scheme") && e.contains("memory://"), "{e}");
        // A libpq connection string is named as one, its password unshown.
        let e = open(
            "host=db port=5432 password=s3cret dbname=x",
            OpenMode::MustExist,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("key=value connection string") && e.contains("postgres://"),
            "{e}"
        );
        assert!(!e.contains("s3cret") && !e.contains("dbname"), "{e}");
        let e = open("dir/a=b.db", OpenMode::MustExist)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no scheme") && e.contains("dir/a=b.db"), "{e}");
        let e = open("mysql://u:pw@h/db", OpenMode::MustExist)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("unsupported store scheme") && !e.contains("pw"),
            "{e}"
        );
    }
}
