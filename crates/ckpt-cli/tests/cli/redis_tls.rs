//! `ckpt` over TLS to Redis (`rediss://`): a `redis-server` of this test's
//! own, on a spare port, that speaks only TLS and takes only clients with a
//! certificate of a CA made here by openssl.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::tls::make_pki;
use crate::util::Sandbox;

/// A TLS-only redis-server, killed when the guard goes.
struct TlsRedis {
    child: Child,
    port: u16,
}

impl TlsRedis {
    fn start(pki: &Path) -> Option<TlsRedis> {
        let skip = |why: &str| {
            if std::env::var("CKPT_REQUIRE_SERVICES").is_ok_and(|v| v == "1") {
                panic!("CKPT_REQUIRE_SERVICES=1 but {why}");
            }
            eprintln!("skipped: {why}");
            None
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let file = |name: &str| pki.join(name).to_str().unwrap().to_string();
        let port_arg = port.to_string();
        let spawned = Command::new("redis-server")
            .current_dir(pki)
            .args([
                "--port",
                "0",
                "--tls-port",
                &port_arg,
                "--bind",
                "127.0.0.1",
            ])
            .args(["--tls-cert-file", &file("server.crt")])
            .args(["--tls-key-file", &file("server.key")])
            .args(["--tls-ca-cert-file", &file("ca.crt")])
            .args([
                "--tls-auth-clients",
                "yes",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let Ok(mut child) = spawned else {
            return skip("redis-server is not installed");
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                return skip(&format!("redis-server without TLS support ({status})"));
            }
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(TlsRedis { child, port })
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn rediss_with_a_private_ca_and_client_certificate() {
    let pki = tempfile::tempdir().unwrap();
    make_pki(pki.path());
    let Some(server) = TlsRedis::start(pki.path()) else {
        return;
    };
    let file = |name: &str| pki.path().join(name).display().to_string();
    let sb = Sandbox::new();
    let base = format!("rediss://127.0.0.1:{}/0?prefix=tls", server.port);
    let good = format!(
        "{base}&tls_ca={}&tls_cert={}&tls_key={}",
        file("ca.crt"),
        file("client.crt"),
        file("client.key")
    );
    sb.ckpt_bare()
        .args(["--store", &good, "checkpoint", "set", "J", r#"{"at":9}"#])
        .run()
        .success();
    let out = sb
        .ckpt_bare()
        .args(["--store", &good, "checkpoint", "get", "J"])
        .run();
    out.success();
    assert_eq!(out.stdout, "{\"at\":9}\n");
    // The platform's roots do not know the private CA: refused, one line.
    let no_ca = format!(
        "{base}&tls_cert={}&tls_key={}",
        file("client.crt"),
        file("client.key")
    );
    let line = sb
        .ckpt_bare()
        .args(["--store", &no_ca, "checkpoint", "get", "J"])
        .run()
        .error(4);
    assert!(line.to_lowercase().contains("certificate"), "{line}");
    // Without a client certificate the server hangs up: one line, exit 4.
    let no_cert = format!("{base}&tls_ca={}", file("ca.crt"));
    sb.ckpt_bare()
        .args(["--store", &no_cert, "checkpoint", "get", "J"])
        .run()
        .error(4);
    // A missing CA file is refused before connecting.
    let line = sb
        .ckpt_bare()
        .args([
            "--store",
            &format!("{base}&tls_ca=/no/such/ca.crt"),
            "checkpoint",
            "get",
            "J",
        ])
        .run()
        .error(4);
    assert!(
        line.contains("cannot read tls_ca /no/such/ca.crt"),
        "{line}"
    );
}
