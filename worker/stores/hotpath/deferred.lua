-- Writes to the keys every delivery of a chunk shares, made once for the chunk: this text goes
-- before the composed steps (see redis.py), so their ``redis.call`` is ``call`` below. On a
-- key listed in ``shared`` it keeps, per member, the last ZADD (with or without NX) or ZREM,
-- and per field the sum of the HINCRBYs; ``flush()`` then writes them with one ZADD, one
-- ZADD NX, one ZREM per key and one HINCRBY per field. The steps never read these keys (they
-- only write them, and ignore these replies), and the script is atomic: no client sees a
-- difference, only fewer commands. Reads, likewise once per chunk: ``probe_absent`` asks
-- with one EXISTS whether any of a chunk's keys exists (the orphan lists a registration takes:
-- almost always none), and an LPOP of such a key then answers nil without a command;
-- ``prefetch`` reads the fields every delivery will HMGET from one hash (the channel's
-- suppression entries) in one HMGET, and each HMGET of them is answered from it. Nothing in
-- the call writes those keys before the steps read them. Any other call goes through
-- unchanged.
local shared, zops, zorder, incr, iorder = {}, {}, {}, {}, {}
local absent, known = {}, {}
local real = redis
local function probe_absent(keys)
  if #keys > 0 and real.call('EXISTS', unpack(keys)) == 0 then
    for _, key in ipairs(keys) do absent[key] = true end
  end
end
local function prefetch(key, fields)
  if #fields == 0 then return end
  local got, values = {}, real.call('HMGET', key, unpack(fields))
  for i, field in ipairs(fields) do got[field] = values[i] end
  known[key] = got
end
local function call(cmd, key, ...)
  if absent[key] and string.upper(cmd) == 'LPOP' then return false end
  if known[key] and string.upper(cmd) == 'HMGET' then
    local got, out = known[key], {}
    for i, field in ipairs({...}) do
      if got[field] == nil then return real.call(cmd, key, ...) end
      out[i] = got[field]
    end
    return out
  end
  if shared[key] then
    local c, a = string.upper(cmd), {...}
    if (c == 'ZADD' and #a == 2) or (c == 'ZADD' and #a == 3 and a[1] == 'NX')
        or (c == 'ZREM' and #a == 1) then
      local ops = zops[key]
      if not ops then ops = {}; zops[key] = ops; table.insert(zorder, key) end
      if c == 'ZREM' then ops[a[1]] = {'rem'}
      elseif #a == 2 then ops[a[2]] = {'add', a[1]}
      else ops[a[3]] = {'nx', a[2]} end
      return 1
    elseif c == 'HINCRBY' and #a == 2 then
      local fields = incr[key]
      if not fields then fields = {}; incr[key] = fields; table.insert(iorder, key) end
      if fields[a[1]] == nil then fields[a[1]] = 0 end
      fields[a[1]] = fields[a[1]] + tonumber(a[2])
      return fields[a[1]]
    end
  end
  return real.call(cmd, key, ...)
end
local redis = setmetatable({call = call}, {__index = real})
local function flush()
  for _, key in ipairs(zorder) do
    local add, nx, rem = {}, {}, {}
    for member, op in pairs(zops[key]) do
      if op[1] == 'add' then table.insert(add, op[2]); table.insert(add, member)
      elseif op[1] == 'nx' then table.insert(nx, op[2]); table.insert(nx, member)
      else table.insert(rem, member) end
    end
    if #add > 0 then real.call('ZADD', key, unpack(add)) end
    if #nx > 0 then real.call('ZADD', key, 'NX', unpack(nx)) end
    if #rem > 0 then real.call('ZREM', key, unpack(rem)) end
  end
  for _, key in ipairs(iorder) do
    for field, n in pairs(incr[key]) do real.call('HINCRBY', key, field, n) end
  end
end
