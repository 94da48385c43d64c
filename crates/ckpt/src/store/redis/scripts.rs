//! The Lua scripts of the Redis store, each with the shared helpers of
//! `lua/common.lua` in front. Redis caches them by SHA-1 (`EVALSHA`); the
//! driver loads one again when the server has forgotten it.

use std::sync::LazyLock;

use redis::Script;

/// A script's source and its cached handle.
pub(super) struct Lua {
    code: &'static str,
    script: Script,
}

impl Lua {
    fn new(code: &'static str) -> Lua {
        Lua {
            code,
            script: Script::new(code),
        }
    }

    /// The script, for `EVALSHA`.
    pub(super) fn script(&self) -> &Script {
        &self.script
    }

    /// The source, for `EVAL` inside `MULTI`, where a missing script could
    /// not be loaded again half-way.
    pub(super) fn code(&self) -> &'static str {
        self.code
    }
}

/// Checks the store and creates it when asked: the one script that runs
/// without the store's meta hash.
pub(super) static OPEN: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(concat!(
        include_str!("lua/common.lua"),
        include_str!("lua/open.lua")
    ))
});

/// Every other script first refuses a store whose meta hash is gone
/// (`lua/present.lua`; see `conn::redis_err` for the error).
macro_rules! scripts {
    ($($name:ident => $file:literal,)*) => {
        $(
            pub(super) static $name: LazyLock<Lua> = LazyLock::new(|| {
                Lua::new(concat!(
                    include_str!("lua/common.lua"),
                    include_str!("lua/present.lua"),
                    include_str!($file)
                ))
            });
        )*
    };
}

scripts! {
    ENSURE_JOB => "lua/ensure_job.lua",
    ACQUIRE_JOB => "lua/acquire_job.lua",
    RENEW_JOB => "lua/renew_job.lua",
    SAVE_CHECKPOINT => "lua/save_checkpoint.lua",
    FINISH_JOB => "lua/finish_job.lua",
    RELEASE_JOB => "lua/release_job.lua",
    FINISH_IF_DONE => "lua/finish_if_done.lua",
    PUT_CHECKPOINT => "lua/put_checkpoint.lua",
    GET_JOB => "lua/get_job.lua",
    LIST_JOBS => "lua/list_jobs.lua",
    HISTORY => "lua/history.lua",
    ENQUEUE => "lua/enqueue.lua",
    CLAIM => "lua/claim.lua",
    UPDATE_ITEMS => "lua/update_items.lua",
    ITEM_COUNTS => "lua/item_counts.lua",
    NEXT_READY_AT => "lua/next_ready_at.lua",
    LIST_ITEMS => "lua/list_items.lua",
    RUNNING_OWNERS => "lua/running_owners.lua",
    EXPIRE_OWNER => "lua/expire_owner.lua",
    REDRIVE => "lua/redrive.lua",
    DELETE_JOB => "lua/delete_job.lua",
    TRUNCATE_HISTORY => "lua/truncate_history.lua",
    RECORD_COMMAND => "lua/record_command.lua",
    COMMANDS => "lua/commands.lua",
    REDRIVE_COMPLETED => "lua/redrive_completed.lua",
}
