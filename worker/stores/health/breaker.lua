-- The whole breaker in one script, so every transition is atomic across workers.
--
-- KEYS[1]  the provider's breaker hash, fields:
--            state        'open' (absent: closed; half-open is "open and open period over")
--            fails        closed: space-separated times (us) of the current failure streak
--            failures     open: length of the streak that opened it, plus failed probes
--            opened_at    open: when it (re)opened (us)
--            open_us      open: the current open period (us)
--            probe_until  half-open: end of the lease of the probe in flight (us), 0 if none
-- ARGV     op ('allow' | 'success' | 'failure' | 'state'), failure_threshold, window_us,
--          open_us, max_open_us, probe_us
-- Returns  {state, failures, opened_at_us, retry_in_us, open_us, allowed, probe}
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local key = KEYS[1]
local op = ARGV[1]
local threshold = tonumber(ARGV[2])
local window = tonumber(ARGV[3])
local base_open = tonumber(ARGV[4])
local max_open = tonumber(ARGV[5])
local probe_lease = tonumber(ARGV[6])

local h = redis.call('HMGET', key, 'state', 'fails', 'failures', 'opened_at', 'open_us',
                     'probe_until')
local phase = 'closed'
local fails = {}
local failures = tonumber(h[3] or '0') or 0
local opened_at = tonumber(h[4] or '0') or 0
local open_us = tonumber(h[5] or '0') or 0
local probe_until = tonumber(h[6] or '0') or 0
if h[1] == 'open' then
  if now >= opened_at + open_us then phase = 'half_open' else phase = 'open' end
else
  for ts in string.gmatch(h[2] or '', '%d+') do
    local v = tonumber(ts)
    if v > now - window then table.insert(fails, v) end
  end
  failures = #fails
end

local function fmt(v) return string.format('%d', v) end
local function save_open()
  redis.call('DEL', key)
  redis.call('HSET', key, 'state', 'open', 'failures', failures, 'opened_at', fmt(opened_at),
             'open_us', fmt(open_us), 'probe_until', fmt(probe_until))
end
local function close()
  redis.call('DEL', key)
  phase = 'closed'
  fails = {}
  failures = 0
  opened_at = 0
  open_us = 0
  probe_until = 0
end

local allowed = 0
local probe = 0
if op == 'allow' then
  if phase == 'closed' then
    allowed = 1
  elseif phase == 'half_open' and probe_until <= now then
    probe_until = now + probe_lease
    redis.call('HSET', key, 'probe_until', fmt(probe_until))
    allowed = 1
    probe = 1
  end
elseif op == 'failure' then
  if phase == 'closed' then
    table.insert(fails, now)
    while #fails > threshold do table.remove(fails, 1) end
    failures = #fails
    if failures >= threshold then
      phase = 'open'
      opened_at = now
      open_us = base_open
      probe_until = 0
      save_open()
    else
      local parts = {}
      for i, v in ipairs(fails) do parts[i] = fmt(v) end
      redis.call('HSET', key, 'fails', table.concat(parts, ' '))
      redis.call('PEXPIRE', key, math.ceil(window / 1000) + 1)
    end
  elseif phase == 'half_open' then
    -- the probe failed: open again, for longer
    phase = 'open'
    failures = failures + 1
    opened_at = now
    open_us = math.min(math.max(open_us, base_open) * 2, math.max(max_open, base_open))
    probe_until = 0
    save_open()
  end
elseif op == 'success' then
  if phase == 'closed' then
    if #fails > 0 then close() end
  elseif phase == 'half_open' then
    close()
  end
end

local retry_in = 0
if phase == 'open' then
  retry_in = opened_at + open_us - now
elseif phase == 'half_open' and probe_until > now and probe == 0 then
  retry_in = probe_until - now
end
return {phase, failures, fmt(opened_at), fmt(retry_in), fmt(open_us), allowed, probe}
