//! The in-memory store: for tests and development. Everything is lost when
//! the process exits. One mutex makes every method atomic.
//!
//! Jobs ([`jobs`]) and items ([`items`]) live in one [`Inner`] behind that
//! mutex. Items are applied the item state machine's values directly
//! ([`ItemState`]); a set ordered by `(job, ready_at, id)` plays the part
//! of the other stores' ready-time index.

mod commands;
mod items;
mod jobs;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Mutex;

use serde_json::Value;

use super::machine::{shown_ready_at, ItemState};
use super::{ItemSignals, OwnerSessions, Store};
use crate::error::{Error, Result};
use crate::model::{HistoryEntry, ItemCounts, ItemId, ItemRecord, JobRecord, JobStatus};
use crate::time::Timestamp;

/// A store that lives in this process's memory.
#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        MemoryStore::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave a half-applied change
        // visible: every method validates before it mutates.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Store for MemoryStore {
    fn describe(&self) -> String {
        "memory://".to_string()
    }

    /// Each instance is its own store: its address tells them apart.
    fn identity(&self) -> String {
        format!("memory://{:p}", self)
    }

    /// None: workers poll (they share this process, so a poll is cheap).
    fn item_signals(&self) -> Option<&dyn ItemSignals> {
        None
    }

    /// None: every owner lives in this process; a dead one is a dead
    /// process, found by the local process check.
    fn owner_sessions(&self) -> Option<&dyn OwnerSessions> {
        None
    }

    /// None: the store lives in this process, on this machine's clock.
    fn server_time(&self) -> crate::error::Result<Option<crate::time::Timestamp>> {
        Ok(None)
    }
}

#[derive(Debug, Default)]
struct Inner {
    jobs: BTreeMap<String, JobRow>,
    /// Item `id` is at index `id - 1`; items of a deleted job stay here,
    /// unreachable (the job row and the key map were the ways in).
    items: Vec<ItemRow>,
    keys: HashMap<(String, String), ItemId>,
    /// Claimable-at index: `(job, ready_at, id)` of every unfinished item.
    ready: BTreeSet<(String, i64, ItemId)>,
}

#[derive(Debug)]
struct JobRow {
    record: JobRecord,
    history: VecDeque<HistoryEntry>,
    items: Vec<ItemId>,
    /// Its command templates, id `i + 1` at index `i`; counts are read
    /// from the items.
    commands: Vec<crate::model::CommandRecord>,
}

#[derive(Debug, Clone)]
struct ItemRow {
    job: String,
    key: String,
    payload: Option<Value>,
    enqueued_at: Timestamp,
    state: ItemState,
}

impl ItemRow {
    fn record(&self, id: ItemId) -> ItemRecord {
        let s = &self.state;
        ItemRecord {
            id,
            key: self.key.clone(),
            payload: self.payload.clone(),
            status: s.status,
            attempts: s.attempts,
            owner: s.owner.clone(),
            ready_at: shown_ready_at(s.status, s.ready_at),
            last_error: s.last_error.clone(),
            last_output: s.last_output.clone(),
            stats: s.stats.clone(),
            cursor: s.cursor.clone(),
            enqueued_at: self.enqueued_at,
            started_at: s.started_at,
            finished_at: s.finished_at,
            command_id: s.command,
        }
    }
}

impl Inner {
    fn job_mut(&mut self, job: &str) -> Result<&mut JobRow> {
        self.jobs
            .get_mut(job)
            .ok_or_else(|| Error::NotFound(format!("job '{job}'")))
    }

    fn item(&self, id: ItemId) -> &ItemRow {
        &self.items[(id - 1) as usize]
    }

    /// The item `id`, if it exists.
    fn find_item(&self, id: ItemId) -> Option<&ItemRow> {
        let index = id.checked_sub(1)?;
        usize::try_from(index).ok().and_then(|i| self.items.get(i))
    }

    /// Moves the items `ids` of `job` back to pending
    /// ([`Redrive`](super::machine::Redrive)) and, if any moved, makes the
    /// job running again; returns how many moved.
    fn redrive_items(&mut self, job: &str, ids: &[ItemId], now: Timestamp) -> Result<u64> {
        for id in ids {
            self.change_item(*id, ItemState::redrive);
        }
        if !ids.is_empty() {
            let r = &mut self.job_mut(job)?.record;
            r.status = JobStatus::Running;
            r.completed_at = None;
            r.updated_at = now;
        }
        Ok(ids.len() as u64)
    }

    /// Changes item `id`'s state with `change`, keeping the ready index in
    /// step with its `ready_at`; returns what `change` returned.
    fn change_item<T>(&mut self, id: ItemId, change: impl FnOnce(&mut ItemState) -> T) -> T {
        let row = &mut self.items[(id - 1) as usize];
        let before = row.state.ready_at;
        let out = change(&mut row.state);
        let after = row.state.ready_at;
        if before != after {
            if let Some(t) = before {
                self.ready.remove(&(row.job.clone(), t.0, id));
            }
            if let Some(t) = after {
                self.ready.insert((row.job.clone(), t.0, id));
            }
        }
        out
    }

    /// Adds an item; returns its id.
    fn push_item(&mut self, row: ItemRow) -> ItemId {
        let id = self.items.len() as ItemId + 1;
        if let Some(t) = row.state.ready_at {
            self.ready.insert((row.job.clone(), t.0, id));
        }
        self.items.push(row);
        id
    }

    /// The job's item counts by status.
    fn counts(&self, job: &str) -> ItemCounts {
        let mut counts = ItemCounts::default();
        for id in self.item_ids(job) {
            counts.add(self.item(*id).state.status, 1);
        }
        counts
    }

    /// The ids of the job's items, in enqueue order (none for an unknown job).
    fn item_ids(&self, job: &str) -> &[ItemId] {
        self.jobs.get(job).map_or(&[], |row| &row.items)
    }
}
