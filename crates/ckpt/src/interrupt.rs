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
}

/// Runs `f` with `check` installed for the store calls it makes on this
/// thread: `check` returns true to abandon the call waiting (it is run on
/// this thread, between waits). The check in place before is restored
/// after, even if `f` panics.
pub fn with_check<T>(check: fn() -> bool, f: impl FnOnce() -> T) -> T {
    struct Restore(Option<fn() -> bool>);
    impl Drop for Restore {
        fn drop(&mut self) {
            CHECK.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(CHECK.with(|c| c.replace(Some(check))));
    f()
}

#[cfg(any(feature = "postgres", feature = "redis"))]
/// `f`, abandoned with [`Error::Interrupted`] when the check of this thread
/// (see [`with_check`]) asks for it while `f` waits. Without a check, `f`
/// as it is. Read on the thread that calls this, which is the one that
/// blocks on the result.
pub(crate) fn interruptible<T>(
    f: impl std::future::Future<Output = Result<T>>,
) -> impl std::future::Future<Output = Result<T>> {
    let check = CHECK.with(Cell::get);
    async move {
        let Some(check) = check else {
            return f.await;
        };
        let mut f = std::pin::pin!(f);
        loop {
            match tokio::time::timeout(CHECK_EVERY, f.as_mut()).await {
                Ok(out) => return out,
                Err(_) if check() => {
                    return Err(Error::Interrupted(
                        "the store call was abandoned while it waited for the server; it may or may not have taken effect".into(),
                    ))
                }
                Err(_) => {}
            }
        }
    }
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
        let out = with_check(after_two, || rt.block_on(interruptible(hang)));
        assert!(matches!(out, Err(Error::Interrupted(_))), "{out:?}");
        assert_eq!(CHECKS.load(Ordering::SeqCst), 3);
        // Restored: no check once the scope ends.
        assert!(CHECK.with(Cell::get).is_none());
    }

    #[test]
    fn a_call_that_answers_is_not_abandoned_and_no_check_means_none() {
        let rt = runtime();
        let slow = async {
            tokio::time::sleep(CHECK_EVERY * 3).await;
            Ok(7)
        };
        let out = with_check(never, || rt.block_on(interruptible(slow)));
        assert_eq!(out.unwrap(), 7);
        let out = rt.block_on(interruptible(async { Ok(8) }));
        assert_eq!(out.unwrap(), 8);
    }
}
