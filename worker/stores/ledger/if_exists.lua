-- Write to a record only if it still exists. HSET and HINCRBY on an expired record would
-- recreate it with no TTL: a key that never goes away.
-- KEYS[1] record, [2] active set
-- ARGV[1] op: 'incr' (ARGV[2] counter) | 'set' (field/value pairs from ARGV[2]) |
--             'touch' (ARGV[2] now, ARGV[3] delivery id)
-- Returns nil when the record is gone; else the counter's new value ('incr') or 1.
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
local op = ARGV[1]
if op == 'incr' then return redis.call('HINCRBY', KEYS[1], ARGV[2], 1) end
if op == 'set' then
  for i = 2, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
  return 1
end
redis.call('HSET', KEYS[1], 'updated_at', ARGV[2])
redis.call('ZADD', KEYS[2], 'XX', tonumber(ARGV[2]), ARGV[3])
return 1
