-- ARGV: name. Returns {'ok'} (nothing unfinished) or {'ok', time}.
local n = job_num(ARGV[3])
if not n then
  return {'ok'}
end
if redis.call('ZCARD', jk(n, 'pending')) > 0 then
  return {'ok', '0'}
end
local first = redis.call('ZRANGE', jk(n, 'due'), 0, 0, 'WITHSCORES')
if #first == 0 then
  return {'ok'}
end
return {'ok', first[2]}
