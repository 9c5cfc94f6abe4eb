-- Fetch up to `count` jobs and lease them. ARGV: count, lease_ttl_ms, promote_chunk,
-- max_in_flight (0: no cap across processes).
-- First promotes due scheduled jobs in one bounded chunk (never an unbounded unpack),
-- each to its priority's ready list; then leases from the high list, the normal one
-- (`ready`) and the low one, in that order.
-- A queue's leases are its permits: with a cap, at most max_in_flight jobs are leased at
-- once, whichever processes hold them, and a dead holder's permits come back when the
-- reaper hands its expired leases out again.
-- Each lease gets a token from the queue's counter, so no two leases of a queue ever
-- share one, whatever happens to the attempt budget.
-- Returns: status ('ok'|'paused'|'full': the cap is reached), next scheduled run_at ('' if none), then
-- id, attempt, token, envelope per job.
local count = tonumber(ARGV[1])
local now = redis_now()
local deadline = now + tonumber(ARGV[2])
local chunk = tonumber(ARGV[3])
local cap = tonumber(ARGV[4])
local due = redis.call('ZRANGEBYSCORE', K_SCHEDULED, '-inf', now, 'LIMIT', 0, chunk)
if #due > 0 then
  -- Each promoted job goes to its own priority's list: one read of their priorities,
  -- then one push per list.
  local fields = {}
  for j, id in ipairs(due) do fields[j] = id .. ':p' end
  local prios = redis.call('HMGET', K_ATTEMPTS, unpack(fields))
  local lists = { [K_READY_HIGH] = {}, [K_READY] = {}, [K_READY_LOW] = {} }
  for j, id in ipairs(due) do
    local list = lists[ready_for(prios[j])]
    list[#list + 1] = id
  end
  for key, ids in pairs(lists) do
    if #ids > 0 then redis.call('RPUSH', key, unpack(ids)) end
  end
  redis.call('ZREM', K_SCHEDULED, unpack(due))
end
local nxt = earliest_scheduled()
local next_due = ''
if nxt then next_due = tostring(nxt) end
if redis.call('EXISTS', K_PAUSED) == 1 then return { 'paused', next_due } end
if cap > 0 and count > 0 then
  local room = cap - leased_count()
  if room <= 0 then return { 'full', next_due } end
  if room < count then count = room end
end
local out = { 'ok', next_due }
if count <= 0 then return out end
-- `count` is at most a pool's free slots; chunks keep every unpack far below Lua's limit.
-- Higher priorities first, FIFO within each: at most three pops, whatever the backlog.
local ids = redis.call('LPOP', K_READY_HIGH, count) or {}
for _, key in ipairs({ K_READY, K_READY_LOW }) do
  if #ids >= count then break end
  local more = redis.call('LPOP', key, count - #ids)
  if more then
    for _, id in ipairs(more) do ids[#ids + 1] = id end
  end
end
if #ids == 0 then return out end
local token = redis.call('INCRBY', K_SEQ, #ids) - #ids
-- Every number passed to redis.call is formatted with '%.17g' (a slow path of printf):
-- the lease deadline is formatted once here, and per-job numbers with '%d'.
local deadline_s = string.format('%d', deadline)
local seen = {}         -- attempts counted in this call, should an id be in ready twice
for from = 1, #ids, 1000 do
  local chunk = { unpack(ids, from, math.min(from + 999, #ids)) }
  -- One command per chunk each for the bodies, the attempt counters, the tokens and
  -- the leases, whatever the chunk's size.
  local envs = redis.call('HMGET', K_JOBS, unpack(chunk))
  local counts = redis.call('HMGET', K_ATTEMPTS, unpack(chunk))
  -- Pins `attempts` to Redis's hashtable encoding (a value longer than
  -- hash-max-listpack-value converts it, and a hash never converts back while the
  -- field keeps it from emptying). It holds a few fields per leased job, so it would
  -- otherwise stay a listpack of up to 512 entries, scanned on every field read and
  -- write: a third of Redis's CPU in a drain. `leases` is pinned likewise.
  local fields, leases = { ATTEMPTS_PIN, ATTEMPTS_PIN_VALUE }, { '+inf', LEASES_PIN }
  for i, id in ipairs(chunk) do
    local env = envs[i]
    if env then
      token = token + 1
      local attempt = (seen[id] or tonumber(counts[i]) or 0) + 1
      seen[id] = attempt
      fields[#fields + 1] = id
      fields[#fields + 1] = string.format('%d', attempt)
      fields[#fields + 1] = id .. ':t'
      fields[#fields + 1] = string.format('%d', token)
      leases[#leases + 1] = deadline_s
      leases[#leases + 1] = id
      out[#out + 1] = id
      out[#out + 1] = attempt
      out[#out + 1] = token
      out[#out + 1] = env
    end
  end
  if #leases > 2 then
    redis.call('HSET', K_ATTEMPTS, unpack(fields))
    redis.call('ZADD', K_LEASES, unpack(leases))
  end
end
return out
