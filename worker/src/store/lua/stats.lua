-- Queue counts. Returns {ready, scheduled, running, dead, paused (0/1), head envelope or ''}.
local head = redis.call('LINDEX', K_READY, 0)
local head_env = ''
if head then head_env = redis.call('HGET', K_JOBS, head) or '' end
return {
  redis.call('LLEN', K_READY),
  redis.call('ZCARD', K_SCHEDULED),
  redis.call('ZCARD', K_LEASES),
  redis.call('ZCARD', K_DEAD),
  redis.call('EXISTS', K_PAUSED),
  head_env,
}
