"""The read side of the online features: :class:`FeatureStore` (Redis) and what its reads return.

Learner and serving read features only through :class:`FeatureStore` (or its in-memory twin,
``replay.py``, with the same methods). Decayed values are decayed to ``now_ms`` when given, else to
the stream clock, so a replay of old data reads sensibly. The key names are ``layout.py``'s.
"""

from __future__ import annotations

import heapq
import json
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import cast

import redis

from streamrec.analysis import category_key, category_levels
from streamrec.features.decay import decay, landmark_scale
from streamrec.features.layout import INTERACTIONS, QUARANTINE_RECENT_N, SEP, Keys, session_token
from streamrec.settings import FeatureSettings, Settings
from streamrec.store import connect

# The session-kNN sample (FeatureStore.neighbour_sessions): read-only, one round trip.
NEIGHBOURS_LUA = (resources.files("streamrec.features") / "neighbours.lua").read_text(encoding="utf-8")


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
    the larger token, leaving out ``own``: the rule of ``neighbours.lua`` in Python."""
    newest: dict[str, float] = {}
    for rows in item_sessions:
        for token, ts in rows:
            if token != own and ts > newest.get(token, -math.inf):
                newest[token] = ts
    return heapq.nlargest(sample, newest.items(), key=lambda kv: (kv[1], kv[0]))


@dataclass(frozen=True)
class RowReads:
    """Everything the ranking rows of one request read from the store (``row_reads``): the user's
    recent items, the candidates' counters, the co-visitation lists of the first recent items, the
    attributes of the candidates then of the recent items, and the user's category affinity."""

    recent: list[RecentItem]
    stats: list[ItemStats]
    covisited: list[list[tuple[str, float]]]
    attributes: list[dict | None]
    affinity: dict[str, float]


@dataclass(frozen=True)
class RowParts:
    """What one keyspace holds for a request's ranking rows, as Redis returned it (``_row_parts``)."""

    clock: int | None
    recent: list[str]
    affinity: dict
    items: list[dict]
    attributes: list[dict]


class TopCopy:
    """A top-*n* list answered from a copy at most ``max_age_s`` old (0: read every time). The copy
    holds the longest list asked for, so every reader is served from one copy; it is one tuple that
    threads swap whole, never see half-written."""

    def __init__(self, read: Callable[[int], list[tuple[str, float]]], max_age_s: float):
        self.read, self.max_age_s = read, max_age_s
        self._copy: tuple[float, int, list[tuple[str, float]]] | None = None  # (read at, n, list)

    def top(self, n: int) -> list[tuple[str, float]]:
        if self.max_age_s <= 0:
            return self.read(n)
        copy, now = self._copy, time.monotonic()
        if copy is None or now - copy[0] > self.max_age_s or copy[1] < n:
            wanted = max(n, copy[1] if copy else 0)
            copy = (now, wanted, self.read(wanted))
            self._copy = copy
        return copy[2][:n]


class FeatureStore:
    """Readers of the online features (learner, serving) — the keys are ``layout.py``'s."""

    def __init__(
        self, r: redis.Redis, prefix: str, config: FeatureSettings | None = None, trending_cache_s: float = 0.0
    ):
        """``trending_cache_s`` > 0: :meth:`trending` answers from a copy at most that old. Serving
        sets it: trending is one global list that every request reads (twice for /recommend: the
        popular family and the ranking rows), so each read is a Redis round trip spent on a list
        whose scores decay over hours."""
        self.r = r
        self.keys = Keys(prefix)
        self.config = config or FeatureSettings()
        self._neighbours = r.register_script(NEIGHBOURS_LUA)
        self._trending = TopCopy(self._read_trending, trending_cache_s)

    @classmethod
    def from_settings(cls, s: Settings) -> FeatureStore:
        return cls(connect(s), s.redis.prefix, s.features)

    def clock_ms(self) -> int | None:
        """The newest event time applied, or None before the first event."""
        v = self.r.get(self.keys.clock)
        return int(float(v)) if v is not None else None

    def _recent_entries(self, user_id: str, n: int) -> list[tuple[RecentItem, str]]:
        # casts here and below: the client decodes (decode_responses=True), redis-py types `bytes | str`
        entries = cast(list[str], self.r.lrange(self.keys.recent(user_id), 0, max(0, n - 1))) if n > 0 else []
        return _recent_from(entries)

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
        return self._stats_from(replies, now)

    def _stats_from(self, replies: list[dict], now: float) -> list[ItemStats]:
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
        return self._tops([self.keys.covis(i) for i in item_ids], n)

    def _tops(self, keys: Sequence[str], n: int) -> list[list[tuple[str, float]]]:
        """The top ``n`` (member, score) of each sorted set, in one round trip."""
        if n <= 0:
            return [[] for _ in keys]
        pipe = self.r.pipeline(transaction=False)
        for key in keys:
            pipe.zrevrange(key, 0, n - 1, withscores=True)
        return [[(m, float(s)) for m, s in rows] for rows in pipe.execute()]

    def bought_together(self, item_ids: Sequence[str], n: int = 20) -> list[list[tuple[str, float]]]:
        """Per item, the items most often added to cart or bought in one basket with it (one round trip)."""
        return self._tops([self.keys.cobuy(i) for i in item_ids], n)

    def row_reads(
        self,
        user_id: str | None,
        item_ids: Sequence[str],
        now_ms: int | None,
        recent_n: int,
        covisit_of: int,
        covisit_n: int,
    ) -> RowReads:
        """The reads of :meth:`recent_items`, :meth:`item_stats`, :meth:`covisited_many`,
        :meth:`item_attributes` and :meth:`category_affinity` for one request's ranking rows, in two
        round trips (one without a user history) instead of five: the second needs the recent items.
        Counters decay to ``now_ms`` (else the stream clock), the affinity to the stream clock."""
        parts = self._row_parts(user_id, item_ids, recent_n, attributes=True)
        clock = float(parts.clock) if parts.clock is not None else time.time() * 1000.0
        recent = [item for item, _ in _recent_from(parts.recent)]
        affinity = self._affinity_from(parts.affinity, clock)
        stats = self._stats_from(parts.items, float(now_ms) if now_ms is not None else clock)
        attributes = _attributes_from(parts.attributes)
        covisited: list[list[tuple[str, float]]] = []
        recent_ids = [r.item_id for r in recent]
        if recent_ids:
            pipe = self.r.pipeline(transaction=False)
            for item in recent_ids[:covisit_of] if covisit_n > 0 else []:
                pipe.zrevrange(self.keys.covis(item), 0, covisit_n - 1, withscores=True)
            for item in recent_ids:
                pipe.hgetall(self.keys.attr(item))
            second = pipe.execute()
            k = min(covisit_of, len(recent_ids)) if covisit_n > 0 else 0
            covisited = [[(m, float(s)) for m, s in rows] for rows in second[:k]]
            attributes += _attributes_from(second[k:])
        return RowReads(recent, stats, covisited, attributes, affinity)

    def _row_parts(self, user_id: str | None, item_ids: Sequence[str], recent_n: int, attributes: bool) -> RowParts:
        """The first round trip of :meth:`row_reads`, undecoded: the clock, the user's recent list
        and affinity hash, the items' hashes, and their attribute hashes when ``attributes``."""
        pipe = self.r.pipeline(transaction=False)
        pipe.get(self.keys.clock)
        if user_id:
            pipe.lrange(self.keys.recent(user_id), 0, max(0, recent_n - 1))
            pipe.hgetall(self.keys.affinity(user_id))
        for item in item_ids:
            pipe.hgetall(self.keys.item(item))
        for item in item_ids if attributes else ():
            pipe.hgetall(self.keys.attr(item))
        replies = pipe.execute()
        clock, replies = replies[0], replies[1:]
        recent, affinity = (replies[0], replies[1]) if user_id else ([], {})
        replies = replies[2:] if user_id else replies
        n = len(item_ids)
        return RowParts(int(float(clock)) if clock is not None else None, recent, affinity, replies[:n], replies[n:])

    def trending(self, n: int = 20) -> list[tuple[str, float]]:
        """Top items by weighted popularity decayed to the stream clock: ``sum(w * exp(-(clock - ts)/tau))``.

        The stored scores are relative to the landmark ``t0``; they are scaled to the clock here so
        the values mean the same as ``ReplayFeatures.trending`` (and as a ranking feature)."""
        return self._trending.top(n) if n > 0 else []

    def suggestions(self, n: int = 20, category: str | None = None) -> list[tuple[str, float]]:
        """The top ``n`` searches shoppers chose results of (autocomplete), within ``category`` (any
        level of the chosen products' category paths), decayed to the stream clock."""
        if n <= 0:
            return []
        key = (
            self.keys.suggest
            if category is None
            else self.keys.suggest_category(category_key(category_levels(category)))
        )
        return self._landmark_top(key, n)

    def _read_trending(self, n: int) -> list[tuple[str, float]]:
        return self._landmark_top(self.keys.trending, n)

    def _landmark_top(self, key: str, n: int) -> list[tuple[str, float]]:
        """The top ``n`` of a sorted set scored on trending's landmark, scaled to the stream clock."""
        pipe = self.r.pipeline(transaction=False)
        pipe.zrevrange(key, 0, n - 1, withscores=True)
        pipe.get(self.keys.trending_t0)
        pipe.get(self.keys.clock)
        top, t0, clock = pipe.execute()
        if not top or t0 is None:
            return []
        tau = self.config.tau_ms(self.config.trending_half_life_s)
        scale = landmark_scale(float(t0), float(clock if clock is not None else t0), tau)
        return [(m, float(s) * scale) for m, s in top]

    def category_affinity(self, user_id: str, now_ms: int | None = None) -> dict[str, float]:
        """Category -> decayed weighted interaction count, decayed to ``now_ms`` (stream clock)."""
        now, (raw,) = self._hashes_at([self.keys.affinity(user_id)], now_ms)  # with the clock: one round trip
        return self._affinity_from(raw, now)

    def _affinity_from(self, raw: dict, now: float) -> dict[str, float]:
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
        return _attributes_from(pipe.execute())

    def expansions(self, item_ids: Sequence[str], now_ms: int | None = None) -> list[dict[str, float]]:
        """Per item, its query-log expansion: term -> weight decayed to ``now_ms`` (stream clock)."""
        now, replies = self._hashes_at([self.keys.expansion(i) for i in item_ids], now_ms)
        tau = self.config.tau_ms(self.config.expansion_half_life_s)
        out = []
        for h in replies:
            ref = float(h.get("@", now))
            out.append({t: decay(float(v), ref, now, tau) for t, v in h.items() if t != "@"})
        return out

    def click_memory(self, key: str, now_ms: int | None = None) -> dict[str, tuple[float, float]]:
        """A query's click memory (``key`` = ``query_key``): item -> (clicks, examinations), decayed
        to ``now_ms`` (stream clock); {} for a query nobody clicked."""
        now, (h,) = self._hashes_at([self.keys.memory(key)], now_ms)
        if not h:
            return {}
        tau = self.config.tau_ms(self.config.memory_half_life_s)
        ref = float(h.pop("@", now))
        out: dict[str, tuple[float, float]] = {}
        for field, v in h.items():
            c, e = out.get(field[1:], (0.0, 0.0))
            value = decay(float(v), ref, now, tau)
            out[field[1:]] = (value, e) if field[0] == "c" else (c, value)
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
        """The newest quarantine decisions (event_id, user_id, reason, offset, the event's ts), newest first."""
        return [json.loads(x) for x in self.r.lrange(self.keys.quarantine_recent, 0, max(0, n - 1))]

    def dead_letter_counts(self) -> dict[str, int]:
        return {k: int(v) for k, v in cast(dict[str, str], self.r.hgetall(self.keys.dlq_counts)).items()}


def _recent_from(entries: list[str]) -> list[tuple[RecentItem, str]]:
    """A user's recent list (newest first) as items with their session tokens."""
    out = []
    for entry in entries:
        _eid, item, typ, ts, session = entry.split(SEP)
        out.append((RecentItem(item_id=item, type=typ, ts=int(ts)), session))
    return out


def _attributes_from(replies: list[dict]) -> list[dict | None]:
    """Catalog attribute hashes as {title, category, price}; None for a missing or deleted item."""
    out: list[dict | None] = []
    for h in replies:
        if not h or h.get("deleted") == "1":
            out.append(None)
            continue
        attrs: dict = {"title": h.get("title"), "category": h.get("category") or None}
        attrs["price"] = float(h["price"]) if h.get("price") else None
        out.append(attrs)
    return out
