//! What a command prints, and how it reaches ckpt's own stdout and stderr.
//!
//! `--line-buffer` (the default) writes whole lines: each command's stdout
//! and stderr come through pipes, and a line is written to ckpt's stream
//! only once its newline has arrived, under the stream's lock, so lines of
//! different items never mix mid-line while output still shows live. A
//! line longer than [`LINE_CAP`] is written in pieces rather than held
//! without bound; a last line without a newline is written when the
//! command's stream ends. `--group` holds an item's output until its
//! command has ended, then writes its stdout and its stderr each in one
//! piece (beyond [`GROUP_IN_MEMORY`], in an unlinked temporary file).
//! `--tag` puts the item and a TAB before each line. `--ungroup` hands the
//! command ckpt's own stdout and stderr, as ckpt did before there were
//! modes.
//!
//! One thread per running command reads both pipes with `poll`, so a
//! command never blocks on a full pipe whichever stream it fills. Its
//! bytes are passed on unchanged (a tag aside): a last line without a
//! newline stays without one.

use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Child, ChildStderr, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::results;

/// The longest partial line held back in line mode; longer ones are
/// written in pieces of this size (and may then mix with other items').
pub const LINE_CAP: usize = 64 * 1024;

/// Output of one item `--group` holds in memory before it spills to a
/// temporary file.
const GROUP_IN_MEMORY: usize = 1024 * 1024;

/// How long the reader waits for the pipes to close once the command and
/// its process group are gone: a process that left the group (`setsid`)
/// may hold them open for ever.
const AFTER_EXIT: Duration = Duration::from_secs(1);

/// Held for every write of a command's output, to either stream: when
/// ckpt's stdout and stderr are one file (`2>&1`), a line on one must not
/// land inside a line on the other.
static WRITING: Mutex<()> = Mutex::new(());

fn writing() -> MutexGuard<'static, ()> {
    WRITING.lock().unwrap_or_else(|e| e.into_inner())
}

/// How a command's output is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Whole lines, as they come.
    Line,
    /// All of an item's output once its command has ended.
    Group,
    /// Bytes straight through (stdout inherited).
    Ungroup,
}

/// The output settings of a run.
#[derive(Debug, Clone)]
pub struct Output {
    pub mode: Mode,
    /// Prefix each line with the item and a TAB.
    pub tag: bool,
    /// `--results`: also write each item's output to files under here.
    pub results: Option<PathBuf>,
}

/// A command's output being read.
pub struct Capture {
    reader: Option<JoinHandle<()>>,
    exited: Arc<AtomicBool>,
}

impl Output {
    /// Sets up the command's stdout and stderr.
    pub fn prepare(&self, cmd: &mut Command) {
        match self.mode {
            Mode::Ungroup if self.results.is_none() => {
                cmd.stdout(Stdio::inherit()).stderr(Stdio::inherit());
            }
            Mode::Ungroup => {
                cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
            }
            Mode::Line | Mode::Group => {
                cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
            }
        }
    }

    /// `--results`: creates the files of `item`'s attempt, before its
    /// command starts.
    pub fn files(&self, item: &str) -> io::Result<Option<results::Files>> {
        self.results
            .as_deref()
            .map(|dir| results::create(dir, item))
            .transpose()
    }

    /// Starts reading what the spawned `child` prints, for `item`, into
    /// ckpt's streams and `files`.
    pub fn start(
        &self,
        child: &mut Child,
        item: &str,
        files: Option<results::Files>,
    ) -> io::Result<Capture> {
        let exited = Arc::new(AtomicBool::new(false));
        let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
        if stdout.is_none() && stderr.is_none() {
            return Ok(Capture {
                reader: None,
                exited,
            });
        }
        let tag = self.tag.then(|| {
            let mut tag = item.as_bytes().to_vec();
            tag.push(b'\t');
            tag
        });
        let (mode, flag) = (self.mode, Arc::clone(&exited));
        let reader = std::thread::Builder::new()
            .name("ckpt-output".into())
            .spawn(move || read(mode, tag, files, stdout, stderr, &flag))?;
        Ok(Capture {
            reader: Some(reader),
            exited,
        })
    }
}

impl Capture {
    /// Once the command and its process group are gone: waits for the
    /// output to be written.
    pub fn finish(mut self) {
        self.exited.store(true, Ordering::Release);
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        // The thread ends on its own once told the command is gone.
        self.exited.store(true, Ordering::Release);
    }
}

/// Where one of the command's streams goes.
struct Sink {
    to: Stream,
    mode: Mode,
    tag: Option<Vec<u8>>,
    /// The next byte starts a line (for the tag).
    at_line_start: bool,
    /// Line mode: the partial line held back. Group mode: the output so far.
    held: Vec<u8>,
    /// Group mode: what did not fit in `held`.
    spill: Option<File>,
    /// `--results`: every byte, untagged.
    file: Option<File>,
}

#[derive(Clone, Copy)]
enum Stream {
    Out,
    Err,
}

impl Stream {
    /// Writes `bytes` in one piece; the caller holds [`WRITING`]. Errors
    /// (a closed pipe) lose the output but not the command: it keeps
    /// running and its pipe keeps being drained.
    fn write(self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        let _ = match self {
            Stream::Out => {
                let mut out = io::stdout().lock();
                out.write_all(bytes).and_then(|()| out.flush())
            }
            Stream::Err => io::stderr().lock().write_all(bytes),
        };
    }

    /// Copies `file` in one piece; the caller holds [`WRITING`].
    fn copy(self, file: &mut File) {
        if file.rewind().is_err() {
            return;
        }
        let _ = match self {
            Stream::Out => {
                let mut out = io::stdout().lock();
                io::copy(file, &mut out).and_then(|_| out.flush())
            }
            Stream::Err => io::copy(file, &mut io::stderr().lock()).map(drop),
        };
    }
}

impl Sink {
    fn new(to: Stream, mode: Mode, tag: Option<Vec<u8>>, file: Option<File>) -> Sink {
        Sink {
            to,
            mode,
            tag,
            at_line_start: true,
            held: Vec::new(),
            spill: None,
            file,
        }
    }

    fn take(&mut self, data: &[u8]) {
        if let Some(file) = &mut self.file {
            if let Err(e) = file.write_all(data) {
                tracing::warn!(event = "results_write", error = %e, "--results: cannot write a command's output; the rest goes only to ckpt's own streams");
                self.file = None;
            }
        }
        match self.mode {
            Mode::Ungroup => {
                let _writing = writing();
                self.to.write(data);
            }
            Mode::Line => {
                let start = self.held.len();
                self.push(data);
                // Only the new bytes can hold the last newline.
                let end = match memrchr(b'\n', &self.held[start..]) {
                    Some(i) => start + i + 1,
                    None if self.held.len() >= LINE_CAP => self.held.len(),
                    None => return,
                };
                {
                    let _writing = writing();
                    self.to.write(&self.held[..end]);
                }
                self.held.drain(..end);
            }
            Mode::Group => {
                self.push(data);
                if self.held.len() >= GROUP_IN_MEMORY {
                    self.spill_held();
                }
            }
        }
    }

    /// Appends `data` to what is held, tagging each line.
    fn push(&mut self, data: &[u8]) {
        let Some(tag) = &self.tag else {
            self.held.extend_from_slice(data);
            return;
        };
        for piece in data.split_inclusive(|&b| b == b'\n') {
            if self.at_line_start {
                self.held.extend_from_slice(tag);
            }
            self.held.extend_from_slice(piece);
            self.at_line_start = piece.ends_with(b"\n");
        }
    }

    fn spill_held(&mut self) {
        if self.spill.is_none() {
            match tempfile::tempfile() {
                Ok(file) => self.spill = Some(file),
                // No room on disk: hold it in memory instead.
                Err(_) => return,
            }
        }
        if let Some(file) = &mut self.spill {
            if file.write_all(&self.held).is_ok() {
                self.held.clear();
            }
        }
    }

    /// The stream ended: writes what is left; the caller holds [`WRITING`].
    fn end(&mut self) {
        if let Some(mut file) = self.spill.take() {
            if file.write_all(&self.held).is_ok() {
                self.held.clear();
                self.to.copy(&mut file);
                return;
            }
        }
        self.to.write(&self.held);
        self.held.clear();
    }
}

/// The reader thread: drains both pipes until they close (or the command
/// has been gone [`AFTER_EXIT`]), then writes what is held.
fn read(
    mode: Mode,
    tag: Option<Vec<u8>>,
    files: Option<results::Files>,
    stdout: Option<ChildStdout>,
    stderr: Option<ChildStderr>,
    exited: &AtomicBool,
) {
    let (out_file, err_file) = files.map_or((None, None), |f| (Some(f.stdout), Some(f.stderr)));
    let mut out = stdout.map(|p| (p, Sink::new(Stream::Out, mode, tag.clone(), out_file)));
    let mut err = stderr.map(|p| (p, Sink::new(Stream::Err, mode, tag, err_file)));
    // Ended streams' sinks, written at the end (stdout first, then
    // stderr, as GNU parallel's --group).
    let (mut out_done, mut err_done) = (None, None);
    let mut buf = vec![0; 64 * 1024];
    let mut gone_since: Option<Instant> = None;
    loop {
        let mut fds = Vec::with_capacity(2);
        for fd in [
            out.as_ref().map(|(p, _)| p.as_raw_fd()),
            err.as_ref().map(|(p, _)| p.as_raw_fd()),
        ]
        .into_iter()
        .flatten()
        {
            fds.push(libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            });
        }
        if fds.is_empty() {
            break;
        }
        if exited.load(Ordering::Acquire) {
            let since = *gone_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= AFTER_EXIT {
                break;
            }
        }
        // Woken now and then to notice the command is gone while something
        // outside its group holds the pipes open.
        // SAFETY: `fds` is a valid array of `fds.len()` pollfd structs.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 200) };
        if ready < 0 {
            if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            break;
        }
        for pfd in fds.iter().filter(|p| p.revents != 0) {
            if out.as_ref().is_some_and(|(p, _)| p.as_raw_fd() == pfd.fd) {
                if !drain(&mut out, &mut buf) {
                    out_done = out.take().map(|(_, sink)| sink);
                }
            } else if !drain(&mut err, &mut buf) {
                err_done = err.take().map(|(_, sink)| sink);
            }
        }
    }
    let sinks = [
        out.map(|(_, s)| s).or(out_done),
        err.map(|(_, s)| s).or(err_done),
    ];
    // One item's groups are not split by another item's.
    let _writing = writing();
    for mut sink in sinks.into_iter().flatten() {
        sink.end();
    }
}

/// Reads once from a ready pipe into its sink; false when the pipe has
/// ended.
fn drain<P: Read>(pipe: &mut Option<(P, Sink)>, buf: &mut [u8]) -> bool {
    let Some((pipe, sink)) = pipe else {
        return false;
    };
    match pipe.read(buf) {
        Ok(0) => false,
        Ok(n) => {
            sink.take(&buf[..n]);
            true
        }
        Err(e) if e.kind() == io::ErrorKind::Interrupted => true,
        Err(_) => false,
    }
}

fn memrchr(needle: u8, haystack: &[u8]) -> Option<usize> {
    haystack.iter().rposition(|&b| b == needle)
}
