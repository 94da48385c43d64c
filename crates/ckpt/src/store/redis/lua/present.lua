-- Prepended to every script but open.lua, after common.lua: the store must
-- still be there. A Redis that restarted without persistence, was flushed,
-- or lost the store's keys has lost every job of it; writing on would
-- build jobs that the read commands (which look for the meta hash) cannot
-- see, and hand out job numbers and claim tokens again that a stale holder
-- may still hold. So nothing runs on a prefix whose meta hash is gone:
-- opening the store again creates a new one.
if redis.call('EXISTS', P .. ':meta') == 0 then
  return redis.error_reply('CKPTGONE ' .. P)
end
