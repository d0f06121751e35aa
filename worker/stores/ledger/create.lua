-- Create a delivery record unless its idempotency key or id is known.
-- KEYS[1] record, KEYS[2] idempotency index (or ""), KEYS[3] active set
-- ARGV: delivery_id, now, ttl_s, then field/value pairs for a new record
-- Returns {1, delivery_id} when created, else {0, the existing delivery id}
if KEYS[2] ~= "" then
  local existing = redis.call('GET', KEYS[2])
  if existing then return {0, existing} end
end
if redis.call('EXISTS', KEYS[1]) == 1 then return {0, ARGV[1]} end
local args = {'state', 'queued', 'created_at', ARGV[2], 'updated_at', ARGV[2]}
for i = 4, #ARGV, 2 do
  table.insert(args, ARGV[i]); table.insert(args, ARGV[i + 1])
end
redis.call('HSET', KEYS[1], unpack(args))
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]))
if KEYS[2] ~= "" then redis.call('SET', KEYS[2], ARGV[1], 'EX', tonumber(ARGV[3])) end
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[1])
return {1, ARGV[1]}
