-- Record what happened to a schedule's tick, for `culm schedules`, the admin API and the
-- missed-tick check. KEYS: the schedule's state hash ('{prefix}:schedules:state:<name>'),
-- the registry of schedules with state ('{prefix}:schedules:names', name -> queue, so the
-- state of a schedule removed from the catalog can be found and deleted).
-- KEYS[3]: the schedule's tick history ('{prefix}:schedules:ticks:<name>'), newest first.
-- ARGV: tick_ms ('' = none), now_ms, outcome ('' = only advance the tick), strength
-- ('strong': this replica decided the tick; 'weak': any replica's observation, never
-- overwriting a decision for the same tick), job_id, queue, lag_ms, error, name,
-- history outcome (what this replica saw, `claimed_elsewhere` included; '' = none),
-- history length.
local K = KEYS[1]
local tick, now, outcome, strength = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
redis.call('HSET', KEYS[2], ARGV[9], ARGV[6])

-- The history holds one entry per tick (manual triggers each get their own). Every
-- replica reports each tick, so an entry for the tick already at the head is replaced
-- only by a better account: a decision beats an observation, and `claimed_elsewhere`
-- (another replica decided) never replaces anything.
local seen = ARGV[10]
if seen ~= '' then
  local entry = cjson.encode({ tick = tonumber(tick), outcome = seen, at = tonumber(now), job = ARGV[5],
    error = ARGV[8], lag_ms = tonumber(ARGV[7]) })
  local head = redis.call('LINDEX', KEYS[3], 0)
  local same = false
  if head and tick ~= '' then
    local ok, h = pcall(cjson.decode, head)
    same = ok and type(h) == 'table' and h.tick == tonumber(tick)
    if same then
      local decided = h.outcome ~= 'paused' and h.outcome ~= 'missed' and h.outcome ~= 'claimed_elsewhere'
      if seen ~= 'claimed_elsewhere' and not (strength == 'weak' and decided) then
        redis.call('LSET', KEYS[3], 0, entry)
      end
    end
  end
  if not same then
    redis.call('LPUSH', KEYS[3], entry)
    redis.call('LTRIM', KEYS[3], 0, tonumber(ARGV[11]) - 1)
  end
end
if tick ~= '' then
  local t = tonumber(tick)
  -- 'tick' is the latest tick any replica handled; it only moves forward.
  if t > tonumber(redis.call('HGET', K, 'tick') or '-1') then redis.call('HSET', K, 'tick', tick) end
  local ot = tonumber(redis.call('HGET', K, 'outcome_tick') or '-1')
  if outcome ~= '' and (t < ot or (t == ot and strength == 'weak')) then return 0 end
end
if outcome == '' then return 0 end
redis.call('HSET', K, 'outcome', outcome, 'outcome_at', now, 'error', ARGV[8])
if tick ~= '' then redis.call('HSET', K, 'outcome_tick', tick) end
if ARGV[5] ~= '' then
  redis.call('HSET', K, 'fired_at', now, 'fired_tick', tick, 'job', ARGV[5], 'queue', ARGV[6], 'lag_ms', ARGV[7])
end
return 1
