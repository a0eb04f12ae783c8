-- KEYS: values (zset value -> newest time), ids (hash value -> event id of that sighting),
--       fired (zset), figures (hash)
-- ARGV: event id, time, value, window, lateness, more_than, evidence cap, ttl
local dv, di, fz, fh = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local id, value = ARGV[1], ARGV[3]
local t, w, late = tonumber(ARGV[2]), tonumber(ARGV[4]), tonumber(ARGV[5])
local more, cap, ttl = tonumber(ARGV[6]), tonumber(ARGV[7]), ARGV[8]

local fired_oldest, prior = firings(fz, fh, id)
if prior then return {'replay', prior} end
local any_fired = fired_oldest ~= nil
local newest = newest_of(dv, t)
if t < newest - w - late then return {'late', '0'} end
local cur = redis.call('ZSCORE', dv, value)
if (not cur) or tonumber(cur) < t then
  redis.call('ZADD', dv, ARGV[2], value)
  redis.call('HSET', di, value, id)
end
local floor = newest - 2 * w - late
local old = redis.call('ZRANGEBYSCORE', dv, '-inf', '(' .. s(floor))
for i = 1, #old do
  redis.call('ZREM', dv, old[i])
  redis.call('HDEL', di, old[i])
end
if any_fired and fired_oldest < floor then trim_fired(fz, fh, floor) end
if any_fired then expire(ttl, dv, di, fz, fh) else expire(ttl, dv, di) end

local n = redis.call('ZCOUNT', dv, s(t - w), ARGV[2])
local mine = redis.call('ZSCORE', dv, value)
if mine and tonumber(mine) > t then n = n + 1 end
local wstart, wend = t - w, t
if n <= more and newest > t and t >= newest - w then
  local n2 = redis.call('ZCOUNT', dv, s(newest - w), s(newest))
  if n2 > n then n, wstart, wend = n2, newest - w, newest end
end
if n <= more then return {'count', tostring(n)} end
if any_fired and fired_near(fz, wend, w) then return {'suppressed', tostring(n)} end

local recent = redis.call('ZREVRANGEBYSCORE', dv, s(wend), s(wstart), 'LIMIT', 0, cap)
local evidence = {}
for i = #recent, 1, -1 do
  if recent[i] ~= value then
    local eid = redis.call('HGET', di, recent[i])
    if eid then evidence[#evidence + 1] = eid end
  end
end
if #evidence >= cap then table.remove(evidence, 1) end
evidence[#evidence + 1] = id
local fig = cjson.encode({s = wstart, e = wend, o = n, l = more + 1, ev = evidence})
record(fz, fh, id, wend, fig)
-- possibly created just now: they expire like the rest of the window
expire(ttl, fz, fh)
return {'fired', fig}
