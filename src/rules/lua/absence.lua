-- KEYS: seen (zset group -> newest event time), reported (hash group -> time reported silent)
-- ARGV: 'seen'|'expect'|'scan', then:
--   seen:   group, time, ttl      (a replayed event older than a reported silence is ignored)
--   expect: group, now, ttl       (watch a group that never sent anything)
--   scan:   cutoff, limit         (report and forget groups silent since before cutoff)
local seen, reported = KEYS[1], KEYS[2]
local op = ARGV[1]
if op == 'seen' then
  local r = redis.call('HGET', reported, ARGV[2])
  if r and tonumber(r) >= tonumber(ARGV[3]) then return {} end
  redis.call('ZADD', seen, 'GT', ARGV[3], ARGV[2])
  expire(tonumber(ARGV[4]), seen, reported)
  return {}
elseif op == 'expect' then
  if redis.call('HEXISTS', reported, ARGV[2]) == 1 then return {} end
  redis.call('ZADD', seen, 'NX', ARGV[3], ARGV[2])
  expire(tonumber(ARGV[4]), seen, reported)
  return {}
end
local xs = redis.call('ZRANGEBYSCORE', seen, '-inf', ARGV[2], 'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[3]))
for i = 1, #xs / 2 do
  redis.call('ZREM', seen, xs[2 * i - 1])
  redis.call('HSET', reported, xs[2 * i - 1], xs[2 * i])
end
return xs
