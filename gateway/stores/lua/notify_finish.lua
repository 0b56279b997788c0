-- KEYS: due, jobs. ARGV: 1 id, 2 token, 3 next due ('' = done), 4 the job JSON for then.
-- Returns 0 when the job is no longer this claimant's (its lease ran out and another
-- process claimed it), 1 otherwise.
local raw = redis.call('HGET', KEYS[2], ARGV[1])
if not raw then return 0 end
if cjson.decode(raw)['token'] ~= ARGV[2] then return 0 end
if ARGV[3] == '' then
  redis.call('HDEL', KEYS[2], ARGV[1])
  redis.call('ZREM', KEYS[1], ARGV[1])
else
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[4])
  redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
end
return 1
