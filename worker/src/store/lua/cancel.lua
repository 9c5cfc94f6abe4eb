-- Cancel a job. ARGV: id.
-- A pending or scheduled job loses its body (a pending id left in a ready list is skipped by
-- fetch.lua, which leases only ids with a body), is added to `done` with a `finished`
-- entry marked cancelled, and is published on `settled`. A running job is only marked
-- (`<id>:c` in `attempts`): the next extend.lua of its holder reports it, and the holder
-- raises the handler's cancellation signal. Cost: O(1) commands, no scan of `ready`.
-- A member of a tracked batch: KEYS after the queue's are the batch's hash, member list
-- and the queue's `…:batches:firing` (declared by the caller, which read the envelope's
-- `batch`); the cancellation counts as the member's final state, and an answer
-- 'cancelled|<bid>' says it completed the batch.
-- Returns 'cancelled', 'cancelling' (running, now marked), or why not: 'dead', 'done',
-- or '' when this queue does not know the id.
local id = ARGV[1]
local env = redis.call('HGET', K_JOBS, id)
if not env then
  if redis.call('ZSCORE', K_DONE, id) then
    local f = redis.call('HGET', K_FINISHED, id)
    if f and string.find(f, '"cancelled":true', 1, true) then return 'cancelled' end
    return 'done'
  end
  return ''
end
local now = redis_now()
if redis.call('ZSCORE', K_LEASES, id) then
  redis.call('HSETNX', K_ATTEMPTS, id .. ':c', now)
  return 'cancelling'
end
if redis.call('ZSCORE', K_DEAD, id) then return 'dead' end
local e = cjson.decode(env)
local attempts = tonumber(redis.call('HGET', K_ATTEMPTS, id) or '0')
redis.call('ZREM', K_SCHEDULED, id)
redis.call('HDEL', K_JOBS, id)
redis.call('HDEL', K_ATTEMPTS, id, id .. ':o', id .. ':c', id .. ':p')
redis.call('HDEL', K_ERRORS, id)
redis.call('ZADD', K_DONE, now, id)
redis.call('HSET', K_FINISHED, id, cjson.encode({
  job = e.job, attempts = attempts, enqueued_at = e.enqueued_at, cancelled = true,
}))
redis.call('PUBLISH', K_SETTLED, id)
local K_BATCH = KEYS[QUEUE_KEYS + 1]
if K_BATCH and e.batch and batch_id_of(K_BATCH) == e.batch then
  local bid = batch_member_final(K_BATCH, KEYS[QUEUE_KEYS + 2], KEYS[QUEUE_KEYS + 3], 'c', now)
  if bid then return 'cancelled|' .. bid end
end
return 'cancelled'
