-- Take every parked message of a provider atomically: two resumers never re-enqueue one twice.
local items = redis.call('HGETALL', KEYS[1])
redis.call('DEL', KEYS[1])
return items
