-- A delivery the limiter sent back goes to the front of its lane (it was at the front when it
-- was taken: it keeps its place), and the lane waits until the limiter may have a slot: a take
-- passes over it until then (take.lua), so nothing spins on a budget that is spent.
-- KEYS: 1 the lane (sorted set), 2 its priority's tenants (set), 3 the lanes' due times (hash).
-- ARGV: 1 delivery id, 2 tenant, 3 now, 4 not before (the hash's field is the lane's
-- "<priority>:<tenant>"), 5 that field.
local head = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local score = ARGV[3]
if #head > 0 and tonumber(head[2]) < tonumber(score) then score = head[2] end
local added = redis.call('ZADD', KEYS[1], 'NX', score, ARGV[1])
redis.call('SADD', KEYS[2], ARGV[2])
redis.call('HSET', KEYS[3], ARGV[5], ARGV[4])
return added
