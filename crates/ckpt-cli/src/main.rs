//! The `ckpt` command. Thin: it parses arguments, sets up logging, calls
//! into the `ckpt` library and maps errors to exit codes in one place.

/// `println!` that returns its error instead of panicking: a full disk or
/// a stdout that cannot be written is one error line and exit 4, as any
/// other I/O error. (A closed pipe ends ckpt quietly: see
/// `restore_sigpipe`.)
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*).map_err(crate::output::stdout_error)
    }};
}

/// `eprintln!` that ignores its error instead of panicking: when stderr
/// cannot be written there is nowhere to report it, and the exit code
/// still tells.
macro_rules! errln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr().lock(), $($arg)*);
    }};
}

mod cli;
mod cmd;
mod exit;
mod exporter;
mod halt;
mod output;
mod progress;
mod serve;

use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == cmd::SENTINEL_ARG)
    {
        return cmd::sentinel();
    }
    let args = match cli::Cli::try_parse() {
        Ok(args) => args,
        Err(e) => return exit::usage(e),
    };
    // `ckpt run` outlives a closed stdout or stderr: its commands run on,
    // their output dropped, and every outcome is still committed. So does
    // the server.
    if !matches!(args.command, cli::Command::Run(_) | cli::Command::Serve(_)) {
        restore_sigpipe();
    }
    cli::init_logging(&args);
    match cmd::dispatch(args) {
        Ok(code) => code,
        Err(err) => exit::report(&err),
    }
}

/// Rust ignores SIGPIPE, so `ckpt status | head -1` would fail on the
/// closed pipe. Like other Unix tools, a command that prints a report
/// instead ends quietly when its reader goes away.
fn restore_sigpipe() {
    #[cfg(unix)]
    // SAFETY: called first thing in main, before any thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
