//! The command template of `ckpt run`: where the item goes.
//!
//! The replacement strings are GNU parallel's, with its meanings:
//!
//! | string  | replaced by                                  | `dir/x.tar.gz` |
//! |---------|----------------------------------------------|----------------|
//! | `{}`    | the item                                     | `dir/x.tar.gz` |
//! | `{.}`   | the item without its last extension          | `dir/x.tar`    |
//! | `{/}`   | the basename (after the last `/`)            | `x.tar.gz`     |
//! | `{//}`  | the dirname (`.` without a `/`)              | `dir`          |
//! | `{/.}`  | the basename without its last extension      | `x.tar`        |
//! | `{#}`   | the item's line number in this run's input   |                |
//! | `{%}`   | the worker slot running it, 1..=`-j`         |                |
//! | `{N}`   | column N (1-based; `-N` counts from the end) |                |
//!
//! `{N.}`, `{N/}`, `{N//}` and `{N/.}` apply the same to column N. A `q`
//! before the closing brace (`{q}`, `{.q}`, `{2/q}`; ckpt's own, where GNU
//! parallel has `{=…=}` with `Q()`) quotes the value for a POSIX shell, for
//! use inside `sh -c '…'`. Anything else between braces is left as it is.
//! With no replacement string anywhere, the item is appended as the last
//! argument (with `--colsep`, its columns, each an argument, as in GNU
//! parallel). Every argument is expanded in one pass, so a `{}` inside the
//! item itself is never replaced again.

use regex::Regex;

/// A parsed command template.
#[derive(Debug, Clone)]
pub struct Template {
    args: Vec<Vec<Piece>>,
    /// No replacement string anywhere: the item is the last argument.
    append: bool,
}

#[derive(Debug, Clone, PartialEq)]
enum Piece {
    Text(String),
    Value(Replacement),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Replacement {
    /// The item or a column, transformed, perhaps shell-quoted.
    Item {
        column: Option<i64>,
        part: Part,
        quote: bool,
    },
    /// `{#}`.
    Line,
    /// `{%}`.
    Slot,
}

/// What of the item (or column) a replacement string takes.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Part {
    /// As it is.
    Whole,
    /// `.`: without the last extension.
    NoExtension,
    /// `/`: the basename.
    Base,
    /// `//`: the dirname.
    Dir,
    /// `/.`: the basename without the last extension.
    BaseNoExtension,
}

/// What one command is expanded for.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    /// The item (the whole line).
    pub item: &'a str,
    /// Splits the item into columns (`--colsep`); without it the item is
    /// column 1.
    pub colsep: Option<&'a Regex>,
    /// The item's line number in this run's input (0 if not in it).
    pub line: u64,
    /// The worker slot, 1-based.
    pub slot: usize,
}

impl Template {
    /// Parses the command (program and arguments).
    pub fn parse(command: &[String]) -> Template {
        let args: Vec<Vec<Piece>> = command.iter().map(|a| parse_arg(a)).collect();
        let append = !args.iter().flatten().any(|p| matches!(p, Piece::Value(_)));
        Template { args, append }
    }

    /// True if and only if `arg` holds a replacement string.
    pub fn has_replacement(arg: &str) -> bool {
        parse_arg(arg).iter().any(|p| matches!(p, Piece::Value(_)))
    }

    /// True if and only if `{#}` appears: the line numbers are needed.
    pub fn uses_line(&self) -> bool {
        self.args
            .iter()
            .flatten()
            .any(|p| *p == Piece::Value(Replacement::Line))
    }

    /// The program and its arguments for one item.
    pub fn expand(&self, cx: &Context<'_>) -> Vec<String> {
        // Split once per item, and only if some string names a column.
        let mut columns: Option<Vec<&str>> = None;
        let mut out: Vec<String> = self
            .args
            .iter()
            .map(|pieces| {
                let mut arg = String::new();
                for piece in pieces {
                    match piece {
                        Piece::Text(t) => arg.push_str(t),
                        Piece::Value(r) => arg.push_str(&value(r, cx, &mut columns)),
                    }
                }
                arg
            })
            .collect();
        if self.append {
            // As GNU parallel: with --colsep, each column is an argument.
            match cx.colsep {
                Some(sep) => {
                    out.extend(split_columns(sep, cx.item).into_iter().map(str::to_string))
                }
                None => out.push(cx.item.to_string()),
            }
        }
        out
    }
}

impl Template {
    /// The program and its arguments for several items at once (`-n`), as
    /// GNU parallel's `-X` (context replace): an argument that holds an
    /// item's replacement string (any but `{%}`) is repeated once per item,
    /// each copy expanded for its item, so `{}` gives the items as
    /// separate arguments and `x{}y` gives `xay xby`; the other arguments
    /// appear once. An argument with whitespace in its text is a script
    /// (`sh -c 'gzip -k {q} && rm {q}.bak'`): there the context is each
    /// shell word of it (see [`ends_word`]), repeated inside the one
    /// argument (`gzip -k 'a' 'b' && rm 'a'.bak 'b'.bak`), as GNU parallel
    /// replaces in the words of its command line. With no replacement
    /// string the items are appended.
    pub fn expand_many(&self, cxs: &[Context<'_>]) -> Vec<String> {
        let Some(first) = cxs.first() else {
            return Vec::new();
        };
        if let [one] = cxs {
            return self.expand(one);
        }
        let per_item = |pieces: &[Piece]| {
            pieces.iter().any(|p| {
                matches!(
                    p,
                    Piece::Value(Replacement::Item { .. } | Replacement::Line)
                )
            })
        };
        let one = |pieces: &[Piece], cx: &Context<'_>| {
            let mut columns = None;
            let mut arg = String::new();
            for piece in pieces {
                match piece {
                    Piece::Text(t) => arg.push_str(t),
                    Piece::Value(r) => arg.push_str(&value(r, cx, &mut columns)),
                }
            }
            arg
        };
        let mut out = Vec::new();
        for pieces in &self.args {
            if !per_item(pieces) {
                out.push(one(pieces, first));
            } else if is_script(pieces) {
                let mut arg = String::new();
                for (word, space) in script_words(pieces) {
                    if per_item(&word) {
                        let copies: Vec<String> = cxs.iter().map(|cx| one(&word, cx)).collect();
                        arg.push_str(&copies.join(" "));
                    } else {
                        arg.push_str(&one(&word, first));
                    }
                    arg.push_str(&space);
                }
                out.push(arg);
            } else {
                out.extend(cxs.iter().map(|cx| one(pieces, cx)));
            }
        }
        if self.append {
            for cx in cxs {
                match cx.colsep {
                    Some(sep) => {
                        out.extend(split_columns(sep, cx.item).into_iter().map(str::to_string))
                    }
                    None => out.push(cx.item.to_string()),
                }
            }
        }
        out
    }
}

/// True if the argument's own text (not the values put in it) holds
/// whitespace: a script for a shell or an interpreter.
fn is_script(pieces: &[Piece]) -> bool {
    pieces
        .iter()
        .any(|p| matches!(p, Piece::Text(t) if t.contains(char::is_whitespace)))
}

/// Characters that end a word of a shell script outside quotes:
/// whitespace and the control and redirection operators' `|&;()<>`. So in
/// `for f in {q}; do`, the word is `{q}`, not `{q};`.
fn ends_word(c: char) -> bool {
    c.is_whitespace() || "|&;()<>".contains(c)
}

/// Where a shell reading a script is: quotes make a word of what they
/// hold, whitespace included (`"got {}"` is one word); a comment is no
/// word.
#[derive(Clone, Copy, PartialEq)]
enum Quoting {
    None,
    /// After a `\\`: the next character is plain.
    Escaped(Within),
    Single,
    Double,
    /// `$'…'`, where a `\\` escapes the next character, a `'` too.
    AnsiC,
    /// From a `#` that starts a word to the end of the line.
    Comment,
}

/// Where an escaped character is.
#[derive(Clone, Copy, PartialEq)]
enum Within {
    Plain,
    Double,
    AnsiC,
}

impl Quoting {
    /// The state after `c`, which followed `prev` (`None` at a word's start).
    fn after(self, c: char, prev: Option<char>) -> Quoting {
        match (self, c) {
            (Quoting::Escaped(Within::Plain), _) => Quoting::None,
            (Quoting::Escaped(Within::Double), _) => Quoting::Double,
            (Quoting::Escaped(Within::AnsiC), _) => Quoting::AnsiC,
            (Quoting::Comment, '\n') => Quoting::None,
            (Quoting::None, '\\') => Quoting::Escaped(Within::Plain),
            (Quoting::None, '\'') if prev == Some('$') => Quoting::AnsiC,
            (Quoting::None, '\'') => Quoting::Single,
            (Quoting::None, '"') => Quoting::Double,
            (Quoting::None, '#') if prev.is_none() => Quoting::Comment,
            (Quoting::Single, '\'') => Quoting::None,
            (Quoting::Double, '\\') => Quoting::Escaped(Within::Double),
            (Quoting::Double, '"') => Quoting::None,
            (Quoting::AnsiC, '\\') => Quoting::Escaped(Within::AnsiC),
            (Quoting::AnsiC, '\'') => Quoting::None,
            (state, _) => state,
        }
    }

    /// The state after a value put in by a replacement string: plain
    /// text, whatever escape came before it.
    fn after_value(self) -> Quoting {
        match self {
            Quoting::Escaped(Within::Plain) => Quoting::None,
            Quoting::Escaped(Within::Double) => Quoting::Double,
            Quoting::Escaped(Within::AnsiC) => Quoting::AnsiC,
            state => state,
        }
    }
}

/// A script's words, as a shell splits them (quotes, backslashes and
/// comments respected): each a run of pieces with no [`ends_word`]
/// character outside quotes, with the characters that follow it up to the
/// next word, comments included (so they join back to the script). A value
/// put in by a replacement string is part of the word it stands in. A
/// script whose quotes do not balance (a heredoc's text, say) is split at
/// whitespace and operators alone.
fn script_words(pieces: &[Piece]) -> Vec<(Vec<Piece>, String)> {
    split_script(pieces, true).unwrap_or_else(|| {
        split_script(pieces, false).expect("without quoting, a split always ends")
    })
}

/// [`script_words`], with quoting respected or not; `None` when quoting is
/// respected and the script ends inside quotes.
fn split_script(pieces: &[Piece], quoting_on: bool) -> Option<Vec<(Vec<Piece>, String)>> {
    let mut words = vec![(Vec::new(), String::new())];
    let mut quoting = Quoting::None;
    for piece in pieces {
        let Piece::Text(text) = piece else {
            let (word, space) = words.last_mut().expect("one word at least");
            if !space.is_empty() {
                words.push((vec![piece.clone()], String::new()));
            } else {
                word.push(piece.clone());
            }
            quoting = quoting.after_value();
            continue;
        };
        for c in text.chars() {
            let (word, space) = words.last_mut().expect("one word at least");
            let separates = match quoting {
                Quoting::None => ends_word(c),
                Quoting::Comment => true,
                _ => false,
            };
            // The character before this one in its word, if any.
            let prev = match word.last() {
                Some(Piece::Text(t)) if space.is_empty() => t.chars().last(),
                Some(Piece::Value(_)) if space.is_empty() => Some('x'),
                _ => None,
            };
            if quoting_on {
                quoting = quoting.after(c, prev);
            }
            if separates || (quoting_on && quoting == Quoting::Comment) {
                space.push(c);
            } else if !space.is_empty() {
                words.push((vec![Piece::Text(c.to_string())], String::new()));
            } else if let Some(Piece::Text(t)) = word.last_mut() {
                t.push(c);
            } else {
                word.push(Piece::Text(c.to_string()));
            }
        }
    }
    match quoting {
        Quoting::None | Quoting::Comment => Some(words),
        _ => None,
    }
}

fn value<'a>(r: &Replacement, cx: &Context<'a>, columns: &mut Option<Vec<&'a str>>) -> String {
    let (column, part, quote) = match *r {
        Replacement::Line => return cx.line.to_string(),
        Replacement::Slot => return cx.slot.to_string(),
        Replacement::Item {
            column,
            part,
            quote,
        } => (column, part, quote),
    };
    let text = match column {
        None => cx.item,
        Some(n) => {
            let columns = columns.get_or_insert_with(|| match cx.colsep {
                Some(sep) => split_columns(sep, cx.item),
                None => vec![cx.item],
            });
            column_at(columns, n)
        }
    };
    let text = match part {
        Part::Whole => text.to_string(),
        Part::NoExtension => strip_extension(text).to_string(),
        Part::Base => basename(text).to_string(),
        Part::Dir => dirname(text).to_string(),
        Part::BaseNoExtension => strip_extension(basename(text)).to_string(),
    };
    if quote {
        shell_quote(&text)
    } else {
        text
    }
}

/// Column `n` (1-based; negative from the end); a missing one is empty, as
/// in GNU parallel.
fn column_at<'a>(columns: &[&'a str], n: i64) -> &'a str {
    let index = if n > 0 {
        usize::try_from(n - 1).ok()
    } else {
        usize::try_from(-n)
            .ok()
            .and_then(|back| columns.len().checked_sub(back))
    };
    index.and_then(|i| columns.get(i)).copied().unwrap_or("")
}

/// The pieces of one argument. A `{` that does not open a replacement
/// string is text, and the scan goes on after it (so `{{}}` is `{`, the
/// item, `}`).
fn parse_arg(arg: &str) -> Vec<Piece> {
    let mut pieces = Vec::new();
    let mut text = String::new();
    let mut rest = arg;
    while let Some(at) = rest.find('{') {
        text.push_str(&rest[..at]);
        let tail = &rest[at + 1..];
        let parsed = tail
            .find('}')
            .and_then(|end| Some((parse_replacement(&tail[..end])?, end)));
        match parsed {
            Some((r, end)) => {
                if !text.is_empty() {
                    pieces.push(Piece::Text(std::mem::take(&mut text)));
                }
                pieces.push(Piece::Value(r));
                rest = &tail[end + 1..];
            }
            None => {
                text.push('{');
                rest = tail;
            }
        }
    }
    text.push_str(rest);
    if !text.is_empty() {
        pieces.push(Piece::Text(text));
    }
    pieces
}

/// What is between the braces: `#`, `%`, or `[N]PART[q]`.
fn parse_replacement(inner: &str) -> Option<Replacement> {
    match inner {
        // Numbers: quoted, they are the same word (`{#q}` is `{#}`).
        "#" | "#q" => return Some(Replacement::Line),
        "%" | "%q" => return Some(Replacement::Slot),
        _ => {}
    }
    let (inner, quote) = match inner.strip_suffix('q') {
        Some(rest) => (rest, true),
        None => (inner, false),
    };
    let digits = inner
        .strip_prefix('-')
        .unwrap_or(inner)
        .bytes()
        .take_while(u8::is_ascii_digit)
        .count();
    let (column, part) = if digits == 0 {
        (None, inner)
    } else {
        let len = digits + usize::from(inner.starts_with('-'));
        let n: i64 = inner[..len].parse().ok()?;
        // `{0}` is not a column (GNU parallel leaves it too).
        if n == 0 {
            return None;
        }
        (Some(n), &inner[len..])
    };
    let part = match part {
        "" => Part::Whole,
        "." => Part::NoExtension,
        "/" => Part::Base,
        "//" => Part::Dir,
        "/." => Part::BaseNoExtension,
        _ => return None,
    };
    Some(Replacement::Item {
        column,
        part,
        quote,
    })
}

/// GNU parallel's `{.}` (`s:\.[^/.]+$::`): a `.` and at least one more
/// character, none of them `/` or `.`, removed from the end. So
/// `sub.dir/bar` and `foo.` stay, and `.bashrc` becomes empty, as there.
pub fn strip_extension(s: &str) -> &str {
    match s.rfind('.') {
        Some(dot) if dot + 1 < s.len() && !s[dot + 1..].contains('/') => &s[..dot],
        _ => s,
    }
}

/// GNU parallel's `{/}` (`s:.*/::`): everything after the last `/`, so
/// `a/b/` gives the empty string.
pub fn basename(s: &str) -> &str {
    s.rfind('/').map_or(s, |slash| &s[slash + 1..])
}

/// GNU parallel's `{//}` (Perl's `File::Basename::dirname`, which is POSIX
/// dirname(1)): `.` without a `/`, `/` for `/x`, and trailing slashes do
/// not count (`a/b/` gives `a`).
pub fn dirname(s: &str) -> &str {
    let trimmed = s.trim_end_matches('/');
    if trimmed.is_empty() {
        return if s.is_empty() { "." } else { "/" };
    }
    match trimmed.rfind('/') {
        None => ".",
        Some(slash) => match trimmed[..slash].trim_end_matches('/') {
            "" => "/",
            dir => dir,
        },
    }
}

pub use ckpt::inspect::shell_quote;

/// The columns of `item` at the matches of `sep` (`--colsep`), each with
/// the blanks at its ends trimmed, as GNU parallel's `--colsep` does (it
/// implies `--trim rl`): `alice , 30` at `,` is `alice` and `30`. A match
/// of no text (`\b`) is not a separator.
pub fn split_columns<'i>(sep: &Regex, item: &'i str) -> Vec<&'i str> {
    let trim = |s: &'i str| s.trim_matches([' ', '\t', '\r', '\x0b', '\x0c']);
    let mut out = Vec::new();
    let mut from = 0;
    for m in sep.find_iter(item).filter(|m| !m.is_empty()) {
        out.push(trim(&item[from..m.start()]));
        from = m.end();
    }
    out.push(trim(&item[from..]));
    out
}

/// `s` as one word of a POSIX shell, quoted only if it has to be (for
/// printing command lines that read naturally and paste back exactly).
/// A word holding characters that [`shown`](crate::output::shown)
/// escapes (control characters, bidirectional overrides) is written in
/// `$'…'` form instead, as bash, zsh and ksh read it: printed, it cannot
/// recolour or move the terminal's cursor, and it still pastes back.
pub fn shell_word(s: &str) -> String {
    if s.chars().any(crate::output::needs_escape) {
        ansi_c_quote(s)
    } else {
        posix_word(s)
    }
}

/// `s` as one word of a POSIX shell, quoted (`'…'`) only if it has to be,
/// whatever it holds: the form a job's commands are recorded in (so the
/// same command keeps the same text).
pub fn posix_word(s: &str) -> String {
    ckpt::inspect::shell_arg(s)
}

/// `s` in the shell's `$'…'` form: every escape written in full (`\xHH`,
/// two digits), so a digit after it cannot be read as part of it. A
/// character beyond ASCII is written as its UTF-8 bytes, not as `\uHHHH`,
/// which bash decodes only in a UTF-8 locale (not in cron's `C`).
fn ansi_c_quote(s: &str) -> String {
    let mut out = String::from("$'");
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if crate::output::needs_escape(c) => {
                for byte in c.encode_utf8(&mut [0; 4]).bytes() {
                    out.push_str(&format!("\\x{byte:02x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

#[cfg(test)]
mod tests;
