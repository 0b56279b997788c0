-- Take the lease if it is free, or keep it if this token holds it already (after a
-- transient error the holder must not wait for its own lease to expire).
-- KEYS: lease. ARGV: token, ttl ms. Returns 1 when the token holds the lease.
local cur = redis.call('GET', KEYS[1])
if cur == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if cur then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
