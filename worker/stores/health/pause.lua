-- KEYS[1] the pauses hash; ARGV provider, reason, by. Returns the JSON of the pause in force.
local existing = redis.call('HGET', KEYS[1], ARGV[1])
if existing then
  return existing
end
local t = redis.call('TIME')
local value = cjson.encode({reason = ARGV[2], by = ARGV[3],
                            since_s = tonumber(t[1]), since_us = tonumber(t[2])})
redis.call('HSET', KEYS[1], ARGV[1], value)
return value
