-- One script does the whole decision: hold check, trim, count and wait for every limit, then the
-- record. Being a script, it runs atomically in Redis: no two workers can both see room for the
-- last slot.
--
-- KEYS[1]      the hold key (value: end of the hold, Unix microseconds)
-- KEYS[1 + i]  the sorted set (log) of limit i: member = unique id, score = grant time (us)
-- ARGV[1]      a per-call unique suffix for the member
-- ARGV[2]      n, the number of limits
-- ARGV[1 + 2i] count of limit i;  ARGV[2 + 2i] its effective window (window + margin), in us
--
-- Returns 0 when granted, else the wait in microseconds (>= 1).
-- Limits with the same window share one log (the key is derived from the window); recording the
-- same member twice in it is idempotent, so it still counts each request once.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local wait = 0
local hold_until = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
if hold_until > now then
  wait = hold_until - now
end
local n = tonumber(ARGV[2])
for i = 1, n do
  local log = KEYS[1 + i]
  local count = tonumber(ARGV[1 + 2 * i])
  local window = tonumber(ARGV[2 + 2 * i])
  redis.call('ZREMRANGEBYSCORE', log, '-inf', string.format('%d', now - window))
  local used = redis.call('ZCARD', log)
  if used >= count then
    -- the grant whose expiry brings the log back under count
    local blocking = redis.call('ZRANGE', log, used - count, used - count, 'WITHSCORES')
    local w = tonumber(blocking[2]) + window - now
    if w < 1 then w = 1 end
    if w > wait then wait = w end
  end
end
if wait > 0 then
  return wait
end
local score = string.format('%d', now)
local member = score .. '-' .. ARGV[1]
for i = 1, n do
  local log = KEYS[1 + i]
  local window = tonumber(ARGV[2 + 2 * i])
  redis.call('ZADD', log, score, member)
  redis.call('PEXPIRE', log, math.ceil(window / 1000) + 1)
end
return 0
