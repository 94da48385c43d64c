//! A lost connection: transient errors, then the store recovers.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::*;
use crate::model::{ItemChange, ItemUpdate};

/// A TCP proxy to the test server that can cut every connection through
/// it and refuse new ones, as a network failure or a server restart would.
struct Proxy {
    port: u16,
    up: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    streams: Arc<Mutex<Vec<TcpStream>>>,
}

impl Proxy {
    fn start(target: std::net::SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let proxy = Proxy {
            port: listener.local_addr().unwrap().port(),
            up: Arc::new(AtomicBool::new(true)),
            stop: Arc::new(AtomicBool::new(false)),
            streams: Arc::default(),
        };
        let (up, stop, streams) = (proxy.up.clone(), proxy.stop.clone(), proxy.streams.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let client = match listener.accept() {
                    Ok((client, _)) => client,
                    Err(_) => {
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    }
                };
                if !up.load(Ordering::SeqCst) {
                    continue; // dropped: the client sees the connection close
                }
                let _ = client.set_nonblocking(false);
                let Ok(server) = TcpStream::connect(target) else {
                    continue;
                };
                let mut held = streams.lock().unwrap();
                for (from, to) in [(&client, &server), (&server, &client)] {
                    let (Ok(mut from), Ok(mut to)) = (from.try_clone(), to.try_clone()) else {
                        continue;
                    };
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 16 * 1024];
                        while let Ok(n) = from.read(&mut buf) {
                            if n == 0 || to.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                        let _ = to.shutdown(Shutdown::Both);
                    });
                }
                held.extend([client, server]);
            }
        });
        proxy
    }

    fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        for s in self.streams.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.cut();
    }
}

/// `url` with its host and port replaced by `addr`.
fn with_addr(url: &str, addr: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap();
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let userinfo = authority.rfind('@').map_or("", |at| &authority[..=at]);
    format!("{scheme}://{userinfo}{addr}{tail}")
}

#[test]
fn a_lost_connection_is_unavailable_and_the_store_recovers() {
    let Some(s) = Scratch::new("lost") else {
        return;
    };
    let base = base_url();
    let (_, rest) = base.split_once("://").unwrap();
    let authority = &rest[..rest.find(['/', '?']).unwrap_or(rest.len())];
    let host_port = authority.rsplit('@').next().unwrap();
    let host_port = if host_port.contains(':') {
        host_port.to_string()
    } else {
        format!("{host_port}:6379")
    };
    let target = host_port.to_socket_addrs().unwrap().next().unwrap();
    let proxy = Proxy::start(target);
    let url = with_addr(&s.url(""), &format!("127.0.0.1:{}", proxy.port));
    let store = RedisStore::open(&url, OpenMode::CreateIfMissing).unwrap();
    enqueue(&store, "j", &["a", "b"], T0);
    let lease = T0.plus(Duration::from_secs(10));
    let held = store
        .claim("j", "w", 1, lease, true, T0)
        .unwrap()
        .pop()
        .unwrap();

    proxy.cut();
    for _ in 0..3 {
        let err = store.item_counts("j").unwrap_err();
        assert!(matches!(err, Error::Unavailable(_)), "{err:?}");
        assert!(err.is_transient());
        let err = store
            .update_items(
                &[ItemUpdate {
                    lease: held.lease.clone(),
                    change: ItemChange::Complete {
                        stats: None,
                        command: None,
                    },
                }],
                T0,
            )
            .unwrap_err();
        assert!(matches!(err, Error::Unavailable(_)), "{err:?}");
    }

    proxy.restore();
    let deadline = Instant::now() + Duration::from_secs(20);
    let counts = loop {
        match store.item_counts("j") {
            Ok(counts) => break counts,
            Err(Error::Unavailable(_)) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50))
            }
            Err(e) => panic!("the store did not come back: {e:?}"),
        }
    };
    assert_eq!((counts.pending, counts.running), (1, 1), "nothing was lost");
    let done = store
        .update_items(
            &[ItemUpdate {
                lease: held.lease,
                change: ItemChange::Complete {
                    stats: None,
                    command: None,
                },
            }],
            T0,
        )
        .unwrap();
    assert!(done[0].is_ok(), "the lease survived the outage");
}

/// A Redis that lost the store's data (restarted without persistence,
/// flushed) under an open handle: every call says the store is gone and
/// writes nothing, rather than building jobs the read commands cannot see
/// or handing out a job number and claim token again that a stale holder
/// still holds. Opening the store again starts a new, empty one.
#[test]
fn a_store_emptied_under_an_open_handle_is_refused_not_rebuilt() {
    let Some(mut scratch) = Scratch::new("gone") else {
        return;
    };
    let store = scratch.open("");
    enqueue(&store, "j", &["a", "b"], T0);
    let until = T0.plus(Duration::from_secs(60));
    let stale = store.claim("j", "w", 1, until, true, T0).unwrap();
    assert_eq!(stale.len(), 1);
    // What a restart without persistence leaves: nothing under the prefix.
    let keys: Vec<String> = scratch
        .keys()
        .into_iter()
        .map(|k| format!("{}:{k}", scratch.prefix))
        .collect();
    scratch.raw::<()>(::redis::cmd("DEL").arg(keys));
    let complete = |lease| ItemUpdate {
        lease,
        change: ItemChange::Complete {
            stats: None,
            command: None,
        },
    };
    let calls: Vec<(&str, crate::Result<()>)> = vec![
        (
            "enqueue",
            store
                .enqueue("j", &mut items(&["a"]).into_iter(), T0)
                .map(drop),
        ),
        ("claim", store.claim("j", "w", 1, until, true, T0).map(drop)),
        (
            "update_items",
            store
                .update_items(&[complete(stale[0].lease.clone())], T0)
                .map(drop),
        ),
        (
            "acquire_job",
            store.acquire_job("k", "w", until, None, T0).map(drop),
        ),
        ("ensure_job", store.ensure_job("k", T0)),
        ("list_jobs", store.list_jobs().map(drop)),
        ("get_job", store.get_job("j").map(drop)),
        ("item_counts", store.item_counts("j").map(drop)),
    ];
    for (call, result) in calls {
        let err = result.expect_err(call).to_string();
        assert!(
            err.contains(&format!("store with prefix \"{}\"", scratch.prefix))
                && err.contains("is gone")
                && err.contains("nothing was written"),
            "{call}: {err}"
        );
    }
    assert!(scratch.keys().is_empty(), "nothing was written");
    // Opened again: a new store, empty, that works.
    let again = scratch.open("");
    assert!(again.list_jobs().unwrap().is_empty());
    assert_eq!(enqueue(&again, "j", &["a"], T0), 1);
    assert!(
        store.list_jobs().is_ok(),
        "the old handle sees the new store"
    );
}

/// Keys under the prefix without the store's meta hash: another
/// application's, or a ckpt store that lost its meta. Opening to write or
/// to read says so, and leaves them as they are.
#[test]
fn a_prefix_holding_keys_of_another_application_is_refused_and_left_untouched() {
    let Some(mut scratch) = Scratch::new("foreign") else {
        return;
    };
    let prefix = scratch.prefix.clone();
    let key = |k: &str| format!("{prefix}:{k}");
    let cases: [(&str, ::redis::Cmd, &str); 3] = [
        (
            "meta",
            ::redis::cmd("SET").arg(key("meta")).arg("x").clone(),
            "is a string, not a ckpt store's metadata",
        ),
        (
            "jobs",
            ::redis::cmd("HSET")
                .arg(key("jobs"))
                .arg("a")
                .arg("b")
                .clone(),
            "holds key",
        ),
        (
            "jobseq",
            ::redis::cmd("SET").arg(key("jobseq")).arg("5").clone(),
            "holds key",
        ),
    ];
    for (name, mut write, says) in cases {
        scratch.raw::<()>(&mut write);
        // A read too: a store that lost its meta is not "no store" (a
        // script reading its cursor would start over).
        for mode in [OpenMode::CreateIfMissing, OpenMode::MustExist] {
            let err = RedisStore::open(&scratch.url(""), mode).unwrap_err();
            assert!(matches!(err, Error::NotAStore(_)), "{name}: {err}");
            assert!(err.to_string().contains(says), "{name}: {err}");
            assert!(
                err.to_string().contains("nothing was written") || name == "meta",
                "{err}"
            );
        }
        assert_eq!(
            scratch.keys(),
            BTreeSet::from([name.to_string()]),
            "{name}: left as it was"
        );
        scratch.raw::<()>(::redis::cmd("DEL").arg(key(name)));
    }
    // With the prefix clear, a store is made.
    scratch.open("");
    assert!(scratch.keys().contains("meta"));
}

#[test]
fn a_server_that_does_not_speak_redis_is_named_so_in_one_line() {
    // An HTTP server on the port, say: the driver's own message is lines of
    // the byte values it could not parse.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(mut client) = client else { return };
            let mut buf = [0u8; 4096];
            let _ = client.read(&mut buf);
            let _ = client.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
        }
    });
    let url = format!("redis://:hunter2@127.0.0.1:{port}/0?prefix=p");
    let err = RedisStore::open(&url, OpenMode::CreateIfMissing)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("the reply is not in Redis's protocol; is that host and port a Redis server?"),
        "{err}"
    );
    assert!(!err.contains('\n') && !err.contains("hunter2"), "{err:?}");
}
