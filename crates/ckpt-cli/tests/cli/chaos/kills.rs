//! `kill -9` of a run, again and again: nothing is lost, re-runs are
//! bounded by what was in flight, no item runs twice at once; and an item
//! that kills its run every time still ends up dead after its attempts.

use std::time::{Duration, Instant};

use super::{recorder_run, ChaosStore, Ledger};
use crate::util::{items, wait_until, Sandbox};

const SIGKILL: i32 = libc::SIGKILL;

/// Ten `kill -9` of `ckpt run -j 8` at random moments over `n` short
/// items, each followed by a rerun, then a last run to the end.
fn repeated_kills(sb: &Sandbox, store: Option<ChaosStore>, n: usize) {
    let Some(store) = store else { return };
    let keys = items("k", n);
    let file = sb.write_items("items.txt", &keys);
    let ledger = sb.join("ledger");
    let jobs = 8;
    // What one run holds at most: a slot per worker plus the prefetch
    // (ckpt run claims up to max(2 × jobs, 8) ahead).
    let held = jobs + (2 * jobs).max(8);
    let kills = 10;
    let mut seed = std::process::id() as u64;
    let mut rand_ms = |lo: u64, hi: u64| {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        lo + (seed >> 33) % (hi - lo)
    };
    for round in 0..kills {
        let before = Ledger::read(&ledger).completed();
        let mut child = recorder_run(sb, &store, &file, "30s", jobs as u32, 1, "A").spawn();
        // Let it get going, then kill it at a random moment.
        wait_until(Duration::from_secs(60), "the run to make progress", || {
            Ledger::read(&ledger).completed() > before || child.try_wait().unwrap().is_some()
        });
        std::thread::sleep(Duration::from_millis(rand_ms(50, 1500)));
        // SAFETY: kill(2) has no memory-safety preconditions.
        unsafe { libc::kill(child.id() as i32, SIGKILL) };
        let status = child.wait().unwrap();
        eprintln!("kill {round}: {status:?}");
    }
    // 5,000 items take a loaded 2-core machine over a minute.
    let out = recorder_run(sb, &store, &file, "30s", jobs as u32, 1, "A")
        .start()
        .wait(Duration::from_secs(240));
    out.success();
    // A kill re-runs at most what the run held: items running, or ended
    // and not yet committed.
    Ledger::read(&ledger).assert_sound(
        &format!("{kills} x kill -9, {n} items"),
        &keys,
        kills * held,
    );
}

#[test]
fn ten_kills_of_a_run_over_5000_items_on_sqlite() {
    let sb = Sandbox::new();
    repeated_kills(&sb, ChaosStore::sqlite(&sb), 5000);
}

#[test]
fn ten_kills_of_a_run_on_postgres() {
    let sb = Sandbox::new();
    repeated_kills(&sb, ChaosStore::postgres("kills"), 1000);
}

#[test]
fn ten_kills_of_a_run_through_pgbouncer() {
    let sb = Sandbox::new();
    repeated_kills(&sb, ChaosStore::pgbouncer("kills_pooled"), 1000);
}

#[test]
fn ten_kills_of_a_run_on_redis() {
    let sb = Sandbox::new();
    repeated_kills(&sb, ChaosStore::redis("kills"), 1000);
}

/// An item whose command kills its own run (`kill -9 $PPID`) every time:
/// after `--retries 2` (three attempts) it is dead, every other item is
/// completed, and it was started no more than three times (plus one, when
/// its run died before the start could be recorded).
///
/// The poison waits a moment before it kills: the previous item's command
/// has exited by then, but its completion may still be on its way to the
/// store, and an item whose run dies before its completion is committed
/// runs again and is charged the attempt, as any item running when its
/// run dies is.
#[test]
fn an_item_that_kills_its_run_every_time_ends_dead() {
    let sb = Sandbox::new();
    let keys = items("p", 20);
    let mut all = keys.clone();
    all.insert(5, "poison".to_string());
    let file = sb.write_items("items.txt", &all);
    let script = r#"echo "$1" >> started
if [ "$1" = poison ]; then sleep 0.5; kill -9 "$PPID"; sleep 5; fi
echo "$1" >> done"#;
    let started_at = Instant::now();
    let mut runs = 0;
    loop {
        runs += 1;
        assert!(runs <= 10, "still not finished after {runs} runs");
        let out = sb
            .ckpt()
            .args(["run", "--job", "J", "--items"])
            .arg(&file)
            // One at a time: an item running beside the poison when the
            // run dies did start, so it is charged an attempt too.
            .args([
                "-j",
                "1",
                "--retries",
                "2",
                "--",
                "sh",
                "-c",
                script,
                "_",
                "{}",
            ])
            .spawn()
            .wait_with_output()
            .unwrap();
        use std::os::unix::process::ExitStatusExt;
        if out.status.signal() != Some(SIGKILL) {
            assert_eq!(
                out.status.code(),
                Some(1),
                "the job ends failed (one dead item): {}",
                String::from_utf8_lossy(&out.stderr)
            );
            break;
        }
    }
    eprintln!("poison: {runs} runs in {:?}", started_at.elapsed());
    let status = sb.status("J");
    assert_eq!(
        crate::util::item_counts(&status),
        (0, 0, 20, 0, 1),
        "dead: {:?}\nstarted: {:?}",
        crate::util::stored_items(&sb, "J")
            .into_iter()
            .filter(|(_, i)| i["status"] == "dead")
            .collect::<Vec<_>>(),
        sb.lines("started")
    );
    let poison_starts = sb
        .lines("started")
        .iter()
        .filter(|l| *l == "poison")
        .count();
    assert!(
        (3..=4).contains(&poison_starts),
        "poison started {poison_starts} times for 3 attempts"
    );
    let done = sb.lines("done");
    assert!(!done.contains(&"poison".to_string()));
}
