//! Exit codes, mapped from errors in one place.
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success |
//! | 1 | the work failed: dead items after `ckpt run` |
//! | 2 | usage error or invalid input (bad name, JSON, items file) |
//! | 3 | not found: unknown job, no checkpoint, no store file, `retry` keys matching no item or an unknown `--completed-by` command |
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

/// The tips for a command-line error: clap's own (`rendered`), but in
/// place of its "to pass '-1' as a value, use '-- -1'", which makes an
/// option's value a positional argument (for `ckpt run`, the command) and
/// names only the start of a token clap read as short options (`-1` of
/// `-1d`), the whole token (found in `argv`) after '=' when it follows an
/// option, else after `--`; for an unknown long option, no such tip (a
/// typo, most likely).
fn tips(err: &clap::Error, rendered: &str, argv: &[String]) -> Vec<String> {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    let mut tips: Vec<String> = rendered
        .lines()
        .filter_map(|l| l.trim().strip_prefix("tip: "))
        .filter(|t| !t.starts_with("to pass '"))
        .map(str::to_string)
        .collect();
    let unknown = match err.get(ContextKind::InvalidArg) {
        Some(ContextValue::String(arg)) if err.kind() == ErrorKind::UnknownArgument => arg,
        _ => return tips,
    };
    if unknown.starts_with('-') && !unknown.starts_with("--") && tips.is_empty() {
        let at = argv
            .iter()
            .skip(1)
            .position(|a| a.starts_with(unknown.as_str()));
        let (previous, token) = match at {
            Some(i) => (argv.get(i).filter(|_| i > 0), argv[i + 1].as_str()),
            None => (None, unknown.as_str()),
        };
        tips.push(match previous {
            Some(option) if option.starts_with("--") && !option.contains('=') => {
                format!("a value that starts with '-' goes after '=': {option}={token}")
            }
            _ => format!("a value that starts with '-' goes after '--': -- {token}"),
        });
    }
    tips
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
    let argv: Vec<String> = std::env::args_os()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    for tip in tips(&err, &rendered, &argv) {
        message.push_str(&format!(" (tip: {tip})"));
    }
    let message = message.strip_prefix("error: ").unwrap_or(&message);
    errln!(
        "ckpt: error: {} (see ckpt --help)",
        crate::output::shown(message)
    );
    ExitCode::from(USAGE)
}
