//! `ckpt` over TLS to PostgreSQL: a certificate that does not name the host
//! is one clear error line (exit 4), and a server that takes only client
//! certificates (a private cluster with a CA made here by openssl) is
//! reached with `sslcert`/`sslkey` and refused without them.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::pg_restart::PrivateCluster;
use crate::postgres::PgSchema;
use crate::util::Sandbox;

#[test]
fn verify_full_against_a_name_the_certificate_lacks_is_one_line_exit_4() {
    let Some(pg) = PgSchema::new("tls_full") else {
        return;
    };
    let mut client = postgres::Client::connect(&pg.base, postgres::NoTls).unwrap();
    let ssl: String = client.query_one("SHOW ssl", &[]).unwrap().get(0);
    if ssl != "on" {
        if std::env::var("CKPT_REQUIRE_SERVICES").is_ok_and(|v| v == "1") {
            panic!("CKPT_REQUIRE_SERVICES=1 but the test PostgreSQL server has ssl = off");
        }
        eprintln!("skipped: the test PostgreSQL server has ssl = off");
        return;
    }
    if !pg.base.contains("@127.0.0.1") {
        eprintln!("skipped: the test server is not on 127.0.0.1");
        return;
    }
    let cert: String = client.query_one("SHOW ssl_cert_file", &[]).unwrap().get(0);
    let sb = Sandbox::new();
    let url = format!("{}&sslmode=verify-full&sslrootcert={cert}", pg.url());
    let line = sb
        .ckpt_bare()
        .args(["--store", &url, "checkpoint", "set", "J", "1"])
        .run()
        .error(4);
    assert!(
        line.contains("verify-full") && line.contains("not valid for name \"127.0.0.1\""),
        "{line}"
    );
    // The same root with verify-ca: the chain is good, only the name was not.
    let url = format!("{}&sslmode=verify-ca&sslrootcert={cert}", pg.url());
    sb.ckpt_bare()
        .args(["--store", &url, "checkpoint", "set", "J", "1"])
        .run()
        .success();
}

/// Runs openssl with `args` in `dir`.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate for
/// the user `postgres`, all signed by that CA, in `dir`.
pub(crate) fn make_pki(dir: &Path) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=ckpt test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
        ],
    );
    for (name, cn, ext) in [
        (
            "server",
            "127.0.0.1",
            "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
        ),
        ("client", "postgres", "extendedKeyUsage=clientAuth\n"),
    ] {
        std::fs::write(
            dir.join(format!("{name}.ext")),
            format!("basicConstraints=CA:FALSE\n{ext}"),
        )
        .unwrap();
        openssl(
            dir,
            &[
                "req",
                "-new",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                &format!("/CN={cn}"),
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
            ],
        );
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                &format!("{name}.ext"),
                "-out",
                &format!("{name}.crt"),
            ],
        );
    }
}

#[test]
fn client_certificates_reach_a_server_that_takes_only_them() {
    let pki = tempfile::tempdir().unwrap();
    make_pki(pki.path());
    let file = |name: &str| -> PathBuf { pki.path().join(name) };
    let Some(cluster) = PrivateCluster::start_with(|data| {
        for name in ["server.crt", "server.key", "ca.crt"] {
            std::fs::copy(file(name), data.join(name)).unwrap();
        }
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            data.join("server.key"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        let mut conf = std::fs::read_to_string(data.join("postgresql.conf")).unwrap();
        conf.push_str(
            "\nssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\nssl_ca_file = 'ca.crt'\n",
        );
        std::fs::write(data.join("postgresql.conf"), conf).unwrap();
        // TCP only over TLS with a client certificate; the socket (unused
        // by ckpt here) stays as initdb made it.
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all all trust\nhostssl all all 127.0.0.1/32 cert\n",
        )
        .unwrap();
    }) else {
        return;
    };
    let sb = Sandbox::new();
    let root = file("ca.crt");
    let base = format!(
        "{}?schema=tls_cert&sslmode=verify-full&sslrootcert={}",
        cluster.url(),
        root.display()
    );
    let with_cert = format!(
        "{base}&sslcert={}&sslkey={}",
        file("client.crt").display(),
        file("client.key").display()
    );
    sb.ckpt_bare()
        .args([
            "--store",
            &with_cert,
            "checkpoint",
            "set",
            "J",
            r#"{"at":7}"#,
        ])
        .run()
        .success();
    let out = sb
        .ckpt_bare()
        .args(["--store", &with_cert, "checkpoint", "get", "J"])
        .run();
    out.success();
    assert_eq!(out.stdout, "{\"at\":7}\n");
    // Without the client certificate the server refuses: one line, exit 4.
    let line = sb
        .ckpt_bare()
        .args(["--store", &base, "checkpoint", "get", "J"])
        .run()
        .error(4);
    assert!(line.contains("certificate"), "{line}");
    // Without TLS there is no pg_hba line at all.
    let plain = format!("{}?schema=tls_cert&sslmode=disable", cluster.url());
    let line = sb
        .ckpt_bare()
        .args(["--store", &plain, "checkpoint", "get", "J"])
        .run()
        .error(4);
    assert!(
        line.contains("no encryption") || line.contains("pg_hba"),
        "{line}"
    );
    // A key that is not PEM is refused before connecting.
    let bad_key = format!(
        "{base}&sslcert={}&sslkey={}",
        file("client.crt").display(),
        file("client.csr").display()
    );
    let line = sb
        .ckpt_bare()
        .args(["--store", &bad_key, "checkpoint", "get", "J"])
        .run()
        .error(4);
    assert!(line.contains("sslkey"), "{line}");
}

#[test]
fn a_server_without_tls_serves_the_default_prefer_and_refuses_require() {
    let Some(cluster) = PrivateCluster::start() else {
        return;
    };
    let sb = Sandbox::new();
    let url = format!("{}?schema=no_tls", cluster.url());
    sb.ckpt_bare()
        .args(["--store", &url, "checkpoint", "set", "J", "3"])
        .run()
        .success();
    let line = sb
        .ckpt_bare()
        .args([
            "--store",
            &format!("{url}&sslmode=require"),
            "checkpoint",
            "get",
            "J",
        ])
        .run()
        .error(4);
    assert!(line.contains("server does not support TLS"), "{line}");
}
