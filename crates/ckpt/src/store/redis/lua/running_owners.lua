-- ARGV: name. Returns {'ok', distinct owners of running items}.
local n = job_num(ARGV[3])
local out = {'ok'}
if not n then
  return out
end
local seen = {}
local owners = {}
for _, seq in ipairs(redis.call('ZRANGE', jk(n, 'running'), 0, -1)) do
  local rec = get_item(n, seq)
  if rec and rec.owner and not seen[rec.owner] then
    seen[rec.owner] = true
    owners[#owners + 1] = rec.owner
  end
end
for _, o in ipairs(owners) do
  out[#out + 1] = o
end
return out
