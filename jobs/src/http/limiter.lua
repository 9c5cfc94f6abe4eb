-- Shared GCRA rate limiter for one integration endpoint (one key, so cluster-safe).
-- KEYS[1]: the endpoint's theoretical arrival time (TAT), ms since the epoch.
-- Time comes from the Redis server, so every culm process shares one clock.
--
-- ARGV[1] = "acquire": ARGV[2] emission interval T (ms), ARGV[3] burst tolerance tau (ms),
--   ARGV[4] max wait (ms). Returns {1, wait_ms} when a slot is reserved (the caller
--   sends after wait_ms), {0, wait_ms} when the next slot is further than max wait away
--   (nothing reserved; the caller defers the job by about wait_ms).
-- ARGV[1] = "push": ARGV[2] delay (ms), ARGV[3] tau (ms). The upstream pushed back
--   (429/503 Retry-After): no slot is handed out before now + delay. Returns {1, 0}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then
  tat = now
end
local tau = tonumber(ARGV[3])
if ARGV[1] == 'push' then
  local until_ms = now + tonumber(ARGV[2]) + tau
  if until_ms > tat then
    redis.call('SET', KEYS[1], string.format('%d', until_ms), 'PX', until_ms - now + 60000)
  end
  return {1, 0}
end
local interval = tonumber(ARGV[2])
local max_wait = tonumber(ARGV[4])
local wait = tat - tau - now
if wait < 0 then
  wait = 0
end
if wait > max_wait then
  return {0, wait}
end
if interval > 0 then
  local new_tat = tat + interval
  redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', new_tat - now + 60000)
end
return {1, wait}
