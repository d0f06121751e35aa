-- A run's last step: the closing transition (transition.lua), the run count back to 0, the
-- unlock (release.lua's compare-and-delete, its compare done first), the provider's counter, the breaker's presence, and the tracking
-- registration (register.lua). The composed scripts are local functions (see redis.py).
-- KEYS[1] record, [2] active set, [3] send lock, [4] metrics hash ('' = none),
--      [5] breaker hash ('' = none), [6] schedule, [7] schedule claims, then register.lua's
--      keys (none: no registration)
-- ARGV[1] lock token, [2] reset runs (1/0), [3] state ('' = no transition), [4] its rank,
--      [5] now, [6] ranks JSON, [7] delivery id, [8] metric field, [9] field pairs n,
--      then n field/value pairs, then register.lua's arguments
-- Returns {changed (1/0), breaker has state (1/0), registered (1/0), register.lua's reply,
--          lock lost (1/0)}
local changed = 0
local n = tonumber(ARGV[9])
-- Only the run whose token still holds the send lock writes. A run that outlived its lock
-- (another run may hold it now, or resend after it expired) keeps what it saw on the record,
-- for the next run to settle from (late_outcome), and changes nothing else.
if redis.call('GET', KEYS[3]) ~= ARGV[1] then
  if ARGV[3] ~= '' and redis.call('EXISTS', KEYS[1]) == 1 then
    local seen = {}
    for i = 1, n do seen[ARGV[8 + 2 * i]] = ARGV[9 + 2 * i] end
    redis.call('HSET', KEYS[1], 'late_outcome',
      cjson.encode({state = ARGV[3], at = ARGV[5], fields = seen}))
  end
  return {0, 0, 0, {}, 1}
end
if ARGV[3] ~= '' then
  local targv = {ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7]}
  for i = 1, 2 * n do targv[5 + i] = ARGV[9 + i] end
  -- the run count back to 0 in the transition's own HSET (one write of the record)
  if ARGV[2] == '1' then table.insert(targv, 'runs_unfinished'); table.insert(targv, '0') end
  changed = transition({KEYS[1], KEYS[2], KEYS[6], KEYS[7]}, targv)[1]
  if changed ~= 1 then changed = 0 end
end
if ARGV[2] == '1' and changed == 0 then redis.call('HSET', KEYS[1], 'runs_unfinished', '0') end
-- The unlock: this script checked above that the token holds the lock (release.lua's check,
-- atomically in the same call), so the lock goes without reading it again.
redis.call('DEL', KEYS[3])
if KEYS[4] ~= '' and ARGV[8] ~= '' then redis.call('HINCRBY', KEYS[4], ARGV[8], 1) end
local breaker = 0
if KEYS[5] ~= '' then breaker = redis.call('EXISTS', KEYS[5]) end
if #KEYS <= 7 then return {changed, breaker, 0, {}, 0} end
local rkeys, rargv = {}, {}
for i = 8, #KEYS do table.insert(rkeys, KEYS[i]) end
for i = 10 + 2 * n, #ARGV do table.insert(rargv, ARGV[i]) end
return {changed, breaker, 1, register(rkeys, rargv), 0}
