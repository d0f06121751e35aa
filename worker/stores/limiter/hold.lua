-- KEYS[1] the hold key; ARGV[1] 'at' (ARGV[2] = Unix us) or 'for' (ARGV[2] = us from now).
-- Returns the effective end of the hold (us).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local until_us
if ARGV[1] == 'at' then
  until_us = tonumber(ARGV[2])
else
  until_us = now + tonumber(ARGV[2])
end
local current = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
if current > until_us then
  until_us = current
end
if until_us > now then
  local ttl_ms = math.ceil((until_us - now) / 1000)
  redis.call('SET', KEYS[1], string.format('%d', until_us), 'PX', ttl_ms)
end
return until_us
