-- Find leases that expired (their holder died, lost the fetch reply, or is cut off from
-- Redis). Changes no job: the worker's settle step decides each one's fate and writes it
-- through ack.lua's expired-only kinds, so the rules live in one place.
-- ARGV: limit, outage_ms, hold_ms, dead_retention_ms, result_ttl_ms.
-- Also forgets up to `limit` done (or cancelled) jobs older than result_ttl_ms: their id
-- in `done` and what `finished` holds for them.
-- Also trims the dead-letter set: up to `limit` jobs that died more than
-- dead_retention_ms ago are deleted with their body, errors and attempt fields (the
-- PostgreSQL archive, when configured, keeps its own copy longer).
-- Redis itself may have been unreachable (frozen, restarting, a network partition): then
-- no holder could extend its leases either. When no reaper of this queue has run for
-- longer than outage_ms, reaping waits hold_ms (one lease) so that live holders extend
-- first; only leases still expired after that are taken.
-- Returns 'held' or 'ok', the number of dead jobs trimmed, then (after 'ok') id, token,
-- attempt, confirmed (1/0), orphaned count and envelope per expired lease.
local limit = tonumber(ARGV[1])
local now = redis_now()
local old = redis.call('ZRANGEBYSCORE', K_DEAD, '-inf', now - tonumber(ARGV[4]), 'LIMIT', 0, limit)
for _, id in ipairs(old) do
  redis.call('HDEL', K_JOBS, id)
  redis.call('HDEL', K_ATTEMPTS, id, id .. ':t', id .. ':o', id .. ':c', id .. ':p')
  redis.call('HDEL', K_ERRORS, id)
end
if #old > 0 then redis.call('ZREM', K_DEAD, unpack(old)) end
local expired_results = redis.call('ZRANGEBYSCORE', K_DONE, '-inf', now - tonumber(ARGV[5]), 'LIMIT', 0, limit)
if #expired_results > 0 then
  redis.call('ZREM', K_DONE, unpack(expired_results))
  redis.call('HDEL', K_FINISHED, unpack(expired_results))
end
local last = tonumber(redis.call('HGET', K_REAPER, 'at'))
redis.call('HSET', K_REAPER, 'at', now)
if last and now - last > tonumber(ARGV[2]) then
  redis.call('HSET', K_REAPER, 'hold', now + tonumber(ARGV[3]))
end
local hold = tonumber(redis.call('HGET', K_REAPER, 'hold'))
if hold and now < hold then return { 'held', #old } end
local expired = redis.call('ZRANGEBYSCORE', K_LEASES, '-inf', now, 'LIMIT', 0, limit)
local out = { 'ok', #old }
for _, id in ipairs(expired) do
  local f = redis.call('HMGET', K_ATTEMPTS, id, id .. ':t', id .. ':o')
  local body = redis.call('HGET', K_JOBS, id)
  if body and f[2] then
    local token, confirmed = f[2], '0'
    if string.sub(token, -1) == 's' then
      token = string.sub(token, 1, -2)
      confirmed = '1'
    end
    out[#out + 1] = id
    out[#out + 1] = f[1] or '0'
    out[#out + 1] = token
    out[#out + 1] = confirmed
    out[#out + 1] = f[3] or '0'
    out[#out + 1] = body
  else
    -- A lease without a body or token (purged meanwhile) holds nothing.
    end_lease(id)
  end
end
return out
