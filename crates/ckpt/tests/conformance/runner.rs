//! Conformance: the Runner over each store: every item done, retries, and a
//! store outage ridden out.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ckpt::{Ckpt, ItemStatus, JobStatus, NewItem, Outcome, RunOptions, Runner};
use serde_json::json;

use super::queue_options;
use crate::{every_store, Fixture};
use rstest_reuse::apply;

fn keys(n: usize) -> Vec<NewItem> {
    (0..n)
        .map(|i| NewItem::key(format!("item-{i:04}")))
        .collect()
}

#[apply(every_store)]
fn runner_completes_every_item_with_retries(store: Option<Fixture>) {
    let Some(f) = &store else { return };
    let ckpt = Ckpt::new((f.another)());
    let mut options = queue_options(3);
    options.retry.base_delay = Duration::from_millis(5);
    let q = ckpt.queue_with("runner", options).unwrap();
    q.enqueue(keys(120)).unwrap();
    let runs = Mutex::new(HashMap::<String, u32>::new());
    let handler = |item: &ckpt::ClaimedItem| {
        *runs.lock().unwrap().entry(item.key.clone()).or_default() += 1;
        if item.key.ends_with('7') && item.attempt == 1 {
            Outcome::Failed("transient".into())
        } else if item.key == "item-0099" {
            panic!("handler bug")
        } else {
            Outcome::Completed(Some(json!({"records_total": 1})))
        }
    };
    let report = Runner::new(
        &q,
        RunOptions {
            workers: 4,
            prefetch: 4,
            idle_poll: Duration::from_millis(20),
            ..RunOptions::default()
        },
    )
    .run(&handler)
    .unwrap();
    let runs = runs.into_inner().unwrap();
    assert_eq!(runs.len(), 120);
    assert_eq!(runs["item-0007"], 2, "failed once, retried once");
    assert_eq!(runs["item-0001"], 1);
    assert_eq!(
        runs["item-0099"], 3,
        "a panicking handler is a failed attempt"
    );
    assert_eq!(report.completed, 119);
    assert_eq!(report.dead, 1);
    assert_eq!(report.counts.completed, 119);
    assert_eq!(report.status, Some(JobStatus::Failed));
    let dead = q.items(Some(ItemStatus::Dead), 10).unwrap();
    assert!(dead[0]
        .last_error
        .as_deref()
        .unwrap()
        .contains("handler bug"));
    let done = &q.items(Some(ItemStatus::Completed), 1).unwrap()[0];
    let stats = done.stats.as_ref().unwrap();
    assert_eq!(stats["records_total"], 1);
    assert!(
        stats["duration_ms"].is_u64(),
        "the runner adds the duration"
    );
}

#[apply(every_store)]
fn runner_rides_out_a_store_outage(store: Option<Fixture>) {
    let Some(f) = &store else { return };
    use ckpt::store::{Fault, FaultStore, Op, Store};
    // The first commit of outcomes and the second claim fail as if the
    // server were restarting: the run retries and loses nothing.
    let flaky: Arc<dyn Store> = Arc::new(
        FaultStore::new((f.another)())
            .inject(Op::UpdateItems, 1, Fault::Fail)
            .inject(Op::Claim, 2, Fault::Fail),
    );
    let q = Ckpt::new(flaky)
        .queue_with("outage", queue_options(3))
        .unwrap();
    q.enqueue(keys(40)).unwrap();
    let runs = Mutex::new(HashMap::<String, u32>::new());
    let handler = |item: &ckpt::ClaimedItem| {
        *runs.lock().unwrap().entry(item.key.clone()).or_default() += 1;
        Outcome::Completed(None)
    };
    let options = RunOptions {
        workers: 2,
        prefetch: 2,
        idle_poll: Duration::from_millis(20),
        ..RunOptions::default()
    };
    let report = Runner::new(&q, options).run(&handler).unwrap();
    assert_eq!(report.counts.completed, 40);
    assert_eq!(report.status, Some(JobStatus::Completed));
    let runs = runs.into_inner().unwrap();
    assert_eq!(runs.len(), 40);
    assert!(
        runs.values().all(|&n| n == 1),
        "nothing ran twice: {runs:?}"
    );
}

#[apply(every_store)]
fn a_fatal_outcome_makes_the_item_dead_at_once(store: Option<Fixture>) {
    let Some(f) = &store else { return };
    let ckpt = Ckpt::new((f.another)());
    let mut options = queue_options(5);
    options.retry.base_delay = Duration::from_millis(5);
    let q = ckpt.queue_with("fatal", options).unwrap();
    q.enqueue(keys(10)).unwrap();
    let runs = Mutex::new(HashMap::<String, u32>::new());
    let handler = |item: &ckpt::ClaimedItem| {
        *runs.lock().unwrap().entry(item.key.clone()).or_default() += 1;
        match item.key.as_str() {
            "item-0003" => Outcome::Fatal("exit status 3".into()),
            // A fatal outcome after a retry keeps the attempts used.
            "item-0005" if item.attempt == 1 => Outcome::Failed("transient".into()),
            "item-0005" => Outcome::Fatal("bad input".into()),
            _ => Outcome::Completed(None),
        }
    };
    let run = RunOptions {
        workers: 2,
        prefetch: 2,
        idle_poll: Duration::from_millis(20),
        ..RunOptions::default()
    };
    let report = Runner::new(&q, run).run(&handler).unwrap();
    let runs = runs.into_inner().unwrap();
    assert_eq!(
        runs["item-0003"], 1,
        "not retried, though 4 attempts were left"
    );
    assert_eq!(runs["item-0005"], 2);
    assert_eq!((report.completed, report.dead, report.failed), (8, 2, 3));
    assert_eq!(report.status, Some(JobStatus::Failed));
    let dead: HashMap<String, (u32, Option<String>)> = q
        .items(Some(ItemStatus::Dead), 10)
        .unwrap()
        .into_iter()
        .map(|r| (r.key, (r.attempts, r.last_error)))
        .collect();
    assert_eq!(dead["item-0003"], (1, Some("exit status 3".into())));
    assert_eq!(dead["item-0005"], (2, Some("bad input".into())));
}

/// A panic outside the handler (a bug), on the coordinator's thread or on a
/// worker's, must end the run, not leave it waiting forever for threads
/// that wait for it.
#[apply(every_store)]
fn a_panic_outside_the_handler_ends_the_run(store: Option<Fixture>) {
    let Some(f) = &store else { return };
    use ckpt::store::{Fault, FaultStore, Op, Store};
    for on_worker in [false, true] {
        let job = format!("panics-{on_worker}");
        let setup = Ckpt::new((f.another)())
            .queue_with(&job, queue_options(3))
            .unwrap();
        setup.enqueue(keys(10)).unwrap();
        if on_worker {
            // Items claimed before: a worker records their start itself,
            // in the run's first item update.
            for item in setup.claim(10).unwrap() {
                setup.release(&item).unwrap();
            }
        }
        // Else the first item update is the coordinator's record of outcomes.
        let buggy: Arc<dyn Store> =
            Arc::new(FaultStore::new((f.another)()).inject(Op::UpdateItems, 1, Fault::Panic));
        let q = Ckpt::new(buggy).queue_with(&job, queue_options(3)).unwrap();
        let (ended, outcome) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let options = RunOptions {
                    workers: 2,
                    idle_poll: Duration::from_millis(20),
                    ..RunOptions::default()
                };
                Runner::new(&q, options).run(&|_: &ckpt::ClaimedItem| Outcome::Completed(None))
            }));
            let _ = ended.send(run.is_err());
        });
        // Generous: the run ends at once; only a hang takes this long.
        let panicked = outcome
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("the run hung after a panic (on a worker: {on_worker})"));
        assert!(
            panicked,
            "the panic was swallowed (on a worker: {on_worker})"
        );
    }
}

/// Items this worker claimed outside the run (by hand, or by an earlier
/// run that ended with an error) are never claimed by it again: once their
/// leases lapse, the run must end rather than wait for them forever.
#[apply(every_store)]
fn a_run_ends_beside_items_its_worker_holds_outside_it(store: Option<Fixture>) {
    let Some(f) = &store else { return };
    let clock = ckpt::ManualClock::new(super::T0);
    let q = super::worker(f, &clock, "w")
        .queue_with("held", queue_options(3))
        .unwrap();
    q.enqueue(keys(3)).unwrap();
    let held = q.claim(1).unwrap().pop().unwrap();
    clock.advance(Duration::from_secs(3600));
    let (completed, counts) = run_in_background(q)
        .recv_timeout(Duration::from_secs(60))
        .expect("the run waited forever for items its own worker holds");
    assert_eq!(
        (completed, counts.running),
        (2, 1),
        "{} still held",
        held.key
    );
}

/// Runs `q` to its end on a thread of its own (completing every item); its
/// completed count and the job's counts then arrive on the channel.
fn run_in_background(q: ckpt::Queue) -> std::sync::mpsc::Receiver<(u64, ckpt::model::ItemCounts)> {
    let (ended, outcome) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let options = RunOptions {
            idle_poll: Duration::from_millis(20),
            ..RunOptions::default()
        };
        let report = Runner::new(&q, options)
            .run(&|_: &ckpt::ClaimedItem| Outcome::Completed(None))
            .unwrap();
        let _ = ended.send((report.completed, q.counts().unwrap()));
    });
    outcome
}

/// Beside items its worker holds outside it, a run still waits for work
/// that comes due (a retry, another worker's lease): it ends only when
/// those items are all that is left.
#[apply(every_store)]
fn a_run_beside_own_held_items_waits_for_work_that_comes_due(store: Option<Fixture>) {
    let Some(f) = &store else { return };
    let clock = ckpt::ManualClock::new(super::T0);
    let q = super::worker(f, &clock, "w")
        .queue_with("held-retry", queue_options(3))
        .unwrap();
    q.enqueue(keys(2)).unwrap();
    let _held = q.claim(1).unwrap().pop().unwrap();
    clock.advance(Duration::from_secs(3600));
    let retried = q.claim(1).unwrap().pop().unwrap();
    q.fail(&retried, "once").unwrap();
    let outcome = run_in_background(q);
    // Past the second after which a run beside only own-held items ends.
    assert!(
        outcome.recv_timeout(Duration::from_millis(2500)).is_err(),
        "the run ended while a retry was still to come"
    );
    clock.advance(Duration::from_secs(3600));
    let (completed, counts) = outcome
        .recv_timeout(Duration::from_secs(60))
        .expect("the run did not end once only its own held item was left");
    assert_eq!((completed, counts.completed, counts.running), (1, 1, 1));
}

/// A handler that takes at most 2 items a batch (`batch_fits`), as
/// `ckpt run` cuts a batch too long for one command line: the runner hands
/// it no more, and the items cut off are not recorded as started until
/// they run (were this process to die, their attempts would be counted
/// for work that never ran).
#[apply(every_store)]
fn a_batch_cut_by_the_handler_starts_only_what_it_runs(store: Option<Fixture>) {
    let Some(f) = &store else { return };
    let q = Ckpt::new((f.another)())
        .queue_with("cut", queue_options(3))
        .unwrap();
    q.enqueue(keys(10)).unwrap();
    struct Pairs<'a> {
        queue: &'a ckpt::Queue,
        batches: Mutex<Vec<Vec<String>>>,
        started_beside: Mutex<Vec<String>>,
    }
    impl ckpt::Handler for Pairs<'_> {
        fn handle(&self, item: &ckpt::ClaimedItem) -> Outcome {
            self.batches.lock().unwrap().push(vec![item.key.clone()]);
            Outcome::Completed(None)
        }
        fn handle_batch(
            &self,
            items: &[ckpt::ClaimedItem],
            _: &[ckpt::Fence],
            _: &ckpt::EarlyOutcomes<'_>,
        ) -> Vec<Outcome> {
            let keys: Vec<String> = items.iter().map(|i| i.key.clone()).collect();
            let first = self.batches.lock().unwrap().is_empty();
            if first {
                // Once this batch's starts are recorded (by the next
                // round), no other item may show one.
                let started = || -> Vec<String> {
                    let running = self.queue.items(Some(ItemStatus::Running), 100).unwrap();
                    running
                        .into_iter()
                        .filter(|i| i.started_at.is_some())
                        .map(|i| i.key)
                        .collect()
                };
                let deadline = std::time::Instant::now() + Duration::from_secs(10);
                while !keys.iter().all(|k| started().contains(k)) {
                    assert!(
                        std::time::Instant::now() < deadline,
                        "starts never recorded"
                    );
                    std::thread::sleep(Duration::from_millis(10));
                }
                let beside = started().into_iter().filter(|k| !keys.contains(k));
                self.started_beside.lock().unwrap().extend(beside);
            }
            self.batches.lock().unwrap().push(keys);
            vec![Outcome::Completed(None); items.len()]
        }
        fn batch_fits(&self, items: &[ckpt::ClaimedItem]) -> usize {
            items.len().min(2)
        }
    }
    let handler = Pairs {
        queue: &q,
        batches: Mutex::new(Vec::new()),
        started_beside: Mutex::new(Vec::new()),
    };
    let options = RunOptions {
        workers: 1,
        prefetch: 6,
        batch: 6,
        idle_poll: Duration::from_millis(20),
        ..RunOptions::default()
    };
    let report = Runner::new(&q, options).run(&handler).unwrap();
    assert_eq!(report.counts.completed, 10);
    let batches = handler.batches.into_inner().unwrap();
    assert!(batches.iter().all(|b| b.len() <= 2), "{batches:?}");
    let ran: Vec<String> = batches.concat();
    let expected: Vec<String> = (0..10).map(|i| format!("item-{i:04}")).collect();
    assert_eq!(ran, expected, "each once, in order");
    let beside = handler.started_beside.into_inner().unwrap();
    assert!(beside.is_empty(), "recorded as started unrun: {beside:?}");
}

/// Items that take a while are not hoarded: a run keeps a batch or two
/// claimed ahead of its workers, not its whole prefetch, so that another
/// run on the same job gets its share (see `ckpt::policy::prefetch`).
#[apply(every_store)]
fn slow_items_are_not_claimed_far_ahead(store: Option<Fixture>) {
    let Some(f) = &store else { return };
    let ckpt = Ckpt::new((f.another)());
    let q = ckpt.queue_with("slow", queue_options(3)).unwrap();
    q.enqueue(keys(8)).unwrap();
    // The most items the store showed held (running) at any start.
    let most = Mutex::new(0u64);
    let handler = |_: &ckpt::ClaimedItem| {
        let held = q.counts().map(|c| c.running).unwrap_or(0);
        let mut most = most.lock().unwrap();
        *most = (*most).max(held);
        drop(most);
        std::thread::sleep(Duration::from_millis(300));
        Outcome::Completed(None)
    };
    let options = RunOptions {
        workers: 2,
        prefetch: 12,
        idle_poll: Duration::from_millis(20),
        ..RunOptions::default()
    };
    let report = Runner::new(&q, options).run(&handler).unwrap();
    assert_eq!(report.completed, 8);
    let most = most.into_inner().unwrap();
    // 2 running and at most 3 ahead (a batch; 3 even if the store's rounds
    // are slow: see policy::prefetch::ROUNDS_AT_MOST); the prefetch would
    // hold all 8.
    assert!((2..=5).contains(&most), "held {most} at once");
}

/// An outcome a batch handler hands over early is recorded before the
/// batch's call returns, and is the item's: a second report of the same
/// item, one out of the batch, and the outcome returned for it are ignored.
#[apply(every_store)]
fn early_outcomes_of_a_batch_are_recorded_before_it_returns(store: Option<Fixture>) {
    let Some(f) = &store else { return };
    let q = Ckpt::new((f.another)())
        .queue_with("early", queue_options(1))
        .unwrap();
    q.enqueue(keys(3)).unwrap();
    struct Early<'a> {
        queue: &'a ckpt::Queue,
        seen_completed: Mutex<Option<u64>>,
    }
    impl ckpt::Handler for Early<'_> {
        fn handle(&self, _: &ckpt::ClaimedItem) -> Outcome {
            Outcome::Failed("not a batch".into())
        }
        fn handle_batch(
            &self,
            items: &[ckpt::ClaimedItem],
            _: &[ckpt::Fence],
            early: &ckpt::EarlyOutcomes<'_>,
        ) -> Vec<Outcome> {
            early.report(0, Outcome::Completed(None));
            early.report(0, Outcome::Failed("a second report".into()));
            early.report(items.len(), Outcome::Failed("out of the batch".into()));
            // The coordinator records it in its next round.
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            let completed = loop {
                let completed = self.queue.counts().unwrap().completed;
                if completed > 0 || std::time::Instant::now() > deadline {
                    break completed;
                }
                std::thread::sleep(Duration::from_millis(10));
            };
            *self.seen_completed.lock().unwrap() = Some(completed);
            let mut outcomes = vec![Outcome::Completed(None); items.len()];
            outcomes[0] = Outcome::Failed("returned, and ignored".into());
            outcomes
        }
    }
    let handler = Early {
        queue: &q,
        seen_completed: Mutex::new(None),
    };
    let options = RunOptions {
        workers: 1,
        prefetch: 3,
        batch: 3,
        idle_poll: Duration::from_millis(20),
        ..RunOptions::default()
    };
    let report = Runner::new(&q, options).run(&handler).unwrap();
    assert_eq!(
        *handler.seen_completed.lock().unwrap(),
        Some(1),
        "recorded while the batch ran"
    );
    assert_eq!((report.completed, report.failed), (3, 0), "{report:?}");
    assert_eq!(q.counts().unwrap().completed, 3);
}
