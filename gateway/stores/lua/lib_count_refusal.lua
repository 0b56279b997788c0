-- A window of refusals that starts with the first one: the count and when it started.
-- KEYS: counter hash. ARGV: window s, now. Returns {count, first (string)}
local function count_refusal(key, window, now)
  local n = redis.call('HINCRBY', key, 'n', 1)
  if n == 1 then
    redis.call('HSET', key, 'first', now)
    redis.call('EXPIRE', key, window)
  end
  return {n, redis.call('HGET', key, 'first') or now}
end
