-- Mint a /go nonce for a waiting-room socket: only for the device of the current
-- admission, and only while the ticket's link is the student's current link.
-- KEYS: admitted, links, ticket, nonce. ARGV: student, device, ticket id, ttl s
local a = redis.call('HGET', KEYS[1], ARGV[1])
if not a or cjson.decode(a).device ~= ARGV[2] then return 0 end
local jti = redis.call('HGET', KEYS[3], 'jti')
if jti and jti ~= '' and redis.call('HGET', KEYS[2], ARGV[1]) ~= jti then return 0 end
redis.call('SET', KEYS[4], cjson.encode({student_id=ARGV[1], device=ARGV[2],
           ticket=ARGV[3], jti=jti or ''}), 'EX', ARGV[4])
return 1
