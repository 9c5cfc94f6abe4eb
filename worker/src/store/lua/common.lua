-- Shared helpers, prepended to every queue script. Every key a script touches is declared
-- in KEYS: the queue's fixed keys first, in the order of `QUEUE_KEYS` in store/keys.rs (a
-- test there compares the two), then the script's own keys (idempotency, acker, tick
-- claim, schedule). All share the hash tag `{prefix:queue}`, so a script touches one Redis
-- Cluster slot; and because Redis routes a script by all its declared keys, a node that
-- holds only part of them while the slot migrates answers TRYAGAIN/ASK (the client
-- retries) instead of running the script on a partial queue.
local QUEUE_KEYS = 14                   -- fixed keys per queue; a script's own keys follow

local K_READY, K_SCHEDULED, K_LEASES, K_JOBS, K_ATTEMPTS, K_SEQ
local K_ERRORS, K_DEAD, K_DONE, K_PAUSED, K_REAPER, K_FINISHED, K_WAKE, K_SETTLED
local K_READY_HIGH, K_READY_LOW

-- A field that keeps `attempts` in Redis's hashtable encoding (fetch.lua sets it): the
-- value is longer than any sensible hash-max-listpack-value. Nothing reads it.
local ATTEMPTS_PIN = '~encoding'
local ATTEMPTS_PIN_VALUE = string.rep('-', 256)
-- The same for `leases` (a zset converts past zset-max-listpack-value): a member scored
-- +inf, which no lease deadline reaches, so the reaper never sees it and lease counts
-- leave it out (`leased_count`). It holds one entry per leased job, so it would otherwise
-- stay a listpack, scanned by every ZADD and ZREM.
local LEASES_PIN = '~encoding' .. string.rep('-', 256)

-- Names the keys of the queue whose fixed keys start at KEYS[o + 1]. Every script names
-- the first queue (o = 0, below); push.lua, which stores into several queues in one call
-- on standalone, names each in turn.
local function queue_group(o)
  K_READY = KEYS[o + 1]                 -- list of job ids due now (priority normal)
  K_SCHEDULED = KEYS[o + 2]             -- zset id -> run_at ms (delayed, retries, deferrals)
  K_LEASES = KEYS[o + 3]                -- zset id -> lease deadline ms on Redis's clock (running)
  K_JOBS = KEYS[o + 4]                  -- hash id -> envelope JSON
  -- hash, four fields per job:
  --   <id>    attempts started (the retry budget; a deferral refunds one);
  --   <id>:t  the current lease's token while the job is leased, suffixed `s` once the
  --           holder has extended the lease (proof it received it);
  --   <id>:o  leases that expired before their holder confirmed them (refunded, bounded);
  --   <id>:c  an operator asked the running job to stop (cancel.lua; until the run settles);
  --   <id>:p  the job's priority, 'h' or 'l', only when not normal (deleted with the job).
  K_ATTEMPTS = KEYS[o + 5]
  K_SEQ = KEYS[o + 6]                   -- counter: the last lease token handed out
  K_ERRORS = KEYS[o + 7]                -- hash id -> JSON array of the last errors
  K_DEAD = KEYS[o + 8]                  -- zset id -> died_at ms (trimmed past worker.dead_retention)
  K_DONE = KEYS[o + 9]                  -- zset id -> finished_at ms (bounded)
  K_PAUSED = KEYS[o + 10]               -- exists while the queue is paused
  K_REAPER = KEYS[o + 11]               -- hash: `at` last reap ms, `hold` no reaping before ms
  -- hash id -> JSON of a done or cancelled job: job type, attempts, enqueue time, result
  -- (deleted with its id in `done`: count trim in ack.lua, result_ttl trim in reap.lua)
  K_FINISHED = KEYS[o + 12]
  -- Lists of job ids due now at priority high and low: a fetch pops high, then `ready`
  -- (normal), then low, so it costs the same whatever the backlog.
  K_READY_HIGH = KEYS[o + 13]
  K_READY_LOW = KEYS[o + 14]
  -- The pub/sub channel idle workers listen on: a channel, not a key, named after the
  -- queue's base key ('<base>:ready' -> '<base>:wake').
  K_WAKE = string.sub(K_READY, 1, -7) .. ':wake'
  -- Published (ids, comma separated) when jobs reach a final state: wakes long-polls.
  K_SETTLED = string.sub(K_READY, 1, -7) .. ':settled'
end
queue_group(0)

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
  -- A history another writer left unreadable starts over rather than failing the
  -- script halfway through a batch (Redis does not roll back what it already wrote).
  if cur then
    local ok, decoded = pcall(cjson.decode, cur)
    if ok and type(decoded) == 'table' then list = decoded end
  end
  list[#list + 1] = { attempt = tonumber(attempt), at = now, error = err }
  while #list > 10 do table.remove(list, 1) end
  redis.call('HSET', K_ERRORS, id, cjson.encode(list))
end

-- The ready list of priority code `p` ('h', 'l'; anything else is normal).
local function ready_for(p)
  if p == 'h' then return K_READY_HIGH end
  if p == 'l' then return K_READY_LOW end
  return K_READY
end

-- The ready list job `id` goes (back) to: its priority is kept in `attempts` as `<id>:p`,
-- so retries, deferrals, hand-backs and re-drives keep it.
local function ready_of(id)
  return ready_for(redis.call('HGET', K_ATTEMPTS, id .. ':p'))
end

-- Jobs leased now (the pin member is not a lease).
local function leased_count()
  return redis.call('ZCOUNT', K_LEASES, '-inf', '(+inf')
end

-- Jobs due now at every priority.
local function ready_len()
  return redis.call('LLEN', K_READY_HIGH) + redis.call('LLEN', K_READY) + redis.call('LLEN', K_READY_LOW)
end

local function earliest_scheduled()
  local first = redis.call('ZRANGE', K_SCHEDULED, 0, 0, 'WITHSCORES')
  if first[2] then return tonumber(first[2]) end
  return nil
end

-- Tracked batches (store/batch.rs). A batch lives in its home queue's slot: a hash
-- `…:batch:<bid>` with its counters (total, pending, succeeded, dead, cancelled, expired),
-- `open` ('1' while its creator may still add jobs), `retention` (seconds its keys live
-- once complete) and `completed_at`; a list `…:batch:<bid>:jobs` of its members; and the
-- queue's `…:batches:firing` zset of completed batches whose callbacks are not yet
-- confirmed enqueued. Counts change only while the batch is not complete: completion
-- decides the callbacks once.

-- The batch id a batch hash key names ('…:batch:<bid>').
local function batch_id_of(kb)
  return string.match(kb, ':batch:([^:]+)$')
end

-- Marks the batch complete (once) and adds it to `firing`; its keys then expire after
-- the batch's retention. Returns the batch id.
local function batch_complete(kb, kjobs, kfiring, now)
  local bid = batch_id_of(kb)
  redis.call('HSET', kb, 'completed_at', now)
  redis.call('ZADD', kfiring, now, bid)
  local keep = tonumber(redis.call('HGET', kb, 'retention') or '604800')
  redis.call('EXPIRE', kb, keep)
  redis.call('EXPIRE', kjobs, keep)
  return bid
end

local BATCH_OUTCOME = { s = 'succeeded', d = 'dead', c = 'cancelled', e = 'expired' }

-- A member of the batch `kb` reached a final state (`outcome`: s, d, c or e). Returns the
-- batch id if this completed the batch, else nil. A batch that is gone or complete is
-- left as it is.
local function batch_member_final(kb, kjobs, kfiring, outcome, now)
  local b = redis.call('HMGET', kb, 'pending', 'open', 'completed_at')
  if not b[1] or b[3] then return nil end
  local pending = redis.call('HINCRBY', kb, 'pending', -1)
  redis.call('HINCRBY', kb, BATCH_OUTCOME[outcome] or 'succeeded', 1)
  if pending <= 0 and b[2] ~= '1' then return batch_complete(kb, kjobs, kfiring, now) end
  return nil
end

-- A dead member was re-driven: pending again, unless the batch completed already (then
-- its counts, and the callbacks decided at completion, stay as they are).
local function batch_member_revived(kb)
  local b = redis.call('HMGET', kb, 'pending', 'completed_at')
  if not b[1] or b[2] then return end
  redis.call('HINCRBY', kb, 'dead', -1)
  redis.call('HINCRBY', kb, 'pending', 1)
end
