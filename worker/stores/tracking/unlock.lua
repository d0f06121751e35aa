-- Release a lock only while it is still ours: KEYS[1] the lock, ARGV[1] our token.
-- One script, so no other worker's lock (taken after ours expired) is deleted in between.
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
