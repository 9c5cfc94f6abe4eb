-- One job's state. ARGV: id. Returns {state, attempts, envelope, errors, state_since}
-- or {} when this queue does not know the id; a done (or cancelled) one adds what the
-- `finished` hash holds for it ('' once forgotten).
local id = ARGV[1]
local env = redis.call('HGET', K_JOBS, id)
if not env then
  local done = redis.call('ZSCORE', K_DONE, id)
  if done then return { 'done', '', '', '', done, redis.call('HGET', K_FINISHED, id) or '' } end
  return {}
end
local attempts = redis.call('HGET', K_ATTEMPTS, id) or '0'
local errors = redis.call('HGET', K_ERRORS, id) or ''
local s = redis.call('ZSCORE', K_LEASES, id)
if s then return { 'running', attempts, env, errors, s } end
s = redis.call('ZSCORE', K_DEAD, id)
if s then return { 'dead', attempts, env, errors, s } end
s = redis.call('ZSCORE', K_SCHEDULED, id)
if s then return { 'scheduled', attempts, env, errors, s } end
return { 'pending', attempts, env, errors, '' }
