-- Move a record to 'scheduled' and put it on the schedule, unless it is final or missing.
-- KEYS[1] record, KEYS[2] active set, KEYS[3] schedule, KEYS[4] schedule claims
-- ARGV: due, now, final states (JSON list), delivery_id, then field/value pairs
-- Returns 1 when held, 0 when not (final), -1 when missing
local current = redis.call('HGET', KEYS[1], 'state')
if not current then return -1 end
for _, s in ipairs(cjson.decode(ARGV[3])) do
  if s == current then return 0 end
end
local args = {'state', 'scheduled', 'updated_at', ARGV[2]}
for i = 5, #ARGV, 2 do
  table.insert(args, ARGV[i]); table.insert(args, ARGV[i + 1])
end
redis.call('HSET', KEYS[1], unpack(args))
redis.call('ZREM', KEYS[2], ARGV[4])
redis.call('ZADD', KEYS[3], ARGV[1], ARGV[4])
redis.call('HDEL', KEYS[4], ARGV[4])
return 1
