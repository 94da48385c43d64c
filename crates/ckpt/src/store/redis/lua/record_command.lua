-- ARGV: name, command text, now. Records the command in the job's
-- `commands` hash (id -> {command, first_used, last_used}), creating the
-- job if needed: the same text keeps its id, new text gets the next one.
-- Returns {'ok', id, first_used, last_used, items it completed}.
local name, command, now = ARGV[3], ARGV[4], ARGV[5]
local n = ensure_job(name, now)
local h = jk(n, 'commands')
local all = redis.call('HGETALL', h)
local id, rec = nil, nil
for i = 1, #all, 2 do
  local r = cjson.decode(all[i + 1])
  if r.command == command then
    id, rec = all[i], r
  end
end
if not id then
  -- Commands are never removed one by one, so the count is the last id.
  id = tostring(redis.call('HLEN', h) + 1)
  rec = {command = command, first_used = now, last_used = now}
elseif tonumber(rec.last_used) < tonumber(now) then
  rec.last_used = now
end
redis.call('HSET', h, id, cjson.encode(rec))
local done = tonumber(redis.call('HGET', jk(n, 'done_by'), id) or '0')
retention(n)
return {'ok', id, rec.first_used, rec.last_used, done}
