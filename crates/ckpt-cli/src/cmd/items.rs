//! The items file of `ckpt run`: one item per non-empty line.
//!
//! The file is read twice: a first pass checks every line (valid UTF-8, a
//! valid key, at most 64 KiB) before the store is touched, so a bad file
//! changes nothing; the second pass enqueues in chunks, each its own short
//! transaction, so other `ckpt run` processes on the same store keep
//! working meanwhile. Standard input, and any items file that is not a
//! regular file (a pipe), is first copied to a temporary file.
//! Both passes stream: memory stays bounded whatever the file's size.

use std::fs::File;
use std::io::{self, BufRead, BufReader, IsTerminal, Read, Seek};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result};
use ckpt::model::EnqueueReport;
use ckpt::validate::MAX_ITEM_KEY_BYTES;
use ckpt::{NewItem, Queue};

use crate::exit::Usage;

/// Items enqueued per transaction.
const CHUNK: usize = 10_000;

/// A seekable items file: the named file, or standard input spooled.
pub struct ItemsFile {
    file: File,
    source: String,
}

impl ItemsFile {
    /// Opens `path`, or spools standard input when `path` is `None` or `-`.
    pub fn open(path: Option<&Path>) -> Result<ItemsFile> {
        match path {
            Some(p) if p != Path::new("-") => {
                let cannot = |e: io::Error| {
                    anyhow::Error::new(Usage(format!(
                        "cannot read items file {}: {e}",
                        p.display()
                    )))
                };
                let mut file = File::open(p).map_err(cannot)?;
                let source = p.display().to_string();
                // A pipe (`--items <(find …)`, a FIFO, /dev/stdin) can be
                // read only once: spooled, as standard input is.
                let kind = file.metadata().map_err(cannot)?.file_type();
                if !kind.is_file() && !kind.is_dir() {
                    let mut spool = tempfile::tempfile().context("cannot spool the items")?;
                    io::copy(&mut file, &mut spool).map_err(cannot)?;
                    return Ok(ItemsFile {
                        file: spool,
                        source,
                    });
                }
                Ok(ItemsFile { file, source })
            }
            _ => {
                let mut stdin = io::stdin();
                if stdin.is_terminal() {
                    return Err(Usage(
                        "no items: give --items FILE, or pipe one item per line on standard input"
                            .into(),
                    )
                    .into());
                }
                let mut file = tempfile::tempfile().context("cannot spool standard input")?;
                io::copy(&mut stdin, &mut file).context("cannot read standard input")?;
                Ok(ItemsFile {
                    file,
                    source: "standard input".to_string(),
                })
            }
        }
    }

    fn lines(&self) -> Result<ItemLines> {
        let mut file = self
            .file
            .try_clone()
            .context("cannot reopen the items file")?;
        file.rewind().context("cannot rewind the items file")?;
        Ok(ItemLines::new(file, self.source.clone()))
    }

    /// Checks every line; the first bad one is a usage error naming it.
    /// Returns how many items (non-empty lines) there are.
    pub fn check(&self) -> Result<u64> {
        let mut items = 0;
        self.each(|_, _| {
            items += 1;
            Ok(())
        })?;
        Ok(items)
    }

    /// Calls `f` with each item and its line number (1-based, counting the
    /// empty lines that are skipped), in file order, streaming; stops at
    /// the first bad line (a usage error naming it) or error of `f`.
    pub fn each(&self, mut f: impl FnMut(u64, &str) -> Result<()>) -> Result<()> {
        let mut lines = self.lines()?;
        while let Some(item) = lines.next() {
            f(lines.line, &item?.key)?;
        }
        Ok(())
    }

    /// Enqueues every item, [`CHUNK`] per transaction. Idempotent per key,
    /// so a run killed half-way through enqueueing loses nothing. `added`
    /// counts the items enqueued so far (new or already known), for a
    /// progress display.
    pub fn enqueue(&self, queue: &Queue, added: &AtomicU64) -> Result<EnqueueReport> {
        let mut total = EnqueueReport::default();
        let mut lines = self.lines()?.peekable();
        while lines.peek().is_some() {
            let chunk = lines
                .by_ref()
                .take(CHUNK)
                .collect::<ckpt::Result<Vec<_>>>()?;
            let report = queue.enqueue(chunk)?;
            total.inserted += report.inserted;
            total.existing += report.existing;
            added.store(total.inserted + total.existing, Ordering::Relaxed);
        }
        Ok(total)
    }
}

/// The items of a file, one per non-empty line without its line ending.
struct ItemLines {
    reader: BufReader<File>,
    source: String,
    line: u64,
    buf: Vec<u8>,
}

impl ItemLines {
    fn new(file: File, source: String) -> Self {
        ItemLines {
            reader: BufReader::with_capacity(256 * 1024, file),
            source,
            line: 0,
            buf: Vec::new(),
        }
    }

    fn bad_line(&self, why: impl std::fmt::Display) -> ckpt::Error {
        ckpt::Error::InvalidInput(format!("{} line {}: {why}", self.source, self.line))
    }
}

impl Iterator for ItemLines {
    type Item = ckpt::Result<NewItem>;

    fn next(&mut self) -> Option<Self::Item> {
        // Longest line read: a key, its line ending, and one byte to tell
        // that the line is too long without reading all of it.
        let cap = (MAX_ITEM_KEY_BYTES + 3) as u64;
        loop {
            self.buf.clear();
            let read = (&mut self.reader)
                .take(cap)
                .read_until(b'\n', &mut self.buf);
            match read {
                Ok(0) => return None,
                Ok(_) => {}
                Err(e) => {
                    return Some(Err(ckpt::Error::InvalidInput(format!(
                        "cannot read {}: {e}",
                        self.source
                    ))))
                }
            }
            self.line += 1;
            let mut line = self.buf.as_slice();
            let complete = line.ends_with(b"\n");
            line = line.strip_suffix(b"\n").unwrap_or(line);
            line = line.strip_suffix(b"\r").unwrap_or(line);
            if !complete && self.buf.len() as u64 == cap {
                return Some(Err(self.bad_line(format_args!(
                    "longer than the {MAX_ITEM_KEY_BYTES}-byte limit of an item"
                ))));
            }
            if line.is_empty() {
                continue;
            }
            return Some(match std::str::from_utf8(line) {
                Err(e) => Err(self.bad_line(format_args!("not valid UTF-8 ({e})"))),
                Ok(s) => match ckpt::validate::item_key(s) {
                    Ok(()) => Ok(NewItem::key(s)),
                    Err(ckpt::Error::InvalidInput(why)) => Err(self.bad_line(why)),
                    Err(other) => Err(other),
                },
            });
        }
    }
}
