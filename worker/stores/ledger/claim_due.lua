-- Claim due schedule entries for publishing, each leased until now + lease.
-- KEYS[1] schedule, KEYS[2] schedule claims (id -> times claimed)
-- ARGV: now, lease_s, limit, record key prefix
-- Returns a flat list: id, task_name, message, queue, times claimed before (0: first claim),
-- chunk (a campaign message's chunk size, '' for a single send) for each claimed entry. An entry whose record is gone or no longer 'scheduled' is dropped.
local now = tonumber(ARGV[1])
local until_ = now + tonumber(ARGV[2])
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[3]))
local out = {}
for _, id in ipairs(due) do
  local f = redis.call('HMGET', ARGV[4] .. id, 'state', 'task_name', 'message', 'queue', 'chunk')
  if f[1] ~= 'scheduled' or not f[2] or not f[3] then
    redis.call('ZREM', KEYS[1], id)
    redis.call('HDEL', KEYS[2], id)
  else
    redis.call('ZADD', KEYS[1], until_, id)
    local before = redis.call('HINCRBY', KEYS[2], id, 1) - 1
    table.insert(out, id); table.insert(out, f[2]); table.insert(out, f[3])
    table.insert(out, f[4] or ''); table.insert(out, tostring(before))
    table.insert(out, f[5] or '')
  end
end
return out
