-- Count a soft bounce; at the threshold within the window, suppress (add.lua's rule).
-- KEYS[1] the channel's hash, [2] the recipient's soft-bounce sorted set
-- ARGV[1] recipient key, [2] encoded entry (written at the threshold), [3] now (s),
--      [4] window (s), [5] threshold, [6] a unique member for this bounce
-- Returns 1 when this bounce suppressed the recipient, else 0.
local now = tonumber(ARGV[3])
local window = tonumber(ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - window)
redis.call('ZADD', KEYS[2], now, ARGV[6])
redis.call('PEXPIRE', KEYS[2], math.ceil(window * 1000))
if redis.call('ZCARD', KEYS[2]) < tonumber(ARGV[5]) then return 0 end
redis.call('DEL', KEYS[2])
local current = redis.call('HGET', KEYS[1], ARGV[1])
if current and (tonumber(string.match(current, '^([^|]*)')) or 0) == 0 then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
