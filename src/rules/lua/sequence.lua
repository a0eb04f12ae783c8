-- KEYS: step 1..N (zset id -> time), used (zset), fired (zset), figures (hash)
-- ARGV: event id, time, steps mask, N, within, lateness, ttl
local id = ARGV[1]
local t, mask, n = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local within, late, ttl = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local used, fz, fh = KEYS[n + 1], KEYS[n + 2], KEYS[n + 3]

local prior = redis.call('HGET', fh, id)
if prior then return {'replay', prior} end
local newest = t
for k = 1, n do newest = newest_of(KEYS[k], newest) end
if t < newest - within - late then return {'late', '0'} end
for k = 1, n do
  if math.floor(mask / (2 ^ (k - 1))) % 2 == 1 then redis.call('ZADD', KEYS[k], t, id) end
end
local floor = newest - 2 * within - late
for k = 1, n do redis.call('ZREMRANGEBYSCORE', KEYS[k], '-inf', '(' .. s(floor)) end
redis.call('ZREMRANGEBYSCORE', used, '-inf', '(' .. s(floor))
trim_fired(fz, fh, floor)
for k = 1, n do redis.call('PEXPIRE', KEYS[k], ttl) end
expire(ttl, used, fz, fh)

local best = 0
local firsts = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '+inf', 'WITHSCORES')
for i = 1, #firsts / 2 do
  local a1, t1 = firsts[2 * i - 1], tonumber(firsts[2 * i])
  if not redis.call('ZSCORE', used, a1) then
    local chain, times = {a1}, {t1}
    local cur, complete = t1, true
    for k = 2, n do
      local cands = redis.call('ZRANGEBYSCORE', KEYS[k], s(cur), s(t1 + within), 'WITHSCORES')
      local found = nil
      for j = 1, #cands / 2 do
        local c = cands[2 * j - 1]
        local taken = redis.call('ZSCORE', used, c)
        if not taken then
          for _, x in ipairs(chain) do if x == c then taken = true end end
        end
        if not taken then
          found = c
          cur = tonumber(cands[2 * j])
          break
        end
      end
      if not found then complete = false break end
      chain[#chain + 1] = found
      times[#times + 1] = cur
    end
    if #chain > best then best = #chain end
    if complete then
      for j = 1, #chain do redis.call('ZADD', used, times[j], chain[j]) end
      local evidence = {}
      for j = 1, #chain do
        if chain[j] ~= id then evidence[#evidence + 1] = chain[j] end
      end
      evidence[#evidence + 1] = id
      local fig = cjson.encode({s = t1, e = cur, o = n, l = n, ev = evidence})
      record(fz, fh, id, t, fig)
      return {'fired', fig}
    end
  end
end
return {'count', tostring(best)}
