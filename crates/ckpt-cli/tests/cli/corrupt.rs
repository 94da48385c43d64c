//! A damaged SQLite store is named: real corruption (bytes overwritten in
//! chosen pages of a real store), each caught by `ckpt doctor`, and never
//! reported healthy, unclear, or changed by a read.

use std::path::Path;
use std::sync::OnceLock;
use std::time::SystemTime;

use crate::util::{items, Out, Sandbox};

/// A store with a job of 1500 completed items (long keys, so the items
/// table and its indexes span many pages) and a cursor job with history.
struct Pristine {
    bytes: Vec<u8>,
    page_size: usize,
    /// Root page (1-based) of each table and index, by name.
    roots: Vec<(String, usize)>,
}

impl Pristine {
    fn root(&self, name: &str) -> usize {
        self.roots
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("no table or index {name}: {:?}", self.roots))
            .1
    }

    fn page(&self, n: usize) -> std::ops::Range<usize> {
        (n - 1) * self.page_size..n * self.page_size
    }

    /// The b-tree page header of page `n` (after the file header on page 1).
    fn header_at(&self, n: usize) -> usize {
        self.page(n).start + if n == 1 { 100 } else { 0 }
    }

    /// A leaf page of the b-tree rooted at `root`: its right-most child.
    fn leaf_of(&self, root: usize) -> usize {
        let h = self.header_at(root);
        match self.bytes[h] {
            0x0a | 0x0d => root,
            0x02 | 0x05 => {
                let b = &self.bytes[h + 8..h + 12];
                let child = u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize;
                self.leaf_of(child)
            }
            other => panic!("page {root} has b-tree type {other:#x}"),
        }
    }
}

fn pristine() -> &'static Pristine {
    static P: OnceLock<Pristine> = OnceLock::new();
    P.get_or_init(|| {
        let sb = Sandbox::new();
        let keys: Vec<String> = items("s3://bucket/some/prefix/key-", 1500)
            .into_iter()
            .map(|k| format!("{k}.parquet"))
            .collect();
        let file = sb.write_items("items.txt", &keys);
        sb.ckpt()
            .args(["run", "--job", "J", "-j", "8", "--items"])
            .arg(&file)
            .args(["--", "true"])
            .run()
            .success();
        for i in 0..20 {
            sb.ckpt()
                .args(["checkpoint", "set", "C", &format!(r#"{{"offset":{i}}}"#)])
                .run()
                .success();
        }
        let conn = rusqlite::Connection::open(sb.db()).unwrap();
        // Without free pages: an item row rewritten by the run may leave a
        // stale copy on a freed page, which a test looking for a row's bytes
        // could damage instead of the live row (and nothing would read it).
        conn.execute_batch("VACUUM").unwrap();
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .unwrap();
        let page_size: usize = conn
            .query_row("PRAGMA page_size", [], |r| r.get::<_, i64>(0))
            .unwrap() as usize;
        let roots = conn
            .prepare("SELECT name, rootpage FROM sqlite_master WHERE rootpage > 0")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as usize)))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        drop(conn);
        let bytes = std::fs::read(sb.db()).unwrap();
        Pristine {
            bytes,
            page_size,
            roots,
        }
    })
}

/// A way to damage a copy of the pristine store.
type Damage = dyn Fn(&Pristine, &mut Vec<u8>);

/// Deterministic garbage.
fn garbage(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A sandbox whose store is the pristine one with `damage` applied.
fn damaged(damage: impl FnOnce(&Pristine, &mut Vec<u8>)) -> Sandbox {
    let p = pristine();
    let mut bytes = p.bytes.clone();
    damage(p, &mut bytes);
    assert_ne!(bytes, p.bytes, "the damage changed nothing");
    with_store(&bytes)
}

fn with_store(bytes: &[u8]) -> Sandbox {
    let sb = Sandbox::new();
    std::fs::write(sb.db(), bytes).unwrap();
    sb
}

fn fingerprint(path: &Path) -> (Vec<u8>, SystemTime) {
    let meta = std::fs::metadata(path).unwrap();
    (std::fs::read(path).unwrap(), meta.modified().unwrap())
}

/// The one error line names the corruption, the file and the next step.
#[track_caller]
fn assert_named(sb: &Sandbox, out: &Out) {
    let line = out.error(4);
    let path = sb.db().display().to_string();
    assert!(
        line.contains(&format!("the store file is corrupt: {path}"))
            && line.contains("restore it from a backup")
            && line.contains(&format!("sqlite3 {path} .recover")),
        "{}: {line}",
        out.describe
    );
}

/// Runs the read commands on a damaged store: `ckpt doctor` must name the
/// damage; `status` and `items` either read what they show (exit 0) or
/// name it too; the file is never changed. Returns status's exit code.
fn check(sb: &Sandbox) -> i32 {
    let before = fingerprint(&sb.db());
    assert_named(sb, &sb.ckpt().arg("doctor").run());
    assert_named(sb, &sb.ckpt().args(["doctor", "--json"]).run());
    let mut codes = Vec::new();
    for args in [
        &["status", "J"][..],
        &["status", "C", "--json"],
        &["items", "J", "--limit", "2000"],
        &["show", "C"],
    ] {
        let out = sb.ckpt().args(args).run();
        out.no_panic();
        if out.code != 0 {
            assert_named(sb, &out);
        }
        codes.push(out.code);
    }
    let after = fingerprint(&sb.db());
    assert!(before.0 == after.0, "the store file's bytes changed");
    assert_eq!(before.1, after.1, "the store file's mtime changed");
    codes[0]
}

#[test]
fn pristine_store_is_healthy_and_doctor_says_how_long_its_check_took() {
    let sb = with_store(&pristine().bytes);
    let out = sb.ckpt().arg("doctor").run();
    out.success();
    assert!(
        out.stderr.contains("store file quick_check ok in ") && out.stderr.contains(" ms"),
        "{}",
        out.stderr
    );
    let out = sb.ckpt().args(["doctor", "--json", "--full"]).run();
    out.success();
    let check = &out.json()["file_check"];
    assert_eq!(check["check"], "integrity_check");
    assert_eq!(check["ok"], true);
    assert!(check["elapsed_seconds"].as_f64().unwrap() >= 0.0, "{check}");
}

/// Nine distinct corruptions, each named by `ckpt doctor`.
#[test]
fn every_corruption_is_named_by_doctor() {
    let fill = |p: &Pristine, b: &mut Vec<u8>, page: usize| {
        let range = p.page(page);
        let len = range.len();
        b[range].copy_from_slice(&garbage(page as u64, len));
    };
    let cases: Vec<(&str, Box<Damage>)> = vec![
        (
            "the magic string of the file header",
            Box::new(|_, b| b[..16].copy_from_slice(b"garbage garbage!")),
        ),
        (
            "page size in the file header",
            Box::new(|_, b| b[16..18].copy_from_slice(&[0, 7])),
        ),
        (
            "b-tree header of the schema page",
            Box::new(|_, b| b[100..108].copy_from_slice(&[0xff; 8])),
        ),
        (
            "root page of the items table",
            Box::new(move |p, b| fill(p, b, p.root("items"))),
        ),
        (
            "a leaf page of the items table",
            Box::new(move |p, b| fill(p, b, p.leaf_of(p.root("items")))),
        ),
        (
            "a leaf page of the items' key index",
            Box::new(move |p, b| fill(p, b, p.leaf_of(p.root("sqlite_autoindex_items_1")))),
        ),
        (
            "root page of the history table",
            Box::new(move |p, b| fill(p, b, p.root("history"))),
        ),
        (
            "a page in the middle of the file",
            Box::new(move |p, b| fill(p, b, p.bytes.len() / p.page_size / 2)),
        ),
        (
            "the file cut to half its pages",
            Box::new(|p, b| b.truncate(p.bytes.len() / p.page_size / 2 * p.page_size)),
        ),
    ];
    for (what, damage) in &cases {
        let sb = damaged(|p, b| damage(p, b));
        let status = check(&sb);
        eprintln!("corruption: {what}: doctor named it; status exit {status}");
    }
}

/// Damage inside a row passes SQLite's page check; reading the row back
/// (doctor's second pass, and `ckpt items`) names it instead of printing
/// "Conversion error ... invalid utf-8".
#[test]
fn invalid_utf8_in_a_row_is_named() {
    let sb = damaged(|p, b| {
        let needle = b"key-777.parquet";
        let at: Vec<usize> = (0..b.len() - needle.len())
            .filter(|&i| &b[i..i + needle.len()] == needle)
            .collect();
        // In the table's leaf page, and in the key index's copy (which a
        // listing may read instead): the same bytes in both.
        assert!(
            at.iter()
                .any(|&i| b[p.header_at(i / p.page_size + 1)] == 0x0d),
            "the key is in a table leaf page"
        );
        for i in at {
            b[i..i + 2].copy_from_slice(&[0xff, 0xfe]);
        }
    });
    let out = sb.ckpt().arg("doctor").run();
    assert_named(&sb, &out);
    assert!(out.stderr.contains("invalid UTF-8"), "{}", out.stderr);
    let out = sb.ckpt().args(["items", "J", "--limit", "2000"]).run();
    assert_named(&sb, &out);
    check(&sb);
}

/// Values a hand edit or a bad salvage leaves in sound pages: text that is
/// not UTF-8 in the commands table, a number column holding text or a
/// blob, a negative count. `ckpt doctor` reads every row as the commands
/// do, so it names each of them, and the commands that read the row name
/// it too rather than showing a wrapped-around count.
#[test]
fn values_of_the_wrong_type_are_named_by_doctor() {
    let cases = [
        (
            "UPDATE commands SET command = CAST(X'2e2fff' AS TEXT)",
            "commands: row 1, column command: invalid UTF-8",
            &["show", "J"][..],
        ),
        (
            "UPDATE items SET attempts = 'abc' WHERE rowid = 1",
            "items: row 1: column attempts: unexpected Text value",
            &["items", "J", "--limit", "2000"],
        ),
        (
            "UPDATE items SET key = X'ff00fe' WHERE rowid = 2",
            "items: row 2: column key: unexpected Blob value",
            &["items", "J", "--limit", "2000"],
        ),
        (
            "UPDATE jobs SET attempts = -5 WHERE name = 'C'",
            "-5 is out of range for a count",
            &["status", "C"],
        ),
        (
            // Read by `status` after the job and its counts: it must not
            // print those, then fail.
            "UPDATE items SET status = 'dead', last_error = CAST(X'c3' AS TEXT) WHERE rowid = 3",
            "items: row 3, column last_error: invalid UTF-8",
            &["status", "J"],
        ),
    ];
    // Not damage: an items_processed past i64::MAX is stored in an i64's
    // bits, negative, and reads back whole.
    let sb = Sandbox::new();
    sb.ckpt()
        .args(["checkpoint", "set", "big", "1", "--items-processed"])
        .arg(u64::MAX.to_string())
        .run()
        .success();
    sb.ckpt().args(["doctor", "--full"]).run().success();
    assert_eq!(sb.status("big")["items_processed"], u64::MAX);
    for (edit, named, reader) in cases {
        let sb = with_store(&pristine().bytes);
        let conn = rusqlite::Connection::open(sb.db()).unwrap();
        conn.execute_batch(edit).unwrap();
        drop(conn);
        let out = sb.ckpt().arg("doctor").run();
        assert_named(&sb, &out);
        assert!(out.stderr.contains(named), "{edit}: {}", out.stderr);
        let read = sb.ckpt().args(reader).run();
        assert_named(&sb, &read);
        assert_eq!(read.stdout, "", "{reader:?} printed half a report");
        check(&sb);
    }
}

/// A byte flipped in a row's status: the page structure is sound and the
/// index no longer matches the row. Doctor's read-back names it; `--full`
/// (integrity_check) names the index mismatch too.
#[test]
fn a_flipped_status_is_named() {
    let sb = damaged(|p, b| {
        let leaf = p.page(p.leaf_of(p.root("items")));
        let needle = b"completed";
        let at = leaf
            .clone()
            .find(|&i| &b[i..i + needle.len()] == needle)
            .expect("a completed row in the leaf");
        b[at + 8] = b'x'; // "completex"
    });
    let out = sb.ckpt().arg("doctor").run();
    assert_named(&sb, &out);
    assert!(out.stderr.contains("unexpected value"), "{}", out.stderr);
    let out = sb.ckpt().args(["doctor", "--full"]).run();
    assert_named(&sb, &out);
    assert!(
        out.stderr
            .contains("PRAGMA integrity_check and a read of every row found"),
        "{}",
        out.stderr
    );
    check(&sb);
}

/// Times past RFC 3339's year 9999 (or before 1970), as only a damaged or
/// hand-edited store holds: every listing shows them at the range's ends,
/// none panics.
#[test]
fn times_out_of_range_are_shown_not_a_panic() {
    let sb = Sandbox::new();
    sb.ckpt()
        .args(["checkpoint", "set", "C", "1"])
        .run()
        .success();
    sb.ckpt()
        .args(["run", "--job", "J", "-q", "--", "true"])
        .stdin("a\nb\n")
        .run()
        .success();
    for t in [253_402_300_800_000_i64, i64::MAX, i64::MIN] {
        let conn = rusqlite::Connection::open(sb.db()).unwrap();
        conn.execute(
            "UPDATE jobs SET checkpoint_at = ?1, lease_expires = ?1, updated_at = ?1, owner = 'w'",
            [t],
        )
        .unwrap();
        conn.execute(
            "UPDATE items SET status = 'running', owner = 'w', ready_at = ?1, started_at = ?1,
                 finished_at = ?1, enqueued_at = ?1",
            [t],
        )
        .unwrap();
        drop(conn);
        for args in [
            vec!["show", "C"],
            vec!["show", "C", "--json"],
            vec!["show", "J"],
            vec!["status", "C"],
            vec!["status", "J", "--json"],
            vec!["jobs"],
            vec!["jobs", "--json"],
            vec!["items", "J"],
            vec!["items", "J", "--json"],
            vec!["doctor", "--json"],
        ] {
            let out = sb.ckpt().args(&args).run();
            // Doctor exits 1 for its findings (a lease "expired" in 1970).
            let expected = if args[0] == "doctor" && out.code == 1 {
                1
            } else {
                0
            };
            out.code(expected);
        }
        let shown = sb.ckpt().args(["show", "C", "--json"]).run().json();
        let expected = if t > 0 {
            "9999-12-31T23:59:59.999Z"
        } else {
            "1970-01-01T00:00:00.000Z"
        };
        assert_eq!(shown["checkpoint_at"], expected, "{shown}");
    }
}
