//! SQLite-specific tests: opening foreign, corrupt, missing and newer files.

mod migrate;

use std::path::Path;

use ckpt::store::{self, OpenMode, SqliteOptions, SqliteStore};
use ckpt::{Checkpoint, Ckpt, Error};
use serde_json::json;

fn open(path: &Path, mode: OpenMode) -> Result<SqliteStore, Error> {
    SqliteStore::open(path.to_str().unwrap(), SqliteOptions::default(), mode)
}

/// A `Ckpt` on the store at `path`.
fn ckpt_on(path: &Path, mode: OpenMode) -> Ckpt {
    Ckpt::new(std::sync::Arc::new(open(path, mode).unwrap()))
}

#[test]
fn text_file_is_refused_and_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notes.txt");
    std::fs::write(&path, "these are my notes, not a database\n".repeat(200)).unwrap();
    let before = std::fs::read(&path).unwrap();
    let err = open(&path, OpenMode::CreateIfMissing).unwrap_err();
    assert!(matches!(err, Error::NotAStore(_)), "{err}");
    assert!(err.to_string().contains("not a ckpt store"), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), before);
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        1,
        "no -wal or -shm left behind"
    );
}

#[test]
fn foreign_sqlite_database_is_refused_and_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.db");
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch(
        "CREATE TABLE users (id INTEGER PRIMARY KEY); INSERT INTO users VALUES (1);",
    )
    .unwrap();
    drop(conn);
    let before = std::fs::read(&path).unwrap();
    let err = open(&path, OpenMode::CreateIfMissing).unwrap_err();
    assert!(err.to_string().contains("another application"), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), before);
}

#[test]
fn corrupt_store_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ckpt.db");
    let store = open(&path, OpenMode::CreateIfMissing).unwrap();
    Ckpt::new(std::sync::Arc::new(store))
        .set_checkpoint("j", &Checkpoint::new(json!(1), 1))
        .unwrap();
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[..16].copy_from_slice(b"garbage garbage!");
    std::fs::write(&path, &bytes).unwrap();
    let err = open(&path, OpenMode::MustExist).unwrap_err();
    // The header's application id still says ckpt: named as damage.
    let path_text = path.display().to_string();
    assert!(
        matches!(&err, Error::Corrupt { path: Some(p), .. } if *p == path_text),
        "{err}"
    );
    assert!(err.to_string().contains(".recover"), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), bytes, "left untouched");
    // Without it, the file is just not a store.
    bytes[68..72].copy_from_slice(&[0; 4]);
    std::fs::write(&path, &bytes).unwrap();
    let err = open(&path, OpenMode::MustExist).unwrap_err();
    assert!(matches!(err, Error::NotAStore(_)), "{err}");
}

#[test]
fn newer_schema_is_refused_and_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ckpt.db");
    drop(open(&path, OpenMode::CreateIfMissing).unwrap());
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch("PRAGMA user_version = 7; PRAGMA journal_mode = DELETE;")
        .unwrap();
    drop(conn);
    let before = std::fs::read(&path).unwrap();
    let err = open(&path, OpenMode::CreateIfMissing).unwrap_err();
    assert!(
        matches!(
            err,
            Error::SchemaTooNew {
                found: 7,
                supported: store::SCHEMA_VERSION,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(
        std::fs::read(&path).unwrap(),
        before,
        "a newer store is never rewritten"
    );
}

#[test]
fn missing_store_and_directory() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("absent.db");
    let err = open(&path, OpenMode::MustExist).unwrap_err();
    assert!(err.is_not_found(), "{err}");
    assert!(!path.exists(), "a read-only open creates nothing");
    let err = open(
        &dir.path().join("no/such/dir/x.db"),
        OpenMode::CreateIfMissing,
    )
    .unwrap_err();
    assert!(
        matches!(err, Error::Open(ref m) if m.contains("does not exist")),
        "{err}"
    );
    let err = open(dir.path(), OpenMode::CreateIfMissing).unwrap_err();
    assert!(err.to_string().contains("is a directory"), "{err}");
}

#[test]
fn a_fifo_or_a_socket_is_refused_and_nothing_is_made_beside_it() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("pipe");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let socket = dir.path().join("sock");
    let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    for (path, kind) in [(&fifo, "a named pipe (FIFO)"), (&socket, "a socket")] {
        for mode in [OpenMode::CreateIfMissing, OpenMode::MustExist] {
            let err = open(path, mode).unwrap_err();
            assert!(
                matches!(err, Error::Open(ref m) if m.ends_with(&format!("is {kind}, not a store file"))),
                "{err}"
            );
        }
    }
    let mut left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    left.sort();
    assert_eq!(left, ["pipe", "sock"], "no -journal or -wal beside them");
}

/// A directory made read-only for a test: a read-only tmpfs when root
/// (whom permissions do not stop), else mode 0555. Undone on drop.
struct ReadOnlyDir {
    path: std::path::PathBuf,
    mounted: bool,
}

impl ReadOnlyDir {
    /// `dir` with `files` copied in, read-only; `None` (with the reason
    /// printed) where neither way works.
    fn new(dir: &Path, files: &[&Path]) -> Option<ReadOnlyDir> {
        let path = dir.join("ro");
        std::fs::create_dir(&path).unwrap();
        let sh = |cmd: &str| {
            std::process::Command::new("sh")
                .args(["-c", cmd])
                .status()
                .is_ok_and(|s| s.success())
        };
        // SAFETY: geteuid(2) has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        let p = path.display();
        let mounted = root && sh(&format!("mount -t tmpfs ckpt-test '{p}' 2> /dev/null"));
        if root && !mounted {
            eprintln!("skipped: root, and cannot mount a tmpfs to make read-only");
            return None;
        }
        for f in files {
            std::fs::copy(f, path.join(f.file_name().unwrap())).unwrap();
        }
        let made = if mounted {
            sh(&format!("mount -o remount,ro '{p}'"))
        } else {
            sh(&format!("chmod 0555 '{p}'"))
        };
        let ro = ReadOnlyDir { path, mounted };
        made.then_some(ro)
    }
}

impl Drop for ReadOnlyDir {
    fn drop(&mut self) {
        let p = self.path.display();
        let cmd = if self.mounted {
            format!("umount '{p}'")
        } else {
            format!("chmod 0755 '{p}'")
        };
        let _ = std::process::Command::new("sh").args(["-c", &cmd]).status();
    }
}

#[test]
fn a_store_on_a_read_only_file_system_says_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("s.db");
    let ckpt = Ckpt::open(&format!("sqlite://{}", db.display())).unwrap();
    ckpt.set_checkpoint("j", &Checkpoint::new(json!(5), 5))
        .unwrap();
    drop(ckpt);
    assert!(!dir.path().join("s.db-wal").exists(), "closed cleanly");
    let Some(ro) = ReadOnlyDir::new(dir.path(), &[&db]) else {
        return;
    };
    let err = open(&ro.path.join("s.db"), OpenMode::MustExist).unwrap_err();
    let Error::Open(message) = &err else {
        panic!("{err:?}")
    };
    assert!(
        message.contains("cannot open the store where it is (")
            && message.contains("copy the store, with its -wal file"),
        "{message}"
    );
    assert!(!message.contains('\n'), "one line: {message}");
}

/// A store on a file system with no space left: even a read cannot open
/// it (SQLite grows its -shm file first), and the error says the disk is
/// full, not only "disk I/O error". Root only (a tmpfs is mounted).
#[test]
fn a_store_on_a_full_disk_says_the_disk_is_full() {
    // SAFETY: geteuid(2) has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root to mount a small tmpfs");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().display().to_string();
    let sh = |cmd: &str| {
        std::process::Command::new("sh")
            .args(["-c", cmd])
            .status()
            .is_ok_and(|s| s.success())
    };
    if !sh(&format!(
        "mount -t tmpfs -o size=512k ckpt-test '{p}' 2> /dev/null"
    )) {
        eprintln!("skipped: cannot mount a tmpfs");
        return;
    }
    struct Unmount(String);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(p.clone());
    let db = dir.path().join("s.db");
    let ckpt = Ckpt::open(&format!("sqlite://{}", db.display())).unwrap();
    ckpt.set_checkpoint("j", &Checkpoint::new(json!(5), 5))
        .unwrap();
    drop(ckpt);
    // Fills it (dd stops with "no space left", as it should).
    sh(&format!("dd if=/dev/zero of='{p}/fill' bs=4k 2> /dev/null"));
    let err = open(&db, OpenMode::MustExist).unwrap_err();
    let Error::Open(message) = &err else {
        panic!("{err:?}")
    };
    assert!(
        message.contains("the disk is full") && message.contains("free some space"),
        "{message}"
    );
    std::fs::remove_file(dir.path().join("fill")).unwrap();
    let ckpt = Ckpt::open(&format!("sqlite://{}", db.display())).unwrap();
    assert!(
        ckpt.get_job("j").unwrap().is_some(),
        "readable once there is room"
    );
}

#[test]
fn url_options() {
    let dir = tempfile::tempdir().unwrap();
    let base = format!("sqlite://{}", dir.path().join("x.db").display());
    let s = store::open(
        &format!("{base}?durability=normal&busy_timeout=100"),
        OpenMode::CreateIfMissing,
    )
    .unwrap();
    assert!(s.describe().ends_with("x.db"));
    let other = format!("sqlite://{}", dir.path().join("y.db").display());
    for bad in [
        "?durability=maybe",
        "?busy_timeout=soon",
        "?busy_timeout=2147483648",
        "?colour=blue",
    ] {
        let err = store::open(&format!("{base}{bad}"), OpenMode::CreateIfMissing).unwrap_err();
        assert!(matches!(err, Error::Open(_)), "{bad}: {err}");
        let err = store::open(&format!("{other}{bad}"), OpenMode::CreateIfMissing).unwrap_err();
        assert!(matches!(err, Error::Open(_)), "{bad}: {err}");
        assert!(!dir.path().join("y.db").exists(), "{bad}: a file was left");
    }
    let err = store::open("sqlite://", OpenMode::CreateIfMissing).unwrap_err();
    assert!(err.to_string().contains("no file path"), "{err}");
}

#[test]
fn store_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ckpt.db");
    let c = ckpt_on(&path, OpenMode::CreateIfMissing);
    let mut job = c.job("reopen").unwrap();
    job.checkpoint(Checkpoint::new(json!({"k": "v"}), 3))
        .unwrap();
    job.release().unwrap();
    drop(c);
    let c = ckpt_on(&path, OpenMode::MustExist);
    let rec = c.get_job("reopen").unwrap().unwrap();
    assert_eq!(rec.checkpoint.unwrap().cursor, json!({"k": "v"}));
}

#[test]
fn foreign_wal_database_gets_no_wal_or_shm_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.db");
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE users (id INTEGER PRIMARY KEY);")
        .unwrap();
    drop(conn); // a clean close checkpoints and removes the WAL
    let before = std::fs::read(&path).unwrap();
    let err = open(&path, OpenMode::MustExist).unwrap_err();
    assert!(err.to_string().contains("another application"), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), before);
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, ["app.db"], "nothing created beside it");
}

#[test]
fn tiny_file_is_not_a_store() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.db");
    std::fs::write(&path, "hi").unwrap();
    let err = open(&path, OpenMode::CreateIfMissing).unwrap_err();
    assert!(matches!(err, Error::NotAStore(_)), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), b"hi");
}

#[test]
fn store_with_pending_wal_is_recognised() {
    // A store still being written by another process has its header
    // changes in the WAL, not yet in the main file.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ckpt.db");
    let first = open(&path, OpenMode::CreateIfMissing).unwrap();
    let second = open(&path, OpenMode::MustExist).unwrap();
    drop((first, second));
}

/// A payload holding a NUL, beside plain items in one bulk enqueue: SQLite
/// text could keep it, but it is refused as on every store (PostgreSQL's
/// cannot), and the enqueue adds none of the items.
#[test]
fn a_payload_with_a_nul_refuses_the_whole_enqueue() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ckpt.db");
    let ckpt = ckpt_on(&path, OpenMode::CreateIfMissing);
    let q = ckpt.queue("nul").unwrap();
    let mut with_payload = ckpt::NewItem::key("p");
    with_payload.payload = Some(json!({"s": "x\0y"}));
    let err = q
        .enqueue([
            ckpt::NewItem::key("a"),
            ckpt::NewItem::key("b"),
            with_payload,
            ckpt::NewItem::key("c"),
        ])
        .unwrap_err();
    assert!(matches!(err, ckpt::Error::InvalidInput(_)), "{err:?}");
    assert!(q.items(None, 10).unwrap().is_empty(), "nothing enqueued");
}

/// Only damage writes a negative schema version: named as such, not a
/// panic, and the file is left as it was.
#[test]
fn a_negative_schema_version_is_damage() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ckpt.db");
    drop(open(&path, OpenMode::CreateIfMissing).unwrap());
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch("PRAGMA user_version = -1; PRAGMA journal_mode = DELETE;")
        .unwrap();
    drop(conn);
    let before = std::fs::read(&path).unwrap();
    for mode in [OpenMode::MustExist, OpenMode::CreateIfMissing] {
        let err = open(&path, mode).unwrap_err();
        assert!(
            matches!(&err, Error::Corrupt { detail, .. } if detail.contains("schema version is -1")),
            "{err}"
        );
    }
    assert_eq!(std::fs::read(&path).unwrap(), before);
}

/// A SQLite database without tables (another program's, emptied) holds no
/// store: a read refuses it as missing and leaves it as it was; a write
/// may create the store in it.
#[test]
fn an_empty_sqlite_database_is_not_turned_into_a_store_by_a_read() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("empty.db");
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch("CREATE TABLE t (x); DROP TABLE t; VACUUM;")
        .unwrap();
    drop(conn);
    let before = std::fs::read(&path).unwrap();
    assert!(!before.is_empty());
    let err = open(&path, OpenMode::MustExist).unwrap_err();
    assert!(matches!(err, Error::NotFound(_)), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), before, "left untouched");
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        1,
        "no -wal or -shm"
    );
    let store = open(&path, OpenMode::CreateIfMissing).unwrap();
    Ckpt::new(std::sync::Arc::new(store))
        .set_checkpoint("j", &Checkpoint::new(json!(1), 1))
        .unwrap();
    assert!(open(&path, OpenMode::MustExist).is_ok());
}

/// A shared transaction must be on the job's own file: the same file
/// reached by another spelling of its path (`dir/./ckpt.db`, a symlink)
/// is; another file is refused before anything is written.
#[test]
fn a_shared_transaction_is_on_the_jobs_file_however_its_path_is_spelt() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ckpt.db");
    let ckpt = ckpt_on(&path, OpenMode::CreateIfMissing);
    let mut job = ckpt.job("tx").unwrap();
    std::os::unix::fs::symlink(&path, dir.path().join("link.db")).unwrap();
    for (i, same) in [
        dir.path().join(".").join("ckpt.db"),
        dir.path().join("link.db"),
    ]
    .iter()
    .enumerate()
    {
        let tx_store = open(same, OpenMode::MustExist).unwrap();
        let cursor = json!(i);
        job.checkpoint_with(&tx_store, Checkpoint::new(cursor.clone(), 1), |_| Ok(()))
            .unwrap_or_else(|e| panic!("{}: {e}", same.display()));
        let saved = ckpt.get_job("tx").unwrap().unwrap().checkpoint.unwrap();
        assert_eq!(saved.cursor, cursor);
    }
    let other = open(&dir.path().join("other.db"), OpenMode::CreateIfMissing).unwrap();
    let err = job
        .checkpoint_with(&other, Checkpoint::new(json!(9), 9), |_| Ok(()))
        .unwrap_err();
    assert!(matches!(err, Error::InvalidInput(_)), "{err:?}");
    let saved = ckpt.get_job("tx").unwrap().unwrap().checkpoint.unwrap();
    assert_eq!(saved.cursor, json!(1));
}

/// A shared-transaction save that fails for a passing cause keeps the
/// earlier checkpoint the policy had not saved yet: the next flush saves
/// it (the failed one went with writes that were rolled back).
#[test]
fn a_failed_shared_transaction_keeps_the_earlier_unsaved_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ckpt.db");
    let store = std::sync::Arc::new(open(&path, OpenMode::CreateIfMissing).unwrap());
    let ckpt = Ckpt::new(store.clone());
    let options = ckpt::JobOptions {
        lease: std::time::Duration::from_secs(60),
        policy: ckpt::CheckpointPolicy::Every {
            items: Some(1_000),
            interval: None,
        },
    };
    let mut job = ckpt.job_with("keep", options).unwrap();
    assert!(!job.save(&5, 5).unwrap(), "held back by the policy");
    let err = job
        .checkpoint_with(&*store, Checkpoint::new(json!(6), 6), |_| {
            Err::<(), _>(Error::Unavailable("the sink's disk went away".into()))
        })
        .unwrap_err();
    assert!(err.is_transient(), "{err:?}");
    assert!(ckpt.get_job("keep").unwrap().unwrap().checkpoint.is_none());
    job.flush().unwrap();
    let saved = ckpt.get_job("keep").unwrap().unwrap().checkpoint.unwrap();
    assert_eq!((saved.cursor, saved.items_processed), (json!(5), 5));
}
