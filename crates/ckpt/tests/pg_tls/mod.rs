//! TLS to PostgreSQL, against the test server (which must have `ssl = on`;
//! Debian's clusters use the snakeoil certificate): every connection of a
//! store (pool, and liveness session with its LISTEN) is encrypted as its
//! `sslmode` says, and certificate checks fail with one clear line.

use std::sync::Arc;
use std::time::Duration;

use ckpt::store::{OpenMode, PgStore, Store};
use ckpt::{Ckpt, NewItem};

/// The test server's URL and its certificate file, or `None` (skipped with
/// the reason printed) when there is no server or it has no TLS, unless
/// `CKPT_REQUIRE_SERVICES=1`.
fn tls_server() -> Option<(String, String)> {
    let base = std::env::var("CKPT_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string());
    let skip = |why: String| {
        if crate::services_required() {
            panic!("CKPT_REQUIRE_SERVICES=1 but {why}");
        }
        eprintln!("skipped: {why}");
        None
    };
    let mut client = match postgres::Client::connect(&base, postgres::NoTls) {
        Ok(c) => c,
        Err(e) => return skip(format!("PostgreSQL is not available ({e})")),
    };
    let ssl: String = client.query_one("SHOW ssl", &[]).unwrap().get(0);
    if ssl != "on" {
        return skip("the test PostgreSQL server has ssl = off".to_string());
    }
    let cert: String = client.query_one("SHOW ssl_cert_file", &[]).unwrap().get(0);
    Some((base, cert))
}

/// A unique name for a test's sessions and schema.
fn unique(what: &str) -> String {
    format!(
        "ckpt_tls_{what}_{}_{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos()
    )
}

fn url(base: &str, name: &str, tls: &str) -> String {
    let sep = if base.contains('?') { '&' } else { '?' };
    format!("{base}{sep}schema={name}&application_name={name}&pool_size=2&{tls}")
}

/// `ssl` of every session named `name`, as the server sees them.
fn ssl_of_sessions(base: &str, name: &str) -> Vec<bool> {
    let mut client = postgres::Client::connect(base, postgres::NoTls).unwrap();
    client
        .query(
            "SELECT ssl FROM pg_stat_ssl JOIN pg_stat_activity USING (pid) WHERE application_name = $1",
            &[&name],
        )
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect()
}

/// Opens a store, makes it use both kinds of connection (the pool, and the
/// liveness session of a claim, which also carries LISTEN), and returns
/// what the server says of their encryption.
fn sessions_of_a_busy_store(base: &str, tls: &str) -> Vec<bool> {
    let name = unique("busy");
    let store = Arc::new(PgStore::open(&url(base, &name, tls), OpenMode::CreateIfMissing).unwrap());
    let ckpt = Ckpt::new(store.clone());
    let queue = ckpt.queue("tls").unwrap();
    queue.enqueue([NewItem::key("a")]).unwrap();
    assert_eq!(
        queue.claim(1).unwrap().len(),
        1,
        "the claim starts the liveness session"
    );
    let listening = store
        .item_signals()
        .unwrap()
        .wait_for_items("tls", Duration::from_millis(50));
    assert!(listening.is_some(), "the liveness session listens");
    let seen = ssl_of_sessions(base, &name);
    store.drop_schema().unwrap();
    seen
}

#[test]
fn pg_tls_require_encrypts_every_connection() {
    let Some((base, _)) = tls_server() else {
        return;
    };
    let seen = sessions_of_a_busy_store(&base, "sslmode=require");
    assert!(seen.len() >= 2, "pool and liveness sessions: {seen:?}");
    assert!(seen.iter().all(|ssl| *ssl), "{seen:?}");
}

#[test]
fn pg_tls_default_prefer_encrypts_and_disable_does_not() {
    let Some((base, _)) = tls_server() else {
        return;
    };
    let seen = sessions_of_a_busy_store(&base, "");
    assert!(seen.len() >= 2 && seen.iter().all(|ssl| *ssl), "{seen:?}");
    let seen = sessions_of_a_busy_store(&base, "sslmode=disable");
    assert!(seen.len() >= 2 && seen.iter().all(|ssl| !*ssl), "{seen:?}");
}

#[test]
fn pg_tls_verify_ca_accepts_the_server_root() {
    let Some((base, cert)) = tls_server() else {
        return;
    };
    let seen = sessions_of_a_busy_store(&base, &format!("sslmode=verify-ca&sslrootcert={cert}"));
    assert!(seen.len() >= 2 && seen.iter().all(|ssl| *ssl), "{seen:?}");
}

#[test]
fn pg_tls_verify_full_refuses_a_host_the_certificate_does_not_name() {
    let Some((base, cert)) = tls_server() else {
        return;
    };
    if !base.contains("@127.0.0.1") {
        eprintln!("skipped: the test server is not on 127.0.0.1");
        return;
    }
    let name = unique("full");
    let err = PgStore::open(
        &url(
            &base,
            &name,
            &format!("sslmode=verify-full&sslrootcert={cert}"),
        ),
        OpenMode::CreateIfMissing,
    )
    .unwrap_err();
    let msg = err.to_string();
    assert!(!msg.contains('\n'), "one line: {msg}");
    assert!(
        msg.contains("not valid for name") && msg.contains("127.0.0.1"),
        "{msg}"
    );
    // A refused certificate is a refusal, not an outage: no retry cures it.
    assert!(
        !err.is_transient() && matches!(err, ckpt::Error::Open(_)),
        "{err:?}"
    );
    assert!(msg.contains("check sslmode"), "the next step: {msg}");
    // The same certificate is good for verify-ca: only the name failed.
    let seen = sessions_of_a_busy_store(&base, &format!("sslmode=require&sslrootcert={cert}"));
    assert!(seen.iter().all(|ssl| *ssl), "{seen:?}");
}

#[test]
fn pg_tls_require_with_a_foreign_root_fails_like_verify_ca() {
    let Some((base, _)) = tls_server() else {
        return;
    };
    // A root certificate the server's does not chain to: with a root at
    // hand, require checks the chain (libpq's rule).
    let dir = tempfile::tempdir().unwrap();
    let (ca, _) = crate::pg_tls::make_ca(dir.path());
    let name = unique("foreign");
    let msg = PgStore::open(
        &url(
            &base,
            &name,
            &format!("sslmode=require&sslrootcert={}", ca.display()),
        ),
        OpenMode::CreateIfMissing,
    )
    .unwrap_err()
    .to_string();
    assert!(!msg.contains('\n'), "one line: {msg}");
    assert!(
        msg.contains("UnknownIssuer") || msg.contains("unknown issuer"),
        "{msg}"
    );
}

#[test]
fn pg_tls_bad_root_file_is_a_clear_open_error() {
    let Some((base, _)) = tls_server() else {
        return;
    };
    let name = unique("badroot");
    let err = PgStore::open(
        &url(
            &base,
            &name,
            "sslmode=verify-ca&sslrootcert=/no/such/root.crt",
        ),
        OpenMode::CreateIfMissing,
    )
    .unwrap_err();
    assert!(matches!(err, ckpt::Error::Open(_)), "{err:?}");
    let msg = err.to_string();
    assert!(!msg.contains('\n'), "{msg}");
    assert!(
        msg.contains("cannot read sslrootcert /no/such/root.crt"),
        "{msg}"
    );
    let err = PgStore::open(
        &url(&base, &name, "sslmode=verify-maybe"),
        OpenMode::CreateIfMissing,
    )
    .unwrap_err();
    assert!(err.to_string().contains("verify-maybe"), "{err}");
}

/// A self-signed CA made with openssl in `dir`: (certificate, key).
pub fn make_ca(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let (cert, key) = (dir.join("ca.crt"), dir.join("ca.key"));
    let status = std::process::Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
        ])
        .arg("/CN=ckpt test CA")
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl");
    assert!(status.success());
    (cert, key)
}
