-- Suppress one recipient; a live permanent entry is never replaced by an expiring one.
-- KEYS[1] the channel's hash, [2] the recipient's soft-bounce count ('' = leave it)
-- ARGV[1] recipient key, [2] encoded entry (expiry first: '0' = permanent), [3] now
-- Returns 1 when written, 0 when a permanent entry stands.
local function expiry(raw)
  return tonumber(string.match(raw, '^([^|]*)')) or 0
end
local current = redis.call('HGET', KEYS[1], ARGV[1])
if current and expiry(ARGV[2]) ~= 0 then
  local until_s = expiry(current)
  if until_s == 0 then return 0 end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
if KEYS[2] ~= '' then redis.call('DEL', KEYS[2]) end
return 1
