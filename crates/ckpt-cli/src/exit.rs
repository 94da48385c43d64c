//! Exit codes, mapped from errors in one place.
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success |
//! | 1 | the work failed: dead items after `ckpt run` |
//! | 2 | usage error or invalid input (bad name, JSON, items file) |
//! | 3 | not found: unknown job, no checkpoint, no store file, `retry` keys matching no item |
//! | 4 | store error: cannot open, not a ckpt store, newer schema, I/O |
//! | 5 | busy or fenced: a live worker holds the job; or `--expect` found another cursor |
//! | 129 | `ckpt run` stopped by SIGHUP (its terminal went away) |
//! | 130 | `ckpt run` stopped by SIGINT (Ctrl-C) |
//! | 143 | `ckpt run` stopped by SIGTERM |

use std::process::ExitCode;

/// Exit code for dead items after a run.
pub const FAILED: u8 = 1;
/// Exit code for usage errors and invalid input.
pub const USAGE: u8 = 2;
/// Exit code for a missing job, checkpoint or store.
pub const NOT_FOUND: u8 = 3;
/// Exit code for store errors.
pub const STORE: u8 = 4;
/// Exit code for a job held by a live worker, or a compare-and-set that
/// found another cursor: another writer got there first.
pub const BUSY: u8 = 5;

/// A usage error raised by the binary itself (not by clap or the library).
#[derive(Debug)]
pub struct Usage(pub String);

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Usage {}

/// The exit code for an error.
pub fn code_for(err: &anyhow::Error) -> u8 {
    if err.downcast_ref::<Usage>().is_some() {
        return USAGE;
    }
    match err.downcast_ref::<ckpt::Error>() {
        Some(ckpt::Error::InvalidInput(_) | ckpt::Error::LimitExceeded { .. }) => USAGE,
        Some(ckpt::Error::NotFound(_)) => NOT_FOUND,
        Some(
            ckpt::Error::Busy(_) | ckpt::Error::Fenced(_) | ckpt::Error::CursorMismatch { .. },
        ) => BUSY,
        _ => STORE,
    }
}

/// Prints the error as one line on stderr and returns its exit code.
pub fn report(err: &anyhow::Error) -> ExitCode {
    let line = format!("{err:#}").replace('\n', " ");
    errln!("ckpt: error: {}", crate::output::shown(&line));
    ExitCode::from(code_for(err))
}

/// The tips for a command-line error: clap's own (`rendered`), but where it
/// names a similar argument or subcommand only that; for an unexpected
/// short one (`-x`, `-1`: a value that starts with '-', most likely) both
/// ways to give it, where clap suggests `-- -x` alone, which makes it a
/// positional argument (for `ckpt run`, the command), not an option's
/// value; for an unexpected long one, none.
fn tips(err: &clap::Error, rendered: &str) -> Vec<String> {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    let clap_tips: Vec<&str> = rendered
        .lines()
        .filter_map(|l| l.trim().strip_prefix("tip: "))
        .collect();
    let similar: Vec<String> = clap_tips
        .iter()
        .filter(|t| t.contains(" similar "))
        .map(|t| t.to_string())
        .collect();
    if !similar.is_empty() {
        return similar;
    }
    let unknown = match err.get(ContextKind::InvalidArg) {
        Some(ContextValue::String(arg)) if err.kind() == ErrorKind::UnknownArgument => arg,
        _ => return clap_tips.into_iter().map(str::to_string).collect(),
    };
    if unknown.starts_with("--") {
        // A mistyped option, most likely: no tip rather than a wrong one.
        Vec::new()
    } else if unknown.starts_with('-') {
        vec![format!(
            "a value that starts with '-' goes after '=' for an option (--NAME={unknown}), after '--' for an argument (-- {unknown})"
        )]
    } else {
        clap_tips.into_iter().map(str::to_string).collect()
    }
}

/// Reports a command-line error as one line (help and version print as
/// usual) and returns the exit code.
pub fn usage(err: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        err.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        // Help goes to stdout: one that cannot be written (a full disk) is
        // an error like any command's output; a reader gone (`| head`) is
        // not.
        if let Err(e) = err.print() {
            let e = crate::output::stdout_error(e);
            if !crate::output::is_broken_pipe(&e) {
                return report(&e);
            }
        }
        return ExitCode::from(
            if err.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                USAGE
            } else {
                0
            },
        );
    }
    // clap's message is its first paragraph, sometimes over several lines
    // ("the following required arguments were not provided:" then names),
    // and its tips (a similar argument or subcommand, `--` before a value
    // that starts with '-') are paragraphs of their own: kept, in brackets.
    let rendered = err.render().to_string();
    let paragraph: Vec<&str> = rendered
        .lines()
        .take_while(|l| !l.trim().is_empty())
        .map(str::trim)
        .collect();
    let mut message = paragraph.join(" ");
    for tip in tips(&err, &rendered) {
        message.push_str(&format!(" (tip: {tip})"));
    }
    let message = message.strip_prefix("error: ").unwrap_or(&message);
    errln!(
        "ckpt: error: {} (see ckpt --help)",
        crate::output::shown(message)
    );
    ExitCode::from(USAGE)
}
