-- Every job's record, ordered by name. Names whose job expired leave the
-- index here.
local out = {'ok'}
for _, name in ipairs(redis.call('ZRANGE', P .. ':jobs', 0, -1)) do
  local n = job_num(name)
  if n then
    out[#out + 1] = job_reply(n)
  else
    redis.call('ZREM', P .. ':jobs', name)
  end
end
return out
