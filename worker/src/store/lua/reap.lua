-- Return jobs whose lease expired (their worker died) to the front of the ready list,
-- or dead-letter them when that was their last attempt (a job that kills its worker
-- every time must not crash-loop). ARGV: now_ms, max_attempts, limit.
-- Returns, per reaped job: id, attempt, 'retry' or 'dead', and its envelope (for the ledger).
local now = tonumber(ARGV[1])
local max = tonumber(ARGV[2])
local expired = redis.call('ZRANGEBYSCORE', K_LEASES, '-inf', now, 'LIMIT', 0, tonumber(ARGV[3]))
local wake = false
local out = {}
for _, id in ipairs(expired) do
  redis.call('ZREM', K_LEASES, id)
  local body = redis.call('HGET', K_JOBS, id)
  if body then
    local attempt = tonumber(redis.call('HGET', K_ATTEMPTS, id) or '0')
    push_error(id, attempt, now, 'lease expired: the worker running attempt ' .. attempt .. ' stopped responding')
    local outcome = 'retry'
    if attempt >= max then
      redis.call('ZADD', K_DEAD, now, id)
      outcome = 'dead'
    else
      redis.call('LPUSH', K_READY, id)
      wake = true
    end
    out[#out + 1] = id
    out[#out + 1] = tostring(attempt)
    out[#out + 1] = outcome
    out[#out + 1] = body
  end
end
if wake then redis.call('PUBLISH', K_WAKE, '1') end
return out
