-- A short code typed: refused unseen while any of the failure budgets is drained (the
-- answer must not depend on the code, or a throttled guesser would still learn which
-- guess was right); otherwise looked up, and then a correct code is charged to its link
-- only, a wrong one to every failure budget. KEYS: the n failure budgets, then the code.
-- ARGV: now_ms, (interval_ms, burst) per budget, lookup (1/0: 0 for a code not even
-- well-formed), link budget key prefix, link interval_ms, link burst.
-- Returns {'limited', wait ms, index of the budget} | {'wrong', 0, 0} |
--         {'found', 0, "cid|jti"} | {'link_limited', wait ms, "cid|jti"}
local n = #KEYS - 1
local now = tonumber(ARGV[1])
local worst, which = 0, 0
local new = {}
for i = 1, n do
  local interval = tonumber(ARGV[2 * i])
  local tat = tonumber(redis.call('GET', KEYS[i]) or now)
  if tat < now then tat = now end
  local wait = tat - now - interval * (tonumber(ARGV[2 * i + 1]) - 1)
  if wait > worst then worst, which = wait, i end
  new[i] = tat + interval
end
if worst > 0 then return {'limited', worst, which} end
local found = false
if ARGV[2 * n + 2] == '1' then found = redis.call('GET', KEYS[n + 1]) end
if found and string.find(found, '|', 1, true) then
  local jti = string.sub(found, string.find(found, '|', 1, true) + 1)
  local key = ARGV[2 * n + 3] .. jti
  local interval = tonumber(ARGV[2 * n + 4])
  local tat = tonumber(redis.call('GET', key) or now)
  if tat < now then tat = now end
  local wait = tat - now - interval * (tonumber(ARGV[2 * n + 5]) - 1)
  if wait > 0 then return {'link_limited', wait, found} end
  redis.call('SET', key, tat + interval, 'PX', math.ceil(tat + interval - now) + 1000)
  return {'found', 0, found}
end
for i = 1, n do
  redis.call('SET', KEYS[i], new[i], 'PX', math.ceil(new[i] - now) + 1000)
end
return {'wrong', 0, 0}
