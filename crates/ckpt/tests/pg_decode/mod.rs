//! PostgreSQL: a `jsonb` value that ckpt cannot read back (written behind
//! its back, nested deeper than `serde_json` reads) is an error naming the
//! column, never a panic, wherever it is read.

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

#[test]
fn undecodable_jsonb_is_an_error_naming_the_column_not_a_panic() {
    let base = std::env::var("CKPT_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string());
    let mut raw = match postgres::Client::connect(&base, postgres::NoTls) {
        Ok(c) => c,
        Err(e) if crate::services_required() => {
            panic!("CKPT_REQUIRE_SERVICES=1 but PostgreSQL is not usable: {e}")
        }
        Err(e) => {
            eprintln!("skipped: PostgreSQL is not available ({e})");
            return;
        }
    };
    let schema = format!("ckpt_decode_{}", std::process::id());
    let sep = if base.contains('?') { '&' } else { '?' };
    let store = Arc::new(
        PgStore::open(
            &format!("{base}{sep}schema={schema}&pool_size=2"),
            OpenMode::CreateIfMissing,
        )
        .unwrap(),
    );
    struct Drop_(Arc<PgStore>);
    impl Drop for Drop_ {
        fn drop(&mut self) {
            let _ = self.0.drop_schema();
        }
    }
    let _cleanup = Drop_(store.clone());
    let ckpt = Ckpt::new(store);

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
    raw.batch_execute(&format!(
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
}
