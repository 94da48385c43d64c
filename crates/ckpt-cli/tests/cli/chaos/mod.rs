//! The chaos suite: real `ckpt run` processes, real signals, real servers,
//! and one assertion above all: **no two executions of one item overlap in
//! time**. Besides, every item completes, none is lost, and re-runs are
//! bounded by the work in flight at the fault.
//!
//! Every item's command is [`RECORDER`], ticking into a ledger that
//! [`Ledger`] reads back and checks (see [`crate::ledger`]).
//!
//! Scenarios: `stop` (SIGSTOP of a run, and of its process group, past its
//! lease), `postgres` (connections terminated, idle-session timeout, server
//! restarts), `kills` (`kill -9` again and again; an item that kills its
//! run every time). `stop` and `kills` run through a PgBouncer in
//! transaction mode too, where leases and self-fencing work alone.

mod kills;
mod postgres;
mod stop;

use std::path::Path;

pub use crate::ledger::{Ledger, RECORDER};
use crate::util::Sandbox;

/// A store for a scenario: the sandbox's SQLite file, or a fresh schema /
/// key prefix on the test servers (`None`: skipped, reason printed).
pub enum ChaosStore {
    Sqlite(String),
    Postgres(crate::postgres::PgSchema),
    /// Through a PgBouncer in transaction mode.
    Pooled(crate::pooler::PooledSchema),
    Redis(crate::redis::RedisPrefix),
}

impl ChaosStore {
    pub fn sqlite(sb: &Sandbox) -> Option<ChaosStore> {
        Some(ChaosStore::Sqlite(sb.store_url()))
    }
    pub fn postgres(tag: &str) -> Option<ChaosStore> {
        crate::postgres::PgSchema::new(tag).map(ChaosStore::Postgres)
    }
    /// A fresh schema reached through a PgBouncer of its own in
    /// transaction mode, with 4 server connections for all runs.
    pub fn pgbouncer(tag: &str) -> Option<ChaosStore> {
        crate::pooler::PooledSchema::new(tag, "transaction", 4).map(ChaosStore::Pooled)
    }
    pub fn redis(tag: &str) -> Option<ChaosStore> {
        crate::redis::RedisPrefix::new(tag).map(ChaosStore::Redis)
    }
    pub fn url(&self) -> String {
        match self {
            ChaosStore::Sqlite(url) => url.clone(),
            ChaosStore::Postgres(pg) => pg.url(),
            ChaosStore::Pooled(pg) => pg.url(),
            ChaosStore::Redis(r) => r.url(),
        }
    }
}

/// `ckpt run` over `items` with the recorder as command, ticking `ticks`
/// times per execution, under `--lease lease`, `-j jobs`.
pub fn recorder_run(
    sb: &Sandbox,
    store: &ChaosStore,
    items: &Path,
    lease: &str,
    jobs: u32,
    ticks: u32,
    host: &str,
) -> crate::util::Ckpt {
    sb.ckpt_bare()
        .args(["--store", &store.url(), "run", "--job", "chaos", "--items"])
        .arg(items)
        .args(["--lease", lease, "-j", &jobs.to_string(), "--retries", "10"])
        .args(["--", "sh", "-c", RECORDER, "_", "{}"])
        .env("LEDGER", sb.join("ledger"))
        .env("TICKS", ticks.to_string())
        .env("HOST_TAG", host)
}
