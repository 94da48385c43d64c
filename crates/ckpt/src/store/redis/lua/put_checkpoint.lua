-- ARGV: name, '1' to write or '0' to clear, cursor, items_processed,
-- stage (optional), state (optional), state_bytes, history_keep,
-- steal_from (optional), now, expect ('any', 'none' or 'cursor'),
-- expected cursor (canonical JSON text, when 'cursor').
local name, write, steal, now = ARGV[3], ARGV[4] == '1', opt(ARGV[11]), ARGV[12]
local expect, expected = ARGV[13], ARGV[14]
local found = job_num(name)
-- Clearing needs a job, whatever was expected of its cursor.
if not write and not found then
  return {'notfound'}
end
if found and held_by_live_owner(found, nil, steal, now) then
  return {'busy', job_reply(found)}
end
-- Compare-and-set: the stored cursor (canonical JSON text, as written)
-- against the expected one, before anything is written.
if expect ~= 'any' then
  local stored = found and redis.call('HGET', jk(found), 'cursor') or false
  local met
  if expect == 'none' then
    met = not stored
  else
    met = stored == expected
  end
  if not met then
    if stored then
      return {'mismatch', stored}
    end
    return {'mismatch'}
  end
end
local n = found or ensure_job(name, now)
local k = jk(n)
if write then
  write_checkpoint(n, ARGV[5], ARGV[6], opt(ARGV[7]), opt(ARGV[8]), ARGV[9], ARGV[10], now)
else
  redis.call('HDEL', k, 'cursor', 'items_processed', 'stage', 'state', 'checkpoint_at',
    'completed_at', 'error')
  redis.call('HSET', k, 'state_bytes', '0', 'status', 'running')
  redis.call('DEL', jk(n, 'history'))
end
release(n, now)
retention(n)
return {'ok'}
