-- ARGV: name. Returns {'ok', completed items with no command, then per
-- command: id, its record's JSON, items it completed}; {'ok', 0} for an
-- unknown job. Counting reads every completed item of the job.
local n = job_num(ARGV[3])
if not n then
  return {'ok', 0}
end
local counts, unknown = {}, 0
for _, seq in ipairs(redis.call('ZRANGE', jk(n, 'completed'), 0, -1)) do
  local item = get_item(n, seq)
  if item then
    if item.command then
      counts[item.command] = (counts[item.command] or 0) + 1
    else
      unknown = unknown + 1
    end
  end
end
local out = {'ok', unknown}
local all = redis.call('HGETALL', jk(n, 'commands'))
for i = 1, #all, 2 do
  out[#out + 1] = all[i]
  out[#out + 1] = all[i + 1]
  out[#out + 1] = counts[all[i]] or 0
end
return out
