//! Progress of `ckpt run` on stderr: a bar with rate and ETA on a terminal,
//! a plain line every few seconds otherwise, nothing with `--quiet`.
//!
//! The counts are the job's, not only this run's: the start position is
//! what the store held as completed when the run began (earlier runs, a
//! crashed one included) and the total is every item of the job, so a
//! resumed run shows its true overall progress. The rate and the ETA are
//! this run's.
//!
//! Before any of that, adding a long items file to the store takes a
//! while (about a second per million lines): [`Progress::adding`] shows how
//! far it got, so that a run of ten million items is not a silent minute.

use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ckpt::{ItemCounts, RunProgress, StopSignal};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Nothing.
    Quiet,
    /// An indicatif bar, redrawn a few times a second (stderr is a terminal).
    Bar,
    /// One line per interval.
    Lines(Duration),
}

/// What the job looked like when the run began.
#[derive(Debug, Clone)]
pub struct Start {
    pub job: String,
    pub counts: ItemCounts,
    /// Once stopped, the reports say that the run is stopping.
    pub stop: StopSignal,
}

/// The numbers one progress report shows.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// Completed items of the job, earlier runs included.
    pub done: u64,
    /// All items of the job.
    pub total: u64,
    /// Dead items of the job.
    pub dead: u64,
    /// Failed attempts in this run.
    pub failed: u64,
    /// Items completed per second by this run.
    pub rate: f64,
    /// Time left at this rate; `None` while the rate is unknown.
    pub eta: Option<Duration>,
    /// The run is stopping (waiting for its running commands).
    pub stopping: bool,
    /// The run holds no item and waits this long for the next to become
    /// due (a retry's backoff, another run's lease).
    pub waiting: Option<Duration>,
}

impl Snapshot {
    pub fn new(start: &Start, live: &RunProgress, elapsed: Duration) -> Snapshot {
        let stopping = start.stop.is_stopped();
        let waiting = live
            .waiting_until()
            .map(|until| until.saturating_duration_since(std::time::Instant::now()));
        let start = &start.counts;
        let total = start.total();
        let done = (start.completed + live.completed()).min(total);
        let dead = (start.dead + live.dead()).min(total - done);
        let secs = elapsed.as_secs_f64();
        let rate = if secs > 0.0 {
            live.completed() as f64 / secs
        } else {
            0.0
        };
        let left = total - done - dead;
        let eta = if left == 0 {
            Some(Duration::ZERO)
        } else if rate > 0.0 {
            // Not before the item it waits for is due.
            let at_rate = Duration::from_secs_f64(left as f64 / rate);
            Some(waiting.map_or(at_rate, |w| w.max(at_rate)))
        } else {
            None
        };
        Snapshot {
            done,
            total,
            dead,
            failed: live.failed(),
            rate,
            eta,
            stopping,
            waiting,
        }
    }

    fn percent(&self) -> f64 {
        if self.total == 0 {
            100.0
        } else {
            self.done as f64 * 100.0 / self.total as f64
        }
    }

    /// "56 items/s, eta 1m07s, 0 dead, 3 failed attempts[, stopping |
    /// , waiting: next item ready in 59m12s]"
    fn details(&self) -> String {
        let eta = self.eta.map_or_else(|| "unknown".to_string(), compact);
        let state = match (self.stopping, self.waiting) {
            (true, _) => ", stopping".to_string(),
            // Else a run that waits out a long backoff looks hung.
            (false, Some(left)) => format!(", waiting: next item ready in {}", compact(left)),
            (false, None) => String::new(),
        };
        format!(
            "{} items/s, eta {eta}, {} dead, {} failed attempts{state}",
            rate(self.rate),
            self.dead,
            self.failed,
        )
    }

    /// `ckpt: J: 1234/5000 done (24.7%), 56 items/s, eta 1m07s, 0 dead, 3 failed attempts`
    pub fn line(&self, job: &str) -> String {
        format!(
            "ckpt: {job}: {}/{} done ({:.1}%), {}",
            self.done,
            self.total,
            self.percent(),
            self.details()
        )
    }
}

fn rate(r: f64) -> String {
    if r >= 10.0 {
        format!("{r:.0}")
    } else {
        format!("{r:.1}")
    }
}

/// "45s", "1m07s", "2h03m".
pub fn compact(d: Duration) -> String {
    let s = d.as_secs_f64().round() as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
    }
}

/// The bar being shown, if any: log lines are printed around it.
static BAR: Mutex<Option<ProgressBar>> = Mutex::new(None);

fn current_bar() -> Option<ProgressBar> {
    BAR.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// The log writer: stderr, with the progress bar (if one is shown) hidden
/// while a log line is written, so the two never mix.
///
/// Write errors are swallowed: a log line that cannot be written (stderr on
/// a full disk, a closed pipe) has nowhere to be reported, and
/// `tracing-subscriber` reports a failed write with `eprintln!`, which
/// panics on the same broken stderr and would end a `ckpt run` whose
/// commands and commits were going fine.
#[derive(Debug, Clone, Copy, Default)]
pub struct LogWriter;

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LogWriter;

    fn make_writer(&'a self) -> LogWriter {
        LogWriter
    }
}

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_all(buf).map(|()| buf.len())
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        let _ = match current_bar() {
            Some(bar) => bar.suspend(|| io::stderr().write_all(buf)),
            None => io::stderr().write_all(buf),
        };
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        let _ = io::stderr().flush();
        Ok(())
    }
}

/// Runs `f`, which writes to a terminal when `on_terminal`, with the bar
/// (if one is shown) hidden meanwhile: a command's output printed under a
/// bar would otherwise be erased by its next redraw.
pub fn with_bar_hidden<T>(on_terminal: bool, f: impl FnOnce() -> T) -> T {
    if !on_terminal {
        return f();
    }
    match current_bar() {
        Some(bar) => bar.suspend(f),
        None => f(),
    }
}

/// A progress display running on its own thread until [`finish`](Progress::finish).
pub struct Progress {
    done: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

impl Progress {
    pub fn start(mode: Mode, start: Start, live: RunProgress) -> Progress {
        let began = Instant::now();
        let (for_line, for_bar) = ((start.clone(), live.clone()), start.clone());
        Progress::spawn(
            mode,
            Duration::ZERO,
            move || {
                let (start, live) = &for_line;
                Snapshot::new(start, live, began.elapsed()).line(&start.job)
            },
            move || new_bar(&for_bar),
            move |bar| {
                let snap = Snapshot::new(&start, &live, began.elapsed());
                bar.set_position(snap.done);
                bar.set_message(snap.details());
            },
        )
    }

    /// Shows the items added to the store so far (`added`, of `total`)
    /// while the run's items file is enqueued: on a terminal a bar, drawn
    /// once it has taken half a second; otherwise a line each interval.
    pub fn adding(mode: Mode, job: &str, total: u64, added: Arc<AtomicU64>) -> Progress {
        let prefix = format!("ckpt: {job}: adding items to the store");
        let (for_line, for_bar) = (Arc::clone(&added), prefix.clone());
        Progress::spawn(
            mode,
            // A short file is added before a bar is worth drawing.
            Duration::from_millis(500),
            move || {
                let n = for_line.load(Ordering::Relaxed);
                let percent = if total == 0 {
                    100.0
                } else {
                    n as f64 * 100.0 / total as f64
                };
                format!("{prefix}: {n} of {total} ({percent:.0}%)")
            },
            move || {
                // The bar takes what the terminal's width leaves, so the
                // line never wraps.
                let bar = styled_bar(total, "{prefix}: {pos}/{len} ({percent}%) [{wide_bar}]");
                bar.set_prefix(for_bar);
                bar
            },
            move |bar| bar.set_position(added.load(Ordering::Relaxed)),
        )
    }

    /// A display on its own thread: `line()` printed each interval, or on
    /// a terminal the bar `make_bar` draws (after `delay`), `update`d a
    /// few times a second and cleared when finished.
    fn spawn(
        mode: Mode,
        delay: Duration,
        mut line: impl FnMut() -> String + Send + 'static,
        make_bar: impl FnOnce() -> ProgressBar + Send + 'static,
        mut update: impl FnMut(&ProgressBar) + Send + 'static,
    ) -> Progress {
        let done = Arc::new((Mutex::new(false), Condvar::new()));
        let shared = Arc::clone(&done);
        let thread = match mode {
            Mode::Quiet => None,
            Mode::Lines(every) => Some(std::thread::spawn(move || {
                while !wait(&shared, every) {
                    errln!("{}", line());
                }
            })),
            Mode::Bar => Some(std::thread::spawn(move || {
                if !delay.is_zero() && wait(&shared, delay) {
                    return;
                }
                let bar = make_bar();
                *BAR.lock().unwrap_or_else(|e| e.into_inner()) = Some(bar.clone());
                loop {
                    update(&bar);
                    if wait(&shared, Duration::from_millis(200)) {
                        break;
                    }
                }
                *BAR.lock().unwrap_or_else(|e| e.into_inner()) = None;
                bar.finish_and_clear();
            })),
        };
        Progress { done, thread }
    }

    /// Stops the display (a bar is cleared) before the summary is printed.
    pub fn finish(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        *self.done.0.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.done.1.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A bar of `len` on stderr, redrawn at most 5 times a second, drawn by
/// `template`.
fn styled_bar(len: u64, template: &str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr_with_hz(5));
    let style = ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    bar.set_style(style);
    bar
}

fn new_bar(start: &Start) -> ProgressBar {
    let bar = styled_bar(
        start.counts.total(),
        "{prefix}: [{elapsed_precise}] [{bar:30}] {pos}/{len} ({percent}%) {wide_msg}",
    );
    bar.set_prefix(format!("ckpt: {}", start.job));
    bar.set_position(start.counts.completed);
    bar
}

/// Waits up to `timeout` for the display to be finished; true if it was.
fn wait(done: &(Mutex<bool>, Condvar), timeout: Duration) -> bool {
    let g = done.0.lock().unwrap_or_else(|e| e.into_inner());
    let (g, _) = done
        .1
        .wait_timeout_while(g, timeout, |finished| !*finished)
        .unwrap_or_else(|e| e.into_inner());
    *g
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compact_durations() {
        assert_eq!(compact(Duration::from_secs(0)), "0s");
        assert_eq!(compact(Duration::from_secs(45)), "45s");
        assert_eq!(compact(Duration::from_secs(67)), "1m07s");
        assert_eq!(compact(Duration::from_secs(2 * 3600 + 3 * 60 + 9)), "2h03m");
    }

    #[test]
    fn a_line_counts_earlier_runs_and_this_run() {
        let start = Start {
            job: "J".into(),
            counts: ItemCounts {
                pending: 3766,
                completed: 1234,
                ..ItemCounts::default()
            },
            stop: StopSignal::new(),
        };
        let live = RunProgress::default();
        let snap = Snapshot::new(&start, &live, Duration::from_secs(10));
        assert_eq!(snap.done, 1234);
        assert_eq!(snap.total, 5000);
        assert_eq!(snap.eta, None, "no rate yet");
        assert_eq!(
            snap.line("J"),
            "ckpt: J: 1234/5000 done (24.7%), 0.0 items/s, eta unknown, 0 dead, 0 failed attempts"
        );
        start.stop.stop();
        let snap = Snapshot::new(&start, &live, Duration::from_secs(10));
        assert!(snap.line("J").ends_with(", 0 failed attempts, stopping"));
    }

    #[test]
    fn eta_from_this_runs_rate() {
        let snap = Snapshot {
            done: 1234,
            total: 5000,
            dead: 0,
            failed: 3,
            rate: 56.0,
            eta: Some(Duration::from_secs_f64((5000.0 - 1234.0) / 56.0)),
            stopping: false,
            waiting: None,
        };
        assert_eq!(
            snap.line("J"),
            "ckpt: J: 1234/5000 done (24.7%), 56 items/s, eta 1m07s, 0 dead, 3 failed attempts"
        );
        let waiting = Snapshot {
            waiting: Some(Duration::from_secs(3552)),
            ..snap.clone()
        };
        assert!(
            waiting
                .line("J")
                .ends_with(", 3 failed attempts, waiting: next item ready in 59m12s"),
            "{}",
            waiting.line("J")
        );
        let stopping = Snapshot {
            stopping: true,
            ..waiting
        };
        assert!(stopping
            .line("J")
            .ends_with(", 3 failed attempts, stopping"));
    }
}
