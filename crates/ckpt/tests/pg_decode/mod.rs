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
