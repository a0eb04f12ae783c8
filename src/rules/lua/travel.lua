-- KEYS: points (zset event id -> time), places (hash event id -> "lat|lon|country|place"), fired,
--       figures
-- ARGV: event id, time, latitude, longitude, country, place, within, max speed (km/h),
--       min distance (km), keep, ttl
--
-- The event is compared with the group's nearest located event before and after it (within
-- `within`); a pair further apart than `min distance` whose speed (at least one minute between
-- them) is above `max speed` fires, with both ends in the figures, once. Same arithmetic as the
-- in-memory store (store.rs), so both decide alike.
local pts, places, fz, fh = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local id, t = ARGV[1], tonumber(ARGV[2])
local within, maxspeed, minkm = tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])
local keep, ttl = tonumber(ARGV[10]), ARGV[11]

local fired_oldest, prior = firings(fz, fh, id)
if prior then return {'replay', prior} end
redis.call('ZADD', pts, ARGV[2], id)
redis.call('HSET', places, id, ARGV[3] .. '|' .. ARGV[4] .. '|' .. ARGV[5] .. '|' .. ARGV[6])
local newest = newest_of(pts, t)
local floor = newest - 2 * within
local gone = redis.call('ZRANGEBYSCORE', pts, '-inf', '(' .. s(floor))
local over = redis.call('ZCARD', pts) - #gone - keep
if over > 0 then
  local old = redis.call('ZRANGE', pts, #gone, #gone + over - 1)
  for i = 1, #old do gone[#gone + 1] = old[i] end
end
for i = 1, #gone do
  redis.call('ZREM', pts, gone[i])
  redis.call('HDEL', places, gone[i])
end
if fired_oldest ~= nil and fired_oldest < floor then trim_fired(fz, fh, floor) end
expire(ttl, pts, places)
if fired_oldest ~= nil then expire(ttl, fz, fh) end

local function parse(v)
  local la, lo, cc, pl = string.match(v, '^([^|]*)|([^|]*)|([^|]*)|(.*)$')
  return la, lo, cc, pl
end
local here = redis.call('HGET', places, id)
if not here then return {'count', '0'} end
local hla, hlo, hcc, hpl = parse(here)
local function neighbour(xs)
  for i = 1, #xs / 2 do
    if xs[2 * i - 1] ~= id then return {xs[2 * i - 1], tonumber(xs[2 * i])} end
  end
  return nil
end
local before = neighbour(redis.call('ZREVRANGEBYSCORE', pts, ARGV[2], s(t - within), 'WITHSCORES', 'LIMIT', 0, 2))
local after = neighbour(redis.call('ZRANGEBYSCORE', pts, ARGV[2], s(t + within), 'WITHSCORES', 'LIMIT', 0, 2))
local function distance_km(lat1, lon1, lat2, lon2)
  local p1, p2 = math.rad(lat1), math.rad(lat2)
  local dp, dl = math.rad(lat2 - lat1), math.rad(lon2 - lon1)
  local a = math.sin(dp / 2) * math.sin(dp / 2) + math.cos(p1) * math.cos(p2) * (math.sin(dl / 2) * math.sin(dl / 2))
  return 2 * 6371.0088 * math.asin(math.min(math.sqrt(a), 1))
end
local function round(x) return math.floor(x + 0.5) end
local function ending(eid, at, la, lo, cc, pl)
  return {eventId = eid, time = at, countryCode = cc, place = pl, latitude = tonumber(la), longitude = tonumber(lo)}
end
local fastest = 0
for _, nb in ipairs({before or false, after or false}) do
  if nb then
    local there = redis.call('HGET', places, nb[1])
    if there then
      local la, lo, cc, pl = parse(there)
      local km = distance_km(tonumber(la), tonumber(lo), tonumber(hla), tonumber(hlo))
      local ms = math.abs(t - nb[2])
      local speed = km / (math.max(ms, 60000) / 3600000)
      if round(speed) > fastest then fastest = round(speed) end
      -- A pair fires once: seen again from its other end (a replay, a late event), it is the
      -- journey already reported.
      local other = redis.call('HGET', fh, nb[1])
      local reported = other and string.find(other, '"' .. id .. '"', 1, true) ~= nil
      if km >= minkm and speed > maxspeed and not reported then
        local from, to
        if nb[2] <= t then
          from, to = ending(nb[1], nb[2], la, lo, cc, pl), ending(id, t, hla, hlo, hcc, hpl)
        else
          from, to = ending(id, t, hla, hlo, hcc, hpl), ending(nb[1], nb[2], la, lo, cc, pl)
        end
        local fig = cjson.encode({
          s = math.min(t, nb[2]), e = math.max(t, nb[2]), o = round(speed), l = round(maxspeed),
          ev = {nb[1], id},
          d = {from = from, to = to, distanceKm = round(km), minutes = round(ms / 60000), speedKmh = round(speed)},
        })
        record(fz, fh, id, t, fig)
        expire(ttl, fz, fh)
        return {'fired', fig}
      end
    end
  end
end
return {'count', tostring(fastest)}
