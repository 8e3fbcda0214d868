--[[ gatekeep token bucket: every limit of one request, all or none, in one call.

Theory of operation
-------------------
This is a transcription of gatekeep/_ratelimit/_bucket.py (read that first),
with times in integer microseconds of the Redis server's own clock.

KEYS[i]        the bucket of limit i.  All keys of one request carry the same
               hash tag, so they live in one slot and this works on a cluster.
ARGV[1]        need: the tokens every bucket must hold for an admission (the
               request's cost).
ARGV[2]        want: take as many as every bucket holds, up to this (>= need);
               a plain request sends want = need, a lease more (_bucket.grant).
ARGV[3i ..]    rate, period (microseconds), capacity of limit i.

A bucket is one string "<tokens> <stamp>": the tokens it held at the server
time <stamp>.  A missing key is a full bucket.  The level now is
min(capacity, tokens + (now - stamp) * rate / period); a server clock that
went backwards (after a failover) refills nothing and never moves a stamp
back.  Tokens are written with %.17g, which reads back the very same double.
A bucket counts as holding `cost` when it is at most EPSILON short, as in
_bucket.py, so float dust never turns away a request that is on time.

The script reads every bucket first.  Only if each holds `cost` tokens does
it write them all, each with PX = the time until it is full again, so an idle
bucket disappears exactly when forgetting it changes nothing.  A rejected
request writes nothing.  Redis runs a script atomically, so concurrent
requests from any number of gateway processes cannot interleave.

The time comes from TIME, never from a gateway: skewed gateway clocks cannot
matter.  TIME makes the script non-deterministic, which is fine because
Redis >= 5 replicates the effects of a script (its SETs), not the script, and
Redis 7 knows no other way.  We require Redis >= 6.

Reply: {allowed (1/0), retry_after_ms, granted, remaining_1, reset_ms_1, ...}, times
rounded up to the millisecond; retry_after is 0 when allowed, and a cost
larger than a capacity gets that limit's period (no wait would help).
]]

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local cost = tonumber(ARGV[1])
local want = tonumber(ARGV[2])
local EPSILON = 1e-9
local n = #KEYS

local levels, stamps = {}, {}
local allowed = true
for i = 1, n do
  local rate = tonumber(ARGV[3 * i])
  local period = tonumber(ARGV[3 * i + 1])
  local capacity = tonumber(ARGV[3 * i + 2])
  local tokens, stamp = capacity, now
  local stored = redis.call('GET', KEYS[i])
  if stored then
    local sep = string.find(stored, ' ', 1, true)
    tokens = tonumber(string.sub(stored, 1, sep - 1))
    stamp = tonumber(string.sub(stored, sep + 1))
    if now > stamp then
      tokens = math.min(capacity, tokens + (now - stamp) * rate / period)
      stamp = now
    end
  end
  levels[i], stamps[i] = tokens, stamp
  if tokens < cost - EPSILON then
    allowed = false
  end
end

local function ceil_ms(us)
  return math.ceil(us / 1000 - 1e-6)
end

local granted = 0
if allowed then
  granted = cost
  if want > cost then
    local most = want
    for i = 1, n do
      most = math.min(most, math.floor(levels[i] + EPSILON))
    end
    granted = math.max(cost, most)
  end
end

local reply = {allowed and 1 or 0, 0, granted}
local retry = 0
for i = 1, n do
  local rate = tonumber(ARGV[3 * i])
  local period = tonumber(ARGV[3 * i + 1])
  local capacity = tonumber(ARGV[3 * i + 2])
  local tokens = levels[i]
  if allowed then
    tokens = tokens - granted
    if granted > 0 then
      local ttl = math.max(ceil_ms((capacity - tokens) * period / rate), 1)
      redis.call('SET', KEYS[i], string.format('%.17g %.17g', tokens, stamps[i]), 'PX', ttl)
    end
  elseif cost > capacity then
    retry = math.max(retry, period)
  elseif tokens < cost - EPSILON then
    retry = math.max(retry, (cost - tokens) * period / rate)
  end
  reply[2 * i + 2] = math.floor(tokens + EPSILON)
  reply[2 * i + 3] = 0
  if tokens < capacity - EPSILON then
    reply[2 * i + 3] = ceil_ms((capacity - tokens) * period / rate)
  end
end
if not allowed then
  reply[2] = math.max(ceil_ms(retry), 1)
end
return reply
