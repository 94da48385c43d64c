-- ARGV: then per update: job number, item number, owner, claim token, and
-- the change's values as the item state machine computed them (the
-- caller's ItemPatch): status, ready_at, attempts taken back, cursor,
-- stats, last error, finished_at, started_at, command id, last output
-- (written whenever the last error is: '' then clears it), the error to
-- write when there is none and the item has none recorded (a bury). Optional values arrive as '' (keep the
-- stored value) or '+' .. value. A pending item's ready time is its place
-- in the `pending` set (enqueue order), so it is not stored.
-- Returns {'ok', result per update}: {'ok'}, {'fenced', key, status,
-- owner} or {'gone'}.
local out = {'ok'}
local touched = {}
-- Every record read (and checked) before the first write. Updates of one
-- item share its record, so a later one sees what an earlier one changed.
local recs = {}
for i = 3, #ARGV, 15 do
  local id = ARGV[i] .. ':' .. ARGV[i + 1]
  if recs[id] == nil then
    recs[id] = redis.call('EXISTS', jk(ARGV[i])) == 1 and get_item(ARGV[i], ARGV[i + 1]) or false
  end
end
for i = 3, #ARGV, 15 do
  local n, seq, owner, token = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local rec = recs[n .. ':' .. seq]
  if not rec then
    out[#out + 1] = {'gone'}
  elseif rec.status ~= 'running' or rec.owner ~= owner or rec.claims ~= token then
    out[#out + 1] = {'fenced', rec.key, rec.status, rec.owner or false}
  else
    local status, ready_at = ARGV[i + 4], opt(ARGV[i + 5])
    if status == 'pending' then
      ready_at = nil
    end
    rec.status = status
    rec.ready_at = ready_at
    rec.attempts = tostring(math.max(tonumber(rec.attempts) - tonumber(ARGV[i + 6]), 0))
    rec.cursor = opt(ARGV[i + 7]) or rec.cursor
    rec.stats = opt(ARGV[i + 8]) or rec.stats
    local last_error = opt(ARGV[i + 9])
    if last_error then
      rec.last_error = last_error
      rec.last_output = opt(ARGV[i + 13])
    elseif not rec.last_error then
      rec.last_error = opt(ARGV[i + 14])
    end
    rec.finished_at = opt(ARGV[i + 10]) or rec.finished_at
    rec.started_at = opt(ARGV[i + 11]) or rec.started_at
    local command = opt(ARGV[i + 12])
    if command then
      rec.command = command
      -- Kept per command, so counting them reads no item.
      if status == 'completed' then
        redis.call('HINCRBY', jk(n, 'done_by'), command, 1)
      end
    end
    move(n, seq, 'running', status, ready_at)
    put_item(n, seq, rec)
    touched[n] = true
    out[#out + 1] = {'ok'}
  end
end
for n, _ in pairs(touched) do
  retention(n)
end
return out
