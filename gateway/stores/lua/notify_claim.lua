-- KEYS: due, jobs. ARGV: 1 now, 2 lease until, 3 limit, 4 claim token prefix.
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0,
                       tonumber(ARGV[3]))
local out = {}
for _, id in ipairs(ids) do
  local raw = redis.call('HGET', KEYS[2], id)
  if raw then
    local job = cjson.decode(raw)
    job['token'] = ARGV[4] .. ':' .. id
    local enc = cjson.encode(job)
    redis.call('HSET', KEYS[2], id, enc)
    redis.call('ZADD', KEYS[1], ARGV[2], id)
    table.insert(out, enc)
  else
    redis.call('ZREM', KEYS[1], id)
  end
end
return out
