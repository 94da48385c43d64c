//! The command template of `ckpt run`: where the item goes.
//!
//! `{}` is replaced by the item as it is, `{q}` by the item quoted for a
//! POSIX shell (as GNU parallel quotes its replacement strings), for use
//! inside `sh -c '…'`. With neither anywhere, the item is appended as the
//! last argument.

use std::process::Command;

/// `{}` and `{q}` in an argument are replaced by the item (verbatim, and
/// shell-quoted); with neither anywhere, the item is the last argument.
pub fn build_command(template: &[String], item: &str) -> Command {
    let has_placeholder = template
        .iter()
        .any(|a| a.contains("{}") || a.contains("{q}"));
    let mut args = template.iter().map(|a| substitute(a, item));
    let mut cmd = Command::new(args.next().unwrap_or_default());
    cmd.args(args);
    if !has_placeholder {
        cmd.arg(item);
    }
    cmd
}

/// One pass over `arg`, so that a `{}` or `{q}` inside the item itself is
/// never substituted again.
fn substitute(arg: &str, item: &str) -> String {
    let mut out = String::with_capacity(arg.len() + item.len());
    let mut rest = arg;
    while let Some(at) = rest.find('{') {
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        if let Some(after) = tail.strip_prefix("{}") {
            out.push_str(item);
            rest = after;
        } else if let Some(after) = tail.strip_prefix("{q}") {
            out.push_str(&shell_quote(item));
            rest = after;
        } else {
            out.push('{');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    out
}

/// `s` as one word of a POSIX shell: in single quotes, each `'` written as
/// `'\''` (close, escaped quote, reopen). Nothing inside single quotes is
/// special to the shell: no `$`, backquote, `;`, glob or newline.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(template: &[&str], item: &str) -> Vec<String> {
        let template: Vec<String> = template.iter().map(|s| s.to_string()).collect();
        let cmd = build_command(&template, item);
        std::iter::once(cmd.get_program())
            .chain(cmd.get_args())
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn placeholders() {
        assert_eq!(args(&["echo"], "a b"), ["echo", "a b"]);
        assert_eq!(args(&["cp", "{}", "{}.bak"], "x"), ["cp", "x", "x.bak"]);
        assert_eq!(
            args(&["sh", "-c", "echo {q}"], "it's $(x)"),
            ["sh", "-c", r"echo 'it'\''s $(x)'"]
        );
        // Neither placeholder is substituted inside the item.
        assert_eq!(args(&["echo", "{}"], "{q}{}"), ["echo", "{q}{}"]);
        assert_eq!(args(&["echo", "{q}"], "{}"), ["echo", "'{}'"]);
        // Other braces are left alone.
        assert_eq!(args(&["echo", "{x} {", "{}"], "i"), ["echo", "{x} {", "i"]);
    }

    #[test]
    fn quoting() {
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("plain"), "'plain'");
        assert_eq!(shell_quote("'"), r"''\'''");
        assert_eq!(shell_quote("a\nb"), "'a\nb'");
    }
}
