-- KEYS: values (hash value -> when last shown), meta (hash: since = the group's first event
--       time), fired, figures
-- ARGV: event id, time, value, learning, forget (also the keys' time to live)
--
-- A value not among the group's remembered ones (or not shown for `forget`) fires once the
-- group has `learning` of history and at least one other value to compare with.
local vals, meta, fz, fh = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local id, t, value = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local learning, forget = tonumber(ARGV[4]), tonumber(ARGV[5])

local fired_oldest, prior = firings(fz, fh, id)
if prior then return {'replay', prior} end
local since = tonumber(redis.call('HGET', meta, 'since') or ARGV[2])
if t < since then since = t end
redis.call('HSET', meta, 'since', s(since))
expire(ARGV[5], vals, meta)
if fired_oldest ~= nil then expire(ARGV[5], fz, fh) end
local last = redis.call('HGET', vals, value)
if last and tonumber(last) >= t - forget then
  if t > tonumber(last) then redis.call('HSET', vals, value, ARGV[2]) end
  return {'count', tostring(redis.call('HLEN', vals))}
end
local all = redis.call('HGETALL', vals)
for i = 1, #all / 2 do
  if all[2 * i - 1] == value or tonumber(all[2 * i]) < t - forget then redis.call('HDEL', vals, all[2 * i - 1]) end
end
local known = redis.call('HLEN', vals)
redis.call('HSET', vals, value, ARGV[2])
if fired_oldest ~= nil and fired_oldest < t - forget then trim_fired(fz, fh, t - forget) end
if known == 0 or t - since < learning then return {'count', tostring(known + 1)} end
local fig = cjson.encode({s = since, e = t, o = known + 1, l = known, ev = {id},
  d = {value = value, knownValues = known, learningSince = since}})
record(fz, fh, id, t, fig)
expire(ARGV[5], fz, fh)
return {'fired', fig}
