-- Consume a /go nonce: only on the device it was minted for, only while still admitted
-- and while the link it was minted for is still the student's current link.
-- KEYS: nonce, admitted, links. ARGV: device
local v = redis.call('GET', KEYS[1])
if not v then return {0} end
local d = cjson.decode(v)
if d.device ~= ARGV[1] then return {2} end
redis.call('DEL', KEYS[1])
local a = redis.call('HGET', KEYS[2], d.student_id)
if not a then return {3} end
if type(d.jti) == 'string' and d.jti ~= '' and
   redis.call('HGET', KEYS[3], d.student_id) ~= d.jti then
  return {3}
end
return {1, v}
