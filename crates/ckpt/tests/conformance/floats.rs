//! Conformance: numbers come back as they went in. A state of running
//! totals must resume with exactly the totals that match its cursor, so a
//! float read back must be the same float, to the last bit, on every store.

use ckpt::{Checkpoint, ItemStatus, NewItem};
use serde_json::{json, Value};

use super::queue_options;
use crate::{every_store, Fixture};
use rstest_reuse::apply;

/// Floats whose shortest decimal form needs all 17 digits, extremes and
/// subnormals: a parser that is not correctly rounded misreads some.
fn hard_floats() -> Vec<f64> {
    let mut v = vec![
        0.000_216_599_397_130_613_38,
        0.1,
        1.0 / 3.0,
        123_456_789.123_456_78,
        -2.5e-8,
        1e-300,
        5e-324,
        f64::MAX,
        f64::MIN_POSITIVE,
        2f64.powi(70) + 2f64.powi(18),
        // Whole floats that serde_json writes with an exponent and that fit
        // in a u64: PostgreSQL's jsonb made them integers.
        1e16,
        2f64.powi(63),
        1e19,
        -1e17,
        2f64.powi(64) - 2048.0,
    ];
    // A fixed pseudo-random spread, the same on every run.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..200 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.push(f64::from_bits((x >> 12) | 0x3f00_0000_0000_0000) * 7.0 - 3.0);
    }
    v
}

fn same_bits(what: &str, got: &Value, want: &[f64]) {
    let got: Vec<u64> = got
        .as_array()
        .unwrap_or_else(|| panic!("{what}: not an array: {got}"))
        .iter()
        .map(|n| {
            // A float, not an integer of the same (or a near) value.
            assert!(n.is_f64(), "{what}: {n} came back as an integer");
            n.as_f64().unwrap().to_bits()
        })
        .collect();
    let want: Vec<u64> = want.iter().map(|f| f.to_bits()).collect();
    let differ = got.iter().zip(&want).filter(|(a, b)| a != b).count();
    assert_eq!(
        differ,
        0,
        "{what}: {differ} of {} floats changed",
        want.len()
    );
}

#[apply(every_store)]
fn floats_come_back_bit_for_bit(store: Option<Fixture>) {
    let Some(f) = &store else { return };
    let ckpt = ckpt::Ckpt::new((f.another)());
    let floats = hard_floats();
    let cp = Checkpoint {
        cursor: json!(floats),
        items_processed: 1,
        stage: None,
        state: Some(json!({ "totals": floats })),
    };
    ckpt.set_checkpoint("floats", &cp).unwrap();
    let stored = ckpt.get_job("floats").unwrap().unwrap().checkpoint.unwrap();
    same_bits("cursor", &stored.cursor, &floats);
    same_bits("state", &stored.state.unwrap()["totals"], &floats);
    let history = ckpt.store().history("floats", 1).unwrap();
    same_bits("history", &history[0].cursor, &floats);
    // Saved by the lease holder.
    let mut job = ckpt.job("held").unwrap();
    job.checkpoint(cp.clone()).unwrap();
    job.flush().unwrap();
    drop(job);
    let stored = ckpt.get_job("held").unwrap().unwrap().checkpoint.unwrap();
    same_bits("held cursor", &stored.cursor, &floats);
    same_bits("held state", &stored.state.unwrap()["totals"], &floats);

    let q = ckpt.queue_with("floats", queue_options(2)).unwrap();
    q.enqueue([NewItem {
        key: "k".into(),
        payload: Some(json!(floats)),
    }])
    .unwrap();
    let item = q.claim(1).unwrap().pop().unwrap();
    same_bits("payload", item.payload.as_ref().unwrap(), &floats);
    q.save_cursor(&item, json!(floats)).unwrap();
    let running = q.items(Some(ItemStatus::Running), 1).unwrap();
    same_bits("item cursor", running[0].cursor.as_ref().unwrap(), &floats);
    q.complete(&item, Some(json!({ "sum": floats }))).unwrap();
    let done = q.items(Some(ItemStatus::Completed), 1).unwrap();
    same_bits("stats", &done[0].stats.as_ref().unwrap()["sum"], &floats);
}

/// `items_processed` is a `u64`: every value comes back as saved, past
/// `i64::MAX` too, in the job's record and in its history.
#[apply(every_store)]
fn items_processed_comes_back_whole(store: Option<Fixture>) {
    let Some(f) = &store else { return };
    let ckpt = ckpt::Ckpt::new((f.another)());
    for n in [
        0,
        i64::MAX as u64,
        i64::MAX as u64 + 1,
        10_000_000_000_000_000_000,
        u64::MAX,
    ] {
        let cp = Checkpoint {
            cursor: json!(1),
            items_processed: n,
            stage: None,
            state: None,
        };
        ckpt.set_checkpoint("many", &cp).unwrap();
        let stored = ckpt.get_job("many").unwrap().unwrap().checkpoint.unwrap();
        assert_eq!(stored.items_processed, n, "the job's record");
        let history = ckpt.store().history("many", 1).unwrap();
        assert_eq!(history[0].items_processed, n, "its history");
    }
}
