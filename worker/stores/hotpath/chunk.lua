-- A chunk's step: ``step`` (begin.lua or finish.lua, a local function, see redis.py) run for
-- each delivery of the chunk, in one atomic call, each exactly as its stand-alone script.
-- KEYS: each delivery's keys, one delivery after the other
-- ARGV[1] deliveries n, then per delivery its keys count and its arguments count, then each
--      delivery's arguments, one delivery after the other
-- Returns {step's reply} per delivery, in order
local n = tonumber(ARGV[1])
local out, k, a = {}, 0, 1 + 2 * n
for i = 1, n do
  local nk, na = tonumber(ARGV[2 * i]), tonumber(ARGV[2 * i + 1])
  local keys, argv = {}, {}
  for j = 1, nk do keys[j] = KEYS[k + j] end
  for j = 1, na do argv[j] = ARGV[a + j] end
  k, a = k + nk, a + na
  out[i] = step(keys, argv)
end
return out
