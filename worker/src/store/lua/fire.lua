-- Fire one tick of a schedule: the atomic claim, the overlap check and the push of one
-- due job, in the target queue's hash slot (common.lua is prepended). Every replica calls
-- this for every tick; exactly one gets 'fired'.
-- KEYS: the queue's, then the schedule's hash (`…:schedule:<name>`) and the tick's claim
--       (`…:tick:<name>:<tick_ms>`, or `…:tick:<name>:manual:<id>`).
-- ARGV: tick_ms ('' for a manual trigger), overlap ('skip'|'allow'), claim_ttl_s, id,
--       envelope.
-- Claims live under `…:tick:`, a namespace of their own: callers' idempotency keys
-- (`…:idem:`) can never make a tick look claimed.
-- Returns {outcome, detail}: fired/id, claimed/holder, stale/last tick, overlap/running id.
local tick, overlap, ttl, id, env = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4], ARGV[5]
-- Per schedule, in this slot: the last tick decided here and the last job fired.
local K_SCHEDULE = KEYS[QUEUE_KEYS + 1]
local K_CLAIM = KEYS[QUEUE_KEYS + 2]

local holder = redis.call('GET', K_CLAIM)
if holder then return { 'claimed', holder } end
if tick ~= '' then
  -- Ticks are decided in order: one at or before the last decided tick is a late
  -- replica's, and must not fire even after its claim key expired.
  local last = tonumber(redis.call('HGET', K_SCHEDULE, 'tick') or '-1')
  if tonumber(tick) <= last then return { 'stale', tostring(last) } end
end
if overlap == 'skip' then
  -- Unfinished means its body still exists and it is not dead: pending, scheduled
  -- (a retry's backoff) or running. Finished jobs' bodies are deleted on ack.
  local prev = redis.call('HGET', K_SCHEDULE, 'job')
  if prev and redis.call('HEXISTS', K_JOBS, prev) == 1 and not redis.call('ZSCORE', K_DEAD, prev) then
    redis.call('SET', K_CLAIM, 'skipped:' .. prev, 'EX', ttl)
    if tick ~= '' then redis.call('HSET', K_SCHEDULE, 'tick', tick) end
    return { 'overlap', prev }
  end
end
redis.call('SET', K_CLAIM, id, 'EX', ttl)
-- The push of one due job, as push.lua does it.
local was_empty = ready_len() == 0
redis.call('HSET', K_JOBS, id, env)
redis.call('RPUSH', K_READY, id)
if was_empty then redis.call('PUBLISH', K_WAKE, '1') end
redis.call('HSET', K_SCHEDULE, 'job', id)
if tick ~= '' then redis.call('HSET', K_SCHEDULE, 'tick', tick) end
return { 'fired', id }
