-- Everything one join attempt needs from the class, in one call.
-- KEYS: meta, links, revoked, roster, bind, rebinds, admitted, removed, denied, bans, hosts, jtis,
--       released, device resets
-- ARGV: student id, jti
local sid, jti = ARGV[1], ARGV[2]
return {
  redis.call('HGETALL', KEYS[1]),
  redis.call('HGET', KEYS[2], sid),
  redis.call('SISMEMBER', KEYS[3], jti),
  redis.call('HGET', KEYS[4], sid),
  redis.call('HGET', KEYS[5], sid),
  redis.call('HGET', KEYS[6], sid),
  redis.call('HGET', KEYS[7], sid),
  redis.call('SISMEMBER', KEYS[8], sid),
  redis.call('SISMEMBER', KEYS[9], sid),
  redis.call('HGETALL', KEYS[10]),
  redis.call('HLEN', KEYS[7]),
  redis.call('ZRANGE', KEYS[11], 0, -1, 'WITHSCORES'),
  redis.call('HGET', KEYS[12], jti),
  redis.call('HGET', KEYS[13], sid),
  redis.call('HEXISTS', KEYS[14], sid)
}
