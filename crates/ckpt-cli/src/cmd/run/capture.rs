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
//! The thread that waits for a command reads both its pipes with `poll`
//! (and a pidfd, to learn of its exit), so a command never blocks on a
//! full pipe whichever stream it fills, and no thread is added per item. Its
//! bytes are passed on unchanged (a tag aside): a last line without a
//! newline stays without one.
//!
//! The last `--stderr-tail` bytes of each command's stderr are also kept,
//! in a ring of that size, so a failure can be stored with why it failed
//! ([`Tail`]). With `--ungroup` the command's stderr then goes through a
//! pipe too, its bytes still passed straight through; `--stderr-tail 0`
//! keeps none and hands `--ungroup` commands ckpt's own stderr.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, IsTerminal, Read, Seek, Write};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::{Child, ChildStderr, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use super::results;

/// The longest partial line held back in line mode; longer ones are
/// written in pieces of this size (and may then mix with other items').
pub const LINE_CAP: usize = 64 * 1024;

/// Output of one item `--group` holds in memory before it spills to a
/// temporary file.
const GROUP_IN_MEMORY: usize = 1024 * 1024;

/// How long the pipes are read once the command has exited and its
/// process group was killed: a process that left the group (`setsid`)
/// may hold them open for ever.
const AFTER_EXIT: Duration = Duration::from_secs(1);

/// Held for every write of a command's output, to either stream: when
/// ckpt's stdout and stderr are one file (`2>&1`), a line on one must not
/// land inside a line on the other.
static WRITING: Mutex<()> = Mutex::new(());

/// Whether the last bytes of commands' output written to stdout ended
/// mid-line (no newline): `--json`'s summary then starts a line of its own.
static STDOUT_MID_LINE: AtomicBool = AtomicBool::new(false);

/// Whether commands' output left stdout mid-line (see [`STDOUT_MID_LINE`];
/// output `--ungroup` hands straight to stdout is not seen).
pub fn stdout_mid_line() -> bool {
    let _w = writing();
    STDOUT_MID_LINE.load(Ordering::Relaxed)
}

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
    /// `--stderr-tail`: the last bytes of stderr kept (0: none).
    pub stderr_tail: usize,
}

impl Output {
    /// Sets up the command's stdout and stderr.
    pub fn prepare(&self, cmd: &mut Command) {
        match self.mode {
            Mode::Ungroup if self.results.is_none() => {
                cmd.stdout(Stdio::inherit());
                cmd.stderr(if self.stderr_tail > 0 {
                    Stdio::piped()
                } else {
                    Stdio::inherit()
                });
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

    /// Waits for the spawned `child` to end, reading what it prints (for
    /// `item`, into ckpt's streams and `files`) meanwhile, in this thread.
    /// Calls `on_exit` as soon as the command has exited, before it is
    /// reaped: its pid (and process group id) cannot have been reused yet,
    /// so `on_exit` may still signal its group (to kill what it left there,
    /// whose end closes the pipes) and must stop anything else from
    /// signalling it (its pid is free once `wait` reaps it). Then reads
    /// the pipes to their end, or for [`AFTER_EXIT`] at most. Returns the
    /// exit status, what `on_exit` returned, and what was captured.
    pub fn wait<T>(
        &self,
        child: &mut Child,
        item: &str,
        files: Option<results::Files>,
        on_exit: impl FnOnce() -> T,
    ) -> (io::Result<ExitStatus>, T, Captured) {
        let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
        if stdout.is_none() && stderr.is_none() {
            exited_unreaped(child.id(), true);
            let value = on_exit();
            return (child.wait(), value, Captured::default());
        }
        let tag = self.tag.then(|| {
            let mut tag = item.as_bytes().to_vec();
            tag.push(b'\t');
            tag
        });
        let (out_file, err_file) = files.map_or((None, None), |f| (Some(f.stdout), Some(f.stderr)));
        let mut reader = Reader {
            out: stdout.map(|p| (p, Sink::new(Stream::Out, self.mode, tag.clone(), out_file))),
            err: stderr.map(|p| {
                let mut sink = Sink::new(Stream::Err, self.mode, tag, err_file);
                sink.tail = (self.stderr_tail > 0).then(|| Tail::new(self.stderr_tail));
                (p, sink)
            }),
            out_done: None,
            err_done: None,
            buf: vec![0; 16 * 1024],
        };
        let exit = pidfd(child.id());
        let mut ended: Option<(io::Result<ExitStatus>, T, Instant)> = None;
        let mut on_exit = Some(on_exit);
        let mut exited = |child: &mut Child| {
            exited_unreaped(child.id(), true);
            let value = on_exit.take().map(|f| f());
            (child.wait(), value)
        };
        loop {
            let mut fds = reader.fds();
            if fds.is_empty() {
                break;
            }
            if let Some((_, _, at)) = &ended {
                if at.elapsed() >= AFTER_EXIT {
                    break;
                }
            }
            let exit_fd = exit
                .as_ref()
                .filter(|_| ended.is_none())
                .map(|fd| fd.as_raw_fd());
            if let Some(fd) = exit_fd {
                fds.push(libc::pollfd {
                    fd,
                    events: libc::POLLIN,
                    revents: 0,
                });
            }
            // Without a pidfd (not Linux), woken now and then to see
            // whether the command has exited while its pipes stay open.
            let timeout = match (&ended, exit_fd) {
                (None, Some(_)) => -1,
                _ => 100,
            };
            // SAFETY: `fds` is a valid array of `fds.len()` pollfd structs.
            let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
            if ready < 0 && io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
                break;
            }
            let mut gone = false;
            for pfd in fds.iter().filter(|p| p.revents != 0) {
                if Some(pfd.fd) == exit_fd {
                    gone = true;
                } else {
                    reader.ready(pfd.fd);
                }
            }
            let gone =
                gone || (ended.is_none() && exit.is_none() && exited_unreaped(child.id(), false));
            if gone {
                let (status, value) = exited(child);
                ended = value.map(|v| (status, v, Instant::now()));
            }
        }
        let captured = reader.end();
        match ended {
            Some((status, value, _)) => (status, value, captured),
            // The pipes closed first: the command is ending (or closed its
            // output and runs on).
            None => {
                let (status, value) = exited(child);
                (status, value.expect("on_exit is called once"), captured)
            }
        }
    }
}

/// What [`Output::wait`] kept of a command's output besides passing it on.
#[derive(Debug, Default)]
pub struct Captured {
    /// The tail of its stderr (`None` when it wrote none or none is kept).
    pub tail: Option<String>,
    /// `--results`: why its files do not hold all of its output (a full
    /// disk); its later output went only to ckpt's own streams.
    pub results_error: Option<String>,
    /// Why ckpt's stdout did not take all of the command's output (a full
    /// disk; a closed pipe is not an error): the item must not complete.
    pub output_error: Option<String>,
}

/// Whether the child `pid` has exited, leaving it unreaped (a zombie,
/// whose pid no other process can take); with `block`, waits until it has.
/// False if that cannot be known (the caller's `wait` then reaps it).
fn exited_unreaped(pid: u32, block: bool) -> bool {
    let flags = libc::WEXITED | libc::WNOWAIT | if block { 0 } else { libc::WNOHANG };
    loop {
        // SAFETY: an all-zero siginfo_t is a valid value for waitid to fill.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: `info` is a valid siginfo_t that waitid writes into.
        let r = unsafe { libc::waitid(libc::P_PID, libc::id_t::from(pid), &mut info, flags) };
        if r == 0 {
            // With WNOHANG, a child that has not exited leaves si_pid 0.
            // SAFETY: waitid filled `info` for a child.
            return unsafe { info.si_pid() } != 0;
        }
        if io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            return false;
        }
    }
}

/// An exit notification for the process `pid`: readable once it has
/// exited (Linux 5.3 and later; `None` elsewhere).
fn pidfd(pid: u32) -> Option<OwnedFd> {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: pidfd_open takes a pid and flags, and returns a new fd.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
        // SAFETY: a non-negative result is a new fd that nothing else owns.
        (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as i32) })
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = pid;
        None
    }
}

/// The pipes of one command and where they go.
struct Reader {
    out: Option<(ChildStdout, Sink)>,
    err: Option<(ChildStderr, Sink)>,
    /// Ended streams' sinks, written at the end (stdout first, then
    /// stderr, as GNU parallel's --group).
    out_done: Option<Sink>,
    err_done: Option<Sink>,
    buf: Vec<u8>,
}

impl Reader {
    fn fds(&self) -> Vec<libc::pollfd> {
        [
            self.out.as_ref().map(|(p, _)| p.as_raw_fd()),
            self.err.as_ref().map(|(p, _)| p.as_raw_fd()),
        ]
        .into_iter()
        .flatten()
        .map(|fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect()
    }

    /// Reads the pipe `fd`, which poll found ready.
    fn ready(&mut self, fd: i32) {
        if self.out.as_ref().is_some_and(|(p, _)| p.as_raw_fd() == fd) {
            if !drain(&mut self.out, &mut self.buf) {
                self.out_done = self.out.take().map(|(_, sink)| sink);
            }
        } else if !drain(&mut self.err, &mut self.buf) {
            self.err_done = self.err.take().map(|(_, sink)| sink);
        }
    }

    /// Writes what is held; returns the tail of stderr, if kept.
    fn end(self) -> Captured {
        let mut sinks = [
            self.out.map(|(_, s)| s).or(self.out_done),
            self.err.map(|(_, s)| s).or(self.err_done),
        ];
        let tail = sinks[1]
            .as_mut()
            .and_then(|s| s.tail.take())
            .and_then(Tail::text);
        let results_error = sinks.iter().flatten().find_map(|s| {
            let e = s.file_error.as_ref()?;
            Some(format!("{}: {e}", s.to.file_name()))
        });
        // One item's groups are not split by another item's.
        let _writing = writing();
        let mut output_error = None;
        for mut sink in sinks.into_iter().flatten() {
            sink.end();
            output_error = output_error.or(sink.write_error);
        }
        Captured {
            tail,
            results_error,
            output_error: output_error.map(|e| e.to_string()),
        }
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
    /// `--results`: why `file` stopped taking bytes (it is dropped then).
    file_error: Option<io::Error>,
    /// `--stderr-tail`: the last bytes, untagged.
    tail: Option<Tail>,
    /// Why ckpt's own stream stopped taking this output (a full disk):
    /// nothing more is written to it.
    write_error: Option<io::Error>,
}

#[derive(Clone, Copy)]
enum Stream {
    Out,
    Err,
}

impl Stream {
    /// The name of this stream's `--results` file.
    fn file_name(self) -> &'static str {
        match self {
            Stream::Out => "stdout",
            Stream::Err => "stderr",
        }
    }

    /// Writes `bytes` in one piece; the caller holds [`WRITING`].
    ///
    /// A closed stdout (`| head`) drops the output (the command keeps
    /// running and its pipe keeps being drained), and so does any error on
    /// stderr, which carries diagnostics only, or on a terminal (one hung
    /// up, after a logout), which a person reads: `Ok` for these. Any other
    /// stdout error (a full disk) is returned: the output is the run's
    /// result, and an item whose output was lost must not be completed.
    fn write(self, bytes: &[u8]) -> io::Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        // std's lock on the stream is held as ckpt's own lines hold it
        // (`errln!`, the progress lines), so theirs and the commands' never
        // mix; taken inside the bar's suspend, in the order the bar's own
        // drawing takes them.
        let result = crate::progress::with_bar_hidden(self.is_terminal(), || match self {
            Stream::Out => {
                let _std = io::stdout().lock();
                STDOUT_MID_LINE.store(bytes.last() != Some(&b'\n'), Ordering::Relaxed);
                write_fully(self.fd(), bytes)
            }
            Stream::Err => {
                let _std = io::stderr().lock();
                write_fully(self.fd(), bytes)
            }
        });
        match (self, result) {
            (_, Ok(())) | (Stream::Err, Err(_)) => Ok(()),
            (Stream::Out, Err(e))
                if e.kind() == io::ErrorKind::BrokenPipe || self.is_terminal() =>
            {
                Ok(())
            }
            (Stream::Out, Err(e)) => Err(e),
        }
    }

    /// Copies `file` from its start in one piece, as [`write`](Self::write)
    /// does; the caller holds [`WRITING`].
    fn copy(self, file: &mut File) -> io::Result<()> {
        // Output that cannot be read back is lost as if it could not be
        // written: on stdout that is an error, said as what it is.
        let unread = |e: io::Error| match self {
            Stream::Err => Ok(()),
            Stream::Out => Err(io::Error::new(
                e.kind(),
                format!("cannot read back the output held in a temporary file: {e}"),
            )),
        };
        if let Err(e) = file.rewind() {
            return unread(e);
        }
        let mut buf = vec![0; 256 * 1024];
        loop {
            match file.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(n) => self.write(&buf[..n])?,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return unread(e),
            }
        }
    }

    fn fd(self) -> BorrowedFd<'static> {
        let fd = match self {
            Stream::Out => libc::STDOUT_FILENO,
            Stream::Err => libc::STDERR_FILENO,
        };
        // SAFETY: std keeps descriptors 0 to 2 open for the whole run (it
        // opens /dev/null on any found closed at start), and ckpt never
        // closes them.
        unsafe { BorrowedFd::borrow_raw(fd) }
    }

    /// Whether the stream is a terminal, where a progress bar is drawn on
    /// the same screen: asked once, by [`remember_terminals`] at the start.
    /// (Asked after a hangup, a terminal says it is none: `isatty` fails
    /// with EIO, as every write does.)
    fn is_terminal(self) -> bool {
        static OUT: OnceLock<bool> = OnceLock::new();
        static ERR: OnceLock<bool> = OnceLock::new();
        match self {
            Stream::Out => *OUT.get_or_init(|| io::stdout().is_terminal()),
            Stream::Err => *ERR.get_or_init(|| io::stderr().is_terminal()),
        }
    }
}

/// Asks now, while they work, whether ckpt's stdout and stderr are
/// terminals: a terminal that hangs up later (a dropped ssh session) fails
/// every write with EIO, and what was written to it is dropped, not taken
/// for a lost result. Called before any command runs.
pub fn remember_terminals() {
    Stream::Out.is_terminal();
    Stream::Err.is_terminal();
}

/// Whether ckpt's stdout was a terminal when the run began (see
/// [`remember_terminals`]).
pub fn stdout_is_terminal() -> bool {
    Stream::Out.is_terminal()
}

/// Writes all of `bytes` to `fd`, unbuffered, waiting for room when the
/// descriptor is non-blocking (a terminal another program left
/// `O_NONBLOCK`), where a plain `write_all` would give up and lose output.
fn write_fully(fd: BorrowedFd<'_>, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        // SAFETY: `bytes` is valid for reads of `bytes.len()` bytes, and
        // `fd` is open for as long as it is borrowed.
        let n = unsafe { libc::write(fd.as_raw_fd(), bytes.as_ptr().cast(), bytes.len()) };
        if n > 0 {
            bytes = &bytes[n as usize..];
            continue;
        }
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        let e = io::Error::last_os_error();
        match e.kind() {
            io::ErrorKind::Interrupted => {}
            io::ErrorKind::WouldBlock => {
                let mut pfd = libc::pollfd {
                    fd: fd.as_raw_fd(),
                    events: libc::POLLOUT,
                    revents: 0,
                };
                // SAFETY: `pfd` is one valid pollfd struct.
                unsafe { libc::poll(&mut pfd, 1, 1000) };
            }
            _ => return Err(e),
        }
    }
    Ok(())
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
            file_error: None,
            tail: None,
            write_error: None,
        }
    }

    /// Writes `bytes` to ckpt's stream, unless an earlier write failed;
    /// the caller holds [`WRITING`].
    fn emit(&mut self, bytes: &[u8]) {
        emit(self.to, &mut self.write_error, bytes);
    }

    fn take(&mut self, data: &[u8]) {
        if let Some(tail) = &mut self.tail {
            tail.push(data);
        }
        if let Some(file) = &mut self.file {
            if let Err(e) = file.write_all(data) {
                self.file_error = Some(e);
                self.file = None;
            }
        }
        match self.mode {
            Mode::Ungroup => {
                let _writing = writing();
                self.emit(data);
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
                    emit(self.to, &mut self.write_error, &self.held[..end]);
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
        let Some(file) = &mut self.spill else {
            return;
        };
        // What the file took leaves memory; on an error (the disk filled
        // up) the rest stays held, and `end` writes the file, then it.
        let mut written = 0;
        while written < self.held.len() {
            match file.write(&self.held[written..]) {
                Ok(0) => break,
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        self.held.drain(..written);
    }

    /// The stream ended: writes what is left; the caller holds [`WRITING`].
    /// What was spilled comes first, then what is held in memory (all of
    /// it, when the disk filled up partway through the spill).
    fn end(&mut self) {
        if let Some(mut file) = self.spill.take() {
            if self.write_error.is_none() {
                self.write_error = self.to.copy(&mut file).err();
            }
        }
        let held = std::mem::take(&mut self.held);
        self.emit(&held);
    }
}

/// Writes `bytes` to the stream `to` unless `error` holds an earlier
/// write's error, which a failed write leaves there ([`Sink::emit`], with
/// its fields apart so a sink may write what it holds).
fn emit(to: Stream, error: &mut Option<io::Error>, bytes: &[u8]) {
    if error.is_none() {
        *error = to.write(bytes).err();
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

/// The last bytes of a stream, in a ring of a fixed size: a command that
/// writes megabytes costs this much memory and a copy of each byte.
#[derive(Debug)]
pub(super) struct Tail {
    cap: usize,
    bytes: VecDeque<u8>,
    /// Bytes were dropped from the front.
    cut: bool,
}

impl Tail {
    pub(super) fn new(cap: usize) -> Tail {
        Tail {
            cap,
            bytes: VecDeque::with_capacity(cap.min(64 * 1024)),
            cut: false,
        }
    }

    pub(super) fn push(&mut self, data: &[u8]) {
        let data = if data.len() > self.cap {
            self.cut = true;
            &data[data.len() - self.cap..]
        } else {
            data
        };
        let over = (self.bytes.len() + data.len()).saturating_sub(self.cap);
        if over > 0 {
            self.cut = true;
            self.bytes.drain(..over);
        }
        self.bytes.extend(data);
    }

    /// The tail as text (`None` if empty): invalid UTF-8 replaced, and,
    /// when its front was cut off, starting at the first whole line (or,
    /// with no line break in its first half, the first whole character).
    pub(super) fn text(self) -> Option<String> {
        let bytes: Vec<u8> = self.bytes.into();
        let mut start = 0;
        if self.cut {
            let half = &bytes[..bytes.len() / 2];
            start = match half.iter().position(|&b| b == b'\n') {
                Some(i) => i + 1,
                // UTF-8 continuation bytes of a character cut in two.
                None => bytes
                    .iter()
                    .take(3)
                    .take_while(|&&b| b & 0xC0 == 0x80)
                    .count(),
            };
        }
        let text = String::from_utf8_lossy(&bytes[start..]).into_owned();
        (!text.is_empty()).then_some(text)
    }
}

fn memrchr(needle: u8, haystack: &[u8]) -> Option<usize> {
    haystack.iter().rposition(|&b| b == needle)
}

#[cfg(test)]
mod tests {
    use super::{Mode, Output, Tail};

    /// The state letter of process `pid` in /proc (`Z`: exited, unreaped).
    #[cfg(target_os = "linux")]
    fn proc_state(pid: u32) -> Option<char> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        stat.rsplit_once(") ")?.1.chars().next()
    }

    /// `on_exit` runs while the command is a zombie, its pid still its
    /// own, whichever way its end is noticed; the status is its own.
    #[cfg(target_os = "linux")]
    #[test]
    fn the_exit_is_handled_before_the_command_is_reaped() {
        let modes = [
            // Pipes read, the exit seen by a pidfd.
            (Mode::Line, 4096),
            // Nothing piped: waited for directly.
            (Mode::Ungroup, 0),
        ];
        for (mode, stderr_tail) in modes {
            let out = Output {
                mode,
                tag: false,
                results: None,
                stderr_tail,
            };
            let mut cmd = std::process::Command::new("sh");
            cmd.args(["-c", "exit 3"]);
            out.prepare(&mut cmd);
            let mut child = cmd.spawn().unwrap();
            let pid = child.id();
            let (status, state, _) = out.wait(&mut child, "item", None, || proc_state(pid));
            assert_eq!(
                state,
                Some('Z'),
                "{mode:?}: on_exit ran on a reaped command"
            );
            assert_eq!(status.unwrap().code(), Some(3), "{mode:?}");
            assert_eq!(proc_state(pid), None, "{mode:?}: reaped in the end");
        }
        // Without a pidfd: polled.
        let mut child = std::process::Command::new("sh")
            .args(["-c", "exit 4"])
            .spawn()
            .unwrap();
        let pid = child.id();
        while !super::exited_unreaped(pid, false) {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(proc_state(pid), Some('Z'));
        assert_eq!(child.wait().unwrap().code(), Some(4));
    }

    fn tail(cap: usize, pieces: &[&[u8]]) -> Option<String> {
        let mut t = Tail::new(cap);
        for p in pieces {
            t.push(p);
        }
        t.text()
    }

    #[test]
    fn keeps_the_last_bytes_from_a_whole_line() {
        assert_eq!(tail(8, &[]), None);
        assert_eq!(tail(64, &[b"a\n", b"b\n"]).as_deref(), Some("a\nb\n"));
        // Cut: starts after the first line break of its first half.
        assert_eq!(
            tail(10, &[b"first line\nxx\nlast\n"]).as_deref(),
            Some("xx\nlast\n")
        );
        let big = vec![b'x'; 1 << 20];
        let t = tail(4096, &[&big, b"\nwhy it failed\n"]).unwrap();
        assert_eq!(t.len(), 4096);
        assert!(t.ends_with("why it failed\n"));
    }

    #[test]
    fn a_character_cut_in_two_is_dropped_and_garbage_replaced() {
        // "é" is two bytes; the cut leaves its second one at the front.
        assert_eq!(tail(3, &["éab".as_bytes()]).as_deref(), Some("ab"));
        let t = tail(16, &[&[0xff, 0xfe, b'o', b'k']]).unwrap();
        assert_eq!(t, "\u{fffd}\u{fffd}ok");
    }
}
