"""The reads of :class:`~streamrec.features.reader.FeatureStore` over every feature keyspace of a
Redis Cluster (docs/REDIS-CLUSTER.md), merged into what one Redis would answer.

Why merging works: each keyspace holds the features of its own events partitions, and every
feature is a sum over events (counts, decayed counts, co-visitation, trending, expansions, click
memory) or a per-user or per-session value that lives in one keyspace when the events are keyed
by user (the API and the replay do). Decayed sums are decayed to one clock, the newest of the
keyspaces', before they are added. What is not exact: a top-*n* list (co-visitation, trending,
suggestions) is merged from each keyspace's own top *n*, and each keyspace trims its lists to the
cap alone, as a search engine's shards do.
"""

from __future__ import annotations

import heapq
import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence

from streamrec.features.layout import QUARANTINE_RECENT_N
from streamrec.features.reader import (
    CurrentSession,
    FeatureStore,
    ItemStats,
    RecentItem,
    RowReads,
    SessionView,
    current_session,
)
from streamrec.settings import FeatureSettings, Settings
from streamrec.store import connect, keyspaces

SUGGEST_DEPTH = 5  # suggestions read from each keyspace per one answered
LANE = 64  # bits of one keyspace's expansion-log number in the merged cursor


def open_features(
    s: Settings, timeout_s: float | None = None, trending_cache_s: float = 0.0
) -> FeatureStore | ShardedFeatureStore:
    """The feature reader for the settings: one :class:`FeatureStore` on a single Redis, a
    :class:`ShardedFeatureStore` over every keyspace on a Redis Cluster."""
    r = connect(s, timeout_s)
    stores = [FeatureStore(r, prefix, s.features, trending_cache_s) for prefix in keyspaces(s)]
    return stores[0] if not s.redis.cluster else ShardedFeatureStore(stores, s.features)


def _top(scores: dict[str, float], n: int) -> list[tuple[str, float]]:
    """The ``n`` largest, ties by the larger member (Redis's ZREVRANGE order)."""
    return heapq.nlargest(n, scores.items(), key=lambda kv: (kv[1], kv[0]))


def _summed(rows: Iterable[Iterable[tuple[str, float]]], n: int) -> list[tuple[str, float]]:
    total: dict[str, float] = defaultdict(float)
    for row in rows:
        for member, score in row:
            total[member] += score
    return _top(total, n)


class ShardedFeatureStore:
    """:class:`FeatureStore`'s reads, each asked of every keyspace and merged (module docstring)."""

    def __init__(self, stores: Sequence[FeatureStore], config: FeatureSettings | None = None):
        self.stores = list(stores)
        self.config = config or FeatureSettings()

    # --- the clock and the per-user reads --------------------------------------------------------

    def clock_ms(self) -> int | None:
        clocks = [c for c in (fs.clock_ms() for fs in self.stores) if c is not None]
        return max(clocks) if clocks else None

    def _now(self, now_ms: int | None) -> int | None:
        return now_ms if now_ms is not None else self.clock_ms()

    def _recent_entries(self, user_id: str, n: int) -> list[tuple[RecentItem, str]]:
        """The user's recent list, newest applied first, from the keyspace that holds it; should a
        producer that does not key events by user have spread them over keyspaces, the lists are
        merged by event time."""
        lists = [entries for fs in self.stores if (entries := fs._recent_entries(user_id, n))]
        if len(lists) <= 1:
            return lists[0] if lists else []
        return sorted((e for entries in lists for e in entries), key=lambda e: e[0].ts, reverse=True)[:n]

    def recent_items(self, user_id: str, n: int = 20) -> list[RecentItem]:
        return [item for item, _ in self._recent_entries(user_id, n)]

    def current_session(self, user_id: str) -> CurrentSession | None:
        cap = self.config.session_cap
        return current_session(user_id, self._recent_entries(user_id, cap), cap)

    def user_counts(self, user_id: str) -> dict[str, int]:
        return dict(sum((Counter(fs.user_counts(user_id)) for fs in self.stores), Counter()))

    def category_affinity(self, user_id: str, now_ms: int | None = None) -> dict[str, float]:
        now = self._now(now_ms)
        total: dict[str, float] = defaultdict(float)
        for fs in self.stores:
            for category, value in fs.category_affinity(user_id, now).items():
                total[category] += value
        return dict(total)

    # --- sessions --------------------------------------------------------------------------------

    def session_items(self, token: str) -> list[str]:
        return self.sessions_items([token])[0]

    def sessions_items(self, tokens: Sequence[str]) -> list[list[str]]:
        """A session lives in its user's keyspace: the first that has it."""
        out: list[list[str]] = [[] for _ in tokens]
        for fs in self.stores:
            for i, items in enumerate(fs.sessions_items(tokens)):
                if items and not out[i]:
                    out[i] = items
        return out

    def item_sessions(self, item_ids: Sequence[str], n: int | None = None) -> list[list[tuple[str, float]]]:
        per_store = [fs.item_sessions(item_ids, n) for fs in self.stores]
        out = []
        for rows in zip(*per_store, strict=True):
            merged = sorted((pair for row in rows for pair in row), key=lambda kv: (kv[1], kv[0]), reverse=True)
            out.append(merged if n is None else merged[:n])
        return out

    def neighbour_sessions(self, item_ids: Sequence[str], own: str | None, sample: int) -> list[SessionView]:
        """Exact: a session lives in one keyspace, so the newest ``sample`` of all are among the
        newest ``sample`` of each."""
        views = [view for fs in self.stores for view in fs.neighbour_sessions(item_ids, own, sample)]
        return heapq.nlargest(sample, views, key=lambda v: (v.ts, v.token)) if sample > 0 else []

    # --- items -----------------------------------------------------------------------------------

    def item_counts(self, item_id: str) -> dict[str, int]:
        return dict(sum((Counter(fs.item_counts(item_id)) for fs in self.stores), Counter()))

    def item_stats(self, item_ids: Sequence[str], now_ms: int | None = None) -> list[ItemStats]:
        now = self._now(now_ms)
        return self._stats_sum([fs.item_stats(item_ids, now) for fs in self.stores])

    def _stats_sum(self, per_store: list[list[ItemStats]]) -> list[ItemStats]:
        out = []
        for parts in zip(*per_store, strict=True):
            counts: dict[str, float] = defaultdict(float)
            for part in parts:
                for typ, value in part.counts.items():
                    counts[typ] += value
            impressions = sum(part.impressions for part in parts)
            clicks = counts.get("click", 0.0)
            out.append(ItemStats(dict(counts), impressions, clicks, self.config.smoothed_ctr(clicks, impressions)))
        return out

    def covisited(self, item_id: str, n: int = 20) -> list[tuple[str, float]]:
        return self.covisited_many([item_id], n)[0]

    def covisited_many(self, item_ids: Sequence[str], n: int = 20) -> list[list[tuple[str, float]]]:
        """Each keyspace's whole list (at most ``covis_top_n``), so the sum is exact within the cap."""
        if n <= 0:
            return [[] for _ in item_ids]
        deep = max(n, self.config.covis_top_n)
        per_store = [fs.covisited_many(item_ids, deep) for fs in self.stores]
        return [_summed(rows, n) for rows in zip(*per_store, strict=True)]

    def bought_together(self, item_ids: Sequence[str], n: int = 20) -> list[list[tuple[str, float]]]:
        if n <= 0:
            return [[] for _ in item_ids]
        deep = max(n, self.config.covis_top_n)
        per_store = [fs.bought_together(item_ids, deep) for fs in self.stores]
        return [_summed(rows, n) for rows in zip(*per_store, strict=True)]

    def item_attributes(self, item_ids: Sequence[str]) -> list[dict | None]:
        """Every keyspace holds the whole catalog: the first answers."""
        return self.stores[0].item_attributes(item_ids)

    def expansions(self, item_ids: Sequence[str], now_ms: int | None = None) -> list[dict[str, float]]:
        now = self._now(now_ms)
        out: list[dict[str, float]] = [defaultdict(float) for _ in item_ids]
        for fs in self.stores:
            for total, terms in zip(out, fs.expansions(item_ids, now), strict=True):
                for term, weight in terms.items():
                    total[term] += weight
        return [dict(x) for x in out]

    def click_memory(self, key: str, now_ms: int | None = None) -> dict[str, tuple[float, float]]:
        now = self._now(now_ms)
        total: dict[str, tuple[float, float]] = {}
        for fs in self.stores:
            for item, (clicks, exams) in fs.click_memory(key, now).items():
                c, e = total.get(item, (0.0, 0.0))
                total[item] = (c + clicks, e + exams)
        return total

    def expansion_changes(self, after: int, n: int) -> tuple[list[tuple[str, int]], int]:
        """The changes of every keyspace's log; the change numbers are merged cursors, one
        :data:`LANE`-bit lane per keyspace, so a caller keeps one number as with one Redis. A
        keyspace whose log went back (a new Redis) answers -1: the caller reads every log again."""
        lanes = [(after >> (LANE * k)) & ((1 << LANE) - 1) for k in range(len(self.stores))]
        rows: list[tuple[str, int]] = []
        newest = 0
        for k, fs in enumerate(self.stores):
            changes, last = fs.expansion_changes(lanes[k], max(0, n - len(rows)))
            if last < lanes[k]:
                return [], -1
            newest |= last << (LANE * k)
            for item, seq in changes:
                lanes[k] = seq
                rows.append((item, sum(lane << (LANE * j) for j, lane in enumerate(lanes))))
        return rows, newest

    # --- the ranking rows ------------------------------------------------------------------------

    def row_reads(
        self,
        user_id: str | None,
        item_ids: Sequence[str],
        now_ms: int | None,
        recent_n: int,
        covisit_of: int,
        covisit_n: int,
    ) -> RowReads:
        """:meth:`FeatureStore.row_reads` from the merged reads (counters decayed to ``now_ms``, else
        the merged clock; the affinity to the merged clock)."""
        clock = self.clock_ms()
        recent = self.recent_items(user_id, recent_n) if user_id and recent_n > 0 else []
        stats = self.item_stats(item_ids, now_ms if now_ms is not None else clock)
        recent_ids = [r.item_id for r in recent]
        covisited = self.covisited_many(recent_ids[:covisit_of], covisit_n) if recent_ids and covisit_n > 0 else []
        attributes = self.item_attributes(list(item_ids) + recent_ids)
        affinity = self.category_affinity(user_id, clock) if user_id else {}
        return RowReads(recent, stats, covisited, attributes, affinity)

    # --- trending and suggestions ----------------------------------------------------------------

    def _scaled_to_clock(self, tops: list[list[tuple[str, float]]], clocks: list[int | None], n: int):
        """Each keyspace's list is decayed to its own clock: decay each to the newest, then add."""
        newest = max((c for c in clocks if c is not None), default=None)
        tau = self.config.tau_ms(self.config.trending_half_life_s)
        scaled = [
            [(m, s * math.exp(-(newest - c) / tau)) for m, s in top] if c is not None and newest is not None else top
            for top, c in zip(tops, clocks, strict=True)
        ]
        return _summed(scaled, n)

    def trending(self, n: int = 20) -> list[tuple[str, float]]:
        """Each keyspace's whole list (at most ``trending_cap``; serving keeps a copy for
        ``trending_cache_s``), so the sum is exact within the cap."""
        if n <= 0:
            return []
        tops = [fs.trending(max(n, self.config.trending_cap)) for fs in self.stores]
        return self._scaled_to_clock(tops, [fs.clock_ms() for fs in self.stores], n)

    def suggestions(self, n: int = 20, category: str | None = None) -> list[tuple[str, float]]:
        """Each keyspace's top ``SUGGEST_DEPTH`` × ``n``: a search text popular in every keyspace but
        at the top of none can be missed (the lists hold up to ``suggest_cap``, too many to read)."""
        if n <= 0:
            return []
        tops = [fs.suggestions(SUGGEST_DEPTH * n, category) for fs in self.stores]
        return self._scaled_to_clock(tops, [fs.clock_ms() for fs in self.stores], n)

    # --- the bot filter and dead letters ---------------------------------------------------------

    def is_quarantined(self, event_id: str) -> str | None:
        return self.quarantined_many([event_id])[0]

    def quarantined_many(self, event_ids: Sequence[str]) -> list[str | None]:
        out: list[str | None] = [None] * len(event_ids)
        for fs in self.stores:
            for i, reason in enumerate(fs.quarantined_many(event_ids)):
                out[i] = out[i] or reason
        return out

    def quarantine_counts(self) -> dict[str, int]:
        return dict(sum((Counter(fs.quarantine_counts()) for fs in self.stores), Counter()))

    def recent_quarantine(self, n: int = QUARANTINE_RECENT_N) -> list[dict]:
        """Each keyspace's newest decisions, keyspace after keyspace (they hold no common clock)."""
        return [d for fs in self.stores for d in fs.recent_quarantine(n)][:n]

    def dead_letter_counts(self) -> dict[str, int]:
        return dict(sum((Counter(fs.dead_letter_counts()) for fs in self.stores), Counter()))
