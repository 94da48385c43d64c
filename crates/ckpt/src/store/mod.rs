//! Stores: where checkpoints and items live.
//!
//! # Architecture
//!
//! - `contract`: the traits every backend implements, each
//!   method's atomicity and fencing written where it is declared.
//!   [`JobStore`] (leases and checkpoints) and [`ItemStore`] (work items)
//!   are cut along the seam between the cursor and the claim patterns;
//!   [`Store`] is both. Optional abilities are traits of their own that a
//!   store answers for: [`ItemSignals`] (wake idle workers),
//!   [`OwnerSessions`] (know when a worker's session ended) and
//!   [`SharedTx`] (the caller's writes in the store's transaction).
//! - `machine`: the item state machine, pure: what claim, heartbeat,
//!   cursor, complete, fail, release, takeover and redrive write, and the
//!   claimable and fence predicates. Every backend applies or binds its
//!   values; the predicates and the lease expiry are written in a backend
//!   only as the `WHERE` clause or expression of its dialect. `rules`: the
//!   job ownership rules and the errors they produce.
//! - The backends, laid out alike: `mod.rs` (the store type, its options,
//!   opening), `conn.rs` (connections, transactions, errors), `schema.rs`
//!   (creating and migrating), `rows.rs` (reading records), `jobs.rs`
//!   ([`JobStore`]), `items.rs` ([`ItemStore`]) and, where the store can
//!   share its transactions, `tx.rs` ([`SharedTx`]); plus what a dialect
//!   needs of its own (PostgreSQL: `patch.rs` for batched item changes,
//!   `checkpoint.rs`, group commit, LISTEN/NOTIFY; Redis: the Lua
//!   scripts). [`MemoryStore`] (tests, development: `mod`, `jobs`,
//!   `items`), [`SqliteStore`] (the embedded default), `PgStore` (feature
//!   `postgres`) and `RedisStore` (feature `redis`).
//! - `open`: a store from its URL ([`open()`]); `url`: URL helpers
//!   (redacting passwords, query strings), used by the backends.
//! - [`FaultStore`] wraps any store and fails or "crashes" at a chosen
//!   operation, for resume tests.
//!
//! The higher layers ([`Ckpt`](crate::Ckpt), [`Job`](crate::Job),
//! [`Queue`](crate::Queue), [`Runner`](crate::Runner)) validate input and
//! apply the policies; a store only stores, atomically and fenced.
//!
//! Adding a store means: its dialect (the files above), its URL scheme in
//! `open`, and in the tests its fixture and one line in the conformance
//! suite's `every_store` template.

mod contract;
mod fault;
pub mod machine;
mod memory;
mod open;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "redis")]
mod redis;
mod rules;
#[cfg(feature = "sqlite")]
mod sqlite;
mod url;

#[cfg(feature = "redis")]
pub use self::redis::RedisStore;
pub use contract::{
    CommandStore, FileCheck, ItemSignals, ItemStore, ItemStream, JobStore, OwnerSessions, SharedTx,
    Store, TxWrite,
};
pub use fault::{Fault, FaultStore, Op};
pub use memory::MemoryStore;
pub use open::open;
#[cfg(feature = "postgres")]
pub use postgres::{PgRow, PgStore, PgToSql, PgTx};
#[cfg(feature = "sqlite")]
pub use sqlite::{Durability, SqliteOptions, SqliteStore, SCHEMA_VERSION};
pub use url::{redact_url, OpenMode};
