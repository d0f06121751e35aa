-- chunk.lua (``each``, composed with its step) with the writes to the keys the chunk's
-- deliveries share made once for the chunk (deferred.lua's ``call`` and ``flush``).
-- KEYS: chunk.lua's, then the d shared keys; ARGV: chunk.lua's, then d
local d = tonumber(ARGV[#ARGV])
for i = #KEYS - d + 1, #KEYS do shared[KEYS[i]] = true end
local out = each(KEYS, ARGV)
flush()
return out
