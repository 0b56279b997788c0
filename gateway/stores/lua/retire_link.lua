-- Make a new link current (or revoke the current one) and retire everything the old
-- link held, in one step: the old jti is revoked; the device binding is dropped and the
-- device remembered as released (it never takes the new binding by opening it first);
-- the student's waiting ticket leaves the waiting room and their admission ends.
-- KEYS: 1 links, 2 revoked, 3 jtis, 4 bind, 5 rebinds, 6 released, 7 waiting,
--       8 admitted, 9 tk_by
-- ARGV: 1 student, 2 new jti ('' to revoke only), 3 new link record json,
--       4 ticket key prefix, 5 released ttl s, 6 reason for the ticket
-- Returns {old jti or false, old record json or false, ticket or false, admission ended}
local sid, new = ARGV[1], ARGV[2]
local old = redis.call('HGET', KEYS[1], sid)
if new ~= '' then
  redis.call('HSET', KEYS[3], new, ARGV[3])
  redis.call('HSET', KEYS[1], sid, new)
else
  redis.call('HDEL', KEYS[1], sid)
end
local old_body = false
if old and old ~= new then
  redis.call('SADD', KEYS[2], old)
  old_body = redis.call('HGET', KEYS[3], old)
end
local dev = redis.call('HGET', KEYS[4], sid)
if dev then
  local list = {}
  local cur = redis.call('HGET', KEYS[6], sid)
  if cur then
    for _, d in ipairs(cjson.decode(cur)) do
      if d ~= dev then table.insert(list, d) end
    end
  end
  table.insert(list, dev)
  while #list > 8 do table.remove(list, 1) end
  redis.call('HSET', KEYS[6], sid, cjson.encode(list))
  redis.call('EXPIRE', KEYS[6], ARGV[5])
  redis.call('HDEL', KEYS[4], sid)
  redis.call('HDEL', KEYS[5], sid)
end
local tk = redis.call('HGET', KEYS[9], sid)
if tk then
  redis.call('HDEL', KEYS[7], tk)
  local tkey = ARGV[4] .. tk
  local st = redis.call('HGET', tkey, 'status')
  if st == 'waiting' or st == 'admitted' then
    redis.call('HSET', tkey, 'status', 'removed', 'reason', ARGV[6])
  end
end
local ended = redis.call('HDEL', KEYS[8], sid)
return {old or false, old_body, tk or false, ended}
