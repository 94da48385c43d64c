//! Integration tests of the `ckpt` binary: real processes, real SQLite files.
//!
//! One test binary; its modules live in `tests/cli/` (a crate root resolves
//! `mod` declarations beside itself, hence the `#[path]`s). Each test works
//! in its own temporary directory, so the tests run in parallel safely.

#[path = "cli/util.rs"]
mod util;

#[path = "cli/browser.rs"]
mod browser;
#[path = "cli/budget.rs"]
mod budget;
#[path = "cli/chaos/mod.rs"]
mod chaos;
#[path = "cli/checkpoint.rs"]
mod checkpoint;
#[path = "cli/clock_skew.rs"]
mod clock_skew;
#[path = "cli/concurrent.rs"]
mod concurrent;
#[path = "cli/corrupt.rs"]
mod corrupt;
#[path = "cli/crash.rs"]
mod crash;
#[path = "cli/errors.rs"]
mod errors;
#[path = "cli/failover.rs"]
mod failover;
#[path = "cli/inspect.rs"]
mod inspect;
#[path = "cli/ledger.rs"]
mod ledger;
#[path = "cli/metrics.rs"]
mod metrics;
#[path = "cli/ops.rs"]
mod ops;
#[path = "cli/orphans.rs"]
mod orphans;
#[path = "cli/pg_connect.rs"]
mod pg_connect;
#[path = "cli/pg_restart.rs"]
mod pg_restart;
#[path = "../../ckpt/tests/support/pgbouncer.rs"]
mod pgbouncer;
#[path = "cli/pooler.rs"]
mod pooler;
#[path = "cli/postgres.rs"]
mod postgres;
#[path = "cli/progress.rs"]
mod progress;
#[path = "cli/redis.rs"]
mod redis;
#[path = "cli/redis_tls.rs"]
mod redis_tls;
#[path = "cli/resume.rs"]
mod resume;
#[path = "cli/retry.rs"]
mod retry;
#[path = "cli/run.rs"]
mod run;
#[path = "cli/run_batch.rs"]
mod run_batch;
#[path = "cli/run_command.rs"]
mod run_command;
#[path = "cli/run_halt.rs"]
mod run_halt;
#[path = "cli/run_output.rs"]
mod run_output;
#[path = "cli/run_replace.rs"]
mod run_replace;
#[path = "cli/run_stderr.rs"]
mod run_stderr;
#[path = "cli/serve.rs"]
mod serve;
#[path = "cli/serve_host.rs"]
mod serve_host;
#[path = "cli/server.rs"]
mod server;
#[path = "cli/signals.rs"]
mod signals;
#[path = "cli/terminal.rs"]
mod terminal;
#[path = "cli/tls.rs"]
mod tls;
#[path = "cli/vocabulary.rs"]
mod vocabulary;
#[path = "cli/webdriver.rs"]
mod webdriver;
