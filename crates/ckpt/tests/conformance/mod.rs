//! The conformance suite: every store must pass every test here.
//!
//! A conformance test is a function marked `#[apply(every_store)]`: it is
//! written once and runs on every store of the `every_store` template (in
//! `stores.rs`), with no list to keep. It takes `store: Option<Fixture>`
//! (`None`: that store's server is not available here, and the test
//! returns at once after the fixture printed why).
//!
//! Tests drive time with a `ManualClock`, so no test sleeps. Workers are
//! separate `Ckpt` handles with their own worker ids; for SQLite each gets
//! its own connection, so they contend like processes do.

mod cas;
mod commands;
mod floats;
mod items;
mod jobs;
mod nesting;
mod nul;
mod operator;
mod output;
mod rounds;
mod runner;
mod shutdown;

use std::sync::Arc;
use std::time::Duration;

use ckpt::worker::WorkerId;
use ckpt::{Ckpt, Limits, ManualClock, QueueOptions, RetryPolicy, Timestamp};

use crate::Fixture;

pub const T0: Timestamp = Timestamp(1_700_000_000_000);

/// A worker named `name` on the fixture's store, on `clock`.
pub fn worker(f: &Fixture, clock: &ManualClock, name: &str) -> Ckpt {
    let store = (f.another)();
    Ckpt::new(store)
        .with_clock(Arc::new(clock.clone()))
        .with_worker(WorkerId {
            host: "test-host-that-is-not-this-one".into(),
            pid: 1,
            start: 1,
            nonce: name.into(),
        })
}

/// A worker with small limits, for the bound tests.
pub fn limited(f: &Fixture, clock: &ManualClock, history_keep: usize, state_bytes: usize) -> Ckpt {
    worker(f, clock, "limited").with_limits(Limits {
        history_keep,
        state_bytes,
    })
}

/// Queue options with a 10 s lease and a jitter-free 10 s, 20 s... backoff.
pub fn queue_options(max_attempts: u32) -> QueueOptions {
    QueueOptions {
        lease: Duration::from_secs(10),
        retry: RetryPolicy {
            max_attempts,
            base_delay: Duration::from_secs(10),
            factor: 2.0,
            max_delay: Duration::from_secs(600),
            jitter: 0.0,
        },
    }
}

/// The id of a real process on this host that has exited.
pub fn dead_local_worker() -> WorkerId {
    let mut child = std::process::Command::new("true")
        .spawn()
        .expect("spawn true");
    let pid = child.id();
    child.wait().expect("wait");
    WorkerId {
        pid,
        ..WorkerId::for_this_process()
    }
}
