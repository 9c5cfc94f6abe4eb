-- Shared helpers, prepended to every script. KEYS[1] is the queue's base key
-- ("{prefix:queue}"): every key a script touches shares that hash tag, so one script
-- touches one Redis Cluster slot.
local base = KEYS[1]
local K_READY = base .. ':ready'         -- list of job ids due now
local K_SCHED = base .. ':scheduled'     -- zset id -> run_at ms (delayed, retries, deferrals)
local K_LEASES = base .. ':leases'       -- zset id -> lease deadline ms (running)
local K_JOBS = base .. ':jobs'           -- hash id -> envelope JSON
local K_ATTEMPTS = base .. ':attempts'   -- hash id -> attempts started (fencing token)
local K_ERRORS = base .. ':errors'       -- hash id -> JSON array of the last errors
local K_DEAD = base .. ':dead'           -- zset id -> died_at ms
local K_DONE = base .. ':done'           -- zset id -> finished_at ms (bounded)
local K_PAUSED = base .. ':paused'       -- exists while the queue is paused
local K_WAKE = base .. ':wake'           -- pub/sub channel idle workers listen on

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
