-- A run's first step: the guard's mark, the record, the send lock, the run count, health,
-- and which recipients are suppressed.
-- KEYS[1] record, [2] send lock, [3] paused providers hash, [4] guard mark hash ('' = none),
--      [5] the channel's suppression hash ('' = none), then one breaker hash per provider
-- ARGV[1] lock token, [2] lock ttl (ms), [3] guard mark field, [4] final states (',a,b,'),
--      [5] n recipient keys, then the n keys, then the candidate providers
-- Returns {'missing'} | {'final', fields} | {'busy', fields, pttl} |
--         {'run', fields, runs, {paused JSON or '', breaker exists (0/1)} per provider,
--          {entry or '' per recipient key}}
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
local n = tonumber(ARGV[5])
local health = {}
for i = 6, #KEYS do
  table.insert(health, redis.call('HGET', KEYS[3], ARGV[n + i]) or '')
  table.insert(health, redis.call('EXISTS', KEYS[i]))
end
-- Suppression: the entries as stored (expiry first); the caller drops expired ones.
local suppressed = {}
if KEYS[5] ~= '' and n > 0 then
  local recipients = {}
  for i = 1, n do recipients[i] = ARGV[5 + i] end
  for i, value in ipairs(redis.call('HMGET', KEYS[5], unpack(recipients))) do
    suppressed[i] = value or ''
  end
end
return {'run', fields, runs, health, suppressed}
