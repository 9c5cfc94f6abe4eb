-- Dead-letter operations. ARGV: op ('retry'|'purge'), ids...
-- retry: back to its priority's ready list with a fresh attempt budget (the lease token counter is
-- separate and keeps rising, so no earlier run can settle the re-driven one);
-- A re-driven member of a tracked batch that is not complete yet counts as pending again
-- (common.lua): KEYS after the queue's are the hashes of the batches the ids belong to
-- (the caller read their envelopes' `batch`).
-- purge: delete for good. Returns the number of jobs affected.
local op = ARGV[1]
local n = 0
local batch_keys = {}   -- batch id -> its hash key, from the declared keys
for k = QUEUE_KEYS + 1, #KEYS do
  local bid = batch_id_of(KEYS[k])
  if bid then batch_keys[bid] = KEYS[k] end
end
for i = 2, #ARGV do
  local id = ARGV[i]
  if redis.call('ZREM', K_DEAD, id) == 1 then
    n = n + 1
    if op == 'retry' then
      redis.call('HSET', K_ATTEMPTS, id, 0)
      redis.call('HDEL', K_ATTEMPTS, id .. ':o')
      redis.call('RPUSH', ready_of(id), id)
      if next(batch_keys) then
        local env = redis.call('HGET', K_JOBS, id)
        local ok, e = pcall(cjson.decode, env or '')
        if ok and type(e) == 'table' and type(e.batch) == 'string' and batch_keys[e.batch] then
          batch_member_revived(batch_keys[e.batch])
        end
      end
    else
      redis.call('HDEL', K_JOBS, id)
      redis.call('HDEL', K_ATTEMPTS, id, id .. ':t', id .. ':o', id .. ':c', id .. ':p')
      redis.call('HDEL', K_ERRORS, id)
    end
  end
end
if op == 'retry' and n > 0 then redis.call('PUBLISH', K_WAKE, '1') end
return n
