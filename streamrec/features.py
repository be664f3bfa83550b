"""Online features in Redis: one layout, written by ``consumers/`` and read by learner and serving.

Every key starts with ``Settings.redis_prefix`` (``P`` below). Writes happen only inside
:data:`APPLY_LUA` (``features_apply.lua``), one atomic script call per Kafka partition batch that
also advances that partition's offset key, so a feature is never applied twice nor lost (see
``consumers/service.py``).

Time is *event time* (``Event.ts``, epoch ms), never the wall clock, so a replay of old data builds
the same features as the live stream did. Decayed values use a lazy exponential decay: each value
``v`` is stored with its reference time ``t``; an event at ``ts`` adds ``exp(-(t - ts)/tau)`` when
``ts <= t`` and otherwise rescales ``v`` to ``ts`` first, so the result equals
``sum(exp(-(t_max - ts_i)/tau))`` whatever the order events arrive in. Readers decay to ``now_ms``
(default: the stream clock ``P:clock``, the newest event time seen).

TTLs are wall-clock and refreshed at most once a day per user / item (hash field ``x`` holds the
day of the last refresh, and the user's recent list / the item's co-visitation set are refreshed
with it), so an idle user or item disappears between its TTL and TTL + 1 day after its last event.

Keys (knobs in ``Settings.features`` = :class:`FeatureConfig`, env ``STREAMREC_FEATURE_*``):

=================================  ===========================================================
``P:u:{user}:recent``  LIST        newest first, ``event_id \\x1f item \\x1f type \\x1f ts \\x1f
                                   session``; trimmed to ``recent_cap`` entries after each batch;
                                   TTL ``user_ttl_s``.
``P:u:{user}``          HASH       ``n:{type}`` exact event count per interaction type (no decay);
                                   ``rl:b``/``rl:n`` bot-filter window and its event count
                                   (consumers/botfilter.py); ``imps`` the last impression ids;
                                   ``ql`` the last ``expansion_links`` searches with a query
                                   (request_id, terms, ...); ``x`` TTL refresh day; TTL
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
``P:s:{session}``       LIST       the session's item ids, newest first, trimmed to ``session_cap``
                                   after each batch; TTL ``session_ttl_s`` (refreshed on every
                                   batch that adds to it). ``{session}`` is :func:`session_token`:
                                   ``s`` + ``session_id``, or ``u`` + ``user_id`` for events
                                   without one (the user is the session, as for co-visitation).
``P:is:{item}``         ZSET       the sessions that interacted with the item: session token ->
                                   that session's newest event ts with the item; trimmed to the
                                   ``item_sessions_cap`` most recent after each batch; TTL
                                   ``item_ttl_s`` (refreshed with ``P:i:{item}``). The
                                   session-kNN index (serving/sessions.py).
``P:trending``          ZSET       item -> weighted decayed popularity ``w * exp((ts - t0)/tau)``
                                   (forward decay, half-life ``trending_half_life_s``), ``P:trending:t0``
                                   the landmark ``t0`` (scores are rescaled when it moves);
                                   trimmed to ``trending_cap`` items after each batch. The reader
                                   scales scores to the stream clock; no TTL (one key).
``P:attr:{item}``       HASH       catalog attributes ``title``, ``category``, ``price``, ``ts`` of
                                   the op; an older op never overwrites a newer one; a delete
                                   leaves ``deleted=1`` and ``ts`` with TTL ``tombstone_ttl_s``
                                   (reads treat a missing key as deleted). A live item's has no
                                   TTL: catalog state, bounded by the catalog.
``P:qx:{item}``         HASH       query-log expansion: analysed query term -> decayed weight of
                                   the searches that led to a click / add_to_cart / purchase of
                                   the item (``FeatureConfig.expansion_weight``: 1 / 2 / 4),
                                   ``@`` the reference ts of every field (half-life
                                   ``expansion_half_life_s``); at most ``expansion_cap`` terms (the
                                   weakest evicted); TTL ``item_ttl_s``. The query is the event's
                                   ``query``, else that of the user's search ``request_id`` names
                                   (``ql`` in ``P:u:{user}``); the terms are
                                   :func:`expansion_terms`, computed by the consumer.
``P:qxlog:changed``     ZSET       item -> ``P:qxlog:seq`` at its last expansion change; trimmed to
                                   ``expansion_log_cap`` items. Serving tails it (and reads it
                                   whole at start) to re-index changed items' lexical documents.
``P:qxlog:seq``         STRING     expansion changes so far.
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
hash fields (≈ 0.5 KB) plus ``covis_top_n`` co-visitation members (≈ 3 KB) plus
``item_sessions_cap`` session members: a listpack (≈ 30 B per member) up to Redis's
``zset-max-listpack-entries`` (128), then a skiplist (≈ 110 B per member with a 12-byte token), so
≤ 55 KB at the cap of 500; DIGINETICA's median item has a handful of sessions (≈ 0.2 KB). An item
found through search also holds ≤ ``expansion_cap`` + 1 expansion fields (1,080 B measured at the
cap of 32) and one ``P:qxlog:changed`` member (≈ 70 B). A
session holds ≤ ``session_cap`` item ids in a listpack: ≈ 80 B + 12 B per item, ≤ 0.5 KB with the
default 30. Global keys: ``trending_cap`` members. Idle users/items/sessions expire after their TTL.
Measured: DIGINETICA's first 90 % (168k sessions, 818k clicks, every feature) take 193 MiB of
Redis ``used_memory`` (bench/sessions_offline.py).
"""

from __future__ import annotations

import heapq
import json
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import cast

import redis

from streamrec.analysis import analyze
from streamrec.settings import FeatureSettings, Settings
from streamrec.store import connect

INTERACTIONS = ("view", "click", "add_to_cart", "purchase")
SEP = "\x1f"  # one byte: the script splits records on it
TTL_REFRESH_S = 86_400  # a key's TTL is refreshed at most once per this many wall-clock seconds
TRENDING_RESCALE = 30.0  # trending scores are rescaled when (ts - t0) / tau exceeds this (exp(30) ~ 1e13)
QUARANTINE_RECENT_N = 20  # quarantine decisions kept in P:q:recent
SESSION_TOKEN = {"session": "s", "user": "u"}  # session token = tag + id: the two id spaces never collide


# The feature knobs are a node of the one settings tree (``Settings.features``, env ``STREAMREC_FEATURE_*``);
# the name stays for the writer's and readers' signatures.
FeatureConfig = FeatureSettings


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


@dataclass(frozen=True)
class CurrentSession:
    """The user's ongoing session: its token (:func:`session_token`) and items, oldest first."""

    token: str
    items: list[RecentItem]


def session_token(user_id: str, session_id: str | None) -> str:
    """The id of an event's session in ``P:s:`` / ``P:is:``: its ``session_id``, else the user."""
    return SESSION_TOKEN["session"] + session_id if session_id else SESSION_TOKEN["user"] + user_id


def current_session(user_id: str, entries: Sequence[tuple[RecentItem, str]], cap: int) -> CurrentSession | None:
    """The newest run of recent-list ``entries`` (newest first, with their ``session_id`` or "")
    sharing the newest entry's session, at most ``cap``, oldest first. One rule for both readers."""
    if not entries:
        return None
    session = entries[0][1]
    run: list[RecentItem] = []
    for item, s in entries[:cap]:
        if s != session:
            break
        run.append(item)
    return CurrentSession(session_token(user_id, session), run[::-1])


@dataclass(frozen=True)
class SessionView:
    """A neighbour candidate: its session token, newest event ts with the items asked about, items
    oldest first."""

    token: str
    ts: float
    items: list[str]


def sample_sessions(
    item_sessions: Iterable[Sequence[tuple[str, float]]], own: str | None, sample: int
) -> list[tuple[str, float]]:
    """The ``sample`` most recent sessions in the items' session index (token, newest ts), ties by
    the larger token, leaving out ``own``: the rule of ``features_neighbours.lua`` in Python."""
    newest: dict[str, float] = {}
    for rows in item_sessions:
        for token, ts in rows:
            if token != own and ts > newest.get(token, -math.inf):
                newest[token] = ts
    return heapq.nlargest(sample, newest.items(), key=lambda kv: (kv[1], kv[0]))


def expansion_terms(query: str | None, n: int) -> list[str]:
    """A query's terms for the query-log expansion: analysed as the lexical index does, each once,
    the first ``n``. Not spelling-corrected (that needs serving's vocabulary); a typo is kept as typed."""
    return list(dict.fromkeys(analyze(query)))[:n] if query else []


def decay(value: float, ref_ts: float, now_ms: float, tau_ms: float) -> float:
    """A value stored at ``ref_ts`` seen from ``now_ms`` (never grows when ``now_ms`` is older)."""
    return value * math.exp(-max(0.0, now_ms - ref_ts) / tau_ms)


def merge_decayed(v: float | None, t: float | None, ts: float, w: float, tau_ms: float) -> tuple[float, float]:
    """Lazy decay: the stored ``(v, t)`` plus weight ``w`` at ``ts`` -> the new ``(v, t)``, so that
    ``v = sum(w_i * exp(-(t - ts_i) / tau))`` whatever the arrival order. The Python form of
    ``merge`` in ``features_apply.lua`` (the parity test holds the two together)."""
    if v is None or t is None:
        return w, ts
    if ts >= t:
        return v * math.exp(-(ts - t) / tau_ms) + w, ts
    return v + w * math.exp(-(t - ts) / tau_ms), t


class Keys:
    """Key names in one place: readers call the methods, the writer script receives the same templates
    (:meth:`script_templates`), so no key name is spelled twice."""

    PER_ID = {
        "recent": "u:{}:recent",
        "user": "u:{}",
        "affinity": "u:{}:cat",
        "item": "i:{}",
        "covis": "cv:{}",
        "session": "s:{}",
        "item_sessions": "is:{}",
        "attr": "attr:{}",
        "quarantined": "q:{}",
        "expansion": "qx:{}",
    }
    GLOBAL = {
        "trending": "trending",
        "trending_t0": "trending:t0",
        "clock": "clock",
        "quarantine_counts": "q:counts",
        "quarantine_recent": "q:recent",
        "dlq_counts": "dlq:counts",
        "expansion_log": "qxlog:changed",
        "expansion_seq": "qxlog:seq",
    }

    def __init__(self, prefix: str):
        self.p = prefix

    def _id(self, name: str, id_: str) -> str:
        return self.p + self.PER_ID[name].format(id_)

    def recent(self, user: str) -> str:
        return self._id("recent", user)

    def user(self, user: str) -> str:
        return self._id("user", user)

    def affinity(self, user: str) -> str:
        return self._id("affinity", user)

    def item(self, item: str) -> str:
        return self._id("item", item)

    def covis(self, item: str) -> str:
        return self._id("covis", item)

    def attr(self, item: str) -> str:
        return self._id("attr", item)

    def session(self, token: str) -> str:
        return self._id("session", token)

    def item_sessions(self, item: str) -> str:
        return self._id("item_sessions", item)

    def quarantined(self, event_id: str) -> str:
        return self._id("quarantined", event_id)

    def expansion(self, item: str) -> str:
        return self._id("expansion", item)

    @property
    def expansion_log(self) -> str:
        return self.p + self.GLOBAL["expansion_log"]

    @property
    def expansion_seq(self) -> str:
        return self.p + self.GLOBAL["expansion_seq"]

    def offset(self, group: str, topic: str, partition: int) -> str:
        return f"{self.p}off:{group}:{topic}:{partition}"

    def outbox(self, group: str, topic: str, partition: int) -> str:
        return f"{self.p}outbox:{group}:{topic}:{partition}"

    def relayed(self, group: str, topic: str, partition: int) -> str:
        return f"{self.p}relayed:{group}:{topic}:{partition}"

    @property
    def trending(self) -> str:
        return self.p + self.GLOBAL["trending"]

    @property
    def trending_t0(self) -> str:
        return self.p + self.GLOBAL["trending_t0"]

    @property
    def clock(self) -> str:
        return self.p + self.GLOBAL["clock"]

    @property
    def quarantine_counts(self) -> str:
        return self.p + self.GLOBAL["quarantine_counts"]

    @property
    def quarantine_recent(self) -> str:
        return self.p + self.GLOBAL["quarantine_recent"]

    @property
    def dlq_counts(self) -> str:
        return self.p + self.GLOBAL["dlq_counts"]

    def script_templates(self) -> dict[str, str | list[str]]:
        """For the writer script: per-id keys as ``[head, tail]`` around the id, global keys as names."""
        out: dict[str, str | list[str]] = {}
        for name, template in self.PER_ID.items():
            head, tail = template.split("{}")
            out[name] = [self.p + head, tail]
        out.update({name: self.p + k for name, k in self.GLOBAL.items()})
        return out


class FeatureStore:
    """Readers of the online features (learner, serving) — the layout is in the module docstring."""

    def __init__(self, r: redis.Redis, prefix: str, config: FeatureConfig | None = None, trending_cache_s: float = 0.0):
        """``trending_cache_s`` > 0: :meth:`trending` answers from a copy at most that old. Serving
        sets it: trending is one global list that every request reads (twice for /recommend: the
        popular family and the ranking rows), so each read is a Redis round trip spent on a list
        whose scores decay over hours."""
        self.r = r
        self.keys = Keys(prefix)
        self.config = config or FeatureConfig()
        self._neighbours = r.register_script(NEIGHBOURS_LUA)
        self.trending_cache_s = trending_cache_s
        self._trending_copy: tuple[float, int, list[tuple[str, float]]] | None = None  # (read at, n, list)

    @classmethod
    def from_settings(cls, s: Settings) -> FeatureStore:
        return cls(connect(s), s.redis_prefix, s.features)

    def clock_ms(self) -> int | None:
        """The newest event time applied, or None before the first event."""
        v = self.r.get(self.keys.clock)
        return int(float(v)) if v is not None else None

    def _recent_entries(self, user_id: str, n: int) -> list[tuple[RecentItem, str]]:
        out = []
        # casts here and below: the client decodes (decode_responses=True), redis-py types `bytes | str`
        entries = cast(list[str], self.r.lrange(self.keys.recent(user_id), 0, max(0, n - 1))) if n > 0 else []
        for entry in entries:
            _eid, item, typ, ts, session = entry.split(SEP)
            out.append((RecentItem(item_id=item, type=typ, ts=int(ts)), session))
        return out

    def recent_items(self, user_id: str, n: int = 20) -> list[RecentItem]:
        return [item for item, _ in self._recent_entries(user_id, n)]

    def current_session(self, user_id: str) -> CurrentSession | None:
        """The user's ongoing session from the recent list (one read), or None without history."""
        return current_session(user_id, self._recent_entries(user_id, self.config.session_cap), self.config.session_cap)

    def session_items(self, token: str) -> list[str]:
        """A session's items (``P:s:{token}``), oldest first."""
        return self.sessions_items([token])[0]

    def sessions_items(self, tokens: Sequence[str]) -> list[list[str]]:
        """Many sessions' items, oldest first, in one round trip (the kNN neighbours)."""
        pipe = self.r.pipeline(transaction=False)
        for token in tokens:
            pipe.lrange(self.keys.session(token), 0, -1)
        return [items[::-1] for items in pipe.execute()]

    def item_sessions(self, item_ids: Sequence[str], n: int | None = None) -> list[list[tuple[str, float]]]:
        """Per item, the sessions that touched it, newest first: (token, their newest ts with it)."""
        if n is not None and n <= 0:
            return [[] for _ in item_ids]
        pipe = self.r.pipeline(transaction=False)
        for item in item_ids:
            pipe.zrevrange(self.keys.item_sessions(item), 0, -1 if n is None else n - 1, withscores=True)
        return [[(m, float(s)) for m, s in rows] for rows in pipe.execute()]

    def user_counts(self, user_id: str) -> dict[str, int]:
        """Exact (undecayed) interaction counts of a user per type."""
        raw = cast(dict[str, str], self.r.hgetall(self.keys.user(user_id)))
        return {k[2:]: int(v) for k, v in raw.items() if k.startswith("n:")}

    def item_counts(self, item_id: str) -> dict[str, int]:
        """Exact (undecayed) counts of an item per event type, ``impression`` included."""
        raw = cast(dict[str, str], self.r.hgetall(self.keys.item(item_id)))
        return {k[2:]: int(v) for k, v in raw.items() if k.startswith("n:")}

    def _hashes_at(self, keys: Sequence[str], now_ms: int | None) -> tuple[float, list[dict]]:
        """The hashes at ``keys`` and the time to decay them to: ``now_ms``, else the stream clock
        (read in the same round trip), else the wall clock."""
        pipe = self.r.pipeline(transaction=False)
        if now_ms is None:
            pipe.get(self.keys.clock)
        for key in keys:
            pipe.hgetall(key)
        replies = pipe.execute()
        if now_ms is not None:
            return float(now_ms), replies
        clock, replies = replies[0], replies[1:]
        return (float(clock) if clock is not None else time.time() * 1000.0), replies

    def item_stats(self, item_ids: Sequence[str], now_ms: int | None = None) -> list[ItemStats]:
        now, replies = self._hashes_at([self.keys.item(i) for i in item_ids], now_ms)
        cfg = self.config
        tau = cfg.tau_ms(cfg.item_half_life_s)
        stats = []

        def decayed(h: dict, t: str) -> float:
            v = h.get(f"d:{t}")
            return decay(float(v), float(h[f"t:{t}"]), now, tau) if v is not None else 0.0

        for h in replies:
            counts = {t: decayed(h, t) for t in INTERACTIONS}
            impressions, clicks = decayed(h, "impression"), counts["click"]
            ctr = cfg.smoothed_ctr(clicks, impressions)
            stats.append(ItemStats(counts=counts, impressions=impressions, clicks=clicks, ctr=ctr))
        return stats

    def covisited(self, item_id: str, n: int = 20) -> list[tuple[str, float]]:
        if n <= 0:
            return []
        top = cast(list[tuple[str, float]], self.r.zrevrange(self.keys.covis(item_id), 0, n - 1, withscores=True))
        return [(m, float(s)) for m, s in top]

    def neighbour_sessions(self, item_ids: Sequence[str], own: str | None, sample: int) -> list[SessionView]:
        """The ``sample`` most recent sessions sharing an item with ``item_ids`` (not ``own``) with
        their items, in one round trip (a read-only script: the union and the lists stay in Redis)."""
        if not item_ids or sample <= 0:
            return []
        head, tail = cast(tuple[str, str], self.keys.script_templates()["session"])
        keys = [self.keys.item_sessions(i) for i in dict.fromkeys(item_ids)]
        flat = self._neighbours(keys=keys, args=[own or "", sample, head, tail, SEP])
        return [SessionView(flat[i], float(flat[i + 1]), flat[i + 2].split(SEP)[::-1]) for i in range(0, len(flat), 3)]

    def covisited_many(self, item_ids: Sequence[str], n: int = 20) -> list[list[tuple[str, float]]]:
        """:meth:`covisited` of many items in one round trip."""
        if n <= 0:
            return [[] for _ in item_ids]
        pipe = self.r.pipeline(transaction=False)
        for item in item_ids:
            pipe.zrevrange(self.keys.covis(item), 0, n - 1, withscores=True)
        return [[(m, float(s)) for m, s in rows] for rows in pipe.execute()]

    def trending(self, n: int = 20) -> list[tuple[str, float]]:
        """Top items by weighted popularity decayed to the stream clock: ``sum(w * exp(-(clock - ts)/tau))``.

        The stored scores are relative to the landmark ``t0``; they are scaled to the clock here so
        the values mean the same as ``ReplayFeatures.trending`` (and as a ranking feature)."""
        if n <= 0:
            return []
        if self.trending_cache_s <= 0:
            return self._read_trending(n)
        copy = self._trending_copy  # one tuple: threads swap it whole, never see it half-written
        now = time.monotonic()
        if copy is None or now - copy[0] > self.trending_cache_s or copy[1] < n:
            wanted = max(n, copy[1] if copy else 0)  # the longest list asked for: every reader served from one copy
            copy = (now, wanted, self._read_trending(wanted))
            self._trending_copy = copy
        return copy[2][:n]

    def _read_trending(self, n: int) -> list[tuple[str, float]]:
        pipe = self.r.pipeline(transaction=False)
        pipe.zrevrange(self.keys.trending, 0, n - 1, withscores=True)
        pipe.get(self.keys.trending_t0)
        pipe.get(self.keys.clock)
        top, t0, clock = pipe.execute()
        if not top or t0 is None:
            return []
        tau = self.config.tau_ms(self.config.trending_half_life_s)
        scale = math.exp((float(t0) - float(clock if clock is not None else t0)) / tau)
        return [(m, float(s) * scale) for m, s in top]

    def category_affinity(self, user_id: str, now_ms: int | None = None) -> dict[str, float]:
        """Category -> decayed weighted interaction count, decayed to ``now_ms`` (stream clock)."""
        now, (raw,) = self._hashes_at([self.keys.affinity(user_id)], now_ms)  # with the clock: one round trip
        if not raw:
            return {}
        tau = self.config.tau_ms(self.config.affinity_half_life_s)
        return {
            c: decay(float(v), float(raw[f"@{c}"]), now, tau)
            for c, v in raw.items()
            if not c.startswith("@") and f"@{c}" in raw
        }

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

    def expansions(self, item_ids: Sequence[str], now_ms: int | None = None) -> list[dict[str, float]]:
        """Per item, its query-log expansion: term -> weight decayed to ``now_ms`` (stream clock)."""
        now, replies = self._hashes_at([self.keys.expansion(i) for i in item_ids], now_ms)
        tau = self.config.tau_ms(self.config.expansion_half_life_s)
        out = []
        for h in replies:
            ref = float(h.get("@", now))
            out.append({t: decay(float(v), ref, now, tau) for t, v in h.items() if t != "@"})
        return out

    def expansion_changes(self, after: int, n: int) -> tuple[list[tuple[str, int]], int]:
        """Items whose expansion changed after change number ``after`` (oldest first, at most ``n``),
        and the newest change number (0 before any: a caller ahead of it reads from 0 again)."""
        pipe = self.r.pipeline(transaction=False)
        pipe.zrangebyscore(self.keys.expansion_log, f"({after}", "+inf", start=0, num=n, withscores=True)
        pipe.get(self.keys.expansion_seq)
        rows, seq = pipe.execute()
        return [(m, int(s)) for m, s in rows], int(seq or 0)

    def is_quarantined(self, event_id: str) -> str | None:
        """The bot-filter reason if this event was quarantined (kept ``quarantine_ttl_s``), else None."""
        return cast(str | None, self.r.get(self.keys.quarantined(event_id)))

    def quarantined_many(self, event_ids: Sequence[str]) -> list[str | None]:
        """``is_quarantined`` of many events in one round trip (the learner asks once per poll)."""
        if not event_ids:
            return []
        return cast(list[str | None], self.r.mget([self.keys.quarantined(e) for e in event_ids]))

    def quarantine_counts(self) -> dict[str, int]:
        return {k: int(v) for k, v in cast(dict[str, str], self.r.hgetall(self.keys.quarantine_counts)).items()}

    def recent_quarantine(self, n: int = QUARANTINE_RECENT_N) -> list[dict]:
        """The newest quarantine decisions (event_id, user_id, reason, offset), newest first."""
        return [json.loads(x) for x in self.r.lrange(self.keys.quarantine_recent, 0, max(0, n - 1))]

    def dead_letter_counts(self) -> dict[str, int]:
        return {k: int(v) for k, v in cast(dict[str, str], self.r.hgetall(self.keys.dlq_counts)).items()}


# --- the writer ------------------------------------------------------------------------------
#
# One call applies one batch of one Kafka partition, atomically (a Lua script runs alone in Redis):
# KEYS[1] = the partition's offset key, KEYS[2] = its outbox.
# ARGV[1] = prefix (informational: key names come in the config), ARGV[2] = config JSON
# (script_config), ARGV[3] = next offset after the batch, ARGV[4] = its first offset (records may have
# been left out, e.g. invalid catalog ops), then one string per record, fields joined by U+001F
# (see consumers/apply.py):
#   offset, kind, then for kind
#   'e' interaction     event_id, type, user, item, ts, session, request_id, expansion terms, canonical JSON
#   'i' impression      event_id, user, ts, JSON list of item ids, request_id, expansion terms, canonical JSON
# (expansion terms: expansion_terms(query) joined by spaces; "" for none, and for views)
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
APPLY_LUA = (resources.files("streamrec") / "features_apply.lua").read_text(encoding="utf-8")
# The session-kNN sample (FeatureStore.neighbour_sessions): read-only, one round trip.
NEIGHBOURS_LUA = (resources.files("streamrec") / "features_neighbours.lua").read_text(encoding="utf-8")


def script_config(cfg: FeatureConfig, bot: dict, keys: Keys) -> str:
    """The JSON the writer script reads: every constant it uses (feature decay/caps/weights, the
    bot-filter thresholds, key names, the field separator)."""
    return json.dumps(
        {
            "recent_cap": cfg.recent_cap,
            "dedup_lookback": cfg.dedup_lookback,
            "item_tau_ms": cfg.tau_ms(cfg.item_half_life_s),
            "affinity_tau_ms": cfg.tau_ms(cfg.affinity_half_life_s),
            "trending_tau_ms": cfg.tau_ms(cfg.trending_half_life_s),
            "trending_rescale": TRENDING_RESCALE,
            "covis_window_ms": cfg.covis_window_s * 1000.0,
            "covis_lookback": cfg.covis_lookback,
            "covis_top_n": cfg.covis_top_n,
            "session_cap": cfg.session_cap,
            "item_sessions_cap": cfg.item_sessions_cap,
            "session_ttl_s": cfg.session_ttl_s,
            "session_token": SESSION_TOKEN,
            "category_cap": cfg.category_cap,
            "trending_cap": cfg.trending_cap,
            "user_ttl_s": cfg.user_ttl_s,
            "item_ttl_s": cfg.item_ttl_s,
            "quarantine_ttl_s": cfg.quarantine_ttl_s,
            "tombstone_ttl_s": cfg.tombstone_ttl_s,
            "ttl_refresh_s": TTL_REFRESH_S,
            "quarantine_recent_n": QUARANTINE_RECENT_N,
            "weights": {t: cfg.weight(t) for t in INTERACTIONS},
            "expansion_weights": {t: cfg.expansion_weight(t) for t in INTERACTIONS},
            "expansion_cap": cfg.expansion_cap,
            "expansion_tau_ms": cfg.tau_ms(cfg.expansion_half_life_s),
            "expansion_links": cfg.expansion_links,
            "expansion_log_cap": cfg.expansion_log_cap,
            "keys": keys.script_templates(),
            "sep": SEP,
            **bot,
        }
    )
