//! Crash detection through the store: a worker whose session ended is
//! taken over after the session grace, wherever it ran; one whose session
//! was only replaced keeps its leases.

use std::sync::Arc;
use std::time::Duration;

use ckpt::{CheckpointPolicy, Ckpt, JobOptions, ManualClock, NewItem};

use crate::conformance::{queue_options, T0};

fn worker_id(name: &str) -> ckpt::worker::WorkerId {
    ckpt::worker::WorkerId {
        host: "elsewhere".into(),
        pid: 1,
        start: 1,
        nonce: name.into(),
    }
}

/// The test server's URL, the fixture's schema, and a URL of that schema
/// (for more store handles on it).
#[cfg(feature = "postgres")]
fn schema_url(fixture: &crate::Fixture) -> (String, String, String) {
    let schema = fixture
        .store
        .describe()
        .rsplit("schema ")
        .next()
        .unwrap()
        .trim_end_matches(')')
        .to_string();
    let base = std::env::var("CKPT_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string());
    let sep = if base.contains('?') { '&' } else { '?' };
    let url = format!("{base}{sep}schema={schema}");
    (base, schema, url)
}

/// Workers on store handles of their own over the fixture's schema, on a
/// manual clock (or the real one).
#[cfg(feature = "postgres")]
struct PgWorkers {
    url: String,
    clock: Option<ManualClock>,
}

#[cfg(feature = "postgres")]
impl PgWorkers {
    /// Workers on a manual clock at `T0`, and that clock.
    fn on_a_manual_clock(url: String) -> (PgWorkers, ManualClock) {
        let clock = ManualClock::new(T0);
        let workers = PgWorkers {
            url,
            clock: Some(clock.clone()),
        };
        (workers, clock)
    }

    fn on(&self, name: &str) -> Ckpt {
        use ckpt::store::{OpenMode, PgStore};
        let store = PgStore::open(&self.url, OpenMode::MustExist).unwrap();
        let ckpt = Ckpt::new(Arc::new(store)).with_worker(worker_id(name));
        match &self.clock {
            Some(clock) => ckpt.with_clock(Arc::new(clock.clone())),
            None => ckpt,
        }
    }
}

/// Item leases that never lapse during a test.
#[cfg(feature = "postgres")]
fn hour_lease() -> ckpt::QueueOptions {
    ckpt::QueueOptions {
        lease: Duration::from_secs(3600),
        ..queue_options(3)
    }
}

fn options() -> JobOptions {
    JobOptions {
        lease: Duration::from_secs(10),
        policy: CheckpointPolicy::Always,
    }
}

/// PostgreSQL knows when a worker's session ended (its liveness lock is
/// released), wherever that worker ran: its items and job are taken over
/// after the session grace instead of when their (long) leases expire.
#[cfg(feature = "postgres")]
#[test]
fn postgres_takes_over_an_ended_session_after_its_grace() {
    let Some(fixture) = crate::postgres() else {
        return;
    };
    let (_, _, url) = schema_url(&fixture);
    let (workers, clock) = PgWorkers::on_a_manual_clock(url);
    let long = hour_lease();
    let on = |name: &str| workers.on(name);
    let crashed = on("crashed");
    let alive = on("alive");
    let rescuer = on("rescuer");
    let q = crashed.queue_with("sessions", long.clone()).unwrap();
    q.enqueue((0..4).map(|i| NewItem::key(format!("k{i}"))))
        .unwrap();
    assert_eq!(q.claim(3).unwrap().len(), 3);
    let mut job = crashed
        .job_with(
            "sessions-job",
            JobOptions {
                lease: Duration::from_secs(3600),
                ..options()
            },
        )
        .unwrap();
    job.save(&1, 1).unwrap();
    let live_item = alive
        .queue_with("sessions", long.clone())
        .unwrap()
        .claim(1)
        .unwrap();
    assert_eq!(live_item.len(), 1);
    drop((q, job, crashed)); // the process "dies": its connections close
    let r = rescuer.queue_with("sessions", long).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut freed = 0;
    while freed == 0 && std::time::Instant::now() < deadline {
        freed = r.reclaim_dead_owners().unwrap();
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(freed, 3, "only the ended session's items are shortened");
    assert!(
        r.claim(10).unwrap().is_empty(),
        "not before the grace: the owner may still be stopping its work"
    );
    let busy = rescuer
        .job_with(
            "sessions-job",
            JobOptions {
                lease: Duration::from_secs(3600),
                ..options()
            },
        )
        .unwrap_err();
    assert!(busy.is_busy(), "{busy}");
    assert!(busy.to_string().contains("expires in 5.0s"), "{busy}");
    // The grace counts from the shortening, which happened a moment after
    // the (manual) `now` it was given.
    clock.advance(
        rescuer.store().owner_sessions().unwrap().session_grace() + Duration::from_secs(1),
    );
    let taken = r.claim(10).unwrap();
    assert_eq!(taken.len(), 3);
    assert!(taken.iter().all(|i| i
        .taken_over_from
        .as_deref()
        .is_some_and(|o| o.ends_with(":crashed"))));
    let resumed = rescuer
        .job_with(
            "sessions-job",
            JobOptions {
                lease: Duration::from_secs(3600),
                ..options()
            },
        )
        .expect("the job of an ended session is taken over after the grace");
    assert_eq!(resumed.resume_cursor::<u64>().unwrap(), Some(1));
    // The live session's lease is respected.
    assert!(on("other")
        .job_with("sessions-job", options())
        .unwrap_err()
        .is_busy());
}

/// Many jobs saving at once through one store share transactions (group
/// commit); each still gets its own result, and a fenced save is refused
/// alone while the others in its batch commit.
#[test]
fn grouped_saves_keep_their_own_results() {
    let Some(fixture) = crate::postgres() else {
        return;
    };
    let clock = ManualClock::new(T0);
    let shared = fixture.store.clone();
    let on = |name: &str| {
        Ckpt::new(shared.clone())
            .with_clock(Arc::new(clock.clone()))
            .with_worker(worker_id(name))
    };
    // A zombie: its job was taken over by another worker.
    let mut zombie = on("zombie").job_with("grouped-zombie", options()).unwrap();
    clock.advance(Duration::from_secs(10));
    let _live = on("live").job_with("grouped-zombie", options()).unwrap();
    let fenced = std::thread::scope(|s| {
        let savers: Vec<_> = (0..16)
            .map(|j| {
                let ckpt = on(&format!("w{j}"));
                s.spawn(move || {
                    let mut job = ckpt.job_with(&format!("grouped-{j}"), options()).unwrap();
                    for i in 0..20u64 {
                        job.save(&i, i).unwrap();
                    }
                    job.complete().unwrap();
                })
            })
            .collect();
        let zombie_saves: Vec<bool> = (0..20)
            .map(|i: u64| zombie.save(&(1000 + i), i).unwrap_err().is_fenced())
            .collect();
        for t in savers {
            t.join().unwrap();
        }
        zombie_saves
    });
    assert!(fenced.iter().all(|&f| f), "every zombie save refused");
    let reader = on("reader");
    for j in 0..16 {
        let rec = reader.get_job(&format!("grouped-{j}")).unwrap().unwrap();
        assert_eq!(rec.checkpoint.unwrap().cursor, serde_json::json!(19));
        assert_eq!((rec.saves, rec.history_len), (20, 20));
    }
    let rec = reader.get_job("grouped-zombie").unwrap().unwrap();
    assert!(rec.checkpoint.is_none(), "no zombie save landed");
}

/// An idle runner wakes on LISTEN/NOTIFY when items arrive, long before its
/// next poll.
#[test]
fn idle_runner_wakes_when_items_arrive() {
    use ckpt::{ItemStatus, Outcome, RunOptions, Runner};
    let Some(fixture) = crate::postgres() else {
        return;
    };
    // One item failed with its retry an hour away keeps the runner waiting;
    // with a 10-minute lease, its polls are 30 s apart.
    let slow = ckpt::QueueOptions {
        lease: Duration::from_secs(600),
        retry: ckpt::RetryPolicy {
            base_delay: Duration::from_secs(3600),
            ..ckpt::RetryPolicy::default()
        },
    };
    let setup = Ckpt::new((fixture.another)());
    let q = setup.queue_with("wake", slow.clone()).unwrap();
    q.enqueue([NewItem::key("later")]).unwrap();
    let item = q.claim(1).unwrap().pop().unwrap();
    q.fail(&item, "not yet").unwrap();
    let runner_store = (fixture.another)();
    let started = std::time::Instant::now();
    let report = std::thread::scope(|s| {
        let runner = s.spawn(|| {
            let q = Ckpt::new(runner_store).queue_with("wake", slow).unwrap();
            let options = RunOptions {
                idle_poll: Duration::from_secs(30),
                ..RunOptions::default()
            };
            Runner::new(&q, options).run(&|_: &ckpt::ClaimedItem| Outcome::Completed(None))
        });
        std::thread::sleep(Duration::from_millis(300)); // the runner is idle by now
        q.enqueue([NewItem::key("now")]).unwrap();
        // Wait for "now" to complete, then release the waiting item.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while q.counts().unwrap().completed < 1 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        // Checked after the join: a failing assertion here would leave
        // the runner waiting for the hour-away item.
        let woke_in_time = q.counts().unwrap().completed == 1;
        q.redrive(ItemStatus::Failed, None).unwrap();
        (woke_in_time, runner.join().unwrap().unwrap())
    });
    let (woke_in_time, report) = report;
    assert!(woke_in_time, "the new item ran before the next poll");
    assert_eq!(report.counts.completed, 2);
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "woken by notifications, not by 30 s polls: {:?}",
        started.elapsed()
    );
}

/// A panic inside the caller's part of a shared transaction rolls it back:
/// the pooled connection is not left inside a transaction for the next user.
#[test]
fn panic_in_a_caller_transaction_leaves_the_pool_clean() {
    use ckpt::store::{OpenMode, PgStore};
    let Some(fixture) = crate::postgres() else {
        return;
    };
    let schema = fixture.store.describe();
    let schema = schema
        .rsplit("schema ")
        .next()
        .unwrap()
        .trim_end_matches(')');
    let base = std::env::var("CKPT_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string());
    let sep = if base.contains('?') { '&' } else { '?' };
    // One connection in the pool: the next call must get the same one.
    let store = Arc::new(
        PgStore::open(
            &format!("{base}{sep}schema={schema}&pool_size=1"),
            OpenMode::MustExist,
        )
        .unwrap(),
    );
    let ckpt = Ckpt::new(store.clone());
    let mut job = ckpt.job_with("panicky", options()).unwrap();
    let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _ = job.checkpoint_with(
            &*store,
            ckpt::Checkpoint::new(serde_json::json!(1), 1),
            |tx| {
                tx.execute("SELECT 1", &[])?;
                panic!("caller bug");
                #[allow(unreachable_code)]
                Ok(())
            },
        );
    }));
    assert!(panicked.is_err());
    // Autocommit work on the same (only) connection is committed and seen
    // from another connection.
    job.save(&2, 2).unwrap();
    let other = Ckpt::new(fixture.store.clone());
    let rec = other.get_job("panicky").unwrap().unwrap();
    assert_eq!(rec.checkpoint.unwrap().cursor, serde_json::json!(2));
}

/// The PostgreSQL schema version of this build.
const SCHEMA_LATEST: &str = "7";

/// A store written by schema 2 (status index, history keyed by sequence)
/// is upgraded on open: the status index goes, the dead-items index is
/// built (outside the migration's transaction), the history becomes a ring,
/// and nothing of the data changes.
#[cfg(feature = "postgres")]
#[test]
fn postgres_upgrades_a_schema_2_store_in_place() {
    use ckpt::store::{OpenMode, PgStore};
    let Some(fixture) = crate::postgres() else {
        return;
    };
    let (base, schema, url) = schema_url(&fixture);
    let clock = ManualClock::new(T0);
    let c = Ckpt::new(fixture.store.clone())
        .with_clock(Arc::new(clock.clone()))
        .with_worker(worker_id("old"));
    let mut job = c.job_with("import", options()).unwrap();
    for i in 1..=5u64 {
        job.save(&i, i * 10).unwrap();
    }
    job.release().unwrap();
    let q = c.queue_with("files", queue_options(1)).unwrap();
    q.enqueue([NewItem::key("a"), NewItem::key("b")]).unwrap();
    let bad = q.claim(1).unwrap().pop().unwrap();
    q.fail(&bad, "boom").unwrap();

    // Back to schema 2, as an older ckpt left it.
    let mut sql = postgres::Client::connect(&base, postgres::NoTls).unwrap();
    sql.batch_execute(&format!(
        "SET search_path = {schema};
         ALTER TABLE history DROP CONSTRAINT history_pkey;
         ALTER TABLE history DROP COLUMN slot;
         ALTER TABLE history ADD PRIMARY KEY (job_id, seq);
         DROP INDEX items_dead;
         CREATE INDEX items_status ON items (job_id, status);
         ALTER TABLE jobs DROP COLUMN items_total;
         DROP TABLE commands;
         ALTER TABLE items DROP COLUMN command_id;
         ALTER TABLE items DROP COLUMN last_output;
         UPDATE ckpt_meta SET value = '2' WHERE key = 'schema_version';"
    ))
    .unwrap();

    // A read-only open upgrades it.
    let store = Arc::new(PgStore::open(&url, OpenMode::MustExist).unwrap());
    let indexes: Vec<String> = sql
        .query(
            "SELECT indexname FROM pg_indexes WHERE schemaname = $1 AND tablename = 'items'
             ORDER BY 1",
            &[&schema],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(indexes.contains(&"items_dead".to_string()), "{indexes:?}");
    assert!(
        !indexes.contains(&"items_status".to_string()),
        "{indexes:?}"
    );
    let valid: bool = sql
        .query_one(
            "SELECT bool_and(i.indisvalid) FROM pg_index i
             JOIN pg_class c ON c.oid = i.indexrelid
             JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = $1",
            &[&schema],
        )
        .unwrap()
        .get(0);
    assert!(valid, "every index is valid");
    let version: String = sql
        .query_one(
            &format!("SELECT value FROM {schema}.ckpt_meta WHERE key = 'schema_version'"),
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(version, SCHEMA_LATEST);

    // The data is as it was, and the ring goes on from the old history.
    let c = Ckpt::new(store.clone())
        .with_clock(Arc::new(clock.clone()))
        .with_worker(worker_id("new"));
    let seqs = |c: &Ckpt| -> Vec<u64> {
        c.store()
            .history("import", 100)
            .unwrap()
            .iter()
            .map(|h| h.seq)
            .collect()
    };
    assert_eq!(seqs(&c), [5, 4, 3, 2, 1]);
    let mut job = c.job_with("import", options()).unwrap();
    assert_eq!(job.resume_cursor::<u64>().unwrap(), Some(5));
    for i in 6..=8u64 {
        job.save(&i, i * 10).unwrap();
    }
    assert_eq!(seqs(&c), [8, 7, 6, 5, 4, 3, 2, 1]);
    let q = c.queue_with("files", queue_options(1)).unwrap();
    let counts = q.counts().unwrap();
    assert_eq!((counts.pending, counts.dead), (1, 1));
    let dead = c
        .store()
        .list_items("files", Some(ckpt::ItemStatus::Dead), 10)
        .unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].key, "a");
    assert_eq!(
        (
            dead[0].last_error.as_deref(),
            dead[0].last_output.as_deref()
        ),
        (Some("boom"), None),
        "failed before outputs were kept"
    );
    // Counts come from the total the upgrade computed and enqueue keeps.
    q.enqueue([NewItem::key("b"), NewItem::key("c")]).unwrap();
    for item in q.claim(5).unwrap() {
        q.complete(&item, None).unwrap();
    }
    let counts = q.counts().unwrap();
    assert_eq!(
        (
            counts.pending,
            counts.completed,
            counts.dead,
            counts.total()
        ),
        (0, 2, 1, 3)
    );
    // Commands work on the upgraded store; untagged completions are unknown.
    assert_eq!(q.record_command("cmd").unwrap().id, 1);
    assert_eq!(q.commands().unwrap().unknown, 2);
}

/// A worker whose liveness connection is terminated (the process lives on)
/// re-establishes its session under a new key and renews its leases under
/// it: a rescuer that saw the old session end can shorten only what was not
/// yet renewed, and the renewal wins.
#[cfg(feature = "postgres")]
#[test]
fn postgres_keeps_the_leases_of_a_replaced_session() {
    let Some(fixture) = crate::postgres() else {
        return;
    };
    let (base, schema, url) = schema_url(&fixture);
    let (workers, clock) = PgWorkers::on_a_manual_clock(url);
    let long = hour_lease();
    let on = |name: &str| workers.on(name);
    let owner = on("owner");
    let rescuer = on("rescuer");
    let q = owner.queue_with("replaced", long.clone()).unwrap();
    q.enqueue((0..2).map(|i| NewItem::key(format!("k{i}"))))
        .unwrap();
    let held = q.claim(2).unwrap();
    assert_eq!(held.len(), 2);
    let sessions = owner.store().owner_sessions().unwrap();
    let first = sessions.current_session().unwrap();
    // Terminate the session that holds the owner's liveness lock.
    let terminated = terminate_liveness_backend(&base, &schema, "replaced");
    assert_eq!(terminated, 1, "one liveness session to terminate");
    // The rescuer sees the session end and shortens both leases.
    let r = rescuer.queue_with("replaced", long).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut shortened = 0;
    while shortened == 0 && std::time::Instant::now() < deadline {
        shortened = r.reclaim_dead_owners().unwrap();
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(shortened, 2);
    // The owner is re-established under a new session...
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while sessions.current_session().is_none_or(|s| s == first) {
        assert!(std::time::Instant::now() < deadline, "no new session");
        std::thread::sleep(Duration::from_millis(10));
    }
    let second = sessions.current_session().unwrap();
    assert!(second > first);
    assert!(sessions.session_confirmed(second).is_some());
    // ...renews under it, and the shortening is undone.
    assert!(q.heartbeat(&held).unwrap().iter().all(|r| r.is_ok()));
    // Seen again from the rescuer: the new session is alive, nothing to do.
    assert_eq!(r.reclaim_dead_owners().unwrap(), 0);
    clock.advance(Duration::from_secs(60));
    assert!(
        r.claim(10).unwrap().is_empty(),
        "a live owner's renewed leases are not taken"
    );
    assert!(q.heartbeat(&held).unwrap().iter().all(|r| r.is_ok()));
}

/// Terminates (with `psql`, as an operator would) the backend holding the
/// liveness lock written on the items of `job` in `schema`; returns how many
/// were terminated.
#[cfg(feature = "postgres")]
fn terminate_liveness_backend(base: &str, schema: &str, job: &str) -> u64 {
    terminate_backends_of_keys(
        base,
        &format!(
            "SELECT owner_key FROM {schema}.items
             WHERE job_id = (SELECT id FROM {schema}.jobs WHERE name = '{job}')"
        ),
    )
}

/// Terminates the backends holding the liveness locks whose keys `keys`
/// (a query) selects; returns how many.
#[cfg(feature = "postgres")]
fn terminate_backends_of_keys(base: &str, keys: &str) -> u64 {
    let sql = format!(
        "SELECT count(pg_terminate_backend(l.pid)) FROM pg_locks l
         WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
           AND ((l.classid::BIGINT << 32) | l.objid::BIGINT) IN ({keys})"
    );
    let out = std::process::Command::new("psql")
        .args([base, "-Atc", &sql])
        .output()
        .expect("psql runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// On a real clock, a worker that finds the job's holder's session ended
/// waits out the session grace and takes the job over (a worker restarted
/// on another host after a crash), instead of failing with `Busy` until
/// the hour-long lease expires; and not before the grace.
#[cfg(feature = "postgres")]
#[test]
fn postgres_job_of_an_ended_session_is_taken_over_after_the_grace() {
    let Some(fixture) = crate::postgres() else {
        return;
    };
    let (_, _, url) = schema_url(&fixture);
    let workers = PgWorkers { url, clock: None };
    let on = |name: &str| workers.on(name);
    let hour = JobOptions {
        lease: Duration::from_secs(3600),
        ..options()
    };
    let crashed = on("crashed");
    let mut job = crashed.job_with("after-grace", hour.clone()).unwrap();
    job.save(&7, 7).unwrap();
    let died = std::time::Instant::now();
    drop((job, crashed)); // its session ends within a ping
    let rescuer = on("rescuer");
    let resumed = loop {
        match rescuer.job_with("after-grace", hour.clone()) {
            Ok(job) => break job,
            // Its session may not have ended yet.
            Err(e) if e.is_busy() && died.elapsed() < Duration::from_secs(20) => {
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => panic!("not taken over within 20 s: {e}"),
        }
    };
    let grace = rescuer.store().owner_sessions().unwrap().session_grace();
    assert!(
        died.elapsed() >= grace,
        "taken over {:?} after the holder died, before the {grace:?} grace",
        died.elapsed()
    );
    assert_eq!(resumed.resume_cursor::<u64>().unwrap(), Some(7));
}

/// A live holder whose lease is no longer than the session grace is not
/// waited for as if its session had ended: another worker gets `Busy` at
/// once, not after the lease (which the holder renews anyway).
#[cfg(feature = "postgres")]
#[test]
fn postgres_busy_at_once_for_a_live_holder_with_a_short_lease() {
    let Some(fixture) = crate::postgres() else {
        return;
    };
    let (_, _, url) = schema_url(&fixture);
    let workers = PgWorkers { url, clock: None };
    let holder = workers.on("holder");
    let short = JobOptions {
        lease: Duration::from_secs(3),
        ..options()
    };
    let grace = holder.store().owner_sessions().unwrap().session_grace();
    assert!(
        short.lease <= grace,
        "the case under test: a lease within the grace"
    );
    let job = holder.job_with("short", short.clone()).unwrap();
    let other = workers.on("other");
    for _ in 0..3 {
        let asked = std::time::Instant::now();
        match other.job_with("short", short.clone()) {
            Err(e) if e.is_busy() => {}
            other => panic!("expected Busy, got {:?}", other.map(|_| "a job")),
        }
        assert!(
            asked.elapsed() < Duration::from_secs(1),
            "Busy after {:?}: waited as for an ended session",
            asked.elapsed()
        );
    }
    drop(job);
}

/// A cursor loop whose liveness connection is cut moves its job's lease to
/// its new session at its next `checkpoint()`, so a worker that saw the old
/// session end cannot take the job over from the live loop.
#[cfg(feature = "postgres")]
#[test]
fn postgres_job_holder_moves_its_lease_to_its_new_session() {
    let Some(fixture) = crate::postgres() else {
        return;
    };
    let (base, schema, url) = schema_url(&fixture);
    let workers = PgWorkers { url, clock: None };
    let on = |name: &str| workers.on(name);
    let long = JobOptions {
        lease: Duration::from_secs(30),
        ..options()
    };
    let holder = on("holder");
    let mut job = holder.job_with("moved", long.clone()).unwrap();
    job.save(&1, 1).unwrap();
    let sessions = holder.store().owner_sessions().unwrap();
    let first = sessions.current_session().unwrap();
    let killed = terminate_backends_of_keys(
        &base,
        &format!("SELECT owner_key FROM {schema}.jobs WHERE name = 'moved'"),
    );
    assert_eq!(killed, 1);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while sessions.current_session().is_none_or(|s| s == first) {
        assert!(std::time::Instant::now() < deadline, "no new session");
        std::thread::sleep(Duration::from_millis(10));
    }
    // The loop goes on: its next checkpoint moves the lease.
    job.save(&2, 2).unwrap();
    let err = on("rescuer").job_with("moved", long).unwrap_err();
    assert!(err.is_busy(), "{err}");
    job.save(&3, 3).unwrap();
}

/// A lease left under an ended session that lapsed is one its owner no
/// longer holds (it would have renewed it under its new session): the write
/// that ended it was lost, as an asynchronous failover loses writes. The
/// owner takes it back itself, as no one else may; a lapsed lease it did
/// renew under its current session it never re-claims.
#[cfg(feature = "postgres")]
#[test]
fn postgres_owner_takes_back_its_lapsed_lease_of_an_ended_session() {
    let Some(fixture) = crate::postgres() else {
        return;
    };
    let (base, schema, url) = schema_url(&fixture);
    let (workers, clock) = PgWorkers::on_a_manual_clock(url);
    let owner = workers.on("owner");
    let q = owner.queue_with("forgotten", hour_lease()).unwrap();
    q.enqueue((0..2).map(|i| NewItem::key(format!("k{i}"))))
        .unwrap();
    let held = q.claim(2).unwrap();
    assert_eq!(held.len(), 2);
    let sessions = owner.store().owner_sessions().unwrap();
    let first = sessions.current_session().unwrap();
    assert_eq!(terminate_liveness_backend(&base, &schema, "forgotten"), 1);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while sessions.current_session().is_none_or(|s| s == first) {
        assert!(std::time::Instant::now() < deadline, "no new session");
        std::thread::sleep(Duration::from_millis(10));
    }
    // The owner renews the first item under its new session; the second
    // it no longer holds (the store lost the completion it recorded).
    let (kept, forgotten) = (&held[0], &held[1]);
    assert!(q.heartbeat(std::slice::from_ref(kept)).unwrap()[0].is_ok());
    assert!(q.claim(10).unwrap().is_empty(), "both leases are live");
    clock.advance(Duration::from_secs(2 * 3600));
    let again = q.claim(10).unwrap();
    let keys: Vec<&str> = again.iter().map(|i| i.key.as_str()).collect();
    assert_eq!(
        keys,
        [forgotten.key.as_str()],
        "only the lease of the ended session"
    );
    assert!(again[0].lease.token > forgotten.lease.token);
    let old = q.heartbeat(std::slice::from_ref(forgotten)).unwrap();
    assert!(old[0].as_ref().is_err_and(|e| e.is_fenced()), "{old:?}");
}
