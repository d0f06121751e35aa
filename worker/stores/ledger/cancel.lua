-- Cancel a delivery unless it is final, being sent, or (without ARGV[4] = '1') scheduled at
-- its provider. One atomic step with the state check: a send's gate moves the record to
-- 'sending' only from an unfinished state, so a cancel and a send never both win.
-- KEYS[1] record, KEYS[2] active set, KEYS[3] schedule, KEYS[4] schedule claims
-- ARGV: now, final states (JSON list), delivery_id, at_provider ('1' or '0'), result JSON
-- Returns {outcome, state}: cancelled | final | sending | provider | unknown
local current = redis.call('HGET', KEYS[1], 'state')
if not current then return {'unknown', ''} end
for _, s in ipairs(cjson.decode(ARGV[2])) do
  if s == current then return {'final', current} end
end
if current == 'sending' then return {'sending', current} end
if ARGV[4] ~= '1' and redis.call('HGET', KEYS[1], 'provider_scheduled') == '1' then
  return {'provider', current}
end
redis.call('HSET', KEYS[1], 'state', 'cancelled', 'updated_at', ARGV[1], 'cancelled_at', ARGV[1],
  'error_kind', 'cancelled', 'result', ARGV[5])
redis.call('ZREM', KEYS[2], ARGV[3])
redis.call('ZREM', KEYS[3], ARGV[3])
redis.call('HDEL', KEYS[4], ARGV[3])
return {'cancelled', current}
