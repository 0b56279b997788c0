-- Acknowledge once. ARGV: 1 by, 2 at. Returns {-1} not found, {0, by, at} already
-- acknowledged (by whom, when), {1, by, at} acknowledged now.
if redis.call('EXISTS', KEYS[1]) == 0 then return {-1, '', ''} end
local by = redis.call('HGET', KEYS[1], 'ack_by')
if by then return {0, by, redis.call('HGET', KEYS[1], 'ack_at')} end
redis.call('HSET', KEYS[1], 'ack_by', ARGV[1], 'ack_at', ARGV[2])
return {1, ARGV[1], ARGV[2]}
