//! Abandoning a store call that waits on the network, at the caller's
//! request.
//!
//! A call to PostgreSQL or Redis may wait up to the response timeout (60 s
//! by default) for a server that stopped answering. A binding whose users
//! expect Ctrl-C to work at once (Python: a signal's handler runs only when
//! the blocked call returns) installs a check with [`with_check`]: while a
//! call of this thread waits, the check runs every [`CHECK_EVERY`], and
//! when it says so the call is abandoned with [`Error::Interrupted`].
//!
//! An abandoned call may or may not have taken effect, as after a crash:
//! the store stays consistent (a transaction not committed is rolled
//! back), and what a lease protects is fenced as always. SQLite calls
//! never wait on the network, and are not interrupted.

use std::cell::Cell;
use std::time::Duration;

#[cfg(any(feature = "postgres", feature = "redis"))]
use crate::error::{Error, Result};

/// How often a waiting call runs the check.
pub const CHECK_EVERY: Duration = Duration::from_millis(100);

thread_local! {
    static CHECK: Cell<Option<fn() -> bool>> = const { Cell::new(None) };
    /// The check asked to abandon a call in this scope: every later call
    /// of the scope is abandoned at once (an error swallowed on the way,
    /// say by a clock reading that keeps its old offset, does not use the
    /// request up).
    static TRIPPED: Cell<bool> = const { Cell::new(false) };
    /// The check is running (see [`in_check`]).
    static IN_CHECK: Cell<bool> = const { Cell::new(false) };
}

/// True while this thread runs its check, between the waits of a store
/// call it has in progress. What the check runs (a Python signal handler)
/// may call the store again; such a call must not wait for anything that
/// call holds (a group commit it leads, a clock measurement it makes), or
/// the thread would wait for itself.
pub(crate) fn in_check() -> bool {
    IN_CHECK.with(Cell::get)
}

/// Runs `f` with `check` installed for the store calls it makes on this
/// thread: `check` returns true to abandon the call waiting. It runs on
/// this thread between waits, outside the store's async runtime, so it may
/// call the store itself. The check in place before is restored after,
/// even if `f` panics.
pub fn with_check<T>(check: fn() -> bool, f: impl FnOnce() -> T) -> T {
    scoped(Some(check), f)
}

/// Runs `f` with no check: for work a call does on behalf of other threads
/// too (a group commit's batch), which one thread's request must not cut
/// short.
pub fn without_check<T>(f: impl FnOnce() -> T) -> T {
    scoped(None, f)
}

fn scoped<T>(check: Option<fn() -> bool>, f: impl FnOnce() -> T) -> T {
    struct Restore(Option<fn() -> bool>, bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            CHECK.with(|c| c.set(self.0));
            TRIPPED.with(|t| t.set(self.1));
        }
    }
    let _restore = Restore(
        CHECK.with(|c| c.replace(check)),
        TRIPPED.with(|t| t.replace(false)),
    );
    f()
}

/// Drives `f` on `runtime` to its end, or until the check of this thread
/// (see [`with_check`]) asks to abandon it: then [`Error::Interrupted`].
/// Without a check, `runtime.block_on(f)`.
#[cfg(any(feature = "postgres", feature = "redis"))]
pub(crate) fn block_on<T>(
    runtime: &tokio::runtime::Runtime,
    f: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    let Some(check) = CHECK.with(Cell::get) else {
        return runtime.block_on(f);
    };
    if !TRIPPED.with(Cell::get) {
        let mut f = std::pin::pin!(f);
        loop {
            // (The timer is made inside the runtime, which it needs.)
            let waited =
                runtime.block_on(async { tokio::time::timeout(CHECK_EVERY, f.as_mut()).await });
            if let Ok(out) = waited {
                return out;
            }
            // The check runs between waits, outside the runtime.
            let previous = IN_CHECK.with(|c| c.replace(true));
            let abandon = check();
            IN_CHECK.with(|c| c.set(previous));
            if abandon {
                break;
            }
        }
        // `f` is dropped here: what that leaves to do (a connection closed
        // mid-transaction) runs below.
    }
    TRIPPED.with(|t| t.set(true));
    // Lets the runtime run what dropping the call left to do, so that its
    // locks go now rather than at the next call.
    runtime.block_on(tokio::task::yield_now());
    Err(Error::Interrupted(
        "the store call was abandoned while it waited for the server; it may or may not have taken effect".into(),
    ))
}

#[cfg(all(test, any(feature = "postgres", feature = "redis")))]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    static CHECKS: AtomicUsize = AtomicUsize::new(0);

    fn after_two() -> bool {
        CHECKS.fetch_add(1, Ordering::SeqCst) >= 2
    }

    fn never() -> bool {
        false
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
    }

    #[test]
    fn a_waiting_call_is_abandoned_when_the_check_says_so() {
        let rt = runtime();
        let hang = async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok(())
        };
        let (first, second) = with_check(after_two, || {
            let first = block_on(&rt, hang);
            // Sticky: the next call of the scope is abandoned at once.
            let second = block_on(&rt, async { Ok(1) });
            (first, second)
        });
        assert!(matches!(first, Err(Error::Interrupted(_))), "{first:?}");
        assert!(matches!(second, Err(Error::Interrupted(_))), "{second:?}");
        assert_eq!(CHECKS.load(Ordering::SeqCst), 3);
        // Restored: no check, nothing tripped, once the scope ends.
        assert!(CHECK.with(Cell::get).is_none());
        assert!(!TRIPPED.with(Cell::get));
        assert_eq!(block_on(&rt, async { Ok(2) }).unwrap(), 2);
    }

    #[test]
    fn a_call_that_answers_is_not_abandoned_and_no_check_means_none() {
        let rt = runtime();
        let slow = async {
            tokio::time::sleep(CHECK_EVERY * 3).await;
            Ok(7)
        };
        let out = with_check(never, || block_on(&rt, slow));
        assert_eq!(out.unwrap(), 7);
        let out = with_check(after_two, || {
            without_check(|| block_on(&rt, async { Ok(8) }))
        });
        assert_eq!(out.unwrap(), 8);
    }
}
