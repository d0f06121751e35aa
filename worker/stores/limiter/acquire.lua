-- One script does the whole decision: hold, trim, the earliest admissible slot for every limit,
-- then the record. Being a script, it runs atomically in Redis: no two callers can both take the
-- last slot, and every reservation is a distinct instant.
-- The same algorithm as worker/stores/limiter/memory.py (read it there first).
--
-- KEYS[1]      the hold key (value: end of the hold, Unix microseconds)
-- KEYS[2]      the high marker (value: the latest slot reserved by a high request, us)
-- KEYS[2 + i]  the sorted set (log) of limit i: member = "<h|n><slot us>-<id>", score = slot (us)
-- ARGV[1]      a per-call unique suffix for the member
-- ARGV[2]      n, the number of limits
-- ARGV[3]      '1' for a high request, else '0'
-- ARGV[4]      max wait (us): a slot further ahead is not reserved
-- ARGV[5]      borrow (us): a normal/bulk slot this close to now may use the reserved share
-- ARGV[6]      the largest count that gets the exact check between reservations
-- ARGV[4 + 3i] count of limit i; ARGV[5 + 3i] its effective window (us); ARGV[6 + 3i] its share
-- ARGV[7 + 3n] optional: the instant (us) of the caller's own earlier slot it woke too late for
--              and gives up unused (removed from every log first: nothing was sent for it)
--
-- Returns {1, wait, slot} when a slot wait us from now (0: now) was reserved, else {0, wait, at}:
-- the wait (>= 1) until a retry could have a slot; nothing is recorded then. Times in us.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local t0 = now
local hold_until = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
if hold_until > t0 then t0 = hold_until end
local high = ARGV[3] == '1'
local max_wait = tonumber(ARGV[4])
local borrow = tonumber(ARGV[5])
local scan_max = tonumber(ARGV[6])
local high_waiting = (tonumber(redis.call('GET', KEYS[2]) or '0') or 0) > now
local n = tonumber(ARGV[2])
local release = ARGV[7 + 3 * n]
if release and release ~= '' then
  for i = 1, n do redis.call('ZREMRANGEBYSCORE', KEYS[2 + i], release, release) end
end

local logs = {}
local last = t0
local free_at = t0 -- the first moment every window has room (a retry may borrow the share then)
for i = 1, n do
  local key = KEYS[2 + i]
  local count = tonumber(ARGV[4 + 3 * i])
  local window = tonumber(ARGV[5 + 3 * i])
  local share = tonumber(ARGV[6 + 3 * i])
  if high or count > scan_max then share = 0 end
  redis.call('ZREMRANGEBYSCORE', key, '-inf', string.format('%d', now - window))
  local log = {key = key, count = count, window = window, share = share, small = count <= scan_max}
  -- one slot interval: future slots keep it between them (whole microseconds)
  log.gap = math.floor(window / count)
  if share > 0 then
    -- normal/bulk take at most run - 1 of any run intervals: the share's slots are spread
    log.run = math.max(2, math.floor(count / share))
    log.share_window = log.gap * log.run
  end
  local size = redis.call('ZCARD', key)
  local after = -1
  if log.small then
    -- a short limit: its whole log (the last window and the reservations ahead) is small
    local raw = redis.call('ZRANGE', key, 0, -1, 'WITHSCORES')
    local at, hi, own = {}, {}, {}
    for j = 1, #raw, 2 do
      local s = tonumber(raw[j + 1])
      at[#at + 1] = s
      local is_high = string.sub(raw[j], 1, 1) == 'h'
      hi[#hi + 1] = is_high
      if not is_high then own[#own + 1] = s end
    end
    log.at, log.hi, log.own = at, hi, own
    if size > 0 then after = at[size] end
    if size >= count and at[size - count + 1] + window > after then
      after = at[size - count + 1] + window
    end
    if size >= count and at[size - count + 1] + window > free_at then
      free_at = at[size - count + 1] + window
    end
    local cap = (log.run or 0) - 1
    if share > 0 and #own >= cap and own[#own - cap + 1] + log.share_window > after then
      after = own[#own - cap + 1] + log.share_window
    end
    log.paced = size > 0 and at[size] > now
  elseif size > 0 then
    local tail = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
    after = tonumber(tail[2])
    if size >= count then
      local blocking = redis.call('ZRANGE', key, size - count, size - count, 'WITHSCORES')
      local b = tonumber(blocking[2]) + window
      if b > after then after = b end
      if b > free_at then free_at = b end
    end
  end
  log.after = after
  if after > last then last = after end
  logs[i] = log
end
if last > now then
  for i = 1, n do
    local log = logs[i]
    if log.small and #log.at > 0 and log.at[#log.at] + log.gap > last then
      last = log.at[#log.at] + log.gap
    end
  end
end

-- the most of times (sorted) in one window (x - w, x] that holds at
local function peak(times, at, w)
  local most = 0
  local function count_at(x)
    local c = 0
    for j = 1, #times do
      local s = times[j]
      if s > x - w and s <= x then c = c + 1 end
    end
    if c > most then most = c end
  end
  count_at(at)
  for j = 1, #times do
    local s = times[j]
    if s >= at and s < at + w then count_at(s) end
  end
  return most
end

local function fits(log, at, borrowing)
  local w, count = log.window, log.count
  if not log.small then
    if at >= log.after then return true end
    local near = redis.call('ZCOUNT', log.key, '(' .. string.format('%d', at - w),
      '(' .. string.format('%d', at + w))
    return near + 1 <= count
  end
  -- paced while a line waits: every slot keeps one interval from every other
  if at > now or log.paced then
    for j = 1, #log.at do
      if math.abs(log.at[j] - at) < log.gap then return false end
    end
  end
  if peak(log.at, at, w) + 1 > count then return false end
  if log.share > 0 and not borrowing then
    if peak(log.own, at, log.share_window) + 1 > log.run - 1 then return false end
  end
  return true
end

local chosen = last
if last > t0 then
  -- earlier slots between reservations: now (or the hold's end) and each moment one frees
  local cands = {t0}
  for i = 1, n do
    local log = logs[i]
    if log.small then
      for j = 1, #log.at do
        local frees = {log.at[j] + log.window, log.at[j] + log.gap}
        if log.share > 0 then frees[3] = log.at[j] + log.share_window end
        for _, c in ipairs(frees) do
          if c > t0 and c < last and c - now <= max_wait then cands[#cands + 1] = c end
        end
      end
    end
  end
  table.sort(cands)
  for k = 1, #cands do
    local at = cands[k]
    if at - now > max_wait then break end
    local borrowing = (not high) and (not high_waiting) and (at - now <= borrow)
    local ok = true
    for i = 1, n do
      if not fits(logs[i], at, borrowing) then ok = false break end
    end
    if ok then chosen = at break end
  end
end

local wait = chosen - now
if wait > max_wait then
  -- a retry asks at the first moment the windows free (then maybe at once)
  if free_at > now and free_at < chosen then wait = free_at - now end
  if wait < 1 then wait = 1 end
  return {0, wait, now + wait}
end
local score = string.format('%d', chosen)
local member = (high and 'h' or 'n') .. score .. '-' .. ARGV[1]
for i = 1, n do
  local log = logs[i]
  redis.call('ZADD', log.key, score, member)
  redis.call('PEXPIRE', log.key, math.ceil((chosen - now + log.window) / 1000) + 1)
end
if high then
  local marked = tonumber(redis.call('GET', KEYS[2]) or '0') or 0
  if chosen > marked then
    redis.call('SET', KEYS[2], score, 'PX', math.ceil((chosen - now) / 1000) + 1)
  end
end
if wait < 0 then wait = 0 end
return {1, wait, chosen}
