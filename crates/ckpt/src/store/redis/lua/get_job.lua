-- ARGV: name.
local n = job_num(ARGV[3])
if not n then
  return {'notfound'}
end
return {'ok', job_reply(n)}
