-- Enqueue a batch. ARGV: now_ms, idempotency_ttl_s, then per job: id, run_at_ms, envelope, idem_key ('' = none).
-- Due jobs go straight to the ready list; only future ones enter the scheduled set.
-- Returns per job: id (the earlier one on an idempotency hit), created (1/0).
-- A replayed push finds its ids already written and answers created = 0 for them.
local now = tonumber(ARGV[1])
local ttl = tonumber(ARGV[2])
local was_empty = redis.call('LLEN', K_READY) == 0
local earliest = earliest_scheduled()
local wake = false
local out = {}
for i = 3, #ARGV, 4 do
  local id, run_at, env, idem = ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2], ARGV[i + 3]
  local existing = false
  if idem ~= '' then
    local k = base .. ':idem:' .. idem
    existing = redis.call('GET', k)
    if not existing then redis.call('SET', k, id, 'EX', ttl) end
  end
  -- Safe to run twice with the same arguments (a client resends a command whose reply
  -- it lost): an id is written at most once. A body that exists, or an id recently done,
  -- means this push already happened.
  if not existing and (redis.call('ZSCORE', K_DONE, id) or redis.call('HSETNX', K_JOBS, id, env) == 0) then
    existing = id
  end
  if existing then
    out[#out + 1] = existing
    out[#out + 1] = 0
  else
    if run_at <= now then
      redis.call('RPUSH', K_READY, id)
      if was_empty then wake = true end
    else
      redis.call('ZADD', K_SCHED, run_at, id)
      if earliest == nil or run_at < earliest then
        earliest = run_at
        wake = true
      end
    end
    out[#out + 1] = id
    out[#out + 1] = 1
  end
end
if wake then redis.call('PUBLISH', K_WAKE, '1') end
return out
