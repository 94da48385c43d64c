//! Migration: a store written at schema 1 (before commands) opens, gains
//! the commands table and the items' `command_id`, and counts the items it
//! completed before under "unknown command".

use ckpt::model::CompletedBy;
use ckpt::store::{CommandStore, ItemStore, OpenMode, SCHEMA_VERSION};
use ckpt::Timestamp;

use super::open;

/// The schema 1 tables as an older ckpt wrote them (frozen here: this is
/// what existing files hold, whatever the migrations become).
const SCHEMA_1: &str = "
    CREATE TABLE jobs (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, status TEXT NOT NULL,
        cursor TEXT, items_processed INTEGER NOT NULL DEFAULT 0, stage TEXT, state TEXT,
        state_bytes INTEGER NOT NULL DEFAULT 0, checkpoint_at INTEGER, owner TEXT,
        lease_expires INTEGER, epoch INTEGER NOT NULL DEFAULT 0,
        attempts INTEGER NOT NULL DEFAULT 0, saves INTEGER NOT NULL DEFAULT 0,
        created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL, completed_at INTEGER,
        error TEXT);
    CREATE TABLE history (job_id INTEGER NOT NULL, seq INTEGER NOT NULL, cursor TEXT NOT NULL,
        items_processed INTEGER NOT NULL, at INTEGER NOT NULL, PRIMARY KEY (job_id, seq))
        WITHOUT ROWID;
    CREATE TABLE items (id INTEGER PRIMARY KEY, job_id INTEGER NOT NULL, key TEXT NOT NULL,
        payload TEXT, status TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
        claims INTEGER NOT NULL DEFAULT 0, owner TEXT, ready_at INTEGER, last_error TEXT,
        stats TEXT, cursor TEXT, enqueued_at INTEGER NOT NULL, started_at INTEGER,
        finished_at INTEGER, UNIQUE (job_id, key));
    CREATE INDEX items_ready ON items (job_id, ready_at, id) WHERE ready_at IS NOT NULL;
    CREATE INDEX items_status ON items (job_id, status);
    PRAGMA application_id = 1667985524;
    PRAGMA user_version = 1;
    INSERT INTO jobs (id, name, status, created_at, updated_at, completed_at)
        VALUES (1, 'old', 'completed', 1, 2, 2);
    INSERT INTO items (job_id, key, status, attempts, claims, enqueued_at, finished_at)
        VALUES (1, 'a', 'completed', 1, 1, 1, 2), (1, 'b', 'completed', 1, 1, 1, 2),
               (1, 'c', 'completed', 1, 1, 1, 2);
    PRAGMA journal_mode = DELETE;";

#[test]
fn schema_1_store_gains_commands_with_old_completions_unknown() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.db");
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute_batch(SCHEMA_1)
        .unwrap();
    let store = open(&path, OpenMode::MustExist).unwrap();
    let version: i64 = rusqlite::Connection::open(&path)
        .unwrap()
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, SCHEMA_VERSION, "migrated on open");
    let listed = store.commands("old").unwrap();
    assert!(listed.commands.is_empty());
    assert_eq!(listed.unknown, 3, "completed before commands: unknown");
    // The new step works on the old data: record, re-drive the unknown ones.
    let now = Timestamp(10);
    let cmd = store.record_command("old", "echo {}", now).unwrap();
    assert_eq!((cmd.id, cmd.completed), (1, 0));
    assert_eq!(
        store
            .redrive_completed("old", CompletedBy::NotCommand(cmd.id), now)
            .unwrap(),
        3
    );
    assert_eq!(store.item_counts("old").unwrap().pending, 3);
    // Opening again changes nothing more.
    drop(store);
    let again = open(&path, OpenMode::MustExist).unwrap();
    assert_eq!(again.commands("old").unwrap().commands.len(), 1);
}

/// A dead item of a schema 1 store keeps its error and has no output (the
/// column schema 3 added); new failures store theirs.
#[test]
fn schema_1_dead_item_opens_with_no_output() {
    use ckpt::model::{ItemChange, ItemUpdate};
    use ckpt::ItemStatus;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.db");
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch(SCHEMA_1).unwrap();
    conn.execute_batch(
        "INSERT INTO items (job_id, key, status, attempts, claims, enqueued_at, finished_at,
             last_error) VALUES (1, 'd', 'dead', 3, 3, 1, 2, 'boom');",
    )
    .unwrap();
    drop(conn);
    let store = open(&path, OpenMode::MustExist).unwrap();
    let dead = store.list_items("old", Some(ItemStatus::Dead), 10).unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(
        (
            dead[0].last_error.as_deref(),
            dead[0].last_output.as_deref()
        ),
        (Some("boom"), None)
    );
    // The migrated column takes a new failure's output.
    assert_eq!(
        store
            .redrive("old", ItemStatus::Dead, None, Timestamp(3))
            .unwrap(),
        1
    );
    let claimed = store
        .claim("old", "w", 1, Timestamp(99), true, Timestamp(4))
        .unwrap();
    let update = ItemUpdate {
        lease: claimed[0].lease.clone(),
        change: ItemChange::Fail {
            error: "exit status 1".into(),
            retry_at: None,
            output: Some("why\n".into()),
        },
    };
    store.update_items(&[update], Timestamp(5)).unwrap();
    let dead = store.list_items("old", Some(ItemStatus::Dead), 10).unwrap();
    assert_eq!(dead[0].last_output.as_deref(), Some("why\n"));
}

/// Schema 4 drops the index on every item's status (every claim and
/// completion moved it) for a partial one on dead items, and keeps each
/// job's item total, from which completed items are counted: a store of
/// schema 1 counts exactly what it held, and keeps counting right.
#[test]
fn schema_4_counts_migrated_items_without_the_status_index() {
    use ckpt::model::NewItem;
    use ckpt::ItemStatus;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.db");
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch(SCHEMA_1).unwrap();
    // Job 1 has three completed items (SCHEMA_1); add one of every other
    // status, and a second job with one pending item and an empty third.
    conn.execute_batch(
        "INSERT INTO items (job_id, key, status, attempts, claims, enqueued_at, ready_at, owner)
             VALUES (1, 'p', 'pending', 0, 0, 1, 1, NULL),
                    (1, 'r', 'running', 1, 1, 1, 50, 'w'),
                    (1, 'f', 'failed', 1, 1, 1, 40, NULL);
         INSERT INTO items (job_id, key, status, attempts, claims, enqueued_at, finished_at)
             VALUES (1, 'd', 'dead', 3, 3, 1, 2);
         INSERT INTO jobs (id, name, status, created_at, updated_at) VALUES
             (2, 'other', 'running', 1, 1), (3, 'empty', 'running', 1, 1);
         INSERT INTO items (job_id, key, status, enqueued_at, ready_at)
             VALUES (2, 'x', 'pending', 1, 1);",
    )
    .unwrap();
    drop(conn);
    let store = open(&path, OpenMode::MustExist).unwrap();
    let indexes: Vec<String> = rusqlite::Connection::open(&path)
        .unwrap()
        .prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'items'")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(indexes.contains(&"items_dead".into()), "{indexes:?}");
    assert!(!indexes.contains(&"items_status".into()), "{indexes:?}");

    let counts = |job: &str| {
        let c = store.item_counts(job).unwrap();
        (c.pending, c.running, c.failed, c.dead, c.completed)
    };
    assert_eq!(counts("old"), (1, 1, 1, 1, 3));
    assert_eq!(counts("other"), (1, 0, 0, 0, 0));
    assert_eq!(counts("empty"), (0, 0, 0, 0, 0));
    assert_eq!(counts("missing"), (0, 0, 0, 0, 0));
    let dead = store.list_items("old", Some(ItemStatus::Dead), 10).unwrap();
    assert_eq!(
        dead.iter().map(|i| i.key.as_str()).collect::<Vec<_>>(),
        ["d"]
    );
    let running = store
        .list_items("old", Some(ItemStatus::Running), 10)
        .unwrap();
    assert_eq!(
        running.iter().map(|i| i.key.as_str()).collect::<Vec<_>>(),
        ["r"]
    );

    // New items add to the total; known keys do not.
    let items = ["p", "new"].map(|k| Ok(NewItem::key(k)));
    let report = store
        .enqueue("old", &mut items.into_iter(), Timestamp(60))
        .unwrap();
    assert_eq!((report.inserted, report.existing), (1, 1));
    assert_eq!(counts("old"), (2, 1, 1, 1, 3));
}
