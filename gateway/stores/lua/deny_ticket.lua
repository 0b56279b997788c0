-- The host denies a waiting ticket. KEYS: waiting, denied, ticket. ARGV: rand
local w = redis.call('HGET', KEYS[1], ARGV[1])
if not w then return false end
redis.call('HDEL', KEYS[1], ARGV[1])
local sid = redis.call('HGET', KEYS[3], 'student_id')
if sid then
  redis.call('SADD', KEYS[2], sid)
  redis.call('HSET', KEYS[3], 'status', 'denied', 'reason', 'denied_by_host')
end
return w
