//! Talking to the Redis server: running a script (alone, or several in one
//! `MULTI`/`EXEC`), the arguments and replies every operation shares, and
//! errors.

use ::redis::{ErrorKind, RedisError, ServerErrorKind, Value};

use super::rows::{int, tagged};
use super::scripts::Lua;
use super::RedisStore;
use crate::error::{Error, Result};
use crate::store::url::{redact_url, scrub};

impl RedisStore {
    pub(super) fn block<F: std::future::Future>(&self, f: F) -> F::Output {
        self.runtime.block_on(f)
    }

    /// Runs `lua` with the prefix, the retention and `args`; returns its
    /// reply.
    pub(super) fn call(&self, lua: &Lua, args: Vec<String>) -> Result<Value> {
        let mut invocation = lua.script().prepare_invoke();
        invocation.arg(&self.prefix).arg(&self.ttl_ms);
        for arg in args {
            invocation.arg(arg);
        }
        let mut conn = self.conn.clone();
        self.run(invocation.invoke_async::<Value>(&mut conn))
    }

    /// Drives a driver call to its end (abandoned at the caller's request,
    /// see [`crate::interrupt`]), its error as the library's.
    pub(super) fn run<T>(
        &self,
        f: impl std::future::Future<Output = ::redis::RedisResult<T>>,
    ) -> Result<T> {
        crate::interrupt::block_on(&self.runtime, async {
            f.await.map_err(|e| redis_err(e, &self.url))
        })
    }

    /// Runs `lua` once per argument list, all in one `MULTI`/`EXEC`, so
    /// that no other client's command runs in between; returns the replies.
    pub(super) fn call_atomic(&self, lua: &Lua, arg_lists: Vec<Vec<String>>) -> Result<Vec<Value>> {
        let mut pipe = ::redis::pipe();
        pipe.atomic();
        for args in arg_lists {
            pipe.cmd("EVAL")
                .arg(lua.code())
                .arg(0)
                .arg(&self.prefix)
                .arg(&self.ttl_ms)
                .arg(args);
        }
        let mut conn = self.conn.clone();
        self.run(pipe.query_async::<Vec<Value>>(&mut conn))
    }

    /// A reply `{'ok', n}` as `n`.
    pub(super) fn ok_count(reply: &Value) -> Result<u64> {
        match tagged(reply)? {
            (tag, [n]) if tag == "ok" => Ok(int(n)? as u64),
            (tag, _) => Err(unexpected(&tag)),
        }
    }
}

/// A count or limit as a script argument: Lua numbers are doubles, exact
/// up to 2^53, and Redis takes ranges as 64-bit integers.
pub(super) fn count_arg(n: usize) -> String {
    n.min(1 << 40).to_string()
}

pub(super) fn unexpected(tag: &str) -> Error {
    Error::Storage(format!(
        "unexpected reply {tag:?} from a Redis store script"
    ))
}

pub(super) fn to_json(v: &serde_json::Value) -> Result<String> {
    serde_json::to_string(v)
        .map_err(|e| Error::InvalidInput(format!("value does not serialise: {e}")))
}

/// Maps a driver error to the library's error; `url` is only used for the
/// message, and its password never appears there.
pub(crate) fn redis_err(e: RedisError, url: &str) -> Error {
    let redacted = redact_url(url);
    // One line: a driver's parse error spans several.
    let message = scrub(&e.to_string(), url)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() || e.is_timeout() {
        return Error::Unavailable(format!("cannot reach Redis at {redacted}: {message}"));
    }
    match e.kind() {
        ErrorKind::Server(
            ServerErrorKind::BusyLoading
            | ServerErrorKind::TryAgain
            | ServerErrorKind::MasterDown
            | ServerErrorKind::ClusterDown
            | ServerErrorKind::ReadOnly,
        ) => {
            return Error::Unavailable(format!(
                "Redis at {redacted} cannot take writes right now: {message}"
            ))
        }
        // What answered is not speaking Redis's protocol: the bytes the
        // driver could not parse mean nothing to the user.
        ErrorKind::Parse => {
            return Error::Storage(format!(
                "{redacted}: the reply is not in Redis's protocol; is that host and port a Redis server?"
            ))
        }
        ErrorKind::AuthenticationFailed | ErrorKind::InvalidClientConfig => {
            return Error::Open(format!("{redacted}: {message}"))
        }
        _ => {}
    }
    match e.code() {
        // `lua/present.lua`: the store's keys are gone from under an open
        // handle.
        Some("CKPTGONE") => Error::Storage(format!(
            "the ckpt store with prefix \"{prefix}\" at {redacted} is gone: its key \"{prefix}:meta\" no longer exists, so Redis lost the store's data (a restart without persistence, a flush, or eviction); nothing was written (open the store again to start a new, empty one)",
            prefix = e.detail().unwrap_or("?")
        )),
        // A long script of another client, or a server still starting.
        Some("BUSY" | "LOADING") => {
            Error::Unavailable(format!("Redis at {redacted} is busy: {message}"))
        }
        Some("OOM") => Error::Storage(format!(
            "Redis at {redacted} is out of memory (maxmemory): {message}"
        )),
        Some("NOAUTH" | "WRONGPASS" | "NOPERM") => Error::Open(format!("{redacted}: {message}")),
        _ => Error::Storage(format!("Redis at {redacted}: {message}")),
    }
}
