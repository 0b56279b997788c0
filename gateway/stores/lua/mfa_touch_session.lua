-- Note when a session was last used, if it still exists. KEYS: session. ARGV: now
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('HSET', KEYS[1], 'seen', ARGV[1]) end
return 0
