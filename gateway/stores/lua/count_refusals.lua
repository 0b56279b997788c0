-- One refusal counted (lib_count_refusal.lua). KEYS: counter hash. ARGV: window s, now.
return count_refusal(KEYS[1], ARGV[1], ARGV[2])
