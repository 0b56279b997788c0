-- Store a signed checkpoint of the log's first ARGV[2] records, only while the caller
-- holds the lease and only when it covers more than the last one stored.
-- KEYS: 1 meta, 2 lease, 3 checkpoints. ARGV: token, size, note, signing time (ms).
if redis.call('GET', KEYS[2]) ~= ARGV[1] then
  return redis.error_reply('NOTLEADER lease lost')
end
local size = tonumber(redis.call('HGET', KEYS[1], 'size') or '0')
local done = tonumber(redis.call('HGET', KEYS[1], 'ckpt_size') or '-1')
local n = tonumber(ARGV[2])
if n > size then
  return redis.error_reply('CONFLICT checkpoint beyond the log')
end
if n <= done then
  return 0
end
redis.call('RPUSH', KEYS[3], ARGV[3])
redis.call('HSET', KEYS[1], 'ckpt_size', n, 'ckpt_ms', ARGV[4])
return 1
