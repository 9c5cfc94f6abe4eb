-- Fire one tick of a schedule: the atomic claim, the overlap check and the push of one
-- due job, in the target queue's hash slot (common.lua is prepended; KEYS[1] is the
-- queue's base key). Every replica calls this for every tick; exactly one gets 'fired'.
-- ARGV: name, tick_ms ('' for a manual trigger), overlap ('skip'|'allow'), claim_ttl_s,
--       id, envelope, claim ('<name>:<tick_ms>', or '<name>:manual:<id>').
-- Claims live under `…:tick:`, a namespace of their own: callers' idempotency keys
-- (`…:idem:`) can never make a tick look claimed.
-- Returns {outcome, detail}: fired/id, claimed/holder, stale/last tick, overlap/running id.
local name, tick, overlap, ttl = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local id, env, claim = ARGV[5], ARGV[6], ARGV[7]
-- Per schedule, in this slot: the last tick decided here and the last job fired.
local K_SCHEDULE = base .. ':schedule:' .. name
local K_CLAIM = base .. ':tick:' .. claim

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
local was_empty = redis.call('LLEN', K_READY) == 0
redis.call('HSET', K_JOBS, id, env)
redis.call('RPUSH', K_READY, id)
if was_empty then redis.call('PUBLISH', K_WAKE, '1') end
redis.call('HSET', K_SCHEDULE, 'job', id)
if tick ~= '' then redis.call('HSET', K_SCHEDULE, 'tick', tick) end
return { 'fired', id }
