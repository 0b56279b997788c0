-- The host admits a waiting ticket. KEYS: waiting, admitted, removed, denied, ticket,
-- audit outbox. ARGV: rand, now, by, audit entry ('' for none; see audit.outbox)
local w = redis.call('HGET', KEYS[1], ARGV[1])
if not w then return false end
local st = redis.call('HGET', KEYS[5], 'status')
if not st then
  redis.call('HDEL', KEYS[1], ARGV[1])
  return false
end
redis.call('HDEL', KEYS[1], ARGV[1])
local sid = redis.call('HGET', KEYS[5], 'student_id')
local dev = redis.call('HGET', KEYS[5], 'device')
redis.call('HSET', KEYS[2], sid,
  cjson.encode({ticket=ARGV[1], device=dev, at=tonumber(ARGV[2]), by=ARGV[3]}))
redis.call('SREM', KEYS[3], sid)
redis.call('SREM', KEYS[4], sid)
redis.call('HSET', KEYS[5], 'status', 'admitted', 'reason', 'admitted_by_host')
if ARGV[4] and ARGV[4] ~= '' then redis.call('XADD', KEYS[6], '*', 'd', ARGV[4]) end
return w
