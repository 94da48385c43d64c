-- ARGV: name, limit (> 0). The newest entries, newest first.
local n = job_num(ARGV[3])
local out = {'ok'}
if not n then
  return out
end
local entries = redis.call('LRANGE', jk(n, 'history'), '-' .. ARGV[4], -1)
for i = #entries, 1, -1 do
  out[#out + 1] = entries[i]
end
return out
