-- Register a sent delivery in one step: the index, the provider, each recipient's opening
-- `sent` event (apply.lua's logic, composed in as the local function `apply`), the watch of a
-- polled provider, and the orphaned events kept for its provider message ids (taken, returned).
-- KEYS[1] state hash, [2] history list, [3] seen set, [4] outbox list, [5] outbox index,
--      [6] watch hash, [7] poll schedule, then one index key per recipient, then one orphan
--      key per distinct provider message id
-- ARGV[1] delivery id, [2] provider, [3] now, [4] ttl, [5] history cap, [6] notify (1/0),
--      [7] rules JSON, [8] poll_at ('' = not polled), [9] recipients n, [10] orphan keys k,
--      [11] watch field/value pairs count w, then w pairs, then per recipient:
--      masked recipient, event id, event type, event JSON, state JSON
-- Returns {{new, moved} per recipient, {orphan events (JSON) ...}}
local did, provider, now, ttl = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local n, k, w = tonumber(ARGV[9]), tonumber(ARGV[10]), tonumber(ARGV[11])
local base = 11 + 2 * w
for i = 1, n do
  local key = KEYS[7 + i]
  redis.call('HSET', key, ARGV[base + (i - 1) * 5 + 1], did)
  redis.call('EXPIRE', key, ttl)
end
-- The provider goes into the state hash with the first recipient's move (apply()'s own HSET),
-- or on its own when nothing moved; each apply() sets the state hash's TTL in this same call.
local applied = {}
local provider_written = false
local akeys = {KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]}
for i = 1, n do
  local o = base + (i - 1) * 5
  local aargv = {ARGV[o + 2], ARGV[o + 1], ARGV[o + 3], ARGV[o + 4], ARGV[o + 5], now,
                 ARGV[4], ARGV[5], ARGV[6], ARGV[7], did}
  if not provider_written then
    table.insert(aargv, '~provider'); table.insert(aargv, provider)
  end
  applied[i] = apply(akeys, aargv)
  if applied[i][2] == 1 then provider_written = true end
end
if not provider_written then
  redis.call('HSET', KEYS[1], '~provider', provider)
  if n == 0 then redis.call('EXPIRE', KEYS[1], ttl) end
end
if ARGV[8] ~= '' and n > 0 then
  if redis.call('HSETNX', KEYS[6], 'provider', provider) == 1 then
    local pairs_ = {}
    for j = 1, w do
      table.insert(pairs_, ARGV[11 + 2 * j - 1]); table.insert(pairs_, ARGV[11 + 2 * j])
    end
    redis.call('HSET', KEYS[6], unpack(pairs_))
    redis.call('EXPIRE', KEYS[6], ttl)
    redis.call('ZADD', KEYS[7], 'NX', ARGV[8], did)
  end
end
local orphans = {}
for j = 1, k do
  local key = KEYS[7 + n + j]
  -- taken whole in one command (LPOP with a count past any orphan list's length; the list
  -- goes with its last element)
  for _, e in ipairs(redis.call('LPOP', key, 1000000000) or {}) do table.insert(orphans, e) end
end
return {applied, orphans}
