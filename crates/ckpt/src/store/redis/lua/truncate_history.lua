-- ARGV: name, keep. Keeps the newest `keep` history entries. Returns
-- {'notfound'} or {'ok', how many were removed}.
local n, keep = job_num(ARGV[3]), ARGV[4]
if not n then
  return {'notfound'}
end
local h = jk(n, 'history')
local len = redis.call('LLEN', h)
if len <= tonumber(keep) then
  return {'ok', 0}
end
if keep == '0' then
  redis.call('DEL', h)
  return {'ok', len}
end
redis.call('LTRIM', h, '-' .. keep, -1)
return {'ok', len - tonumber(keep)}
