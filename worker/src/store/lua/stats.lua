-- Queue counts. Returns {ready (every priority), scheduled, running, dead, paused (0/1),
-- then per priority (high, normal, low) its ready count and the envelope at its head
-- ('' when empty)}.
local out = {
  ready_len(),
  redis.call('ZCARD', K_SCHEDULED),
  leased_count(),
  redis.call('ZCARD', K_DEAD),
  redis.call('EXISTS', K_PAUSED),
}
for _, key in ipairs({ K_READY_HIGH, K_READY, K_READY_LOW }) do
  local head = redis.call('LINDEX', key, 0)
  local env = ''
  if head then env = redis.call('HGET', K_JOBS, head) or '' end
  out[#out + 1] = redis.call('LLEN', key)
  out[#out + 1] = env
end
return out
