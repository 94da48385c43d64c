//! The liveness session: how other workers learn, on any host, that this
//! one is gone — without taking a dropped connection for a dead process.
//!
//! A keeper thread holds a connection of its own with a session-level
//! advisory lock on a random key, and pings it every [`PING_EVERY`]. The
//! items and jobs this store's workers hold carry the key (`owner_key`).
//! When the lock is free, the session ended: the process died, or only its
//! connection did (`pg_terminate_backend`, an idle-session timeout, a
//! server restart or failover, a network cut).
//!
//! Both must be safe, so a free lock is not taken as death at once. A
//! worker that finds an owner's lock free only shortens the owner's leases
//! to [`SESSION_GRACE`] from now ([`OwnerSessions::expire_lost_owners`]).
//! The owner, for its part, re-establishes a lost session at once (under a
//! new key) and renews its leases under it; and stops the work of any lease
//! still written under a session that it has not confirmed alive for
//! [`SESSION_GRACE`] less a margin (the runner's watchdog asks
//! [`OwnerSessions::session_confirmed`]). Since a session's last confirmed
//! ping was sent before the session ended, and so before anyone could find
//! its lock free, the owner's work is gone before the shortened leases
//! lapse. A crashed worker's items are then taken over after about
//! [`SESSION_GRACE`], instead of after their whole lease.
//!
//! A key is never reused: a lease renewed under the new session cannot be
//! shortened by a worker that saw the old one end (the shortening is
//! conditional on the key).
//!
//! The same connection also carries the store's `LISTEN` (see
//! [`notify`](super::notify)): one connection per process for both, not two,
//! so that a `ckpt run` holds two connections in all (this one and its pooled
//! one). LISTEN is issued right after the lock, before the session counts as
//! established, and a new session listens again. The connection is read
//! between pings too, so notifications are delivered as they come.
//!
//! [`OwnerSessions::expire_lost_owners`]: crate::store::OwnerSessions::expire_lost_owners
//! [`OwnerSessions::session_confirmed`]: crate::store::OwnerSessions::session_confirmed

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use futures_util::future::poll_fn;
use tokio_postgres::AsyncMessage;

use super::connect_error::{connect_error, ConnectTarget};
use super::notify::Wakeups;
use super::tls::MakeTls;
use crate::error::{Error, Result};

/// How long after its last confirmed ping a lost session's leases may be
/// taken over. The owner stops their work before that.
pub const SESSION_GRACE: Duration = Duration::from_secs(5);

/// How often the keeper pings its session.
pub const PING_EVERY: Duration = Duration::from_millis(500);

/// How long a ping may take before the session counts as lost.
const PING_TIMEOUT: Duration = Duration::from_secs(2);

/// Sessions whose last confirmation is remembered (older ones count as
/// never confirmed: their leases are long fenced).
const REMEMBERED: usize = 8;

/// A liveness session: its id in this process and its lock key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Session {
    pub id: u64,
    pub key: i64,
}

#[derive(Default)]
struct State {
    current: Option<Session>,
    /// (session id, when its last successful ping was sent), newest last.
    confirmed: VecDeque<(u64, Instant)>,
    /// Why the last attempt failed: the connection error as the pool would
    /// report it, or another reason (kept as an `Unavailable` message).
    last_error: Option<Error>,
    started: bool,
}

/// The liveness of one store: the keeper thread and what it found.
#[derive(Default)]
pub(crate) struct Liveness {
    state: Mutex<State>,
    changed: Condvar,
    /// What the session's connection listens to, if anything.
    listen: Option<Listen>,
}

/// A channel to `LISTEN` on, and where its notifications go.
#[derive(Clone)]
pub(super) struct Listen {
    pub channel: String,
    pub wakeups: Arc<Wakeups>,
}

impl std::fmt::Debug for Liveness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Liveness")
            .field("current", &self.lock().current)
            .finish()
    }
}

impl Liveness {
    /// A liveness whose sessions also listen on `listen.channel`.
    pub(super) fn listening(listen: Listen) -> Liveness {
        Liveness {
            listen: Some(listen),
            ..Liveness::default()
        }
    }

    /// True once the keeper was started (by [`Liveness::session`]).
    pub(super) fn started(&self) -> bool {
        self.lock().started
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The current session, starting the keeper on first use and waiting
    /// up to `wait` for a session when there is none right now.
    pub(crate) fn session(
        self: &Arc<Self>,
        config: &tokio_postgres::Config,
        tls: &MakeTls,
        target: &ConnectTarget,
        wait: Duration,
    ) -> Result<Session> {
        let mut g = self.lock();
        if !g.started {
            g.started = true;
            let (weak, config, target) = (Arc::downgrade(self), config.clone(), target.clone());
            let (tls, listen) = (tls.clone(), self.listen.clone());
            std::thread::Builder::new()
                .name("ckpt-pg-liveness".into())
                .spawn(move || keep(weak, config, tls, target, listen))
                .map_err(|e| {
                    Error::Unavailable(format!("cannot start the liveness thread: {e}"))
                })?;
        }
        let (g, _) = self
            .changed
            .wait_timeout_while(g, wait, |s| s.current.is_none())
            .unwrap_or_else(|e| e.into_inner());
        g.current.ok_or_else(|| match &g.last_error {
            // The same line as a pooled connection's failure.
            Some(Error::Open(line)) => Error::Open(line.clone()),
            Some(Error::Unavailable(line)) => Error::Unavailable(line.clone()),
            other => Error::Unavailable(format!(
                "cannot keep a liveness session with PostgreSQL at {}: {}",
                target.url,
                match other {
                    Some(Error::Storage(why)) => why.clone(),
                    Some(e) => e.to_string(),
                    None => "no answer".into(),
                }
            )),
        })
    }

    /// The current session's id, if one is established (never waits).
    pub(crate) fn current(&self) -> Option<u64> {
        self.lock().current.map(|s| s.id)
    }

    /// When a ping confirming session `id` alive was last sent.
    pub(crate) fn confirmed(&self, id: u64) -> Option<Instant> {
        self.lock()
            .confirmed
            .iter()
            .rev()
            .find(|(s, _)| *s == id)
            .map(|(_, at)| *at)
    }

    fn confirm(&self, id: u64, sent: Instant) {
        let mut g = self.lock();
        match g.confirmed.iter_mut().find(|(s, _)| *s == id) {
            Some(entry) => entry.1 = entry.1.max(sent),
            None => {
                g.confirmed.push_back((id, sent));
                while g.confirmed.len() > REMEMBERED {
                    g.confirmed.pop_front();
                }
            }
        }
    }

    fn set_current(&self, session: Option<Session>, error: Option<Error>) {
        let mut g = self.lock();
        g.current = session;
        if error.is_some() {
            g.last_error = error;
        }
        drop(g);
        self.changed.notify_all();
    }
}

/// Reads the session's connection until it ends: answers to the pings,
/// and notifications, which go to `wakeups`. When it ends, nothing listens.
async fn drive<S, T>(
    mut connection: tokio_postgres::Connection<S, T>,
    wakeups: Option<Arc<Wakeups>>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    while let Some(message) = poll_fn(|cx| connection.poll_message(cx)).await {
        match message {
            Ok(AsyncMessage::Notification(n)) => {
                if let Some(w) = &wakeups {
                    w.notify(n.payload());
                }
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    if let Some(w) = wakeups {
        w.set_listening(false);
    }
}

/// The keeper thread: connects, locks a fresh key (and listens, with
/// `listen`), pings until the session fails, and starts over at once; ends
/// when the store is dropped.
fn keep(
    liveness: Weak<Liveness>,
    config: tokio_postgres::Config,
    tls: MakeTls,
    target: ConnectTarget,
    listen: Option<Listen>,
) {
    let wakeups = listen.as_ref().map(|l| l.wakeups.clone());
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        if let Some(l) = liveness.upgrade() {
            l.set_current(
                None,
                Some(Error::Storage("cannot start a driver thread".into())),
            );
        }
        return;
    };
    let mut next_id = 0u64;
    let mut backoff = Duration::from_millis(50);
    loop {
        if liveness.strong_count() == 0 {
            return;
        }
        let key = rand::random::<i64>() & i64::MAX;
        let sent = Instant::now();
        let connected = runtime.block_on(async {
            let (client, connection) = config.connect(tls.clone()).await?;
            let driver = tokio::spawn(drive(connection, wakeups.clone()));
            let locked: bool = client
                .query_one("SELECT pg_try_advisory_lock($1)", &[&key])
                .await?
                .get(0);
            // Subscribed before the session counts as established, so a
            // runner that claimed under it is already listening.
            if let (true, Some(listen)) = (locked, &listen) {
                client
                    .batch_execute(&format!("LISTEN {}", listen.channel))
                    .await?;
                listen.wakeups.set_listening(true);
            }
            Ok::<_, tokio_postgres::Error>((client, driver, locked))
        });
        let (client, driver) = match connected {
            Ok((client, driver, true)) => (client, driver),
            Ok((_, driver, false)) => {
                // A random 63-bit key already locked: draw another.
                driver.abort();
                continue;
            }
            Err(e) => {
                let Some(l) = liveness.upgrade() else { return };
                // The URL in the message is the redacted one.
                let why = connect_error(&e, &target);
                tracing::debug!(error = %why, "liveness session: cannot connect");
                l.set_current(None, Some(why));
                drop(l);
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        backoff = Duration::from_millis(50);
        next_id += 1;
        let session = Session { id: next_id, key };
        {
            let Some(l) = liveness.upgrade() else { return };
            l.confirm(session.id, sent);
            l.set_current(Some(session), None);
        }
        if next_id > 1 {
            tracing::info!(
                event = "session_restored",
                "liveness session with PostgreSQL re-established"
            );
        }
        // Ping until the session fails or the store goes. The sleep runs
        // on the runtime (made inside it: a timer needs its context), so
        // that the connection is read meanwhile.
        loop {
            runtime.block_on(async { tokio::time::sleep(PING_EVERY).await });
            let Some(l) = liveness.upgrade() else {
                driver.abort();
                return;
            };
            let sent = Instant::now();
            let ok = runtime.block_on(async {
                matches!(
                    tokio::time::timeout(PING_TIMEOUT, client.simple_query("SELECT 1")).await,
                    Ok(Ok(_))
                )
            });
            if ok {
                l.confirm(session.id, sent);
                continue;
            }
            tracing::warn!(
                event = "session_lost",
                "liveness session with PostgreSQL lost; re-establishing it"
            );
            if let Some(w) = &wakeups {
                w.set_listening(false);
            }
            l.set_current(
                None,
                Some(Error::Storage("the liveness session ended".into())),
            );
            driver.abort();
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_connect_reads_as_the_pools_does() {
        use crate::store::url::{redact_url, OpenMode};
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let url = format!("postgres://bob:pw-9@127.0.0.1:{port}/db");
        let pool = super::super::PgStore::open(&url, OpenMode::MustExist)
            .unwrap_err()
            .to_string();
        let config: tokio_postgres::Config = url.parse().unwrap();
        let target = ConnectTarget::new(
            &config,
            redact_url(&url),
            super::super::libpq::PasswordSource::Url,
            16,
        );
        let (_, tls) = super::super::tls::TlsParams::default().connector().unwrap();
        let err = Arc::new(Liveness::default())
            .session(&config, &tls, &target, Duration::from_secs(2))
            .unwrap_err();
        assert!(matches!(err, Error::Unavailable(_)), "{err:?}");
        assert_eq!(err.to_string(), pool);
        assert!(pool.contains(&format!("127.0.0.1:{port}")), "{pool}");
        assert!(!pool.contains("pw-9"), "{pool}");
    }

    #[test]
    fn confirmations_are_kept_per_session_newest_wins() {
        let l = Liveness::default();
        let t0 = Instant::now();
        l.confirm(1, t0);
        l.confirm(1, t0 + Duration::from_millis(5));
        l.confirm(1, t0 + Duration::from_millis(2));
        assert_eq!(l.confirmed(1), Some(t0 + Duration::from_millis(5)));
        assert_eq!(l.confirmed(2), None);
        for id in 2..=(REMEMBERED as u64 + 1) {
            l.confirm(id, t0);
        }
        // The oldest session is forgotten: never confirmed, so fenced.
        assert_eq!(l.confirmed(1), None);
        assert!(l.confirmed(REMEMBERED as u64 + 1).is_some());
    }
}
