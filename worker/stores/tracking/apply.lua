-- Apply one event to one recipient of one delivery: dedupe, forward-only state, history, outbox.
-- KEYS[1] state hash, KEYS[2] history list, KEYS[3] seen set, KEYS[4] outbox list,
-- KEYS[5] outbox index (sorted set)
-- ARGV: event_id, recipient, type, event JSON, state JSON, now, ttl, history cap, notify (1/0),
--       rules JSON {ranks, final, engagement}, delivery id, then optional field/value pairs
--       written with a move in the same HSET (register.lua's ~provider)
-- Returns {new (1/0), moved (1/0)}
if redis.call('SADD', KEYS[3], ARGV[1]) == 0 then return {0, 0} end
local rules = cjson.decode(ARGV[10])
local ranks, final, engagement = rules.ranks, rules.final, rules.engagement
local new = ARGV[3]
local current = nil
local stored = redis.call('HGET', KEYS[1], ARGV[2])
if stored then current = cjson.decode(stored).state end
-- The twin of worker.tracking.events.advances (tests/stores check they agree).
local function advances(cur, nxt)
  if nxt == 'unknown' then return false end
  if not cur or cur == 'unknown' then return true end
  if engagement[nxt] then return (not final[cur]) and ranks[nxt] > ranks[cur] end
  if engagement[cur] then return false end
  return ranks[nxt] > ranks[cur]
end
local moved = advances(current, new)
local after = current or ''
if moved then
  local pairs_ = {ARGV[2], ARGV[5]}
  for i = 12, #ARGV do table.insert(pairs_, ARGV[i]) end
  redis.call('HSET', KEYS[1], unpack(pairs_))
  after = new
end
-- trimmed only once past the cap (RPUSH answers the length): the same list, one command less
if redis.call('RPUSH', KEYS[2], ARGV[4]) > tonumber(ARGV[8]) then
  redis.call('LTRIM', KEYS[2], -tonumber(ARGV[8]), -1)
end
local ttl = tonumber(ARGV[7])
if ARGV[9] == '1' and new ~= 'unknown' then
  redis.call('RPUSH', KEYS[4], after .. '\n' .. ARGV[4])
  redis.call('ZADD', KEYS[5], 'NX', ARGV[6], ARGV[11])
  redis.call('EXPIRE', KEYS[4], ttl)
end
for i = 1, 3 do redis.call('EXPIRE', KEYS[i], ttl) end
if moved then return {1, 1} end
return {1, 0}
