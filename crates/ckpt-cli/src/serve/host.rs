//! The `Host` header check, against DNS rebinding: a web page on
//! `evil.example` whose name the attacker points at 127.0.0.1 would
//! otherwise read the dashboard and the API through the visitor's browser.
//! Such a request carries `Host: evil.example`; only the names the server
//! really answers to are accepted, on every route, and anything else gets
//! 421 Misdirected Request with no data.
//!
//! Accepted ([`AllowedHosts::new`]), with or without a port (any port: a
//! reverse proxy may forward its own):
//! - a loopback listener: `localhost`, `127.0.0.1`, `[::1]` and the
//!   address it listens on;
//! - a specific address: that address;
//! - a wildcard (`0.0.0.0`, `[::]`): any IP address (a rebinding attack
//!   needs a DNS name, and a browser sends the name, not the address it
//!   resolved to), `localhost` and the machine's host name;
//! - in every case, the name given in `--listen` and each
//!   `--allowed-host NAME` (`*` turns the check off).

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;

/// Which `Host` headers a server answers.
#[derive(Debug, Clone, PartialEq)]
pub struct AllowedHosts {
    /// Every host (`--allowed-host '*'`).
    any: bool,
    /// Every IP address (a wildcard listener).
    any_ip: bool,
    /// Names and addresses, as [`host_of`] gives them.
    names: Vec<String>,
}

impl AllowedHosts {
    /// The hosts of a server that was asked to listen on `listen` and
    /// bound `bound`, on a machine called `hostname`, with `extra` from
    /// `--allowed-host`. An `extra` that is no host name is an error
    /// naming it.
    pub fn new(
        listen: &str,
        bound: SocketAddr,
        extra: &[String],
        hostname: Option<&str>,
    ) -> Result<AllowedHosts, String> {
        let mut hosts = AllowedHosts {
            any: false,
            any_ip: false,
            names: Vec::new(),
        };
        let ip = bound.ip();
        if ip.is_unspecified() {
            hosts.any_ip = true;
            hosts.names.push("localhost".into());
            hosts.names.extend(hostname.and_then(host_of));
        } else if ip.is_loopback() {
            hosts
                .names
                .extend(["localhost", "127.0.0.1", "[::1]"].map(String::from));
        }
        hosts
            .names
            .extend(host_of(&SocketAddr::new(ip, 0).to_string()));
        // `--listen name:port`: the name it was given.
        hosts.names.extend(host_of(listen));
        for name in extra {
            if name.trim() == "*" {
                hosts.any = true;
                continue;
            }
            let host = host_of(name).ok_or_else(|| {
                format!("--allowed-host {name:?} is not a host name (give NAME or NAME:PORT)")
            })?;
            hosts.names.push(host);
        }
        hosts.names.sort();
        hosts.names.dedup();
        Ok(hosts)
    }

    /// True if and only if a request with this `Host` header value may be
    /// answered.
    pub fn allows(&self, host: &str) -> bool {
        if self.any {
            return true;
        }
        let Some(host) = host_of(host) else {
            return false;
        };
        (self.any_ip && is_ip(&host)) || self.names.contains(&host)
    }

    /// What is accepted, for the startup log.
    pub fn describe(&self) -> String {
        if self.any {
            return "any Host (--allowed-host '*')".into();
        }
        let mut parts = self.names.clone();
        if self.any_ip {
            parts.insert(0, "any IP address".into());
        }
        parts.join(", ")
    }
}

/// The host of a `Host` header value (`name`, `name:port`, `1.2.3.4:80`,
/// `[::1]:80`): lowercased, without the port or a trailing dot, an IPv6
/// address in brackets. `None` if it is not one.
fn host_of(value: &str) -> Option<String> {
    let value = value.trim();
    let (host, port) = match value.strip_prefix('[') {
        Some(rest) => {
            let (inside, after) = rest.split_once(']')?;
            let ip: Ipv6Addr = inside.parse().ok()?;
            let port = match after {
                "" => None,
                _ => Some(after.strip_prefix(':')?),
            };
            (format!("[{ip}]"), port)
        }
        None => {
            let (host, port) = match value.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (value, None),
            };
            let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
            let valid = !host.is_empty()
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b));
            if !valid {
                return None;
            }
            (host, port)
        }
    };
    if let Some(port) = port {
        port.parse::<u16>().ok()?;
    }
    Some(host)
}

/// True for an address as [`host_of`] gives it (`1.2.3.4`, `[::1]`).
fn is_ip(host: &str) -> bool {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    bare.parse::<IpAddr>().is_ok()
}

/// The machine's host name, if it has one.
pub fn hostname() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname(2) writes
    // at most that many bytes.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return None;
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let name = String::from_utf8_lossy(&buf[..end]).into_owned();
    (!name.is_empty()).then_some(name)
}

/// The middleware: the request goes on only if its `Host` is allowed;
/// otherwise 421, as JSON under `/api/`, as text elsewhere.
pub async fn check(State(hosts): State<Arc<AllowedHosts>>, req: Request, next: Next) -> Response {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok());
    if host.is_some_and(|h| hosts.allows(h)) {
        return next.run(req).await;
    }
    tracing::warn!(
        host = host.unwrap_or("(none)"),
        "refused a request for a Host this server does not answer (421); add it with --allowed-host"
    );
    let message = "misdirected request: this server does not answer to that Host \
                   (start ckpt serve with --allowed-host NAME to add a name)";
    if req.uri().path().starts_with("/api/") {
        ApiError::new(StatusCode::MISDIRECTED_REQUEST, message).into_response()
    } else {
        super::text(StatusCode::MISDIRECTED_REQUEST, format!("{message}\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(listen: &str, extra: &[&str]) -> AllowedHosts {
        let bound: SocketAddr = listen.parse().unwrap();
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        AllowedHosts::new(listen, bound, &extra, Some("Build-01")).unwrap()
    }

    #[test]
    fn host_of_strips_the_port_and_normalises() {
        assert_eq!(host_of("LocalHost:9464").as_deref(), Some("localhost"));
        assert_eq!(host_of("localhost.").as_deref(), Some("localhost"));
        assert_eq!(host_of("127.0.0.1").as_deref(), Some("127.0.0.1"));
        assert_eq!(host_of("[::1]:80").as_deref(), Some("[::1]"));
        assert_eq!(host_of("[0:0::1]").as_deref(), Some("[::1]"));
        for bad in [
            "", ":80", "a:b", "a:99999", "a b", "a/b", "[::1", "[::1]x", "[x]", "::1", "a:1:2",
        ] {
            assert_eq!(host_of(bad), None, "{bad:?}");
        }
    }

    /// Asserts that `h` answers every host of `ok` and none of `bad`.
    #[track_caller]
    fn answers(h: &AllowedHosts, ok: &[&str], bad: &[&str]) {
        for host in ok {
            assert!(h.allows(host), "{host:?} refused by {h:?}");
        }
        for host in bad {
            assert!(!h.allows(host), "{host:?} answered by {h:?}");
        }
    }

    #[test]
    fn a_loopback_listener_answers_its_names_only() {
        answers(
            &hosts("127.0.0.1:9464", &[]),
            &[
                "localhost",
                "localhost:9464",
                "127.0.0.1:1",
                "[::1]:9464",
                "[::1]",
            ],
            &[
                "evil.example",
                "evil.example:9464",
                "127.0.0.2",
                "10.0.0.1",
                "",
                "build-01",
            ],
        );
        answers(
            &hosts("[::1]:9464", &[]),
            &["[::1]:9464", "localhost"],
            &["a.b"],
        );
    }

    #[test]
    fn a_specific_address_answers_itself_and_the_allowed_names() {
        answers(
            &hosts("10.1.2.3:9464", &["proxy.example", "Other.Example:8443"]),
            &[
                "10.1.2.3:9464",
                "proxy.example",
                "PROXY.example:443",
                "other.example",
            ],
            &[
                "localhost",
                "127.0.0.1",
                "10.1.2.4",
                "evil.example",
                "sub.proxy.example",
            ],
        );
    }

    #[test]
    fn a_wildcard_answers_any_address_the_hostname_and_localhost() {
        answers(
            &hosts("0.0.0.0:9464", &[]),
            &["10.9.9.9:9464", "[fe80::1]", "build-01:9464", "localhost"],
            &["evil.example", "build-01.evil.example"],
        );
        assert!(hosts("[::]:9464", &[]).allows("192.168.0.1"));
        assert!(hosts("[::]:1", &["*"]).allows("evil.example"));
    }

    #[test]
    fn the_name_given_to_listen_is_answered() {
        let bound: SocketAddr = "127.0.0.1:9464".parse().unwrap();
        let h = AllowedHosts::new("dash.internal:9464", bound, &[], None).unwrap();
        assert!(h.allows("dash.internal:9464"));
        assert!(!h.allows("evil.example"));
    }

    #[test]
    fn a_bad_allowed_host_is_an_error_naming_it() {
        let bound: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let err = AllowedHosts::new("x", bound, &["http://a/".into()], None).unwrap_err();
        assert!(err.contains("\"http://a/\""), "{err}");
    }
}
