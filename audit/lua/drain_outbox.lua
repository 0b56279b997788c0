-- KEYS: 1 lease, 2 cursors hash, 3 audit stream. ARGV: 1 token, 2 outbox key,
-- 3 expected cursor ('' when never drained), 4 new cursor, 5.. stream values ('d')
-- Returns 1 when appended, 0 when the cursor moved (another drain got there first).
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return redis.error_reply('NOTLEADER lease lost')
end
local cur = redis.call('HGET', KEYS[2], ARGV[2]) or ''
if cur ~= ARGV[3] then return 0 end
for i = 5, #ARGV do redis.call('XADD', KEYS[3], '*', 'd', ARGV[i]) end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[4])
return 1
