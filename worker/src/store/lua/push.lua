-- Enqueue a batch into one or more queues, all or nothing. KEYS: per queue in the batch,
-- its fixed keys (common.lua), then per job in job order its idempotency key
-- (`…:idem:<key>`) if it has one and its uniqueness key (`…:unique:<key>`) if it has one.
-- ARGV: now_ms, idempotency_ttl_s, batch_ttl_s (0 = not a tracked batch's members), then
-- per queue (in KEYS order) the number of its jobs, then per job: id, run_at_ms, envelope,
-- idem_key ('' = none), unique_ttl_ms (0 = not unique), priority ('h', 'l', or '' for
-- normal; kept as `<id>:p` in `attempts`).
-- Uniqueness: the key names the job that took it; while that job is live (its body is
-- stored and it is not dead) a push with the key answers that job's id. A done,
-- cancelled, expired or dead holder no longer counts, so nothing has to clear the key
-- when a job finishes; its TTL bounds how long a live holder keeps it.
-- Cluster mode sends one queue per call (a script touches one slot); standalone and
-- Sentinel send a whole batch in one call, so either every job is stored or none is.
-- Redis does not roll back a script that fails halfway, so every key's kind is checked
-- before the first write.
-- Members of a tracked batch (batch_ttl_s > 0; one queue per call): the last two KEYS
-- are the batch's hash and member list. A batch that is gone or complete refuses the
-- push ('BATCHDONE', nothing stored); otherwise the jobs this call creates (not those
-- an idempotency key, a uniqueness key or a replay resolved to) are appended to the
-- members and counted in total and pending, and both keys' TTL is refreshed.
-- Due jobs go straight to their priority's ready list; only future ones enter the
-- scheduled set.
-- Returns per job: id (the earlier one on an idempotency or uniqueness hit), created (1/0).
-- A replayed push finds its ids already written and answers created = 0 for them.
local now = tonumber(ARGV[1])
local ttl = tonumber(ARGV[2])
local batch_ttl = tonumber(ARGV[3])

local function holds_kind(key, kind)
  local t = redis.call('TYPE', key)['ok']
  return t == 'none' or t == kind
end

local STRIDE = 6        -- ARGV per job

-- Calls f(n, i, idem, uniq) for each queue, with its keys named (queue_group): n its
-- jobs, i the ARGV index of its count, idem(j) and uniq(j) the idempotency and
-- uniqueness keys of its job j (0-based) or nil.
local function each_queue(f)
  local o, i = 0, 4
  while i <= #ARGV do
    local n = tonumber(ARGV[i])
    queue_group(o)
    local idem_keys, unique_keys, next_key = {}, {}, o + QUEUE_KEYS + 1
    for j = 0, n - 1 do
      local at = i + 1 + j * STRIDE
      if ARGV[at + 3] ~= '' then
        idem_keys[j] = KEYS[next_key]
        next_key = next_key + 1
      end
      if ARGV[at + 4] ~= '0' then
        unique_keys[j] = KEYS[next_key]
        next_key = next_key + 1
      end
    end
    local r = f(n, i, function(j) return idem_keys[j] end, function(j) return unique_keys[j] end)
    if r then return r end
    o = next_key - 1
    i = i + 1 + n * STRIDE
  end
end

-- Check every key first.
local bad = each_queue(function(n, _, idem, uniq)
  if not (holds_kind(K_READY, 'list') and holds_kind(K_READY_HIGH, 'list') and holds_kind(K_READY_LOW, 'list')
      and holds_kind(K_SCHEDULED, 'zset') and holds_kind(K_ATTEMPTS, 'hash')
      and holds_kind(K_JOBS, 'hash') and holds_kind(K_DONE, 'zset') and holds_kind(K_DEAD, 'zset')) then
    return redis.error_reply('WRONGTYPE a key of ' .. K_READY .. '\'s queue holds the wrong kind of value; nothing was stored')
  end
  for j = 0, n - 1 do
    for _, k in ipairs({ idem(j) or false, uniq(j) or false }) do
      if k and not holds_kind(k, 'string') then
        return redis.error_reply('WRONGTYPE key ' .. k .. ' holds the wrong kind of value; nothing was stored')
      end
    end
  end
end)
if bad then return bad end
local K_BATCH, K_BATCH_JOBS
if batch_ttl > 0 then
  K_BATCH, K_BATCH_JOBS = KEYS[#KEYS - 1], KEYS[#KEYS]
  if redis.call('EXISTS', K_BATCH) == 0 or redis.call('HEXISTS', K_BATCH, 'completed_at') == 1 then
    return redis.error_reply('BATCHDONE the batch is complete or gone; nothing was stored')
  end
end

local out = {}
each_queue(function(n, i, idem, uniq)
  local was_empty = ready_len() == 0
  local earliest = earliest_scheduled()
  local wake = false
  -- Ids due now per priority list, each pushed in one command per 1,000.
  local due = { [K_READY_HIGH] = {}, [K_READY] = {}, [K_READY_LOW] = {} }
  for j = 0, n - 1 do
    local at = i + 1 + j * STRIDE
    local id, run_at, env, prio = ARGV[at], tonumber(ARGV[at + 1]), ARGV[at + 2], ARGV[at + 5]
    local existing = false
    local k, u = idem(j), uniq(j)
    if k then existing = redis.call('GET', k) end
    if not existing and u then
      local holder = redis.call('GET', u)
      -- The holder still counts while pending, scheduled or running; a replayed push
      -- finds its own id here and answers it like any repeat.
      if holder and redis.call('HEXISTS', K_JOBS, holder) == 1 and not redis.call('ZSCORE', K_DEAD, holder) then
        existing = holder
      else
        redis.call('SET', u, id, 'PX', ARGV[at + 4])
      end
    end
    -- The idempotency key names whichever job the request resolved to.
    if k and redis.call('EXISTS', k) == 0 then redis.call('SET', k, existing or id, 'EX', ttl) end
    -- Safe to run twice with the same arguments (a client resends a command whose
    -- reply it lost): an id is written at most once. An id recently done, or a body
    -- that exists, means this push already happened.
    if not existing and (redis.call('ZSCORE', K_DONE, id) or redis.call('HSETNX', K_JOBS, id, env) == 0) then
      existing = id
    end
    if existing then
      out[#out + 1] = existing
      out[#out + 1] = 0
    else
      if prio ~= '' then redis.call('HSET', K_ATTEMPTS, id .. ':p', prio) end
      if run_at <= now then
        local list = due[ready_for(prio)]
        list[#list + 1] = id
        if was_empty then wake = true end
      else
        redis.call('ZADD', K_SCHEDULED, run_at, id)
        if earliest == nil or run_at < earliest then
          earliest = run_at
          wake = true
        end
      end
      out[#out + 1] = id
      out[#out + 1] = 1
    end
  end
  for key, ids in pairs(due) do
    for from = 1, #ids, 1000 do
      redis.call('RPUSH', key, unpack(ids, from, math.min(from + 999, #ids)))
    end
  end
  if wake then redis.call('PUBLISH', K_WAKE, '1') end
end)
if K_BATCH then
  local members = {}
  for j = 1, #out, 2 do
    if out[j + 1] == 1 then members[#members + 1] = out[j] end
  end
  if #members > 0 then
    redis.call('HINCRBY', K_BATCH, 'total', #members)
    redis.call('HINCRBY', K_BATCH, 'pending', #members)
    for from = 1, #members, 1000 do
      redis.call('RPUSH', K_BATCH_JOBS, unpack(members, from, math.min(from + 999, #members)))
    end
    redis.call('EXPIRE', K_BATCH_JOBS, batch_ttl)
  end
  redis.call('EXPIRE', K_BATCH, batch_ttl)
end
return out
