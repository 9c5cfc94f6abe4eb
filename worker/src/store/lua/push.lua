-- Enqueue a batch into one or more queues, all or nothing. KEYS: the base key of each
-- queue in the batch. ARGV: now_ms, idempotency_ttl_s, then per queue (in KEYS order) the
-- number of its jobs, then per job: id, run_at_ms, envelope, idem_key ('' = none).
-- Cluster mode sends one queue per call (a script touches one slot); standalone and
-- Sentinel send a whole batch in one call, so either every job is stored or none is.
-- Redis does not roll back a script that fails halfway, so every key's kind is checked
-- before the first write.
-- Due jobs go straight to the ready list; only future ones enter the scheduled set.
-- Returns per job: id (the earlier one on an idempotency hit), created (1/0).
-- A replayed push finds its ids already written and answers created = 0 for them.
local now = tonumber(ARGV[1])
local ttl = tonumber(ARGV[2])

local function holds(key, kind)
  local t = redis.call('TYPE', key)['ok']
  return t == 'none' or t == kind
end

-- Check every key first.
local i = 3
for g = 1, #KEYS do
  local b = KEYS[g]
  if not (holds(b .. ':ready', 'list') and holds(b .. ':scheduled', 'zset')
      and holds(b .. ':jobs', 'hash') and holds(b .. ':done', 'zset')) then
    return redis.error_reply('WRONGTYPE a key of ' .. b .. ' holds the wrong kind of value; nothing was stored')
  end
  local n = tonumber(ARGV[i])
  for j = 0, n - 1 do
    local idem = ARGV[i + 1 + j * 4 + 3]
    if idem ~= '' and not holds(b .. ':idem:' .. idem, 'string') then
      return redis.error_reply('WRONGTYPE idempotency key ' .. idem .. ' holds the wrong kind of value; nothing was stored')
    end
  end
  i = i + 1 + n * 4
end

local out = {}
i = 3
for g = 1, #KEYS do
  local b = KEYS[g]
  local ready, sched, jobs, done = b .. ':ready', b .. ':scheduled', b .. ':jobs', b .. ':done'
  local was_empty = redis.call('LLEN', ready) == 0
  local first = redis.call('ZRANGE', sched, 0, 0, 'WITHSCORES')
  local earliest = nil
  if first[2] then earliest = tonumber(first[2]) end
  local wake = false
  local due = {}          -- ids due now, pushed to ready in one command
  local n = tonumber(ARGV[i])
  for j = 0, n - 1 do
    local at = i + 1 + j * 4
    local id, run_at, env, idem = ARGV[at], tonumber(ARGV[at + 1]), ARGV[at + 2], ARGV[at + 3]
    local existing = false
    if idem ~= '' then
      local k = b .. ':idem:' .. idem
      existing = redis.call('GET', k)
      if not existing then redis.call('SET', k, id, 'EX', ttl) end
    end
    -- Safe to run twice with the same arguments (a client resends a command whose
    -- reply it lost): an id is written at most once. An id recently done, or a body
    -- that exists, means this push already happened.
    if not existing and (redis.call('ZSCORE', done, id) or redis.call('HSETNX', jobs, id, env) == 0) then
      existing = id
    end
    if existing then
      out[#out + 1] = existing
      out[#out + 1] = 0
    else
      if run_at <= now then
        due[#due + 1] = id
        if was_empty then wake = true end
      else
        redis.call('ZADD', sched, run_at, id)
        if earliest == nil or run_at < earliest then
          earliest = run_at
          wake = true
        end
      end
      out[#out + 1] = id
      out[#out + 1] = 1
    end
  end
  for from = 1, #due, 1000 do
    redis.call('RPUSH', ready, unpack(due, from, math.min(from + 999, #due)))
  end
  if wake then redis.call('PUBLISH', b .. ':wake', '1') end
  i = i + 1 + n * 4
end
return out
