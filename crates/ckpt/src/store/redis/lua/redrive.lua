-- ARGV: name, from status, now, the redriven status and attempt count (the
-- item state machine's Redrive values), 'all' or 'keys', then the keys to
-- redrive. Returns {'notfound'} or {'ok', how many moved}.
local n, from, now = job_num(ARGV[3]), ARGV[4], ARGV[5]
local to, attempts = ARGV[6], ARGV[7]
if not n then
  return {'notfound'}
end
local seqs
if ARGV[8] == 'keys' then
  seqs = {}
  for i = 9, #ARGV do
    local seq = redis.call('HGET', jk(n, 'keys'), ARGV[i])
    if seq and redis.call('ZSCORE', jk(n, from), seq) then
      seqs[#seqs + 1] = seq
    end
  end
else
  seqs = redis.call('ZRANGE', jk(n, from), 0, -1)
end
-- Every record read (and checked) before the first write; a key named
-- twice is moved once.
local recs, seen = {}, {}
for _, seq in ipairs(seqs) do
  if not seen[seq] then
    seen[seq] = true
    recs[#recs + 1] = {seq, get_item(n, seq)}
  end
end
local moved = 0
for _, r in ipairs(recs) do
  local seq, rec = r[1], r[2]
  if rec and rec.status == from then
    rec.status = to
    rec.attempts = attempts
    rec.finished_at = nil
    rec.ready_at = nil
    put_item(n, seq, rec)
    move(n, seq, from, to, nil)
    moved = moved + 1
  end
end
if moved > 0 then
  revive(n, now)
end
return {'ok', moved}
