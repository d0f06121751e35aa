-- create.lua for each record of a chunk, in one atomic call (a campaign's chunk of records).
-- Per record: the idempotency GET (if a key), EXISTS (unless the ids are fresh), one HSET,
-- EXPIRE, the idempotency SET (if a key); one ZADD for all the chunk's new records.
-- KEYS: per record its record key and its idempotency index (or ""), then the active set
-- ARGV[1] records n, [2] now, [3] ttl_s, [4] fresh ids (1: new UUIDs, no EXISTS), [5] common
--      pairs c, then the c field/value pairs every record gets, then per record: delivery
--      id, its own pairs n, then the n field/value pairs
-- Returns {1, delivery_id} when created, else {0, the existing delivery id}, per record
local n, now, ttl = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3])
local fresh, c = ARGV[4] == '1', tonumber(ARGV[5])
local active = KEYS[2 * n + 1]
local common = {'state', 'queued', 'created_at', now, 'updated_at', now}
for j = 1, 2 * c do table.insert(common, ARGV[5 + j]) end
local out, zadd, a = {}, {}, 6 + 2 * c
for i = 1, n do
  local record, idem = KEYS[2 * i - 1], KEYS[2 * i]
  local id, nf = ARGV[a], tonumber(ARGV[a + 1])
  local existing = nil
  if idem ~= "" then existing = redis.call('GET', idem) end
  if existing then
    out[i] = {0, existing}
  elseif not fresh and redis.call('EXISTS', record) == 1 then
    out[i] = {0, id}
  else
    local args = {unpack(common)}
    for j = 0, 2 * nf - 1 do table.insert(args, ARGV[a + 2 + j]) end
    redis.call('HSET', record, unpack(args))
    redis.call('EXPIRE', record, ttl)
    if idem ~= "" then redis.call('SET', idem, id, 'EX', ttl) end
    table.insert(zadd, now); table.insert(zadd, id)
    out[i] = {1, id}
  end
  a = a + 2 + 2 * nf
end
if #zadd > 0 then redis.call('ZADD', active, unpack(zadd)) end
return out
