-- GCRA over several limits at once; nothing is updated unless every limit allows.
-- gcra(n): KEYS[1..n], one per limit. ARGV: now_ms, then (interval_ms, burst) per key.
-- Returns {1, 0} | {0, wait ms, index of the limit with the longest wait}
local function gcra(n)
  local now = tonumber(ARGV[1])
  local worst, which = 0, 0
  local new = {}
  for i = 1, n do
    local interval = tonumber(ARGV[2 * i])
    local burst = tonumber(ARGV[2 * i + 1])
    local tau = interval * (burst - 1)
    local tat = tonumber(redis.call('GET', KEYS[i]) or now)
    if tat < now then tat = now end
    if tat - now > tau then
      local wait = tat - now - tau
      if wait > worst then worst, which = wait, i end
    end
    new[i] = tat + interval
  end
  if worst > 0 then return {0, worst, which} end
  for i = 1, n do
    redis.call('SET', KEYS[i], new[i], 'PX', math.ceil(new[i] - now) + 1000)
  end
  return {1, 0}
end
