//! PostgreSQL scenarios: a run's connections terminated one by one while
//! another run waits; the server ending idle sessions; the server restarted
//! (fast and immediate) mid-run. A dropped connection is not a dead
//! process: the live run keeps its items (or, if it cannot prove its lease
//! in time, stops them before anyone else may start them).

use std::time::{Duration, Instant};

use super::{recorder_run, ChaosStore, Ledger};
use crate::pg_restart::PrivateCluster;
use crate::util::{items, wait_until, Sandbox};

/// Runs `sql` with psql against `url`; returns its output lines.
fn psql(url: &str, sql: &str) -> Vec<String> {
    let out = std::process::Command::new("psql")
        .args([url, "-v", "ON_ERROR_STOP=1", "-Atc", sql])
        .output()
        .expect("psql runs");
    assert!(
        out.status.success(),
        "psql {sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

fn with_param(url: &str, param: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{param}")
}

/// Run A holds every item; run B waits for work. Every 300 ms one of A's
/// connections (found by its application_name) is terminated, in turn,
/// for 6 s. B may take an item only once A has stopped it.
#[test]
fn terminating_each_connection_of_a_run_does_not_run_items_twice_at_once() {
    let Some(store) = ChaosStore::postgres("terminate") else {
        return;
    };
    let ChaosStore::Postgres(pg) = &store else {
        unreachable!()
    };
    let sb = Sandbox::new();
    let keys = items("t", 6);
    let file = sb.write_items("items.txt", &keys);
    let ledger = sb.join("ledger");
    let url_a = with_param(&store.url(), "application_name=chaos_a");
    let a = sb
        .ckpt_bare()
        .args(["--store", &url_a, "run", "--job", "chaos", "--items"])
        .arg(&file)
        .args(["-j", "6", "--retries", "10", "--"])
        .args(["sh", "-c", super::RECORDER, "_", "{}"])
        .env("LEDGER", &ledger)
        .env("TICKS", "160")
        .env("HOST_TAG", "A")
        .start();
    wait_until(Duration::from_secs(30), "run A to start every item", || {
        Ledger::read(&ledger).by_key.len() == keys.len()
    });
    let b = recorder_run(&sb, &store, &file, "30s", 6, 160, "B").start();
    // Ten terminations, 300 ms apart; on a loaded machine that may take
    // longer than the first 6 s, so count them rather than the time.
    let until = Instant::now() + Duration::from_secs(20);
    let mut terminated = 0;
    while terminated < 10 && Instant::now() < until {
        let pids = psql(
            &pg.base,
            "SELECT pid FROM pg_stat_activity WHERE application_name = 'chaos_a' ORDER BY pid",
        );
        if let Some(pid) = pids.get(terminated % pids.len().max(1)) {
            psql(&pg.base, &format!("SELECT pg_terminate_backend({pid})"));
            terminated += 1;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(terminated >= 10, "only {terminated} connections terminated");
    let out_a = a.wait(Duration::from_secs(180));
    let out_b = b.wait(Duration::from_secs(180));
    assert_eq!(out_a.code, 0, "run A: {}", out_a.stderr);
    assert_eq!(out_b.code, 0, "run B: {}", out_b.stderr);
    // Six items in flight at the faults.
    Ledger::read(&ledger).assert_sound("pg_terminate_backend", &keys, keys.len());
}

/// The database ends every session idle for 1 s (`idle_session_timeout`,
/// SQLSTATE 57P05): pooled connections die between uses. Both runs ride it
/// out as an outage, and no item runs twice at once.
#[test]
fn idle_session_timeout_is_an_outage_not_a_failure() {
    let Some(store) = ChaosStore::postgres("idle") else {
        return;
    };
    let ChaosStore::Postgres(pg) = &store else {
        unreachable!()
    };
    // A database of this test's own: the setting applies to all of it.
    let db = format!("ckpt_idle_{}", std::process::id());
    let admin = pg.base.clone();
    psql(&admin, &format!("DROP DATABASE IF EXISTS {db}"));
    psql(&admin, &format!("CREATE DATABASE {db}"));
    psql(
        &admin,
        &format!("ALTER DATABASE {db} SET idle_session_timeout = '1s'"),
    );
    struct DropDb(String, String);
    impl Drop for DropDb {
        fn drop(&mut self) {
            let _ = std::process::Command::new("psql")
                .args([
                    &self.0,
                    "-c",
                    &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.1),
                ])
                .output();
        }
    }
    let _guard = DropDb(admin.clone(), db.clone());
    let base = {
        let (head, _) = admin.rsplit_once('/').expect("a database in the URL");
        format!("{head}/{db}")
    };
    let sb = Sandbox::new();
    let keys = items("i", 12);
    let file = sb.write_items("items.txt", &keys);
    let ledger = sb.join("ledger");
    let run = |host: &str| {
        sb.ckpt_bare()
            .args(["--store", &base, "run", "--job", "chaos", "--items"])
            .arg(&file)
            .args(["--lease", "10s", "-j", "2", "--retries", "10", "--"])
            .args(["sh", "-c", super::RECORDER, "_", "{}"])
            .env("LEDGER", &ledger)
            .env("TICKS", "30")
            .env("HOST_TAG", host)
            .start()
    };
    let a = run("A");
    let b = run("B");
    let out_a = a.wait(Duration::from_secs(180));
    let out_b = b.wait(Duration::from_secs(180));
    assert_eq!(out_a.code, 0, "run A: {}", out_a.stderr);
    assert_eq!(out_b.code, 0, "run B: {}", out_b.stderr);
    Ledger::read(&ledger).assert_sound("idle_session_timeout", &keys, 4);
}

/// The server restarts mid-run (`-m fast`: sessions told to end;
/// `-m immediate`: the server dies without a word), staying down 3 s, while
/// a second run waits: nothing is lost, nothing runs twice at once.
fn restart_mid_run(mode: &str) {
    let Some(cluster) = PrivateCluster::start() else {
        return;
    };
    let sb = Sandbox::new();
    let keys = items("r", 8);
    let file = sb.write_items("items.txt", &keys);
    let ledger = sb.join("ledger");
    let run = |host: &str| {
        sb.ckpt_bare()
            .args([
                "--store",
                &cluster.url(),
                "run",
                "--job",
                "chaos",
                "--items",
            ])
            .arg(&file)
            .args(["-j", "4", "--retries", "10", "--"])
            .args(["sh", "-c", super::RECORDER, "_", "{}"])
            .env("LEDGER", &ledger)
            .env("TICKS", "60")
            .env("HOST_TAG", host)
            .start()
    };
    let a = run("A");
    wait_until(Duration::from_secs(30), "run A to start four items", || {
        Ledger::read(&ledger).by_key.len() >= 4
    });
    let b = run("B");
    std::thread::sleep(Duration::from_millis(500));
    cluster.pg_ctl_stop(mode);
    std::thread::sleep(Duration::from_secs(3));
    cluster.pg_ctl_start();
    let out_a = a.wait(Duration::from_secs(180));
    let out_b = b.wait(Duration::from_secs(180));
    assert_eq!(out_a.code, 0, "run A: {}", out_a.stderr);
    assert_eq!(out_b.code, 0, "run B: {}", out_b.stderr);
    // Four items were running in A at the restart (and up to four in B).
    Ledger::read(&ledger).assert_sound(&format!("restart -m {mode}"), &keys, 8);
}

#[test]
fn a_fast_restart_mid_run() {
    restart_mid_run("fast");
}

#[test]
fn an_immediate_restart_mid_run() {
    restart_mid_run("immediate");
}
