-- ARGV: name, owner, epoch, cursor, items_processed, stage (optional),
-- state (optional), state_bytes, history_keep, lease_until, now.
local n, fenced = check_lease(ARGV[3], ARGV[4], ARGV[5])
if not n then
  return fenced
end
write_checkpoint(n, ARGV[6], ARGV[7], opt(ARGV[8]), opt(ARGV[9]), ARGV[10], ARGV[11], ARGV[13])
redis.call('HSET', jk(n), 'lease_expires', ARGV[12])
retention(n)
return {'ok'}
