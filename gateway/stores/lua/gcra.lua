-- Rate limits (lib_gcra.lua) over every key. KEYS: one per limit.
-- ARGV: now_ms, then (interval_ms, burst) per key.
return gcra(#KEYS)
