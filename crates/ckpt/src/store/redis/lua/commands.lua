-- ARGV: name. Returns {'ok', completed items with no command, then per
-- command: id, its record's JSON, items it completed}; {'ok', 0} for an
-- unknown job. The counts are kept in `done_by` (command id -> completed
-- items) as items complete and are re-driven, so no item is read: the
-- unknown ones are the completed ones no command counts.
local n = job_num(ARGV[3])
if not n then
  return {'ok', 0}
end
local counts, known = {}, 0
local done_by = redis.call('HGETALL', jk(n, 'done_by'))
for i = 1, #done_by, 2 do
  counts[done_by[i]] = tonumber(done_by[i + 1])
  known = known + tonumber(done_by[i + 1])
end
local out = {'ok', math.max(redis.call('ZCARD', jk(n, 'completed')) - known, 0)}
local all = redis.call('HGETALL', jk(n, 'commands'))
for i = 1, #all, 2 do
  out[#out + 1] = all[i]
  out[#out + 1] = all[i + 1]
  out[#out + 1] = counts[all[i]] or 0
end
return out
