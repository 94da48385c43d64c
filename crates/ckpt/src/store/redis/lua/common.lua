-- Shared by every script of the Redis store (prepended to each one).
--
-- ARGV[1] is the key prefix and ARGV[2] the retention of completed jobs in
-- milliseconds ('0': never expire); a script's own arguments follow from
-- ARGV[3]. Optional strings arrive as '' (none) or '+' .. value. Times are
-- the caller's milliseconds: these scripts never read the Redis clock.
--
-- The key layout is described in docs/REDIS.md and in mod.rs. Keys are
-- derived here from the prefix and the job's number, so the store needs a
-- standalone Redis (or a Sentinel-managed primary), not Redis Cluster.
--
-- Each script reads and checks everything it needs before its first write:
-- Redis does not roll back a script that stops half-way.

local P = ARGV[1]
local TTL = ARGV[2]
local STATUSES = {'pending', 'running', 'completed', 'failed', 'dead'}
local PARTS = {'history', 'keys', 'items', 'pending', 'running', 'completed', 'failed', 'dead', 'due',
  'commands', 'done_by'}

-- The key of a job's record (part nil) or of one of its parts.
local function jk(n, part)
  if part then
    return P .. ':job:' .. n .. ':' .. part
  end
  return P .. ':job:' .. n
end

local function opt(s)
  if s == '' then
    return nil
  end
  return string.sub(s, 2)
end

-- The job's number, or nil when there is no such job (or its keys expired).
local function job_num(name)
  local n = redis.call('GET', P .. ':name:' .. name)
  if n and redis.call('EXISTS', jk(n)) == 1 then
    return n
  end
  return nil
end

local function ensure_job(name, now)
  local n = job_num(name)
  if n then
    return n
  end
  n = tostring(redis.call('INCR', P .. ':jobseq'))
  -- A counter behind the jobs (deleted, evicted, partly restored) would
  -- hand out a live job's number and overwrite it: refuse before writing.
  if redis.call('EXISTS', jk(n)) == 1 then
    error('ckpt: the job counter ' .. P .. ':jobseq is behind existing job ' .. n
      .. '; the store is damaged (a key was deleted or evicted)')
  end
  redis.call('SET', P .. ':name:' .. name, n)
  redis.call('HSET', jk(n), 'name', name, 'status', 'running', 'epoch', '0', 'attempts', '0',
    'saves', '0', 'state_bytes', '0', 'items', '0', 'created_at', now, 'updated_at', now)
  redis.call('ZADD', P .. ':jobs', 0, name)
  return n
end

-- The job's record as a flat field/value list, plus its history length.
local function job_reply(n)
  local r = redis.call('HGETALL', jk(n))
  r[#r + 1] = 'history_len'
  r[#r + 1] = tostring(redis.call('LLEN', jk(n, 'history')))
  return r
end

-- True if a live owner other than `owner` and `steal` holds the job.
local function held_by_live_owner(n, owner, steal, now)
  local f = redis.call('HMGET', jk(n), 'owner', 'lease_expires')
  return f[1] and f[2] and tonumber(f[2]) > tonumber(now) and f[1] ~= owner and f[1] ~= steal
end

-- Checks a job lease; returns the job's number, or nil and the reply.
local function check_lease(name, owner, epoch)
  local n = job_num(name)
  if not n then
    return nil, {'fenced'}
  end
  local f = redis.call('HMGET', jk(n), 'owner', 'epoch')
  if f[1] == owner and f[2] == epoch then
    return n
  end
  return nil, {'fenced', f[2], f[1]}
end

-- Gives up the job's lease and fences out its holder.
local function release(n, now)
  redis.call('HDEL', jk(n), 'owner', 'lease_expires')
  redis.call('HINCRBY', jk(n), 'epoch', 1)
  redis.call('HSET', jk(n), 'updated_at', now)
end

-- A completed job's record: running again.
local function reopen(n)
  if redis.call('HGET', jk(n), 'status') == 'completed' then
    redis.call('HSET', jk(n), 'status', 'running')
    redis.call('HDEL', jk(n), 'completed_at')
  end
end

-- True if some item of the job is pending, running or failed.
local function has_unfinished(n)
  for _, s in ipairs({'pending', 'running', 'failed'}) do
    if redis.call('ZCARD', jk(n, s)) > 0 then
      return true
    end
  end
  return false
end

-- Retention: the keys of a completed job that nobody holds and with no
-- unfinished item expire TTL after it became so; any other job's keys never
-- expire. Called after every change. The countdown starts once: a call
-- while it runs (a rerun of the finished job that found nothing to do)
-- does not restart it, else a job rerun more often than TTL would never
-- expire; a key made since then joins it with the time left.
local function retention(n)
  local k = jk(n)
  local f = redis.call('HMGET', k, 'name', 'status', 'owner', 'expiring')
  if not f[1] then
    return
  end
  local keys = {P .. ':name:' .. f[1], k}
  for _, part in ipairs(PARTS) do
    keys[#keys + 1] = jk(n, part)
  end
  if f[2] == 'completed' and not f[3] and TTL ~= '0' and not has_unfinished(n) then
    local ttl = TTL
    if f[4] then
      local left = redis.call('PTTL', k)
      if left > 0 then
        ttl = left
      end
    else
      redis.call('HSET', k, 'expiring', '1')
    end
    for _, key in ipairs(keys) do
      if not f[4] or redis.call('PTTL', key) == -1 then
        redis.call('PEXPIRE', key, ttl)
      end
    end
  elseif f[4] then
    redis.call('HDEL', k, 'expiring')
    for _, key in ipairs(keys) do
      redis.call('PERSIST', key)
    end
  end
end

-- After a re-drive moved items of the job back to pending: the job runs
-- again (whatever it was), and its keys no longer expire.
local function revive(n, now)
  local k = jk(n)
  redis.call('HSET', k, 'status', 'running', 'updated_at', now)
  redis.call('HDEL', k, 'completed_at')
  retention(n)
end

-- Writes a checkpoint, appends it to the history and trims the history.
local function write_checkpoint(n, cursor, items_processed, stage, state, state_bytes, keep, now)
  local k = jk(n)
  -- History follows commit order: a writer whose `now` was read before an
  -- earlier commit's does not step back in time.
  local prev = redis.call('HGET', k, 'checkpoint_at')
  if prev and tonumber(prev) > tonumber(now) then
    now = prev
  end
  local saves = redis.call('HINCRBY', k, 'saves', 1)
  redis.call('HSET', k, 'cursor', cursor, 'items_processed', items_processed,
    'state_bytes', state_bytes, 'checkpoint_at', now, 'updated_at', now)
  if stage then
    redis.call('HSET', k, 'stage', stage)
  else
    redis.call('HDEL', k, 'stage')
  end
  if state then
    redis.call('HSET', k, 'state', state)
  else
    redis.call('HDEL', k, 'state')
  end
  reopen(n)
  local h = jk(n, 'history')
  if keep == '0' then
    redis.call('DEL', h)
  else
    redis.call('RPUSH', h, '{"seq":' .. saves .. ',"cursor":' .. cursor .. ',"items_processed":'
      .. items_processed .. ',"at":' .. now .. '}')
    redis.call('LTRIM', h, '-' .. keep, -1)
  end
end

local IS_STATUS = {}
for _, s in ipairs(STATUSES) do
  IS_STATUS[s] = true
end

-- An item's record (a table of strings), or nil when there is none. A
-- record that ckpt did not write (not JSON, a field missing or of the wrong
-- kind) stops the script with an error; so a script that changes items
-- reads every record it will change before its first write, and such a
-- record then changes nothing.
local function get_item(n, seq)
  local raw = redis.call('HGET', jk(n, 'items'), seq)
  if not raw then
    return nil
  end
  local ok, rec = pcall(cjson.decode, raw)
  if not ok or type(rec) ~= 'table' or type(rec.key) ~= 'string' or not IS_STATUS[rec.status]
      or not tonumber(rec.attempts) or not tonumber(rec.claims)
      or (rec.ready_at ~= nil and not tonumber(rec.ready_at)) then
    error('ckpt: item ' .. seq .. ' of ' .. jk(n, 'items')
      .. ' is malformed (not written by ckpt); nothing was changed')
  end
  return rec
end

local function put_item(n, seq, rec)
  redis.call('HSET', jk(n, 'items'), seq, cjson.encode(rec))
end

-- Moves an item between the status sets (and in or out of `due`).
local function move(n, seq, from, to, ready_at)
  if from ~= to then
    redis.call('ZREM', jk(n, from), seq)
    redis.call('ZADD', jk(n, to), seq, seq)
  end
  if ready_at then
    redis.call('ZADD', jk(n, 'due'), ready_at, seq)
  else
    redis.call('ZREM', jk(n, 'due'), seq)
  end
end

