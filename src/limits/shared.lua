-- licensegate: evaluate one request's shared limits atomically.
--
-- Loaded once and called by SHA (EVALSHA). Time comes from the server
-- (TIME), so replicas with skewed clocks still agree. Times are
-- microseconds since BASE, which keeps them well inside a double's exact
-- integer range.
--
-- ARGV[1] = number of operations; each operation then takes 6 ARGV slots
-- (its kind and five parameters, unused ones '-'):
--   'r' emission_us tolerance_us cost slice -    GCRA rate, KEYS: tat
--   'q' amount cost ttl_ms weight_ppm slice       quota, KEYS: current, previous
--         (weight_ppm: share of the previous rolling window still counted;
--          0 for calendar periods)
--   's' identity seats idle_us - -                seats, KEYS: sorted set
--   'R' emission_us units - - -                   give back rate units, KEYS: tat
--   'Q' units - - - -                             give back quota units, KEYS: current
--   'M' units ttl_ms - - -                        merge units counted during an
--         outage, once: KEYS: current, marker (set with the INCRBY; a merge
--         whose marker exists was made by an earlier call and is skipped)
-- With slice > 0 an operation leases up to `slice` units (at least `cost`).
--
-- Returns {0, granted_1, remaining_1, reset_1, ..., granted_n, remaining_n,
-- reset_n} when every operation passed: `remaining` is what a rate or quota
-- has left after it (0 for other kinds), `reset` the microseconds until a
-- rate is whole again (-1 for other kinds; quotas reset with their window,
-- which the caller knows). 'M' grants 1 when it merged, 0 when its marker
-- existed. Or {i, retry_us, remaining} when operation i refused; then
-- nothing this call did is kept (earlier operations are undone).

local BASE = 1700000000000000
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2]) - BASE

local n = tonumber(ARGV[1])
local k = 1
local undo = {}
local granted = {}
local left = {}
local reset = {}

local function rollback()
  for u = #undo, 1, -1 do
    local step = undo[u]
    if step[1] == 'r' then
      if step[3] then
        redis.call('SET', step[2], step[3], 'KEEPTTL')
      else
        redis.call('DEL', step[2])
      end
    elseif step[1] == 'q' then
      redis.call('DECRBY', step[2], step[3])
    elseif step[1] == 's' then
      redis.call('ZREM', step[2], step[3])
    end
  end
end

for i = 1, n do
  local a = 1 + (i - 1) * 6
  local kind = ARGV[a + 1]
  if kind == 'r' then
    local key = KEYS[k]; k = k + 1
    local emission = tonumber(ARGV[a + 2])
    local tolerance = tonumber(ARGV[a + 3])
    local cost = tonumber(ARGV[a + 4])
    local slice = tonumber(ARGV[a + 5])
    local old = redis.call('GET', key)
    local tat = tonumber(old) or now
    if tat < now then tat = now end
    local take = cost
    if slice > 0 then
      local available = math.floor((tolerance - (tat - now)) / emission)
      take = math.max(cost, math.min(slice, available))
    end
    local new = tat + emission * take
    local allow_at = new - tolerance
    if allow_at > now then
      rollback()
      return {i, math.ceil(allow_at - now), 0}
    end
    redis.call('SET', key, string.format('%.3f', new), 'PX', math.ceil((new - now) / 1000) + 1000)
    undo[#undo + 1] = {'r', key, old}
    granted[i] = take
    left[i] = math.floor((tolerance - (new - now)) / emission)
    reset[i] = math.ceil(new - now)
  elseif kind == 'q' then
    local key = KEYS[k]; local previous = KEYS[k + 1]; k = k + 2
    local amount = tonumber(ARGV[a + 2])
    local cost = tonumber(ARGV[a + 3])
    local ttl = tonumber(ARGV[a + 4])
    local weight = tonumber(ARGV[a + 5])
    local slice = tonumber(ARGV[a + 6])
    local used = tonumber(redis.call('GET', key) or '0')
    local carried = 0
    if weight > 0 then
      carried = math.ceil(tonumber(redis.call('GET', previous) or '0') * weight / 1000000)
    end
    local room = amount - used - carried
    local take = cost
    if slice > 0 then take = math.max(cost, math.min(slice, room)) end
    if take > room then
      rollback()
      return {i, -1, math.max(room, 0)}
    end
    redis.call('INCRBY', key, take)
    redis.call('PEXPIRE', key, ttl)
    undo[#undo + 1] = {'q', key, take}
    granted[i] = take
    left[i] = room - take
  elseif kind == 's' then
    local key = KEYS[k]; k = k + 1
    local identity = ARGV[a + 2]
    local seats = tonumber(ARGV[a + 3])
    local idle = tonumber(ARGV[a + 4])
    redis.call('ZREMRANGEBYSCORE', key, '-inf', now - idle)
    if redis.call('ZSCORE', key, identity) then
      redis.call('ZADD', key, now, identity)
    elseif redis.call('ZCARD', key) < seats then
      redis.call('ZADD', key, now, identity)
      undo[#undo + 1] = {'s', key, identity}
    else
      local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
      rollback()
      return {i, math.ceil(tonumber(oldest[2]) + idle - now), 0}
    end
    redis.call('PEXPIRE', key, math.ceil(idle / 1000) + 1000)
    granted[i] = 1
  elseif kind == 'R' then
    local key = KEYS[k]; k = k + 1
    local tat = tonumber(redis.call('GET', key) or '0')
    local back = tonumber(ARGV[a + 2]) * tonumber(ARGV[a + 3])
    if tat > now then
      redis.call('SET', key, string.format('%.3f', math.max(now, tat - back)), 'KEEPTTL')
    end
    granted[i] = 0
  elseif kind == 'Q' then
    local key = KEYS[k]; k = k + 1
    if redis.call('EXISTS', key) == 1 then
      local rest = redis.call('DECRBY', key, tonumber(ARGV[a + 2]))
      if rest < 0 then redis.call('SET', key, 0, 'KEEPTTL') end
    end
    granted[i] = 0
  elseif kind == 'M' then
    local key = KEYS[k]; local marker = KEYS[k + 1]; k = k + 2
    local ttl = tonumber(ARGV[a + 3])
    if redis.call('SET', marker, '1', 'NX', 'PX', ttl) then
      redis.call('INCRBY', key, tonumber(ARGV[a + 2]))
      redis.call('PEXPIRE', key, ttl)
      granted[i] = 1
    else
      granted[i] = 0
    end
  else
    return redis.error_reply('licensegate: unknown operation ' .. tostring(kind))
  end
end

local reply = {0}
for i = 1, n do
  reply[#reply + 1] = granted[i] or 0
  reply[#reply + 1] = left[i] or 0
  reply[#reply + 1] = reset[i] or -1
end
return reply
