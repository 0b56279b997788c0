-- Act on an admit or wait decision in one step: the class's flood budget, the device
-- binding, the admission or the knock, the /go nonce, and the event for every process.
-- KEYS: 1 class budget, 2 bind, 3 rebinds, 4 admitted, 5 removed, 6 denied, 7 tk_by,
--       8 waiting, 9 new ticket, 10 last_ip, 11 new nonce
-- ARGV: 1 mode (admit|readmit|wait), 2 sid, 3 device, 4 bind (none|bind|rebind),
--       5 now_ms, 6 budget interval ms, 7 budget burst, 8 ticket random, 9 ticket json,
--       10 entry json (admission or waiting), 11 ticket ttl s, 12 ip, 13 nonce random,
--       14 nonce ttl s, 15 ticket key prefix, 16 bus channel, 17 event json, 18 class id,
--       19 jti of the link used, 20 window s of the class's attempt counter (KEYS[12]),
--       21 audit entry (audit.outbox) written to KEYS[13], the class's outbox, with the
--       ticket, whenever the admission or the knock is made
-- Returns {'ok', ticket random, new(0/1), attempts} | {'limited', wait ms, attempts} |
-- {'conflict', attempts}; attempts: the class's verified attempts in the current window
local attempts = redis.call('INCR', KEYS[12])
if attempts == 1 then redis.call('EXPIRE', KEYS[12], ARGV[20]) end
local now = tonumber(ARGV[5])
local interval, burst = tonumber(ARGV[6]), tonumber(ARGV[7])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
if tat - now > interval * (burst - 1) then
  return {'limited', tostring(tat - now - interval * (burst - 1)), attempts}
end
redis.call('SET', KEYS[1], tat + interval, 'PX', math.ceil(tat + interval - now) + 1000)
local sid, dev = ARGV[2], ARGV[3]
if ARGV[4] ~= 'none' then
  local cur = redis.call('HGET', KEYS[2], sid)
  if not cur then
    redis.call('HSET', KEYS[2], sid, dev)
  elseif cur ~= dev then
    if ARGV[4] ~= 'rebind' then return {'conflict', attempts} end
    redis.call('HSET', KEYS[2], sid, dev)
    redis.call('HINCRBY', KEYS[3], sid, 1)
  end
end
redis.call('HSET', KEYS[10], sid, ARGV[12])
redis.call('EXPIRE', KEYS[10], 86400)
local mode, rand, is_new = ARGV[1], ARGV[8], 1
if mode == 'readmit' then
  local cur = redis.call('HGET', KEYS[7], sid)
  if cur and redis.call('EXISTS', ARGV[15] .. cur) == 1 then
    rand, is_new = cur, 0
  else
    mode = 'admit'
  end
end
if mode == 'wait' then
  local old = redis.call('HGET', KEYS[7], sid)
  if old then
    local okey = ARGV[15] .. old
    local ost = redis.call('HGET', okey, 'status')
    if ost == 'waiting' and redis.call('HGET', okey, 'device') == dev then
      redis.call('EXPIRE', okey, ARGV[11])
      rand, is_new = old, 0
    elseif ost == 'waiting' then
      redis.call('HDEL', KEYS[8], old)
      redis.call('HSET', okey, 'status', 'replaced')
    end
  end
  if is_new == 1 then
    local t = cjson.decode(ARGV[9])
    for k, v in pairs(t) do redis.call('HSET', KEYS[9], k, v) end
    redis.call('EXPIRE', KEYS[9], ARGV[11])
    redis.call('HSET', KEYS[8], rand, ARGV[10])
    redis.call('HSET', KEYS[7], sid, rand)
  end
elseif mode == 'admit' then
  redis.call('HSET', KEYS[4], sid, ARGV[10])
  redis.call('SREM', KEYS[5], sid)
  redis.call('SREM', KEYS[6], sid)
  local old = redis.call('HGET', KEYS[7], sid)
  if old then redis.call('HDEL', KEYS[8], old) end
  local t = cjson.decode(ARGV[9])
  for k, v in pairs(t) do redis.call('HSET', KEYS[9], k, v) end
  redis.call('EXPIRE', KEYS[9], ARGV[11])
  redis.call('HSET', KEYS[7], sid, rand)
end
if mode ~= 'wait' then
  redis.call('SET', KEYS[11], cjson.encode({student_id=sid, device=dev,
             ticket=ARGV[18] .. '.' .. rand, jti=ARGV[19]}), 'EX', ARGV[14])
end
if is_new == 1 then
  local ev = cjson.decode(ARGV[17])
  ev['ticket'] = ARGV[18] .. '.' .. rand
  redis.call('PUBLISH', ARGV[16], cjson.encode(ev))
end
redis.call('XADD', KEYS[13], '*', 'd', ARGV[21], 't', ARGV[18] .. '.' .. rand)
return {'ok', rand, is_new, attempts}
