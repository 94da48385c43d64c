//! The item metrics a run emits through the `metrics` facade, caught by a
//! recorder local to the test (the library installs none).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ckpt::{Ckpt, NewItem, Outcome, QueueOptions, RetryPolicy, RunOptions, Runner};
use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};

/// Every counter increment and histogram value, by "name{label=value,…}".
#[derive(Default)]
struct Catch {
    counters: Arc<Mutex<BTreeMap<String, u64>>>,
    histograms: Arc<Mutex<BTreeMap<String, Vec<f64>>>>,
}

struct CounterOf(Arc<Mutex<BTreeMap<String, u64>>>, String);
struct HistogramOf(Arc<Mutex<BTreeMap<String, Vec<f64>>>>, String);

impl metrics::CounterFn for CounterOf {
    fn increment(&self, value: u64) {
        *self.0.lock().unwrap().entry(self.1.clone()).or_default() += value;
    }
    fn absolute(&self, value: u64) {
        self.0.lock().unwrap().insert(self.1.clone(), value);
    }
}

impl metrics::HistogramFn for HistogramOf {
    fn record(&self, value: f64) {
        self.0
            .lock()
            .unwrap()
            .entry(self.1.clone())
            .or_default()
            .push(value);
    }
}

fn describe(key: &Key) -> String {
    let labels: Vec<String> = key
        .labels()
        .map(|l| format!("{}={}", l.key(), l.value()))
        .collect();
    format!("{}{{{}}}", key.name(), labels.join(","))
}

impl Recorder for Catch {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        Counter::from_arc(Arc::new(CounterOf(self.counters.clone(), describe(key))))
    }

    fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::noop()
    }

    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::from_arc(Arc::new(HistogramOf(
            self.histograms.clone(),
            describe(key),
        )))
    }
}

#[test]
fn a_run_counts_attempts_and_times_items() {
    let queue = Ckpt::open("memory://")
        .unwrap()
        .queue_with(
            "m",
            QueueOptions {
                lease: Duration::from_secs(30),
                retry: RetryPolicy {
                    max_attempts: 2,
                    base_delay: Duration::from_millis(1),
                    factor: 1.0,
                    max_delay: Duration::from_millis(1),
                    jitter: 0.0,
                },
            },
        )
        .unwrap();
    queue
        .enqueue(["a", "b", "c", "bad"].map(NewItem::key))
        .unwrap();
    let catch = Catch::default();
    // The coordinator, which claims and records outcomes, is this thread.
    let report = metrics::with_local_recorder(&catch, || {
        Runner::new(
            &queue,
            RunOptions {
                workers: 2,
                ..RunOptions::default()
            },
        )
        .run(&|item: &ckpt::ClaimedItem| {
            if item.key == "bad" {
                Outcome::Failed("no".into())
            } else {
                Outcome::Completed(None)
            }
        })
        .unwrap()
    });
    assert_eq!((report.completed, report.failed, report.dead), (3, 2, 1));

    let counters = catch.counters.lock().unwrap().clone();
    assert_eq!(
        counters.get("ckpt_item_attempts_total{job=m}"),
        Some(&5),
        "one per claim: 4 items and the retry of `bad`: {counters:?}"
    );
    let histograms = catch.histograms.lock().unwrap().clone();
    let count = |k: &str| histograms.get(k).map_or(0, Vec::len);
    assert_eq!(
        count("ckpt_item_duration_seconds{job=m,outcome=completed}"),
        3,
        "{histograms:?}"
    );
    assert_eq!(count("ckpt_item_duration_seconds{job=m,outcome=failed}"), 1);
    assert_eq!(count("ckpt_item_duration_seconds{job=m,outcome=dead}"), 1);
    assert_eq!(count("ckpt_item_lead_time_seconds{job=m}"), 3);
    assert!(histograms
        .values()
        .flatten()
        .all(|v| v.is_finite() && *v >= 0.0));

    // Completing through the queue directly records the lead time too.
    queue.enqueue([NewItem::key("direct")]).unwrap();
    let direct = Catch::default();
    metrics::with_local_recorder(&direct, || {
        let item = queue.claim(1).unwrap().pop().unwrap();
        queue.complete(&item, None).unwrap();
    });
    let histograms = direct.histograms.lock().unwrap();
    assert_eq!(
        histograms
            .get("ckpt_item_lead_time_seconds{job=m}")
            .map(Vec::len),
        Some(1)
    );
    assert_eq!(
        direct
            .counters
            .lock()
            .unwrap()
            .get("ckpt_item_attempts_total{job=m}"),
        Some(&1)
    );
}
