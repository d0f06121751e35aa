-- A chunk's first step when its deliveries share their candidate providers: each provider's
-- pause and breaker presence read once for the chunk (begin.lua reads them per delivery), then
-- ``step`` (begin.lua, a local function, see redis.py) for each delivery, asked for no provider,
-- exactly as chunk.lua runs it. One atomic call: every delivery sees the same health.
-- KEYS[1] paused providers hash, [2 .. 1 + p] one breaker hash per provider, then each
--      delivery's keys, one delivery after the other
-- ARGV[1] p, [2 .. 1 + p] the providers, then chunk.lua's arguments (deliveries n, per
--      delivery its keys count and arguments count, then the arguments)
-- Returns {{paused JSON or '', breaker exists (0/1)} per provider, {step's reply} per delivery}
-- Then (deferred.lua's ``prefetch``, the text before this one) ARGV ends with the f recipient
-- keys every delivery looks up and f, KEYS with the channel's suppression hash: the chunk's
-- entries are read in one HMGET, and each delivery's HMGET is answered from it.
local f = tonumber(ARGV[#ARGV])
if f > 0 then
  local fields = {}
  for i = #ARGV - f, #ARGV - 1 do table.insert(fields, ARGV[i]) end
  prefetch(KEYS[#KEYS], fields)
end
local p = tonumber(ARGV[1])
local health = {}
for i = 1, p do
  table.insert(health, redis.call('HGET', KEYS[1], ARGV[1 + i]) or '')
  table.insert(health, redis.call('EXISTS', KEYS[1 + i]))
end
local base = 1 + p
local n = tonumber(ARGV[base + 1])
local out, k, a = {}, 1 + p, base + 1 + 2 * n
for i = 1, n do
  local nk, na = tonumber(ARGV[base + 2 * i]), tonumber(ARGV[base + 2 * i + 1])
  local keys, argv = {}, {}
  for j = 1, nk do keys[j] = KEYS[k + j] end
  for j = 1, na do argv[j] = ARGV[a + j] end
  k, a = k + nk, a + na
  out[i] = step(keys, argv)
end
return {health, out}
