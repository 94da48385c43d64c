-- ARGV: name, owner, lease_until, steal_from (optional), now.
local name, owner, until_, steal, now = ARGV[3], ARGV[4], ARGV[5], opt(ARGV[6]), ARGV[7]
local n = ensure_job(name, now)
if held_by_live_owner(n, owner, steal, now) then
  return {'busy', job_reply(n)}
end
local k = jk(n)
redis.call('HINCRBY', k, 'epoch', 1)
redis.call('HINCRBY', k, 'attempts', 1)
redis.call('HSET', k, 'owner', owner, 'lease_expires', until_, 'updated_at', now)
if redis.call('HGET', k, 'status') == 'failed' then
  redis.call('HSET', k, 'status', 'running')
end
retention(n)
return {'ok', job_reply(n)}
