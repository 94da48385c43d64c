//! Conformance: which command did it (the job's commands, the command
//! that completed each item, re-driving the items of a command).

use std::time::Duration;

use ckpt::model::{CompletedBy, JobCommands};
use ckpt::{Error, ItemStatus, JobStatus, ManualClock, NewItem, Queue};

use super::{queue_options, worker, T0};
use crate::{every_store, Fixture};
use rstest_reuse::apply;

/// Completes `n` claimed items through `q`.
fn complete(q: &Queue, n: usize) {
    let items = q.claim(n).unwrap();
    assert_eq!(items.len(), n, "{n} items to complete");
    for item in &items {
        q.complete(item, None).unwrap();
    }
}

fn counts(c: &JobCommands) -> Vec<(i64, &str, u64)> {
    c.commands
        .iter()
        .map(|c| (c.id, c.command.as_str(), c.completed))
        .collect()
}

/// On job `name`: 1 item completed untagged, 2 by "cmd a", 1 by "cmd b", 1
/// pending; returns the queue and the two command ids.
fn three_kinds(f: &Fixture, clock: &ManualClock, name: &str) -> (Queue, i64, i64) {
    let q = worker(f, clock, "a")
        .queue_with(name, queue_options(3))
        .unwrap();
    q.enqueue((0..5).map(|i| NewItem::key(format!("k{i}"))))
        .unwrap();
    complete(&q, 1);
    let a = q.record_command("cmd a").unwrap();
    assert_eq!((a.command.as_str(), a.completed), ("cmd a", 0));
    complete(&q.clone().completed_by(Some(a.id)), 2);
    clock.advance(Duration::from_secs(1));
    let b = q.record_command("cmd b").unwrap();
    assert_ne!(a.id, b.id, "new text, new id");
    complete(&q.clone().completed_by(Some(b.id)), 1);
    (q, a.id, b.id)
}

#[apply(every_store)]
fn commands_are_recorded_and_completions_counted_by_command(store: Option<Fixture>) {
    let Some(f) = &store else { return };
    assert_eq!(
        f.store.commands("no-such-job").unwrap(),
        JobCommands::default()
    );
    let clock = ManualClock::new(T0);
    let (q, a, b) = three_kinds(f, &clock, "cmds");
    let listed = q.commands().unwrap();
    assert_eq!(counts(&listed), vec![(a, "cmd a", 2), (b, "cmd b", 1)]);
    assert_eq!(listed.unknown, 1, "the untagged completion");
    assert_eq!(listed.latest().unwrap().id, b);
    // The same text again: the same id, now the latest, first use kept.
    clock.advance(Duration::from_secs(1));
    let again = q.record_command("cmd a").unwrap();
    assert_eq!((again.id, again.completed), (a, 2));
    assert_eq!(again.first_used, listed.commands[0].first_used);
    assert!(again.last_used > listed.commands[0].last_used);
    let listed = q.commands().unwrap();
    assert_eq!(listed.latest().unwrap().id, a);
    // Each completed item names its command.
    let done = q.items(Some(ItemStatus::Completed), 10).unwrap();
    let mut by: Vec<Option<i64>> = done.iter().map(|i| i.command_id).collect();
    by.sort();
    assert_eq!(by, [None, Some(a), Some(a), Some(b)]);
    // A failed item counts for no command; only completed items count.
    let last = q.claim(1).unwrap().pop().unwrap();
    q.clone().completed_by(Some(a)).fail(&last, "boom").unwrap();
    assert_eq!(counts(&q.commands().unwrap())[0], (a, "cmd a", 2));
    // Commands are per job.
    let other = worker(f, &clock, "a").queue("cmds-other").unwrap();
    assert_eq!(other.record_command("cmd b").unwrap().id, 1);
    assert_eq!(other.commands().unwrap().commands.len(), 1);
}

#[apply(every_store)]
fn items_of_other_commands_are_redriven_and_redone(store: Option<Fixture>) {
    let Some(f) = &store else { return };
    let clock = ManualClock::new(T0);
    let (q, a, b) = three_kinds(f, &clock, "redo");
    // Everything not completed by b (a's two, the unknown one) goes back.
    assert_eq!(q.redrive_completed(CompletedBy::NotCommand(b)).unwrap(), 3);
    let c = q.counts().unwrap();
    assert_eq!((c.completed, c.pending), (1, 4));
    let listed = q.commands().unwrap();
    assert_eq!(counts(&listed), vec![(a, "cmd a", 0), (b, "cmd b", 1)]);
    assert_eq!(listed.unknown, 0);
    // The re-driven items start afresh and b completes them.
    let qb = q.clone().completed_by(Some(b));
    let items = qb.claim(10).unwrap();
    assert_eq!(items.len(), 4);
    assert!(items.iter().all(|i| i.attempt == 1), "fresh attempts");
    for item in &items {
        qb.complete(item, None).unwrap();
    }
    assert_eq!(q.finish_if_done().unwrap(), Some(JobStatus::Completed));
    assert_eq!(counts(&q.commands().unwrap())[1], (b, "cmd b", 5));
    assert_eq!(q.redrive_completed(CompletedBy::Command(a)).unwrap(), 0);
    assert_eq!(q.redrive_completed(CompletedBy::Unknown).unwrap(), 0);
    // Re-driving reopens the completed job.
    assert_eq!(q.redrive_completed(CompletedBy::Command(b)).unwrap(), 5);
    let job = f.store.get_job("redo").unwrap().unwrap();
    assert_eq!(job.status, JobStatus::Running);
    assert_eq!(q.counts().unwrap().pending, 5);
    assert!(matches!(
        f.store
            .redrive_completed("no-such-job", CompletedBy::Unknown, T0),
        Err(Error::NotFound(_))
    ));
}

#[apply(every_store)]
fn a_redrive_by_command_leaves_held_items_alone(store: Option<Fixture>) {
    let Some(f) = &store else { return };
    let clock = ManualClock::new(T0);
    let q = worker(f, &clock, "a").queue("held").unwrap();
    q.enqueue([NewItem::key("done"), NewItem::key("held")])
        .unwrap();
    complete(&q, 1);
    let held = q.claim(1).unwrap().pop().unwrap();
    assert_eq!(q.redrive_completed(CompletedBy::NotCommand(7)).unwrap(), 1);
    let running = q.items(Some(ItemStatus::Running), 10).unwrap();
    assert_eq!(running.len(), 1, "the held item is still running");
    // Its lease still holds: the completion is not fenced.
    q.complete(&held, None).unwrap();
    assert_eq!(q.commands().unwrap().unknown, 1);
}
