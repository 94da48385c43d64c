-- ARGV: name, owner, max (> 0), lease_until, now, then the claim's values
-- as the item state machine gives them (its Claim): the new status, what
-- the attempt and claim counts go up by, and what the attempt count goes up
-- by instead when a running item whose attempt never started is taken
-- over. Returns {'ok'} or {'ok', job
-- number, then per claimed item: seq, key, payload, cursor, attempts,
-- claims, previous status, previous owner, enqueued_at}.
local name, owner, max, until_, now = ARGV[3], ARGV[4], tonumber(ARGV[5]), ARGV[6], ARGV[7]
local status, attempts_added, claims_added = ARGV[8], tonumber(ARGV[9]), tonumber(ARGV[10])
local attempts_added_unstarted = tonumber(ARGV[11])
-- '' for items claimed ahead (not started yet), else the start time.
local started_at = ARGV[12]
if started_at == '' then
  started_at = nil
end
local n = job_num(name)
if not n then
  return {'ok'}
end
local out = {'ok', n}
local claimed = 0

local function take(seq, rec)
  local previous_status, previous_owner = rec.status, rec.owner or false
  move(n, seq, rec.status, status, until_)
  local added = attempts_added
  if rec.status == 'running' and not rec.started_at then
    added = attempts_added_unstarted
  end
  rec.status = status
  rec.owner = owner
  rec.attempts = tostring(tonumber(rec.attempts) + added)
  rec.claims = tostring(tonumber(rec.claims) + claims_added)
  rec.ready_at = until_
  rec.started_at = started_at
  put_item(n, seq, rec)
  claimed = claimed + 1
  local o = #out
  out[o + 1] = seq
  out[o + 2] = rec.key
  out[o + 3] = rec.payload or false
  out[o + 4] = rec.cursor or false
  out[o + 5] = rec.attempts
  out[o + 6] = rec.claims
  out[o + 7] = previous_status
  out[o + 8] = previous_owner
  out[o + 9] = rec.enqueued_at
end

-- What to take, every record read (and checked) before the first write:
-- pending items first (their ready time is 0), in enqueue order; then items
-- due for a retry, or with an expired lease of another owner, by ready
-- time. An owner never re-claims its own running items. Entries whose
-- record is gone are dropped from their set.
local picks, picked, stale = {}, {}, {}
local function consider(set, seq, rec)
  if not rec then
    stale[#stale + 1] = {set, seq}
  elseif not picked[seq] and not (rec.status == 'running' and rec.owner == owner) then
    picked[seq] = true
    picks[#picks + 1] = {seq, rec}
  end
end
local pending = jk(n, 'pending')
for _, seq in ipairs(redis.call('ZRANGE', pending, 0, max - 1)) do
  consider(pending, seq, get_item(n, seq))
end
local due, offset = jk(n, 'due'), 0
while #picks < max do
  local seqs = redis.call('ZRANGEBYSCORE', due, '-inf', now, 'LIMIT', offset, max - #picks)
  if #seqs == 0 then
    break
  end
  offset = offset + #seqs
  for _, seq in ipairs(seqs) do
    consider(due, seq, get_item(n, seq))
  end
end

for _, s in ipairs(stale) do
  redis.call('ZREM', s[1], s[2])
end
for _, p in ipairs(picks) do
  take(p[1], p[2])
end
-- A claim that took nothing changed nothing: it must not restart a
-- completed job's countdown (a poller would keep it alive forever).
if claimed > 0 then
  retention(n)
end
return out
