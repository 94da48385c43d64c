//! Store URLs: parsing, opening, and redacting passwords for messages.

use std::sync::Arc;

use super::{MemoryStore, Store};
use crate::error::{Error, Result};

/// Whether opening may create a store that does not exist yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// Create the store if missing (commands that write: `ckpt run`,
    /// `ckpt checkpoint set`).
    CreateIfMissing,
    /// Fail with [`Error::NotFound`] if missing (commands that only read).
    MustExist,
}

/// `url` with the password of any `user:password@` part replaced by `***`,
/// for logs and error messages.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_string();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let Some(at) = authority.rfind('@') else {
        return url.to_string();
    };
    let userinfo = &authority[..at];
    let user = userinfo.split(':').next().unwrap_or("");
    if !userinfo.contains(':') {
        return url.to_string();
    }
    format!("{}{user}:***{}", &url[..scheme_end + 3], &rest[at..])
}

/// The query parameters of a URL, as `(key, value)` pairs.
#[cfg_attr(
    not(any(feature = "sqlite", feature = "postgres", feature = "redis")),
    allow(dead_code)
)]
pub(crate) fn query_pairs(query: &str) -> Vec<(&str, &str)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').unwrap_or((p, "")))
        .collect()
}

// `rest` is read by the SQLite arm only; `mode` by every persistent store.
#[cfg_attr(not(feature = "sqlite"), allow(unused_variables))]
pub(super) fn open(url: &str, mode: OpenMode) -> Result<Arc<dyn Store>> {
    let (scheme, rest) = url.split_once("://").ok_or_else(|| {
        Error::Open(format!(
            "store URL {:?} has no scheme; expected sqlite://PATH or memory://",
            redact_url(url)
        ))
    })?;
    match scheme {
        "memory" => Ok(Arc::new(MemoryStore::new())),
        #[cfg(feature = "sqlite")]
        "sqlite" => {
            let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
            let options = super::sqlite::SqliteOptions::from_query(query)?;
            Ok(Arc::new(super::SqliteStore::open(path, options, mode)?))
        }
        #[cfg(feature = "postgres")]
        "postgres" | "postgresql" => Ok(Arc::new(super::PgStore::open(url, mode)?)),
        #[cfg(feature = "redis")]
        "redis" => Ok(Arc::new(super::RedisStore::open(url, mode)?)),
        other => Err(Error::Open(format!(
            "unsupported store scheme {other:?} in {}; this build supports: {}",
            redact_url(url),
            supported_schemes()
        ))),
    }
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
    }
    schemes.push("memory://");
    schemes.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("postgres://bob:s3cret@db:5432/x?sslmode=require"),
            "postgres://bob:***@db:5432/x?sslmode=require"
        );
        assert_eq!(
            redact_url("redis://:pw@127.0.0.1/0"),
            "redis://:***@127.0.0.1/0"
        );
        assert_eq!(redact_url("postgres://bob@db/x"), "postgres://bob@db/x");
        assert_eq!(redact_url("sqlite://ckpt.db"), "sqlite://ckpt.db");
        assert_eq!(redact_url("no scheme"), "no scheme");
    }

    #[test]
    fn bad_urls_are_clear_errors() {
        let e = open("ckpt.db", OpenMode::MustExist)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no scheme"), "{e}");
        let e = open("mysql://u:pw@h/db", OpenMode::MustExist)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("unsupported store scheme") && !e.contains("pw"),
            "{e}"
        );
    }
}
