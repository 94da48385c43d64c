//! Retention: which keys carry a TTL, and a job after its keys expired.

use std::time::Duration;
use std::time::Instant;

use super::*;
use crate::model::{ItemChange, ItemUpdate, JobStatus};
use crate::store::CommandStore;

#[test]
fn completed_job_keys_expire_and_running_ones_never_do() {
    let Some(mut s) = Scratch::new("ttl") else {
        return;
    };
    let store = s.open("&ttl=1h");
    let hour = 3_600_000;
    // Job 1, driven by items: one of each status but dead.
    enqueue(&store, "items", &["a", "b", "c", "d"], T0);
    let lease = T0.plus(Duration::from_secs(10));
    let claimed = store.claim("items", "w", 3, lease, true, T0).unwrap();
    let update = |i: usize, change| ItemUpdate {
        lease: claimed[i].lease.clone(),
        change,
    };
    let results = store
        .update_items(
            &[
                update(
                    0,
                    ItemChange::Complete {
                        stats: None,
                        command: None,
                    },
                ),
                update(
                    1,
                    ItemChange::Fail {
                        error: "e".into(),
                        retry_at: Some(lease),
                        output: None,
                    },
                ),
            ],
            T0,
        )
        .unwrap();
    assert!(results.iter().all(Result::is_ok));
    // Job 2, a cursor job with history.
    let (cursor_lease, _) = store.acquire_job("cursor", "w", lease, None, T0).unwrap();
    let cp = crate::Checkpoint::new(serde_json::json!(1), 1);
    store
        .save_checkpoint(&cursor_lease, &cp, 10, lease, T0)
        .unwrap();

    let ttls = s.pttls();
    assert!(ttls.len() > 10, "{ttls:?}");
    assert!(
        ttls.values().all(|&t| t == -1),
        "running jobs never expire: {ttls:?}"
    );

    complete_all(&store, "items", lease);
    assert_eq!(
        store.finish_if_done("items", lease).unwrap(),
        Some(JobStatus::Completed)
    );
    store
        .finish_job(&cursor_lease, JobStatus::Completed, None, lease)
        .unwrap();
    let ttls = s.pttls();
    for g in GLOBAL_KEYS {
        assert_eq!(ttls[g], -1, "{g} belongs to the store: {ttls:?}");
    }
    let items_keys = job_ttls(&ttls, "items", 1);
    let cursor_keys = job_ttls(&ttls, "cursor", 2);
    assert_eq!(
        items_keys.len() + cursor_keys.len() + GLOBAL_KEYS.len(),
        ttls.len(),
        "every key is a job's or the store's: {ttls:?}"
    );
    for (k, t) in items_keys.iter().chain(&cursor_keys) {
        assert!(*t > 0 && *t <= hour, "{k} of a completed job has PTTL {t}");
    }
    for k in [
        "name:items",
        "job:1",
        "job:1:keys",
        "job:1:items",
        "job:1:completed",
    ] {
        assert!(items_keys.contains_key(k), "{k}: {items_keys:?}");
    }
    assert!(cursor_keys.contains_key("job:2:history"), "{cursor_keys:?}");

    // A new item reopens the job: its keys are kept again, the other
    // job's are not.
    assert_eq!(enqueue(&store, "items", &["e"], lease), 1);
    let ttls = s.pttls();
    assert!(
        job_ttls(&ttls, "items", 1).values().all(|&t| t == -1),
        "{ttls:?}"
    );
    assert!(job_ttls(&ttls, "cursor", 2).values().all(|&t| t > 0));

    // A held completed job does not expire under its holder; released, it does.
    let (held, record) = store
        .acquire_job("cursor", "w2", lease, None, lease)
        .unwrap();
    assert_eq!(record.status, JobStatus::Completed);
    assert!(job_ttls(&s.pttls(), "cursor", 2).values().all(|&t| t == -1));
    store.release_job(&held, lease).unwrap();
    assert!(job_ttls(&s.pttls(), "cursor", 2).values().all(|&t| t > 0));
}

#[test]
fn a_completed_job_with_unfinished_items_does_not_expire_until_they_finish() {
    let Some(mut s) = Scratch::new("unfinished") else {
        return;
    };
    let store = s.open("&ttl=1h");
    let lease = T0.plus(Duration::from_secs(10));
    // A job completed by its lease holder while an item is still pending.
    let (held, _) = store.acquire_job("j", "w", lease, None, T0).unwrap();
    enqueue(&store, "j", &["a"], T0);
    store
        .finish_job(&held, JobStatus::Completed, None, T0)
        .unwrap();
    assert_eq!(
        store.get_job("j").unwrap().unwrap().status,
        JobStatus::Completed
    );
    assert!(s.pttls().values().all(|&t| t == -1), "{:?}", s.pttls());
    let item = store
        .claim("j", "w", 1, lease, true, T0)
        .unwrap()
        .pop()
        .unwrap();
    assert!(
        s.pttls().values().all(|&t| t == -1),
        "running: {:?}",
        s.pttls()
    );
    store
        .update_items(
            &[ItemUpdate {
                lease: item.lease,
                change: ItemChange::Complete {
                    stats: None,
                    command: None,
                },
            }],
            T0,
        )
        .unwrap()[0]
        .as_ref()
        .unwrap();
    let ttls = job_ttls(&s.pttls(), "j", 1);
    assert!(ttls.len() >= 5 && ttls.values().all(|&t| t > 0), "{ttls:?}");
}

#[test]
fn ttl_off_keeps_completed_jobs() {
    let Some(mut s) = Scratch::new("ttl_off") else {
        return;
    };
    let store = s.open("&ttl=off");
    assert_eq!(store.ttl(), None);
    enqueue(&store, "j", &["a"], T0);
    complete_all(&store, "j", T0);
    assert_eq!(
        store.finish_if_done("j", T0).unwrap(),
        Some(JobStatus::Completed)
    );
    let ttls = s.pttls();
    assert!(
        !ttls.is_empty() && ttls.values().all(|&t| t == -1),
        "{ttls:?}"
    );
}

#[test]
fn an_expired_job_is_gone_and_starts_afresh() {
    let Some(mut s) = Scratch::new("expired") else {
        return;
    };
    let store = s.open("&ttl=200ms");
    enqueue(&store, "j", &["a"], T0);
    let lease = T0.plus(Duration::from_secs(10));
    let old = store
        .claim("j", "w", 1, lease, true, T0)
        .unwrap()
        .pop()
        .unwrap();
    store
        .update_items(
            &[ItemUpdate {
                lease: old.lease.clone(),
                change: ItemChange::Heartbeat { lease_until: lease },
            }],
            T0,
        )
        .unwrap()[0]
        .as_ref()
        .unwrap();
    // The old lease's holder completes; the job completes and expires.
    store
        .update_items(
            &[ItemUpdate {
                lease: old.lease.clone(),
                change: ItemChange::Complete {
                    stats: None,
                    command: None,
                },
            }],
            T0,
        )
        .unwrap()[0]
        .as_ref()
        .unwrap();
    assert_eq!(
        store.finish_if_done("j", T0).unwrap(),
        Some(JobStatus::Completed)
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.keys().len() > GLOBAL_KEYS.len() {
        assert!(Instant::now() < deadline, "keys left: {:?}", s.keys());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(store.get_job("j").unwrap(), None);
    assert!(store.list_jobs().unwrap().is_empty());
    assert_eq!(store.item_counts("j").unwrap().total(), 0);
    // The same key again is a new item of a new job, with a new id.
    assert_eq!(enqueue(&store, "j", &["a"], T0), 1);
    let new = store
        .claim("j", "w", 1, lease, true, T0)
        .unwrap()
        .pop()
        .unwrap();
    assert_ne!(new.lease.id, old.lease.id);
    let stale = store
        .update_items(
            &[ItemUpdate {
                lease: old.lease,
                change: ItemChange::Complete {
                    stats: None,
                    command: None,
                },
            }],
            T0,
        )
        .unwrap();
    assert!(stale[0].as_ref().unwrap_err().is_fenced());
    assert_eq!(store.item_counts("j").unwrap().running, 1);
}

#[test]
fn operations_that_change_nothing_do_not_restart_the_countdown() {
    let Some(mut s) = Scratch::new("noop-ttl") else {
        return;
    };
    let store = s.open("&ttl=1h");
    enqueue(&store, "done", &["a", "b"], T0);
    let lease = T0.plus(Duration::from_secs(10));
    store.claim("done", "w", 2, lease, true, T0).unwrap();
    complete_all(&store, "done", lease);
    assert_eq!(
        store.finish_if_done("done", lease).unwrap(),
        Some(JobStatus::Completed)
    );
    // Real time has to pass for a PTTL to go down, so that a restarted
    // countdown shows as a higher one.
    std::thread::sleep(Duration::from_millis(200));
    let before = *job_ttls(&s.pttls(), "done", 1).get("job:1").unwrap();
    assert!(before > 0 && before < 3_600_000 - 100, "{before}");
    // A poller's empty claim, and what a cron rerun of `ckpt run` does:
    // record its command (a new key: it joins the countdown), enqueue the
    // known keys, find nothing to claim, and finish the job again.
    assert!(store
        .claim("done", "w2", 10, lease, true, lease)
        .unwrap()
        .is_empty());
    let rerun = lease.plus(Duration::from_secs(60));
    store.record_command("done", "true", rerun).unwrap();
    assert_eq!(enqueue(&store, "done", &["a", "b"], rerun), 0);
    assert_eq!(
        store.finish_if_done("done", rerun).unwrap(),
        Some(JobStatus::Completed)
    );
    let job = store.get_job("done").unwrap().unwrap();
    assert_eq!(
        (job.completed_at, job.updated_at),
        (Some(lease), lease),
        "a rerun that found nothing to do changed the job"
    );
    let after = job_ttls(&s.pttls(), "done", 1);
    assert!(after.contains_key("job:1:commands"), "{after:?}");
    for (k, t) in &after {
        assert!(
            *t > 0 && *t <= before,
            "{k}: PTTL {t} was restarted (before {before})"
        );
    }
}
