-- Instance slots of one license (or of one customer's licenses): which
-- replicas may serve under it. Times are the store's own clock (TIME), so
-- replicas' clocks never disagree about a lease.
--
-- KEYS[1] leases: member -> when its lease lapses (ms)
-- KEYS[2] order:  member -> when it took its slot (ms); the first `limit`
--                 keep theirs, so past a lowered limit the newest give up
-- KEYS[3] meta:   `seen` (the last call, ms), `since` (when calls resumed
--                 after a gap)
-- ARGV: op (take | renew | release | read), member, limit, lease ms,
--       gap ms, settle ms, process (unique per start of a replica)
--
-- A gap with no call longer than `gap` (every holder renews more often)
-- means nobody could reach the store: it was down, restarted or lost its
-- data, or no replica ran. Holders may have kept serving through it, so
-- for `settle` after it no lapsed lease is culled and no new replica takes
-- a slot: only `renew` (a replica that held one) re-asserts its lease.
--
-- Each holder's process is kept in meta (`process:MEMBER`): a renewal that
-- finds another process there means two replicas run under one name, and
-- share one slot.
--
-- Returns {held (1/0), settling (1/0), shared name (1/0), member, ms its
-- lease has left, ...} with the holders in the order they took their slots.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local op, me = ARGV[1], ARGV[2]
local limit, lease = tonumber(ARGV[3]), tonumber(ARGV[4])
local gap, settle = tonumber(ARGV[5]), tonumber(ARGV[6])

local function holders(held, settling, shared)
  local out = {held, settling, shared}
  local members = redis.call('ZRANGE', KEYS[2], 0, -1)
  for _, member in ipairs(members) do
    local lapses = tonumber(redis.call('ZSCORE', KEYS[1], member) or now)
    table.insert(out, member)
    table.insert(out, lapses - now)
  end
  return out
end

local function drop(member)
  redis.call('ZREM', KEYS[1], member)
  redis.call('ZREM', KEYS[2], member)
  redis.call('HDEL', KEYS[3], 'process:' .. member)
end

if op == 'read' then
  return holders(0, 0, 0)
end

local seen = tonumber(redis.call('HGET', KEYS[3], 'seen') or 0)
local since = tonumber(redis.call('HGET', KEYS[3], 'since') or 0)
if now - seen > gap then
  since = now
  redis.call('HSET', KEYS[3], 'since', since)
end
redis.call('HSET', KEYS[3], 'seen', now)
local settling = now - since < settle

if not settling then
  for _, member in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. now)) do
    drop(member)
  end
end

local held, shared = 0, 0
if op == 'release' then
  drop(me)
else
  local rank = redis.call('ZRANK', KEYS[2], me)
  if rank then
    if rank < limit then
      held = 1
    else
      drop(me)
    end
  elseif (op == 'renew' or not settling) and redis.call('ZCARD', KEYS[2]) < limit then
    redis.call('ZADD', KEYS[2], now, me)
    held = 1
  end
  if held == 1 then
    redis.call('ZADD', KEYS[1], now + lease, me)
    local process = ARGV[7]
    local before = redis.call('HGET', KEYS[3], 'process:' .. me)
    redis.call('HSET', KEYS[3], 'process:' .. me, process)
    if op == 'renew' and before and before ~= process then
      shared = 1
    end
  end
end

local keep = math.max(lease * 10, 60000)
for _, key in ipairs(KEYS) do
  redis.call('PEXPIRE', key, keep)
end
return holders(held, settling and 1 or 0, shared)
