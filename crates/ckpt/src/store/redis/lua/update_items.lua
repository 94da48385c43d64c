-- ARGV: now, then per update: job number, seq, owner, claim token, change,
-- a, b. Changes: 'heartbeat' (b: lease_until), 'cursor' (a: cursor,
-- b: lease_until), 'complete' (a: stats, optional), 'fail' (a: error,
-- b: retry_at, optional; none: dead), 'release' (back to pending, the
-- claim's attempt taken back). Returns {'ok', result per update}:
-- {'ok'}, {'fenced', key, status, owner} or {'gone'}.
local now = ARGV[3]
local out = {'ok'}
local touched = {}
for i = 4, #ARGV, 7 do
  local n, seq, owner, token, change, a, b =
    ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4], ARGV[i + 5], ARGV[i + 6]
  local rec = nil
  if redis.call('EXISTS', jk(n)) == 1 then
    rec = get_item(n, seq)
  end
  if not rec then
    out[#out + 1] = {'gone'}
  elseif rec.status ~= 'running' or rec.owner ~= owner or rec.claims ~= token then
    out[#out + 1] = {'fenced', rec.key, rec.status, rec.owner or false}
  else
    if change == 'heartbeat' or change == 'cursor' then
      if change == 'cursor' then
        rec.cursor = a
      end
      rec.ready_at = b
      move(n, seq, 'running', 'running', b)
    elseif change == 'release' then
      rec.status = 'pending'
      rec.attempts = tostring(math.max(tonumber(rec.attempts) - 1, 0))
      rec.ready_at = nil
      move(n, seq, 'running', 'pending', nil)
    elseif change == 'complete' then
      rec.status = 'completed'
      rec.stats = opt(a)
      rec.finished_at = now
      rec.ready_at = nil
      move(n, seq, 'running', 'completed', nil)
    else
      local retry_at = opt(b)
      rec.last_error = a
      rec.ready_at = retry_at
      if retry_at then
        rec.status = 'failed'
      else
        rec.status = 'dead'
        rec.finished_at = now
      end
      move(n, seq, 'running', rec.status, retry_at)
    end
    put_item(n, seq, rec)
    touched[n] = true
    out[#out + 1] = {'ok'}
  end
end
for n, _ in pairs(touched) do
  retention(n)
end
return out
