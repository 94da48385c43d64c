//! Items: claim indexes, large enqueues, release, the key layout.

use std::collections::BTreeMap;
use std::time::Duration;

use super::*;
use crate::model::{ItemChange, ItemStatus, ItemUpdate};

#[test]
fn finished_items_leave_the_claim_indexes() {
    let Some(mut s) = Scratch::new("indexes") else {
        return;
    };
    let store = s.open("");
    let keys: Vec<String> = (0..300).map(|i| format!("k{i}")).collect();
    let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    enqueue(&store, "j", &refs, T0);
    let lease = T0.plus(Duration::from_secs(10));
    let claimed = store.claim("j", "w", 250, lease, true, T0).unwrap();
    let updates: Vec<ItemUpdate> = claimed
        .iter()
        .enumerate()
        .map(|(i, c)| ItemUpdate {
            lease: c.lease.clone(),
            change: if i < 240 {
                ItemChange::Complete {
                    stats: None,
                    command: None,
                }
            } else {
                ItemChange::Fail {
                    error: "x".into(),
                    retry_at: None,
                    output: None,
                }
            },
        })
        .collect();
    store.update_items(&updates, T0).unwrap();
    let zcard = |s: &mut Scratch, part: &str| -> u64 {
        let key = format!("{}:job:1:{part}", s.prefix);
        s.raw(::redis::cmd("ZCARD").arg(key))
    };
    // Claims read `pending` and `due` only.
    assert_eq!(zcard(&mut s, "pending"), 50);
    assert_eq!(zcard(&mut s, "due"), 0);
    assert_eq!(zcard(&mut s, "completed"), 240);
    assert_eq!(zcard(&mut s, "dead"), 10);
    let counts = store.item_counts("j").unwrap();
    assert_eq!(
        (counts.pending, counts.completed, counts.dead),
        (50, 240, 10)
    );
    // Listing by status reads that status's set, in enqueue order.
    let dead = store.list_items("j", Some(ItemStatus::Dead), 100).unwrap();
    let dead: Vec<&str> = dead.iter().map(|i| i.key.as_str()).collect();
    assert_eq!(dead, refs[240..250]);
    let first = store.list_items("j", None, 3).unwrap();
    assert_eq!(
        first.iter().map(|i| i.key.as_str()).collect::<Vec<_>>(),
        ["k0", "k1", "k2"]
    );
}

#[test]
fn a_large_enqueue_is_one_transaction_over_several_scripts() {
    let Some(_s) = Scratch::new("large") else {
        return;
    };
    let store = _s.open("");
    let n = 2 * ENQUEUE_BATCH + 123;
    // Every key twice, the copies in other batches than the originals.
    let keys: Vec<String> = (0..n).map(|i| format!("k{i}")).collect();
    let mut stream = keys
        .iter()
        .chain(keys.iter().take(ENQUEUE_BATCH))
        .map(|k| Ok(NewItem::key(k.clone())));
    let report = store.enqueue("big", &mut stream, T0).unwrap();
    assert_eq!(
        (report.inserted, report.existing),
        (n as u64, ENQUEUE_BATCH as u64)
    );
    assert_eq!(store.item_counts("big").unwrap().pending, n as u64);
    let first = store.claim("big", "w", 2, T0.plus(Duration::from_secs(10)), true, T0);
    let first: Vec<String> = first.unwrap().into_iter().map(|c| c.key).collect();
    assert_eq!(first, ["k0", "k1"], "enqueue order across scripts");
    let mut again = keys.iter().map(|k| Ok(NewItem::key(k.clone())));
    let report = store.enqueue("big", &mut again, T0).unwrap();
    assert_eq!((report.inserted, report.existing), (0, n as u64));
}

#[test]
fn a_released_item_is_pending_again_with_its_attempt_taken_back() {
    let Some(s) = Scratch::new("release") else {
        return;
    };
    let store = s.open("");
    enqueue(&store, "j", &["a", "b"], T0);
    let lease = T0.plus(Duration::from_secs(10));
    let held = store.claim("j", "w", 2, lease, true, T0).unwrap();
    let a = &held[0];
    let cursor = ItemChange::Cursor {
        cursor: serde_json::json!({"line": 7}),
        lease_until: lease,
    };
    let release = |lease: &crate::model::ItemLease| ItemUpdate {
        lease: lease.clone(),
        change: ItemChange::Release,
    };
    let results = store
        .update_items(
            &[
                ItemUpdate {
                    lease: a.lease.clone(),
                    change: cursor,
                },
                release(&a.lease),
            ],
            T0,
        )
        .unwrap();
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    let rec = &store.list_items("j", None, 1).unwrap()[0];
    assert_eq!((rec.status, rec.attempts), (ItemStatus::Pending, 0));
    assert_eq!(rec.cursor, Some(serde_json::json!({"line": 7})));
    assert_eq!(store.next_ready_at("j").unwrap(), Some(Timestamp(0)));
    // A second release with the same lease is fenced.
    let again = store.update_items(&[release(&a.lease)], T0).unwrap();
    assert!(again[0].as_ref().unwrap_err().is_fenced());
    let retaken = store.claim("j", "w", 5, lease, true, T0).unwrap();
    assert_eq!(retaken.len(), 1, "b is still held");
    assert_eq!((retaken[0].key.as_str(), retaken[0].attempt), ("a", 1));
    assert_eq!(retaken[0].cursor, Some(serde_json::json!({"line": 7})));
    assert!(
        retaken[0].lease.token > a.lease.token,
        "the token never repeats"
    );
    assert_eq!(retaken[0].enqueued_at, T0);
}

#[test]
fn key_layout_is_as_documented() {
    let Some(mut s) = Scratch::new("layout") else {
        return;
    };
    let store = s.open("");
    enqueue(&store, "job one", &["a", "b", "c", "d", "e"], T0);
    let lease = T0.plus(Duration::from_secs(10));
    let c = store.claim("job one", "w", 4, lease, true, T0).unwrap();
    let change = |i: usize, change| ItemUpdate {
        lease: c[i].lease.clone(),
        change,
    };
    store
        .update_items(
            &[
                change(
                    0,
                    ItemChange::Complete {
                        stats: None,
                        command: None,
                    },
                ),
                change(
                    1,
                    ItemChange::Fail {
                        error: "x".into(),
                        retry_at: Some(lease),
                        output: None,
                    },
                ),
                change(
                    2,
                    ItemChange::Fail {
                        error: "x".into(),
                        retry_at: None,
                        output: None,
                    },
                ),
            ],
            T0,
        )
        .unwrap();
    store
        .put_checkpoint(
            "job one",
            Some(&crate::Checkpoint::new(serde_json::json!(1), 1)),
            &crate::model::Expect::Anything,
            10,
            None,
            T0,
        )
        .unwrap();
    let mut types = BTreeMap::new();
    for k in s.keys() {
        let t: String = s.raw(::redis::cmd("TYPE").arg(format!("{}:{k}", s.prefix)));
        types.insert(k, t);
    }
    let expected: BTreeMap<String, String> = [
        ("meta", "hash"),
        ("jobseq", "string"),
        ("jobs", "zset"),
        ("name:job one", "string"),
        ("job:1", "hash"),
        ("job:1:history", "list"),
        ("job:1:keys", "hash"),
        ("job:1:items", "hash"),
        ("job:1:pending", "zset"),
        ("job:1:running", "zset"),
        ("job:1:completed", "zset"),
        ("job:1:failed", "zset"),
        ("job:1:dead", "zset"),
        ("job:1:due", "zset"),
    ]
    .into_iter()
    .map(|(k, t)| (k.to_string(), t.to_string()))
    .collect();
    assert_eq!(types, expected);
    // Ids carry the job's number; records are JSON with string values.
    assert_eq!(c[0].lease.id, 1 << 32 | 1);
    let raw: String = s.raw(
        ::redis::cmd("HGET")
            .arg(format!("{}:job:1:items", s.prefix))
            .arg(1),
    );
    let record: serde_json::Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(record["status"], "completed");
    assert_eq!(record["claims"], "1");
}

#[test]
fn a_job_counter_behind_the_jobs_is_refused_not_reused() {
    let Some(mut s) = Scratch::new("jobseq") else {
        return;
    };
    let store = s.open("");
    enqueue(&store, "first", &["a"], T0);
    let before = store.get_job("first").unwrap().unwrap();
    // An operator (or eviction) loses the counter.
    let _: u64 = s.raw(::redis::cmd("DEL").arg(format!("{}:jobseq", s.prefix)));
    let err = store.ensure_job("second", T0).unwrap_err();
    assert!(err.to_string().contains("damaged"), "{err}");
    assert!(store.get_job("second").unwrap().is_none());
    // The live job is untouched.
    assert_eq!(store.get_job("first").unwrap().unwrap(), before);
    assert_eq!(store.item_counts("first").unwrap().pending, 1);
}

/// A store of schema 1 (before commands) is brought to schema 2 on open:
/// its completed items count as by an unknown command, and a deleted job
/// takes its commands with it.
#[test]
fn a_schema_1_store_gains_commands() {
    use crate::model::CompletedBy;
    use crate::store::CommandStore;
    let Some(mut sc) = Scratch::new("schema1") else {
        return;
    };
    let store = sc.open("");
    enqueue(&store, "old", &["a", "b"], T0);
    complete_all(&store, "old", T0);
    let meta = format!("{}:meta", sc.prefix);
    let _: () = sc.raw(::redis::cmd("HSET").arg(&meta).arg("schema_version").arg(1));
    drop(store);
    let store = RedisStore::open(&sc.url(""), OpenMode::MustExist).unwrap();
    let version: String = sc.raw(::redis::cmd("HGET").arg(&meta).arg("schema_version"));
    assert_eq!(version, RedisStore::SCHEMA_VERSION.to_string());
    assert_eq!(store.commands("old").unwrap().unknown, 2);
    let cmd = store.record_command("old", "echo {}", T0).unwrap();
    assert_eq!(cmd.id, 1);
    assert_eq!(
        store
            .redrive_completed("old", CompletedBy::Unknown, T0)
            .unwrap(),
        2
    );
    complete_all(&store, "old", T0);
    assert!(sc.keys().iter().any(|k| k.ends_with(":commands")));
    assert_eq!(
        store.finish_if_done("old", T0).unwrap(),
        Some(crate::model::JobStatus::Completed)
    );
    assert!(store.delete_job("old", T0).unwrap());
    let left: Vec<String> = sc
        .keys()
        .into_iter()
        .filter(|k| !GLOBAL_KEYS.contains(&k.as_str()))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// Every key under the prefix with its `DUMP`: equal snapshots, equal data.
fn snapshot(s: &mut Scratch) -> BTreeMap<String, Vec<u8>> {
    let keys = s.keys();
    keys.into_iter()
        .map(|k| {
            let dump: Vec<u8> = s.raw(::redis::cmd("DUMP").arg(format!("{}:{k}", s.prefix)));
            (k, dump)
        })
        .collect()
}

/// Redis does not roll back a script that stops half-way, so a record
/// written behind ckpt's back must stop a script before its first write:
/// one clear error, and the store as it was (no item running under a lease
/// that nobody was given).
#[test]
fn a_malformed_item_record_stops_a_script_before_it_writes() {
    let Some(mut s) = Scratch::new("malformed") else {
        return;
    };
    let store = s.open("");
    enqueue(&store, "j", &["a", "b", "c"], T0);
    let records = format!("{}:job:1:items", s.prefix);
    let good: String = s.raw(::redis::cmd("HGET").arg(&records).arg(2));
    let lease = T0.plus(Duration::from_secs(10));
    let malformed = [
        "{not json",
        "[1, 2]",
        r#"{"key":"b","status":"pending"}"#,
        r#"{"key":"b","status":"lost","attempts":"0","claims":"0"}"#,
        r#"{"key":"b","status":"pending","attempts":"x","claims":"0"}"#,
    ];
    for bad in malformed {
        let _: () = s.raw(::redis::cmd("HSET").arg(&records).arg(2).arg(bad));
        let before = snapshot(&mut s);
        let e = store.claim("j", "w", 3, lease, true, T0).unwrap_err();
        assert!(e.to_string().contains("malformed"), "{bad}: {e}");
        assert_eq!(before, snapshot(&mut s), "{bad}: the failed claim wrote");
    }

    let _: () = s.raw(::redis::cmd("HSET").arg(&records).arg(2).arg(&good));
    let claimed = store.claim("j", "w", 3, lease, true, T0).unwrap();
    assert_eq!(claimed.len(), 3);
    let running: String = s.raw(::redis::cmd("HGET").arg(&records).arg(2));
    let _: () = s.raw(::redis::cmd("HSET").arg(&records).arg(2).arg(malformed[0]));
    let before = snapshot(&mut s);
    let complete_all: Vec<ItemUpdate> = claimed
        .iter()
        .map(|c| ItemUpdate {
            lease: c.lease.clone(),
            change: ItemChange::Complete {
                stats: None,
                command: None,
            },
        })
        .collect();
    let e = store.update_items(&complete_all, T0).unwrap_err();
    assert!(e.to_string().contains("malformed"), "{e}");
    assert_eq!(before, snapshot(&mut s), "the failed update wrote");
    // Reclaiming a dead worker's items reads the same records.
    let e = store.expire_owner("j", "w", T0).unwrap_err();
    assert!(e.to_string().contains("malformed"), "{e}");
    assert_eq!(before, snapshot(&mut s), "the failed expiry wrote");

    // Repaired, the same updates apply.
    let _: () = s.raw(::redis::cmd("HSET").arg(&records).arg(2).arg(&running));
    for r in store.update_items(&complete_all, T0).unwrap() {
        r.unwrap();
    }
    assert_eq!(store.item_counts("j").unwrap().completed, 3);
}
