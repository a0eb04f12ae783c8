-- Periods of an aggregate rule. Every key is under the rule's hash tag, so a close can reach
-- the members of each period it ends.
-- 'add'   KEYS: members (hash member -> event id), open (zset period -> end), closed (zset)
--         ARGV: 'add', member, event id, period ("group\nstart"), end, ttl
--         A period already closed takes nothing more (late).
-- 'close' KEYS: open, closed
--         ARGV: 'close', cutoff, min, max, limit, retention, members key prefix, evidence cap
--         Ends the periods that ended at or before cutoff; returns period, end, count and the
--         evidence ids (sorted, newline-separated) of those whose count is within [min, max].
if ARGV[1] == 'add' then
  local members, open, closed = KEYS[1], KEYS[2], KEYS[3]
  if redis.call('ZSCORE', closed, ARGV[4]) then return {'late', '0'} end
  redis.call('HSETNX', members, ARGV[2], ARGV[3])
  redis.call('ZADD', open, ARGV[5], ARGV[4])
  expire(ARGV[6], members, open)
  return {'count', tostring(redis.call('HLEN', members))}
end
local open, closed = KEYS[1], KEYS[2]
local lo, hi, cap = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[8])
local due = redis.call('ZRANGEBYSCORE', open, '-inf', ARGV[2], 'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[5]))
local out = {}
for i = 1, #due / 2 do
  local period, fin = due[2 * i - 1], due[2 * i]
  local key = ARGV[7] .. period
  local ids = redis.call('HVALS', key)
  redis.call('DEL', key)
  redis.call('ZREM', open, period)
  redis.call('ZADD', closed, fin, period)
  local count = #ids
  if count >= lo and count <= hi then
    table.sort(ids)
    local ev = {}
    for j = 1, math.min(count, cap) do ev[j] = ids[j] end
    out[#out + 1] = period
    out[#out + 1] = fin
    out[#out + 1] = tostring(count)
    out[#out + 1] = table.concat(ev, '\n')
  end
end
redis.call('ZREMRANGEBYSCORE', closed, '-inf', '(' .. s(tonumber(ARGV[2]) - tonumber(ARGV[6])))
if #due > 0 then expire(ARGV[6], closed) end
return out
