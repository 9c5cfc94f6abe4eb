-- Extend the leases of running jobs. ARGV: lease_ttl_ms, then id, token pairs.
-- Extending also confirms the lease: its holder has it, so if it ever expires the
-- attempt counts. Returns two lists: the ids whose lease was lost (taken over, settled
-- or purged), and the ids still held that an operator asked to cancel (`<id>:c`, set by
-- cancel.lua): their holder raises the handler's cancellation signal.
-- Formatted once: redis.call formats a number argument per call ('%.17g').
local deadline = string.format('%d', redis_now() + tonumber(ARGV[1]))
local lost = {}
local cancel = {}
for i = 2, #ARGV, 2 do
  local id, token = ARGV[i], ARGV[i + 1]
  local cur = holds(id, token)
  if cur then
    redis.call('ZADD', K_LEASES, 'XX', deadline, id)
    if cur == token then redis.call('HSET', K_ATTEMPTS, id .. ':t', token .. 's') end
    if redis.call('HEXISTS', K_ATTEMPTS, id .. ':c') == 1 then cancel[#cancel + 1] = id end
  else
    lost[#lost + 1] = id
  end
end
return { lost, cancel }
