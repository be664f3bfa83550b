-- The feature writer: applies one batch of one Kafka partition atomically (key layout:
-- streamrec/features/layout.py; argument format: streamrec/features/writer.py). Every constant
-- (caps, decay taus, weights, key names, the field separator) comes from Python in the config JSON
-- (ARGV[2], built by writer.script_config), so the rules are defined once; ReplayFeatures
-- (streamrec/features/replay.py) follows the same rules and tests/test_feature_parity.py checks
-- that both give identical reads.
local cfg = cjson.decode(ARGV[2])
local K = cfg.keys
-- a key name: K[name] is {head, tail} around the id (Keys.script_templates), or a plain string
local function key(name, id)
  local t = K[name]
  if id == nil then return t end
  return t[1] .. id .. t[2]
end
local new_off = tonumber(ARGV[3])
local stored = tonumber(redis.call('GET', KEYS[1]) or '-1')
if stored >= 0 and tonumber(ARGV[4]) > stored then
  return {'gap', stored}
end
local SEP = cfg.sep
local FIELD = '([^' .. SEP .. ']*)'
local exp, floor, abs = math.exp, math.floor, math.abs
-- TTLs are refreshed at most once per wall-clock day per key (hash field x = that day), so an
-- idle key expires between ttl and ttl + 1 day after its last update; new keys get it at once
local today = tostring(floor(tonumber(redis.call('TIME')[1]) / cfg.ttl_refresh_s))
local function fmt(v) return string.format('%.17g', v) end
local function int(v) return string.format('%d', v) end
-- a number as the layout stores it: integers as integers, anything else with 17 significant digits
-- (the same text fmt or int gives for the values each field holds)
local function num_text(v)
  if v == floor(v) and abs(v) < 2 ^ 53 then return int(v) end
  return fmt(v)
end

-- the fields of s from position first (default 1) on, split at sep (default SEP)
local function split(s, sep, first)
  sep = sep or SEP
  local out, start = {}, first or 1
  while true do
    local i = string.find(s, sep, start, true)
    if not i then out[#out + 1] = string.sub(s, start); return out end
    out[#out + 1] = string.sub(s, start, i - 1)
    start = i + 1
  end
end

-- a recent-list entry {eid, item, type, ts, session}, parsed from its list row once per batch
local ENTRY = '^' .. FIELD .. SEP .. FIELD .. SEP .. FIELD .. SEP .. FIELD .. SEP .. '(.*)$'
local function entry(rows, i)
  local e = rows[i]
  if type(e) == 'string' then
    local eid, item, typ, ts, session = string.match(e, ENTRY)
    e = {eid, item, typ, tonumber(ts), session}
    rows[i] = e
  end
  return e
end

-- lazy decay: (v, t) plus weight w at ts -> sum of w_i * exp(-(t_ref - ts_i)/tau), order-free.
-- The decay maths (this, and trending's forward decay below) is streamrec/features/decay.py in Lua.
local function merge(v, t, ts, w, tau)
  if not v or not t then return w, ts end
  if ts >= t then return v * exp(-(ts - t) / tau) + w, ts end
  return v + w * exp(-(t - ts) / tau), t
end

-- one-slot tumbling window in hash fields rl:b / rl:n; windows only move forward (older events
-- are not limited); returns true when this event is over the limit
local function over_rate(h, ts, limit)
  if limit <= 0 then return false end
  local bucket = floor(ts / cfg.bot_window_ms)
  local b, n = h:num('rl:b'), h:num('rl:n')
  if not b or bucket > b then b, n = bucket, 0 elseif bucket < b then return false end
  h:set('rl:b', b); h:set('rl:n', n + 1)
  return n + 1 > limit
end

-- batch-local view of a user's or an item's hash (kind), found by id without building its key
-- name again: read once (HGETALL), written back once (HSET of changed fields); numeric fields are
-- parsed once (num) and may be set as numbers, turned into text when written. Its TTL is refreshed
-- together with the keys of the same id listed in ``also`` (recent list, co-visitation, ...)
local HASH_KINDS = {
  user = {ttl = cfg.user_ttl_s, also = {'recent'}},
  item = {ttl = cfg.item_ttl_s, also = {'covis', 'cobuy', 'item_sessions'}},
}
local hashes = {user = {}, item = {}}
local View = {}
View.__index = View
function View:get(k) return self.f[k] end
function View:set(k, v) self.f[k] = v; self.dirty[k] = true end
function View:num(k)
  local v = self.f[k]
  if type(v) == 'string' then v = tonumber(v); self.f[k] = v end
  return v
end
function View:flush()
  local f, args = self.f, {}
  local refresh = f.x ~= today
  if refresh then f.x = today; self.dirty.x = true end
  for k in pairs(self.dirty) do
    local v = f[k]
    args[#args + 1] = k; args[#args + 1] = type(v) == 'number' and num_text(v) or v
  end
  if #args > 0 then redis.call('HSET', self.key, unpack(args)) end
  if refresh then
    local kind = HASH_KINDS[self.kind]
    redis.call('EXPIRE', self.key, kind.ttl)
    for _, name in ipairs(kind.also) do redis.call('EXPIRE', key(name, self.id), kind.ttl) end
  end
end
local function hash(kind, id)
  local h = hashes[kind][id]
  if h then return h end
  local hkey = key(kind, id)
  local f = {}
  local all = redis.call('HGETALL', hkey)
  for i = 1, #all, 2 do f[all[i]] = all[i + 1] end
  h = setmetatable({f = f, dirty = {}, key = hkey, kind = kind, id = id}, View)
  hashes[kind][id] = h
  return h
end

-- the field names of each type's counters, built once
local counter_fields = setmetatable({}, {__index = function(t, typ)
  local names = {n = 'n:' .. typ, d = 'd:' .. typ, t = 't:' .. typ}
  t[typ] = names
  return names
end})

-- impressions, summed per shown item over the batch (count, and the decayed sum at the newest ts):
-- merged at the end into the item's hash view when an event of the batch read it, else through a
-- read of only those fields (most shown items have no other event in the batch)
local shown_acc = {}
local function shown(id, ts)
  local a = shown_acc[id]
  if not a then
    shown_acc[id] = {1, 1, ts}
  else
    a[1] = a[1] + 1
    a[2], a[3] = merge(a[2], a[3], ts, 1, cfg.item_tau_ms)
  end
end

local function bump_decayed(h, typ, ts, w)
  local names = counter_fields[typ]
  h:set(names.n, (h:num(names.n) or 0) + 1)
  local v, t = merge(h:num(names.d), h:num(names.t), ts, w, cfg.item_tau_ms)
  h:set(names.d, v); h:set(names.t, t)
end

-- recent lists: read once per batch (LRANGE), new entries pushed and trimmed at the end
local recents = {}
local function recent(user)
  local r = recents[user]
  if r then return r end
  r = {rows = redis.call('LRANGE', key('recent', user), 0, cfg.recent_cap - 1), new = {}}
  recents[user] = r
  return r
end

local clock = tonumber(redis.call('GET', key('clock')) or '-1')
local t0 = tonumber(redis.call('GET', key('trending_t0')) or '')
-- increments summed per batch and written once at the end (or before a trending rescale)
local covis_acc, cobuy_acc, trend_acc, suggest_acc, categories = {}, {}, {}, {}, {}
local suggest_cat_acc = {}  -- category path (every level) -> search text -> increment
-- session state, written once at the end: token -> new items (oldest first), item -> token -> newest ts
local session_new, item_sess = {}, {}

local function add_to_session(user, session, item, ts)
  local token = session ~= '' and (cfg.session_token.session .. session) or (cfg.session_token.user .. user)
  local s = session_new[token]
  if not s then s = {}; session_new[token] = s end
  s[#s + 1] = item
  local row = item_sess[item]
  if not row then row = {}; item_sess[item] = row end
  if not row[token] or ts > row[token] then row[token] = ts end
end

local function flush_trending()
  for item, inc in pairs(trend_acc) do redis.call('ZINCRBY', key('trending'), fmt(inc), item) end
  trend_acc = {}
  for text, inc in pairs(suggest_acc) do redis.call('ZINCRBY', key('suggest'), fmt(inc), text) end
  suggest_acc = {}
  for cat, row in pairs(suggest_cat_acc) do
    local skey = key('suggest_category', cat)
    for text, inc in pairs(row) do redis.call('ZINCRBY', skey, fmt(inc), text) end
    redis.call('SADD', key('suggest_categories'), cat)
    local extra = redis.call('ZCARD', skey) - cfg.suggest_category_cap
    if extra > 0 then redis.call('ZREMRANGEBYRANK', skey, 0, extra - 1) end
  end
  suggest_cat_acc = {}
end

local function trending(item, ts, w)
  local tau = cfg.trending_tau_ms
  if not t0 then t0 = ts; redis.call('SET', key('trending_t0'), int(t0)) end
  if (ts - t0) / tau > cfg.trending_rescale then
    flush_trending()
    redis.call('ZUNIONSTORE', key('trending'), 1, key('trending'), 'WEIGHTS', fmt(exp(-(ts - t0) / tau)))
    if redis.call('EXISTS', key('suggest')) == 1 then
      redis.call('ZUNIONSTORE', key('suggest'), 1, key('suggest'), 'WEIGHTS', fmt(exp(-(ts - t0) / tau)))
    end
    for _, cat in ipairs(redis.call('SMEMBERS', key('suggest_categories'))) do
      local skey = key('suggest_category', cat)
      redis.call('ZUNIONSTORE', skey, 1, skey, 'WEIGHTS', fmt(exp(-(ts - t0) / tau)))
    end
    t0 = ts
    redis.call('SET', key('trending_t0'), int(t0))
  end
  trend_acc[item] = (trend_acc[item] or 0) + w * exp((ts - t0) / tau)
end

-- a search whose results were chosen, for autocomplete: weighted and decayed like trending, on its
-- landmark t0 (called after trending, which has moved the landmark when due)
-- and within every level of the chosen product's category path ('Tools > Drills': 'Tools' and
-- 'Tools > Drills', levels trimmed as streamrec.analysis.category_levels does)
local function suggest(text, item, ts, w)
  local inc = w * exp((ts - t0) / cfg.trending_tau_ms)
  suggest_acc[text] = (suggest_acc[text] or 0) + inc
  local c = categories[item]
  if cfg.suggest_category_cap <= 0 or not c then return end
  local levels = {}
  for part in string.gmatch(c, '[^>]+') do
    local level = (string.gsub(string.gsub(part, '^%s+', ''), '%s+$', ''))
    level = (string.gsub(level, '%s+', ' '))
    if level ~= '' then
      levels[#levels + 1] = level
      local cat = table.concat(levels, ' > ')
      local row = suggest_cat_acc[cat]
      if not row then row = {}; suggest_cat_acc[cat] = row end
      row[text] = (row[text] or 0) + inc
    end
  end
end

local function covisit(a, b, acc)
  local row = acc[a]
  if not row then row = {}; acc[a] = row end
  row[b] = (row[b] or 0) + 1
end

-- category affinity, batch-local per user: read once (HGETALL), changed categories written back
-- once (HSET, HDEL of the evicted), TTL set once per batch
local affinities = {}
local function affinity(user, item, ts, w)
  local c = categories[item]
  if c == nil then
    local attr = redis.call('HMGET', key('attr', item), 'category', 'deleted')
    c = (attr[1] and attr[1] ~= '' and attr[2] ~= '1') and attr[1] or false
    categories[item] = c
  end
  if not c then return end
  local a = affinities[user]
  if not a then
    a = {v = {}, t = {}, n = 0, dirty = {}, gone = {}}
    local all = redis.call('HGETALL', key('affinity', user))
    for i = 1, #all, 2 do
      local f = all[i]
      if string.sub(f, 1, 1) == '@' then a.t[string.sub(f, 2)] = tonumber(all[i + 1])
      else a.v[f] = tonumber(all[i + 1]); a.n = a.n + 1 end
    end
    affinities[user] = a
  end
  local known = a.v[c] ~= nil
  a.v[c], a.t[c] = merge(a.v[c], a.t[c], ts, w, cfg.affinity_tau_ms)
  a.dirty[c], a.gone[c] = true, nil
  if known then return end
  a.n = a.n + 1
  if a.n > cfg.category_cap then
    -- the weakest other category, decayed to this event, makes room
    local worst, worst_v = nil, nil
    for f, fv in pairs(a.v) do
      if f ~= c then
        local dv = fv * exp(-math.max(0, ts - a.t[f]) / cfg.affinity_tau_ms)
        if not worst_v or dv < worst_v or (dv == worst_v and f < worst) then worst, worst_v = f, dv end
      end
    end
    if worst then
      a.v[worst], a.t[worst], a.dirty[worst], a.gone[worst] = nil, nil, nil, true
      a.n = a.n - 1
    end
  end
end

local function flush_affinities()
  for user, a in pairs(affinities) do
    local akey = key('affinity', user)
    local args, gone = {}, {}
    for c in pairs(a.dirty) do
      args[#args + 1] = c; args[#args + 1] = fmt(a.v[c]); args[#args + 1] = '@' .. c; args[#args + 1] = int(a.t[c])
    end
    for c in pairs(a.gone) do gone[#gone + 1] = c; gone[#gone + 1] = '@' .. c end
    if #gone > 0 then redis.call('HDEL', akey, unpack(gone)) end
    if #args > 0 then
      redis.call('HSET', akey, unpack(args))
      redis.call('EXPIRE', akey, cfg.user_ttl_s)
    end
  end
end

-- a user's last searches with a query (field qs, newest first, QS fields each: request_id, expansion
-- terms, query key, the page shown) link a click that names only its request_id to its search. The
-- page: a flag ('0' until its examinations are counted, then '1') and its first position, then the
-- item ids at the first memory_positions positions, joined by shown_sep ('' without click memory)
local QS = 4
local function remember_search(u, rid, terms, qkey, shown)
  if cfg.expansion_links <= 0 then return end
  local prev = u:get('qs')
  local old = prev and split(prev) or {}
  local kept = {rid, terms, qkey, shown}
  for i = 1, math.min(#old, QS * (cfg.expansion_links - 1)) do kept[#kept + 1] = old[i] end
  u:set('qs', table.concat(kept, SEP))
end

-- the click's search: the index of its first field in the split qs (0: none), and the split qs
local function linked_search(u, rid)
  local prev = u:get('qs')
  if not prev then return 0, {} end
  local old = split(prev)
  for i = 1, #old - QS + 1, QS do
    if old[i] == rid then return i, old end
  end
  return 0, old
end

-- click memory of a query: c<item> clicks and e<item> examinations, decayed to one reference ts
-- '@'; a page's first click adds theta(position) = (1 / (position + 1)) ^ eta to every product it
-- showed, eta as the learner estimated it (P:examination) or memory_eta; the least examined
-- products beyond memory_cap are evicted
local eta_now = nil
local function eta()
  if not eta_now then eta_now = tonumber(redis.call('GET', key('examination')) or '') or cfg.memory_eta end
  return eta_now
end

local function remember_click(qkey, item, ids, first_pos, count_page, ts, w)
  local mkey = key('memory', qkey)
  local all = redis.call('HGETALL', mkey)
  local c, e, ref = {}, {}, nil
  for i = 1, #all, 2 do
    local f, v = all[i], tonumber(all[i + 1])
    if f == '@' then ref = v elseif string.sub(f, 1, 1) == 'c' then c[string.sub(f, 2)] = v else e[string.sub(f, 2)] = v end
  end
  local tau = cfg.memory_tau_ms
  if not ref then
    ref = ts
  elseif ts > ref then
    local scale = exp(-(ts - ref) / tau)
    for k, v in pairs(c) do c[k] = v * scale end
    for k, v in pairs(e) do e[k] = v * scale end
    ref = ts
  end
  local add = exp(-(ref - ts) / tau)
  if count_page then
    local h = eta()
    for i, id in ipairs(ids) do e[id] = (e[id] or 0) + add * (1 / (first_pos + i)) ^ h end
  end
  c[item] = (c[item] or 0) + add * w
  local names, seen = {}, {}
  for k in pairs(e) do names[#names + 1] = k; seen[k] = true end
  for k in pairs(c) do if not seen[k] then names[#names + 1] = k end end
  if #names > cfg.memory_cap then
    table.sort(names, function(a, b)
      local ea, eb = e[a] or 0, e[b] or 0
      if ea ~= eb then return ea < eb end
      return a < b
    end)
    for i = 1, #names - cfg.memory_cap do c[names[i]] = nil; e[names[i]] = nil end
  end
  local args = {'@', int(ref)}
  for k, v in pairs(c) do args[#args + 1] = 'c' .. k; args[#args + 1] = fmt(v) end
  for k, v in pairs(e) do args[#args + 1] = 'e' .. k; args[#args + 1] = fmt(v) end
  redis.call('DEL', mkey)
  redis.call('HSET', mkey, unpack(args))
  redis.call('EXPIRE', mkey, cfg.item_ttl_s)
end

-- a click (add to cart, purchase: weight w) on a remembered search page: into its query's click
-- memory (the page's examinations once)
local function memory_click(u, qs, at, item, ts, w)
  local qkey, shown = qs[at + 2], qs[at + 3]
  if qkey == '' or shown == '' then return end
  local parts = split(shown, cfg.shown_sep)
  local ids, on_page = {}, false
  for i = 2, #parts do
    ids[#ids + 1] = parts[i]
    if parts[i] == item then on_page = true end
  end
  if not on_page then return end
  local count_page = string.sub(parts[1], 1, 1) == '0'
  remember_click(qkey, item, ids, tonumber(string.sub(parts[1], 2)), count_page, ts, w)
  if count_page then
    qs[at + 3] = '1' .. string.sub(shown, 2)
    u:set('qs', table.concat(qs, SEP))
  end
end

-- the item's expansion hash: every term decayed to one reference ts '@', the weakest terms
-- evicted down to expansion_cap; each change is logged in qxlog:changed for serving
local expansion_changed = false
local function expand(item, terms, ts, w)
  local xkey = key('expansion', item)
  local all = redis.call('HGETALL', xkey)
  local h, ref = {}, nil
  for i = 1, #all, 2 do
    if all[i] == '@' then ref = tonumber(all[i + 1]) else h[all[i]] = tonumber(all[i + 1]) end
  end
  local tau = cfg.expansion_tau_ms
  if not ref then
    ref = ts
  elseif ts > ref then
    local scale = exp(-(ts - ref) / tau)
    for t, v in pairs(h) do h[t] = v * scale end
    ref = ts
  end
  local add = w * exp(-(ref - ts) / tau)
  for t in string.gmatch(terms, '%S+') do h[t] = (h[t] or 0) + add end
  local names = {}
  for t in pairs(h) do names[#names + 1] = t end
  if #names > cfg.expansion_cap then
    table.sort(names, function(a, b) if h[a] ~= h[b] then return h[a] > h[b] end return a > b end)
    for i = cfg.expansion_cap + 1, #names do h[names[i]] = nil end
  end
  local args = {'@', int(ref)}
  for t, v in pairs(h) do args[#args + 1] = t; args[#args + 1] = fmt(v) end
  redis.call('DEL', xkey)
  redis.call('HSET', xkey, unpack(args))
  redis.call('EXPIRE', xkey, cfg.item_ttl_s)
  redis.call('ZADD', key('expansion_log'), redis.call('INCR', key('expansion_seq')), item)
  expansion_changed = true
end

-- a duplicate's event_id also names the legitimate first copy, so only other verdicts are marked
-- (its event time ts in the recent list orders the decisions of several keyspaces, on a cluster)
local function quarantine(off, reason, eid, user, ts, raw)
  redis.call('RPUSH', KEYS[2], 'q' .. SEP .. int(off) .. SEP .. reason .. SEP .. user .. SEP .. raw)
  if reason ~= 'duplicate_event' then redis.call('SET', key('quarantined', eid), reason, 'EX', cfg.quarantine_ttl_s) end
  redis.call('HINCRBY', key('quarantine_counts'), reason, 1)
  local decision = {event_id = eid, user_id = user, reason = reason, offset = off, ts = ts}
  redis.call('LPUSH', key('quarantine_recent'), cjson.encode(decision))
  redis.call('LTRIM', key('quarantine_recent'), 0, cfg.quarantine_recent_n - 1)
end

local RECORD_HEAD = '^(%d+)' .. SEP .. '(.)'
local applied, skipped = 0, 0
local reasons = {}
for r = 5, #ARGV do
  local rec = ARGV[r]
  local offs, kind = string.match(rec, RECORD_HEAD)
  local off = tonumber(offs)
  local f = split(rec, SEP, #offs + 4)
  if off < stored then
    skipped = skipped + 1
  elseif kind == 'r' then
    -- f = reason, DeadLetter JSON, key (the key may contain SEP: rejoin the tail)
    local source_key = table.concat(f, SEP, 3)
    redis.call('RPUSH', KEYS[2], 'd' .. SEP .. f[2] .. SEP .. source_key)
    redis.call('HINCRBY', key('dlq_counts'), f[1], 1)
    applied = applied + 1
  elseif kind == 'u' or kind == 'x' then
    local item, ts = f[1], tonumber(f[2])
    local akey = key('attr', item)
    if ts >= tonumber(redis.call('HGET', akey, 'ts') or '-1') then
      categories[item] = nil
      redis.call('DEL', akey)
      if kind == 'u' then
        redis.call('HSET', akey, 'title', table.concat(f, SEP, 5), 'category', f[3], 'price', f[4], 'ts', int(ts))
      else
        redis.call('HSET', akey, 'deleted', '1', 'ts', int(ts))
        redis.call('EXPIRE', akey, cfg.tombstone_ttl_s)  -- a tombstone is not catalog state
      end
    end
    applied = applied + 1
  elseif kind == 'p' then
    -- f = item, ts, named fields, category, price, title: a patch changes a live item's named fields
    local item, ts, named = f[1], tonumber(f[2]), f[3]
    local akey = key('attr', item)
    local known = redis.call('HMGET', akey, 'ts', 'deleted')
    if known[1] and not known[2] and ts >= tonumber(known[1]) then
      categories[item] = nil
      redis.call('HSET', akey, 'ts', int(ts))
      if string.find(named, 'c', 1, true) then redis.call('HSET', akey, 'category', f[4]) end
      if string.find(named, 'p', 1, true) then redis.call('HSET', akey, 'price', f[5]) end
      if string.find(named, 't', 1, true) then redis.call('HSET', akey, 'title', table.concat(f, SEP, 6)) end
    end
    applied = applied + 1
  else
    local eid, typ, user, item, ts, session, rid, terms, raw
    if kind == 'e' then
      eid, typ, user, item, ts, session, rid, terms, raw = f[1], f[2], f[3], f[4], tonumber(f[5]), f[6], f[7], f[8], f[10]
    else
      eid, typ, user, ts, rid, terms, raw = f[1], 'impression', f[2], tonumber(f[3]), f[5], f[6], f[9]
    end
    local reason = nil
    local u = hash('user', user)
    local rl
    if kind == 'i' and cfg.dedup_lookback > 0 then
      -- an impression published twice (a producer retry, a client retrying a 503) counts once:
      -- the user's last dedup_lookback impression ids, newest first, in the user hash
      if string.find(SEP .. (u:get('imps') or '') .. SEP, SEP .. eid .. SEP, 1, true) then
        reason = 'duplicate_event'
      end
    end
    if kind == 'e' then
      rl = recent(user)
      local rows = rl.rows
      for i = 1, math.min(#rows, cfg.dedup_lookback) do
        if entry(rows, i)[1] == eid then reason = 'duplicate_event'; break end
      end
      if not reason and rows[1] then
        local prev = entry(rows, 1)
        if prev[2] == item and prev[3] == typ and abs(ts - prev[4]) < cfg.bot_repeat_gap_ms then
          reason = 'rapid_repeat'
        end
      end
    end
    if not reason and over_rate(u, ts, cfg.bot_user_limit) then reason = 'user_burst' end
    local it
    if kind == 'e' then
      it = hash('item', item)
      if not reason and over_rate(it, ts, cfg.bot_item_limit) then reason = 'item_burst' end
    end
    if reason then
      quarantine(off, reason, eid, user, ts, raw)
      reasons[#reasons + 1] = reason
    elseif kind == 'i' then
      for _, id in ipairs(cjson.decode(f[4])) do shown(id, ts) end
      if cfg.dedup_lookback > 0 then
        local prev = u:get('imps')
        local shown = prev and split(prev) or {}
        local kept = {eid}
        for i = 1, math.min(#shown, cfg.dedup_lookback - 1) do kept[#kept + 1] = shown[i] end
        u:set('imps', table.concat(kept, SEP))
      end
      local qkey, first_pos = f[7], tonumber(f[8])
      if terms ~= '' or qkey ~= '' then
        local shown = ''
        if qkey ~= '' and first_pos < cfg.memory_positions then
          local parts = {'0' .. int(first_pos)}
          local ids = cjson.decode(f[4])
          for i = 1, math.min(#ids, cfg.memory_positions - first_pos) do parts[#parts + 1] = ids[i] end
          shown = table.concat(parts, cfg.shown_sep)
        end
        remember_search(u, rid, terms, qkey, shown)
      end
      applied = applied + 1
    else
      local w = cfg.weights[typ]
      -- co-visitation with this user's earlier distinct items of the same session, within the window
      local rows = rl.rows
      -- and bought together: an item's first add to cart or purchase in the session with the
      -- basket's earlier ones (its purchase after its add to cart pairs nothing again)
      local seen, basket, in_basket = {[item] = true}, {}, false
      local buys = cfg.basket_types[typ]
      for i = 1, math.min(#rows, cfg.covis_lookback) do
        local e = entry(rows, i)
        local other, otyp = e[2], e[3]
        if e[5] == session and abs(ts - e[4]) <= cfg.covis_window_ms then
          if not seen[other] then
            seen[other] = true
            covisit(item, other, covis_acc)
            covisit(other, item, covis_acc)
          end
          if buys and cfg.basket_types[otyp] then
            if other == item then in_basket = true
            elseif not basket[other] then basket[other] = true; basket[#basket + 1] = other end
          end
        end
      end
      if not in_basket then
        for _, other in ipairs(basket) do
          covisit(item, other, cobuy_acc)
          covisit(other, item, cobuy_acc)
        end
      end
      table.insert(rows, 1, {eid, item, typ, ts, session})
      rows[cfg.recent_cap + 1] = nil
      rl.new[#rl.new + 1] = eid .. SEP .. item .. SEP .. typ .. SEP .. int(ts) .. SEP .. session
      local n_typ = counter_fields[typ].n
      u:set(n_typ, (u:num(n_typ) or 0) + 1)
      bump_decayed(it, typ, ts, 1)
      affinity(user, item, ts, w)
      trending(item, ts, w)
      if f[9] ~= '' and typ ~= 'view' then suggest(f[9], item, ts, w) end
      add_to_session(user, session, item, ts)
      local ew = cfg.expansion_weights[typ]
      local at, qs = 0, nil
      local mw = cfg.memory_weights[typ]
      if rid ~= '' and (ew > 0 or mw > 0) then at, qs = linked_search(u, rid) end
      if ew > 0 then
        if terms == '' and at > 0 then terms = qs[at + 1] end
        if terms ~= '' then expand(item, terms, ts, ew) end
      end
      if mw > 0 and at > 0 and cfg.memory_cap > 0 then memory_click(u, qs, at, item, ts, mw) end
      applied = applied + 1
    end
    if ts > clock then clock = ts end
  end
end
-- a key new in this batch needs its TTL now, unless its user's or item's hash refreshes the TTLs of
-- its keys at the end (hashes are flushed last, when those keys exist)
local function refreshed_later(kind, id)
  local h = hashes[kind][id]
  return h ~= nil and h:get('x') ~= today
end
flush_affinities()
for user, rl in pairs(recents) do
  if #rl.new > 0 then
    local rkey = key('recent', user)
    local len = redis.call('LPUSH', rkey, unpack(rl.new))
    if len > cfg.recent_cap then redis.call('LTRIM', rkey, 0, cfg.recent_cap - 1) end
    if len == #rl.new and not refreshed_later('user', user) then redis.call('EXPIRE', rkey, cfg.user_ttl_s) end
  end
end
for name, acc in pairs({covis = covis_acc, cobuy = cobuy_acc}) do
  for a, row in pairs(acc) do
    local ckey = key(name, a)
    local added = 0
    for other, inc in pairs(row) do redis.call('ZINCRBY', ckey, inc, other); added = added + 1 end
    local card = redis.call('ZCARD', ckey)
    if card > cfg.covis_top_n then redis.call('ZREMRANGEBYRANK', ckey, 0, card - cfg.covis_top_n - 1) end
    if card <= added and not refreshed_later('item', a) then redis.call('EXPIRE', ckey, cfg.item_ttl_s) end
  end
end
for token, new in pairs(session_new) do
  local skey = key('session', token)
  local len = redis.call('LPUSH', skey, unpack(new))
  if len > cfg.session_cap then redis.call('LTRIM', skey, 0, cfg.session_cap - 1) end
  redis.call('EXPIRE', skey, cfg.session_ttl_s)
end
for item, row in pairs(item_sess) do
  local zkey = key('item_sessions', item)
  local args, added = {'GT'}, 0
  for token, ts in pairs(row) do args[#args + 1] = int(ts); args[#args + 1] = token; added = added + 1 end
  redis.call('ZADD', zkey, unpack(args))
  local card = redis.call('ZCARD', zkey)
  if card > cfg.item_sessions_cap then redis.call('ZREMRANGEBYRANK', zkey, 0, card - cfg.item_sessions_cap - 1) end
  if card <= added and not refreshed_later('item', item) then redis.call('EXPIRE', zkey, cfg.item_ttl_s) end
end
if next(trend_acc) then
  local suggested = next(suggest_acc) ~= nil
  flush_trending()
  local extra = redis.call('ZCARD', key('trending')) - cfg.trending_cap
  if extra > 0 then redis.call('ZREMRANGEBYRANK', key('trending'), 0, extra - 1) end
  if suggested then
    extra = redis.call('ZCARD', key('suggest')) - cfg.suggest_cap
    if extra > 0 then redis.call('ZREMRANGEBYRANK', key('suggest'), 0, extra - 1) end
  end
end
if expansion_changed then
  local extra = redis.call('ZCARD', key('expansion_log')) - cfg.expansion_log_cap
  if extra > 0 then redis.call('ZREMRANGEBYRANK', key('expansion_log'), 0, extra - 1) end
end
local IMP = counter_fields['impression']
for id, a in pairs(shown_acc) do
  local h = hashes.item[id]
  if h then
    h:set(IMP.n, (h:num(IMP.n) or 0) + a[1])
    local v, t = merge(h:num(IMP.d), h:num(IMP.t), a[3], a[2], cfg.item_tau_ms)
    h:set(IMP.d, v); h:set(IMP.t, t)
  else
    local ikey = key('item', id)
    local cur = redis.call('HMGET', ikey, IMP.n, IMP.d, IMP.t, 'x')
    local v, t = merge(tonumber(cur[2]), tonumber(cur[3]), a[3], a[2], cfg.item_tau_ms)
    local args = {IMP.n, int((tonumber(cur[1]) or 0) + a[1]), IMP.d, fmt(v), IMP.t, int(t)}
    local refresh = cur[4] ~= today
    if refresh then args[#args + 1] = 'x'; args[#args + 1] = today end
    redis.call('HSET', ikey, unpack(args))
    if refresh then
      redis.call('EXPIRE', ikey, cfg.item_ttl_s)
      for _, name in ipairs(HASH_KINDS.item.also) do redis.call('EXPIRE', key(name, id), cfg.item_ttl_s) end
    end
  end
end
for _, kind in pairs(hashes) do
  for _, h in pairs(kind) do h:flush() end
end
if clock >= 0 then redis.call('SET', key('clock'), int(clock)) end
if new_off > stored then redis.call('SET', KEYS[1], int(new_off)) end
local out = {'ok', stored, applied, skipped, redis.call('LLEN', KEYS[2])}
for i = 1, #reasons do out[#out + 1] = reasons[i] end
return out
