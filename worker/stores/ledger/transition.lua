-- Move a record to a state if that is forward (a final state never changes).
-- KEYS[1] record, KEYS[2] active set, KEYS[3] schedule, KEYS[4] schedule claims
-- ARGV: new_state, new_rank, now, ranks (JSON), delivery_id, then field/value pairs
-- Returns {1, previous state} when changed, {0, current state} when not, {-1, ''} when missing
local ranks = cjson.decode(ARGV[4])
local current = redis.call('HGET', KEYS[1], 'state')
if not current then return {-1, ''} end
local cur_rank = ranks[current] or 0
local new_rank = tonumber(ARGV[2])
if cur_rank == 2 and current ~= ARGV[1] then return {0, current} end
if new_rank < cur_rank then return {0, current} end
local args = {'state', ARGV[1], 'updated_at', ARGV[3]}
for i = 6, #ARGV, 2 do
  table.insert(args, ARGV[i]); table.insert(args, ARGV[i + 1])
end
redis.call('HSET', KEYS[1], unpack(args))
if current == 'scheduled' and ARGV[1] ~= 'scheduled' then
  -- out of 'scheduled': off the schedule in the same step. A record enters the schedule only
  -- as 'scheduled' (hold.lua) and every script that moves it out takes it off, so a record in
  -- another state has nothing there to remove (and claim_due.lua drops an entry whose record
  -- is not 'scheduled' anyway): two commands saved on every other transition.
  redis.call('ZREM', KEYS[3], ARGV[5])
  redis.call('HDEL', KEYS[4], ARGV[5])
end
if new_rank == 2 or ARGV[1] == 'parked' or ARGV[1] == 'scheduled' then
  -- final, parked (held in the parking store) or scheduled (held on the schedule, which the
  -- mover watches): nothing for the sweeper to look at
  redis.call('ZREM', KEYS[2], ARGV[5])
else
  redis.call('ZADD', KEYS[2], ARGV[3], ARGV[5])
end
return {1, current}
