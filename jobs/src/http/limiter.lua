-- Shared sliding-window rate limiter for one integration endpoint, counted the way the
-- upstream counts: no window of `per` (plus the guard) holds more than `rate` sends.
-- KEYS[1]: list of the reserved send instants (ms, Redis clock), newest first, at most
--   `rate` long. KEYS[2]: "no send before" (ms), set by an upstream push-back.
-- Both keys share one hash tag, so the script runs unchanged on a cluster.
-- Time comes from the Redis server, so every culm process shares one clock.
--
-- ARGV[1] = "acquire": ARGV[2] rate (0: no limit, only a push-back applies), ARGV[3] the
--   window in ms (per + guard), ARGV[4] burst, ARGV[5] the burst window in ms
--   (burst * per / rate + guard; unused when burst >= rate), ARGV[6] max wait (ms).
--   The slot is the earliest instant at which the send keeps every window within its
--   limit. Returns {1, wait_ms} when that slot is reserved (the caller sends wait_ms
--   after it asked), {0, wait_ms} when it is further than max wait away (nothing reserved;
--   the caller defers the job by about wait_ms).
-- ARGV[1] = "push": ARGV[2] delay (ms). The upstream pushed back (429/503 Retry-After):
--   no slot is handed out before now + delay. Returns {1, 0}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local hold = tonumber(redis.call('GET', KEYS[2]) or '0')
if ARGV[1] == 'push' then
  local delay = tonumber(ARGV[2])
  if now + delay > hold then
    redis.call('SET', KEYS[2], string.format('%d', now + delay), 'PX', delay + 60000)
  end
  return {1, 0}
end
local rate = tonumber(ARGV[2])
local window = tonumber(ARGV[3])
local burst = tonumber(ARGV[4])
local burst_window = tonumber(ARGV[5])
local max_wait = tonumber(ARGV[6])
local slot = now
if hold > slot then
  slot = hold
end
if rate > 0 then
  local oldest = redis.call('LINDEX', KEYS[1], rate - 1)
  if oldest and tonumber(oldest) + window > slot then
    slot = tonumber(oldest) + window
  end
  if burst < rate then
    local b = redis.call('LINDEX', KEYS[1], burst - 1)
    if b and tonumber(b) + burst_window > slot then
      slot = tonumber(b) + burst_window
    end
  end
end
local wait = slot - now
if wait > max_wait then
  return {0, wait}
end
if rate > 0 then
  redis.call('LPUSH', KEYS[1], string.format('%d', slot))
  redis.call('LTRIM', KEYS[1], 0, rate - 1)
  redis.call('PEXPIRE', KEYS[1], wait + window + 60000)
end
return {1, wait}
