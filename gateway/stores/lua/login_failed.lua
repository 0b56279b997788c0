-- A failed attempt: bans the pair and the source whose window it filled, each ban
-- doubling up to ARGV[7] until ARGV[8] ms pass without one. Returns the longest ban (ms).
-- ARGV: 1 now, 2 member, 3 window, 4 pair limit, 5 source limit, 6 ban, 7 longest ban,
-- 8 decay
-- KEYS: 1 pair window, 2 pair ban, 3 source window, 4 source ban
local now = tonumber(ARGV[1])
local window = tonumber(ARGV[3])
local limits = {tonumber(ARGV[4]), tonumber(ARGV[5])}
local ban, ban_max, decay = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
local longest = 0
for i = 0, 1 do
  local z, h = KEYS[i * 2 + 1], KEYS[i * 2 + 2]
  redis.call('ZREMRANGEBYSCORE', z, '-inf', now - window)
  -- an attempt whose window was already cleared by a ban must not ban again
  if redis.call('ZSCORE', z, ARGV[2]) and redis.call('ZCARD', z) >= limits[i + 1] then
    local level = tonumber(redis.call('HGET', h, 'level') or 0)
    local previous = tonumber(redis.call('HGET', h, 'until') or 0)
    if now - previous >= decay then
      level = 0
    end
    local duration = ban
    for _ = 1, level do
      if duration >= ban_max then break end
      duration = duration * 2
    end
    if duration > ban_max then duration = ban_max end
    redis.call('HSET', h, 'until', now + duration, 'level', level + 1)
    redis.call('PEXPIRE', h, duration + decay)
    redis.call('DEL', z)
    longest = math.max(longest, duration)
  end
end
return longest
