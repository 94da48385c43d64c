//! Connection failures as one line that names the cause: the server's
//! message, SQLSTATE, detail and hint, the redacted URL, and the next step
//! where it is obvious. The pool library's own wording never shows: its
//! errors are unwrapped to the driver's.
//!
//! Failures that retrying may cure (server down, starting up, too many
//! clients, no answer) are [`Error::Unavailable`]; the others (unknown
//! database or role, a wrong or missing password, a `pg_hba.conf`
//! refusal) are [`Error::Open`].

use std::time::Duration;

use deadpool_postgres::{PoolError, TimeoutType};
use tokio_postgres::config::Host;
use tokio_postgres::error::SqlState;

use super::libpq::PasswordSource;
use crate::error::Error;

/// What a connection was aimed at, for messages (no password in it).
#[derive(Debug, Clone)]
pub(crate) struct ConnectTarget {
    /// The URL with any password redacted.
    pub url: String,
    /// `host:port` of each host, in the URL's order.
    pub hosts: Vec<String>,
    pub user: String,
    pub db: String,
    pub password: PasswordSource,
    pub pool_size: usize,
    pub connect_timeout: Duration,
    /// How long the pool waits for a connection to be made.
    pub create_timeout: Duration,
    /// How long the pool waits for a free connection.
    pub wait_timeout: Duration,
}

impl ConnectTarget {
    pub(crate) fn new(
        config: &tokio_postgres::Config,
        url: String,
        password: PasswordSource,
        pool_size: usize,
    ) -> ConnectTarget {
        let ports = config.get_ports();
        let hosts = config
            .get_hosts()
            .iter()
            .enumerate()
            .map(|(i, h)| {
                let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
                match h {
                    Host::Tcp(h) if h.contains(':') => format!("[{h}]:{port}"),
                    Host::Tcp(h) => format!("{h}:{port}"),
                    Host::Unix(p) => format!("{}:{port}", p.display()),
                }
            })
            .collect();
        let user = config.get_user().unwrap_or_default().to_string();
        let db = config.get_dbname().unwrap_or(&user).to_string();
        let connect_timeout = config
            .get_connect_timeout()
            .copied()
            .unwrap_or(Duration::from_secs(5));
        ConnectTarget {
            url,
            hosts,
            user,
            db,
            password,
            pool_size,
            connect_timeout,
            create_timeout: connect_timeout * 2,
            wait_timeout: Duration::from_secs(60),
        }
    }

    /// The hosts as a phrase: `127.0.0.1:5432`, or `a:1 and b:2`.
    fn where_(&self) -> String {
        match self.hosts.as_slice() {
            [one] => one.clone(),
            [init @ .., last] => format!("{} and {last}", init.join(", ")),
            [] => "the server".into(),
        }
    }
}

/// A failure to get a pooled connection, as the library's error.
pub(crate) fn pool_error(e: PoolError, target: &ConnectTarget) -> Error {
    match e {
        PoolError::Backend(e) => connect_error(&e, target),
        PoolError::PostCreateHook(deadpool_postgres::HookError::Backend(e)) => {
            connect_error(&e, target)
        }
        PoolError::Timeout(TimeoutType::Create) => Error::Unavailable(format!(
            "cannot connect to PostgreSQL at {}: no answer from {} within {} s (connect_timeout={}): is the host reachable, and is it a PostgreSQL server?",
            target.url,
            target.where_(),
            target.create_timeout.as_secs(),
            target.connect_timeout.as_secs()
        )),
        PoolError::Timeout(TimeoutType::Wait | TimeoutType::Recycle) => {
            Error::Unavailable(format!(
                "PostgreSQL at {}: all {} connections of this process stayed busy for {} s; raise pool_size in the URL if the server's max_connections allows",
                target.url,
                target.pool_size,
                target.wait_timeout.as_secs()
            ))
        }
        other => Error::Unavailable(format!(
            "cannot connect to PostgreSQL at {}: {other}",
            target.url
        )),
    }
}

/// A failure to connect, as the library's error (see the module docs).
pub(crate) fn connect_error(e: &tokio_postgres::Error, target: &ConnectTarget) -> Error {
    let (transient, why) = describe(e, target);
    let line = format!("cannot connect to PostgreSQL at {}: {why}", target.url);
    // Messages are one line: a server's detail may hold newlines.
    let line = line.replace(['\n', '\r'], " ");
    if transient {
        Error::Unavailable(line)
    } else {
        Error::Open(line)
    }
}

/// Whether retrying may cure the failure, and its cause with the next step.
fn describe(e: &tokio_postgres::Error, t: &ConnectTarget) -> (bool, String) {
    if let Some(db) = e.as_db_error() {
        let code = db.code();
        let mut out = format!("{} (SQLSTATE {})", db.message(), code.code());
        if let Some(detail) = db.detail() {
            out.push_str(&format!("; detail: {detail}"));
        }
        if let Some(hint) = db.hint() {
            out.push_str(&format!("; hint: {hint}"));
        }
        let (transient, step) = next_step(code, db.message(), t);
        if let Some(step) = step {
            out.push_str("; ");
            out.push_str(&step);
        }
        return (transient, out);
    }
    // A refused certificate, or a server without TLS where the URL asks
    // for it: no retry cures that (the cause is in the error's chain). A
    // handshake cut short (a server restarting) is an outage like any
    // other, below.
    let chain = with_causes(e);
    if chain.contains("certificate") || chain.contains("does not support TLS") {
        return (
            false,
            format!(
                "{chain}; check sslmode, sslrootcert and the host name in the URL against the server's certificate"
            ),
        );
    }
    let source = std::error::Error::source(e);
    if let Some(io) = source.and_then(|s| s.downcast_ref::<std::io::Error>()) {
        return io_cause(io, t);
    }
    let cause = source.map_or(String::new(), |s| format!(": {s}"));
    if format!("{e}{cause}") == "invalid configuration: password missing" {
        let file =
            super::libpq::password_file().map_or("~/.pgpass".into(), |p| p.display().to_string());
        return (
            false,
            format!(
                "the server asks user {:?} for a password and none was given; set PGPASSWORD, add a line `host:port:database:user:password` to the password file {file} (mode 0600), or put it in the URL",
                t.user
            ),
        );
    }
    // The whole chain: a TLS handshake says why only in its causes.
    let chain = with_causes(e);
    let text = e.to_string();
    if text.starts_with("unexpected message from server")
        || text.starts_with("error parsing response from server")
    {
        return (
            false,
            format!(
                "{chain}; is that host and port a PostgreSQL server (or a pooler in front of one)?"
            ),
        );
    }
    (e.is_closed(), chain)
}

/// The next step for a server's refusal, and whether retrying may cure it.
fn next_step(code: &SqlState, message: &str, t: &ConnectTarget) -> (bool, Option<String>) {
    let step = |s: String| Some(s);
    match code {
        c if *c == SqlState::INVALID_CATALOG_NAME => (
            false,
            step(format!(
                "create the database (createdb {}) or fix its name in the URL",
                t.db
            )),
        ),
        c if *c == SqlState::INVALID_PASSWORD => (
            false,
            step(format!(
                "{} is wrong for user {:?}; check PGPASSWORD, the password file or the URL",
                t.password.describe(),
                t.user
            )),
        ),
        c if *c == SqlState::INVALID_AUTHORIZATION_SPECIFICATION => {
            if message.contains("pg_hba.conf") {
                let client = quoted_after(message, "host ").unwrap_or("CLIENT_ADDRESS");
                let mask = if client.contains(':') { 128 } else { 32 };
                (
                    false,
                    step(format!(
                        "the server's pg_hba.conf needs a line such as `host {} {} {client}/{mask} scram-sha-256` above any line that rejects it, then a reload (SELECT pg_reload_conf())",
                        t.db, t.user
                    )),
                )
            } else if message.contains("does not exist") {
                (
                    false,
                    step(format!(
                        "create the role (CREATE ROLE \"{}\" LOGIN PASSWORD '…') or fix the user in the URL",
                        t.user
                    )),
                )
            } else {
                (false, None)
            }
        }
        c if *c == SqlState::TOO_MANY_CONNECTIONS => (
            true,
            step(format!(
                "the server's connection budget (max_connections) is used up; each ckpt process holds up to pool_size connections (here {}) plus 1 for its liveness session and LISTEN (a `ckpt run` holds 2 in all): lower pool_size in the URL, run fewer processes, or raise max_connections on the server",
                t.pool_size
            )),
        ),
        c if *c == SqlState::INSUFFICIENT_PRIVILEGE => (
            false,
            step(format!(
                "grant it: GRANT CONNECT ON DATABASE {} TO \"{}\"",
                t.db, t.user
            )),
        ),
        c if *c == SqlState::CANNOT_CONNECT_NOW
            || *c == SqlState::ADMIN_SHUTDOWN
            || *c == SqlState::CRASH_SHUTDOWN =>
        {
            (
                true,
                step("the server is starting or stopping; retry shortly".into()),
            )
        }
        // PgBouncer (and other poolers) refuse the startup parameter ckpt
        // sets the schema with when the URL does not name a pooler.
        c if *c == SqlState::PROTOCOL_VIOLATION
            && message.contains("unsupported startup parameter") =>
        {
            (
                false,
                step("a connection pooler answers there: add pooler=transaction to the URL (pooler=session if it runs in session mode); see \"Poolers\" in docs/OPERATIONS.md".into()),
            )
        }
        // PgBouncer while the server behind it is away ("server login has
        // been failing, try again later"): it passes.
        c if *c == SqlState::PROTOCOL_VIOLATION => (
            true,
            step("the pooler cannot reach the PostgreSQL server behind it; retry shortly".into()),
        ),
        _ => (false, None),
    }
}

/// The cause of a socket-level failure, and whether retrying may cure it.
fn io_cause(io: &std::io::Error, t: &ConnectTarget) -> (bool, String) {
    use std::io::ErrorKind;
    let many = t.hosts.len() > 1;
    let tried = if many {
        format!(
            "no host accepted a connection ({}; the last said: {io})",
            t.where_()
        )
    } else {
        format!("{}: {io}", t.where_())
    };
    match io.kind() {
        ErrorKind::ConnectionRefused => (
            true,
            format!(
                "{tried}; is the server running, and listening on that host and port (listen_addresses, port)?"
            ),
        ),
        ErrorKind::TimedOut => (
            true,
            format!(
                "no answer from {} within {} s (connect_timeout); is the host reachable, or does a firewall drop the packets?",
                t.where_(),
                t.connect_timeout.as_secs()
            ),
        ),
        ErrorKind::PermissionDenied if io.to_string().contains("does not allow writes") => (
            true,
            format!(
                "no host accepted writes (target_session_attrs=read-write): {} {} read-only or a standby",
                t.where_(),
                if many { "are all" } else { "is" }
            ),
        ),
        _ if io.to_string().contains("lookup") || io.to_string().contains("resolve") => (
            true,
            format!(
                "cannot resolve the host name of {}: {io}; check the host in the URL",
                t.where_()
            ),
        ),
        // The stream ended inside a reply: a server going down mid-answer,
        // or something else on the port whose bytes read as a long message.
        _ if io.to_string().contains("bytes remaining on stream") => (
            true,
            format!("{tried}; {NOT_POSTGRES}"),
        ),
        _ => (true, tried),
    }
}

/// The next step when what answered may not speak PostgreSQL's protocol.
const NOT_POSTGRES: &str = "the connection closed in the middle of a reply: a server restarting, or is that host and port not a PostgreSQL server (or a pooler in front of one)?";

/// The text between the double quotes after `prefix` in `s`.
fn quoted_after<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let start = s.find(&format!("{prefix}\""))? + prefix.len() + 1;
    let len = s[start..].find('"')?;
    Some(&s[start..start + len])
}

/// `e` and its causes on one line: the driver's "error performing TLS
/// handshake" says why only in its source.
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !out.contains(&text) {
            out = format!("{out}: {text}");
        }
        source = cause.source();
    }
    out.replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_client_address_is_read_from_a_pg_hba_refusal() {
        let m = "no pg_hba.conf entry for host \"10.1.2.3\", user \"bob\", database \"app\", no encryption";
        assert_eq!(quoted_after(m, "host "), Some("10.1.2.3"));
        assert_eq!(quoted_after("no quotes", "host "), None);
    }

    #[test]
    fn too_many_clients_is_an_outage_that_names_the_connection_budget() {
        let config: tokio_postgres::Config = "postgres://u@a/db".parse().unwrap();
        let t = ConnectTarget::new(&config, "URL".into(), PasswordSource::None, 4);
        let (transient, step) = next_step(
            &SqlState::TOO_MANY_CONNECTIONS,
            "sorry, too many clients already",
            &t,
        );
        assert!(transient, "retried like an outage");
        let step = step.unwrap();
        for needle in [
            "max_connections",
            "pool_size connections (here 4)",
            "plus 1 for its liveness session and LISTEN",
            "a `ckpt run` holds 2",
        ] {
            assert!(step.contains(needle), "{needle:?} missing from: {step}");
        }
    }

    #[test]
    fn hosts_are_listed_with_their_ports() {
        let config: tokio_postgres::Config = "postgres://u@a:1,b:5432,[::1]:3/db".parse().unwrap();
        let t = ConnectTarget::new(&config, "URL".into(), PasswordSource::None, 4);
        assert_eq!(t.hosts.len(), 3);
        assert!(t.where_().starts_with("a:1, b:5432"), "{}", t.where_());
        assert!(t.where_().ends_with("and [::1]:3"), "{}", t.where_());
        assert_eq!(t.db, "db");
        assert_eq!(t.create_timeout, Duration::from_secs(10));
    }
}
