-- Dead-letter operations. ARGV: op ('retry'|'purge'), ids...
-- retry: back to its priority's ready list with a fresh attempt budget (the lease token counter is
-- separate and keeps rising, so no earlier run can settle the re-driven one);
-- purge: delete for good. Returns the number of jobs affected.
local op = ARGV[1]
local n = 0
for i = 2, #ARGV do
  local id = ARGV[i]
  if redis.call('ZREM', K_DEAD, id) == 1 then
    n = n + 1
    if op == 'retry' then
      redis.call('HSET', K_ATTEMPTS, id, 0)
      redis.call('HDEL', K_ATTEMPTS, id .. ':o')
      redis.call('RPUSH', ready_of(id), id)
    else
      redis.call('HDEL', K_JOBS, id)
      redis.call('HDEL', K_ATTEMPTS, id, id .. ':t', id .. ':o', id .. ':c', id .. ':p')
      redis.call('HDEL', K_ERRORS, id)
    end
  end
end
if op == 'retry' and n > 0 then redis.call('PUBLISH', K_WAKE, '1') end
return n
