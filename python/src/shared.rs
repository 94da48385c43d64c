//! The library handle behind a `Store` and every `Job`, `Queue` and `Item`
//! made from it, and the two reasons it may no longer be used: the store
//! was closed, or the process forked since it was opened.
//!
//! After `fork()` the child has the parent's connections (the same SQLite
//! file descriptors, the same sockets to the server) but none of the
//! threads that keep them (the PostgreSQL liveness session, the runtime of
//! the async drivers), and maybe a lock held by a thread that no longer
//! exists. Using them would corrupt the parent's sessions or hang, and so
//! would closing them, so the child may do neither: every call checks the
//! fork generation first and raises `StoreError`, and the handle is leaked
//! rather than dropped in the child. The parent is unaffected.

use std::mem::ManuallyDrop;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Once;

use pyo3::PyResult;

use crate::errors::StoreError;

/// Bumped in the child of every `fork()`.
static FORKS: AtomicU64 = AtomicU64::new(0);

extern "C" fn after_fork_in_child() {
    FORKS.fetch_add(1, Ordering::SeqCst);
}

/// How many times this process is a `fork()` child of the process that
/// loaded the module: what was counted under another generation belongs to
/// threads of an ancestor, which the child does not have.
pub fn fork_generation() -> u64 {
    FORKS.load(Ordering::SeqCst)
}

/// Registers the fork hook, once per process.
pub fn install_fork_hook() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        // SAFETY: the handler only does an atomic add, which is
        // async-signal-safe as the child-side fork handler must be.
        unsafe {
            libc::pthread_atfork(None, None, Some(after_fork_in_child));
        }
    });
}

/// A library handle usable only in the process that opened it.
#[derive(Debug)]
pub struct Shared {
    ckpt: ManuallyDrop<ckpt::Ckpt>,
    pid: u32,
    forks: u64,
    closed: AtomicBool,
}

impl Shared {
    pub fn new(ckpt: ckpt::Ckpt) -> Shared {
        Shared {
            ckpt: ManuallyDrop::new(ckpt),
            pid: std::process::id(),
            forks: FORKS.load(Ordering::SeqCst),
            closed: AtomicBool::new(false),
        }
    }

    /// The handle, when it may be used: opened in this process and not
    /// closed.
    pub fn ckpt(&self) -> PyResult<&ckpt::Ckpt> {
        if self.forked() {
            return Err(StoreError::new_err(format!(
                "this store was opened in process {} and cannot be used after fork(); \
                 call ckpt.open() again in the child",
                self.pid
            )));
        }
        if self.closed.load(Ordering::Relaxed) {
            return Err(StoreError::new_err(format!(
                "store {} was closed",
                self.ckpt.store().describe()
            )));
        }
        Ok(&self.ckpt)
    }

    /// The handle without the checks, for what needs no I/O.
    pub fn describe(&self) -> String {
        self.ckpt.store().describe()
    }

    /// True once [`close`](Shared::close) was called.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    pub fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
    }

    fn forked(&self) -> bool {
        FORKS.load(Ordering::Relaxed) != self.forks
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        if !self.forked() {
            // SAFETY: dropped once, here, and never used again.
            unsafe { ManuallyDrop::drop(&mut self.ckpt) }
        }
        // In a forked child the handle is leaked on purpose: see the module
        // documentation.
    }
}
