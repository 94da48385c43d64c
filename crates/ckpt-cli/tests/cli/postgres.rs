//! `ckpt` against a real PostgreSQL server: several processes (standing in
//! for several machines) share one job. Skipped, with the reason printed,
//! when no server is reachable, unless `CKPT_REQUIRE_SERVICES=1`.

use std::time::Duration;

use crate::util::{assert_each_once, item_counts, items, Sandbox};

/// A fresh schema on the test server, dropped when this guard goes.
pub(crate) struct PgSchema {
    pub(crate) base: String,
    schema: String,
}

impl PgSchema {
    pub(crate) fn new(tag: &str) -> Option<PgSchema> {
        let base = std::env::var("CKPT_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string());
        if let Err(e) = postgres::Client::connect(&base, postgres::NoTls) {
            if std::env::var("CKPT_REQUIRE_SERVICES").is_ok_and(|v| v == "1") {
                panic!("CKPT_REQUIRE_SERVICES=1 but PostgreSQL is not reachable: {e}");
            }
            eprintln!("skipped: PostgreSQL is not reachable ({e})");
            return None;
        }
        let schema = format!("ckpt_cli_{tag}_{}", std::process::id());
        Some(PgSchema { base, schema })
    }

    /// The schema's name.
    pub(crate) fn name(&self) -> &str {
        &self.schema
    }

    pub(crate) fn url(&self) -> String {
        let sep = if self.base.contains('?') { '&' } else { '?' };
        format!("{}{sep}schema={}", self.base, self.schema)
    }
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        if let Ok(mut c) = postgres::Client::connect(&self.base, postgres::NoTls) {
            let _ = c.batch_execute(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.schema));
        }
    }
}

#[test]
fn three_processes_on_one_postgres_job_run_each_item_once() {
    let Some(pg) = PgSchema::new("three") else {
        return;
    };
    three_runs_run_each_item_once(&pg.url(), 90);
}

/// Three `ckpt run -j 3` processes on one job of `n` items at `url`: each
/// item runs once, and the job completes.
pub(crate) fn three_runs_run_each_item_once(url: &str, n: usize) {
    let sb = Sandbox::new();
    let all = items("pg", n);
    let file = sb.write_items("items.txt", &all);
    let running: Vec<_> = (0..3)
        .map(|_| {
            sb.ckpt_bare()
                .args(["--store", url, "run", "--job", "J", "--items"])
                .arg(&file)
                .args([
                    "-j",
                    "3",
                    "--",
                    "sh",
                    "-c",
                    r#"echo "$0" >> log; sleep 0.02"#,
                ])
                .start()
        })
        .collect();
    for r in running {
        r.wait(Duration::from_secs(90)).success();
    }
    assert_each_once(&sb.lines("log"), &all);
    let status = sb
        .ckpt_bare()
        .args(["--store", url, "status", "J", "--json"])
        .run();
    status.success();
    let status = status.json();
    assert_eq!(status["status"], "completed");
    assert_eq!(item_counts(&status), (0, 0, n as u64, 0, 0));
}

#[test]
fn a_killed_postgres_worker_is_taken_over_by_the_others_at_once() {
    let Some(pg) = PgSchema::new("kill") else {
        return;
    };
    let sb = Sandbox::new();
    let all = items("k", 40);
    let file = sb.write_items("items.txt", &all);
    let script = r#"echo "$0" >> started; sleep 0.3; echo "$0" >> log"#;
    let mut victim = sb
        .ckpt_bare()
        .args([
            "--store",
            &pg.url(),
            "run",
            "--job",
            "J",
            "--lease",
            "10m",
            "--items",
        ])
        .arg(&file)
        .args(["-j", "4", "--", "sh", "-c", script])
        .spawn();
    crate::util::wait_until(Duration::from_secs(20), "the victim starts items", || {
        sb.lines("started").len() >= 4
    });
    victim.kill().unwrap();
    victim.wait().unwrap();
    // The lease is 10 minutes: only the dead-owner check can finish this
    // in time.
    let started = std::time::Instant::now();
    let out = sb
        .ckpt_bare()
        .args([
            "--store",
            &pg.url(),
            "run",
            "--job",
            "J",
            "--lease",
            "10m",
            "--items",
        ])
        .arg(&file)
        .args(["-j", "4", "--", "sh", "-c", script])
        .run();
    out.success();
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
    assert!(
        out.stderr.contains("owner process is gone"),
        "{}",
        out.stderr
    );
    let mut logged = sb.lines("log");
    logged.sort();
    logged.dedup();
    assert_eq!(logged.len(), all.len(), "every item ran to the end");
}

/// A role without privileges on an existing store is told so, with what
/// to grant, not "no ckpt store" (information_schema hides the tables a
/// role may not use, so the store looked absent). Nothing is changed.
#[test]
fn a_role_without_privileges_on_a_store_is_told_what_to_grant() {
    let Some(pg) = PgSchema::new("noprivs") else {
        return;
    };
    let role = format!("ckpt_cli_noprivs_{}", std::process::id());
    let sb = Sandbox::new();
    sb.ckpt_bare()
        .args(["--store", &pg.url(), "checkpoint", "set", "j", "7"])
        .run()
        .success();
    let mut admin = postgres::Client::connect(&pg.base, postgres::NoTls).unwrap();
    admin
        .batch_execute(&format!(
            "DROP ROLE IF EXISTS {role}; CREATE ROLE {role} LOGIN;"
        ))
        .unwrap();
    let url = pg
        .url()
        .replacen("postgres://postgres@", &format!("postgres://{role}@"), 1);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        for args in [
            &["checkpoint", "get", "j"][..],
            &["checkpoint", "set", "j", "8"],
            &["jobs"],
        ] {
            let line = sb
                .ckpt_bare()
                .args(["--store", &url])
                .args(args)
                .run()
                .error(4);
            assert!(
                line.contains("permission denied for schema") && line.contains("USAGE"),
                "{args:?}: {line}"
            );
        }
        // With USAGE on the schema but nothing on its tables: the table is
        // named.
        admin
            .batch_execute(&format!("GRANT USAGE ON SCHEMA {} TO {role}", pg.name()))
            .unwrap();
        let line = sb
            .ckpt_bare()
            .args(["--store", &url, "checkpoint", "get", "j"])
            .run()
            .error(4);
        assert!(
            line.contains("permission denied for table ckpt_meta")
                && line.contains("SELECT, INSERT"),
            "{line}"
        );
        let got = sb
            .ckpt_bare()
            .args(["--store", &pg.url(), "checkpoint", "get", "j"])
            .run();
        assert_eq!(got.success().stdout.trim(), "7", "the store is unchanged");
        // The grants docs/OPERATIONS.md gives are enough to use the store.
        admin
            .batch_execute(&format!(
                "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {s} TO {role};
                 GRANT USAGE ON ALL SEQUENCES IN SCHEMA {s} TO {role};",
                s = pg.name()
            ))
            .unwrap();
        sb.ckpt_bare()
            .args(["--store", &url, "checkpoint", "set", "j", "8"])
            .run()
            .success();
        sb.write("items.txt", "a\nb\n");
        sb.ckpt_bare()
            .args([
                "--store",
                &url,
                "run",
                "--job",
                "r",
                "--items",
                "items.txt",
                "--",
                "true",
            ])
            .run()
            .success();
        let status = sb
            .ckpt_bare()
            .args(["--store", &url, "status", "r", "--json"])
            .run();
        assert!(
            status.success().stdout.contains("\"completed\": 2"),
            "{}",
            status.stdout
        );
    }));
    let _ = admin.batch_execute(&format!(
        "DROP SCHEMA IF EXISTS {} CASCADE; DROP OWNED BY {role}; DROP ROLE IF EXISTS {role}",
        pg.name()
    ));
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}

/// As on a managed database: an administrator made the schema and granted
/// a role USAGE and CREATE on it, and the role may not create schemas in
/// the database. The store is created there all the same (ckpt does not ask
/// for the database's CREATE when the schema exists). A schema named with a
/// reserved word is refused in one line, and nothing is created.
#[test]
fn a_role_with_create_on_its_schema_only_can_make_the_store() {
    let Some(pg) = PgSchema::new("granted") else {
        return;
    };
    let role = format!("ckpt_cli_granted_{}", std::process::id());
    let mut admin = postgres::Client::connect(&pg.base, postgres::NoTls).unwrap();
    admin
        .batch_execute(&format!(
            "DROP ROLE IF EXISTS {role}; CREATE ROLE {role} LOGIN;
             CREATE SCHEMA {s}; GRANT USAGE, CREATE ON SCHEMA {s} TO {role};",
            s = pg.name()
        ))
        .unwrap();
    let sb = Sandbox::new();
    let url = pg
        .url()
        .replacen("postgres://postgres@", &format!("postgres://{role}@"), 1);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let as_role = pg
            .base
            .replacen("postgres://postgres@", &format!("postgres://{role}@"), 1);
        let no_create: bool = postgres::Client::connect(&as_role, postgres::NoTls)
            .unwrap()
            .query_one("SELECT NOT has_database_privilege('test', 'CREATE')", &[])
            .unwrap()
            .get(0);
        assert!(no_create, "the role may not create schemas");
        sb.ckpt_bare()
            .args(["--store", &url, "checkpoint", "set", "j", "7"])
            .run()
            .success();
        let got = sb
            .ckpt_bare()
            .args(["--store", &url, "checkpoint", "get", "j"])
            .run();
        assert_eq!(got.success().stdout.trim(), "7");

        let reserved = pg.base.clone() + "?schema=order";
        let line = sb
            .ckpt_bare()
            .args(["--store", &reserved, "checkpoint", "set", "j", "1"])
            .run()
            .error(4);
        assert!(line.contains("\"order\" is a reserved word"), "{line}");
        let made: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_namespace WHERE nspname = 'order'",
                &[],
            )
            .unwrap()
            .get(0);
        assert_eq!(made, 0, "nothing was created");
    }));
    let _ = admin.batch_execute(&format!(
        "DROP SCHEMA IF EXISTS {} CASCADE; DROP OWNED BY {role}; DROP ROLE IF EXISTS {role}",
        pg.name()
    ));
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}
