-- Apply a change and append its revision in one step. ARGV: 1 the new values (JSON
-- object, only the fields given), 2 by, 3 at, 4 reason, 5 the transitions (JSON),
-- 6 "1" when setting the current status again is allowed, 7 the incident id.
-- Returns {-1} not found, {0, cur} transition refused, {2, cur} closed (no edits),
-- {1, cur} applied (or nothing changed).
local cur = redis.call('HGET', KEYS[1], 'status')
if not cur then return {-1, ''} end
local ch = cjson.decode(ARGV[1])
local new = ch['status']
if new then
  local ok = false
  local allowed = cjson.decode(ARGV[5])
  for _, s in ipairs(allowed[cur] or {}) do if s == new then ok = true end end
  if new == cur and ARGV[6] == '1' then ok = true end
  if not ok then return {0, cur} end
end
local after = new or cur
if (ch['title'] or ch['description'] or ch['severity']) and after == 'closed' then
  return {2, cur}
end
local changes = {}
local fields = {}
local any = false
for _, f in ipairs({'title', 'description', 'status', 'severity'}) do
  local v = ch[f]
  if v then
    local old = redis.call('HGET', KEYS[1], f)
    if f == 'severity' and not old then old = 'normal' end
    if old ~= v then
      changes[f] = {old or cjson.null, v}
      table.insert(fields, f)
      table.insert(fields, v)
      any = true
    end
  end
end
if not any then return {1, cur} end
table.insert(fields, 'updated_at')
table.insert(fields, ARGV[3])
redis.call('HSET', KEYS[1], unpack(fields))
local reason = cjson.null
if ARGV[4] ~= '' then reason = ARGV[4] end
redis.call('RPUSH', KEYS[2], cjson.encode({v=1, n=redis.call('LLEN', KEYS[2]),
  at=tonumber(ARGV[3]), by=ARGV[2], reason=reason, changes=changes}))
if after == 'closed' then
  redis.call('ZREM', KEYS[3], ARGV[7])
elseif cur == 'closed' then
  redis.call('ZADD', KEYS[3], ARGV[3], ARGV[7])
end
return {1, cur}
