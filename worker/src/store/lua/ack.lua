-- Record outcomes of a batch of runs. ARGV: now_ms, done_retention, then per run:
-- id, attempt, kind ('done'|'retry'|'defer'|'dead'), at_ms (retry/defer time), error.
-- Fenced: a run whose lease is gone or whose attempt is no longer current (the lease
-- expired and the job was delivered again) changes nothing.
-- Returns the number of runs applied.
local now = tonumber(ARGV[1])
local keep = tonumber(ARGV[2])
local applied, finished = 0, 0
local earliest = earliest_scheduled()
local wake = false
for i = 3, #ARGV, 5 do
  local id, attempt, kind, at, err = ARGV[i], ARGV[i + 1], ARGV[i + 2], tonumber(ARGV[i + 3]), ARGV[i + 4]
  if redis.call('ZSCORE', K_LEASES, id) and redis.call('HGET', K_ATTEMPTS, id) == attempt then
    redis.call('ZREM', K_LEASES, id)
    if kind == 'done' then
      redis.call('HDEL', K_JOBS, id)
      redis.call('HDEL', K_ATTEMPTS, id)
      redis.call('HDEL', K_ERRORS, id)
      redis.call('ZADD', K_DONE, now, id)
      finished = finished + 1
    elseif kind == 'dead' then
      push_error(id, attempt, now, err)
      redis.call('ZADD', K_DEAD, now, id)
    else
      if kind == 'retry' then
        push_error(id, attempt, now, err)
      else
        -- A deferral does not spend an attempt.
        redis.call('HINCRBY', K_ATTEMPTS, id, -1)
      end
      if at <= now then
        redis.call('RPUSH', K_READY, id)
        wake = true
      else
        redis.call('ZADD', K_SCHED, at, id)
        if earliest == nil or at < earliest then
          earliest = at
          wake = true
        end
      end
    end
    applied = applied + 1
  end
end
if finished > 0 then
  local extra = redis.call('ZCARD', K_DONE) - keep
  if extra > 0 then redis.call('ZREMRANGEBYRANK', K_DONE, 0, extra - 1) end
end
if wake then redis.call('PUBLISH', K_WAKE, '1') end
return applied
