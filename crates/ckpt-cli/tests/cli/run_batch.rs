//! `ckpt run -n N` (`--max-args`): up to N items per command, completed
//! together; a failed batch is split so that only its bad items fail; a run
//! killed mid-batch loses nothing; the same on PostgreSQL and Redis.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use crate::postgres::PgSchema;
use crate::redis::RedisPrefix;
use crate::util::{counts, item_counts, items, stored_items, wait_until, Sandbox};

/// Logs one line per command: how many items it got, then the items.
const LOG_ARGS: &str = r#"echo "$#" "$@" >> log"#;

/// `key -> (status, attempts)` from `ckpt items --json`.
fn stored(sb: &Sandbox, job: &str) -> BTreeMap<String, (String, u64)> {
    stored_items(sb, job)
        .into_iter()
        .map(|(key, i)| {
            let status = i["status"].as_str().unwrap().to_string();
            (key, (status, i["attempts"].as_u64().unwrap()))
        })
        .collect()
}

/// The argument counts of the logged commands, and every logged item.
fn invocations(sb: &Sandbox) -> (Vec<usize>, Vec<String>) {
    let mut sizes = Vec::new();
    let mut args = Vec::new();
    for line in sb.lines("log") {
        let mut words = line.split_whitespace();
        let n: usize = words.next().unwrap().parse().unwrap();
        let these: Vec<String> = words.map(str::to_string).collect();
        assert_eq!(these.len(), n, "{line}");
        sizes.push(n);
        args.extend(these);
    }
    (sizes, args)
}

#[test]
fn ten_items_by_three_make_four_commands_of_3_3_3_1() {
    let sb = Sandbox::new();
    let all = items("i", 10);
    let file = sb.write_items("items.txt", &all);
    let out = sb
        .ckpt()
        .args(["run", "--job", "B", "--items"])
        .arg(&file)
        .args(["-j", "1", "-n", "3", "--", "sh", "-c", LOG_ARGS, "sh"])
        .run();
    out.success();
    let (sizes, args) = invocations(&sb);
    assert_eq!(sizes, [3, 3, 3, 1]);
    let once: BTreeSet<&String> = args.iter().collect();
    assert_eq!(args.len(), 10, "each item once: {args:?}");
    assert_eq!(once, all.iter().collect());
    let status = sb.status("B");
    assert_eq!(status["status"], "completed");
    assert_eq!(item_counts(&status), (0, 0, 10, 0, 0));
    assert!(stored(&sb, "B")
        .values()
        .all(|(_, attempts)| *attempts == 1));
}

#[test]
fn replacement_strings_expand_once_per_item_in_a_batch() {
    let sb = Sandbox::new();
    let file = sb.write_items("items.txt", &["a".into(), "b".into(), "c".into()]);
    let script = r#"echo "$@" >> log; echo "$CKPT_ITEM" | tr '\n' , >> env; echo >> env"#;
    let out = sb
        .ckpt()
        .args(["run", "--job", "X", "--items"])
        .arg(&file)
        .args(["-j", "1", "-n", "2", "--", "sh", "-c", script, "sh"])
        .args(["pre", "x{}y", "{.}", "s{%}", "post"])
        .run();
    out.success();
    assert_eq!(
        sb.lines("log"),
        ["pre xay xby a b s1 post", "pre xcy c s1 post"],
        "a word with an item's string repeats per item (GNU parallel -X); {{%}} does not"
    );
    assert_eq!(sb.lines("env"), ["a,b,", "c,"], "CKPT_ITEM: one key a line");
}

/// A batch in a shell script, as the README writes it (`sh -c 'gzip -k
/// {q} && rm {q}'`): every item of the batch is in the script, so an
/// item is completed only when the script did its work.
#[test]
fn a_batch_in_a_shell_script_runs_every_item() {
    let sb = Sandbox::new();
    let keys: Vec<String> = (1..=7).map(|i| format!("file {i}.txt")).collect();
    for key in &keys {
        sb.write(key, "data");
    }
    let file = sb.write_items("items.txt", &keys);
    sb.ckpt()
        .args(["run", "--job", "Z", "-j", "2", "-n", "3", "--items"])
        .arg(&file)
        .args([
            "--",
            "sh",
            "-c",
            "for f in {q}; do gzip -k \"$f\"; done && echo {q} >> log",
        ])
        .run()
        .success();
    for key in &keys {
        assert!(
            sb.join(&format!("{key}.gz")).exists(),
            "{key} was not gzipped"
        );
    }
    // One line a batch, of at most 3 items, each item once.
    let logged = sb.lines("log");
    let per_line: Vec<usize> = logged.iter().map(|l| l.split(".txt").count() - 1).collect();
    assert!(per_line.iter().all(|&n| (1..=3).contains(&n)), "{logged:?}");
    assert!(
        per_line.iter().any(|&n| n > 1),
        "no batch of several: {logged:?}"
    );
    assert_eq!(
        per_line.iter().sum::<usize>(),
        7,
        "each item once: {logged:?}"
    );
    assert_eq!(
        item_counts(&sb.status("Z")),
        (0, 0, 7, 0, 0),
        "all completed"
    );
}

#[test]
fn a_failed_batch_is_split_and_only_the_bad_item_dies() {
    let sb = Sandbox::new();
    let mut all = items("g", 9);
    all.insert(2, "bad".into());
    let file = sb.write_items("items.txt", &all);
    // Logs "ITEM N" for each of its N items; fails if any is `bad`.
    let script = r#"for a in "$@"; do echo "$a $#" >> log; done
for a in "$@"; do [ "$a" = bad ] && exit 1; done
exit 0"#;
    let out = sb
        .ckpt()
        .args(["run", "--job", "S", "--items"])
        .arg(&file)
        .args(["-j", "1", "-n", "5", "--retries", "2", "--backoff", "10ms"])
        .args(["--", "sh", "-c", script, "sh"])
        .run();
    out.code(1);
    let stored = stored(&sb, "S");
    assert_eq!(stored["bad"], ("dead".into(), 3), "retried, then dead");
    for item in all.iter().filter(|i| *i != "bad") {
        assert_eq!(
            stored[item],
            ("completed".into(), 1),
            "{item}: completed, charged one attempt"
        );
    }
    // Runs per item: in a batch (N > 1) and alone (N = 1).
    let mut batched: BTreeMap<String, usize> = BTreeMap::new();
    let mut alone: BTreeMap<String, usize> = BTreeMap::new();
    for line in sb.lines("log") {
        let (item, n) = line.split_once(' ').unwrap();
        let runs = if n == "1" { &mut alone } else { &mut batched };
        *runs.entry(item.to_string()).or_default() += 1;
    }
    assert!(
        all.iter().all(|i| batched.get(i) == Some(&1)),
        "{batched:?}"
    );
    assert_eq!(alone["bad"], 3, "its batch split, then two retries alone");
    let bad_batch = &all[..5];
    for item in all.iter().filter(|i| *i != "bad") {
        let expected = usize::from(bad_batch.contains(item));
        assert_eq!(
            alone.get(item).copied().unwrap_or(0),
            expected,
            "{item}: once more alone only if its batch held `bad`"
        );
    }
    assert!(out.stderr.contains("1 dead item(s)"), "{}", out.stderr);
}

#[test]
fn sigkill_mid_batch_then_rerun_completes_every_item() {
    let sb = Sandbox::new();
    let all = items("k", 60);
    let file = sb.write_items("items.txt", &all);
    sb.write("go", "");
    // Waits while `go` is missing, then logs its items (a batch takes
    // 0.2 s: the run is still going when `go` is removed).
    let script = r#"for a in "$@"; do echo "$a" >> started; done
while [ ! -e go ]; do sleep 0.01; done
sleep 0.2
for a in "$@"; do echo "$a" >> log; done"#;
    let command = || {
        sb.ckpt()
            .args(["run", "--job", "K", "--items"])
            .arg(&file)
            .args(["-j", "2", "-n", "4", "--", "sh", "-c", script, "sh"])
    };
    let mut first = command().spawn();
    wait_until(Duration::from_secs(20), "a batch to be logged", || {
        sb.lines("log").len() >= 4
    });
    std::fs::remove_file(sb.join("go")).unwrap();
    let started_before = sb.lines("started").len();
    wait_until(
        Duration::from_secs(10),
        "a batch to start after `go` was removed",
        || sb.lines("started").len() > started_before,
    );
    first.kill().unwrap(); // SIGKILL
    let status = first.wait().unwrap();
    assert_eq!(status.signal(), Some(9), "{status:?}");
    let done_by_first = sb.lines("log").len();
    assert!(done_by_first < 60, "the kill came mid-run");

    sb.write("go", "");
    let out = command().run();
    out.success();
    let status = sb.status("K");
    assert_eq!(status["status"], "completed");
    assert_eq!(item_counts(&status), (0, 0, 60, 0, 0));
    let times = counts(&sb.lines("log"));
    let logged: BTreeSet<&String> = times.keys().collect();
    assert_eq!(logged, all.iter().collect(), "no item lost");
}

/// A failed batch's items run alone one after another; each that succeeds
/// is recorded completed as it ends, not when the last has run: a run
/// killed during the split runs none of those again.
#[test]
fn items_done_alone_in_a_split_are_recorded_at_once() {
    let sb = Sandbox::new();
    let file = sb.write_items("items.txt", &["a".into(), "b".into(), "c".into()]);
    // The batch fails; alone, `b` waits for `go`, the others succeed.
    let script = r#"echo "$#" "$@" >> log
[ $# -gt 1 ] && exit 1
[ "$1" = b ] && while [ ! -e go ]; do sleep 0.01; done
exit 0"#;
    let command = || {
        sb.ckpt()
            .args(["run", "--job", "S", "--items"])
            .arg(&file)
            .args(["-j", "1", "-n", "3", "--", "sh", "-c", script, "sh"])
    };
    let mut first = command().spawn();
    wait_until(Duration::from_secs(20), "`b` to run alone", || {
        sb.lines("log").contains(&"1 b".to_string())
    });
    wait_until(Duration::from_secs(20), "`a` to be recorded done", || {
        stored(&sb, "S")
            .get("a")
            .is_some_and(|(s, _)| s == "completed")
    });
    first.kill().unwrap(); // SIGKILL, while `b` runs
    assert_eq!(first.wait().unwrap().signal(), Some(9));

    sb.write("go", "");
    command().run().success();
    // `a` ran in the batch and alone once, never again; `b` (whose run
    // died with ckpt) and `c` (which never ran alone) ran again.
    assert_eq!(
        sb.lines("log"),
        ["3 a b c", "1 a", "1 b", "1 b", "1 c"],
        "{}",
        sb.dump()
    );
    let stored = stored(&sb, "S");
    assert!(
        stored.values().all(|(status, _)| status == "completed"),
        "{stored:?}"
    );
    // `a` took one attempt (the batch and its lone run); `b` and `c` were
    // running (their batch's start recorded) when ckpt died: one more.
    let attempts: Vec<u64> = stored.values().map(|(_, n)| *n).collect();
    assert_eq!(attempts, [1, 2, 2], "{stored:?}");
}

/// The happy path on a server store: every item once, in batches.
fn batches_on(sb: &Sandbox, url: &str) {
    let all = items("s", 20);
    let file = sb.write_items("items.txt", &all);
    let out = sb
        .ckpt_bare()
        .args(["--store", url, "run", "--job", "P", "--items"])
        .arg(&file)
        .args(["-j", "2", "-n", "3", "--", "sh", "-c", LOG_ARGS, "sh"])
        .run();
    out.success();
    let (sizes, args) = invocations(sb);
    assert!(sizes.iter().all(|&n| (1..=3).contains(&n)), "{sizes:?}");
    assert!(sizes.len() < 20, "items were batched: {sizes:?}");
    let mut sorted = args.clone();
    sorted.sort();
    let mut expected = all.clone();
    expected.sort();
    assert_eq!(sorted, expected, "each item once");
    let status = sb
        .ckpt_bare()
        .args(["--store", url, "status", "P", "--json"])
        .run();
    status.success();
    let status = status.json();
    assert_eq!(status["status"], "completed");
    assert_eq!(item_counts(&status), (0, 0, 20, 0, 0));
}

#[test]
fn batches_on_postgres() {
    let Some(pg) = PgSchema::new("batch") else {
        return;
    };
    batches_on(&Sandbox::new(), &pg.url());
}

#[test]
fn batches_on_redis() {
    let Some(prefix) = RedisPrefix::new("batch") else {
        return;
    };
    batches_on(&Sandbox::new(), &prefix.url());
}

/// `--dry-run -n N`: one line per batch of up to N items not yet done, in
/// input order, each as its command would run; nothing changes.
#[test]
fn dry_run_prints_one_line_per_batch() {
    let sb = Sandbox::new();
    let first = sb.write_items("first.txt", &["b".into(), "bad".into()]);
    sb.ckpt()
        .args(["run", "--job", "D", "--retries", "0", "-q", "--items"])
        .arg(&first)
        .args(["--", "sh", "-c", r#"[ "$0" != bad ]"#])
        .run()
        .code(1);
    let before = sb.dump();
    // b is completed and bad is dead: skipped; a repeated key runs once.
    let file = sb.write("items.txt", "a\nb\nit's\nc\nbad\nd\na\ne\n");
    let out = sb
        .ckpt()
        .args([
            "run",
            "--job",
            "D",
            "-j",
            "2",
            "--dry-run",
            "-n",
            "2",
            "--items",
        ])
        .arg(&file)
        .args(["--", "echo", "{%}", "x{}", "{#}"])
        .run();
    out.success();
    assert_eq!(
        out.stdout,
        "echo 1 xa 'xit'\\''s' 1 3\n\
         echo 2 xc xd 4 6\n\
         echo 1 xe 8\n"
    );
    assert!(
        out.stderr
            .contains("3 command(s) would run for 5 item(s), up to 2 a command"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("skipped 1 completed and 1 dead"),
        "{}",
        out.stderr
    );
    assert_eq!(sb.dump(), before, "--dry-run changed the store");
    // Without a replacement string the batch's items are appended, as a
    // run appends them.
    let out = sb
        .ckpt()
        .args(["run", "--job", "D", "--dry-run", "-n", "10", "--items"])
        .arg(&file)
        .args(["--", "echo"])
        .run();
    out.success();
    assert_eq!(out.stdout, "echo a 'it'\\''s' c d e\n");
}

#[test]
fn results_refuse_batches_and_creates_nothing() {
    let sb = Sandbox::new();
    let file = sb.write_items("items.txt", &["a".into()]);
    let out = sb
        .ckpt()
        .args(["run", "--job", "R", "-n", "2", "--results"])
        .arg(sb.join("out"))
        .arg("--items")
        .arg(&file)
        .args(["--", "true"])
        .run();
    assert!(out.error(2).contains("--results"), "{}", out.stderr);
    assert!(!sb.join("out").exists());
    assert!(!sb.db().exists(), "no store for a refused run");
}

/// `--tag` with `-n`: a batch's lines carry all its items.
#[test]
fn tag_names_every_item_of_a_batch() {
    let sb = Sandbox::new();
    let file = sb.write_items("items.txt", &["a".into(), "b".into()]);
    let out = sb
        .ckpt()
        .args(["run", "--job", "T", "-n", "2", "--tag", "--items"])
        .arg(&file)
        .args(["--", "echo", "hi"])
        .run();
    out.success();
    assert_eq!(out.stdout, "a b\thi a b\n", "{}", out.stderr);
}

/// A batch that fails while the run is stopping cannot be split (a stopping
/// run starts nothing new) and cannot say which item was bad: every item
/// is given back uncharged, and the rerun splits it, so only the bad item
/// dies, even with `--no-retry-exit`.
#[test]
fn a_batch_that_fails_while_the_run_stops_is_given_back_whole() {
    let sb = Sandbox::new();
    let all: Vec<String> = ["a", "bad", "c"].map(String::from).into();
    let file = sb.write_items("items.txt", &all);
    let script = r#"echo "$#" "$@" >> log
touch started
while [ ! -e go ]; do sleep 0.01; done
for a in "$@"; do [ "$a" = bad ] && exit 3; done
exit 0"#;
    let run = || {
        sb.ckpt()
            .args(["run", "--job", "B", "--items"])
            .arg(&file)
            .args(["-n", "3", "--no-retry-exit", "3"])
            .args(["--", "sh", "-c", script, "sh"])
    };
    let running = run().start();
    wait_until(Duration::from_secs(30), "the batch to start", || {
        sb.join("started").exists()
    });
    running.signal(15);
    wait_until(Duration::from_secs(30), "ckpt to take the signal", || {
        running.stderr_so_far().contains("SIGTERM received")
    });
    sb.write("go", "");
    let out = running.wait(Duration::from_secs(30));
    out.code(143);
    let stopped = stored(&sb, "B");
    for item in &all {
        assert_eq!(stopped[item], ("pending".into(), 0), "{stopped:?}");
    }
    assert_eq!(invocations(&sb).0, [3], "not run alone while stopping");

    run().run().code(1);
    let done = stored(&sb, "B");
    assert_eq!(done["bad"], ("dead".into(), 1));
    assert_eq!(done["a"], ("completed".into(), 1));
    assert_eq!(done["c"], ("completed".into(), 1));
    assert_eq!(invocations(&sb).0, [3, 3, 1, 1, 1], "the rerun split it");
}

/// A batch whose command line would not fit what `exec` takes (here
/// `CKPT_ITEM`, one string, past Linux's 128 KiB for one) runs as a few
/// commands of as many items as fit, as `xargs` sizes its commands: not
/// refused whole and then split down to one item a command.
#[test]
fn a_batch_too_big_for_one_command_line_runs_as_a_few_commands() {
    let sb = Sandbox::new();
    // About 150 KiB of items.
    let keys: Vec<String> = (0..3000)
        .map(|i| format!("/data/exports/2024/customer-{i:06}/part-{i:06}.csv"))
        .collect();
    let file = sb.write_items("items.txt", &keys);
    let run = |extra: &[&str]| {
        sb.ckpt()
            .args(["run", "--job", "B", "-n", "3000", "-j", "1", "--items"])
            .arg(&file)
            .args(extra)
            .args(["--", "sh", "-c"])
            .arg("echo $# >> counts; printf '%s\\n' \"$@\" >> ran.log")
            .arg("sh")
            .run()
    };
    // The dry run cuts the batch as the run does.
    let dry = run(&["--dry-run"]);
    dry.success();
    let out = run(&[]);
    out.success();
    assert!(!out.stderr.contains("batch_split"), "{}", out.stderr);
    let sizes: Vec<usize> = sb
        .lines("counts")
        .iter()
        .map(|n| n.parse().unwrap())
        .collect();
    assert!(
        (2..=4).contains(&sizes.len()),
        "commands of {sizes:?} items"
    );
    let dry_sizes: Vec<usize> = dry
        .stdout
        .lines()
        .map(|l| l.matches("/data/exports/").count())
        .collect();
    assert_eq!(dry_sizes, sizes, "the dry run's commands");
    let ran = sb.lines("ran.log");
    assert_eq!(ran, keys, "each item once, in order");
    assert_eq!(item_counts(&sb.status("B")), (0, 0, 3000, 0, 0));
}

/// `--results` keeps output per item, which one command for many cannot
/// give: `-n` with it is refused before anything is touched, by a dry run
/// too (it shows only a run that can happen).
#[test]
fn results_with_batches_is_refused_by_the_run_and_the_dry_run() {
    let sb = Sandbox::new();
    let file = sb.write_items("items.txt", &items("k", 3));
    for dry in [true, false] {
        let line = sb
            .ckpt()
            .args([
                "run",
                "--job",
                "R",
                "-n",
                "2",
                "--results",
                "res",
                "--items",
            ])
            .arg(&file)
            .args(dry.then_some("--dry-run"))
            .args(["--", "echo"])
            .run()
            .error(2);
        assert!(
            line.contains("--results keeps each item's output: it cannot be used with -n"),
            "dry run {dry}: {line}"
        );
    }
    assert!(!sb.db().exists(), "no store was created");
    assert!(!sb.join("res").exists(), "no results directory was made");
}
