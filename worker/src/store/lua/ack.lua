-- Record outcomes of a batch of runs. KEYS: the queue's, then the acker's key
-- (`…:acker:<acker>`), then the queue's history key for the current hour
-- (`…:history:<hour>`). ARGV: done_retention, batch, the batch's summed wait in ms and
-- the number of runs it sums (from the worker: due time to start), capped ('1' when the
-- queue has a max_in_flight: a batch that ends leases while jobs wait wakes the
-- processes the cap held back), then per run: id, token, kind,
-- delay_ms (retry/defer: how long from now, on Redis's clock), error, finished (done:
-- the JSON kept in `finished` for status readers: job type, attempts, enqueue time and
-- result; '' otherwise), batch ('' when the job is in no tracked batch, else `<n><o>`:
-- the batch's position n among the batch keys and the outcome o it counts as if final:
-- s succeeded, c cancelled, e expired, r none).
-- Batch keys (only when some run belongs to a tracked batch), after the history key: the
-- queue's `…:batches:firing`, then per batch its hash and its member list. A batch whose
-- last member settles here is completed (common.lua) and its id is appended to the
-- answer after a '|' (comma separated).
-- The acker names the pool instance that sends acks and `batch` this batch: an acker
-- resends only its latest batch, and only when the reply was lost, so remembering each
-- acker's last answer lets a resend get the first write's answer instead of finding
-- every run fenced off by that same write.
-- kind is 'done', 'retry', 'defer' or 'dead'; prefixed with 'x' it settles a lease the
-- reaper found expired, and applies only if that lease is still expired (its holder
-- did not extend it meanwhile). 'xdefer' also counts the lease as orphaned.
-- Fenced: a run whose token no longer holds the job's lease (it expired and the job was
-- delivered again, or this is a replay of an ack already applied) changes nothing.
-- Done and dead runs are published on the queue's `settled` channel, once per batch.
-- Returns one character per run: '1' applied, '0' fenced off.
local now = redis_now()
-- Formatted once: a number passed to redis.call is formatted per argument ('%.17g').
local now_s = string.format('%d', now)
local keep = tonumber(ARGV[1])
local K_ACKER = KEYS[QUEUE_KEYS + 1]
local K_HISTORY = KEYS[QUEUE_KEYS + 2]
local FIRST_RUN = 6
local STRIDE = 7         -- ARGV per run
local K_FIRING = KEYS[QUEUE_KEYS + 3]
local completed = {}    -- batches completed by this call
local batch = ARGV[2] .. ':'
local capped = ARGV[5] == '1'
local last = redis.call('GET', K_ACKER)
if last and string.sub(last, 1, #batch) == batch then return string.sub(last, #batch + 1) end
local applied = {}
local finished = 0
local earliest = earliest_scheduled()
local wake = false
-- Read every run's current token in one command, then write in as few commands as the
-- batch allows: settling the common case (done) costs one command per run (the read)
-- plus a handful per batch.
local fields = {}
for i = FIRST_RUN, #ARGV, STRIDE do fields[#fields + 1] = ARGV[i] .. ':t' end
local current = {}
for from = 1, #fields, 1000 do
  local got = redis.call('HMGET', K_ATTEMPTS, unpack(fields, from, math.min(from + 999, #fields)))
  for j = 1, #got do current[from + j - 1] = got[j] end
end
local settled = {}      -- ids settled by this batch: a second entry for one id is fenced
local ended = {}        -- leases to end: ZREM from leases
local dropped = {}      -- attempts-hash fields to delete
local done = {}         -- ids done: bodies and errors to delete
local done_scores = {}  -- ZADD arguments for the done set
local finished_fields = {} -- HSET arguments for the finished hash
local final = {}        -- ids that reached done or dead: published once
local n = 0
local processed, failed = 0, 0
for i = FIRST_RUN, #ARGV, STRIDE do
  n = n + 1
  local id, token, kind, err = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 4]
  local expired_only = string.sub(kind, 1, 1) == 'x'
  if expired_only then kind = string.sub(kind, 2) end
  local cur = current[n]
  local ok = not settled[id] and cur and (cur == token or cur == token .. 's')
  if ok and expired_only then
    local deadline = redis.call('ZSCORE', K_LEASES, id)
    ok = deadline ~= false and tonumber(deadline) <= now
  end
  if ok then
    settled[id] = true
    ended[#ended + 1] = id
    dropped[#dropped + 1] = id .. ':t'
    -- A cancellation asked of this run ends with it.
    dropped[#dropped + 1] = id .. ':c'
    if kind == 'done' then
      processed = processed + 1
      dropped[#dropped + 1] = id
      dropped[#dropped + 1] = id .. ':o'
      dropped[#dropped + 1] = id .. ':p'
      done[#done + 1] = id
      done_scores[#done_scores + 1] = now_s
      done_scores[#done_scores + 1] = id
      if ARGV[i + 5] ~= '' then
        finished_fields[#finished_fields + 1] = id
        finished_fields[#finished_fields + 1] = ARGV[i + 5]
      end
      final[#final + 1] = id
    elseif kind == 'dead' then
      failed = failed + 1
      push_error(id, redis.call('HGET', K_ATTEMPTS, id), now, err)
      redis.call('ZADD', K_DEAD, now, id)
      final[#final + 1] = id
    else
      local attempt = redis.call('HGET', K_ATTEMPTS, id)
      if kind == 'retry' then
        failed = failed + 1
        push_error(id, attempt, now, err)
      else
        -- A deferral does not spend an attempt.
        redis.call('HINCRBY', K_ATTEMPTS, id, -1)
        if expired_only then
          push_error(id, attempt, now, err)
          redis.call('HINCRBY', K_ATTEMPTS, id .. ':o', 1)
        end
      end
      local at = now + tonumber(ARGV[i + 3])
      if at <= now then
        -- A reaped job has waited a whole lease already: it goes to the front.
        if expired_only then
          redis.call('LPUSH', ready_of(id), id)
        else
          redis.call('RPUSH', ready_of(id), id)
        end
        wake = true
      else
        redis.call('ZADD', K_SCHEDULED, at, id)
        if earliest == nil or at < earliest then
          earliest = at
          wake = true
        end
      end
    end
    local member = ARGV[i + 6]
    if member ~= '' then
      local bn, outcome = string.match(member, '^(%d+)(%a)$')
      if kind == 'dead' then outcome = 'd' elseif kind ~= 'done' then outcome = nil end
      if bn and outcome and outcome ~= 'r' then
        local at_key = QUEUE_KEYS + 2 + 2 * tonumber(bn)
        local bid = batch_member_final(KEYS[at_key], KEYS[at_key + 1], K_FIRING, outcome, now)
        if bid then completed[#completed + 1] = bid end
      end
    end
    applied[n] = '1'
  else
    applied[n] = '0'
  end
end
for from = 1, #ended, 1000 do
  redis.call('ZREM', K_LEASES, unpack(ended, from, math.min(from + 999, #ended)))
end
for from = 1, #dropped, 1000 do
  redis.call('HDEL', K_ATTEMPTS, unpack(dropped, from, math.min(from + 999, #dropped)))
end
for from = 1, #done, 1000 do
  local last_i = math.min(from + 999, #done)
  redis.call('HDEL', K_JOBS, unpack(done, from, last_i))
  redis.call('HDEL', K_ERRORS, unpack(done, from, last_i))
  redis.call('ZADD', K_DONE, unpack(done_scores, 2 * from - 1, 2 * last_i))
end
for from = 1, #finished_fields, 1000 do
  redis.call('HSET', K_FINISHED, unpack(finished_fields, from, math.min(from + 999, #finished_fields)))
end
finished = #done
if finished > 0 then
  local extra = redis.call('ZCARD', K_DONE) - keep
  if extra > 0 then
    -- The oldest done ids leave with what `finished` holds for them.
    local gone = redis.call('ZPOPMIN', K_DONE, extra)
    local ids = {}
    for j = 1, #gone, 2 do ids[#ids + 1] = gone[j] end
    for from = 1, #ids, 1000 do
      redis.call('HDEL', K_FINISHED, unpack(ids, from, math.min(from + 999, #ids)))
    end
  end
end
if capped and #ended > 0 and not wake then wake = ready_len() > 0 end
-- Per-minute history for the dashboard: a few commands per batch, never per run. Fields
-- are named by the minute on Redis's clock, so a field filed under a neighbouring hour's
-- key (the worker names the key by its own clock) is still read for the right minute.
local waited = tonumber(ARGV[4])
if processed + failed + waited > 0 then
  local minute = math.floor(now / 60000)
  if processed > 0 then redis.call('HINCRBY', K_HISTORY, minute .. ':p', processed) end
  if failed > 0 then redis.call('HINCRBY', K_HISTORY, minute .. ':f', failed) end
  if waited > 0 then
    redis.call('HINCRBY', K_HISTORY, minute .. ':w', tonumber(ARGV[3]))
    redis.call('HINCRBY', K_HISTORY, minute .. ':n', waited)
  end
  -- Kept 25 hours after its hour's last write: the 24-hour chart's bound.
  redis.call('EXPIRE', K_HISTORY, 90000)
end
if wake then redis.call('PUBLISH', K_WAKE, '1') end
if #final > 0 then redis.call('PUBLISH', K_SETTLED, table.concat(final, ',')) end
local answer = table.concat(applied)
if #completed > 0 then answer = answer .. '|' .. table.concat(completed, ',') end
-- Kept for an hour: long enough for any resend, and a departed acker's key goes away.
redis.call('SET', K_ACKER, batch .. answer, 'EX', 3600)
return answer
