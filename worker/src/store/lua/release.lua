-- Hand back leased jobs that will not run here (shutdown after the drain timeout, or
-- fetched but never started) to the front of their priority's list. ARGV: id, token
-- pairs. The attempt is refunded.
local n = 0
for i = 1, #ARGV, 2 do
  local id, token = ARGV[i], ARGV[i + 1]
  if holds(id, token) then
    end_lease(id)
    redis.call('HINCRBY', K_ATTEMPTS, id, -1)
    redis.call('LPUSH', ready_of(id), id)
    n = n + 1
  end
end
if n > 0 then redis.call('PUBLISH', K_WAKE, '1') end
return n
