-- The session-kNN sample, read in one round trip (layout: streamrec/features/layout.py; the Python
-- twin: reader.sample_sessions and ReplayFeatures.neighbour_sessions). Read-only.
-- KEYS: the prefix items' item -> sessions ZSETs (P:is:{item}).
-- ARGV[1] = the request's own session token (left out), ARGV[2] = sample size,
-- ARGV[3], ARGV[4] = the session key's head and tail around the token, ARGV[5] = the field separator.
-- Returns token, newest ts (over these items), items newest first joined by the separator, for
-- the ``sample`` most recent sessions (ties: the larger token), skipping expired (empty) ones.
if #KEYS == 0 then return {} end
local args = {#KEYS}
for i = 1, #KEYS do args[#args + 1] = KEYS[i] end
args[#args + 1] = 'AGGREGATE'; args[#args + 1] = 'MAX'; args[#args + 1] = 'WITHSCORES'
local all = redis.call('ZUNION', unpack(args))
local own, want, head, tail, sep = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4], ARGV[5]
local out, taken = {}, 0
local i = #all - 1
while i >= 1 and taken < want do
  local token = all[i]
  if token ~= own then
    taken = taken + 1
    local items = redis.call('LRANGE', head .. token .. tail, 0, -1)
    if #items > 0 then
      out[#out + 1] = token
      out[#out + 1] = all[i + 1]
      out[#out + 1] = table.concat(items, sep)
    end
  end
  i = i - 2
end
return out
