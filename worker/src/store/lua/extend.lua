-- Extend the leases of running jobs. ARGV: deadline_ms, then id, attempt pairs.
-- Returns the ids whose lease was lost (expired and taken over, or purged).
local deadline = ARGV[1]
local lost = {}
for i = 2, #ARGV, 2 do
  local id, attempt = ARGV[i], ARGV[i + 1]
  if redis.call('ZSCORE', K_LEASES, id) and redis.call('HGET', K_ATTEMPTS, id) == attempt then
    redis.call('ZADD', K_LEASES, 'XX', deadline, id)
  else
    lost[#lost + 1] = id
  end
end
return lost
