//! Exactly-once for database sinks: the caller's own writes and the
//! checkpoint (or the item's completion) commit in one transaction. A crash
//! between the two never leaves a duplicate or a lost row, and a zombie's
//! writes are rolled back with its refused checkpoint.

use std::sync::Arc;
use std::time::Duration;

use ckpt::store::SharedTx;
use ckpt::{Checkpoint, CheckpointPolicy, Ckpt, Error, JobOptions, ManualClock, NewItem};
use serde_json::json;

use crate::conformance::{queue_options, T0};

/// Inserts one row into the sink, in the store's open transaction.
type Insert<S> = Box<dyn for<'t> Fn(&mut <S as SharedTx>::Tx<'t>, &str) -> ckpt::Result<()>>;

/// A sink table in the store's own database, written in the store's
/// transactions through the library's generic [`SharedTx`] API.
struct Sink<S: SharedTx> {
    store: Arc<S>,
    insert: Insert<S>,
    /// Every row of the sink, sorted.
    rows: Box<dyn Fn() -> Vec<String>>,
}

impl<S: SharedTx + 'static> Sink<S> {
    fn ckpt(&self, clock: &ManualClock, worker: &str) -> Ckpt {
        Ckpt::new(self.store.clone())
            .with_clock(Arc::new(clock.clone()))
            .with_worker(worker_id(worker))
    }

    /// Saves `cp` and, in the same transaction, inserts `row`; then fails
    /// the transaction (before its commit) when `crash` is set.
    fn save(
        &self,
        job: &mut ckpt::Job,
        cp: Checkpoint,
        row: &str,
        crash: bool,
    ) -> ckpt::Result<()> {
        job.checkpoint_with(&*self.store, cp, |tx| {
            (self.insert)(tx, row)?;
            crash_if(crash)
        })
    }

    /// Completes `item` and inserts `row` in one transaction.
    fn complete(
        &self,
        q: &ckpt::Queue,
        item: &ckpt::ClaimedItem,
        row: &str,
        crash: bool,
    ) -> ckpt::Result<()> {
        q.complete_with(&*self.store, item, None, |tx| {
            (self.insert)(tx, row)?;
            crash_if(crash)
        })
    }

    fn rows(&self) -> Vec<String> {
        (self.rows)()
    }
}

fn crash_if(crash: bool) -> ckpt::Result<()> {
    if crash {
        Err(Error::Unavailable(
            "simulated crash before the commit".into(),
        ))
    } else {
        Ok(())
    }
}

fn worker_id(name: &str) -> ckpt::worker::WorkerId {
    ckpt::worker::WorkerId {
        host: "elsewhere".into(),
        pid: 1,
        start: 1,
        nonce: name.into(),
    }
}

fn options() -> JobOptions {
    JobOptions {
        lease: Duration::from_secs(10),
        policy: CheckpointPolicy::Always,
    }
}

/// Records 1..=100 into the sink, the checkpoint after each; the first run
/// "crashes" inside the transaction of record 40; a second worker resumes.
fn cursor_loop_with_sink<S: SharedTx + 'static>(sink: &Sink<S>) {
    let clock = ManualClock::new(T0);
    let first = sink.ckpt(&clock, "first");
    let mut job = first.job_with("sink-job", options()).unwrap();
    for record in 1..=100u64 {
        let cp = Checkpoint::new(json!(record), record);
        let crash = record == 40;
        let saved = sink.save(&mut job, cp, &format!("r{record:03}"), crash);
        if crash {
            assert!(saved.is_err());
            break;
        }
        saved.unwrap();
    }
    assert_eq!(sink.rows().len(), 39, "the crashed transaction left no row");
    clock.advance(Duration::from_secs(10));
    let second = sink.ckpt(&clock, "second");
    let mut resumed = second.job_with("sink-job", options()).unwrap();
    let start: u64 = resumed.resume_cursor().unwrap().unwrap();
    assert_eq!(start, 39);
    for record in start + 1..=100 {
        let cp = Checkpoint::new(json!(record), record);
        sink.save(&mut resumed, cp, &format!("r{record:03}"), false)
            .unwrap();
    }
    // The first worker wakes up: its write is refused, its row rolled back.
    let zombie = sink.save(&mut job, Checkpoint::new(json!(999), 999), "zombie", false);
    assert!(zombie.unwrap_err().is_fenced());
    resumed.complete().unwrap();
    let expected: Vec<String> = (1..=100).map(|r| format!("r{r:03}")).collect();
    assert_eq!(sink.rows(), expected, "every record exactly once");
    let rec = second.get_job("sink-job").unwrap().unwrap();
    assert_eq!(rec.checkpoint.unwrap().cursor, json!(100));
}

/// Items completed together with their sink rows; one completion crashes
/// and is retried by another worker after the lease expires.
fn items_with_sink<S: SharedTx + 'static>(sink: &Sink<S>) {
    let clock = ManualClock::new(T0);
    let a = sink
        .ckpt(&clock, "a")
        .queue_with("sink-items", queue_options(3))
        .unwrap();
    let b = sink
        .ckpt(&clock, "b")
        .queue_with("sink-items", queue_options(3))
        .unwrap();
    a.enqueue((0..20).map(|i| NewItem::key(format!("k{i:02}"))))
        .unwrap();
    for item in a.claim(20).unwrap() {
        let crash = item.key == "k07";
        let done = sink.complete(&a, &item, &item.key, crash);
        assert_eq!(done.is_err(), crash, "{}", item.key);
    }
    clock.advance(Duration::from_secs(10));
    let retry = b.claim(5).unwrap();
    assert_eq!(retry.len(), 1);
    assert_eq!(retry[0].key, "k07");
    sink.complete(&b, &retry[0], &retry[0].key, false).unwrap();
    let expected: Vec<String> = (0..20).map(|i| format!("k{i:02}")).collect();
    assert_eq!(sink.rows(), expected);
    assert_eq!(a.counts().unwrap().completed, 20);
}

/// A sink table in the store's SQLite file.
fn sqlite_sink() -> (Sink<ckpt::store::SqliteStore>, tempfile::TempDir) {
    use ckpt::store::{OpenMode, SqliteOptions, SqliteStore};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ckpt.db");
    let store = Arc::new(
        SqliteStore::open(
            path.to_str().unwrap(),
            SqliteOptions::default(),
            OpenMode::CreateIfMissing,
        )
        .unwrap(),
    );
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch("CREATE TABLE sink (row TEXT NOT NULL)")
        .unwrap();
    let sink = Sink {
        store,
        insert: Box::new(|tx: &mut rusqlite::Transaction<'_>, row: &str| {
            tx.execute("INSERT INTO sink (row) VALUES (?1)", [row])?;
            Ok(())
        }),
        rows: Box::new(move || {
            let conn = rusqlite::Connection::open(&path).unwrap();
            let mut stmt = conn.prepare("SELECT row FROM sink ORDER BY row").unwrap();
            let rows = stmt.query_map([], |r| r.get(0)).unwrap();
            rows.map(Result::unwrap).collect()
        }),
    };
    (sink, dir)
}

#[test]
fn sqlite_cursor_loop_with_sink() {
    cursor_loop_with_sink(&sqlite_sink().0);
}

#[test]
fn sqlite_items_with_sink() {
    items_with_sink(&sqlite_sink().0);
}

#[cfg(feature = "postgres")]
mod postgres_sink {
    use super::*;
    use ckpt::store::{OpenMode, PgStore};

    /// Drops the store's schema and the sink table (then stops the
    /// PgBouncer, if any).
    struct Cleanup {
        store: Arc<PgStore>,
        base: String,
        table: String,
        _bouncer: Option<crate::pgbouncer::PgBouncer>,
    }

    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = self.store.drop_schema();
            if let Ok(mut c) = postgres::Client::connect(&self.base, postgres::NoTls) {
                let _ = c.batch_execute(&format!("DROP TABLE IF EXISTS {}", self.table));
            }
        }
    }

    /// A sink table in `public`, beside the store's schema; the store
    /// reached directly or, when `pooled`, through a PgBouncer in
    /// transaction mode. The sink's statements name the table without its
    /// schema: they rely on the store's search path (its schema, then
    /// `public`) holding inside the shared transaction.
    fn pg_sink(tag: &str, pooled: bool) -> Option<(Sink<PgStore>, Cleanup)> {
        let fixture = crate::postgres()?;
        drop(fixture); // only to learn that the server is there
        let base = std::env::var("CKPT_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string());
        let bouncer = match pooled {
            true => Some(crate::pgbouncer::PgBouncer::start("transaction", 5432, 1)?),
            false => None,
        };
        let schema = format!("ckpt_sink_{tag}_{}", std::process::id());
        let store_url = match &bouncer {
            Some(b) => format!(
                "postgres://postgres@127.0.0.1:{}/test?pooler=transaction&schema={schema}",
                b.port()
            ),
            None => {
                let sep = if base.contains('?') { '&' } else { '?' };
                format!("{base}{sep}schema={schema}")
            }
        };
        let store = Arc::new(PgStore::open(&store_url, OpenMode::CreateIfMissing).unwrap());
        let name = format!("sink_{tag}_{}", std::process::id());
        let table = format!("public.{name}");
        let mut c = postgres::Client::connect(&base, postgres::NoTls).unwrap();
        c.batch_execute(&format!(
            "DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (row TEXT NOT NULL)"
        ))
        .unwrap();
        let insert = format!("INSERT INTO {name} (row) VALUES ($1)");
        let select = format!("SELECT row FROM {table} ORDER BY row");
        let rows_base = base.clone();
        let sink = Sink {
            store: store.clone(),
            insert: Box::new(move |tx: &mut ckpt::store::PgTx<'_>, row: &str| {
                tx.execute(&insert, &[&row])?;
                Ok(())
            }),
            rows: Box::new(move || {
                let mut c = postgres::Client::connect(&rows_base, postgres::NoTls).unwrap();
                c.query(&select, &[])
                    .unwrap()
                    .iter()
                    .map(|r| r.get(0))
                    .collect()
            }),
        };
        Some((
            sink,
            Cleanup {
                store,
                base,
                table,
                _bouncer: bouncer,
            },
        ))
    }

    #[test]
    fn postgres_cursor_loop_with_sink() {
        if let Some((sink, _cleanup)) = pg_sink("loop", false) {
            cursor_loop_with_sink(&sink);
        }
    }

    #[test]
    fn postgres_cursor_loop_with_sink_through_pgbouncer() {
        if let Some((sink, _cleanup)) = pg_sink("loop_pooled", true) {
            cursor_loop_with_sink(&sink);
        }
    }

    #[test]
    fn postgres_items_with_sink() {
        if let Some((sink, _cleanup)) = pg_sink("items", false) {
            items_with_sink(&sink);
        }
    }

    #[test]
    fn postgres_items_with_sink_through_pgbouncer() {
        if let Some((sink, _cleanup)) = pg_sink("items_pooled", true) {
            items_with_sink(&sink);
        }
    }
}
