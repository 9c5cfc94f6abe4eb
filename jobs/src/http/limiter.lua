-- Shared sliding-window rate limiter for one integration endpoint, counted the way the
-- upstream counts: no window of `per` (plus the guard) holds more than `rate` sends.
-- KEYS[1]: list of the reserved send instants (ms, Redis clock), newest first, at most
--   `rate` long. KEYS[2]: "no send before" (ms), set by an upstream push-back.
--   KEYS[3]: the adaptive rate, a hash {rate = effective rate, at = when it last changed
--   (ms), cut = when a 429 last lowered it (ms)}; absent at the configured rate.
-- The keys share one hash tag, so the script runs unchanged on a cluster.
--
-- Adaptive rate: a 429 halves the effective rate (at least 1, at most once per window,
-- since the sends answered by one burst of 429s were all made at the old rate); every
-- `recover` ms without a 429 (each 429 restarts the count) it grows by `step` until it
-- is the configured rate again.
-- Time comes from the Redis server, so every culm process shares one clock.
--
-- ARGV[1] = "acquire": ARGV[2] rate (0: no limit, only a push-back applies), ARGV[3] the
--   window in ms (per + guard), ARGV[4] burst, ARGV[5] the burst window in ms
--   (burst * per / rate + guard; unused when burst >= rate), ARGV[6] max wait (ms),
--   ARGV[7] recover (ms), ARGV[8] step.
--   The slot is the earliest instant at which the send keeps every window within its
--   limit. Returns {1, wait_ms, rate} when that slot is reserved (the caller sends wait_ms
--   after it asked), {0, wait_ms, rate} when it is further than max wait away (nothing
--   reserved; the caller defers the job by about wait_ms); rate is the effective rate.
-- ARGV[1] = "push": ARGV[2] delay (ms), ARGV[3] lower: 1 for a 429 (lowers the adaptive
--   rate), 0 for a 503; ARGV[4] rate, ARGV[5] window (ms), ARGV[6] recover (ms), ARGV[7]
--   step. The upstream pushed back (429/503 Retry-After): no slot is handed out before
--   now + delay. Returns {1, 0, rate}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local hold = tonumber(redis.call('GET', KEYS[2]) or '0')

-- The effective rate now, after the recovery steps due since it last changed.
local function effective(rate, recover, step)
  local st = redis.call('HMGET', KEYS[3], 'rate', 'at', 'cut')
  if not st[1] then
    return rate, 0
  end
  local eff, at, cut = tonumber(st[1]), tonumber(st[2]), tonumber(st[3] or '0')
  if eff < rate and recover > 0 and now - at >= recover then
    local steps = math.floor((now - at) / recover)
    eff = math.min(rate, eff + steps * step)
    at = at + steps * recover
    if eff >= rate then
      redis.call('DEL', KEYS[3])
      return rate, cut
    end
    redis.call('HSET', KEYS[3], 'rate', eff, 'at', string.format('%d', at))
  end
  return math.min(eff, rate), cut
end

if ARGV[1] == 'push' then
  local delay = tonumber(ARGV[2])
  if now + delay > hold then
    redis.call('SET', KEYS[2], string.format('%d', now + delay), 'PX', delay + 60000)
  end
  local rate = tonumber(ARGV[4])
  local window, recover, step = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
  if ARGV[3] ~= '1' or rate <= 0 then
    return {1, 0, rate}
  end
  local eff, cut = effective(rate, recover, step)
  if now - cut >= window and eff > 1 then
    eff = math.max(1, math.floor(eff / 2))
    redis.call('HSET', KEYS[3], 'rate', eff, 'at', string.format('%d', now), 'cut', string.format('%d', now))
  elseif eff < rate then
    -- Every 429 restarts the quiet period, lowered further or not.
    redis.call('HSET', KEYS[3], 'rate', eff, 'at', string.format('%d', now))
  end
  if eff < rate then
    -- Kept until the rate has recovered (at most `rate` steps), plus a minute.
    redis.call('PEXPIRE', KEYS[3], recover * (math.ceil(rate / step) + 1) + window + 60000)
  end
  return {1, 0, eff}
end
local rate = tonumber(ARGV[2])
local window = tonumber(ARGV[3])
local burst = tonumber(ARGV[4])
local burst_window = tonumber(ARGV[5])
local max_wait = tonumber(ARGV[6])
if rate > 0 then
  rate = effective(rate, tonumber(ARGV[7]), tonumber(ARGV[8]))
end
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
  return {0, wait, rate}
end
if rate > 0 then
  redis.call('LPUSH', KEYS[1], string.format('%d', slot))
  redis.call('LTRIM', KEYS[1], 0, tonumber(ARGV[2]) - 1)
  redis.call('PEXPIRE', KEYS[1], wait + window + 60000)
end
return {1, wait, rate}
