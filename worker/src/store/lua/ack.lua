-- Record outcomes of a batch of runs. KEYS: the queue's, then the acker's key
-- (`…:acker:<acker>`). ARGV: done_retention, batch, then per run: id, token, kind,
-- delay_ms (retry/defer: how long from now, on Redis's clock), error.
-- The acker names the pool instance that sends acks and `batch` this batch: an acker
-- resends only its latest batch, and only when the reply was lost, so remembering each
-- acker's last answer lets a resend get the first write's answer instead of finding
-- every run fenced off by that same write.
-- kind is 'done', 'retry', 'defer' or 'dead'; prefixed with 'x' it settles a lease the
-- reaper found expired, and applies only if that lease is still expired (its holder
-- did not extend it meanwhile). 'xdefer' also counts the lease as orphaned.
-- Fenced: a run whose token no longer holds the job's lease (it expired and the job was
-- delivered again, or this is a replay of an ack already applied) changes nothing.
-- Returns one character per run: '1' applied, '0' fenced off.
local now = redis_now()
local keep = tonumber(ARGV[1])
local K_ACKER = KEYS[QUEUE_KEYS + 1]
local batch = ARGV[2] .. ':'
local last = redis.call('GET', K_ACKER)
if last and string.sub(last, 1, #batch) == batch then return string.sub(last, #batch + 1) end
local applied = {}
local finished = 0
local earliest = earliest_scheduled()
local wake = false
for i = 3, #ARGV, 5 do
  local id, token, kind, at, err = ARGV[i], ARGV[i + 1], ARGV[i + 2], now + tonumber(ARGV[i + 3]), ARGV[i + 4]
  local expired_only = string.sub(kind, 1, 1) == 'x'
  if expired_only then kind = string.sub(kind, 2) end
  local ok = holds(id, token) ~= nil
  if ok and expired_only then
    local deadline = redis.call('ZSCORE', K_LEASES, id)
    ok = deadline ~= false and tonumber(deadline) <= now
  end
  if ok then
    end_lease(id)
    if kind == 'done' then
      redis.call('HDEL', K_JOBS, id)
      redis.call('HDEL', K_ATTEMPTS, id, id .. ':o')
      redis.call('HDEL', K_ERRORS, id)
      redis.call('ZADD', K_DONE, now, id)
      finished = finished + 1
    elseif kind == 'dead' then
      push_error(id, redis.call('HGET', K_ATTEMPTS, id), now, err)
      redis.call('ZADD', K_DEAD, now, id)
    else
      local attempt = redis.call('HGET', K_ATTEMPTS, id)
      if kind == 'retry' then
        push_error(id, attempt, now, err)
      else
        -- A deferral does not spend an attempt.
        redis.call('HINCRBY', K_ATTEMPTS, id, -1)
        if expired_only then
          push_error(id, attempt, now, err)
          redis.call('HINCRBY', K_ATTEMPTS, id .. ':o', 1)
        end
      end
      if at <= now then
        -- A reaped job has waited a whole lease already: it goes to the front.
        if expired_only then
          redis.call('LPUSH', K_READY, id)
        else
          redis.call('RPUSH', K_READY, id)
        end
        wake = true
      else
        redis.call('ZADD', K_SCHEDULED, at, id)
        if earliest == nil or at < earliest then
          earliest = at
          wake = true
        end
      end
    end
    applied[#applied + 1] = '1'
  else
    applied[#applied + 1] = '0'
  end
end
if finished > 0 then
  local extra = redis.call('ZCARD', K_DONE) - keep
  if extra > 0 then redis.call('ZREMRANGEBYRANK', K_DONE, 0, extra - 1) end
end
if wake then redis.call('PUBLISH', K_WAKE, '1') end
local answer = table.concat(applied)
-- Kept for an hour: long enough for any resend, and a departed acker's key goes away.
redis.call('SET', K_ACKER, batch .. answer, 'EX', 3600)
return answer
