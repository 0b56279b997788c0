-- Remove a student: KEYS: admitted, waiting, removed, tk_by. ARGV: student, ticket_prefix,
-- status, reason. Returns the student's ticket (or false).
redis.call('HDEL', KEYS[1], ARGV[1])
if ARGV[3] == 'removed' then redis.call('SADD', KEYS[3], ARGV[1]) end
local tk = redis.call('HGET', KEYS[4], ARGV[1])
if tk then
  redis.call('HDEL', KEYS[2], tk)
  if redis.call('EXISTS', ARGV[2] .. tk) == 1 then
    redis.call('HSET', ARGV[2] .. tk, 'status', ARGV[3], 'reason', ARGV[4])
  end
  return tk
end
return false
