-- ARGV: name, '1' to write or '0' to clear, cursor, items_processed,
-- stage (optional), state (optional), state_bytes, history_keep,
-- steal_from (optional), now.
local name, write, steal, now = ARGV[3], ARGV[4] == '1', opt(ARGV[11]), ARGV[12]
local n
if write then
  n = ensure_job(name, now)
else
  n = job_num(name)
  if not n then
    return {'notfound'}
  end
end
if held_by_live_owner(n, nil, steal, now) then
  return {'busy', job_reply(n)}
end
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
