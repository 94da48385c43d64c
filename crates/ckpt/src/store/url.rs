//! Store URL helpers shared by the backends: query strings, and keeping
//! passwords out of messages. Opening a store from its URL is `open`'s.

/// Whether opening may create a store that does not exist yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// Create the store if missing (commands that write: `ckpt run`,
    /// `ckpt checkpoint set`).
    CreateIfMissing,
    /// Fail with [`Error::NotFound`](crate::Error::NotFound) if missing (commands that only read).
    MustExist,
}

/// `url` with the password of any `user:password@` part replaced by `***`,
/// for logs and error messages.
pub fn redact_url(url: &str) -> String {
    // Without a scheme, `key=value` words are a libpq connection string
    // (`host=db password=…`), whose password may come after spaces and
    // quotes: nothing after the first `=` is shown.
    if let Some((key, _)) = url.split_once('=') {
        let is_keyword = |c: char| c.is_ascii_alphanumeric() || c == '_' || c.is_whitespace();
        if !url.contains("://") && key.chars().all(is_keyword) {
            return format!("{key}=***");
        }
    }
    let mut out = match password_range(url).or_else(|| mistyped_password_range(url)) {
        Some(pw) => format!("{}***{}", &url[..pw.start], &url[pw.end..]),
        None => url.to_string(),
    };
    // A password may also come as a query parameter (`?password=`, which
    // the PostgreSQL driver accepts); mask every value whose key says so.
    for range in query_secret_ranges(&out).into_iter().rev() {
        out.replace_range(range, "***");
    }
    out
}

/// The byte ranges of the values of query parameters whose key names a
/// secret (`pass`, `secret` or `token` anywhere in the key, any case).
fn query_secret_ranges(url: &str) -> Vec<std::ops::Range<usize>> {
    let from = password_range(url).map_or(0, |pw| pw.end);
    let Some(q) = url[from..].find('?').map(|i| from + i + 1) else {
        return Vec::new();
    };
    let mut ranges = Vec::new();
    let mut start = q;
    for pair in url[q..].split('&') {
        if let Some((key, value)) = pair.split_once('=') {
            let key = key.to_ascii_lowercase();
            let secret = ["pass", "secret", "token"].iter().any(|s| key.contains(s));
            if secret && !value.is_empty() {
                let value_start = start + key.len() + 1;
                ranges.push(value_start..value_start + value.len());
            }
        }
        start += pair.len() + 1;
    }
    ranges
}

/// Where the password of `url` is, if it has one.
///
/// The userinfo ends at the *last* `@`: a password copied in without
/// percent-encoding may hold `/`, `?`, `#` or `@`, and ending it at the
/// first of those would print the rest of it. When a query happens to hold
/// an `@` this redacts more than the password, which is the safe mistake.
///
/// Redis has no user name without a password: `redis://WORD@host` is a
/// password with its colon forgotten, so all of `WORD` counts as one.
pub(crate) fn password_range(url: &str) -> Option<std::ops::Range<usize>> {
    let start = url.find("://")? + 3;
    let at = start + url[start..].rfind('@')?;
    match url[start..at].find(':') {
        Some(colon) => Some(start + colon + 1..at),
        None if url.starts_with("redis") => Some(start..at),
        None => None,
    }
}

/// Where a password may be in a URL whose `://` was mistyped
/// (`postgres:/app:pw@host`, `redis//:pw@host`): between its first `:` and
/// its last `@`, or all before that `@` when it has no `:`. More than the
/// password, which is the safe mistake.
fn mistyped_password_range(url: &str) -> Option<std::ops::Range<usize>> {
    if url.contains("://") {
        return None;
    }
    let at = url.rfind('@')?;
    let start = url[..at].find(':').map_or(0, |colon| colon + 1);
    Some(start..at)
}

/// `url` split into the part before its query and the query, looking for
/// the `?` only after the password, which may hold one.
#[cfg_attr(not(any(feature = "postgres", feature = "redis")), allow(dead_code))]
pub(crate) fn split_query(url: &str) -> (&str, &str) {
    let from = password_range(url).map_or(0, |pw| pw.end);
    match url[from..].find('?') {
        Some(i) => (&url[..from + i], &url[from + i + 1..]),
        None => (url, ""),
    }
}

/// `message` with the password of `url` replaced by `***` (driver errors
/// may quote the URL they were given).
#[cfg_attr(not(any(feature = "postgres", feature = "redis")), allow(dead_code))]
pub(crate) fn scrub(message: &str, url: &str) -> String {
    let mut out = message.to_string();
    let secrets = password_range(url)
        .into_iter()
        .chain(query_secret_ranges(url))
        .map(|r| &url[r])
        .filter(|s| !s.is_empty());
    for secret in secrets {
        out = out.replace(secret, "***");
    }
    out
}

/// The query parameters of a URL, as `(key, value)` pairs; a key given
/// twice is an error (which one should win is a guess, and a guess about
/// `prefix` or `schema` opens someone else's store).
#[cfg_attr(
    not(any(feature = "sqlite", feature = "postgres", feature = "redis")),
    allow(dead_code)
)]
pub(crate) fn query_pairs(query: &str) -> crate::error::Result<Vec<(&str, &str)>> {
    let pairs: Vec<(&str, &str)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').unwrap_or((p, "")))
        .collect();
    for (i, (key, _)) in pairs.iter().enumerate() {
        if pairs[..i].iter().any(|(k, _)| k == key) {
            return Err(crate::error::Error::Open(format!(
                "parameter {key:?} is given twice in the store URL; give it once"
            )));
        }
    }
    Ok(pairs)
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
        assert_eq!(redact_url("redis://s3cret@db/0"), "redis://***@db/0");
        assert_eq!(redact_url("rediss://s3cret@db/0"), "rediss://***@db/0");
        assert_eq!(redact_url("sqlite://ckpt.db"), "sqlite://ckpt.db");
        assert_eq!(redact_url("no scheme"), "no scheme");
        assert_eq!(redact_url("data/ckpt.db"), "data/ckpt.db");
        // A mistyped `://`: still nothing of the password shows.
        assert_eq!(
            redact_url("postgres:/app:Hunter2@db.internal/prod"),
            "postgres:***@db.internal/prod"
        );
        assert_eq!(
            redact_url("redis//:pw@h:6379/0?password=x"),
            "redis//:***@h:6379/0?password=***"
        );
        assert_eq!(redact_url("Hunter2@db/x"), "***@db/x");
        // A libpq key=value string: nothing after its first `=`.
        assert_eq!(
            redact_url("host=db user=app password = 'a b' dbname=x"),
            "host=***"
        );
        // Passwords that were not percent-encoded: nothing of them shows.
        for (url, secret) in [
            ("redis://:Ab3/x+Yz9@redis.internal:6379/0", "Ab3/x+Yz9"),
            ("redis://:Ab3?xYz9@redis.internal:6379/0", "Ab3?xYz9"),
            ("postgres://bob:p@ss#w/rd@db/x?schema=s", "p@ss#w/rd"),
        ] {
            let redacted = redact_url(url);
            assert!(!redacted.contains(secret), "{redacted}");
            assert!(redacted.contains("***@"), "{redacted}");
            let (base, query) = split_query(url);
            assert!(base.ends_with(
                &url[url.rfind('@').unwrap()..url.len() - query.len()].trim_end_matches('?')
            ));
            assert!(!query.contains(secret));
            assert_eq!(
                scrub(&format!("bad URL {url}"), url),
                format!("bad URL {redacted}")
            );
        }
        assert_eq!(
            redact_url("postgres://bob@db/x?schema=s&password=hunter2&sslmode=require"),
            "postgres://bob@db/x?schema=s&password=***&sslmode=require"
        );
        assert_eq!(
            redact_url("postgres://bob:a@db/x?PassWord=b&auth_token=c"),
            "postgres://bob:***@db/x?PassWord=***&auth_token=***"
        );
        assert_eq!(
            scrub("failed for hunter2", "postgres://bob@db/x?password=hunter2"),
            "failed for ***"
        );
        assert_eq!(
            query_pairs("a=1&&b&c=").unwrap(),
            [("a", "1"), ("b", ""), ("c", "")]
        );
        let e = query_pairs("prefix=a&ttl=1d&prefix=b").unwrap_err();
        assert!(e.to_string().contains("\"prefix\" is given twice"), "{e}");
        assert_eq!(
            split_query("postgres://db/x?schema=s"),
            ("postgres://db/x", "schema=s")
        );
        assert_eq!(
            split_query("redis://:a?b@h/0?ttl=1d"),
            ("redis://:a?b@h/0", "ttl=1d")
        );
    }
}
