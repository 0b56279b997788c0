-- Move one batch from the stream into the indexed log. Everything a takeover needs (size,
-- last consumed stream id, leaves, tree nodes) changes in this one atomic step, and only
-- while the caller still holds the lease, so a deposed leader cannot write.
--
-- KEYS: 1 meta, 2 lease (audit/lease.py), 3 rec, 4 leaves, 5 stream, 6 pd, 7 time buckets, 8.. see ARGV
-- ARGV (few, large arguments: packing thousands of small ones costs more than the work):
-- 1 token, 2 expected_size, 3 expected_last_id, 4 new_last_id, 5 origin, 6 leaves blob,
-- 7 levels "keypos,keypos,..." and 8 their blobs joined (32 bytes per node, counts from
-- 9 "n,n,..."), 10 records joined, 11 record lengths "l,l,...", 12 personal blobs
-- joined, 13 "index:len,...", 14 zadds "keypos:index,...", 15 time buckets
-- "bucket:min:max,...", 16 stream ids "id,id,..."
if redis.call('GET', KEYS[2]) ~= ARGV[1] then
  return redis.error_reply('NOTLEADER lease lost')
end
local size = tonumber(redis.call('HGET', KEYS[1], 'size') or '0')
local last = redis.call('HGET', KEYS[1], 'last_id') or '0-0'
if size ~= tonumber(ARGV[2]) or last ~= ARGV[3] then
  return redis.error_reply('CONFLICT log moved: size ' .. size .. ' last ' .. last)
end
if redis.call('STRLEN', KEYS[4]) ~= 32 * size then
  return redis.error_reply('CORRUPT leaf hashes do not match the log size')
end
local function flush(cmd, key, list)
  for i = 1, #list, 2000 do
    redis.call(cmd, key, unpack(list, i, math.min(i + 1999, #list)))
  end
end
redis.call('APPEND', KEYS[4], ARGV[6])
redis.call('HSETNX', KEYS[1], 'ix_fields_from', size)
local off = 1
local counts = {}
for n in string.gmatch(ARGV[9], '%d+') do counts[#counts + 1] = tonumber(n) end
local li = 0
for pos in string.gmatch(ARGV[7], '%d+') do
  li = li + 1
  local len = 32 * counts[li]
  redis.call('APPEND', KEYS[tonumber(pos)], string.sub(ARGV[8], off, off + len - 1))
  off = off + len
end
local fields = {}
local n = 0
off = 1
for len in string.gmatch(ARGV[11], '%d+') do
  len = tonumber(len)
  fields[#fields + 1] = tostring(size + n)
  fields[#fields + 1] = string.sub(ARGV[10], off, off + len - 1)
  off = off + len
  n = n + 1
end
if n > 0 then flush('HSET', KEYS[3], fields) end
local pds = {}
off = 1
for idx, len in string.gmatch(ARGV[13], '(%d+):(%d+)') do
  len = tonumber(len)
  pds[#pds + 1] = idx
  pds[#pds + 1] = string.sub(ARGV[12], off, off + len - 1)
  off = off + len
end
if #pds > 0 then flush('HSET', KEYS[6], pds) end
for pos, idx in string.gmatch(ARGV[14], '(%d+):(%d+)') do
  redis.call('ZADD', KEYS[tonumber(pos)], idx, idx)
end
for b, lo, hi in string.gmatch(ARGV[15], '(%d+):(%d+):(%d+)') do
  lo, hi = tonumber(lo), tonumber(hi)
  local cur = redis.call('HGET', KEYS[7], b)
  if cur then
    local c = string.find(cur, ',')
    lo = math.min(lo, tonumber(string.sub(cur, 1, c - 1)))
    hi = math.max(hi, tonumber(string.sub(cur, c + 1)))
  end
  redis.call('HSET', KEYS[7], b, string.format('%d,%d', lo, hi))
end
local ids = {}
for id in string.gmatch(ARGV[16], '[^,]+') do ids[#ids + 1] = id end
if #ids > 0 then flush('XDEL', KEYS[5], ids) end
redis.call('HSET', KEYS[1], 'size', size + n, 'last_id', ARGV[4])
redis.call('HSETNX', KEYS[1], 'origin', ARGV[5])
return size + n
