//! `ckpt run`'s output modes: whole lines by default, `--group`, `--tag`,
//! `--ungroup`. Commands write many lines at once, each line in two
//! `write`s, so lines written straight through would mix mid-line.

use std::collections::BTreeMap;

use crate::util::{items, stored_items, Sandbox};

const LINES: usize = 300;

/// Writes `LINES` numbered lines to stdout and to stderr, each line in two
/// writes (the shell's `printf` writes at once), with padding so that a
/// round of lines is bigger than a pipe's atomic write. Half-way, item `kN`
/// waits (10 s at most) until the 4 items of its round of 4 (`k1`-`k4`,
/// `k5`-`k8`) are half-way too: the 4 running at once do write at once,
/// however the machine schedules them (a command may write all its lines
/// within one time slice).
const CHATTY: &str = r#"pad=$(printf '%0150d' 0)
round=$(( (${1#k} + 3) / 4 * 4 ))
i=1
while [ $i -le LINES ]; do
  printf 'out %s %s ' "$1" $i; printf '%s end\n' "$pad"
  printf 'err %s %s ' "$1" $i >&2; printf '%s end\n' "$pad" >&2
  if [ $i -eq HALF ]; then
    touch "half.$1"; waited=0
    while [ "$(ls half.* | wc -l)" -lt $round ] && [ $waited -lt 1000 ]; do
      sleep 0.01; waited=$((waited + 1))
    done
  fi
  i=$((i + 1))
done"#;

fn chatty() -> String {
    CHATTY
        .replace("LINES", &LINES.to_string())
        .replace("HALF", &(LINES / 2).to_string())
}

/// Runs 8 chatty items 4 at a time with `flags`; returns stdout and stderr.
fn run_chatty(flags: &[&str]) -> (String, String) {
    let sb = Sandbox::new();
    let file = sb.write_items("items.txt", &items("k", 8));
    let out = sb
        .ckpt()
        .args(["run", "--job", "J", "-q", "-j", "4", "--items"])
        .arg(&file)
        .args(flags)
        .args(["--", "sh", "-c", &chatty(), "_"])
        .run();
    out.success();
    (out.stdout.clone(), out.stderr.clone())
}

/// Checks that every line of `text` is one whole line of `stream` as a
/// command wrote it (with `tag`, after its item and a TAB), and that each
/// item's lines all came, in order. Returns the items in order of lines.
#[track_caller]
fn whole_lines(text: &str, stream: &str, tag: bool) -> Vec<String> {
    let pad = format!("{:0150}", 0);
    let mut next: BTreeMap<String, usize> = BTreeMap::new();
    let mut order = Vec::new();
    for line in text.lines() {
        let body = if tag {
            let (t, body) = line
                .split_once('\t')
                .unwrap_or_else(|| panic!("untagged line {line:?}"));
            assert!(
                body.starts_with(&format!("{stream} {t} ")),
                "tag {t:?} on another item's line {line:?}"
            );
            body
        } else {
            line
        };
        let words: Vec<&str> = body.split(' ').collect();
        assert!(
            words.len() == 5 && words[0] == stream && words[3] == pad && words[4] == "end",
            "a line not whole: {line:?}"
        );
        let n: usize = words[2].parse().expect("a line number");
        let seen = next.entry(words[1].to_string()).or_insert(1);
        assert_eq!(n, *seen, "{stream} lines of {} out of order", words[1]);
        *seen += 1;
        order.push(words[1].to_string());
    }
    assert_eq!(next.len(), 8, "{stream}: lines of every item");
    assert!(
        next.values().all(|&n| n == LINES + 1),
        "{stream}: every line of every item: {next:?}"
    );
    order
}

#[test]
fn by_default_lines_of_different_items_never_mix() {
    let (stdout, stderr) = run_chatty(&[]);
    let order = whole_lines(&stdout, "out", false);
    whole_lines(&stderr, "err", false);
    // Live, not grouped: with 4 at a time, items' lines alternate. Each
    // round of 4 writes its first halves before any second half, which
    // takes 6 switches at the least; item by item would take 7 in all.
    let runs = order.windows(2).filter(|w| w[0] != w[1]).count();
    assert!(runs >= 12, "lines came item by item ({runs} switches)");
}

#[test]
fn tag_puts_the_item_and_a_tab_before_each_line() {
    let (stdout, stderr) = run_chatty(&["--tag"]);
    whole_lines(&stdout, "out", true);
    whole_lines(&stderr, "err", true);
}

#[test]
fn group_writes_each_items_output_together() {
    for flags in [&["--group"][..], &["--group", "--tag"]] {
        let tag = flags.len() == 2;
        let (stdout, stderr) = run_chatty(flags);
        for (text, stream) in [(&stdout, "out"), (&stderr, "err")] {
            let order = whole_lines(text, stream, tag);
            let switches = order.windows(2).filter(|w| w[0] != w[1]).count();
            assert_eq!(switches, 7, "{flags:?}: each item's {stream} in one piece");
        }
    }
}

#[test]
fn a_last_line_without_newline_and_a_huge_line_come_whole() {
    let sb = Sandbox::new();
    let file = sb.write_items("items.txt", &items("k", 4));
    // 300 KiB without a newline (beyond the line cap, written in pieces),
    // then a newline, then a last line that has none.
    let script = r#"head -c 307200 /dev/zero | tr '\0' x; printf '\nlast of %s' "$1""#;
    for (i, flags) in [&[][..], &["--group"], &["--tag"]].into_iter().enumerate() {
        let out = sb
            .ckpt()
            .args(["run", "--job", &format!("J{i}"), "-q"])
            .args(["-j", "4", "--items"])
            .arg(&file)
            .args(flags)
            .args(["--", "sh", "-c", script, "_"])
            .run();
        out.success();
        let xs = out.stdout.bytes().filter(|&b| b == b'x').count();
        assert_eq!(xs, 4 * 307_200, "{flags:?}: every byte of the long lines");
        for k in items("k", 4) {
            assert!(
                out.stdout.contains(&format!("last of {k}")),
                "{flags:?}: the unterminated last line of {k} in {:?}",
                out.stdout.replace('x', "")
            );
        }
    }
}

#[test]
fn ungroup_passes_output_straight_through() {
    let sb = Sandbox::new();
    let file = sb.write_items("items.txt", &items("k", 3));
    let out = sb
        .ckpt()
        .args(["run", "--job", "J", "-q", "-u", "--items"])
        .arg(&file)
        .args([
            "--",
            "sh",
            "-c",
            r#"printf 'raw %s' "$1"; echo " done" >&2"#,
            "_",
        ])
        .run();
    out.success();
    for k in items("k", 3) {
        assert!(out.stdout.contains(&format!("raw {k}")), "{}", out.stdout);
    }
    assert_eq!(out.stderr.matches(" done\n").count(), 3, "{}", out.stderr);
    let bad = Sandbox::new()
        .ckpt()
        .args(["run", "--job", "J", "--tag", "--ungroup", "--", "true"])
        .run();
    assert_eq!(
        bad.code, 2,
        "--tag with --ungroup is refused: {}",
        bad.stderr
    );
}

#[test]
fn results_keeps_each_items_full_output_in_files_named_safely() {
    let sb = Sandbox::new();
    let long = "y".repeat(300);
    let keys = vec![
        "plain.txt".to_string(),
        "a/b c".to_string(),
        "..".to_string(),
        "-n".to_string(),
        "100%".to_string(),
        "é\u{1b}[31m".to_string(),
        long.clone(),
    ];
    let file = sb.write_items("items.txt", &keys);
    let dir = sb.join("res");
    // Megabytes on stdout, no newline at the end of stderr.
    let script = r#"head -c 2000000 /dev/zero | tr '\0' z; printf 'err of %s' "$1" >&2"#;
    let out = sb
        .ckpt()
        .args(["run", "--job", "R", "-q", "-j", "4", "--tag", "--results"])
        .arg(&dir)
        .arg("--items")
        .arg(&file)
        .args(["--", "sh", "-c", script, "_"])
        .run();
    out.success();
    let expect = [
        "plain.txt",
        "a%2Fb%20c",
        "%2E.",
        "%2Dn",
        "100%25",
        "%C3%A9%1B%5B31m",
    ];
    for (key, name) in keys.iter().zip(expect) {
        let at = dir.join(name);
        let stdout = std::fs::read(at.join("stdout")).unwrap_or_else(|e| panic!("{at:?}: {e}"));
        assert_eq!(stdout.len(), 2_000_000, "{key:?}: all of stdout, untagged");
        assert!(stdout.iter().all(|&b| b == b'z'));
        let stderr = std::fs::read_to_string(at.join("stderr")).unwrap();
        assert_eq!(stderr, format!("err of {key}"));
    }
    // The long item: its start, then a hash; one directory, its own.
    let names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names.len(), keys.len(), "{names:?}");
    let hashed = names
        .iter()
        .find(|n| n.starts_with("yyy"))
        .expect("the long item");
    assert!(hashed.len() <= 200 && hashed.contains('~'), "{hashed}");
    let stderr = std::fs::read_to_string(dir.join(hashed).join("stderr")).unwrap();
    assert_eq!(stderr, format!("err of {long}"));
}

/// `ckpt run … | head -1`: when ckpt's stdout (or stderr) is closed, the
/// commands run on, their output dropped, and every outcome is committed:
/// nothing runs twice on the rerun.
#[test]
fn a_closed_stdout_or_stderr_loses_no_outcome() {
    use std::process::{Command, Stdio};
    let sb = Sandbox::new();
    let file = sb.write_items("items.txt", &items("i", 20));
    for (job, mode, close_stderr) in [
        ("L", None, false),
        ("G", Some("--group"), false),
        ("T", Some("--tag"), false),
        ("E", None, true),
    ] {
        let mut cmd = Command::new(crate::util::BIN);
        cmd.current_dir(sb.path())
            .env_remove("RUST_LOG")
            .args(["--store", &sb.store_url(), "run", "--job", job, "--items"])
            .arg(&file)
            .args(mode)
            .args(["--", "sh", "-c"])
            .arg(format!(
                "echo out {{}}; echo err {{}} >&2; echo {{}} >> {job}.log; sleep 0.01"
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        // The reader goes away before reading anything.
        if close_stderr {
            drop(child.stderr.take());
        } else {
            drop(child.stdout.take());
        }
        let status = child.wait_with_output().unwrap().status;
        assert_eq!(status.code(), Some(0), "{job}: {status:?}");
        let status = sb.status(job);
        assert_eq!(status["items"]["completed"], 20, "{job}: {status}");
        assert_eq!(
            sb.lines(&format!("{job}.log")).len(),
            20,
            "{job}: each ran once"
        );
    }
}

/// A stdout that stops taking output (a full disk: `/dev/full`) stops the
/// run with exit 4, and the item whose output was lost goes back to
/// pending uncharged, as with `--results`: completed, its output would be
/// lost for good. (A reader that goes away is not that: see above.)
#[test]
fn a_stdout_that_stops_taking_output_stops_the_run_and_keeps_the_item_pending() {
    for (flags, shown) in [
        (&[][..], "out k1\nout k2\nout k3\n"),
        (&["--group"], "out k1\nout k2\nout k3\n"),
        (&["--tag"], "k1\tout k1\nk2\tout k2\nk3\tout k3\n"),
    ] {
        let sb = Sandbox::new();
        let file = sb.write_items("items.txt", &items("k", 3));
        let run = |stdout: std::fs::File| {
            sb.ckpt()
                .args(["run", "--job", "S", "-j", "1", "--items"])
                .arg(&file)
                .args(flags)
                .args(["--", "sh", "-c"])
                .arg("echo \"$CKPT_ITEM\" >> ran.log; echo \"out $CKPT_ITEM\"")
                .stdout_to(stdout)
                .run()
        };
        let full = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .expect("/dev/full");
        let out = run(full);
        out.code(4);
        let last = out.stderr.lines().last().unwrap_or_default();
        assert!(
            last.starts_with(
                "ckpt: error: cannot write the output of item k1 to stdout: No space left on device"
            ) && last.contains("0 completed now"),
            "{flags:?}: {}",
            out.stderr
        );
        assert_eq!(sb.lines("ran.log"), ["k1"], "{flags:?}");
        for (key, item) in stored_items(&sb, "S") {
            assert_eq!(item["status"], "pending", "{flags:?} {key}: {item}");
            assert_eq!(item["attempts"], 0, "{flags:?} {key}: {item}");
        }
        // Room again: the same command finishes, and stdout holds it all.
        let path = sb.join("out.txt");
        run(std::fs::File::create(&path).unwrap()).success();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), shown, "{flags:?}");
        assert_eq!(sb.lines("ran.log"), ["k1", "k1", "k2", "k3"], "{flags:?}");
    }
}

/// `--group` holds an item's output past 1 MiB in a temporary file; one
/// that stops growing partway (here at a file size limit, as on a full
/// disk) loses nothing: what it took comes first, then the rest, held in
/// memory.
#[test]
fn group_output_survives_a_temporary_file_that_fills_up() {
    let sb = Sandbox::new();
    let file = sb.write_items("items.txt", &items("k", 1));
    // The second MiB spilled meets the 1.5 MiB limit halfway. SIGXFSZ is
    // ignored, so the write fails (EFBIG) instead of killing ckpt.
    let limit = [
        "sh",
        "-c",
        "trap '' XFSZ; exec prlimit --fsize=1572864 -- \"$@\"",
        "sh",
    ];
    let out = sb
        .ckpt_via(&limit)
        .arg("--store")
        .arg(sb.store_url())
        .args(["run", "--job", "G", "--group", "-q", "--items"])
        .arg(&file)
        .args(["--", "sh", "-c", "seq 1 600000", "sh"])
        .run();
    out.success();
    let expected: String = (1..=600_000).map(|i| format!("{i}\n")).collect();
    assert!(
        out.stdout == expected,
        "{} bytes of {}; starts {:?}",
        out.stdout.len(),
        expected.len(),
        &out.stdout[..out.stdout.len().min(20)]
    );
}

/// A `--results` that cannot hold files is refused before the store is
/// touched; one that stops holding them mid-run stops the run, charging
/// no attempt for the items whose command never ran.
#[test]
fn results_that_cannot_be_written_charge_no_attempt() {
    let sb = Sandbox::new();
    let file = sb.write_items("items.txt", &items("k", 5));
    sb.write("taken", "a file, not a directory");
    let line = sb
        .ckpt()
        .args(["run", "--job", "R", "--results"])
        .arg(sb.join("taken"))
        .arg("--items")
        .arg(&file)
        .args(["--", "sh", "-c", "echo ran >> ran.log"])
        .run()
        .error(2);
    assert!(line.contains("--results: cannot create files in"), "{line}");
    assert!(!sb.db().exists(), "the store was created");
    assert!(!sb.join("ran.log").exists(), "a command ran");

    // Item k3's directory cannot be made: a file is in its place.
    let dir = sb.join("res");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("k3"), "in the way").unwrap();
    let run = || {
        sb.ckpt()
            .args(["run", "--job", "R", "-j", "1", "--results"])
            .arg(&dir)
            .arg("--items")
            .arg(&file)
            .args(["--", "sh", "-c", "echo \"$CKPT_ITEM\" >> ran.log"])
            .run()
    };
    let out = run();
    out.code(4);
    let last = out.stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("ckpt: error: --results: cannot create the files of item k3:")
            && last.contains("2 completed now"),
        "{}",
        out.stderr
    );
    assert_eq!(sb.lines("ran.log"), ["k1", "k2"]);
    let items = stored_items(&sb, "R");
    for key in ["k3", "k4", "k5"] {
        assert_eq!(items[key]["status"], "pending", "{key}: {}", items[key]);
        assert_eq!(items[key]["attempts"], 0, "{key}: {}", items[key]);
    }
    // Fixed, the same command finishes the rest.
    std::fs::remove_file(dir.join("k3")).unwrap();
    run().success();
    assert_eq!(sb.lines("ran.log"), ["k1", "k2", "k3", "k4", "k5"]);
}

/// Output that `--results` cannot write (its disk full mid-run) stops the
/// run with exit 4, and the item whose output was lost goes back to
/// pending uncharged: completed, its partial files would stay so for good.
#[test]
fn results_that_stop_taking_output_stop_the_run_and_keep_the_item_pending() {
    let sb = Sandbox::new();
    let file = sb.write_items("items.txt", &items("k", 5));
    let dir = sb.join("res");
    // k3's stdout file is a full disk.
    std::fs::create_dir_all(dir.join("k3")).unwrap();
    std::os::unix::fs::symlink("/dev/full", dir.join("k3/stdout")).unwrap();
    let run = || {
        sb.ckpt()
            .args(["run", "--job", "R", "-j", "1", "--results"])
            .arg(&dir)
            .arg("--items")
            .arg(&file)
            .args([
                "--",
                "sh",
                "-c",
                "echo \"$CKPT_ITEM\" >> ran.log; echo \"out $CKPT_ITEM\"",
            ])
            .run()
    };
    let out = run();
    out.code(4);
    let last = out.stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("ckpt: error: --results: cannot write the output of item k3: stdout: No space left on device")
            && last.contains("2 completed now"),
        "{}",
        out.stderr
    );
    assert_eq!(sb.lines("ran.log"), ["k1", "k2", "k3"]);
    let items = stored_items(&sb, "R");
    for key in ["k3", "k4", "k5"] {
        assert_eq!(items[key]["status"], "pending", "{key}: {}", items[key]);
        assert_eq!(items[key]["attempts"], 0, "{key}: {}", items[key]);
    }
    // Room again: k3 runs again and its files hold its output.
    std::fs::remove_file(dir.join("k3/stdout")).unwrap();
    run().success();
    assert_eq!(sb.lines("ran.log"), ["k1", "k2", "k3", "k3", "k4", "k5"]);
    for key in ["k1", "k3", "k5"] {
        let stdout = std::fs::read_to_string(dir.join(key).join("stdout")).unwrap();
        assert_eq!(stdout, format!("out {key}\n"));
    }
}

/// A process that left the command's process group (`setsid`) and holds
/// its output pipes does not hold up the item: it is read for 1 s after
/// the group is gone, then let go. (Without that limit this run would
/// last the 300 s of the `sleep`, past `run`'s minute.)
#[test]
fn an_escaped_process_holding_the_pipes_does_not_hold_up_the_item() {
    if std::process::Command::new("setsid")
        .arg("true")
        .status()
        .is_err()
    {
        eprintln!("skipped: no setsid");
        return;
    }
    let sb = Sandbox::new();
    let file = sb.write_items("items.txt", &items("k", 2));
    let script = r#"echo "before $1"; setsid sleep 300 & echo $! >> pids; echo "after $1""#;
    let out = sb
        .ckpt()
        .args(["run", "--job", "J", "-q", "-j", "2", "--group", "--items"])
        .arg(&file)
        .args(["--", "sh", "-c", script, "_"])
        .run();
    for pid in sb.lines("pids") {
        // SAFETY: kill(2) has no memory-safety preconditions.
        unsafe { libc::kill(pid.trim().parse().unwrap(), libc::SIGKILL) };
    }
    out.success();
    for k in items("k", 2) {
        assert!(
            out.stdout.contains(&format!("before {k}\nafter {k}\n")),
            "{}",
            out.stdout
        );
    }
}
