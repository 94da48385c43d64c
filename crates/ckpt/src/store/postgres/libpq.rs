//! libpq's habits for where a password comes from, so a URL need not
//! carry it (a Kubernetes secret in `PGPASSWORD`, or a password file).
//!
//! The order is libpq's: a password in the URL, then `PGPASSWORD`, then the
//! password file (`PGPASSFILE`, else `~/.pgpass`). The file has lines
//! `host:port:database:user:password`; a field that is exactly `*` matches
//! anything, `\:` and `\\` stand for `:` and `\`, lines starting with `#`
//! are comments. Like libpq, a file that is not a plain file, or that its
//! group or others may read, is ignored with a warning.
//!
//! The driver keeps one password for all hosts of a multi-host URL: the
//! line of the first host that has one is used.

use std::path::{Path, PathBuf};

use tokio_postgres::config::Host;

/// Where the password of a connection came from (for messages; never the
/// password itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PasswordSource {
    /// No password was found anywhere.
    None,
    /// The URL holds it.
    Url,
    /// The `PGPASSWORD` environment variable.
    Env,
    /// A line of a password file.
    File { path: PathBuf, line: usize },
}

impl PasswordSource {
    /// "given in the URL", "from PGPASSWORD", … for messages.
    pub(crate) fn describe(&self) -> String {
        match self {
            PasswordSource::None => "no password was given".into(),
            PasswordSource::Url => "the password in the URL".into(),
            PasswordSource::Env => "the password in PGPASSWORD".into(),
            PasswordSource::File { path, line } => {
                format!("the password from {} line {line}", path.display())
            }
        }
    }
}

/// Fills in the password of `config` the way libpq would, when the URL
/// has none; returns where it came from.
pub(crate) fn apply_password(config: &mut tokio_postgres::Config) -> PasswordSource {
    if config.get_password().is_some() {
        return PasswordSource::Url;
    }
    if let Some(pw) = std::env::var_os("PGPASSWORD").filter(|p| !p.is_empty()) {
        use std::os::unix::ffi::OsStrExt;
        config.password(pw.as_bytes());
        return PasswordSource::Env;
    }
    let Some(path) = password_file() else {
        return PasswordSource::None;
    };
    let Some(user) = config.get_user().map(str::to_string) else {
        return PasswordSource::None;
    };
    let Some(contents) = read_password_file(&path) else {
        return PasswordSource::None;
    };
    let db = config.get_dbname().unwrap_or(&user).to_string();
    let ports = config.get_ports();
    for (i, host) in config.get_hosts().iter().enumerate() {
        let host = match host {
            Host::Tcp(h) => h.clone(),
            // libpq matches a socket connection against `localhost`.
            Host::Unix(_) => "localhost".into(),
        };
        let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
        if let Some((line, pw)) = lookup(&contents, &host, port, &db, &user) {
            config.password(pw);
            return PasswordSource::File { path, line };
        }
    }
    PasswordSource::None
}

/// The password file to read: `PGPASSFILE`, else `~/.pgpass`.
pub(crate) fn password_file() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("PGPASSFILE").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    std::env::var_os("HOME").map(|h| Path::new(&h).join(".pgpass"))
}

/// The file's text, or `None` when it is missing or refused (with a
/// warning, as libpq gives).
fn read_password_file(path: &Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).ok()?;
    if !meta.is_file() {
        tracing::warn!(
            "password file {} is not a plain file; ignored",
            path.display()
        );
        return None;
    }
    if meta.permissions().mode() & 0o077 != 0 {
        tracing::warn!(
            "password file {} has group or world access; permissions should be u=rw (0600) or less; ignored",
            path.display()
        );
        return None;
    }
    std::fs::read_to_string(path).ok()
}

/// The first line of a password file matching the connection: its number
/// (from 1) and the password.
pub(crate) fn lookup(
    contents: &str,
    host: &str,
    port: u16,
    db: &str,
    user: &str,
) -> Option<(usize, String)> {
    let port = port.to_string();
    let wanted = [host, port.as_str(), db, user];
    contents.lines().enumerate().find_map(|(i, line)| {
        let line = line.trim_end_matches('\r');
        if line.is_empty() || line.starts_with('#') {
            return None;
        }
        let fields = split_fields(line)?;
        let matches = fields[..4]
            .iter()
            .zip(wanted)
            .all(|((text, wildcard), want)| *wildcard || text == want);
        matches.then(|| (i + 1, fields[4].0.clone()))
    })
}

/// The five fields of a line, unescaped, each with whether it is the
/// wildcard `*`; `None` for a line with fewer than five.
fn split_fields(line: &str) -> Option<Vec<(String, bool)>> {
    let mut fields = Vec::with_capacity(5);
    let (mut field, mut raw) = (String::new(), String::new());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                let next = chars.next()?;
                field.push(next);
                raw.push('\\');
                raw.push(next);
            }
            ':' if fields.len() < 4 => {
                fields.push((std::mem::take(&mut field), raw == "*"));
                raw.clear();
            }
            c => {
                field.push(c);
                raw.push(c);
            }
        }
    }
    fields.push((field, false));
    (fields.len() == 5).then_some(fields)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_file_lines_match_like_libpq() {
        let file = "# comment\n\
                    db1.example:5432:app:bob:first\n\
                    *:5433:*:bob:second\n\
                    127.0.0.1:*:app:*:th\\:ird\\\\x\n\
                    h\\:x:5432:app:bob:fourth:with:colons\n\
                    \\*:5432:app:carol:literal-star\n\
                    short:line\n";
        let l = |h, p, d, u| lookup(file, h, p, d, u);
        assert_eq!(
            l("db1.example", 5432, "app", "bob"),
            Some((2, "first".into()))
        );
        assert_eq!(
            l("anyhost", 5433, "other", "bob"),
            Some((3, "second".into()))
        );
        assert_eq!(
            l("127.0.0.1", 6000, "app", "eve"),
            Some((4, "th:ird\\x".into()))
        );
        assert_eq!(
            l("h:x", 5432, "app", "bob"),
            Some((5, "fourth:with:colons".into()))
        );
        // `\*` is a literal star, not a wildcard.
        assert_eq!(l("db9", 5432, "app", "carol"), None);
        assert_eq!(
            l("*", 5432, "app", "carol"),
            Some((6, "literal-star".into()))
        );
        assert_eq!(l("db1.example", 5432, "app", "alice"), None);
        assert_eq!(l("db1.example", 5433, "other", "alice"), None);
    }

    #[test]
    fn sources_never_show_the_password() {
        let file = PasswordSource::File {
            path: "/x/.pgpass".into(),
            line: 3,
        };
        assert_eq!(file.describe(), "the password from /x/.pgpass line 3");
        assert_eq!(PasswordSource::Env.describe(), "the password in PGPASSWORD");
    }
}
