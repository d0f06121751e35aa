-- A delivery the limiter sent back goes to the front of its lane (it was at the front when it
-- was taken: it keeps its place), and its priority's work for its provider waits until the
-- limiter may have a slot: a take passes over every lane of that priority whose first delivery
-- goes to that provider until then (take.lua), so nothing spins on a spent budget and every
-- tenant of that budget waits alike (their shares hold).
-- KEYS: 1 the lane (sorted set), 2 its priority's tenants (set), 3 the due times (hash:
-- "<priority>:<provider>" -> time), 4 the delivery's ledger record (its provider).
-- ARGV: 1 delivery id, 2 tenant, 3 now, 4 not before, 5 priority.
local head = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local score = ARGV[3]
if #head > 0 and tonumber(head[2]) < tonumber(score) then score = head[2] end
local added = redis.call('ZADD', KEYS[1], 'NX', score, ARGV[1])
redis.call('SADD', KEYS[2], ARGV[2])
local provider = redis.call('HGET', KEYS[4], 'provider') or ''
redis.call('HSET', KEYS[3], ARGV[5] .. ':' .. provider, ARGV[4])
return added
