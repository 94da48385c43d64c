//! Progress of `ckpt run` when stderr is not a terminal: a plain line per
//! interval (`--progress-interval`, hidden, for tests), counting what
//! earlier runs completed; nothing with `--quiet`.

use std::path::PathBuf;
use std::time::Duration;

use crate::util::{items, wait_until, Running, Sandbox};

/// Items named `old…` finish at once; the others log their start in
/// `started` and wait for the file `go`.
const SCRIPT: &str = r#"case "$0" in
  old*) ;;
  *) echo "$0" >> started; while [ ! -e go ]; do sleep 0.01; done ;;
esac"#;

fn run(sb: &Sandbox, file: &PathBuf, extra: &[&str]) -> crate::util::Ckpt {
    sb.ckpt()
        .args(["run", "--job", "J", "--items"])
        .arg(file)
        .args(["-j", "2"])
        .args(extra)
        .args(["--", "sh", "-c", SCRIPT])
}

fn progress_lines(stderr: &str) -> Vec<String> {
    stderr
        .lines()
        .filter(|l| l.starts_with("ckpt: J: ") && l.contains(" done ("))
        .map(str::to_string)
        .collect()
}

/// The first run completes the 30 `old` items; the items file then gains
/// 10 new ones, which wait for `go`.
fn resumable_job(sb: &Sandbox) -> PathBuf {
    let old = items("old", 30);
    let first = sb.write_items("first.txt", &old);
    run(sb, &first, &[]).run().success();
    let mut all = old;
    all.extend(items("new", 10));
    sb.write_items("items.txt", &all)
}

fn wait_for_lines(run: &Running, n: usize) {
    wait_until(Duration::from_secs(30), "progress lines", || {
        progress_lines(&run.stderr_so_far()).len() >= n
    });
}

#[test]
fn progress_lines_count_what_earlier_runs_completed() {
    let sb = Sandbox::new();
    let file = resumable_job(&sb);

    let running = run(&sb, &file, &["--progress-interval", "50ms"]).start();
    wait_for_lines(&running, 3);
    // None of the new items can finish before `go`: the job stands at the
    // first run's 30 of 40.
    let lines = progress_lines(&running.stderr_so_far());
    for line in &lines {
        assert!(
            line.starts_with("ckpt: J: 30/40 done (75.0%), "),
            "progress counts the earlier run: {line}"
        );
        assert!(
            line.contains(" items/s, eta ") && line.ends_with(", 0 dead, 0 failed attempts"),
            "{line}"
        );
    }
    sb.write("go", "");
    let out = running.wait(Duration::from_secs(60));
    out.success();
    assert!(
        out.stderr.contains("completed: 40 items, 10 run now"),
        "{}",
        out.stderr
    );
}

#[test]
fn quiet_prints_no_progress_and_no_summary() {
    let loud = Sandbox::new();
    let quiet = Sandbox::new();
    let loud_file = resumable_job(&loud);
    let quiet_file = resumable_job(&quiet);

    let interval = ["--progress-interval", "20ms"];
    let loud_run = run(&loud, &loud_file, &interval).start();
    let quiet_run = run(&quiet, &quiet_file, &[&interval[..], &["--quiet"]].concat()).start();
    // Once the quiet run is running items, give it the time in which the
    // loud one prints 3 more lines.
    wait_until(
        Duration::from_secs(30),
        "the quiet run to start items",
        || quiet.lines("started").len() >= 2,
    );
    let before = progress_lines(&loud_run.stderr_so_far()).len();
    wait_for_lines(&loud_run, before + 3);
    quiet.write("go", "");
    loud.write("go", "");
    let out = quiet_run.wait(Duration::from_secs(60));
    out.success();
    assert_eq!(out.stderr, "", "--quiet printed something");
    loud_run.wait(Duration::from_secs(60)).success();

    // Errors still reach stderr with --quiet.
    let bad = quiet.write_items("bad.txt", &["broken".to_string()]);
    let out = quiet
        .ckpt()
        .args(["run", "--job", "B", "--items"])
        .arg(&bad)
        .args(["--retries", "0", "--quiet", "--", "false"])
        .run();
    out.code(1);
    assert!(out.stderr.contains("1 dead item"), "{}", out.stderr);
    assert!(progress_lines(&out.stderr).is_empty());
}

/// On a terminal the bar shares the screen with the commands' output: each
/// line a command prints stays on the screen, whole, on a row of its own,
/// neither erased by the bar's next redraw nor glued to the bar, and no
/// stale copy of the bar is left among them.
#[test]
fn the_bar_on_a_terminal_neither_erases_nor_garbles_the_output() {
    let sb = Sandbox::new();
    let file = sb.write_items("items.txt", &items("k", 15));
    let (master, slave) = pty(80, 100);
    let slave_out = slave.try_clone().unwrap();
    let mut child = std::process::Command::new(crate::util::BIN)
        .current_dir(sb.path())
        .env_remove("RUST_LOG")
        .args(["--store", &sb.store_url(), "run", "--job", "J", "--items"])
        .arg(&file)
        .args(["--", "sh", "-c", "echo line-$1; sleep 0.12", "sh"])
        .stdin(std::process::Stdio::null())
        .stdout(slave_out)
        .stderr(slave)
        .spawn()
        .unwrap();
    // Read as it comes (a full pty would block ckpt), until the last
    // holder of the terminal's other end is gone.
    let reader = std::thread::spawn(move || {
        let mut master = std::fs::File::from(master);
        let mut bytes = Vec::new();
        let mut buf = [0; 4096];
        while let Ok(n @ 1..) = std::io::Read::read(&mut master, &mut buf) {
            bytes.extend_from_slice(&buf[..n]);
        }
        bytes
    });
    assert!(child.wait().unwrap().success());
    let screen = Screen::render(&String::from_utf8_lossy(&reader.join().unwrap()), 80);
    // The bar is cleared at the end: a copy left behind is a redraw that
    // lost track of its row.
    let stale: Vec<&String> = screen.iter().filter(|r| r.contains("ckpt: J: [")).collect();
    assert!(
        stale.is_empty(),
        "stale bars: {stale:#?}\n{}",
        screen.join("\n")
    );
    for k in items("k", 15) {
        let line = format!("line-{k}");
        assert!(
            screen.contains(&line),
            "{line} is not on a row of its own:\n{}",
            screen.join("\n")
        );
    }
}

/// A pseudo-terminal of `cols` by `rows`: (master, slave).
fn pty(cols: u16, rows: u16) -> (std::os::fd::OwnedFd, std::os::fd::OwnedFd) {
    use std::os::fd::FromRawFd;
    let (mut master, mut slave) = (0, 0);
    let size = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: openpty writes two fds into the given ints; the name and
    // termios pointers may be null.
    let r = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            &size,
        )
    };
    assert_eq!(r, 0, "openpty: {}", std::io::Error::last_os_error());
    // Close-on-exec, so that a child holds only the end it is given: a
    // master inherited by ckpt would keep the terminal from hanging up.
    for fd in [master, slave] {
        // SAFETY: fcntl on a descriptor just opened, owned by nobody else.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    // SAFETY: both fds were just opened, and nothing else owns them.
    unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) }
}

use std::os::fd::OwnedFd;

/// The rows a terminal of `width` columns shows after `text`: printable
/// characters (wrapping at the width), CR, LF, and the CSI sequences a
/// progress bar draws with (cursor up/down/column, erase line, erase
/// below; colours and cursor visibility ignored). Rows are kept, never
/// scrolled away.
struct Screen;

impl Screen {
    fn render(text: &str, width: usize) -> Vec<String> {
        let mut rows: Vec<Vec<char>> = vec![Vec::new()];
        let (mut row, mut col) = (0usize, 0usize);
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            while rows.len() <= row {
                rows.push(Vec::new());
            }
            match c {
                '\r' => col = 0,
                '\n' => row += 1,
                '\u{1b}' if chars.peek() == Some(&'[') => {
                    chars.next();
                    let mut params = String::new();
                    let mut end = ' ';
                    for c in chars.by_ref() {
                        if c.is_ascii_alphabetic() {
                            end = c;
                            break;
                        }
                        params.push(c);
                    }
                    let n = params.trim_start_matches('?').parse::<usize>().ok();
                    let line = &mut rows[row];
                    match end {
                        'A' => row = row.saturating_sub(n.unwrap_or(1)),
                        'B' => row += n.unwrap_or(1),
                        'G' => col = n.unwrap_or(1).saturating_sub(1),
                        'K' if n == Some(2) => line.clear(),
                        'K' => line.truncate(col),
                        'J' => {
                            line.truncate(col);
                            rows.truncate(row + 1);
                        }
                        _ => {}
                    }
                }
                c if c.is_control() => {}
                c => {
                    if col >= width {
                        row += 1;
                        col = 0;
                        while rows.len() <= row {
                            rows.push(Vec::new());
                        }
                    }
                    let line = &mut rows[row];
                    if line.len() <= col {
                        line.resize(col + 1, ' ');
                    }
                    line[col] = c;
                    col += 1;
                }
            }
        }
        rows.into_iter()
            .map(|r| r.into_iter().collect::<String>().trim_end().to_string())
            .collect()
    }
}

/// A long items file takes a while to add to the store before anything
/// runs: lines say how far that got, before the run's own progress lines;
/// `--quiet` prints none.
#[test]
fn adding_a_long_items_file_shows_how_far_it_got() {
    let sb = Sandbox::new();
    let n = 50_000;
    let file = sb.write_items("items.txt", &items("i", n));
    fn args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
        let mut all = vec!["run", "--job", "J", "-j", "2", "-n", "5000"];
        all.extend(extra);
        all
    }
    let out = sb
        .ckpt()
        .args(args(&["--progress-interval", "10ms", "--items"]))
        .arg(&file)
        .args(["--", "true"])
        .run();
    out.success();
    let adding: Vec<(u64, u64)> = out
        .stderr
        .lines()
        .filter_map(|l| l.strip_prefix("ckpt: J: adding items to the store: "))
        .map(|rest| {
            let (added, rest) = rest.split_once(" of ").expect("N of TOTAL");
            let total = rest.split_once(' ').expect("TOTAL (P%)").0;
            (added.parse().unwrap(), total.parse().unwrap())
        })
        .collect();
    assert!(!adding.is_empty(), "{}", out.stderr);
    assert!(adding
        .iter()
        .all(|&(added, total)| added <= total && total == n as u64));
    assert!(adding.windows(2).all(|w| w[0].0 <= w[1].0), "{adding:?}");
    let first_done = out.stderr.find(" done (").unwrap_or(out.stderr.len());
    let last_adding = out.stderr.rfind("adding items").unwrap();
    assert!(last_adding < first_done, "{}", out.stderr);

    let sb = Sandbox::new();
    let file = sb.write_items("items.txt", &items("i", n));
    let out = sb
        .ckpt()
        .args(args(&["--progress-interval", "10ms", "-q", "--items"]))
        .arg(&file)
        .args(["--", "true"])
        .run();
    out.success();
    assert_eq!(out.stderr, "", "--quiet");
}

/// A terminal that hangs up (an ssh session dropped, the run disowned)
/// fails every later write with EIO. Output a person would have read is
/// dropped; the items whose commands finished are completed, in every
/// output mode, even when a command's first output comes after the
/// hangup; and the run ends well (`--json`'s summary is dropped too).
#[test]
fn a_hung_up_terminal_drops_the_output_and_completes_the_items() {
    for mode in ["--line-buffer", "--group", "--tag", "--json"] {
        let sb = Sandbox::new();
        let file = sb.write_items("items.txt", &items("i", 4));
        let (master, slave) = pty(80, 24);
        let run = sb
            .ckpt()
            .args(["run", "--job", "J", "-j", "2", mode, "--items"])
            .arg(&file)
            .args([
                "--",
                "sh",
                "-c",
                r#"touch "started-$0"; while [ ! -e go ]; do sleep 0.01; done; echo "done $0""#,
            ])
            .stdout_to(std::fs::File::from(slave))
            .start();
        wait_until(Duration::from_secs(30), "two commands to start", || {
            sb.join("started-i1").exists() && sb.join("started-i2").exists()
        });
        drop(master); // the terminal hangs up: writes to it now fail (EIO)
        sb.write("go", "");
        let out = run.wait(Duration::from_secs(60));
        out.code(0);
        assert_eq!(
            crate::util::item_counts(&sb.status("J")),
            (0, 0, 4, 0, 0),
            "{mode}: {}",
            out.stderr
        );
    }
}

/// A run that holds no item and waits for one to become due (here a
/// retry an hour away) says so in its progress, rather than looking hung,
/// and its eta is no sooner.
#[test]
fn a_run_waiting_for_a_retry_says_when_it_is_due() {
    let sb = Sandbox::new();
    let file = sb.write_items("items.txt", &["bad".to_string(), "ok".to_string()]);
    let running = sb
        .ckpt()
        .args(["run", "--job", "J", "--items"])
        .arg(&file)
        .args([
            "--retries",
            "1",
            "--backoff",
            "1h",
            "--progress-interval",
            "50ms",
        ])
        .args(["--", "sh", "-c", "[ $0 = ok ]"])
        .start();
    wait_until(Duration::from_secs(30), "a line saying it waits", || {
        progress_lines(&running.stderr_so_far())
            .iter()
            .any(|l| l.contains(", waiting: next item ready in "))
    });
    let lines = progress_lines(&running.stderr_so_far());
    let line = lines.iter().find(|l| l.contains(", waiting: ")).unwrap();
    assert!(
        line.starts_with("ckpt: J: 1/2 done (50.0%), ")
            && line.contains(", 1 failed attempts, waiting: next item ready in "),
        "{line}"
    );
    // Minutes in "1h07m" or "54m45s" (the backoff is an hour, give or
    // take 20 % jitter).
    let minutes = |after: &str| -> u64 {
        let text = line.split(after).nth(1).unwrap();
        match text.split_once('h') {
            Some((h, rest)) => h.parse::<u64>().unwrap() * 60 + rest[..2].parse::<u64>().unwrap(),
            None => text.split_once('m').expect(line).0.parse().unwrap(),
        }
    };
    let due = minutes("ready in ");
    assert!((47..=73).contains(&due), "{line}");
    assert!(minutes("eta ") >= due, "{line}");
    running.signal(libc::SIGTERM);
    running.wait(Duration::from_secs(30)).code(143);
}
