-- Shared by every window script (prepended when the scripts are built).
-- Scores are event times in epoch milliseconds; '%.0f' keeps them exact in arguments. Numbers
-- that arrive as arguments are passed on as the strings they came as: turning a Lua number
-- into text costs more than the Redis command it is for.
local function s(x) return string.format('%.0f', x) end

local function newest_of(key, t)
  local top = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
  if top[2] and tonumber(top[2]) > t then return tonumber(top[2]) end
  return t
end

-- The time of the group's oldest recorded firing (nil when it never fired) and, if this event
-- already fired it, the figures recorded then. A firing is always recorded in both fz and fh, so
-- without fz there is nothing to replay, trim or keep alive there: most groups never fire, and
-- skip those calls.
local function firings(fz, fh, id)
  local oldest = redis.call('ZRANGE', fz, 0, 0, 'WITHSCORES')
  if oldest[1] == nil then return nil, false end
  return tonumber(oldest[2]), redis.call('HGET', fh, id)
end

-- Forget firings recorded before `floor` (trigger ids in a sorted set, figures in a hash).
local function trim_fired(fz, fh, floor)
  local old = redis.call('ZRANGEBYSCORE', fz, '-inf', '(' .. s(floor))
  for i = 1, #old do
    redis.call('ZREM', fz, old[i])
    redis.call('HDEL', fh, old[i])
  end
end

-- Has this group fired within one window length (exclusive) of `at`?
local function fired_near(fz, at, w)
  return redis.call('ZCOUNT', fz, '(' .. s(at - w), '(' .. s(at + w)) > 0
end

local function record(fz, fh, id, at, fig)
  redis.call('ZADD', fz, at, id)
  redis.call('HSET', fh, id, fig)
end

local function expire(ttl, ...)
  for _, k in ipairs({...}) do redis.call('PEXPIRE', k, ttl) end
end
