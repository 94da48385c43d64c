//! Which command did it: `ckpt run` records its command template as the
//! job's latest, tags every item it completes with it, and warns once when
//! the job was last run with another command.
//!
//! "The same command" is the argv template exactly as given, before any
//! replacement and before the program is looked up on `PATH`: options that
//! change what runs (`--colsep`, the items file) are not part of it.

use anyhow::Result;
use ckpt::model::CommandRecord;
use ckpt::Queue;

use super::template::{posix_word, shell_word};
use crate::output::shown;

/// The recorded text of a command template: its words, each shell-quoted
/// where needed, joined by spaces (it pastes back as the same argv). The
/// form never changes (`'…'`, control characters as they are), so the same
/// command keeps matching what earlier runs recorded.
pub fn command_text(argv: &[String]) -> String {
    argv.iter()
        .map(|w| posix_word(w))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Records `argv` as the job's latest command, prints the warning of
/// [`warning`] if there is one, and returns `queue` tagging its
/// completions with the command.
pub fn record(queue: Queue, job: &str, argv: &[String]) -> Result<Queue> {
    let text = command_text(argv);
    let previous = queue.commands()?.latest().cloned();
    let now = queue.record_command(&text)?;
    if let Some(line) = warning(job, previous.as_ref(), &now) {
        errln!("{line}");
    }
    Ok(queue.completed_by(Some(now.id)))
}

/// The one line printed when the job was last run with a command other
/// than `now`; `None` for the same command or a job's first.
pub fn warning(job: &str, previous: Option<&CommandRecord>, now: &CommandRecord) -> Option<String> {
    let previous = previous.filter(|p| p.id != now.id)?;
    Some(format!(
        "ckpt: warning: job '{}' was last run with `{}` (completed {} item{}); now `{}`; `ckpt retry {} --completed-by-other-command` re-runs the items other commands completed",
        shown(job),
        shown(&previous.command),
        previous.completed,
        if previous.completed == 1 { "" } else { "s" },
        shown(&now.command),
        shell_word(job),
    ))
}

#[cfg(test)]
mod tests {
    use ckpt::Timestamp;

    use super::*;

    fn record(id: i64, command: &str, completed: u64) -> CommandRecord {
        CommandRecord {
            id,
            command: command.into(),
            first_used: Timestamp(1),
            last_used: Timestamp(1),
            completed,
        }
    }

    #[test]
    fn text_quotes_only_what_needs_it() {
        let argv = ["sh", "-c", "echo {} > out/{}.txt", "it's"].map(String::from);
        assert_eq!(
            command_text(&argv),
            r"sh -c 'echo {} > out/{}.txt' 'it'\''s'"
        );
        // A script of several lines keeps the text earlier runs recorded
        // (not the `$'…'` of display), so it stays the same command.
        let argv = ["sh", "-c", "set -e\n\techo {}"].map(String::from);
        assert_eq!(command_text(&argv), "sh -c 'set -e\n\techo {}'");
        // Shown escaped in the warning.
        let line = warning("j", Some(&record(1, "sh -c 'a\nb'", 1)), &record(2, "x", 0)).unwrap();
        assert!(line.contains(r"`sh -c 'a\nb'`"), "{line}");
    }

    #[test]
    fn warns_only_for_another_command() {
        let old = record(1, "echo {}", 812);
        let new = record(2, "printf {}", 0);
        assert_eq!(warning("j", None, &new), None, "a first run");
        assert_eq!(warning("j", Some(&new), &new), None, "the same command");
        let line = warning("j", Some(&old), &new).unwrap();
        assert!(
            line.starts_with(
                "ckpt: warning: job 'j' was last run with `echo {}` (completed 812 items); now `printf {}`"
            ),
            "{line}"
        );
        assert!(!line.contains('\n'));
        let one = warning("j", Some(&record(1, "echo {}", 1)), &new).unwrap();
        assert!(one.contains("(completed 1 item);"), "{one}");
    }
}
