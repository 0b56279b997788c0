-- An attempt to sign in begins: refused (the wait in ms) while the pair or the source
-- is banned or its window is full, or while the account is slowed by attacks from many
-- sources and its gate is shut; otherwise counted in every window. Returns 0 or the wait.
-- KEYS: 1 pair window, 2 pair ban, 3 source window, 4 source ban, 5 account window,
-- 6 account gate, 7 account's trusted sources
-- ARGV: 1 now, 2 member, 3 window, 4 pair limit, 5 source limit, 6 account limit,
-- 7 gate (ms), 8 source digest
local now = tonumber(ARGV[1])
local window = tonumber(ARGV[3])
local limits = {tonumber(ARGV[4]), tonumber(ARGV[5])}
local wait = 0
for i = 0, 1 do
  local z, h = KEYS[i * 2 + 1], KEYS[i * 2 + 2]
  local banned_until = tonumber(redis.call('HGET', h, 'until') or 0)
  if banned_until > now then
    wait = math.max(wait, banned_until - now)
  else
    redis.call('ZREMRANGEBYSCORE', z, '-inf', now - window)
    if redis.call('ZCARD', z) >= limits[i + 1] then
      local oldest = redis.call('ZRANGE', z, 0, 0, 'WITHSCORES')
      wait = math.max(wait, tonumber(oldest[2]) + window - now)
    end
  end
end
if wait > 0 then
  return wait
end
redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', now - window)
if redis.call('ZCARD', KEYS[5]) >= tonumber(ARGV[6])
    and redis.call('HEXISTS', KEYS[7], ARGV[8]) == 0 then
  -- the account is under attack from many sources: slowed, one attempt per gate
  local held_until = tonumber(redis.call('GET', KEYS[6]) or 0)
  if held_until > now then
    return held_until - now
  end
  redis.call('SET', KEYS[6], now + tonumber(ARGV[7]), 'PX', ARGV[7])
end
for _, z in ipairs({KEYS[1], KEYS[3], KEYS[5]}) do
  redis.call('ZADD', z, now, ARGV[2])
  redis.call('PEXPIRE', z, window)
end
return 0
