-- ARGV: name, now, then key and payload (optional JSON) per item.
-- Returns {'ok', inserted, existing}.
local name, now = ARGV[3], ARGV[4]
local n = ensure_job(name, now)
local k, keys, items, pending = jk(n), jk(n, 'keys'), jk(n, 'items'), jk(n, 'pending')
local inserted, existing = 0, 0
for i = 5, #ARGV, 2 do
  local key = ARGV[i]
  if redis.call('HEXISTS', keys, key) == 1 then
    existing = existing + 1
  else
    local seq = redis.call('HINCRBY', k, 'items', 1)
    local rec = {key = key, status = 'pending', attempts = '0', claims = '0', enqueued_at = now}
    rec.payload = opt(ARGV[i + 1])
    redis.call('HSET', keys, key, seq)
    redis.call('HSET', items, seq, cjson.encode(rec))
    redis.call('ZADD', pending, seq, seq)
    inserted = inserted + 1
  end
end
if inserted > 0 then
  reopen(n)
  redis.call('HSET', k, 'updated_at', now)
  -- Only a change moves the retention: re-enqueueing known keys (a cron
  -- rerun of a finished job) must not restart its countdown.
  retention(n)
end
return {'ok', inserted, existing}
