-- ARGV: name, owner, epoch, lease_until, now.
local n, fenced = check_lease(ARGV[3], ARGV[4], ARGV[5])
if not n then
  return fenced
end
redis.call('HSET', jk(n), 'lease_expires', ARGV[6], 'updated_at', ARGV[7])
return {'ok'}
