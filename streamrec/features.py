"""Online features in Redis: one layout, written by ``consumers/`` and read by learner and serving.

Every key starts with ``Settings.redis_prefix`` (``P`` below). Writes happen only inside
:data:`APPLY_LUA`, one atomic script call per Kafka partition batch that also advances that
partition's offset key, so a feature is never applied twice nor lost (see ``consumers/service.py``).

Time is *event time* (``Event.ts``, epoch ms), never the wall clock, so a replay of old data builds
the same features as the live stream did. Decayed values use a lazy exponential decay: each value
``v`` is stored with its reference time ``t``; an event at ``ts`` adds ``exp(-(t - ts)/tau)`` when
``ts <= t`` and otherwise rescales ``v`` to ``ts`` first, so the result equals
``sum(exp(-(t_max - ts_i)/tau))`` whatever the order events arrive in. Readers decay to ``now_ms``
(default: the stream clock ``P:clock``, the newest event time seen).

TTLs are wall-clock and refreshed at most once a day per user / item (hash field ``x`` holds the
day of the last refresh, and the user's recent list / the item's co-visitation set are refreshed
with it), so an idle user or item disappears between its TTL and TTL + 1 day after its last event.

Keys (defaults in :class:`FeatureConfig`, env ``STREAMREC_FEATURE_*``):

=================================  ===========================================================
``P:u:{user}:recent``  LIST        newest first, ``event_id \\x1f item \\x1f type \\x1f ts \\x1f
                                   session``; trimmed to ``recent_cap`` entries after each batch;
                                   TTL ``user_ttl_s``.
``P:u:{user}``          HASH       ``n:{type}`` exact event count per interaction type (no decay);
                                   ``rl:b``/``rl:n`` bot-filter window and its event count
                                   (consumers/botfilter.py); ``x`` TTL refresh day; TTL
                                   ``user_ttl_s``.
``P:u:{user}:cat``      HASH       category affinity: ``{category}`` decayed, weighted
                                   (``weight_{type}``) interaction count with items of that
                                   category, ``@{category}`` its reference ts; half-life
                                   ``affinity_half_life_s``; at most ``category_cap`` categories
                                   (the weakest is evicted); TTL ``user_ttl_s``.
``P:i:{item}``          HASH       ``n:{type}`` exact count per type incl. ``impression`` (one per
                                   impression list the item was shown in); ``d:{type}`` decayed
                                   count, ``t:{type}`` its reference ts (half-life
                                   ``item_half_life_s``); CTR = (d:click + a)/(d:impression + b);
                                   ``rl:b``/``rl:n`` bot-filter window; ``x`` TTL refresh day;
                                   TTL ``item_ttl_s``.
``P:cv:{item}``         ZSET       co-visitation: other item -> number of times both were
                                   interacted with by one user in one session within
                                   ``covis_window_s`` (looking back ``covis_lookback`` recent items);
                                   trimmed to the top ``covis_top_n`` after each batch; TTL
                                   ``item_ttl_s``.
``P:trending``          ZSET       item -> weighted decayed popularity ``w * exp((ts - t0)/tau)``
                                   (forward decay, half-life ``trending_half_life_s``), ``P:trending:t0``
                                   the landmark ``t0`` (scores are rescaled when it moves);
                                   trimmed to ``trending_cap`` items after each batch. Scores
                                   compare within one read; no TTL (one key).
``P:attr:{item}``       HASH       catalog attributes ``title``, ``category``, ``price``, ``ts`` of
                                   the op; an older op never overwrites a newer one; a delete
                                   leaves ``deleted=1`` and ``ts``. No TTL (catalog state).
``P:clock``             STRING     newest event ts applied (the stream clock).
``P:q:{event_id}``      STRING     the quarantine reason of a quarantined event (not set for
                                   ``duplicate_event``: that id names a legitimate first copy); TTL
                                   ``quarantine_ttl_s`` (see :meth:`FeatureStore.is_quarantined`).
``P:q:counts``          HASH       reason -> number of quarantined events.
``P:q:recent``          LIST       the last 20 quarantine decisions (JSON: event_id, user_id,
                                   reason, offset), for ``streamrec status``.
``P:dlq:counts``        HASH       reject reason -> number of dead-lettered records.
``P:off:{group}:{topic}:{partition}`` STRING  next offset to apply (the source of truth for
                                   where a consumer resumes; Kafka's committed offset trails it).
``P:outbox:{group}:{topic}:{partition}`` LIST  dead letters / quarantine records produced with
                                   the batch, waiting to be published (see consumers/outbox.py).
``P:relayed:{group}:{topic}:{partition}`` HASH  output ``topic:partition`` -> offset after the
                                   last record published from that outbox (recovery scans from it).
=================================  ===========================================================

Memory bound: a user holds at most ``recent_cap`` list entries (≈ 60 B each), ``2 *
category_cap`` affinity fields and 4 counters: ≈ 5 KB with the defaults. An item holds ≤ 15
hash fields (≈ 0.5 KB) plus ``covis_top_n`` co-visitation members (≈ 3 KB). Global keys:
``trending_cap`` members. Idle users/items expire after their TTL.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import redis
from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from streamrec.settings import Settings
from streamrec.store import connect

INTERACTIONS = ("view", "click", "add_to_cart", "purchase")
SEP = "\x1f"


class FeatureConfig(BaseSettings):
    """Decay, caps and TTLs of the online features (env ``STREAMREC_FEATURE_*``)."""

    model_config = SettingsConfigDict(env_prefix="STREAMREC_FEATURE_", extra="ignore", frozen=True)

    recent_cap: int = Field(50, ge=1, le=1000, description="also bounds dedup_lookback and covis_lookback")
    dedup_lookback: int = Field(20, ge=0, le=1000, description="recent events searched for a repeated event_id")
    item_half_life_s: float = Field(86_400.0, gt=0)
    affinity_half_life_s: float = Field(7 * 86_400.0, gt=0)
    trending_half_life_s: float = Field(3_600.0, gt=0)
    covis_window_s: float = Field(1_800.0, gt=0)
    covis_lookback: int = Field(10, ge=0, le=100)
    covis_top_n: int = Field(50, ge=1)
    category_cap: int = Field(30, ge=1)
    trending_cap: int = Field(1_000, ge=1)
    user_ttl_s: int = Field(30 * 86_400, ge=60)
    item_ttl_s: int = Field(90 * 86_400, ge=60)
    quarantine_ttl_s: int = Field(7 * 86_400, ge=60)
    ctr_prior_clicks: float = Field(0.5, ge=0, description="CTR = (clicks + a) / (impressions + b): a")
    ctr_prior_impressions: float = Field(25.0, gt=0, description="b; a/b = 2% prior CTR")
    weight_view: float = 1.0
    weight_click: float = 2.0
    weight_add_to_cart: float = 4.0
    weight_purchase: float = 8.0

    @model_validator(mode="after")
    def _lookbacks_fit(self) -> FeatureConfig:
        if max(self.dedup_lookback, self.covis_lookback) > self.recent_cap:
            raise ValueError("dedup_lookback and covis_lookback search the recent list: keep them <= recent_cap")
        return self

    def tau_ms(self, half_life_s: float) -> float:
        return half_life_s * 1000.0 / math.log(2)

    def weight(self, event_type: str) -> float:
        return float(getattr(self, f"weight_{event_type}"))


@dataclass(frozen=True)
class RecentItem:
    item_id: str
    type: str
    ts: int


@dataclass(frozen=True)
class ItemStats:
    counts: dict[str, float]
    impressions: float
    clicks: float
    ctr: float


def decay(value: float, ref_ts: float, now_ms: float, tau_ms: float) -> float:
    """A value stored at ``ref_ts`` seen from ``now_ms`` (never grows when ``now_ms`` is older)."""
    return value * math.exp(-max(0.0, now_ms - ref_ts) / tau_ms)


class Keys:
    """Key names in one place, so writers (the Lua script receives the prefix) and readers agree."""

    def __init__(self, prefix: str):
        self.p = prefix

    def recent(self, user: str) -> str: return f"{self.p}u:{user}:recent"
    def user(self, user: str) -> str: return f"{self.p}u:{user}"
    def affinity(self, user: str) -> str: return f"{self.p}u:{user}:cat"
    def item(self, item: str) -> str: return f"{self.p}i:{item}"
    def covis(self, item: str) -> str: return f"{self.p}cv:{item}"
    def attr(self, item: str) -> str: return f"{self.p}attr:{item}"
    def quarantined(self, event_id: str) -> str: return f"{self.p}q:{event_id}"
    def offset(self, group: str, topic: str, partition: int) -> str:
        return f"{self.p}off:{group}:{topic}:{partition}"
    def outbox(self, group: str, topic: str, partition: int) -> str:
        return f"{self.p}outbox:{group}:{topic}:{partition}"
    def relayed(self, group: str, topic: str, partition: int) -> str:
        return f"{self.p}relayed:{group}:{topic}:{partition}"

    @property
    def trending(self) -> str: return f"{self.p}trending"
    @property
    def trending_t0(self) -> str: return f"{self.p}trending:t0"
    @property
    def clock(self) -> str: return f"{self.p}clock"
    @property
    def quarantine_counts(self) -> str: return f"{self.p}q:counts"


class FeatureStore:
    """Readers of the online features (learner, serving) — the layout is in the module docstring."""

    def __init__(self, r: redis.Redis, prefix: str, config: FeatureConfig | None = None):
        self.r = r
        self.keys = Keys(prefix)
        self.config = config or FeatureConfig()

    @classmethod
    def from_settings(cls, s: Settings) -> FeatureStore:
        return cls(connect(s), s.redis_prefix)

    def clock_ms(self) -> int | None:
        """The newest event time applied, or None before the first event."""
        v = self.r.get(self.keys.clock)
        return int(float(v)) if v is not None else None

    def _now(self, now_ms: int | None) -> float:
        if now_ms is not None:
            return float(now_ms)
        clock = self.clock_ms()
        return float(clock) if clock is not None else time.time() * 1000.0

    def recent_items(self, user_id: str, n: int = 20) -> list[RecentItem]:
        out = []
        for entry in self.r.lrange(self.keys.recent(user_id), 0, max(0, n - 1)) if n > 0 else []:
            _eid, item, typ, ts, _session = entry.split(SEP)
            out.append(RecentItem(item_id=item, type=typ, ts=int(ts)))
        return out

    def user_counts(self, user_id: str) -> dict[str, int]:
        """Exact (undecayed) interaction counts of a user per type."""
        raw = self.r.hgetall(self.keys.user(user_id))
        return {k[2:]: int(v) for k, v in raw.items() if k.startswith("n:")}

    def item_counts(self, item_id: str) -> dict[str, int]:
        """Exact (undecayed) counts of an item per event type, ``impression`` included."""
        raw = self.r.hgetall(self.keys.item(item_id))
        return {k[2:]: int(v) for k, v in raw.items() if k.startswith("n:")}

    def item_stats(self, item_ids: Sequence[str], now_ms: int | None = None) -> list[ItemStats]:
        pipe = self.r.pipeline(transaction=False)
        if now_ms is None:
            pipe.get(self.keys.clock)
        for item in item_ids:
            pipe.hgetall(self.keys.item(item))
        replies = pipe.execute()
        if now_ms is None:
            clock, replies = replies[0], replies[1:]
            now = float(clock) if clock is not None else time.time() * 1000.0
        else:
            now = float(now_ms)
        cfg = self.config
        tau = cfg.tau_ms(cfg.item_half_life_s)
        stats = []
        for h in replies:
            def decayed(t: str) -> float:
                v = h.get(f"d:{t}")
                return decay(float(v), float(h[f"t:{t}"]), now, tau) if v is not None else 0.0
            counts = {t: decayed(t) for t in INTERACTIONS}
            impressions, clicks = decayed("impression"), counts["click"]
            ctr = (clicks + cfg.ctr_prior_clicks) / (impressions + cfg.ctr_prior_impressions)
            stats.append(ItemStats(counts=counts, impressions=impressions, clicks=clicks, ctr=ctr))
        return stats

    def covisited(self, item_id: str, n: int = 20) -> list[tuple[str, float]]:
        if n <= 0:
            return []
        return [(m, float(s)) for m, s in self.r.zrevrange(self.keys.covis(item_id), 0, n - 1, withscores=True)]

    def trending(self, n: int = 20) -> list[tuple[str, float]]:
        """Top items by decayed popularity; scores are relative (comparable within one call)."""
        if n <= 0:
            return []
        return [(m, float(s)) for m, s in self.r.zrevrange(self.keys.trending, 0, n - 1, withscores=True)]

    def category_affinity(self, user_id: str, now_ms: int | None = None) -> dict[str, float]:
        """Category -> decayed weighted interaction count, decayed to ``now_ms`` (stream clock)."""
        raw = self.r.hgetall(self.keys.affinity(user_id))
        if not raw:
            return {}
        now = self._now(now_ms)
        tau = self.config.tau_ms(self.config.affinity_half_life_s)
        return {c: decay(float(v), float(raw[f"@{c}"]), now, tau)
                for c, v in raw.items() if not c.startswith("@") and f"@{c}" in raw}

    def item_attributes(self, item_ids: Sequence[str]) -> list[dict | None]:
        pipe = self.r.pipeline(transaction=False)
        for item in item_ids:
            pipe.hgetall(self.keys.attr(item))
        out: list[dict | None] = []
        for h in pipe.execute():
            if not h or h.get("deleted") == "1":
                out.append(None)
                continue
            attrs: dict = {"title": h.get("title"), "category": h.get("category") or None}
            attrs["price"] = float(h["price"]) if h.get("price") else None
            out.append(attrs)
        return out

    def is_quarantined(self, event_id: str) -> str | None:
        """The bot-filter reason if this event was quarantined (kept ``quarantine_ttl_s``), else None."""
        return self.r.get(self.keys.quarantined(event_id))

    def quarantine_counts(self) -> dict[str, int]:
        return {k: int(v) for k, v in self.r.hgetall(self.keys.quarantine_counts).items()}

    def recent_quarantine(self, n: int = 20) -> list[dict]:
        """The newest quarantine decisions (event_id, user_id, reason, offset), newest first."""
        return [json.loads(x) for x in self.r.lrange(f"{self.keys.p}q:recent", 0, max(0, n - 1))]

    def dead_letter_counts(self) -> dict[str, int]:
        return {k: int(v) for k, v in self.r.hgetall(f"{self.keys.p}dlq:counts").items()}


# --- the writer ------------------------------------------------------------------------------
#
# One call applies one batch of one Kafka partition, atomically (a Lua script runs alone in Redis):
# KEYS[1] = the partition's offset key, KEYS[2] = its outbox.
# ARGV[1] = prefix, ARGV[2] = config JSON (FeatureConfig + bot thresholds), ARGV[3] = next offset
# after the batch, ARGV[4] = its first offset (records may have been left out, e.g. invalid catalog
# ops), then one string per record, fields joined by U+001F (see consumers/apply.py):
#   offset, kind, then for kind
#   'e' interaction     event_id, type, user, item, ts, session, canonical JSON
#   'i' impression      event_id, user, ts, JSON list of item ids, canonical JSON
#   'u' catalog upsert  item, ts, category, price ("" = none), title
#   'x' catalog delete  item, ts
#   'r' dead letter     reason, DeadLetter JSON, source key (last: it may hold any byte)
# JSON text never holds a raw U+001F (JSON escapes control characters) and ids are checked
# for it by consumers/validate.py, so the split is unambiguous.
# Records with offset < stored offset were applied by an earlier call (a crash before the Kafka
# commit, or another consumer that owned the partition) and are skipped: that is the
# effectively-once guarantee. User and item hashes are read once per batch, updated in Lua tables
# and written back once at the end. Returns {status, stored_before, applied, skipped, outbox_len,
# quarantined reasons...}; status 'gap' (nothing applied) if the batch starts after the stored offset.
APPLY_LUA = r"""
local P = ARGV[1]
local cfg = cjson.decode(ARGV[2])
local new_off = tonumber(ARGV[3])
local stored = tonumber(redis.call('GET', KEYS[1]) or '-1')
if stored >= 0 and tonumber(ARGV[4]) > stored then
  return {'gap', stored}
end
local SEP = '\031'
local exp, floor, abs = math.exp, math.floor, math.abs
-- TTLs are refreshed at most once per wall-clock day per key (hash field x = that day), so an
-- idle key expires between ttl and ttl + 1 day after its last update; new keys get it at once
local today = tostring(floor(tonumber(redis.call('TIME')[1]) / 86400))
local function fmt(v) return string.format('%.17g', v) end
local function int(v) return string.format('%d', v) end

local function split(s)
  local out, start = {}, 1
  while true do
    local i = string.find(s, SEP, start, true)
    if not i then out[#out + 1] = string.sub(s, start); return out end
    out[#out + 1] = string.sub(s, start, i - 1)
    start = i + 1
  end
end

-- a recent-list entry: event_id, item, type, ts, session
local function entry_fields(s)
  return string.match(s, '^[^\031]*\031([^\031]*)\031([^\031]*)\031([^\031]*)\031(.*)$')
end

-- lazy decay: (v, t) plus weight w at ts -> sum of w_i * exp(-(t_ref - ts_i)/tau), order-free
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
  local b, n = tonumber(h.get('rl:b')), tonumber(h.get('rl:n'))
  if not b or bucket > b then b, n = bucket, 0 elseif bucket < b then return false end
  h.set('rl:b', int(b)); h.set('rl:n', int(n + 1))
  return n + 1 > limit
end

-- batch-local view of a hash: read once (HGETALL), written back once (HSET of changed fields)
-- ``also`` lists keys (recent list, co-visitation) whose TTL is refreshed together with the hash
local hashes = {}
local function hash(key, ttl, also)
  local h = hashes[key]
  if h then return h end
  local f, dirty = {}, {}
  local all = redis.call('HGETALL', key)
  for i = 1, #all, 2 do f[all[i]] = all[i + 1] end
  h = {get = function(k) return f[k] end, set = function(k, v) f[k] = v; dirty[k] = true end,
       flush = function()
         local args = {}
         local refresh = f.x ~= today
         if refresh then f.x = today; dirty.x = true end
         for k in pairs(dirty) do args[#args + 1] = k; args[#args + 1] = f[k] end
         if #args > 0 then redis.call('HSET', key, unpack(args)) end
         if refresh then
           redis.call('EXPIRE', key, ttl)
           for _, k in ipairs(also) do redis.call('EXPIRE', k, ttl) end
         end
       end}
  hashes[key] = h
  return h
end

local function bump_decayed(h, typ, ts, w)
  h.set('n:' .. typ, int((tonumber(h.get('n:' .. typ)) or 0) + 1))
  local v, t = merge(tonumber(h.get('d:' .. typ)), tonumber(h.get('t:' .. typ)), ts, w, cfg.item_tau_ms)
  h.set('d:' .. typ, fmt(v)); h.set('t:' .. typ, int(t))
end

-- recent lists: read once per batch (LRANGE), new entries pushed and trimmed at the end
local recents = {}
local function recent(user)
  local r = recents[user]
  if r then return r end
  r = {rows = redis.call('LRANGE', P .. 'u:' .. user .. ':recent', 0, cfg.recent_cap - 1), new = {}}
  recents[user] = r
  return r
end

local clock = tonumber(redis.call('GET', P .. 'clock') or '-1')
local t0 = tonumber(redis.call('GET', P .. 'trending:t0') or '')
-- increments summed per batch and written once at the end (or before a trending rescale)
local covis_acc, trend_acc, categories = {}, {}, {}

local function flush_trending()
  for item, inc in pairs(trend_acc) do redis.call('ZINCRBY', P .. 'trending', fmt(inc), item) end
  trend_acc = {}
end

local function trending(item, ts, w)
  local tau = cfg.trending_tau_ms
  if not t0 then t0 = ts; redis.call('SET', P .. 'trending:t0', int(t0)) end
  if (ts - t0) / tau > 30 then
    flush_trending()
    redis.call('ZUNIONSTORE', P .. 'trending', 1, P .. 'trending', 'WEIGHTS', fmt(exp(-(ts - t0) / tau)))
    t0 = ts
    redis.call('SET', P .. 'trending:t0', int(t0))
  end
  trend_acc[item] = (trend_acc[item] or 0) + w * exp((ts - t0) / tau)
end

local function covisit(a, b)
  local row = covis_acc[a]
  if not row then row = {}; covis_acc[a] = row end
  row[b] = (row[b] or 0) + 1
end

local function affinity(user, item, ts, w)
  local c = categories[item]
  if c == nil then
    local attr = redis.call('HMGET', P .. 'attr:' .. item, 'category', 'deleted')
    c = (attr[1] and attr[1] ~= '' and attr[2] ~= '1') and attr[1] or false
    categories[item] = c
  end
  if not c then return end
  local key = P .. 'u:' .. user .. ':cat'
  local cur = redis.call('HMGET', key, c, '@' .. c)
  local v, t = merge(tonumber(cur[1]), tonumber(cur[2]), ts, w, cfg.affinity_tau_ms)
  redis.call('HSET', key, c, fmt(v), '@' .. c, int(t))
  redis.call('EXPIRE', key, cfg.user_ttl_s)
  if not cur[1] and redis.call('HLEN', key) > 2 * cfg.category_cap then
    local all = redis.call('HGETALL', key)
    local h = {}
    for i = 1, #all, 2 do h[all[i]] = all[i + 1] end
    local worst, worst_v = nil, nil
    for f, fv in pairs(h) do
      if string.sub(f, 1, 1) ~= '@' and f ~= c then
        local dv = tonumber(fv) * exp(-math.max(0, ts - tonumber(h['@' .. f])) / cfg.affinity_tau_ms)
        if not worst_v or dv < worst_v or (dv == worst_v and f < worst) then worst, worst_v = f, dv end
      end
    end
    if worst then redis.call('HDEL', key, worst, '@' .. worst) end
  end
end

-- a duplicate's event_id also names the legitimate first copy, so only other verdicts are marked
local function quarantine(off, reason, eid, user, raw)
  redis.call('RPUSH', KEYS[2], 'q' .. SEP .. int(off) .. SEP .. reason .. SEP .. user .. SEP .. raw)
  if reason ~= 'duplicate_event' then redis.call('SET', P .. 'q:' .. eid, reason, 'EX', cfg.quarantine_ttl_s) end
  redis.call('HINCRBY', P .. 'q:counts', reason, 1)
  redis.call('LPUSH', P .. 'q:recent', cjson.encode({event_id = eid, user_id = user, reason = reason, offset = off}))
  redis.call('LTRIM', P .. 'q:recent', 0, 19)
end

local applied, skipped = 0, 0
local reasons = {}
for r = 5, #ARGV do
  local rec = ARGV[r]
  local offs, kind = string.match(rec, '^(%d+)\031(.)')
  local off = tonumber(offs)
  local f = split(string.sub(rec, #offs + 4))
  if off < stored then
    skipped = skipped + 1
  elseif kind == 'r' then
    -- f = reason, DeadLetter JSON, key (the key may contain SEP: rejoin the tail)
    local key = table.concat(f, SEP, 3)
    redis.call('RPUSH', KEYS[2], 'd' .. SEP .. f[2] .. SEP .. key)
    redis.call('HINCRBY', P .. 'dlq:counts', f[1], 1)
    applied = applied + 1
  elseif kind == 'u' or kind == 'x' then
    local item, ts = f[1], tonumber(f[2])
    local key = P .. 'attr:' .. item
    if ts >= tonumber(redis.call('HGET', key, 'ts') or '-1') then
      categories[item] = nil
      redis.call('DEL', key)
      if kind == 'u' then
        redis.call('HSET', key, 'title', table.concat(f, SEP, 5), 'category', f[3], 'price', f[4], 'ts', int(ts))
      else
        redis.call('HSET', key, 'deleted', '1', 'ts', int(ts))
      end
    end
    applied = applied + 1
  else
    local eid, typ, user, item, ts, session, raw
    if kind == 'e' then
      eid, typ, user, item, ts, session, raw = f[1], f[2], f[3], f[4], tonumber(f[5]), f[6], f[7]
    else
      eid, typ, user, ts, raw = f[1], 'impression', f[2], tonumber(f[3]), f[5]
    end
    local reason = nil
    local u = hash(P .. 'u:' .. user, cfg.user_ttl_s, {P .. 'u:' .. user .. ':recent'})
    local rl
    if kind == 'e' then
      rl = recent(user)
      local rows = rl.rows
      local head = eid .. SEP
      for i = 1, math.min(#rows, cfg.dedup_lookback) do
        if string.sub(rows[i], 1, #head) == head then reason = 'duplicate_event'; break end
      end
      if not reason and rows[1] then
        local pitem, ptyp, pts = entry_fields(rows[1])
        if pitem == item and ptyp == typ and abs(ts - tonumber(pts)) < cfg.bot_repeat_gap_ms then
          reason = 'rapid_repeat'
        end
      end
    end
    if not reason and over_rate(u, ts, cfg.bot_user_limit) then reason = 'user_burst' end
    local it
    if kind == 'e' then
      it = hash(P .. 'i:' .. item, cfg.item_ttl_s, {P .. 'cv:' .. item})
      if not reason and over_rate(it, ts, cfg.bot_item_limit) then reason = 'item_burst' end
    end
    if reason then
      quarantine(off, reason, eid, user, raw)
      reasons[#reasons + 1] = reason
    elseif kind == 'i' then
      for _, id in ipairs(cjson.decode(f[4])) do
        bump_decayed(hash(P .. 'i:' .. id, cfg.item_ttl_s, {P .. 'cv:' .. id}), 'impression', ts, 1)
      end
      applied = applied + 1
    else
      local w = cfg.weights[typ]
      -- co-visitation with this user's earlier distinct items of the same session, within the window
      local rows = rl.rows
      local seen = {[item] = true}
      for i = 1, math.min(#rows, cfg.covis_lookback) do
        local other, _, ots, osess = entry_fields(rows[i])
        if not seen[other] and osess == session and abs(ts - tonumber(ots)) <= cfg.covis_window_ms then
          seen[other] = true
          covisit(item, other)
          covisit(other, item)
        end
      end
      local row = eid .. SEP .. item .. SEP .. typ .. SEP .. int(ts) .. SEP .. session
      table.insert(rows, 1, row)
      rows[cfg.recent_cap + 1] = nil
      rl.new[#rl.new + 1] = row
      u.set('n:' .. typ, int((tonumber(u.get('n:' .. typ)) or 0) + 1))
      bump_decayed(it, typ, ts, 1)
      affinity(user, item, ts, w)
      trending(item, ts, w)
      applied = applied + 1
    end
    if ts > clock then clock = ts end
  end
end
for _, h in pairs(hashes) do h.flush() end
for user, rl in pairs(recents) do
  if #rl.new > 0 then
    local key = P .. 'u:' .. user .. ':recent'
    local len = redis.call('LPUSH', key, unpack(rl.new))
    if len > cfg.recent_cap then redis.call('LTRIM', key, 0, cfg.recent_cap - 1) end
    if len == #rl.new then redis.call('EXPIRE', key, cfg.user_ttl_s) end
  end
end
for a, row in pairs(covis_acc) do
  local key = P .. 'cv:' .. a
  local added = 0
  for other, inc in pairs(row) do redis.call('ZINCRBY', key, inc, other); added = added + 1 end
  local card = redis.call('ZCARD', key)
  if card > cfg.covis_top_n then redis.call('ZREMRANGEBYRANK', key, 0, card - cfg.covis_top_n - 1) end
  if card <= added then redis.call('EXPIRE', key, cfg.item_ttl_s) end  -- possibly new: TTL now
end
if next(trend_acc) then
  flush_trending()
  local extra = redis.call('ZCARD', P .. 'trending') - cfg.trending_cap
  if extra > 0 then redis.call('ZREMRANGEBYRANK', P .. 'trending', 0, extra - 1) end
end
if clock >= 0 then redis.call('SET', P .. 'clock', int(clock)) end
if new_off > stored then redis.call('SET', KEYS[1], int(new_off)) end
local out = {'ok', stored, applied, skipped, redis.call('LLEN', KEYS[2])}
for i = 1, #reasons do out[#out + 1] = reasons[i] end
return out
"""


def script_config(cfg: FeatureConfig, bot: dict) -> str:
    """The JSON the writer script reads: feature decay/caps plus the bot-filter thresholds."""
    return json.dumps({
        "recent_cap": cfg.recent_cap, "dedup_lookback": cfg.dedup_lookback,
        "item_tau_ms": cfg.tau_ms(cfg.item_half_life_s),
        "affinity_tau_ms": cfg.tau_ms(cfg.affinity_half_life_s),
        "trending_tau_ms": cfg.tau_ms(cfg.trending_half_life_s),
        "covis_window_ms": cfg.covis_window_s * 1000.0, "covis_lookback": cfg.covis_lookback,
        "covis_top_n": cfg.covis_top_n, "category_cap": cfg.category_cap,
        "trending_cap": cfg.trending_cap, "user_ttl_s": cfg.user_ttl_s, "item_ttl_s": cfg.item_ttl_s,
        "quarantine_ttl_s": cfg.quarantine_ttl_s,
        "weights": {t: cfg.weight(t) for t in INTERACTIONS},
        **bot,
    })
