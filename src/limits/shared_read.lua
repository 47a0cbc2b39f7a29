-- licensegate: read one license's shared counters for `/usage`, changing
-- nothing. A script rather than plain GETs so that the time seats and rates
-- are measured against is the server's (TIME), as in shared.lua, and so
-- that every read is one round trip to the license's shard (all KEYS carry
-- its hash tag).
--
-- ARGV[1] = number of reads; each read then takes 2 ARGV slots:
--   'q' weight_ppm   quota, KEYS: current, previous (weight_ppm: share of the
--                    previous rolling window still counted; 0 for calendar
--                    periods)
--   'r' -            rate, KEYS: tat
--   's' idle_us      seats, KEYS: sorted set
--
-- Returns two numbers per read: whether its key exists (1 or 0), and
--   'q' units counted (with the previous window's share),
--   'r' microseconds the theoretical arrival time is ahead of now (0 when
--       the burst is whole),
--   's' identities active within idle_us.

local BASE = 1700000000000000
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2]) - BASE

local n = tonumber(ARGV[1])
local k = 1
local reply = {}

for i = 1, n do
  local a = 1 + (i - 1) * 2
  local kind = ARGV[a + 1]
  local exists = 0
  local value = 0
  if kind == 'q' then
    local key = KEYS[k]; local previous = KEYS[k + 1]; k = k + 2
    local weight = tonumber(ARGV[a + 2])
    local used = redis.call('GET', key)
    if used then exists = 1; value = tonumber(used) end
    if weight > 0 then
      local before = redis.call('GET', previous)
      if before then
        exists = 1
        value = value + math.ceil(tonumber(before) * weight / 1000000)
      end
    end
  elseif kind == 'r' then
    local key = KEYS[k]; k = k + 1
    local tat = redis.call('GET', key)
    if tat then
      exists = 1
      value = math.max(0, math.ceil(tonumber(tat) - now))
    end
  elseif kind == 's' then
    local key = KEYS[k]; k = k + 1
    local idle = tonumber(ARGV[a + 2])
    if redis.call('EXISTS', key) == 1 then
      exists = 1
      value = redis.call('ZCOUNT', key, '(' .. string.format('%.17g', now - idle), '+inf')
    end
  else
    return redis.error_reply('licensegate: unknown read ' .. tostring(kind))
  end
  reply[#reply + 1] = exists
  reply[#reply + 1] = value
end
return reply
