-- ARGV: name, owner, now. Expires the leases of the owner's running items.
-- Returns {'ok', how many}.
local n, owner, now = job_num(ARGV[3]), ARGV[4], ARGV[5]
if not n then
  return {'ok', 0}
end
-- Every record read (and checked) before the first write.
local recs = {}
for _, seq in ipairs(redis.call('ZRANGE', jk(n, 'running'), 0, -1)) do
  recs[#recs + 1] = {seq, get_item(n, seq)}
end
local count = 0
for _, r in ipairs(recs) do
  local seq, rec = r[1], r[2]
  if rec and rec.owner == owner then
    count = count + 1
    if not rec.ready_at or tonumber(rec.ready_at) > tonumber(now) then
      rec.ready_at = now
      put_item(n, seq, rec)
      redis.call('ZADD', jk(n, 'due'), now, seq)
    end
  end
end
return {'ok', count}
