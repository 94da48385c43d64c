//! `ckpt run` through a real PgBouncer: in transaction mode
//! (`?pooler=transaction`), in session mode (`?pooler=session`), and the
//! one-line refusal when the URL does not say a pooler is there.
//!
//! Each test starts its own PgBouncer in front of the shared test server
//! (127.0.0.1:5432) with fewer server connections than its clients use.
//! Skipped, with the reason printed, when PgBouncer or the server is
//! missing, unless `CKPT_REQUIRE_SERVICES=1`.

use std::time::Duration;

use crate::pgbouncer::PgBouncer;
use crate::postgres::PgSchema;
use crate::util::{assert_each_once, items, wait_until, Sandbox};

/// A fresh schema on the test server, reached through a PgBouncer in
/// `pool_mode` with `server_pool` server connections. The schema is
/// dropped (directly) before the PgBouncer stops.
pub(crate) struct PooledSchema {
    pub(crate) schema: PgSchema,
    pub(crate) bouncer: PgBouncer,
    pool_mode: &'static str,
}

impl PooledSchema {
    pub(crate) fn new(tag: &str, pool_mode: &'static str, server_pool: u32) -> Option<Self> {
        let schema = PgSchema::new(tag)?;
        let bouncer = PgBouncer::start(pool_mode, 5432, server_pool)?;
        Some(PooledSchema {
            schema,
            bouncer,
            pool_mode,
        })
    }

    /// The store URL through the pooler, naming it.
    pub(crate) fn url(&self) -> String {
        format!("{}&pooler={}", self.url_unnamed(), self.pool_mode)
    }

    /// The store URL through the pooler, without `pooler=`.
    pub(crate) fn url_unnamed(&self) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/test?schema={}",
            self.bouncer.port(),
            self.schema.name()
        )
    }
}

/// The first column of `sql`'s rows on the test server, directly.
fn psql(sql: &str) -> Result<Vec<String>, postgres::Error> {
    let mut c =
        postgres::Client::connect("postgres://postgres@127.0.0.1:5432/test", postgres::NoTls)?;
    Ok(c.query(sql, &[])?
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect())
}

#[test]
fn a_pooler_the_url_does_not_name_is_one_line_with_the_next_step() {
    let Some(pg) = PooledSchema::new("unnamed", "transaction", 1) else {
        return;
    };
    let sb = Sandbox::new();
    let out = sb
        .ckpt_bare()
        .args(["--store", &pg.url_unnamed(), "jobs"])
        .run();
    let line = out.error(4);
    for needle in [
        "unsupported startup parameter",
        "add pooler=transaction to the URL",
        &format!("127.0.0.1:{}", pg.bouncer.port()),
    ] {
        assert!(line.contains(needle), "{needle:?} missing: {line}");
    }
    let out = sb
        .ckpt_bare()
        .args([
            "--store",
            &format!("{}&pooler=statement", pg.url_unnamed()),
            "jobs",
        ])
        .run();
    let line = out.error(4);
    assert!(
        line.contains("pooler must be none, session or transaction"),
        "{line}"
    );
}

/// Three runs of `-j 3` (each with its own pool of connections) share two
/// server connections: every item runs once, the job completes, and the
/// idle runners, with no LISTEN to wake them, poll their way to the end.
#[test]
fn three_runs_through_pgbouncer_in_transaction_mode_run_each_item_once() {
    let Some(pg) = PooledSchema::new("pooled_three", "transaction", 2) else {
        return;
    };
    crate::postgres::three_runs_run_each_item_once(&pg.url(), 120);
    // No liveness session was written: there is none behind this pooler.
    let keyed = psql(&format!(
        "SELECT count(*)::text FROM {}.items WHERE owner_key IS NOT NULL",
        pg.schema.name()
    ))
    .unwrap();
    assert_eq!(keyed, ["0"]);
}

/// In session mode each client connection keeps its server connection, so
/// the liveness sessions (advisory locks) work as without a pooler.
#[test]
fn a_run_through_pgbouncer_in_session_mode_keeps_its_liveness_session() {
    let Some(pg) = PooledSchema::new("pooled_session", "session", 10) else {
        return;
    };
    let sb = Sandbox::new();
    let all = items("s", 6);
    let file = sb.write_items("items.txt", &all);
    let run = sb
        .ckpt_bare()
        .args(["--store", &pg.url(), "run", "--job", "J", "--items"])
        .arg(&file)
        .args([
            "-j",
            "2",
            "--",
            "sh",
            "-c",
            r#"sleep 0.5; echo "$0" >> log"#,
        ])
        .start();
    // While it runs, its running items carry the key of an advisory lock
    // that a server session holds. (Until the run has made the store, the
    // query fails: not yet.)
    let schema = pg.schema.name().to_string();
    wait_until(
        Duration::from_secs(30),
        "a running item whose owner's liveness lock is held",
        || {
            psql(&format!(
                "SELECT count(*)::text FROM {schema}.items i
                 WHERE i.status = 'running' AND EXISTS (
                   SELECT 1 FROM pg_locks l WHERE l.locktype = 'advisory' AND l.granted
                     AND ((l.classid::BIGINT << 32) | l.objid::BIGINT) = i.owner_key)"
            ))
            .is_ok_and(|n| n != ["0"])
        },
    );
    run.wait(Duration::from_secs(60)).success();
    assert_each_once(&sb.lines("log"), &all);
}
