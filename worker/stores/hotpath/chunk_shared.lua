-- chunk.lua (``each``, composed with its step) with the writes to the keys the chunk's
-- deliveries share made once for the chunk, and the orphan lists probed once (deferred.lua's
-- ``call``, ``flush`` and ``probe_absent``).
-- KEYS: chunk.lua's, then the o keys to probe, then the d shared keys;
-- ARGV: chunk.lua's, then o, then d
local d, o = tonumber(ARGV[#ARGV]), tonumber(ARGV[#ARGV - 1])
for i = #KEYS - d + 1, #KEYS do shared[KEYS[i]] = true end
local probes = {}
for i = #KEYS - d - o + 1, #KEYS - d do table.insert(probes, KEYS[i]) end
probe_absent(probes)
local out = each(KEYS, ARGV)
flush()
return out
