-- A waiting-room socket opens on a ticket: the newest ARGV[3] stay, older ones are
-- returned to be closed. The ticket is marked as having had a page open ('ws'), so an
-- empty socket set later means the student left. KEYS: the ticket's sockets, the
-- ticket. ARGV: socket id, now, keep, ttl s, stale before.
-- Returns {came back (1 when the page had left), old socket ids...}
local back = 0
if redis.call('HGET', KEYS[2], 'ws') == '1' and
   redis.call('ZCOUNT', KEYS[1], ARGV[5], '+inf') == 0 then back = 1 end
if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('HSET', KEYS[2], 'ws', '1') end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[4])
local out = {back}
local extra = redis.call('ZCARD', KEYS[1]) - tonumber(ARGV[3])
if extra <= 0 then return out end
local old = redis.call('ZRANGE', KEYS[1], 0, extra - 1)
for _, id in ipairs(old) do
  redis.call('ZREM', KEYS[1], id)
  out[#out + 1] = id
end
return out
