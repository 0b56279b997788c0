-- GCRA (lib_gcra.lua, every key but the last) and one more refusal counted in the last
-- key (lib_count_refusal.lua), for an attempt refused whatever the limits say.
-- ARGV: as gcra.lua, then the counter's window s and now.
-- Returns {allowed 1/0, wait ms, index of the limit, count, first (string)}
local c = count_refusal(KEYS[#KEYS], ARGV[2 * #KEYS], ARGV[2 * #KEYS + 1])
local r = gcra(#KEYS - 1)
return {r[1], r[2], r[3] or 0, c[1], c[2]}
