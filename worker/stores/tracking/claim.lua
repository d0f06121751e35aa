-- Claim the due watches: push each one lease_s ahead and return its id.
-- KEYS[1] poll schedule (sorted set: delivery id -> next lookup time)
-- ARGV: now, limit, lease_s
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
local next_at = tonumber(ARGV[1]) + tonumber(ARGV[3])
for _, id in ipairs(due) do redis.call('ZADD', KEYS[1], next_at, id) end
return due
