-- A tracked batch's life outside its members' settlements (those are counted by push.lua,
-- ack.lua, cancel.lua and dead.lua through common.lua's helpers). KEYS: the queue's, then
-- the batch's hash, its member list, the queue's `…:batches:firing` and `…:batches`
-- (recent batches, id -> created_at ms). ARGV: op, then per op:
--   open  open_ttl_s, retention_s, recent_max, on_complete, on_success,
--         description (JSON or '' each): creates the batch with the creator's hold
--         (`open` = 1). Answers 'created', or 'exists' when it was created before (a
--         retried creation), changing nothing.
--   close: drops the hold; with no member pending the batch completes. Answers
--         'completed', 'closed' (members still pending), 'complete' (it was already) or
--         '' (no such batch).
--   fired callbacks (JSON: which callback went out as which job): records the callback
--         jobs and removes the batch from `firing`. Answers 1.
local K_BATCH = KEYS[QUEUE_KEYS + 1]
local K_BATCH_JOBS = KEYS[QUEUE_KEYS + 2]
local K_FIRING = KEYS[QUEUE_KEYS + 3]
local K_RECENT = KEYS[QUEUE_KEYS + 4]
local op = ARGV[1]
if op == 'open' then
  if redis.call('EXISTS', K_BATCH) == 1 then return 'exists' end
  local now = redis_now()
  local fields = {
    'total', 0, 'pending', 0, 'succeeded', 0, 'dead', 0, 'cancelled', 0, 'expired', 0,
    'open', 1, 'created_at', now, 'retention', ARGV[3],
  }
  for j, name in ipairs({ 'on_complete', 'on_success', 'description' }) do
    if ARGV[4 + j] ~= '' then
      fields[#fields + 1] = name
      fields[#fields + 1] = ARGV[4 + j]
    end
  end
  redis.call('HSET', K_BATCH, unpack(fields))
  redis.call('EXPIRE', K_BATCH, ARGV[2])
  redis.call('ZADD', K_RECENT, now, batch_id_of(K_BATCH))
  -- Only the newest `recent_max` are listed; older batches stay readable by id.
  redis.call('ZREMRANGEBYRANK', K_RECENT, 0, -(tonumber(ARGV[4]) + 1))
  return 'created'
elseif op == 'close' then
  local b = redis.call('HMGET', K_BATCH, 'pending', 'completed_at')
  if not b[1] then return '' end
  if b[2] then return 'complete' end
  redis.call('HSET', K_BATCH, 'open', 0)
  if tonumber(b[1]) <= 0 then
    batch_complete(K_BATCH, K_BATCH_JOBS, K_FIRING, redis_now())
    return 'completed'
  end
  return 'closed'
elseif op == 'fired' then
  if redis.call('EXISTS', K_BATCH) == 1 then redis.call('HSET', K_BATCH, 'callbacks', ARGV[2]) end
  redis.call('ZREM', K_FIRING, batch_id_of(K_BATCH))
  return 1
end
return redis.error_reply('unknown batch op ' .. tostring(op))
