//! PostgreSQL's edges: a `jsonb` value that ckpt cannot read back (written
//! behind its back, nested deeper than `serde_json` reads) is an error
//! naming the column, never a panic, wherever it is read; a value it cannot
//! store fails alone; the longest schema name works.

use std::sync::Arc;

use ckpt::store::{OpenMode, PgStore};
use ckpt::{Checkpoint, Ckpt, NewItem};
use serde_json::json;

/// `[[[…1…]]]`, 200 deep: `jsonb` keeps it; `serde_json` stops at 128.
fn too_deep() -> String {
    format!("{}1{}", "[".repeat(200), "]".repeat(200))
}

fn corrupt<T: std::fmt::Debug>(what: &str, result: ckpt::Result<T>, column: &str) {
    match result {
        Err(e @ ckpt::Error::Storage(_)) => {
            let line = e.to_string();
            let named = format!("malformed data in the PostgreSQL store: column {column}:");
            assert!(line.contains(&named), "{what}: {line}");
            // Not the SQLite file advice of a corrupt store.
            assert!(!line.contains("sqlite3"), "{what}: {line}");
        }
        other => panic!("{what}: expected a malformed-data error, got {other:?}"),
    }
}

/// A store in a schema of its own on the test server, dropped afterwards,
/// and a plain connection to write behind ckpt's back; `None` (saying why)
/// without a server, unless `CKPT_REQUIRE_SERVICES=1`.
struct Scratch {
    store: Arc<PgStore>,
    schema: String,
    /// The store's URL.
    url: String,
    raw: postgres::Client,
}

impl Scratch {
    fn new(schema: String, pool_size: usize) -> Option<Scratch> {
        let base = std::env::var("CKPT_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string());
        let raw = match postgres::Client::connect(&base, postgres::NoTls) {
            Ok(c) => c,
            Err(e) if crate::services_required() => {
                panic!("CKPT_REQUIRE_SERVICES=1 but PostgreSQL is not usable: {e}")
            }
            Err(e) => {
                eprintln!("skipped: PostgreSQL is not available ({e})");
                return None;
            }
        };
        let sep = if base.contains('?') { '&' } else { '?' };
        let url = format!("{base}{sep}schema={schema}&pool_size={pool_size}");
        let store = Arc::new(PgStore::open(&url, OpenMode::CreateIfMissing).unwrap());
        Some(Scratch {
            store,
            schema,
            url,
            raw,
        })
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = self.store.drop_schema();
    }
}

#[test]
fn undecodable_jsonb_is_an_error_naming_the_column_not_a_panic() {
    let Some(mut sc) = Scratch::new(format!("ckpt_decode_{}", std::process::id()), 2) else {
        return;
    };
    let schema = sc.schema.clone();
    let ckpt = Ckpt::new(sc.store.clone());

    let q = ckpt.queue("deep").unwrap();
    q.enqueue([NewItem::key("done"), NewItem::key("next")])
        .unwrap();
    let done = q.claim(1).unwrap().pop().unwrap();
    q.complete(&done, Some(json!({"n": 1}))).unwrap();
    ckpt.set_checkpoint(
        "cursor-job",
        &Checkpoint {
            cursor: json!(1),
            items_processed: 1,
            stage: None,
            state: None,
        },
    )
    .unwrap();

    let deep = too_deep();
    sc.raw
        .batch_execute(&format!(
            "UPDATE {schema}.items SET stats = '{deep}' WHERE key = 'done';
         UPDATE {schema}.items SET payload = '{deep}' WHERE key = 'next';
         UPDATE {schema}.jobs SET cursor = '{deep}' WHERE name = 'cursor-job';
         UPDATE {schema}.history SET cursor = '{deep}';"
        ))
        .unwrap();

    corrupt("items", q.items(None, 10), "stats");
    corrupt("claim", q.claim(1), "payload");
    corrupt("job", ckpt.get_job("cursor-job"), "cursor");
    corrupt("history", ckpt.store().history("cursor-job", 10), "cursor");

    // Only damage writes a negative schema version: named, not a panic.
    sc.raw
        .batch_execute(&format!(
            "UPDATE {schema}.ckpt_meta SET value = '-1' WHERE key = 'schema_version'"
        ))
        .unwrap();
    let err = PgStore::open(&sc.url, OpenMode::MustExist).unwrap_err();
    assert!(
        matches!(&err, ckpt::Error::NotAStore(m) if m.contains("damaged ckpt_meta")),
        "{err}"
    );
}

/// Saves of several threads share one transaction (group commit). A save
/// the server refuses (a NUL in a cursor: PostgreSQL's jsonb holds none)
/// fails alone, as one clear error; its neighbours' saves all commit.
#[test]
fn a_refused_save_fails_alone_in_a_group_commit() {
    let Some(sc) = Scratch::new(format!("ckpt_group_nul_{}", std::process::id()), 4) else {
        return;
    };
    let ckpt = Ckpt::new(sc.store.clone());
    let options = ckpt::JobOptions {
        lease: std::time::Duration::from_secs(60),
        policy: ckpt::CheckpointPolicy::Always,
    };
    let results: Vec<(usize, usize)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|t| {
                let (ckpt, options) = (&ckpt, options.clone());
                s.spawn(move || {
                    let mut job = ckpt.job_with(&format!("job{t}"), options).unwrap();
                    let (mut saved, mut refused) = (0, 0);
                    for i in 0..100 {
                        let cursor = match t {
                            0 => json!({"k": "a\u{0}b", "i": i}),
                            _ => json!({"i": i}),
                        };
                        match job.save(&cursor, i) {
                            Ok(_) => saved += 1,
                            Err(ckpt::Error::InvalidInput(m)) => {
                                assert!(m.contains("NUL"), "{m}");
                                assert!(!m.contains("store error: store error"), "{m}");
                                refused += 1;
                            }
                            Err(e) => panic!("job{t}: {e}"),
                        }
                    }
                    (saved, refused)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(results[0], (0, 100), "every save with a NUL is refused");
    for (t, r) in results.iter().enumerate().skip(1) {
        assert_eq!(
            *r,
            (100, 0),
            "job{t}: a neighbour's refusal failed its saves"
        );
    }
}

/// A schema name as long as PostgreSQL allows (63 bytes): enqueue and
/// re-drive notify waiting runners on a channel whose name must fit too.
#[test]
fn the_longest_schema_name_works() {
    let mut schema = format!("ckpt_long_{}_", std::process::id());
    while schema.len() < 63 {
        schema.push('l');
    }
    let Some(sc) = Scratch::new(schema, 2) else {
        return;
    };
    let q = Ckpt::new(sc.store.clone()).queue("long").unwrap();
    q.enqueue([NewItem::key("a")]).unwrap();
    let item = q.claim(1).unwrap().pop().unwrap();
    q.fail(&item, "once").unwrap();
    let dead = q.counts().unwrap().dead + q.counts().unwrap().failed;
    assert_eq!(dead, 1);
    q.redrive(ckpt::ItemStatus::Dead, None).unwrap();
    q.redrive(ckpt::ItemStatus::Failed, None).unwrap();
    assert_eq!(q.counts().unwrap().pending, 1);
}

/// A TCP proxy to the test server that can stop forwarding while keeping
/// every connection open: a hung server or pooler, as the client sees it.
struct FreezingProxy {
    addr: std::net::SocketAddr,
    frozen: Arc<std::sync::atomic::AtomicBool>,
}

impl FreezingProxy {
    fn start(to: String) -> FreezingProxy {
        use std::io::{Read, Write};
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let frozen = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = frozen.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = std::net::TcpStream::connect(&to) else {
                    continue;
                };
                for (mut from, mut into) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    let flag = flag.clone();
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 16 * 1024];
                        loop {
                            while flag.load(Ordering::SeqCst) {
                                std::thread::sleep(std::time::Duration::from_millis(20));
                            }
                            match from.read(&mut buf) {
                                Ok(0) | Err(_) => return,
                                Ok(n) => {
                                    // Read before the freeze, held back by it.
                                    while flag.load(Ordering::SeqCst) {
                                        std::thread::sleep(std::time::Duration::from_millis(20));
                                    }
                                    if into.write_all(&buf[..n]).is_err() {
                                        return;
                                    }
                                }
                            }
                        }
                    });
                }
            }
        });
        FreezingProxy { addr, frozen }
    }

    fn freeze(&self, frozen: bool) {
        self.frozen
            .store(frozen, std::sync::atomic::Ordering::SeqCst);
    }
}

/// A server that stops answering (the connection stays open, so no TCP
/// timeout fires) fails the call as unavailable after `response_timeout`,
/// rather than blocking it, and the lease it cannot renew, for ever; once
/// the server answers again, the next call works on a new connection.
#[test]
fn a_server_that_stops_answering_fails_the_call_after_the_response_timeout() {
    let Some(sc) = Scratch::new(format!("ckpt_hung_{}", std::process::id()), 2) else {
        return;
    };
    let (scheme_user, rest) = sc.url.split_once('@').expect("user@host in the test URL");
    let (host, path) = rest.split_once('/').expect("a database in the test URL");
    let proxy = FreezingProxy::start(host.to_string());
    let url = format!("{scheme_user}@{}/{path}&response_timeout=2", proxy.addr);
    let ckpt = Ckpt::new(Arc::new(
        PgStore::open(&url, OpenMode::CreateIfMissing).unwrap(),
    ));
    let cp = |n: u64| Checkpoint::new(json!(n), n);
    ckpt.set_checkpoint("hung", &cp(1)).unwrap();
    proxy.freeze(true);
    let (tx, rx) = std::sync::mpsc::channel();
    let call = {
        let ckpt = ckpt.clone();
        std::thread::spawn(move || {
            let started = std::time::Instant::now();
            let result = ckpt.set_checkpoint("hung", &cp(2));
            let _ = tx.send((result, started.elapsed()));
        })
    };
    let (result, took) = rx
        .recv_timeout(std::time::Duration::from_secs(60))
        .expect("the call still blocked after 60 s");
    call.join().unwrap();
    match result {
        Err(ckpt::Error::Unavailable(m)) => {
            assert!(m.contains("did not answer within 2s"), "{m}")
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert!(took < std::time::Duration::from_secs(30), "took {took:?}");
    proxy.freeze(false);
    ckpt.set_checkpoint("hung", &cp(3)).unwrap();
    let stored = ckpt.get_job("hung").unwrap().unwrap().checkpoint.unwrap();
    assert_eq!(stored.cursor, json!(3));
}

/// A save waiting for a row lock another session holds (one left idle in a
/// transaction after `SELECT … FOR UPDATE`) fails after `response_timeout`
/// as unavailable, and the message names that cause beside a hung server;
/// once the lock is gone, the next save works.
#[test]
fn a_save_behind_another_sessions_row_lock_says_where_to_look() {
    let Some(mut sc) = Scratch::new(format!("ckpt_locked_{}", std::process::id()), 2) else {
        return;
    };
    let url = format!("{}&response_timeout=2", sc.url);
    let ckpt = Ckpt::new(Arc::new(
        PgStore::open(&url, OpenMode::CreateIfMissing).unwrap(),
    ));
    let cp = |n: u64| Checkpoint::new(json!(n), n);
    ckpt.set_checkpoint("locked", &cp(1)).unwrap();
    let mut tx = sc.raw.transaction().unwrap();
    tx.execute(
        &format!(
            "SELECT 1 FROM {}.jobs WHERE name = 'locked' FOR UPDATE",
            sc.schema
        ),
        &[],
    )
    .unwrap();
    match ckpt.set_checkpoint("locked", &cp(2)) {
        Err(ckpt::Error::Unavailable(m)) => assert!(
            m.contains("did not answer within 2s")
                && m.contains("waits for a lock another session holds")
                && m.contains("idle in transaction"),
            "{m}"
        ),
        other => panic!("expected Unavailable, got {other:?}"),
    }
    tx.rollback().unwrap();
    ckpt.set_checkpoint("locked", &cp(3)).unwrap();
    let stored = ckpt.get_job("locked").unwrap().unwrap().checkpoint.unwrap();
    assert_eq!(stored.cursor, json!(3));
}
