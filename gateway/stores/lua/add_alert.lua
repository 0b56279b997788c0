-- Raise an alert, or count it again when the same one (same id) is already shown; keep
-- the newest ARGV[4] of its kind, so a flood of one kind cannot push the others out.
-- KEYS: items, order, kind order. ARGV: id, alert json, now, keep per kind, ttl s, and
-- optionally a pub/sub channel and message published when the alert is new.
-- Returns {1 if new, count}
local new = 0
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  new = 1
end
local n = redis.call('HINCRBY', KEYS[1], ARGV[1] .. ':n', 1)
redis.call('HSET', KEYS[1], ARGV[1] .. ':last', ARGV[3])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1])
local function drop(id)
  redis.call('ZREM', KEYS[3], id)
  redis.call('ZREM', KEYS[2], id)
  redis.call('HDEL', KEYS[1], id, id .. ':n', id .. ':last')
end
local extra = redis.call('ZCARD', KEYS[3]) - tonumber(ARGV[4])
if extra > 0 then
  for _, id in ipairs(redis.call('ZRANGE', KEYS[3], 0, extra - 1)) do drop(id) end
end
local stale = tonumber(ARGV[3]) - tonumber(ARGV[5])
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', stale)) do
  redis.call('ZREM', KEYS[2], id)
  redis.call('HDEL', KEYS[1], id, id .. ':n', id .. ':last')
end
for i = 1, 3 do redis.call('EXPIRE', KEYS[i], ARGV[5]) end
if new == 1 and ARGV[6] then redis.call('PUBLISH', ARGV[6], ARGV[7]) end
return {new, n}
