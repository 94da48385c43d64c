-- ARGV: name. Returns {'ok', count per status in STATUSES order}.
local n = job_num(ARGV[3])
local out = {'ok'}
for _, s in ipairs(STATUSES) do
  if n then
    out[#out + 1] = redis.call('ZCARD', jk(n, s))
  else
    out[#out + 1] = 0
  end
end
return out
