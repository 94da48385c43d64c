//! Input checks shared by every store, so that a bad name or an oversize
//! value is refused before anything is written.

use serde_json::Value;

use crate::error::{Error, Result};

/// Longest job name, in bytes.
pub const MAX_JOB_NAME_BYTES: usize = 200;
/// Longest item key, in bytes.
pub const MAX_ITEM_KEY_BYTES: usize = 64 * 1024;
/// Default limit on a checkpoint's serialised state: 1 MiB.
pub const DEFAULT_STATE_LIMIT: usize = 1024 * 1024;
/// Largest serialised stats an item's completion may keep: 64 KiB (stats
/// are counters; `ckpt items` and the dashboard show them whole), before
/// the `duration_ms` a runner adds.
pub const MAX_STATS_BYTES: usize = 64 * 1024;
/// Default number of history entries kept per job.
pub const DEFAULT_HISTORY_KEEP: usize = 100;

/// Checks a job name: 1 to 200 bytes, no control characters, no leading or
/// trailing whitespace, not `.` or `..`.
pub fn job_name(name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(Error::InvalidInput("job name is empty".into()));
    }
    if name.len() > MAX_JOB_NAME_BYTES {
        return Err(Error::InvalidInput(format!(
            "job name is {} bytes, longer than {MAX_JOB_NAME_BYTES}",
            name.len()
        )));
    }
    if name.chars().any(char::is_control) {
        return Err(Error::InvalidInput(format!(
            "job name {name:?} contains a control character"
        )));
    }
    if name.trim() != name {
        return Err(Error::InvalidInput(format!(
            "job name {name:?} starts or ends with whitespace"
        )));
    }
    // URLs cannot carry these as a path segment (browsers resolve them,
    // escaped or not), and the API and dashboard address a job by name.
    if name == "." || name == ".." {
        return Err(Error::InvalidInput(format!(
            "job name {name:?} is a path segment of its own, which a URL cannot name; choose another"
        )));
    }
    Ok(())
}

/// Checks an item key: not empty, at most 64 KiB, no NUL.
pub fn item_key(key: &str) -> Result<()> {
    if key.is_empty() {
        return Err(Error::InvalidInput("item key is empty".into()));
    }
    if key.len() > MAX_ITEM_KEY_BYTES {
        return Err(Error::InvalidInput(format!(
            "item key is {} bytes, longer than {MAX_ITEM_KEY_BYTES}",
            key.len()
        )));
    }
    if key.contains('\0') {
        return Err(Error::InvalidInput("item key contains a NUL byte".into()));
    }
    Ok(())
}

/// Serialises `state` and checks it against `limit`; returns its size.
pub fn state_size(state: &Value, limit: usize) -> Result<usize> {
    serialised_within("checkpoint state", state, limit)
}

/// Checks the stats a completion would keep: nested at most
/// [`MAX_JSON_NESTING`] deep, at most [`MAX_STATS_BYTES`] serialised, and
/// with no NUL character (which PostgreSQL cannot store: stats must be
/// storable in every store, or the same run would complete on one and not
/// on another).
pub fn stats(stats: &Value) -> Result<()> {
    nesting("stats", stats)?;
    if holds_nul(stats) {
        return Err(Error::InvalidInput(
            "stats hold a NUL character (\\u0000), which not every store can keep".into(),
        ));
    }
    serialised_within("item stats", stats, MAX_STATS_BYTES).map(drop)
}

/// Checks a JSON value a store keeps (a cursor, state or payload: `what`):
/// its [`nesting`], and no NUL character in any string or key, which
/// PostgreSQL cannot store. Refused on every store alike, so that a job
/// runs the same on each, and before anything is written.
pub fn stored_json(what: &str, value: &Value) -> Result<()> {
    nesting(what, value)?;
    if holds_nul(value) {
        return Err(Error::InvalidInput(format!(
            "{what} holds a NUL character (\\u0000), which not every store can keep; nothing was written"
        )));
    }
    Ok(())
}

/// Checks a checkpoint's stage: no NUL character, as [`stored_json`].
pub fn stage(stage: Option<&str>) -> Result<()> {
    match stage {
        Some(s) if s.contains('\0') => Err(Error::InvalidInput(
            "the stage holds a NUL character (\\u0000), which not every store can keep; nothing was written".into(),
        )),
        _ => Ok(()),
    }
}

/// True if a string of `value` (an object's key included) holds a NUL.
fn holds_nul(value: &Value) -> bool {
    // Iterative, as `nesting`: the value may be deep.
    let mut todo = vec![value];
    while let Some(v) = todo.pop() {
        match v {
            Value::String(s) if s.contains('\0') => return true,
            Value::Array(a) => todo.extend(a),
            Value::Object(o) => {
                if o.keys().any(|k| k.contains('\0')) {
                    return true;
                }
                todo.extend(o.values());
            }
            _ => {}
        }
    }
    false
}

/// The size of `value` (`what`) as JSON, if at most `limit` bytes.
fn serialised_within(what: &'static str, value: &Value, limit: usize) -> Result<usize> {
    let size = serde_json::to_vec(value)
        .map_err(|e| Error::InvalidInput(format!("{what} does not serialise: {e}")))?
        .len();
    if size > limit {
        return Err(Error::LimitExceeded { what, size, limit });
    }
    Ok(size)
}

/// The deepest nesting of arrays and objects a stored value may have. The
/// stores read JSON back with `serde_json`, which refuses more than 128
/// levels: a deeper value could be written but never read again (its job
/// or item would then read as corrupt).
pub const MAX_JSON_NESTING: usize = 127;

/// Checks that `value` (a cursor, state or payload: `what`) nests arrays
/// and objects at most [`MAX_JSON_NESTING`] deep.
pub fn nesting(what: &str, value: &Value) -> Result<()> {
    // Iterative: the value may be as deep as the caller could build it.
    let mut stack = vec![(value, 0usize)];
    while let Some((v, depth)) = stack.pop() {
        let children: Box<dyn Iterator<Item = &Value>> = match v {
            Value::Array(a) => Box::new(a.iter()),
            Value::Object(o) => Box::new(o.values()),
            _ => continue,
        };
        if depth + 1 > MAX_JSON_NESTING {
            return Err(Error::InvalidInput(format!(
                "{what} nests arrays or objects more than {MAX_JSON_NESTING} deep, more than \
                 can be read back; nothing was written"
            )));
        }
        stack.extend(children.map(|c| (c, depth + 1)));
    }
    Ok(())
}

/// Parses JSON text given by a user (a cursor or state on the command
/// line). An integer beyond 64 bits is refused: it would be kept as the
/// nearest float (`18446744073709551616` read back as
/// `1.8446744073709552e19`), so a cursor would resume from elsewhere.
pub fn parse_json(what: &str, text: &str) -> Result<Value> {
    let value: Value = serde_json::from_str(text)
        .map_err(|e| Error::InvalidInput(format!("{what} is not JSON: {e}")))?;
    if let Some(integer) = wide_integer(text) {
        return Err(Error::InvalidInput(format!(
            "{what} holds the integer {integer}, beyond the 64 bits a JSON number is kept in \
             (-2^63 to 2^64-1): it would be read back rounded; write it as a string"
        )));
    }
    Ok(value)
}

/// The first integer literal of the JSON text `json` (valid JSON) that fits
/// neither an `i64` nor a `u64`, if any.
fn wide_integer(json: &str) -> Option<&str> {
    let bytes = json.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                // Skip the string, escapes included.
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
            }
            b'-' | b'0'..=b'9' => {
                let start = i;
                while i < bytes.len()
                    && matches!(bytes[i], b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')
                {
                    i += 1;
                }
                let number = &json[start..i];
                let integer = !number.contains(['.', 'e', 'E']);
                if integer && number.parse::<i64>().is_err() && number.parse::<u64>().is_err() {
                    return Some(number);
                }
            }
            _ => i += 1,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_names() {
        assert!(job_name("import-2024/users").is_ok());
        assert!(job_name("é ü 日本").is_ok());
        assert!(job_name("...").is_ok() && job_name("./a").is_ok());
        for bad in ["", " x", "x ", "a\nb", "a\tb", "a\u{7f}b", ".", ".."] {
            assert!(
                matches!(job_name(bad), Err(Error::InvalidInput(_))),
                "{bad:?}"
            );
        }
        assert!(job_name(&"x".repeat(MAX_JOB_NAME_BYTES)).is_ok());
        assert!(job_name(&"x".repeat(MAX_JOB_NAME_BYTES + 1)).is_err());
    }

    fn nested(depth: usize) -> Value {
        (0..depth).fold(Value::from(1), |v, _| Value::Array(vec![v]))
    }

    #[test]
    fn nesting_stops_where_serde_json_stops_reading() {
        // The limit is what the stores can read back: at it, the text
        // parses again; one more, and it does not (so it is refused).
        let deepest = nested(MAX_JSON_NESTING);
        assert!(nesting("cursor", &deepest).is_ok());
        let text = serde_json::to_string(&deepest).unwrap();
        assert!(serde_json::from_str::<Value>(&text).is_ok());

        let deeper = nested(MAX_JSON_NESTING + 1);
        let err = nesting("cursor", &deeper).unwrap_err();
        assert!(
            matches!(&err, Error::InvalidInput(m) if m.starts_with("cursor nests")),
            "{err}"
        );
        let text = serde_json::to_string(&deeper).unwrap();
        assert!(serde_json::from_str::<Value>(&text).is_err());

        // Objects count as arrays do, anywhere in the value.
        let mut obj = serde_json::json!({"a": [1, {"b": nested(MAX_JSON_NESTING - 3)}]});
        assert!(nesting("state", &obj).is_ok());
        obj["a"][1]["b"] = nested(MAX_JSON_NESTING - 2);
        assert!(nesting("state", &obj).is_err());
        assert!(nesting("state", &Value::from("flat")).is_ok());
    }

    #[test]
    fn integers_beyond_64_bits_are_refused_not_rounded() {
        for fits in [
            "9223372036854775807",
            "-9223372036854775808",
            "18446744073709551615",
            "1e30",
            "1.5",
            "-0",
            r#"{"id": 18446744073709551615, "s": "123456789012345678901234567890"}"#,
            r#"["\"", 1, "\\", 2]"#,
        ] {
            assert!(parse_json("cursor", fits).is_ok(), "{fits}");
        }
        for (wide, named) in [
            ("18446744073709551616", "18446744073709551616"),
            ("-9223372036854775809", "-9223372036854775809"),
            (
                r#"{"s": "\"1\"", "id": 123456789012345678901234567890}"#,
                "123456789012345678901234567890",
            ),
            ("[1, [2, 99999999999999999999]]", "99999999999999999999"),
        ] {
            let err = parse_json("cursor", wide).unwrap_err();
            assert!(
                matches!(&err, Error::InvalidInput(m) if m.starts_with(&format!("cursor holds the integer {named}, beyond"))),
                "{wide}: {err}"
            );
        }
        assert!(parse_json("cursor", "{")
            .unwrap_err()
            .to_string()
            .contains("is not JSON"));
    }

    #[test]
    fn item_keys() {
        assert!(item_key("s3://bucket/a b.csv").is_ok());
        assert!(item_key("").is_err());
        assert!(item_key("a\0b").is_err());
        assert!(item_key(&"k".repeat(MAX_ITEM_KEY_BYTES + 1)).is_err());
    }

    #[test]
    fn state_limit() {
        let v = Value::String("x".repeat(100));
        assert_eq!(state_size(&v, 102).unwrap(), 102);
        assert!(matches!(
            state_size(&v, 101),
            Err(Error::LimitExceeded {
                size: 102,
                limit: 101,
                ..
            })
        ));
    }

    #[test]
    fn json_text() {
        assert_eq!(parse_json("cursor", "{\"a\":1}").unwrap()["a"], 1);
        assert!(
            matches!(parse_json("cursor", "{a:1}"), Err(Error::InvalidInput(m)) if m.starts_with("cursor is not JSON"))
        );
    }
}
