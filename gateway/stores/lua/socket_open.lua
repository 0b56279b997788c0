-- A waiting-room socket opens on a ticket: the newest ARGV[3] stay, older ones are
-- returned to be closed. KEYS: the ticket's sockets. ARGV: socket id, now, keep, ttl s
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[4])
local extra = redis.call('ZCARD', KEYS[1]) - tonumber(ARGV[3])
if extra <= 0 then return {} end
local old = redis.call('ZRANGE', KEYS[1], 0, extra - 1)
for _, id in ipairs(old) do redis.call('ZREM', KEYS[1], id) end
return old
