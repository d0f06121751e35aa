-- Take up to ARGV[1] deliveries from the lanes, in lane order, and lease them to the caller.
-- KEYS: 1 lane prefix (<prefix><priority>:<tenant> is a sorted set: delivery id -> enqueue
-- time), 2 tenants prefix (<prefix><priority> is the set of tenants with waiting work),
-- 3 the round robin's credits (hash), 4 the taken set (member -> lease end),
-- 5 the ledger's record prefix.
-- ARGV: 1 room in the broker queue, 2 now, 3 lease seconds, 4 class weights (JSON object),
-- 5 tenant weights (JSON object; a tenant not named weighs 1).
-- KEYS[7] the chunk prefix: a lane member "chunk:<task id>" is a campaign chunk, and
-- <chunk prefix><task id> holds its task name, message, size n and provider.
-- Returns {member, task_name, message, enqueued_at} per delivery (or chunk) taken.
-- A lane whose first delivery goes to a provider the limiter sent work of its priority back
-- from waits until that due time (KEYS[6], a hash: "<priority>:<provider>" -> time;
-- send_back.lua): a take passes over it until then, so waiting work stays in Redis, in order,
-- nothing spins on a spent budget, and the tenants of one budget wait alike.
local lane_prefix, tenants_prefix, turns, taken, record_prefix, due_at, chunk_prefix =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local room = tonumber(ARGV[1])
local now = tonumber(ARGV[2])
local lease = tonumber(ARGV[3])
local class_weights = cjson.decode(ARGV[4])
local tenant_weights = cjson.decode(ARGV[5])

-- A dispatcher that died between take and publish: its entries go back to the front of their
-- lane, at its first place, once the lease ends (a copy published twice is harmless: the send lock and the final
-- ledger state keep a delivery from being sent twice).
local expired = redis.call('ZRANGEBYSCORE', taken, '-inf', now, 'LIMIT', 0, 100)
for _, member in ipairs(expired) do
  redis.call('ZREM', taken, member)
  local p, t, at, id = string.match(member, '^([^/]+)/([^/]+)/([^/]+)/(.+)$')
  if p then
    redis.call('ZADD', lane_prefix .. p .. ':' .. t, 'NX', at, id)
    redis.call('SADD', tenants_prefix .. p, t)
  end
end

-- What other dispatchers took and have not published yet counts as queued.
room = room - redis.call('ZCARD', taken)

-- Smooth weighted round robin: each candidate gains its weight, the one with the most
-- credit is served and pays the sum of the weights. Over any window each candidate is
-- served in proportion to its weight, and never twice in a row when its share is small.
local function pick(candidates, weights, field_prefix)
  local fields = {}
  for i, c in ipairs(candidates) do fields[i] = field_prefix .. c end
  local credits = redis.call('HMGET', turns, unpack(fields))
  local total, best = 0, 1
  for i, c in ipairs(candidates) do
    local w = tonumber(weights[c]) or 1
    credits[i] = (tonumber(credits[i]) or 0) + w
    total = total + w
    if credits[i] > credits[best] then best = i end
  end
  credits[best] = credits[best] - total
  local args = {}
  for i, f in ipairs(fields) do
    args[#args + 1] = f
    args[#args + 1] = string.format('%d', credits[i])
  end
  redis.call('HSET', turns, unpack(args))
  return candidates[best]
end

-- A chunk of n messages counts as n turns in a row: everyone gains its weight n - 1 more
-- times and the chunk's candidate pays the sum n - 1 more times (the credits still sum to 0).
local function charge(candidates, weights, field_prefix, chosen, extra)
  local total = 0
  for _, c in ipairs(candidates) do total = total + (tonumber(weights[c]) or 1) end
  for _, c in ipairs(candidates) do
    local gain = (tonumber(weights[c]) or 1) * extra
    if c == chosen then gain = gain - total * extra end
    redis.call('HINCRBY', turns, field_prefix .. c, gain)
  end
end

-- A lane member's record: a delivery's in the ledger, a chunk's beside the lanes.
local function record_of(id)
  if string.sub(id, 1, 6) == 'chunk:' then return chunk_prefix .. string.sub(id, 7) end
  return record_prefix .. id
end

-- The tenants of priority p with waiting work whose lane is due (sorted): its first
-- delivery's provider has no due time for p ahead of now (a due time passed is removed).
local due_of = {}
local function due(p)
  local out = {}
  for _, t in ipairs(redis.call('SMEMBERS', tenants_prefix .. p)) do
    local head = redis.call('ZRANGE', lane_prefix .. p .. ':' .. t, 0, 0)
    local ok = true
    if #head > 0 then
      local field = p .. ':' .. (redis.call('HGET', record_of(head[1]), 'provider') or '')
      if due_of[field] == nil then
        local at = tonumber(redis.call('HGET', due_at, field) or '0') or 0
        if at > 0 and at <= now then redis.call('HDEL', due_at, field) end
        due_of[field] = at
      end
      ok = due_of[field] <= now
    end
    if ok then out[#out + 1] = t end
  end
  table.sort(out)
  return out
end

local out = {}
local tries = 0
while #out < room and tries < room * 2 + 2 do
  tries = tries + 1
  local p, classes = nil, nil
  local tenants = due('high')
  if #tenants > 0 then
    p = 'high'
  else
    local dues = {}
    classes = {}
    for _, c in ipairs({'normal', 'bulk'}) do
      local d = due(c)
      if #d > 0 then
        classes[#classes + 1] = c
        dues[c] = d
      end
    end
    if #classes == 0 then break end
    p = classes[1]
    if #classes > 1 then p = pick(classes, class_weights, 'class:') end
    tenants = dues[p]
  end
  local t = tenants[1]
  if #tenants > 1 then t = pick(tenants, tenant_weights, 't:' .. p .. ':') end
  local lane = lane_prefix .. p .. ':' .. t
  local popped = redis.call('ZPOPMIN', lane)
  local record = nil
  if #popped > 0 and string.sub(popped[1], 1, 6) == 'chunk:' then
    record = redis.call('HMGET', record_of(popped[1]), 'task_name', 'message', 'n')
    local extra = (tonumber(record[3]) or 1) - 1
    if extra > 0 then
      if classes and #classes > 1 then charge(classes, class_weights, 'class:', p, extra) end
      if #tenants > 1 then charge(tenants, tenant_weights, 't:' .. p .. ':', t, extra) end
    end
  end
  if #popped == 0 or redis.call('EXISTS', lane) == 0 then
    redis.call('SREM', tenants_prefix .. p, t)
    redis.call('HDEL', turns, 't:' .. p .. ':' .. t)
  end
  if #popped > 0 then
    local id = popped[1]
    record = record or redis.call('HMGET', record_prefix .. id, 'task_name', 'message')
    local member = p .. '/' .. t .. '/' .. popped[2] .. '/' .. id
    redis.call('ZADD', taken, now + lease, member)
    -- A record gone (expired, or forgotten by a failed enqueue) has nothing to send: returned
    -- with empty fields, the caller logs it and ends its lease.
    out[#out + 1] = {member, record[1] or '', record[2] or '', popped[2]}
  end
end
return out
