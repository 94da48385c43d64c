-- ARGV: name, now, 'is', 'unknown' or 'not', a command id, then the
-- redriven status and attempt count (the item state machine's Redrive
-- values). Moves the completed items completed by that command ('is'), by
-- none ('unknown'), or not by it ('not') back to pending, their command
-- cleared. Returns {'notfound'} or {'ok', how many moved}.
local n, now = job_num(ARGV[3]), ARGV[4]
if not n then
  return {'notfound'}
end
local mode, id, to, attempts = ARGV[5], ARGV[6], ARGV[7], ARGV[8]
-- Every record read (and checked) before the first write.
local recs = {}
for _, seq in ipairs(redis.call('ZRANGE', jk(n, 'completed'), 0, -1)) do
  recs[#recs + 1] = {seq, get_item(n, seq)}
end
local moved = 0
for _, r in ipairs(recs) do
  local seq, rec = r[1], r[2]
  if rec and rec.status == 'completed' then
    local c = rec.command
    if (mode == 'is' and c == id) or (mode == 'unknown' and c == nil)
        or (mode == 'not' and c ~= id) then
      rec.status = to
      rec.attempts = attempts
      rec.finished_at = nil
      rec.ready_at = nil
      if c then
        redis.call('HINCRBY', jk(n, 'done_by'), c, -1)
      end
      rec.command = nil
      put_item(n, seq, rec)
      move(n, seq, 'completed', to, nil)
      moved = moved + 1
    end
  end
end
if moved > 0 then
  revive(n, now)
end
return {'ok', moved}
