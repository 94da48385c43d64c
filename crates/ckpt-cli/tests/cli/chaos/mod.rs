//! The chaos suite: real `ckpt run` processes, real signals, real servers,
//! and one assertion above all: **no two executions of one item overlap in
//! time**. Besides, every item completes, none is lost, and re-runs are
//! bounded by the work in flight at the fault.
//!
//! Every item's command is [`RECORDER`]: it appends a line per tick
//! (`KEY EXECUTION NANOS`) to a shared ledger while it runs, and a final
//! `done` line. An execution's interval is its first to its last tick, so
//! an overlap is caught to within one tick (50 ms); a killed execution
//! simply stops ticking. [`Ledger`] reads the file back and checks.
//!
//! Scenarios: `stop` (SIGSTOP of a run, and of its process group, past its
//! lease), `postgres` (connections terminated, idle-session timeout, server
//! restarts), `kills` (`kill -9` again and again; an item that kills its
//! run every time).

mod kills;
mod postgres;
mod stop;

use std::collections::BTreeMap;
use std::path::Path;

use crate::util::Sandbox;

/// The command of every item: `sh -c RECORDER _ KEY`, with `LEDGER` (file)
/// and `TICKS` (how many ticks the execution runs) in the environment, and
/// `HOST_TAG` naming the host it stands for.
pub const RECORDER: &str = r#"id="${HOST_TAG:-h}-$$-$CKPT_ATTEMPT"
i=0
while [ "$i" -lt "$TICKS" ]; do
  echo "$1 $id $(date +%s%N)" >> "$LEDGER"
  sleep 0.05
  i=$((i + 1))
done
echo "$1 $id $(date +%s%N) done" >> "$LEDGER""#;

/// One execution of an item, as the ledger saw it.
#[derive(Debug, Clone)]
pub struct Execution {
    pub id: String,
    pub first_ns: u128,
    pub last_ns: u128,
    pub done: bool,
}

/// What the ledger says about a scenario.
#[derive(Debug, Default)]
pub struct Ledger {
    pub by_key: BTreeMap<String, Vec<Execution>>,
}

/// Two executions of one item that ran at the same time.
#[derive(Debug)]
pub struct Overlap {
    pub key: String,
    pub a: String,
    pub b: String,
    pub overlap_ms: f64,
}

impl Ledger {
    /// Reads the ledger file (lines `KEY ID NANOS [done]`).
    pub fn read(path: &Path) -> Ledger {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        Ledger::parse(&text)
    }

    pub fn parse(text: &str) -> Ledger {
        let mut by_id: BTreeMap<(String, String), Execution> = BTreeMap::new();
        for line in text.lines() {
            let mut f = line.split(' ');
            let (Some(key), Some(id), Some(ns)) = (f.next(), f.next(), f.next()) else {
                continue; // a line cut short by a kill
            };
            let Ok(ns) = ns.parse::<u128>() else { continue };
            let done = f.next() == Some("done");
            let e = by_id
                .entry((key.to_string(), id.to_string()))
                .or_insert(Execution {
                    id: id.to_string(),
                    first_ns: ns,
                    last_ns: ns,
                    done: false,
                });
            e.first_ns = e.first_ns.min(ns);
            e.last_ns = e.last_ns.max(ns);
            e.done |= done;
        }
        let mut ledger = Ledger::default();
        for ((key, _), e) in by_id {
            ledger.by_key.entry(key).or_default().push(e);
        }
        ledger
    }

    /// Every pair of executions of one item whose intervals intersect.
    pub fn overlaps(&self) -> Vec<Overlap> {
        let mut found = Vec::new();
        for (key, execs) in &self.by_key {
            for (i, a) in execs.iter().enumerate() {
                for b in &execs[i + 1..] {
                    let start = a.first_ns.max(b.first_ns);
                    let end = a.last_ns.min(b.last_ns);
                    if start <= end {
                        found.push(Overlap {
                            key: key.clone(),
                            a: a.id.clone(),
                            b: b.id.clone(),
                            overlap_ms: (end - start) as f64 / 1e6,
                        });
                    }
                }
            }
        }
        found
    }

    /// Items with at least one execution that ran to its end.
    pub fn completed(&self) -> usize {
        self.by_key
            .values()
            .filter(|e| e.iter().any(|x| x.done))
            .count()
    }

    /// Executions beyond the first, over all items.
    pub fn duplicates(&self) -> usize {
        self.by_key.values().map(|e| e.len() - 1).sum()
    }

    /// The smallest gap between two executions of one item, in ms (how
    /// close a handover came), if any item ran twice.
    pub fn closest_handover_ms(&self) -> Option<f64> {
        let mut best: Option<f64> = None;
        for execs in self.by_key.values() {
            let mut sorted: Vec<_> = execs.iter().collect();
            sorted.sort_by_key(|e| e.first_ns);
            for w in sorted.windows(2) {
                let gap = w[1].first_ns as f64 - w[0].last_ns as f64;
                let gap = gap / 1e6;
                best = Some(best.map_or(gap, |b: f64| b.min(gap)));
            }
        }
        best
    }

    /// Asserts the invariant and the bookkeeping of a scenario: `keys`
    /// items all completed, none overlapping, at most `max_duplicates`
    /// re-runs. Prints a one-line summary for docs/RELIABILITY.md.
    #[track_caller]
    pub fn assert_sound(&self, scenario: &str, keys: &[String], max_duplicates: usize) {
        let overlaps = self.overlaps();
        eprintln!(
            "chaos {scenario}: items {}, completed {}, executions {}, duplicates {}, overlaps {}, closest handover {}",
            keys.len(),
            self.completed(),
            self.by_key.values().map(Vec::len).sum::<usize>(),
            self.duplicates(),
            overlaps.len(),
            self.closest_handover_ms()
                .map_or_else(|| "-".to_string(), |g| format!("{g:.0} ms"))
        );
        let shown: Vec<String> = overlaps
            .iter()
            .map(|o| format!("{}: {} and {} for {:.0} ms", o.key, o.a, o.b, o.overlap_ms))
            .collect();
        assert!(
            overlaps.is_empty(),
            "{scenario}: executions of one item overlapped: {shown:#?}"
        );
        let missing: Vec<_> = keys
            .iter()
            .filter(|k| {
                !self
                    .by_key
                    .get(*k)
                    .is_some_and(|e| e.iter().any(|x| x.done))
            })
            .collect();
        assert!(
            missing.is_empty(),
            "{scenario}: never completed: {missing:?}"
        );
        assert!(
            self.duplicates() <= max_duplicates,
            "{scenario}: {} re-runs, more than the {max_duplicates} in flight at the fault",
            self.duplicates()
        );
    }
}

/// A store for a scenario: the sandbox's SQLite file, or a fresh schema /
/// key prefix on the test servers (`None`: skipped, reason printed).
pub enum ChaosStore {
    Sqlite(String),
    Postgres(crate::postgres::PgSchema),
    Redis(crate::redis::RedisPrefix),
}

impl ChaosStore {
    pub fn sqlite(sb: &Sandbox) -> Option<ChaosStore> {
        Some(ChaosStore::Sqlite(sb.store_url()))
    }
    pub fn postgres(tag: &str) -> Option<ChaosStore> {
        crate::postgres::PgSchema::new(tag).map(ChaosStore::Postgres)
    }
    pub fn redis(tag: &str) -> Option<ChaosStore> {
        crate::redis::RedisPrefix::new(tag).map(ChaosStore::Redis)
    }
    pub fn url(&self) -> String {
        match self {
            ChaosStore::Sqlite(url) => url.clone(),
            ChaosStore::Postgres(pg) => pg.url(),
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

#[test]
fn the_ledger_finds_overlaps_and_nothing_else() {
    let ledger = Ledger::parse(
        "a h-1-1 100\na h-1-1 200\na h-1-1 300 done\n\
         a h-2-2 250\na h-2-2 400 done\n\
         b h-3-1 100\nb h-3-1 200\n\
         b h-4-2 260 done\nc h-5-1 1\nc h-5\n",
    );
    let overlaps = ledger.overlaps();
    assert_eq!(overlaps.len(), 1, "{overlaps:?}");
    assert_eq!(overlaps[0].key, "a");
    assert!((overlaps[0].overlap_ms - 50e-6).abs() < 1e-9);
    assert_eq!(ledger.completed(), 2); // c never said done
    assert_eq!(ledger.duplicates(), 2);
    assert_eq!(ledger.closest_handover_ms(), Some(-50e-6));
}
