//! Connecting to PostgreSQL: every failure is one line naming its cause
//! (the server's words and SQLSTATE, the next step, no password, no pool
//! jargon), and libpq's habits work: `PGPASSWORD`, a password file,
//! multi-host URLs with `target_session_attrs`.
//!
//! Refusals that need a server configured for them (passwords, pg_hba.conf,
//! a small max_connections, a read-only server) use private clusters; the
//! rest use the shared test server. Skipped, with the reason printed, when
//! the server or its binaries are missing, unless `CKPT_REQUIRE_SERVICES=1`.

use std::time::{Duration, Instant};

use crate::pg_restart::{free_port, PrivateCluster};
use crate::postgres::PgSchema;
use crate::util::{Out, Sandbox};

const STORE_ERROR: i32 = 4;

/// The password of the role `alice` in the private clusters: it holds a
/// colon, which a password file must escape.
const ALICE_PW: &str = "S3cr:et-pw";

/// Runs `ckpt --store URL jobs` with no password from the environment
/// (unless `env` gives one) and no password file.
fn jobs(sb: &Sandbox, url: &str, env: &[(&str, &str)]) -> Out {
    let mut cmd = sb
        .ckpt_bare()
        .env("PGPASSWORD", "")
        .env("PGPASSFILE", sb.join("no-such-pgpass"));
    for (k, v) in env {
        cmd = cmd.env(k, v);
    }
    cmd.args(["--store", url, "jobs"]).run()
}

/// Asserts the failure is one `ckpt: error:` line with the store exit
/// code, names the URL's host, holds each of `needles`, and shows neither
/// `secrets` nor the pool library's wording. Returns the line.
#[track_caller]
fn refused(out: &Out, needles: &[&str], secrets: &[&str]) -> String {
    let line = out.error(STORE_ERROR);
    for needle in needles {
        assert!(line.contains(needle), "{needle:?} missing from: {line}");
    }
    for secret in secrets {
        assert!(!line.contains(secret), "{secret:?} shown in: {line}");
    }
    for jargon in ["creating a new object", "db error", "Backend("] {
        assert!(!line.contains(jargon), "{jargon:?} in: {line}");
    }
    assert!(
        line.contains("cannot connect to PostgreSQL at postgres://"),
        "{line}"
    );
    line
}

fn shared_base() -> Option<String> {
    PgSchema::new("connect").map(|pg| pg.base.clone())
}

#[test]
fn an_unknown_database_is_named_with_its_sqlstate_and_the_next_step() {
    let Some(base) = shared_base() else { return };
    let sb = Sandbox::new();
    let db = format!("nosuchdb_{}", std::process::id());
    let url = format!("{}/{db}", base.rsplit_once('/').unwrap().0);
    let out = jobs(&sb, &url, &[]);
    refused(
        &out,
        &[
            &format!("database \"{db}\" does not exist"),
            "SQLSTATE 3D000",
            &format!("createdb {db}"),
        ],
        &[],
    );
}

#[test]
fn an_unknown_role_is_named_with_its_sqlstate_and_the_next_step() {
    let Some(base) = shared_base() else { return };
    let sb = Sandbox::new();
    let url = base.replacen("://postgres@", "://nosuchrole@", 1);
    assert_ne!(url, base, "the test server's URL names the postgres role");
    let out = jobs(&sb, &url, &[]);
    refused(
        &out,
        &[
            "role \"nosuchrole\" does not exist",
            "SQLSTATE 28000",
            "CREATE ROLE",
        ],
        &[],
    );
}

#[test]
fn a_server_that_is_down_is_named_by_host_and_port() {
    let sb = Sandbox::new();
    let port = free_port();
    let url = format!("postgres://postgres:pw-down-1@127.0.0.1:{port}/test");
    let out = jobs(&sb, &url, &[]);
    refused(
        &out,
        &[
            &format!("127.0.0.1:{port}"),
            "refused",
            "is the server running",
        ],
        &["pw-down-1"],
    );
}

#[test]
fn a_server_that_never_answers_times_out_after_connect_timeout() {
    let sb = Sandbox::new();
    // The kernel completes the TCP handshake for the backlog; nobody ever
    // reads the startup message.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let url = format!("postgres://postgres@127.0.0.1:{port}/test?connect_timeout=1");
    let started = Instant::now();
    let out = jobs(&sb, &url, &[]);
    refused(
        &out,
        &[
            &format!("127.0.0.1:{port}"),
            "no answer",
            "connect_timeout=1",
        ],
        &[],
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
    drop(listener);
}

#[test]
fn a_server_that_is_not_postgres_is_named_so() {
    let sb = Sandbox::new();
    // An HTTP server on the port: its reply reads as the start of a long
    // message, then the stream ends.
    let port = answering_server(
        b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n",
        Duration::ZERO,
    );
    let url = format!("postgres://postgres:hunter2@127.0.0.1:{port}/test?connect_timeout=5");
    let out = jobs(&sb, &url, &[]);
    refused(
        &out,
        &[
            &format!("127.0.0.1:{port}"),
            "is that host and port not a PostgreSQL server",
        ],
        &["hunter2"],
    );

    // A server that answers the startup with a message out of turn
    // (ready for a query, before any authentication).
    let port = answering_server(b"Z\0\0\0\x05I", Duration::from_secs(2));
    let url =
        format!("postgres://postgres@127.0.0.1:{port}/test?sslmode=disable&connect_timeout=5");
    let out = jobs(&sb, &url, &[]);
    refused(
        &out,
        &[
            "unexpected message from server",
            "is that host and port a PostgreSQL server",
        ],
        &[],
    );
}

/// A server on a free port of its own that reads what a client sends
/// first, writes `reply`, and closes the connection `hold` later; returns
/// the port.
fn answering_server(reply: &'static [u8], hold: Duration) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        for client in listener.incoming() {
            let Ok(mut client) = client else { return };
            let mut buf = [0u8; 4096];
            let _ = client.read(&mut buf);
            let _ = client.write_all(reply);
            std::thread::sleep(hold);
        }
    });
    port
}

/// A private cluster with password (scram) and refusal rules for test
/// roles, and `postgres` trusted for setup.
fn auth_cluster() -> Option<PrivateCluster> {
    let hba = "local all postgres trust\n\
               host all postgres 127.0.0.1/32 trust\n\
               host all refused 127.0.0.1/32 reject\n\
               host all alice 127.0.0.1/32 scram-sha-256\n";
    let cluster =
        PrivateCluster::start_configured("password_encryption = 'scram-sha-256'", Some(hba))?;
    let mut admin = postgres::Client::connect(&cluster.url(), postgres::NoTls).unwrap();
    admin
        .batch_execute(&format!(
            "CREATE ROLE alice LOGIN SUPERUSER PASSWORD '{ALICE_PW}';
             CREATE ROLE refused LOGIN;
             CREATE ROLE nohba LOGIN;"
        ))
        .unwrap();
    Some(cluster)
}

fn alice_url(cluster: &PrivateCluster, password: Option<&str>) -> String {
    let pw = password.map_or(String::new(), |p| format!(":{p}"));
    format!(
        "postgres://alice{pw}@127.0.0.1:{}/postgres?schema=s",
        cluster.port()
    )
}

#[test]
fn wrong_or_missing_passwords_and_pg_hba_refusals_are_named() {
    let Some(cluster) = auth_cluster() else {
        return;
    };
    let sb = Sandbox::new();
    let port = cluster.port();

    let out = jobs(&sb, &alice_url(&cluster, Some("wrong-url-pw")), &[]);
    refused(
        &out,
        &[
            "password authentication failed for user \"alice\"",
            "SQLSTATE 28P01",
            "the password in the URL is wrong",
        ],
        &["wrong-url-pw", ALICE_PW],
    );

    let out = jobs(
        &sb,
        &alice_url(&cluster, None),
        &[("PGPASSWORD", "wrong-env-pw")],
    );
    refused(
        &out,
        &["SQLSTATE 28P01", "the password in PGPASSWORD is wrong"],
        &["wrong-env-pw", ALICE_PW],
    );

    let out = jobs(&sb, &alice_url(&cluster, None), &[]);
    refused(
        &out,
        &[
            "asks user \"alice\" for a password and none was given",
            "PGPASSWORD",
            "no-such-pgpass",
        ],
        &[ALICE_PW],
    );

    let url = format!("postgres://refused@127.0.0.1:{port}/postgres");
    refused(
        &jobs(&sb, &url, &[]),
        &[
            "pg_hba.conf rejects connection for host \"127.0.0.1\", user \"refused\"",
            "SQLSTATE 28000",
            "host postgres refused 127.0.0.1/32",
        ],
        &[],
    );

    let url = format!("postgres://nohba@127.0.0.1:{port}/postgres");
    refused(
        &jobs(&sb, &url, &[]),
        &[
            "no pg_hba.conf entry for host \"127.0.0.1\", user \"nohba\"",
            "SQLSTATE 28000",
            "host postgres nohba 127.0.0.1/32 scram-sha-256",
        ],
        &[],
    );
}

#[test]
fn the_password_comes_from_pgpassword_or_a_password_file_as_libpq_reads_them() {
    let Some(cluster) = auth_cluster() else {
        return;
    };
    let sb = Sandbox::new();
    let url = alice_url(&cluster, None);
    let set = |env: &[(&str, &str)], cursor: &str| {
        let mut cmd = sb
            .ckpt_bare()
            .env("PGPASSWORD", "")
            .env("PGPASSFILE", sb.join("no-such-pgpass"));
        for (k, v) in env {
            cmd = cmd.env(k, v);
        }
        cmd.args(["--store", &url, "checkpoint", "set", "J", cursor])
            .run()
    };

    set(&[("PGPASSWORD", ALICE_PW)], "1").success();

    // The first matching line wins; `*` is a wildcard, `\:` a colon.
    let port = cluster.port();
    let file = sb.write(
        "pgpass",
        format!(
            "# host:port:database:user:password\n\
             127.0.0.1:{}:*:alice:not-this-one\n\
             127.0.0.1:{port}:other_db:alice:nor-this\n\
             127.0.0.1:*:postgres:alice:{}\n",
            port.wrapping_add(1),
            ALICE_PW.replace(':', "\\:")
        ),
    );
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let pgpass = file.to_str().unwrap();
    set(&[("PGPASSFILE", pgpass)], "2").success();

    // A password in the URL beats both.
    let out = sb
        .ckpt_bare()
        .env("PGPASSWORD", "wrong-env-pw")
        .env("PGPASSFILE", pgpass)
        .args([
            "--store",
            &alice_url(&cluster, Some(ALICE_PW)),
            "checkpoint",
            "get",
            "J",
        ])
        .run();
    out.success();
    assert!(out.stdout.contains('2'), "{}", out.stdout);

    // A file others may read is ignored, with libpq's warning.
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640)).unwrap();
    let out = set(&[("PGPASSFILE", pgpass)], "3");
    out.code(STORE_ERROR);
    assert!(
        out.stderr.contains("has group or world access"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("none was given"), "{}", out.stderr);
}

#[test]
fn too_many_clients_names_the_connection_budget() {
    let Some(cluster) = PrivateCluster::start_configured(
        "max_connections = 4\nsuperuser_reserved_connections = 0",
        None,
    ) else {
        return;
    };
    let sb = Sandbox::new();
    let held: Vec<postgres::Client> = (0..4)
        .map(|_| postgres::Client::connect(&cluster.url(), postgres::NoTls).unwrap())
        .collect();
    let url = format!("{}?pool_size=3", cluster.url());
    let out = jobs(&sb, &url, &[]);
    refused(
        &out,
        &[
            "too many clients already",
            "SQLSTATE 53300",
            "max_connections",
            "pool_size",
            "(here 3)",
            "plus 1 for its liveness session",
        ],
        &[],
    );
    drop(held);
}

#[test]
fn a_multi_host_url_skips_a_dead_first_host() {
    let Some(pg) = PgSchema::new("multihost") else {
        return;
    };
    let sb = Sandbox::new();
    let dead = free_port();
    let url = pg.url().replacen('@', &format!("@127.0.0.1:{dead},"), 1)
        + "&target_session_attrs=read-write";
    sb.ckpt_bare()
        .args(["--store", &url, "checkpoint", "set", "J", "7"])
        .run()
        .success();
    // The checkpoint is on the live server.
    let out = sb
        .ckpt_bare()
        .args(["--store", &pg.url(), "checkpoint", "get", "J"])
        .run();
    out.success();
    assert!(out.stdout.contains('7'), "{}", out.stdout);
}

#[test]
fn target_session_attrs_read_write_skips_a_read_only_server() {
    let Some(pg) = PgSchema::new("readwrite") else {
        return;
    };
    let Some(ro) = PrivateCluster::start_configured("default_transaction_read_only = on", None)
    else {
        return;
    };
    // The read-only server has the database too, so only its being
    // read-only can make ckpt move on.
    let mut admin = postgres::Client::connect(&ro.url(), postgres::NoTls).unwrap();
    admin
        .batch_execute("SET default_transaction_read_only = off")
        .unwrap();
    admin.batch_execute("CREATE DATABASE test").unwrap();
    let sb = Sandbox::new();
    let first = format!("@127.0.0.1:{},", ro.port());
    let both = pg.url().replacen('@', &first, 1);

    // Without the attribute the first server takes the session, and fails
    // the first write.
    let out = sb
        .ckpt_bare()
        .args(["--store", &both, "checkpoint", "set", "J", "1"])
        .run();
    let line = out.error(STORE_ERROR);
    assert!(line.contains("read-only transaction"), "{line}");

    let url = format!("{both}&target_session_attrs=read-write");
    sb.ckpt_bare()
        .args(["--store", &url, "checkpoint", "set", "J", "8"])
        .run()
        .success();
    let out = sb
        .ckpt_bare()
        .args(["--store", &pg.url(), "checkpoint", "get", "J"])
        .run();
    out.success();
    assert!(out.stdout.contains('8'), "{}", out.stdout);

    // Only the read-only server: named as such.
    let only_ro = format!(
        "postgres://postgres@127.0.0.1:{}/test?target_session_attrs=read-write",
        ro.port()
    );
    refused(
        &jobs(&sb, &only_ro, &[]),
        &["no host accepted writes", "read-only or a standby"],
        &[],
    );
}
