-- Shared helpers, prepended to every script. KEYS[1] is the queue's base key
-- ("{prefix:queue}"): every key a script touches shares that hash tag, so one script
-- touches one Redis Cluster slot.
local base = KEYS[1]
local K_READY = base .. ':ready'         -- list of job ids due now
local K_SCHED = base .. ':scheduled'     -- zset id -> run_at ms (delayed, retries, deferrals)
local K_LEASES = base .. ':leases'       -- zset id -> lease deadline ms on Redis's clock (running)
local K_JOBS = base .. ':jobs'           -- hash id -> envelope JSON
-- hash, three fields per job:
--   <id>    attempts started (the retry budget; a deferral refunds one);
--   <id>:t  the current lease's token while the job is leased, suffixed `s` once the
--           holder has extended the lease (proof it received it);
--   <id>:o  leases that expired before their holder confirmed them (refunded, bounded).
local K_ATTEMPTS = base .. ':attempts'
local K_SEQ = base .. ':seq'             -- counter: the last lease token handed out
local K_ERRORS = base .. ':errors'       -- hash id -> JSON array of the last errors
local K_DEAD = base .. ':dead'           -- zset id -> died_at ms
local K_DONE = base .. ':done'           -- zset id -> finished_at ms (bounded)
local K_PAUSED = base .. ':paused'       -- exists while the queue is paused
local K_REAPER = base .. ':reaper'       -- hash: `at` last reap ms, `hold` no reaping before ms
local K_WAKE = base .. ':wake'           -- pub/sub channel idle workers listen on

-- Milliseconds on Redis's clock: leases never depend on a worker's clock.
local function redis_now()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- The token field's value if `token` still holds the job's lease, else nil. Every write
-- that finishes, extends or hands back a run goes through this check.
local function holds(id, token)
  local cur = redis.call('HGET', K_ATTEMPTS, id .. ':t')
  if cur == token or cur == token .. 's' then return cur end
  return nil
end

-- Ends the lease of `id` (whichever token held it).
local function end_lease(id)
  redis.call('ZREM', K_LEASES, id)
  redis.call('HDEL', K_ATTEMPTS, id .. ':t')
end

local function push_error(id, attempt, now, err)
  local cur = redis.call('HGET', K_ERRORS, id)
  local list = {}
  if cur then list = cjson.decode(cur) end
  list[#list + 1] = { attempt = tonumber(attempt), at = now, error = err }
  while #list > 10 do table.remove(list, 1) end
  redis.call('HSET', K_ERRORS, id, cjson.encode(list))
end

local function earliest_scheduled()
  local first = redis.call('ZRANGE', K_SCHED, 0, 0, 'WITHSCORES')
  if first[2] then return tonumber(first[2]) end
  return nil
end
