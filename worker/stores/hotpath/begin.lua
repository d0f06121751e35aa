-- A run's first step: the guard's mark, the record, the send lock, the run count, health.
-- KEYS[1] record, [2] send lock, [3] paused providers hash, [4] guard mark hash ('' = none),
--      then one breaker hash per provider of ARGV[5..]
-- ARGV[1] lock token, [2] lock ttl (ms), [3] guard mark field, [4] final states (',a,b,'),
--      then the candidate providers
-- Returns {'missing'} | {'final', fields} | {'busy', fields, pttl} |
--         {'run', fields, runs, {paused JSON or '', breaker exists (0/1)} per provider}
if KEYS[4] ~= '' then redis.call('HDEL', KEYS[4], ARGV[3]) end
local fields = redis.call('HGETALL', KEYS[1])
if #fields == 0 then return {'missing'} end
local state = 'queued'
for i = 1, #fields, 2 do
  if fields[i] == 'state' then state = fields[i + 1] end
end
if string.find(ARGV[4], ',' .. state .. ',', 1, true) then return {'final', fields} end
if not redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', tonumber(ARGV[2])) then
  return {'busy', fields, redis.call('PTTL', KEYS[2])}
end
local runs = redis.call('HINCRBY', KEYS[1], 'runs_unfinished', 1)
local health = {}
for i = 5, #KEYS do
  table.insert(health, redis.call('HGET', KEYS[3], ARGV[i]) or '')
  table.insert(health, redis.call('EXISTS', KEYS[i]))
end
return {'run', fields, runs, health}
