-- KEYS: step 1..N (zset id -> time), used (zset), fired (zset), figures (hash)
-- ARGV: event id, time, steps mask, N, at least, within, lateness, ttl, keep
--
-- Steps in any order (Sigma `temporal`): windows of `within` that hold this event, ending at it
-- or at a later member (so a late event completes a set too), are tried in time order; in each,
-- a step is covered by this event (when it matches it) or by the step's newest unused member.
-- The first window covering `at least` steps fires, and its events are used up.
local id = ARGV[1]
local t, mask, n = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local at_least, within, late, ttl = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7]), ARGV[8]
local keep = tonumber(ARGV[9])
local used, fz, fh = KEYS[n + 1], KEYS[n + 2], KEYS[n + 3]

local fired_oldest, prior = firings(fz, fh, id)
if prior then return {'replay', prior} end
local any_fired = fired_oldest ~= nil
local function adding(k) return math.floor(mask / (2 ^ (k - 1))) % 2 == 1 end

local newest = t
for k = 1, n do
  local top = redis.call('ZRANGE', KEYS[k], -1, -1, 'WITHSCORES')
  if top[2] and tonumber(top[2]) > newest then newest = tonumber(top[2]) end
end
if t < newest - within - late then return {'late', '0'} end
local floor = newest - 2 * within - late
for k = 1, n do
  if adding(k) then redis.call('ZADD', KEYS[k], ARGV[2], id) end
  redis.call('ZREMRANGEBYSCORE', KEYS[k], '-inf', '(' .. s(floor))
  local over = redis.call('ZCARD', KEYS[k]) - keep
  if over > 0 then redis.call('ZREMRANGEBYRANK', KEYS[k], 0, over - 1) end
  redis.call('PEXPIRE', KEYS[k], ttl)
end
redis.call('ZREMRANGEBYSCORE', used, '-inf', '(' .. s(floor))
if any_fired and fired_oldest < floor then trim_fired(fz, fh, floor) end
if any_fired then expire(ttl, fz, fh) end

local ends = {t}
for k = 1, n do
  local xs = redis.call('ZRANGEBYSCORE', KEYS[k], '(' .. ARGV[2], s(t + within), 'WITHSCORES')
  for i = 1, #xs / 2 do ends[#ends + 1] = tonumber(xs[2 * i]) end
end
table.sort(ends)
local best, prev = 0, nil
for _, e in ipairs(ends) do
  if e ~= prev then
    prev = e
    local covered, picked, seen = 0, {}, {}
    for k = 1, n do
      if adding(k) then
        covered = covered + 1
      else
        local xs = redis.call('ZREVRANGEBYSCORE', KEYS[k], s(e), s(e - within), 'WITHSCORES')
        for i = 1, #xs / 2 do
          local m = xs[2 * i - 1]
          if m ~= id and not redis.call('ZSCORE', used, m) then
            covered = covered + 1
            if not seen[m] then
              seen[m] = true
              picked[#picked + 1] = {tonumber(xs[2 * i]), m}
            end
            break
          end
        end
      end
    end
    if covered > best then best = covered end
    if covered >= at_least then
      table.sort(picked, function(a, b)
        if a[1] ~= b[1] then return a[1] < b[1] end
        return a[2] < b[2]
      end)
      local first, last, evidence = t, t, {}
      for _, p in ipairs(picked) do
        if p[1] < first then first = p[1] end
        if p[1] > last then last = p[1] end
        evidence[#evidence + 1] = p[2]
      end
      evidence[#evidence + 1] = id
      picked[#picked + 1] = {t, id}
      for _, p in ipairs(picked) do
        redis.call('ZADD', used, s(p[1]), p[2])
        for k = 1, n do redis.call('ZREM', KEYS[k], p[2]) end
      end
      local fig = cjson.encode({s = first, e = last, o = covered, l = at_least, ev = evidence})
      record(fz, fh, id, t, fig)
      expire(ttl, used, fz, fh)
      return {'fired', fig}
    end
  end
end
return {'count', tostring(best)}
