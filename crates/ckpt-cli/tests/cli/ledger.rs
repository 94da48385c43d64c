//! The one checker of the invariant the suites that kill, stop and skew
//! runs are about: **no two executions of one item overlap in time**.
//!
//! An item's command appends a line per tick (`KEY ID NANOS`, ID telling
//! executions apart) to a shared ledger while it runs, and a last one
//! ending in `done` when it runs to its end. An execution's interval is its
//! first to its last tick, so an overlap is caught to within one tick
//! (50 ms); a killed execution simply stops ticking. [`Ledger`] reads the
//! file back and checks.
//!
//! [`RECORDER`] is such a command; a script of its own (orphans.rs) builds
//! on [`tick_fn!`]. Both take the clock from `LEDGER_DATE` (a command
//! printing nanoseconds; `date +%s%N` by default), so that commands of a
//! run under `faketime` can still log real time.

use std::collections::BTreeMap;
use std::path::Path;

/// Shell lines defining `tick [done]`, which appends `$KEY $ID NANOS
/// [done]` to `$LEDGER`, timed by `$LEDGER_DATE` (word-split) or `date
/// +%s%N`. A macro, so that scripts can `concat!` it.
macro_rules! tick_fn {
    () => {
        r#"tick() { echo "$KEY $ID $(${LEDGER_DATE:-date +%s%N})${1:+ $1}" >> "$LEDGER"; }
"#
    };
}
pub(crate) use tick_fn;

/// The command `sh -c RECORDER _ KEY`, with `LEDGER` (file) and `TICKS`
/// (how many 50 ms ticks the execution runs) in the environment, and
/// `HOST_TAG` naming the host (or run) it stands for: its executions are
/// `HOST_TAG-PID-ATTEMPT`.
pub const RECORDER: &str = concat!(
    r#"KEY=$1 ID="${HOST_TAG:-h}-$$-$CKPT_ATTEMPT"
"#,
    tick_fn!(),
    r#"i=0
while [ "$i" -lt "$TICKS" ]; do
  tick
  sleep 0.05
  i=$((i + 1))
done
tick done"#
);

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
    /// Each item's executions, by their first tick.
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
    /// Reads the ledger file (lines `KEY ID NANOS [done]`); empty if it
    /// does not exist.
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
        for execs in ledger.by_key.values_mut() {
            execs.sort_by_key(|e| e.first_ns);
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

    /// How many executions, over all items.
    pub fn executions(&self) -> usize {
        self.by_key.values().map(Vec::len).sum()
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

    /// The gaps between consecutive executions of one item, in ms (negative:
    /// an overlap), item by item.
    pub fn handovers_ms(&self) -> Vec<f64> {
        self.by_key
            .values()
            .flat_map(|execs| {
                execs
                    .windows(2)
                    .map(|w| (w[1].first_ns as f64 - w[0].last_ns as f64) / 1e6)
            })
            .collect()
    }

    /// The smallest gap between two executions of one item, in ms (how
    /// close a handover came), if any item ran twice.
    pub fn closest_handover_ms(&self) -> Option<f64> {
        self.handovers_ms().into_iter().reduce(f64::min)
    }

    /// A one-line summary, for docs/RELIABILITY.md.
    pub fn summary(&self, scenario: &str, keys: &[String]) -> String {
        format!(
            "{scenario}: items {}, completed {}, executions {}, duplicates {}, overlaps {}, closest handover {}",
            keys.len(),
            self.completed(),
            self.executions(),
            self.duplicates(),
            self.overlaps().len(),
            self.closest_handover_ms()
                .map_or_else(|| "-".to_string(), |g| format!("{g:.0} ms"))
        )
    }

    /// Asserts the invariant: no two executions of one item overlapped.
    #[track_caller]
    pub fn assert_no_overlap(&self, scenario: &str) {
        let shown: Vec<String> = self
            .overlaps()
            .iter()
            .map(|o| format!("{}: {} and {} for {:.0} ms", o.key, o.a, o.b, o.overlap_ms))
            .collect();
        assert!(
            shown.is_empty(),
            "{scenario}: executions of one item overlapped: {shown:#?}"
        );
    }

    /// Asserts that the ledger holds exactly the items `keys`, each with an
    /// execution that ran to its end.
    #[track_caller]
    pub fn assert_completed(&self, scenario: &str, keys: &[String]) {
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
        let unknown: Vec<_> = self.by_key.keys().filter(|k| !keys.contains(k)).collect();
        assert!(
            unknown.is_empty(),
            "{scenario}: items that were not given: {unknown:?}"
        );
    }

    /// Asserts the invariant and the bookkeeping of a scenario: `keys`
    /// items all completed, none overlapping, at most `max_duplicates`
    /// re-runs. Prints a one-line summary for docs/RELIABILITY.md.
    #[track_caller]
    pub fn assert_sound(&self, scenario: &str, keys: &[String], max_duplicates: usize) {
        eprintln!("chaos {}", self.summary(scenario, keys));
        self.assert_no_overlap(scenario);
        self.assert_completed(scenario, keys);
        assert!(
            self.duplicates() <= max_duplicates,
            "{scenario}: {} re-runs, more than the {max_duplicates} in flight at the fault",
            self.duplicates()
        );
    }
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
    assert_eq!(ledger.executions(), 5);
    assert_eq!(ledger.duplicates(), 2);
    assert_eq!(ledger.closest_handover_ms(), Some(-50e-6));
    assert_eq!(ledger.handovers_ms(), vec![-50e-6, 60e-6]);
}

#[test]
fn the_ledger_asserts_fail_on_overlaps_missing_and_unknown_items() {
    let keys = ["a".to_string(), "b".to_string()];
    let fails = |text: &str, max: usize| {
        let ledger = Ledger::parse(text);
        std::panic::catch_unwind(|| ledger.assert_sound("t", &keys, max)).is_err()
    };
    // Sequential re-runs, out of order in the file: sound.
    let sound = "a x 300\na x 400 done\na y 100\na y 200\nb z 100 done\n";
    assert!(!fails(sound, 1));
    assert!(fails(sound, 0), "one re-run over the bound of 0");
    // A killed execution that ticked on after its successor started.
    assert!(fails("a y 100\na x 150 done\na y 160\nb z 1 done\n", 9));
    // Touching intervals count as an overlap.
    assert!(fails("a y 100\na x 100 done\nb z 1 done\n", 9));
    // b never ran to its end; b never ran at all; c was never given.
    assert!(fails("a x 1 done\nb z 1\n", 9));
    assert!(fails("a x 1 done\n", 9));
    assert!(fails("a x 1 done\nb z 1 done\nc w 1 done\n", 9));
}

#[test]
fn the_recorder_ticks_with_the_clock_it_is_given() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("ledger");
    let run = |date: Option<&str>, host: &str| {
        let mut cmd = std::process::Command::new("sh");
        cmd.args(["-c", RECORDER, "_", "k"])
            .env("LEDGER", &ledger)
            .env("TICKS", "2")
            .env("HOST_TAG", host)
            .env("CKPT_ATTEMPT", "1");
        if let Some(date) = date {
            cmd.env("LEDGER_DATE", date);
        }
        assert!(cmd.status().unwrap().success());
    };
    run(None, "real");
    run(Some("echo 7"), "fixed");
    let text = std::fs::read_to_string(&ledger).unwrap();
    let ledger = Ledger::parse(&text);
    let execs = &ledger.by_key["k"];
    assert_eq!(execs.len(), 2, "{text}");
    assert!(execs.iter().all(|e| e.done), "{text}");
    let fixed = execs.iter().find(|e| e.id.starts_with("fixed-")).unwrap();
    assert_eq!((fixed.first_ns, fixed.last_ns), (7, 7), "{text}");
    let real = execs.iter().find(|e| e.id.starts_with("real-")).unwrap();
    // Three lines 50 ms apart, stamped by `date +%s%N`.
    assert!(real.last_ns - real.first_ns >= 100_000_000, "{text}");
    assert_eq!(text.lines().count(), 6, "{text}");
}
