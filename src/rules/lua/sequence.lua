-- KEYS: step 1..N (zset id -> time), used (zset), fired (zset), figures (hash)
-- ARGV: event id, time, steps mask, N, within, lateness, ttl, keep
--
-- Each step set and the used set are read once and the chain search runs on those copies:
-- a handful of calls per event instead of one or more per candidate. Keys that do not exist are
-- neither trimmed nor given an expiry (both would be no-ops). Each step keeps its `keep` newest
-- events, and members of a fired chain leave the step sets, so the work per event is about
-- (first steps within `within` before it) × N binary searches.
local id = ARGV[1]
local t, mask, n = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local within, late, ttl = tonumber(ARGV[5]), tonumber(ARGV[6]), ARGV[7]
local keep = tonumber(ARGV[8])
local used, fz, fh = KEYS[n + 1], KEYS[n + 2], KEYS[n + 3]

local fired_oldest, prior = firings(fz, fh, id)
if prior then return {'replay', prior} end
local any_fired = fired_oldest ~= nil

-- steps[k] = {members..., scores...} in Redis order (score, then member)
local function load(key)
  local xs = redis.call('ZRANGE', key, 0, -1, 'WITHSCORES')
  local ms, ss = {}, {}
  for i = 1, #xs / 2 do
    ms[i] = xs[2 * i - 1]
    ss[i] = tonumber(xs[2 * i])
  end
  return {m = ms, s = ss}
end
local function adding(k) return math.floor(mask / (2 ^ (k - 1))) % 2 == 1 end
-- The copy of a set after ZADD of (t, id): placed by score when that is unambiguous; with the id
-- already there or another member at the same score (ordered by bytes there), read it again.
local function added(key, set)
  local at = #set.s + 1
  for i = 1, #set.s do
    if set.m[i] == id or set.s[i] == t then return load(key) end
    if set.s[i] > t and at > i then at = i end
  end
  table.insert(set.m, at, id)
  table.insert(set.s, at, t)
  return set
end
-- The copy without its `drop` lowest-ranked members.
local function without_oldest(set, drop)
  local ms, ss = {}, {}
  for i = drop + 1, #set.m do
    ms[#ms + 1] = set.m[i]
    ss[#ss + 1] = set.s[i]
  end
  return {m = ms, s = ss}
end
-- First index whose score is >= x (#ss + 1 when none).
local function lower_bound(ss, x)
  local lo, hi = 1, #ss + 1
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    if ss[mid] < x then lo = mid + 1 else hi = mid end
  end
  return lo
end

local steps = {}
local newest = t
for k = 1, n do
  steps[k] = load(KEYS[k])
  local ss = steps[k].s
  if ss[#ss] and ss[#ss] > newest then newest = ss[#ss] end
end
if t < newest - within - late then return {'late', '0'} end
local floor = newest - 2 * within - late
for k = 1, n do
  if adding(k) then
    redis.call('ZADD', KEYS[k], ARGV[2], id)
    if steps[k].s[1] and steps[k].s[1] < floor then
      redis.call('ZREMRANGEBYSCORE', KEYS[k], '-inf', '(' .. s(floor))
      steps[k] = load(KEYS[k])
    else
      steps[k] = added(KEYS[k], steps[k])
    end
  elseif steps[k].s[1] and steps[k].s[1] < floor then
    redis.call('ZREMRANGEBYSCORE', KEYS[k], '-inf', '(' .. s(floor))
    steps[k] = load(KEYS[k])
  end
  local over = #steps[k].m - keep
  if over > 0 then
    redis.call('ZREMRANGEBYRANK', KEYS[k], 0, over - 1)
    steps[k] = without_oldest(steps[k], over)
  end
end
-- Only membership matters here: trim first, then read the members without their scores.
redis.call('ZREMRANGEBYSCORE', used, '-inf', '(' .. s(floor))
local u = {m = redis.call('ZRANGE', used, 0, -1)}
local is_used = {}
for i = 1, #u.m do is_used[u.m[i]] = true end
if any_fired and fired_oldest < floor then trim_fired(fz, fh, floor) end
for k = 1, n do
  if steps[k].m[1] then redis.call('PEXPIRE', KEYS[k], ttl) end
end
if u.m[1] then redis.call('PEXPIRE', used, ttl) end
if any_fired then expire(ttl, fz, fh) end

-- A chain that completes now holds this event, so it starts within `within` before it.
local best = 0
local firsts = steps[1]
for i = lower_bound(firsts.s, t - within), #firsts.m do
  local a1, t1 = firsts.m[i], firsts.s[i]
  if t1 > t then break end
  if not is_used[a1] then
    local chain, times = {a1}, {t1}
    local cur, complete = t1, true
    for k = 2, n do
      local cm, cs = steps[k].m, steps[k].s
      local found = nil
      for j = lower_bound(cs, cur), #cm do
        local sc = cs[j]
        if sc > t1 + within then break end
        local c = cm[j]
        local taken = is_used[c]
        if not taken then
          for _, x in ipairs(chain) do if x == c then taken = true end end
        end
        if not taken then
          found = c
          cur = sc
          break
        end
      end
      if not found then complete = false break end
      chain[#chain + 1] = found
      times[#times + 1] = cur
    end
    if #chain > best then best = #chain end
    if complete then
      for j = 1, #chain do
        redis.call('ZADD', used, times[j], chain[j])
        for k = 1, n do redis.call('ZREM', KEYS[k], chain[j]) end
      end
      local evidence = {}
      for j = 1, #chain do
        if chain[j] ~= id then evidence[#evidence + 1] = chain[j] end
      end
      evidence[#evidence + 1] = id
      local fig = cjson.encode({s = t1, e = cur, o = n, l = n, ev = evidence})
      record(fz, fh, id, t, fig)
      -- written just now, possibly created: they expire like the rest of the window
      expire(ttl, used, fz, fh)
      return {'fired', fig}
    end
  end
end
return {'count', tostring(best)}
