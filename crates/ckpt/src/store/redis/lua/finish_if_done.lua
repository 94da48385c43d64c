-- ARGV: name, now. Returns {'notfound'}, {'ok'} (not done) or {'ok', status}.
local n, now = job_num(ARGV[3]), ARGV[4]
if not n then
  return {'notfound'}
end
if has_unfinished(n) then
  return {'ok'}
end
local k, status = jk(n), 'completed'
if redis.call('ZCARD', jk(n, 'dead')) > 0 then
  status = 'failed'
end
-- Already so: a rerun that found nothing to do changes nothing.
if redis.call('HGET', k, 'status') ~= status then
  redis.call('HSET', k, 'status', status, 'updated_at', now)
  if status == 'completed' then
    redis.call('HSET', k, 'completed_at', now)
  else
    redis.call('HDEL', k, 'completed_at')
  end
  retention(n)
end
return {'ok', status}
