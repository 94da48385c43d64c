-- ARGV: name, completed_before. Deletes the job with its checkpoint,
-- history and items if it is completed, completed at or before the given
-- time, and has no unfinished or dead item. Returns {'ok', 1 or 0}.
local name = ARGV[3]
local n = job_num(name)
if not n then
  return {'ok', 0}
end
local f = redis.call('HMGET', jk(n), 'status', 'completed_at', 'owner', 'lease_expires')
if f[1] ~= 'completed' or not f[2] or tonumber(f[2]) > tonumber(ARGV[4]) then
  return {'ok', 0}
end
-- A worker that took the completed job up again, its lease current at the
-- cutoff: not idle long enough.
if f[3] and f[3] ~= '' and f[4] and f[4] ~= '' and tonumber(f[4]) > tonumber(ARGV[4]) then
  return {'ok', 0}
end
for _, s in ipairs({'pending', 'running', 'failed', 'dead'}) do
  if redis.call('ZCARD', jk(n, s)) > 0 then
    return {'ok', 0}
  end
end
local keys = {P .. ':name:' .. name, jk(n)}
for _, part in ipairs(PARTS) do
  keys[#keys + 1] = jk(n, part)
end
redis.call('UNLINK', unpack(keys))
redis.call('ZREM', P .. ':jobs', name)
return {'ok', 1}
