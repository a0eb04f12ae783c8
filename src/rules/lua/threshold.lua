-- KEYS: events (zset id -> time), fired (zset trigger -> window end), figures (hash trigger -> json)
-- ARGV: event id, time, window, lateness, limit, evidence cap, ttl
-- Returns {'fired'|'replay', figures} | {'count'|'suppressed', n} | {'late', 0}
local ev, fz, fh = KEYS[1], KEYS[2], KEYS[3]
local id = ARGV[1]
local t, w, late = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local limit, cap, ttl = tonumber(ARGV[5]), tonumber(ARGV[6]), ARGV[7]

local fired_oldest, prior = firings(fz, fh, id)
if prior then return {'replay', prior} end
local any_fired = fired_oldest ~= nil
local newest = newest_of(ev, t)
if t < newest - w - late then return {'late', '0'} end
redis.call('ZADD', ev, ARGV[2], id)
local floor = newest - 2 * w - late
redis.call('ZREMRANGEBYSCORE', ev, '-inf', '(' .. s(floor))
if any_fired and fired_oldest < floor then trim_fired(fz, fh, floor) end
if any_fired then expire(ttl, ev, fz, fh) else expire(ttl, ev) end

local n = redis.call('ZCOUNT', ev, s(t - w), ARGV[2])
local wstart, wend = t - w, t
if n < limit and t < newest and redis.call('ZCOUNT', ev, s(t - w), s(t + w)) >= limit then
  -- A late event: a window ending after it may have reached the limit with it.
  local xs = redis.call('ZRANGEBYSCORE', ev, s(t - w), s(t + w), 'WITHSCORES')
  local lo = 1
  for j = 1, #xs / 2 do
    local ej = tonumber(xs[2 * j])
    if ej >= t then
      while tonumber(xs[2 * lo]) < ej - w do lo = lo + 1 end
      local c = j - lo + 1
      if c >= limit then
        n, wstart, wend = c, ej - w, ej
        break
      end
    end
  end
end
if n < limit then return {'count', tostring(n)} end
if any_fired and fired_near(fz, wend, w) then return {'suppressed', tostring(n)} end

local recent = redis.call('ZREVRANGEBYSCORE', ev, s(wend), s(wstart), 'LIMIT', 0, cap)
local evidence = {}
for i = #recent, 1, -1 do
  if recent[i] ~= id then evidence[#evidence + 1] = recent[i] end
end
if #evidence >= cap then table.remove(evidence, 1) end
evidence[#evidence + 1] = id
local fig = cjson.encode({s = wstart, e = wend, o = n, l = limit, ev = evidence})
record(fz, fh, id, wend, fig)
-- possibly created just now: they expire like the rest of the window
expire(ttl, fz, fh)
return {'fired', fig}
