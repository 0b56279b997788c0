-- Schedule a check unless one is already pending. KEYS: due, jobs. ARGV: id, job, due.
if redis.call('HSETNX', KEYS[2], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
return 1
