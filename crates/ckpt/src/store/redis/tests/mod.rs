//! Redis-specific tests: retention, the key layout, URLs, a foreign or
//! missing store, a lost connection. Those that need a server use
//! `CKPT_TEST_REDIS_URL` (default `redis://127.0.0.1:6379/0`), each under a
//! prefix of its own whose keys are deleted afterwards (with SCAN: fine in
//! tests, never in the store); without a server they are skipped with the
//! reason printed, unless `CKPT_REQUIRE_SERVICES=1`.

mod connection;
mod items;
mod retention;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use super::*;
use crate::model::{ItemChange, ItemUpdate, NewItem};
use crate::store::{ItemStore, JobStore, Store};
use crate::time::Timestamp;

pub(super) const T0: Timestamp = Timestamp(1_700_000_000_000);
pub(super) const GLOBAL_KEYS: [&str; 3] = ["meta", "jobseq", "jobs"];

pub(super) fn base_url() -> String {
    std::env::var("CKPT_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into())
}

/// A prefix of this test's own on the test server.
pub(super) struct Scratch {
    pub(super) prefix: String,
    conn: ::redis::Connection,
}

impl Scratch {
    pub(super) fn new(tag: &str) -> Option<Scratch> {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let conn = ::redis::Client::open(base_url().as_str()).and_then(|c| c.get_connection());
        let conn = match conn {
            Ok(conn) => conn,
            Err(e) if std::env::var("CKPT_REQUIRE_SERVICES").is_ok_and(|v| v == "1") => {
                panic!("CKPT_REQUIRE_SERVICES=1 but Redis is not reachable: {e}")
            }
            Err(e) => {
                eprintln!(
                    "skipped: Redis is not reachable ({e}); start it or set CKPT_TEST_REDIS_URL"
                );
                return None;
            }
        };
        let prefix = format!(
            "ckpt_unit_{tag}_{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        Some(Scratch { prefix, conn })
    }

    pub(super) fn url(&self, query: &str) -> String {
        let base = base_url();
        let sep = if base.contains('?') { '&' } else { '?' };
        format!("{base}{sep}prefix={}{query}", self.prefix)
    }

    pub(super) fn open(&self, query: &str) -> RedisStore {
        RedisStore::open(&self.url(query), OpenMode::CreateIfMissing).expect("open the store")
    }

    /// Every key under the prefix, without it.
    pub(super) fn keys(&mut self) -> BTreeSet<String> {
        let pattern = format!("{}:*", self.prefix);
        let keys: Vec<String> = ::redis::cmd("SCAN")
            .cursor_arg(0)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000)
            .clone()
            .iter(&mut self.conn)
            .expect("scan")
            .map(|k| k.expect("a key"))
            .collect();
        let strip = self.prefix.len() + 1;
        keys.into_iter().map(|k| k[strip..].to_string()).collect()
    }

    /// `PTTL` of every key under the prefix (without it).
    pub(super) fn pttls(&mut self) -> BTreeMap<String, i64> {
        let keys = self.keys();
        keys.into_iter()
            .map(|k| {
                let ttl: i64 = ::redis::cmd("PTTL")
                    .arg(format!("{}:{k}", self.prefix))
                    .query(&mut self.conn)
                    .expect("pttl");
                (k, ttl)
            })
            .collect()
    }

    pub(super) fn raw<T: ::redis::FromRedisValue>(&mut self, cmd: &mut ::redis::Cmd) -> T {
        cmd.query(&mut self.conn).expect("raw command")
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let keys: Vec<String> = self
            .keys()
            .into_iter()
            .map(|k| format!("{}:{k}", self.prefix))
            .collect();
        for chunk in keys.chunks(500) {
            let _ = ::redis::cmd("UNLINK").arg(chunk).exec(&mut self.conn);
        }
    }
}

pub(super) fn items(keys: &[&str]) -> Vec<crate::Result<NewItem>> {
    keys.iter().map(|k| Ok(NewItem::key(*k))).collect()
}

pub(super) fn enqueue(store: &RedisStore, job: &str, keys: &[&str], now: Timestamp) -> u64 {
    store
        .enqueue(job, &mut items(keys).into_iter(), now)
        .unwrap()
        .inserted
}

/// Claims and completes every claimable item, as a worker of its own.
pub(super) fn complete_all(store: &RedisStore, job: &str, now: Timestamp) {
    loop {
        let claimed = store.claim(
            job,
            "finisher",
            100,
            now.plus(Duration::from_secs(10)),
            true,
            now,
        );
        let claimed = claimed.unwrap();
        if claimed.is_empty() {
            return;
        }
        let updates: Vec<ItemUpdate> = claimed
            .into_iter()
            .map(|c| ItemUpdate {
                lease: c.lease,
                change: ItemChange::Complete {
                    stats: None,
                    command: None,
                },
            })
            .collect();
        for r in store.update_items(&updates, now).unwrap() {
            r.unwrap();
        }
    }
}

/// The keys of the job with number `n` that exist, with their PTTL.
pub(super) fn job_ttls(all: &BTreeMap<String, i64>, name: &str, n: u32) -> BTreeMap<String, i64> {
    let own = format!("job:{n}");
    all.iter()
        .filter(|(k, _)| {
            **k == format!("name:{name}") || **k == own || k.starts_with(&format!("{own}:"))
        })
        .map(|(k, v)| (k.clone(), *v))
        .collect()
}
#[test]
fn url_options_and_their_errors() {
    let o = RedisOptions::from_query("").unwrap();
    assert_eq!((o.prefix.as_str(), o.ttl), ("ckpt", Some(DEFAULT_TTL)));
    let o = RedisOptions::from_query("prefix=app:ckpt-2&ttl=12h").unwrap();
    assert_eq!(
        (o.prefix.as_str(), o.ttl),
        ("app:ckpt-2", Some(Duration::from_secs(12 * 3600)))
    );
    for (ttl, want) in [
        ("500ms", Some(Duration::from_millis(500))),
        ("90", Some(Duration::from_secs(90))),
        ("30m", Some(Duration::from_secs(1800))),
        ("off", None),
        ("0", None),
    ] {
        assert_eq!(
            RedisOptions::from_query(&format!("ttl={ttl}")).unwrap().ttl,
            want,
            "{ttl}"
        );
    }
    for (query, want) in [
        ("prefix=", "prefix"),
        ("prefix=a b", "prefix"),
        ("prefix=a*", "prefix"),
        ("ttl=7x", "ttl"),
        ("ttl=-1", "ttl"),
        ("ttl=d", "ttl"),
        ("ttl=99999999999999999999d", "ttl"),
        ("ttl=200000000000d", "ttl"),
        ("ttl=36501d", "ttl"),
        ("schema=x", "unknown parameter"),
    ] {
        let err = RedisOptions::from_query(query).unwrap_err();
        assert!(matches!(err, Error::Open(_)), "{query}: {err}");
        assert!(err.to_string().contains(want), "{query}: {err}");
    }
}

#[test]
fn bad_urls_and_unreachable_servers_are_errors_without_secrets() {
    for url in [
        "redis://:hunter2@127.0.0.1:notaport/0",
        "redis://:hunter2@127.0.0.1:6379/notadb",
        "redis://:hunter2@127.0.0.1:6379/0?ttl=soon",
        "redis://:hunter2@127.0.0.1:6379/0?prefix=a&prefix=b",
        // The colon forgotten: the password would go as a user name.
        "redis://hunter2@127.0.0.1:6379/0",
        "rediss://hunter2@127.0.0.1:6379/0",
    ] {
        let err = RedisStore::open(url, OpenMode::MustExist).unwrap_err();
        assert!(matches!(err, Error::Open(_)), "{url}: {err:?}");
        assert!(!err.to_string().contains("hunter2"), "{url}: {err}");
    }
    let err = RedisStore::open("redis://hunter2@127.0.0.1/0", OpenMode::MustExist).unwrap_err();
    assert!(err.to_string().contains("redis://:PASSWORD@HOST"), "{err}");
    // Nothing listens on port 1: transient, so the runner would retry.
    let err =
        crate::store::open("redis://:hunter2@127.0.0.1:1/0", OpenMode::MustExist).unwrap_err();
    assert!(matches!(err, Error::Unavailable(_)), "{err:?}");
    assert!(err.to_string().contains("127.0.0.1:1"), "{err}");
    assert!(!err.to_string().contains("hunter2"), "{err}");
}

#[test]
fn a_password_never_shows() {
    let Some(s) = Scratch::new("password") else {
        return;
    };
    // With a password the server does not expect, opening fails; with one
    // it does, it works. Either way the password stays out of messages.
    let url = s.url("").replacen("redis://", "redis://:hunter2@", 1);
    match RedisStore::open(&url, OpenMode::CreateIfMissing) {
        Ok(store) => assert!(!store.describe().contains("hunter2")),
        Err(e) => assert!(!e.to_string().contains("hunter2"), "{e}"),
    }
}

#[test]
fn a_missing_or_foreign_store_is_refused_and_left_alone() {
    let Some(mut s) = Scratch::new("foreign") else {
        return;
    };
    let err = RedisStore::open(&s.url(""), OpenMode::MustExist).unwrap_err();
    assert!(err.is_not_found(), "{err:?}");
    assert!(s.keys().is_empty(), "a read-only open created nothing");
    let meta = format!("{}:meta", s.prefix);
    let () = s.raw(::redis::cmd("SET").arg(&meta).arg("not ours"));
    let err = RedisStore::open(&s.url(""), OpenMode::CreateIfMissing).unwrap_err();
    assert!(matches!(err, Error::NotAStore(_)), "{err:?}");
    let kept: String = s.raw(::redis::cmd("GET").arg(&meta));
    assert_eq!(kept, "not ours");
    let () = s.raw(::redis::cmd("DEL").arg(&meta));
    let () = s.raw(
        ::redis::cmd("HSET")
            .arg(&meta)
            .arg("application")
            .arg("other"),
    );
    let err = RedisStore::open(&s.url(""), OpenMode::CreateIfMissing).unwrap_err();
    assert!(matches!(err, Error::NotAStore(_)), "{err:?}");
    assert_eq!(s.keys().len(), 1);
}
