-- The circuit breaker of one integration, shared by every process (one key).
-- KEYS[1]: hash {state = closed | open | half_open, failures, until (ms), probes (in
--   flight), successes, probe_until (ms: probes in flight are leased until then, so a
--   probe whose process died frees its place)}. Absent: closed with no failures.
-- ARGV[1] = "admit" | "settle"; ARGV[2] failure_threshold, ARGV[3] open_for (ms),
--   ARGV[4] half_open_probes; for "settle": ARGV[5] 1 if the call was a probe, ARGV[6]
--   "ok", "fail" or "none" (the call was not made, e.g. deferred).
-- Returns {code, wait_ms, state}: for "admit", code 1 lets a call through, 2 lets a
--   probe through, 0 refuses it for wait_ms; for "settle", code 1.
-- Time comes from the Redis server, so every process sees the same open period.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local h = redis.call('HMGET', KEYS[1], 'state', 'failures', 'until', 'probes', 'successes', 'probe_until')
local state = h[1] or 'closed'
local failures = tonumber(h[2] or '0')
local until_ms = tonumber(h[3] or '0')
local probes = tonumber(h[4] or '0')
local successes = tonumber(h[5] or '0')
local probe_until = tonumber(h[6] or '0')
local threshold = tonumber(ARGV[2])
local open_for = tonumber(ARGV[3])
local max_probes = tonumber(ARGV[4])

local function save()
  if state == 'closed' and failures == 0 then
    redis.call('DEL', KEYS[1])
    return
  end
  redis.call('HSET', KEYS[1], 'state', state, 'failures', failures, 'until', string.format('%d', until_ms),
    'probes', probes, 'successes', successes, 'probe_until', string.format('%d', probe_until))
  redis.call('PEXPIRE', KEYS[1], math.max(until_ms - now, 0) + open_for + 600000)
end

if ARGV[1] == 'admit' then
  if state == 'open' then
    if now < until_ms then
      return {0, until_ms - now, state}
    end
    state, probes, successes = 'half_open', 0, 0
  end
  if state == 'half_open' then
    if probes >= max_probes and now < probe_until then
      return {0, math.max(math.floor(open_for / 4), 50), state}
    end
    if probes >= max_probes then
      probes = 0
    end
    probes = probes + 1
    probe_until = now + open_for
    save()
    return {2, 0, state}
  end
  return {1, 0, state}
end

local probe = ARGV[5] == '1'
local result = ARGV[6]
if state == 'closed' then
  if result == 'ok' and failures > 0 then
    failures = 0
    save()
  elseif result == 'fail' then
    failures = failures + 1
    if failures >= threshold then
      state, until_ms = 'open', now + open_for
    end
    save()
  end
elseif state == 'half_open' and probe then
  probes = math.max(probes - 1, 0)
  if result == 'ok' then
    successes = successes + 1
    if successes >= max_probes then
      state, failures, probes, successes = 'closed', 0, 0, 0
    end
  elseif result == 'fail' then
    state, until_ms = 'open', now + open_for
  end
  save()
end
-- A call admitted while closed that fails after the breaker opened changes nothing.
local wait = 0
if state == 'open' then
  wait = until_ms - now
end
return {1, wait, state}
