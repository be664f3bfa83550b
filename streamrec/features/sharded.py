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
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar, cast

import redis
from redis.cluster import RedisCluster
from redis.exceptions import ClusterDownError, MovedError

from streamrec.features.layout import QUARANTINE_RECENT_N
from streamrec.features.reader import (
    CurrentSession,
    FeatureStore,
    ItemStats,
    RecentItem,
    RowReads,
    SessionView,
    TopCopy,
    _attributes_from,
    _recent_from,
    current_session,
)
from streamrec.settings import FeatureSettings, Settings
from streamrec.store import connect, keyspaces

SUGGEST_DEPTH = 5  # suggestions read from each keyspace per one answered
LANE = 64  # bits of one keyspace's expansion-log number in the merged cursor
MOVED = (redis.ConnectionError, MovedError, ClusterDownError)  # a keyspace's master changed (failover)
T = TypeVar("T")


def open_features(
    s: Settings, timeout_s: float | None = None, trending_cache_s: float = 0.0
) -> FeatureStore | ShardedFeatureStore:
    """The feature reader for the settings: one :class:`FeatureStore` on a single Redis, a
    :class:`ShardedFeatureStore` over every keyspace on a Redis Cluster.

    On a cluster each keyspace's reader talks to the master of its slot through a plain client
    (its pipelines are one round trip, without the cluster client's routing of every command);
    after a failover the readers are rebuilt from the cluster's slot map."""
    r = connect(s, timeout_s)
    if not s.redis.cluster:
        return FeatureStore(r, s.redis.prefix, s.features, trending_cache_s)
    cluster = cast(RedisCluster, r)

    def masters(refresh: bool = False) -> list[FeatureStore]:
        if refresh:
            cluster.nodes_manager.initialize()
        return [
            FeatureStore(cluster.get_redis_connection(cluster.get_node_from_key(prefix + "x")), prefix, s.features)
            for prefix in keyspaces(s)
        ]

    return ShardedFeatureStore(
        masters(), s.features, reconnect=lambda: masters(refresh=True), trending_cache_s=trending_cache_s
    )


def _top(scores: dict[str, float], n: int) -> list[tuple[str, float]]:
    """The ``n`` largest, ties by the larger member (Redis's ZREVRANGE order)."""
    return heapq.nlargest(n, scores.items(), key=lambda kv: (kv[1], kv[0]))


def _summed(rows: Iterable[Iterable[tuple[str, float]]], n: int) -> list[tuple[str, float]]:
    total: dict[str, float] = defaultdict(float)
    for row in rows:
        for member, score in row:
            total[member] += score
    return _top(total, n)


def _one_recent_list(lists: Iterable[list[tuple[RecentItem, str]]], n: int) -> list[tuple[RecentItem, str]]:
    """The user's recent list from the keyspace that holds it; lists found in several keyspaces (a
    producer that does not key events by user) merged by event time."""
    found = [entries for entries in lists if entries]
    if len(found) <= 1:
        return found[0] if found else []
    return sorted((e for entries in found for e in entries), key=lambda e: e[0].ts, reverse=True)[:n]


def _newest(clocks: Iterable[int | None]) -> int | None:
    return max((c for c in clocks if c is not None), default=None)


def _counted(parts: Iterable[dict[str, int]]) -> dict[str, int]:
    return dict(sum((Counter(part) for part in parts), Counter()))


def _added(parts: Iterable[dict[str, float]]) -> dict[str, float]:
    total: dict[str, float] = defaultdict(float)
    for part in parts:
        for key, value in part.items():
            total[key] += value
    return dict(total)


class ShardedFeatureStore:
    """:class:`FeatureStore`'s reads, each asked of every keyspace and merged (module docstring)."""

    def __init__(
        self,
        stores: Sequence[FeatureStore],
        config: FeatureSettings | None = None,
        reconnect: Callable[[], list[FeatureStore]] | None = None,
        trending_cache_s: float = 0.0,
    ):
        """``trending_cache_s``: as :class:`FeatureStore`'s, for the merged list (the keyspaces'
        readers keep no copy of their own: the merge of every keyspace's capped list, decayed to one
        clock, is the costly part, and every request asks for it)."""
        self.stores = list(stores)
        self.config = config or FeatureSettings()
        self.reconnect = reconnect
        self._trending = TopCopy(self._read_trending, trending_cache_s)

    def _each(self, read: Callable[[FeatureStore], T]) -> list[T]:
        """``read`` of every keyspace, in order; once more on new readers when a keyspace's master
        moved (a failover), as the cluster client would."""
        try:
            return [read(fs) for fs in self.stores]
        except MOVED:
            if self.reconnect is None:
                raise
            self.stores = self.reconnect()
            return [read(fs) for fs in self.stores]

    # --- the clock and the per-user reads --------------------------------------------------------

    def clock_ms(self) -> int | None:
        return _newest(self._each(lambda fs: fs.clock_ms()))

    def _now(self, now_ms: int | None) -> int | None:
        return now_ms if now_ms is not None else self.clock_ms()

    def _recent_entries(self, user_id: str, n: int) -> list[tuple[RecentItem, str]]:
        """The user's recent list, newest applied first, from the keyspace that holds it; should a
        producer that does not key events by user have spread them over keyspaces, the lists are
        merged by event time."""
        return _one_recent_list(self._each(lambda fs: fs._recent_entries(user_id, n)), n)

    def recent_items(self, user_id: str, n: int = 20) -> list[RecentItem]:
        return [item for item, _ in self._recent_entries(user_id, n)]

    def current_session(self, user_id: str) -> CurrentSession | None:
        cap = self.config.session_cap
        return current_session(user_id, self._recent_entries(user_id, cap), cap)

    def user_counts(self, user_id: str) -> dict[str, int]:
        return _counted(self._each(lambda fs: fs.user_counts(user_id)))

    def category_affinity(self, user_id: str, now_ms: int | None = None) -> dict[str, float]:
        now = self._now(now_ms)
        return _added(self._each(lambda fs: fs.category_affinity(user_id, now)))

    # --- sessions --------------------------------------------------------------------------------

    def session_items(self, token: str) -> list[str]:
        return self.sessions_items([token])[0]

    def sessions_items(self, tokens: Sequence[str]) -> list[list[str]]:
        """A session lives in its user's keyspace: the first that has it."""
        out: list[list[str]] = [[] for _ in tokens]
        for found in self._each(lambda fs: fs.sessions_items(tokens)):
            for i, items in enumerate(found):
                if items and not out[i]:
                    out[i] = items
        return out

    def item_sessions(self, item_ids: Sequence[str], n: int | None = None) -> list[list[tuple[str, float]]]:
        out = []
        for rows in zip(*self._each(lambda fs: fs.item_sessions(item_ids, n)), strict=True):
            merged = sorted((pair for row in rows for pair in row), key=lambda kv: (kv[1], kv[0]), reverse=True)
            out.append(merged if n is None else merged[:n])
        return out

    def neighbour_sessions(self, item_ids: Sequence[str], own: str | None, sample: int) -> list[SessionView]:
        """Exact: a session lives in one keyspace, so the newest ``sample`` of all are among the
        newest ``sample`` of each."""
        if sample <= 0:
            return []
        views = [v for found in self._each(lambda fs: fs.neighbour_sessions(item_ids, own, sample)) for v in found]
        return heapq.nlargest(sample, views, key=lambda v: (v.ts, v.token))

    # --- items -----------------------------------------------------------------------------------

    def item_counts(self, item_id: str) -> dict[str, int]:
        return _counted(self._each(lambda fs: fs.item_counts(item_id)))

    def item_stats(self, item_ids: Sequence[str], now_ms: int | None = None) -> list[ItemStats]:
        now = self._now(now_ms)
        return self._stats_sum(self._each(lambda fs: fs.item_stats(item_ids, now)))

    def _stats_sum(self, per_store: Iterable[list[ItemStats]]) -> list[ItemStats]:
        out = []
        for parts in zip(*per_store, strict=True):
            counts = _added(part.counts for part in parts)
            impressions = sum(part.impressions for part in parts)
            clicks = counts.get("click", 0.0)
            out.append(ItemStats(counts, impressions, clicks, self.config.smoothed_ctr(clicks, impressions)))
        return out

    def covisited(self, item_id: str, n: int = 20) -> list[tuple[str, float]]:
        return self.covisited_many([item_id], n)[0]

    def covisited_many(self, item_ids: Sequence[str], n: int = 20) -> list[list[tuple[str, float]]]:
        """Each keyspace's whole list (at most ``covis_top_n``), so the sum is exact within the cap."""
        if n <= 0 or not item_ids:
            return [[] for _ in item_ids]
        deep = max(n, self.config.covis_top_n)
        return [
            _summed(rows, n) for rows in zip(*self._each(lambda fs: fs.covisited_many(item_ids, deep)), strict=True)
        ]

    def bought_together(self, item_ids: Sequence[str], n: int = 20) -> list[list[tuple[str, float]]]:
        if n <= 0 or not item_ids:
            return [[] for _ in item_ids]
        deep = max(n, self.config.covis_top_n)
        return [
            _summed(rows, n) for rows in zip(*self._each(lambda fs: fs.bought_together(item_ids, deep)), strict=True)
        ]

    def item_attributes(self, item_ids: Sequence[str]) -> list[dict | None]:
        """Every keyspace holds the whole catalog: the first answers."""
        try:
            return self.stores[0].item_attributes(item_ids)
        except MOVED:
            return self._each(lambda fs: fs.item_attributes(item_ids))[0]

    def expansions(self, item_ids: Sequence[str], now_ms: int | None = None) -> list[dict[str, float]]:
        now = self._now(now_ms)
        return [_added(parts) for parts in zip(*self._each(lambda fs: fs.expansions(item_ids, now)), strict=True)]

    def click_memory(self, key: str, now_ms: int | None = None) -> dict[str, tuple[float, float]]:
        now = self._now(now_ms)
        total: dict[str, tuple[float, float]] = {}
        for memory in self._each(lambda fs: fs.click_memory(key, now)):
            for item, (clicks, exams) in memory.items():
                c, e = total.get(item, (0.0, 0.0))
                total[item] = (c + clicks, e + exams)
        return total

    def expansion_changes(self, after: int, n: int) -> tuple[list[tuple[str, int]], int]:
        """The changes of every keyspace's log; the change numbers are merged cursors, one
        :data:`LANE`-bit lane per keyspace, so a caller keeps one number as with one Redis. A
        keyspace whose log went back (a new Redis) answers -1: the caller reads every log again."""
        lanes = [(after >> (LANE * k)) & ((1 << LANE) - 1) for k in range(len(self.stores))]
        logs = self._each(lambda fs: fs.expansion_changes(lanes[self.stores.index(fs)], n))
        rows: list[tuple[str, int]] = []
        newest = 0
        for k, (changes, last) in enumerate(logs):
            if last < lanes[k]:
                return [], -1
            newest |= last << (LANE * k)
            for item, seq in changes[: max(0, n - len(rows))]:
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
        """:meth:`FeatureStore.row_reads` over the keyspaces, in 2 round trips per keyspace: each one's
        clock, the user's recent list and affinity, the candidates' counters (and the first
        keyspace's attributes), merged and decayed to ``now_ms``, else the merged clock (the
        affinity to the merged clock); then the co-visitation of the first recent items."""
        first = self.stores[0]
        parts = self._each(lambda fs: (fs, fs._row_parts(user_id, item_ids, recent_n, attributes=fs is first)))
        newest = _newest(p.clock for _, p in parts)
        clock = float(newest) if newest is not None else time.time() * 1000.0
        now = float(now_ms) if now_ms is not None else clock
        entries = _one_recent_list([_recent_from(p.recent) for _, p in parts], recent_n)
        recent = [item for item, _ in entries]
        stats = self._stats_sum([fs._stats_from(p.items, now) for fs, p in parts])
        affinity = _added(fs._affinity_from(p.affinity, clock) for fs, p in parts)
        attributes = _attributes_from(parts[0][1].attributes)
        recent_ids = [r.item_id for r in recent]
        covisited = self.covisited_many(recent_ids[:covisit_of], covisit_n) if recent_ids and covisit_n > 0 else []
        if recent_ids:
            attributes += self.item_attributes(recent_ids)
        return RowReads(recent, stats, covisited, attributes, affinity)

    # --- trending and suggestions ----------------------------------------------------------------

    def _landmark_sum(self, read: Callable[[FeatureStore], list[tuple[str, float]]], n: int):
        """Each keyspace's list is decayed to its own clock: decay each to the newest, then add."""
        parts = self._each(lambda fs: (read(fs), fs.clock_ms()))
        newest = _newest([clock for _, clock in parts])
        tau = self.config.tau_ms(self.config.trending_half_life_s)
        scaled = [
            [(m, v * math.exp(-(newest - c) / tau)) for m, v in top] if c is not None and newest is not None else top
            for top, c in parts
        ]
        return _summed(scaled, n)

    def trending(self, n: int = 20) -> list[tuple[str, float]]:
        """Each keyspace's whole list (at most ``trending_cap``; serving keeps a copy for
        ``trending_cache_s``), so the sum is exact within the cap."""
        return self._trending.top(n) if n > 0 else []

    def _read_trending(self, n: int) -> list[tuple[str, float]]:
        return self._landmark_sum(lambda fs: fs.trending(max(n, self.config.trending_cap)), n)

    def suggestions(self, n: int = 20, category: str | None = None) -> list[tuple[str, float]]:
        """Each keyspace's top ``SUGGEST_DEPTH`` × ``n``: a search text popular in every keyspace but
        at the top of none can be missed (the lists hold up to ``suggest_cap``, too many to read)."""
        if n <= 0:
            return []
        return self._landmark_sum(lambda fs: fs.suggestions(SUGGEST_DEPTH * n, category), n)

    # --- the bot filter and dead letters ---------------------------------------------------------

    def is_quarantined(self, event_id: str) -> str | None:
        return self.quarantined_many([event_id])[0]

    def quarantined_many(self, event_ids: Sequence[str]) -> list[str | None]:
        out: list[str | None] = [None] * len(event_ids)
        for found in self._each(lambda fs: fs.quarantined_many(event_ids)):
            out = [mine or theirs for mine, theirs in zip(out, found, strict=True)]
        return out

    def quarantine_counts(self) -> dict[str, int]:
        return _counted(self._each(lambda fs: fs.quarantine_counts()))

    def recent_quarantine(self, n: int = QUARANTINE_RECENT_N) -> list[dict]:
        """Every keyspace's newest decisions, newest event time first (a decision stored before the
        event time was recorded sorts last)."""
        found = [d for each in self._each(lambda fs: fs.recent_quarantine(n)) for d in each]
        return sorted(found, key=lambda d: d.get("ts", -1), reverse=True)[:n]

    def dead_letter_counts(self) -> dict[str, int]:
        return _counted(self._each(lambda fs: fs.dead_letter_counts()))
