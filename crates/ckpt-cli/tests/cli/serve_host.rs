//! `ckpt serve` answers only the `Host`s it serves (against DNS
//! rebinding): requests for any other get 421 and no data, on every route.
//! Requests go over a raw TCP connection (an HTTP client sets `Host`
//! itself) and through `curl -H 'Host: ...'`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::server::{cursor_job, items_job, Server};
use crate::util::Sandbox;

/// The job whose name must never leak to a foreign Host.
const JOB: &str = "secret-payroll";

/// `METHOD path HTTP/1.1` to the server with these header lines, over a
/// connection of its own; returns the status and the body.
fn raw(server: &Server, method: &str, path: &str, headers: &[&str]) -> (u16, String) {
    let addr = server.url("").trim_start_matches("http://").to_string();
    let mut conn = TcpStream::connect(&addr).expect("connect to ckpt serve");
    conn.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut request = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
    for h in headers {
        request.push_str(h);
        request.push_str("\r\n");
    }
    request.push_str("Content-Length: 0\r\n\r\n");
    conn.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    conn.read_to_string(&mut response)
        .expect("read the response");
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {response:?}"));
    let body = response
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (status, body)
}

/// `GET path` with `Host: host`.
fn get(server: &Server, path: &str, host: &str) -> (u16, String) {
    raw(server, "GET", path, &[&format!("Host: {host}")])
}

fn port(server: &Server) -> String {
    server.url("").rsplit(':').next().unwrap().to_string()
}

/// Asserts that `host` is refused on every route with 421 and no data.
#[track_caller]
fn refused_everywhere(server: &Server, host: &str) {
    let detail = format!("/api/jobs/{JOB}");
    let items = format!("/api/jobs/{JOB}/items");
    for path in [
        "/",
        "/assets/app.js",
        "/healthz",
        "/metrics",
        "/api/info",
        "/api/jobs",
        &detail,
        &items,
        "/no/such/page",
    ] {
        let (status, body) = get(server, path, host);
        assert_eq!(status, 421, "GET {path} with Host {host:?}: {body}");
        assert!(
            !body.contains(JOB) && !body.contains("export"),
            "GET {path} leaked job data: {body}"
        );
        assert!(body.contains("--allowed-host"), "{path}: {body}");
    }
    let retry = format!("/api/jobs/{JOB}/retry");
    let (status, body) = raw(
        server,
        "POST",
        &retry,
        &[&format!("Host: {host}"), "Authorization: Bearer tok"],
    );
    assert_eq!(status, 421, "POST retry with Host {host:?}: {body}");
    assert!(body.starts_with('{'), "an API error is JSON: {body}");
}

#[test]
fn a_loopback_server_refuses_a_foreign_host_and_answers_its_own_names() {
    let sb = Sandbox::new();
    items_job(&sb, JOB);
    cursor_job(&sb, "export");
    let server = Server::start(&sb, &["--token", "tok"]);
    let port = port(&server);

    refused_everywhere(&server, "evil.example");
    refused_everywhere(&server, &format!("evil.example:{port}"));
    // A name that merely starts like an allowed one, and a bad header.
    refused_everywhere(&server, "localhost.evil.example");
    refused_everywhere(&server, "localhost:notaport");
    // No Host at all (HTTP/1.1 requires one).
    let (status, body) = raw(&server, "GET", "/api/jobs", &[]);
    assert_eq!(status, 421, "{body}");

    for host in [
        format!("localhost:{port}"),
        "localhost".to_string(),
        format!("127.0.0.1:{port}"),
        format!("[::1]:{port}"),
        "LOCALHOST".to_string(),
    ] {
        let (status, body) = get(&server, "/api/jobs", &host);
        assert_eq!(status, 200, "Host {host}: {body}");
        assert!(body.contains(JOB), "Host {host}: {body}");
        let (status, body) = get(&server, "/metrics", &host);
        assert_eq!(status, 200, "Host {host}: {body}");
    }
    // The ordinary client (Host 127.0.0.1:PORT) is unaffected.
    server.get(&format!("/api/jobs/{JOB}")).expect(200);
    let out = server.stop();
    assert!(
        out.stderr.contains("refused a request for a Host"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("answering requests for Host") && out.stderr.contains("localhost"),
        "{}",
        out.stderr
    );
}

#[test]
fn allowed_host_adds_the_names_of_a_reverse_proxy() {
    let sb = Sandbox::new();
    items_job(&sb, JOB);
    let server = Server::start(
        &sb,
        &[
            "--allowed-host",
            "proxy.example",
            "--allowed-host",
            "Dash.Internal:8443",
        ],
    );
    for host in [
        "proxy.example",
        "proxy.example:443",
        "dash.internal",
        "dash.internal:8443",
    ] {
        let (status, body) = get(&server, &format!("/api/jobs/{JOB}"), host);
        assert_eq!(status, 200, "Host {host}: {body}");
        assert!(body.contains(JOB), "{body}");
    }
    assert_eq!(get(&server, "/", "localhost").0, 200);
    refused_everywhere(&server, "evil.example");
    refused_everywhere(&server, "sub.proxy.example");
}

#[test]
fn allowed_host_star_answers_every_host() {
    let sb = Sandbox::new();
    items_job(&sb, JOB);
    let server = Server::start(&sb, &["--allowed-host", "*"]);
    let (status, body) = get(&server, "/api/jobs", "evil.example");
    assert_eq!(status, 200, "{body}");
}

/// Listening on every address: any IP address and the machine's host
/// name are answered (a rebinding attack needs a DNS name of its own),
/// other names are not.
#[test]
fn a_wildcard_server_answers_addresses_and_its_hostname_only() {
    let sb = Sandbox::new();
    items_job(&sb, JOB);
    let server = Server::start_on(&sb, &sb.store_url(), "0.0.0.0:0", &[], &[]);
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_string();
    for host in [
        "127.0.0.1",
        "10.20.30.40:9464",
        "[fe80::1]:80",
        "localhost",
        &hostname,
    ] {
        let (status, body) = get(&server, "/api/jobs", host);
        assert_eq!(status, 200, "Host {host}: {body}");
    }
    refused_everywhere(&server, "evil.example");
}

/// The issue's own check: `curl -H 'Host: evil.example'`.
#[test]
fn curl_with_a_foreign_host_header_gets_421_and_no_data() {
    let sb = Sandbox::new();
    items_job(&sb, JOB);
    let server = Server::start(&sb, &[]);
    let curl = |host: &str| {
        let out = std::process::Command::new("curl")
            .args([
                "-sS",
                "-w",
                "\n%{http_code}",
                "-H",
                &format!("Host: {host}"),
            ])
            .arg(server.url("/api/jobs"))
            .output();
        let out = match out {
            Ok(out) => out,
            Err(e) => {
                if std::env::var("CKPT_REQUIRE_SERVICES").is_ok_and(|v| v == "1") {
                    panic!("CKPT_REQUIRE_SERVICES=1 but curl cannot run: {e}");
                }
                eprintln!("skipped: curl cannot run: {e}");
                return None;
            }
        };
        assert!(out.status.success(), "{out:?}");
        let text = String::from_utf8(out.stdout).unwrap();
        let (body, code) = text.rsplit_once('\n').unwrap();
        Some((code.to_string(), body.to_string()))
    };
    let Some((code, body)) = curl("evil.example") else {
        return;
    };
    assert_eq!(code, "421", "{body}");
    assert!(!body.contains(JOB), "{body}");
    let (code, body) = curl(&format!("localhost:{}", port(&server))).unwrap();
    assert_eq!(code, "200", "{body}");
    assert!(body.contains(JOB), "{body}");
}

#[test]
fn a_bad_allowed_host_is_a_usage_error() {
    let sb = Sandbox::new();
    cursor_job(&sb, "export");
    let out = sb
        .ckpt()
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(["--allowed-host", "https://proxy.example/"])
        .run();
    let line = out.error(2);
    assert!(
        line.contains("--allowed-host") && line.contains("https://proxy.example/"),
        "{line}"
    );
}
