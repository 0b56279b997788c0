-- Create an organisation unless it exists (returns 0); -1 when its parent does not.
-- KEYS: 1 org, 2 all orgs, 3 parent org, 4 parent's children.
-- ARGV: 1 slug, 2 name, 3 parent slug ('' for none), 4 created, 5 format version
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
if ARGV[3] ~= '' then
  if redis.call('EXISTS', KEYS[3]) == 0 then
    return -1
  end
  redis.call('SADD', KEYS[4], ARGV[1])
end
redis.call('HSET', KEYS[1], 'v', ARGV[5], 'slug', ARGV[1], 'name', ARGV[2],
           'parent', ARGV[3], 'created', ARGV[4])
redis.call('SADD', KEYS[2], ARGV[1])
return 1
