-- Queue a level's email once. KEYS: levels, due, jobs. ARGV: 1 level, 2 id, 3 job, 4 due.
if redis.call('SADD', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('HSET', KEYS[3], ARGV[2], ARGV[3])
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[2])
return 1
