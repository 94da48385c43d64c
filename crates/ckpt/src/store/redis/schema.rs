//! The Redis store's schema: the `P:meta` hash that marks a prefix as a
//! ckpt store and holds its version, checked (and created) on open by
//! `lua/open.lua`.

use super::rows::texts;
use super::{scripts, RedisStore};
use crate::error::{Error, Result};
use crate::store::OpenMode;

impl RedisStore {
    /// Refuses a prefix that is not a ckpt store's (another application's
    /// keys), or one written by a newer ckpt; creates the metadata of a new
    /// store when `mode` allows.
    pub(super) fn check_schema(&self, mode: OpenMode) -> Result<()> {
        let create = if mode == OpenMode::CreateIfMissing {
            "1"
        } else {
            "0"
        };
        let reply = self.call(
            &scripts::OPEN,
            vec![create.to_string(), Self::SCHEMA_VERSION.to_string()],
        )?;
        let fields = texts(&reply)?;
        let meta = format!("{}:meta", self.prefix);
        match fields.first().and_then(|t| t.as_deref()) {
            Some("hash") => {}
            Some("taken") => {
                return Err(Error::NotAStore(format!(
                    "prefix \"{}\" at {} holds key \"{}\" but no \"{meta}\": another application's keys, or a ckpt store that lost its metadata; nothing was written (choose another prefix with ?prefix=NAME)",
                    self.prefix,
                    self.url,
                    fields.get(1).and_then(|k| k.as_deref()).unwrap_or("?")
                )))
            }
            Some("none") => {
                return Err(Error::NotFound(format!(
                    "no ckpt store with prefix \"{}\" at {}",
                    self.prefix, self.url
                )))
            }
            other => {
                return Err(Error::NotAStore(format!(
                    "key \"{meta}\" at {} is a {}, not a ckpt store's metadata; it was left untouched (choose another prefix with ?prefix=NAME)",
                    self.url,
                    other.unwrap_or("?")
                )))
            }
        }
        if fields.get(1).and_then(|a| a.as_deref()) != Some("ckpt") {
            return Err(Error::NotAStore(format!(
                "key \"{meta}\" at {} belongs to another application, not ckpt; it was left untouched (choose another prefix with ?prefix=NAME)",
                self.url
            )));
        }
        let version = fields
            .get(2)
            .and_then(|v| v.as_deref())
            .and_then(|v| v.parse::<i64>().ok())
            .ok_or_else(|| {
                Error::NotAStore(format!(
                    "key \"{meta}\" at {} has no valid schema_version",
                    self.url
                ))
            })?;
        if version > Self::SCHEMA_VERSION {
            return Err(Error::SchemaTooNew {
                store: self.describe_store(),
                found: version,
                supported: Self::SCHEMA_VERSION,
            });
        }
        Ok(())
    }
}
