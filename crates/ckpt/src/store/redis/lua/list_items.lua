-- ARGV: name, status ('' for all), limit (> 0), and 'last' for the last
-- items of one status, the last first. Returns {'ok'} or {'ok', job
-- number, then seq and record per item}, in enqueue order (or its reverse).
local n, status, limit, last = job_num(ARGV[3]), ARGV[4], tonumber(ARGV[5]), ARGV[6] == 'last'
if not n then
  return {'ok'}
end
local seqs
if status ~= '' then
  if last then
    seqs = redis.call('ZREVRANGE', jk(n, status), 0, limit - 1)
  else
    seqs = redis.call('ZRANGE', jk(n, status), 0, limit - 1)
  end
else
  seqs = {}
  for _, s in ipairs(STATUSES) do
    for _, seq in ipairs(redis.call('ZRANGE', jk(n, s), 0, limit - 1)) do
      seqs[#seqs + 1] = tonumber(seq)
    end
  end
  table.sort(seqs)
end
local out = {'ok', n}
local items = jk(n, 'items')
for i = 1, math.min(#seqs, limit) do
  local seq = tostring(seqs[i])
  out[#out + 1] = seq
  out[#out + 1] = redis.call('HGET', items, seq)
end
return out
