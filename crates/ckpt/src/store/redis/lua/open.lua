-- ARGV[3]: '1' to create the store when missing. Returns the meta hash's
-- type, application and schema version, as found after the call.
local meta = P .. ':meta'
local t = redis.call('TYPE', meta)
if type(t) == 'table' then
  t = t.ok
end
if t == 'none' then
  -- A prefix whose store-wide keys exist without the meta hash holds
  -- another application's keys, or a store that lost its meta: a new store
  -- written over them would fail half-way (WRONGTYPE) or mix with them,
  -- and a reader must not take them for no store at all (a script would
  -- start over from its first record).
  for _, k in ipairs({P .. ':jobs', P .. ':jobseq'}) do
    if redis.call('EXISTS', k) == 1 then
      return {'taken', k}
    end
  end
  if ARGV[3] == '1' then
    redis.call('HSET', meta, 'application', 'ckpt', 'schema_version', ARGV[4])
    t = 'hash'
  end
end
if t ~= 'hash' then
  return {t}
end
local f = redis.call('HMGET', meta, 'application', 'schema_version')
-- Every step so far only adds (2: each job's `commands` hash and an item's
-- `command`; items completed before it count as by an unknown command), so
-- an older store is brought up by writing the version.
if f[1] == 'ckpt' and tonumber(f[2]) and tonumber(f[2]) < tonumber(ARGV[4]) then
  redis.call('HSET', meta, 'schema_version', ARGV[4])
  f[2] = ARGV[4]
end
return {t, f[1], f[2]}
