-- ARGV: name, owner, epoch, now.
local n, fenced = check_lease(ARGV[3], ARGV[4], ARGV[5])
if not n then
  return fenced
end
release(n, ARGV[6])
retention(n)
return {'ok'}
