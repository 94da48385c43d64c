//! One test binary: the conformance suite run against every store, plus
//! store-specific tests.

use std::sync::Arc;

use ckpt::store::{MemoryStore, Store};
use rstest_reuse::{self, template};

/// Every store the conformance suite runs on: a test marked
/// `#[apply(every_store)]` runs once per case. Adding a store to ckpt
/// means adding its line here (and its fixture below), nothing else.
#[template]
#[rstest::rstest]
#[case::memory(crate::memory())]
#[case::sqlite(crate::sqlite())]
#[case::postgres(crate::postgres())]
#[case::pgbouncer(crate::pgbouncer())]
#[case::redis(crate::redis())]
fn every_store(#[case] store: Option<Fixture>) {}

// After the template: a `macro_rules!` underneath, seen by the modules that
// follow it.
mod clock_skew;
mod conformance;
mod exactly_once;
#[cfg(feature = "postgres")]
mod pg_decode;
#[cfg(feature = "postgres")]
mod pg_tls;
#[cfg(feature = "postgres")]
#[path = "support/pgbouncer.rs"]
mod pgbouncer;
#[cfg(feature = "postgres")]
mod sessions;
mod sqlite;

/// A store under test and whatever keeps it alive.
pub struct Fixture {
    /// The store.
    pub store: Arc<dyn Store>,
    /// Opens another handle on the same data (another connection for
    /// SQLite, so threads contend like processes do).
    pub another: Box<dyn Fn() -> Arc<dyn Store>>,
    /// Marks the store as written by a newer ckpt and returns the error of
    /// opening it again; `None` for stores without a persistent schema.
    pub newer_schema: Option<Box<dyn Fn() -> ckpt::Error>>,
    _guard: Option<Box<dyn std::any::Any>>,
}

pub fn memory() -> Option<Fixture> {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let same = store.clone();
    Some(Fixture {
        store,
        another: Box::new(move || same.clone()),
        newer_schema: None,
        _guard: None,
    })
}

pub fn sqlite() -> Option<Fixture> {
    use ckpt::store::{OpenMode, SqliteOptions, SqliteStore};
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("ckpt.db").to_string_lossy().into_owned();
    let open = {
        let path = path.clone();
        move || -> Arc<dyn Store> {
            Arc::new(
                SqliteStore::open(&path, SqliteOptions::default(), OpenMode::CreateIfMissing)
                    .expect("open sqlite store"),
            )
        }
    };
    let store = open();
    let newer_path = path.clone();
    Some(Fixture {
        store,
        another: Box::new(open),
        newer_schema: Some(Box::new(move || {
            let conn = rusqlite::Connection::open(&newer_path).unwrap();
            conn.execute_batch("PRAGMA user_version = 999").unwrap();
            drop(conn);
            SqliteStore::open(&newer_path, SqliteOptions::default(), OpenMode::MustExist)
                .expect_err("a newer schema must be refused")
        })),
        _guard: Some(Box::new(dir)),
    })
}

/// True when a missing server must fail the tests (CI) instead of skipping.
pub fn services_required() -> bool {
    std::env::var("CKPT_REQUIRE_SERVICES").is_ok_and(|v| v == "1")
}

/// A fresh schema on the test PostgreSQL server, dropped afterwards; `None`
/// (the test is skipped, with the reason printed) when there is no server
/// and `CKPT_REQUIRE_SERVICES` is not `1`.
#[cfg(not(feature = "postgres"))]
pub fn postgres() -> Option<Fixture> {
    eprintln!("skipped: this build has no PostgreSQL store (feature `postgres`)");
    None
}

#[cfg(feature = "postgres")]
pub fn postgres() -> Option<Fixture> {
    let base = std::env::var("CKPT_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string());
    postgres_at(&base, &base, Box::new(()))
}

/// The test server's `test` database through a PgBouncer of the fixture's
/// own in transaction mode (`?pooler=transaction`), with two server
/// connections for all the fixture's clients, so they really share them.
#[cfg(not(feature = "postgres"))]
pub fn pgbouncer() -> Option<Fixture> {
    eprintln!("skipped: this build has no PostgreSQL store (feature `postgres`)");
    None
}

#[cfg(feature = "postgres")]
pub fn pgbouncer() -> Option<Fixture> {
    let direct = "postgres://postgres@127.0.0.1:5432/test";
    if let Err(e) = postgres::Client::connect(direct, postgres::NoTls) {
        if services_required() {
            panic!("CKPT_REQUIRE_SERVICES=1 but PostgreSQL is not usable: {e}");
        }
        eprintln!("skipped: PostgreSQL is not available at {direct} ({e})");
        return None;
    }
    let bouncer = pgbouncer::PgBouncer::start("transaction", 5432, 2)?;
    let pooled = format!(
        "postgres://postgres@127.0.0.1:{}/test?pooler=transaction",
        bouncer.port()
    );
    postgres_at(&pooled, direct, Box::new(bouncer))
}

/// A fresh schema of the server at `base` (reached directly at `direct`,
/// for what the test does behind the store's back), dropped before
/// `server` (whatever else the server needs kept alive) goes.
#[cfg(feature = "postgres")]
fn postgres_at(base: &str, direct: &str, server: Box<dyn std::any::Any>) -> Option<Fixture> {
    use ckpt::store::{OpenMode, PgStore};
    use std::sync::atomic::{AtomicU32, Ordering};
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let schema = format!(
        "ckpt_test_{}_{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos()
    );
    let sep = if base.contains('?') { '&' } else { '?' };
    let url = format!("{base}{sep}schema={schema}&pool_size=4");
    let store = match PgStore::open(&url, OpenMode::CreateIfMissing) {
        Ok(store) => Arc::new(store),
        Err(e) if services_required() => {
            panic!("CKPT_REQUIRE_SERVICES=1 but PostgreSQL is not usable: {e}")
        }
        Err(e) => {
            eprintln!("skipped: PostgreSQL is not available ({e}); start it or set CKPT_TEST_POSTGRES_URL");
            return None;
        }
    };
    struct DropSchema(Arc<PgStore>);
    impl Drop for DropSchema {
        fn drop(&mut self) {
            let _ = self.0.drop_schema();
        }
    }
    let open = {
        let url = url.clone();
        move || -> Arc<dyn Store> {
            Arc::new(PgStore::open(&url, OpenMode::MustExist).expect("open postgres store"))
        }
    };
    let newer_url = url.clone();
    let raw_url = direct.to_string();
    let newer_schema = schema.clone();
    Some(Fixture {
        store: store.clone(),
        another: Box::new(open),
        newer_schema: Some(Box::new(move || {
            let mut client = postgres::Client::connect(&raw_url, postgres::NoTls).unwrap();
            client
                .batch_execute(&format!(
                    "UPDATE {newer_schema}.ckpt_meta SET value = '999' WHERE key = 'schema_version'"
                ))
                .unwrap();
            PgStore::open(&newer_url, OpenMode::MustExist)
                .expect_err("a newer schema must be refused")
        })),
        // Fields drop in order: the schema before the server it is on.
        _guard: Some(Box::new((DropSchema(store), server))),
    })
}

/// A fresh key prefix on the test Redis server, whose keys are deleted
/// afterwards; `None` (the test is skipped, with the reason printed) when
/// there is no server and `CKPT_REQUIRE_SERVICES` is not `1`.
#[cfg(not(feature = "redis"))]
pub fn redis() -> Option<Fixture> {
    eprintln!("skipped: this build has no Redis store (feature `redis`)");
    None
}

#[cfg(feature = "redis")]
pub fn redis() -> Option<Fixture> {
    use ckpt::store::{OpenMode, RedisStore};
    use std::sync::atomic::{AtomicU32, Ordering};
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let base = std::env::var("CKPT_TEST_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379/0".to_string());
    let prefix = format!(
        "ckpt_test_{}_{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos()
    );
    let sep = if base.contains('?') { '&' } else { '?' };
    let url = format!("{base}{sep}prefix={prefix}");
    let store = match RedisStore::open(&url, OpenMode::CreateIfMissing) {
        Ok(store) => Arc::new(store),
        Err(e) if services_required() => {
            panic!("CKPT_REQUIRE_SERVICES=1 but Redis is not usable: {e}")
        }
        Err(e) => {
            eprintln!("skipped: Redis is not available ({e}); start it or set CKPT_TEST_REDIS_URL");
            return None;
        }
    };
    /// Deletes every key under the prefix (SCAN: in tests only).
    struct DeleteKeys {
        base: String,
        prefix: String,
    }
    impl Drop for DeleteKeys {
        fn drop(&mut self) {
            let Ok(mut conn) =
                redis::Client::open(self.base.as_str()).and_then(|c| c.get_connection())
            else {
                return;
            };
            let keys: Vec<String> = redis::cmd("SCAN")
                .cursor_arg(0)
                .arg("MATCH")
                .arg(format!("{}:*", self.prefix))
                .arg("COUNT")
                .arg(1000)
                .clone()
                .iter(&mut conn)
                .map(|it| it.filter_map(Result::ok).collect())
                .unwrap_or_default();
            for chunk in keys.chunks(500) {
                let _ = redis::cmd("UNLINK").arg(chunk).exec(&mut conn);
            }
        }
    }
    let open = {
        let url = url.clone();
        move || -> Arc<dyn Store> {
            Arc::new(RedisStore::open(&url, OpenMode::MustExist).expect("open redis store"))
        }
    };
    let newer_url = url.clone();
    let raw_url = base.clone();
    let meta = format!("{prefix}:meta");
    Some(Fixture {
        store,
        another: Box::new(open),
        newer_schema: Some(Box::new(move || {
            let mut conn = redis::Client::open(raw_url.as_str())
                .and_then(|c| c.get_connection())
                .unwrap();
            redis::cmd("HSET")
                .arg(&meta)
                .arg("schema_version")
                .arg(999)
                .exec(&mut conn)
                .unwrap();
            RedisStore::open(&newer_url, OpenMode::MustExist)
                .expect_err("a newer schema must be refused")
        })),
        _guard: Some(Box::new(DeleteKeys { base, prefix })),
    })
}
