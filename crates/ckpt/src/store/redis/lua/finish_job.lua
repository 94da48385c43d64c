-- ARGV: name, owner, epoch, status, error (optional), now.
local n, fenced = check_lease(ARGV[3], ARGV[4], ARGV[5])
if not n then
  return fenced
end
local k, status, err, now = jk(n), ARGV[6], opt(ARGV[7]), ARGV[8]
redis.call('HSET', k, 'status', status)
if err then
  redis.call('HSET', k, 'error', err)
else
  redis.call('HDEL', k, 'error')
end
if status == 'completed' then
  redis.call('HSET', k, 'completed_at', now)
else
  redis.call('HDEL', k, 'completed_at')
end
release(n, now)
retention(n)
return {'ok'}
