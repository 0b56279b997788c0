-- A successful attempt: forgets the pair, this account's attempts from the source and
-- this attempt from the account's window, and trusts the source for the account.
-- KEYS: 1 pair window, 2 pair ban, 3 source window, 4 account window,
-- 5 account's trusted sources
-- ARGV: 1 account tag, 2 member, 3 now, 4 source digest, 5 trust (ms)
redis.call('DEL', KEYS[1], KEYS[2])
local tag = ARGV[1]
for _, member in ipairs(redis.call('ZRANGE', KEYS[3], 0, -1)) do
  if string.sub(member, 1, string.len(tag)) == tag then
    redis.call('ZREM', KEYS[3], member)
  end
end
redis.call('ZREM', KEYS[4], ARGV[2])
redis.call('HSET', KEYS[5], ARGV[4], ARGV[3])
redis.call('PEXPIRE', KEYS[5], ARGV[5])
return 0
