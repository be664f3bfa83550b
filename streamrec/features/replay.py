"""The in-memory twin of the writer script: the online features without Redis, for replays.

Why: tests and benchmarks on public logs must run in seconds without Redis, and must build the
same features the service reads. :class:`ReplayFeatures` has :class:`~streamrec.features.reader.FeatureStore`'s
read API and follows the writer script's rules (``apply.lua``) with the same definitions (event-time
decay from ``decay.py``, half-lives, caps, CTR prior, type weights from ``FeatureSettings``);
``tests/test_feature_parity.py`` feeds both one event list and compares every read. The replay
driver (``learner/replay.py``) calls :meth:`ReplayFeatures.observe` *after* each event's examples
were built, so a row never sees its own label.
"""

from __future__ import annotations

import bisect
import heapq
from collections import defaultdict, deque
from dataclasses import dataclass
from itertools import islice

from streamrec.analysis import category_key, category_levels, query_key, suggestion_text
from streamrec.features.decay import decay, forward, landmark_scale, merge_decayed, needs_rescale
from streamrec.features.layout import BASKET, INTERACTIONS, session_token
from streamrec.features.reader import (
    CurrentSession,
    ItemStats,
    RecentItem,
    RowReads,
    SessionView,
    current_session,
    sample_sessions,
)
from streamrec.features.writer import expansion_terms
from streamrec.schemas import CatalogOp, Event
from streamrec.settings import FeatureSettings

_Decayed = tuple[float, float]  # (value, reference ts): the lazy-decay pair of the Redis layout


@dataclass
class _Search:
    """One remembered search of a user (``qs`` in the user hash): what links a click to its query
    and its page (the click memory's examinations are counted once per page)."""

    request_id: str
    terms: str
    query_key: str
    shown: list[str]  # item ids at the page's first memory_positions positions
    first_position: int
    counted: bool = False


@dataclass(frozen=True)
class _Entry:
    """One recent-list entry, as the Redis list holds it."""

    event_id: str
    item_id: str
    type: str
    ts: int
    session: str


def _top(scores: dict[str, float], n: int) -> list[tuple[str, float]]:
    """``ZREVRANGE`` order: score descending, ties by member descending."""
    return sorted(scores.items(), key=lambda kv: (kv[1], kv[0]), reverse=True)[:n]


def _trim(scores: dict[str, float], cap: int) -> None:
    """``ZREMRANGEBYRANK`` of the lowest ranks (score ascending, ties by member ascending) down to ``cap``."""
    extra = len(scores) - cap
    if extra > 0:
        for m, _ in heapq.nsmallest(extra, scores.items(), key=lambda kv: (kv[1], kv[0])):
            del scores[m]


class ReplayFeatures:
    """In-memory features with ``FeatureStore``'s read API, for replays of public logs.

    :meth:`observe` follows the rules of the Redis writer (``apply.lua``) with the
    bot filter off: a repeated ``event_id`` among the user's last ``dedup_lookback`` events (or, for an
    impression, among the user's last ``dedup_lookback`` impressions) is dropped;
    co-visitation counts the user's distinct earlier items of the same session within
    ``covis_window_s`` among the last ``covis_lookback``; a session (``session_token``) keeps its
    last ``session_cap`` items and an item its ``item_sessions_cap`` most recent sessions;
    ``recent_cap``, ``covis_top_n``, ``category_cap`` and ``trending_cap`` bound what is kept. It
    behaves like the writer fed one event per batch (the writer trims its caps at the end of each batch);
    ``tests/test_feature_parity.py`` checks that both give the same reads.
    """

    def __init__(self, attributes: dict[str, dict] | None = None, config: FeatureSettings | None = None):
        self.cfg = config or FeatureSettings()
        self.attrs: dict[str, dict | None] = dict(attributes or {})
        self.attr_ts: dict[str, int] = {}
        self.recent: dict[str, deque[_Entry]] = defaultdict(lambda: deque(maxlen=self.cfg.recent_cap))
        # each user's last dedup_lookback impression event_ids: a repeated impression counts once
        self.impressions: dict[str, deque[str]] = defaultdict(lambda: deque(maxlen=max(1, self.cfg.dedup_lookback)))
        self.items: dict[str, dict[str, _Decayed]] = defaultdict(dict)
        self.covis: dict[str, dict[str, float]] = defaultdict(dict)
        self.cobuy: dict[str, dict[str, float]] = defaultdict(dict)
        # trending as P:trending holds it: forward-decayed scores relative to the landmark trend_t0,
        # and the same (score, item) pairs in ZSET order (ascending), kept sorted as scores change so
        # a read takes the top n without decaying or sorting anything
        self.trend: dict[str, float] = {}
        self.trend_t0: float | None = None
        self._trend_order: list[tuple[float, str]] = []
        self.suggest: dict[str, float] = {}  # P:suggest: search text -> forward-decayed score on trend_t0
        self.suggest_by_category: dict[str, dict[str, float]] = {}  # P:sgc:{category}, the same per level
        self.affinity: dict[str, dict[str, _Decayed]] = defaultdict(dict)
        self.sessions: dict[str, deque[str]] = defaultdict(lambda: deque(maxlen=self.cfg.session_cap))
        self.item_sess: dict[str, dict[str, float]] = defaultdict(dict)
        # query-log expansion and click memory: each user's last searches, newest first; per item
        # (reference ts, term -> weight); the change log item -> change number; per query key
        # (reference ts, item -> clicks, item -> examinations)
        self.searches: dict[str, deque[_Search]] = defaultdict(lambda: deque(maxlen=max(1, self.cfg.expansion_links)))
        self.memory: dict[str, tuple[float, dict[str, float], dict[str, float]]] = {}
        self.eta = self.cfg.memory_eta  # P:examination, as the learner would write it
        self.expansion: dict[str, tuple[float, dict[str, float]]] = {}
        self.expansion_log: dict[str, int] = {}
        self.expansion_seq = 0
        self.clock = 0

    def observe(self, e: Event | CatalogOp) -> None:
        if isinstance(e, CatalogOp):
            self._catalog(e)
        elif e.type == "impression":
            self.clock = max(self.clock, e.ts)
            if self.cfg.dedup_lookback > 0:
                shown = self.impressions[e.user_id]
                if e.event_id in shown:
                    return
                shown.appendleft(e.event_id)
            for iid in e.item_ids or []:
                self._bump(self.items[iid], "impression", e.ts, 1.0, self.cfg.item_half_life_s)
            self._remember_search(e)
        else:
            self.clock = max(self.clock, e.ts)  # a dropped duplicate still moves the clock, as in Redis
            if not self._duplicate(e):
                self._interaction(e)

    def _remember_search(self, e: Event) -> None:
        """The writer's ``remember_search``: a search with a query, and its page for the click memory."""
        cfg = self.cfg
        terms = " ".join(expansion_terms(e.query, cfg.expansion_query_terms))
        qkey = query_key(e.query) if e.query and cfg.memory_cap > 0 else ""
        if (not terms and not qkey) or cfg.expansion_links <= 0:
            return
        first = e.position or 0
        shown = list((e.item_ids or [])[: max(0, cfg.memory_positions - first)]) if qkey else []
        self.searches[e.user_id].appendleft(_Search(e.request_id or "", terms, qkey, shown, first))

    def _linked_search(self, e: Event) -> _Search | None:
        return next((s for s in self.searches.get(e.user_id, ()) if s.request_id == e.request_id), None)

    def _catalog(self, op: CatalogOp) -> None:
        """An older op never overwrites a newer one; a delete hides the item's attributes."""
        if op.ts < self.attr_ts.get(op.item_id, -1):
            return
        if op.op == "patch":  # a live item's named fields only
            attrs = self.attrs.get(op.item_id)
            if attrs is None:
                return
            self.attr_ts[op.item_id] = op.ts
            given = op.model_fields_set
            if "title" in given:
                attrs["title"] = op.title
            if "category" in given:
                attrs["category"] = op.category or None
            if "price" in given:
                attrs["price"] = op.price
            return
        self.attr_ts[op.item_id] = op.ts
        self.attrs[op.item_id] = (
            None if op.op == "delete" else {"title": op.title, "category": op.category or None, "price": op.price}
        )

    def _duplicate(self, e: Event) -> bool:
        recent = self.recent[e.user_id]
        return any(r.event_id == e.event_id for r in islice(recent, self.cfg.dedup_lookback))

    def _bump(self, h: dict[str, _Decayed], key: str, ts: int, w: float, half_life_s: float) -> None:
        v, t = h.get(key, (None, None))
        h[key] = merge_decayed(v, t, ts, w, self.cfg.tau_ms(half_life_s))

    def _interaction(self, e: Event) -> None:
        cfg, iid = self.cfg, e.item_id
        assert iid is not None  # an interaction names its item (Event's validator)
        w = cfg.weight(e.type)
        self._covisit(e)
        session = e.session_id or ""
        self.recent[e.user_id].appendleft(_Entry(e.event_id, iid, e.type, e.ts, session))
        self._bump(self.items[iid], e.type, e.ts, 1.0, cfg.item_half_life_s)
        self._affinity(e.user_id, iid, e.ts, w)
        self._trending(iid, e.ts, w)
        if e.query and e.type != "view" and cfg.suggest_cap > 0 and (text := suggestion_text(e.query)):
            self._suggest(text, iid, e.ts, w)
        self._add_to_session(e)
        linked = self._linked_search(e) if e.request_id else None
        self._expand(e, linked)
        memory_weight = cfg.memory_weight(e.type)
        if memory_weight > 0 and linked is not None and cfg.memory_cap > 0:
            self._remember_click(linked, iid, e.ts, memory_weight)

    def _remember_click(self, search: _Search, item: str, ts: int, w: float) -> None:
        """The writer's ``memory_click``: the page's examinations once, the click (an add to cart or
        a purchase: weight ``w``), decayed to one reference ts; the least examined products beyond
        ``memory_cap`` evicted."""
        cfg = self.cfg
        if not search.query_key or not search.shown or item not in search.shown:
            return
        tau = cfg.tau_ms(cfg.memory_half_life_s)
        ref, c, ex = self.memory.get(search.query_key, (float(ts), {}, {}))
        c, ex = dict(c), dict(ex)
        if ts > ref:
            c = {k: decay(v, ref, ts, tau) for k, v in c.items()}
            ex = {k: decay(v, ref, ts, tau) for k, v in ex.items()}
            ref = float(ts)
        add = decay(1.0, ts, ref, tau)
        if not search.counted:
            for i, id_ in enumerate(search.shown, start=1):
                ex[id_] = ex.get(id_, 0.0) + add * (1 / (search.first_position + i)) ** self.eta
            search.counted = True
        c[item] = c.get(item, 0.0) + add * w
        names = set(c) | set(ex)
        if len(names) > cfg.memory_cap:
            for k in sorted(names, key=lambda k: (ex.get(k, 0.0), k))[: len(names) - cfg.memory_cap]:
                c.pop(k, None)
                ex.pop(k, None)
        self.memory[search.query_key] = (ref, c, ex)

    def _trending(self, item: str, ts: int, w: float) -> None:
        """The writer's ``trending``: add the forward-decayed weight (moving the landmark first when
        the exponent grows too large), then trim the lowest beyond ``trending_cap``."""
        tau = self.cfg.tau_ms(self.cfg.trending_half_life_s)
        if self.trend_t0 is None:
            self.trend_t0 = float(ts)
        elif needs_rescale(ts, self.trend_t0, tau):
            scale = landmark_scale(self.trend_t0, ts, tau)
            self.trend = {i: s * scale for i, s in self.trend.items()}
            self._trend_order = sorted((s, i) for i, s in self.trend.items())
            self.suggest = {q: s * scale for q, s in self.suggest.items()}
            self.suggest_by_category = {
                c: {q: s * scale for q, s in row.items()} for c, row in self.suggest_by_category.items()
            }
            self.trend_t0 = float(ts)
        order = self._trend_order
        old = self.trend.get(item)
        if old is not None:
            del order[bisect.bisect_left(order, (old, item))]
        new = (old or 0.0) + forward(w, ts, self.trend_t0, tau)
        self.trend[item] = new
        bisect.insort(order, (new, item))
        extra = len(order) - self.cfg.trending_cap
        if extra > 0:  # ZREMRANGEBYRANK of the lowest ranks
            for _, i in order[:extra]:
                del self.trend[i]
            del order[:extra]

    def _suggest(self, text: str, item: str, ts: int, w: float) -> None:
        """The writer's ``suggest``: the forward-decayed weight on trending's landmark (``_trending``
        ran first and moved it when due), globally and for every level of the item's category;
        trimmed to the caps as the script does, per batch there, per event here (a batch adds far
        fewer than a cap, so the kept set is the same)."""
        assert self.trend_t0 is not None  # set by _trending
        inc = forward(w, ts, self.trend_t0, self.cfg.tau_ms(self.cfg.trending_half_life_s))
        self.suggest[text] = self.suggest.get(text, 0.0) + inc
        _trim_lowest(self.suggest, self.cfg.suggest_cap)
        category = (self.attrs.get(item) or {}).get("category")
        if not category or self.cfg.suggest_category_cap <= 0:
            return
        levels = category_levels(category)
        for depth in range(1, len(levels) + 1):
            row = self.suggest_by_category.setdefault(category_key(levels[:depth]), {})
            row[text] = row.get(text, 0.0) + inc
            _trim_lowest(row, self.cfg.suggest_category_cap)

    def _expand(self, e: Event, linked: _Search | None) -> None:
        """The writer's ``expand``: the event's query terms (else its linked search's) added to the
        item's expansion, everything decayed to one reference ts, the weakest beyond the cap evicted."""
        cfg, w = self.cfg, self.cfg.expansion_weight(e.type)
        if w <= 0 or e.item_id is None:
            return
        terms = " ".join(expansion_terms(e.query, cfg.expansion_query_terms))
        if not terms and linked is not None:
            terms = linked.terms
        if not terms:
            return
        tau = cfg.tau_ms(cfg.expansion_half_life_s)
        ref, h = self.expansion.get(e.item_id, (float(e.ts), {}))
        h = dict(h)
        if e.ts > ref:
            h = {t: decay(v, ref, e.ts, tau) for t, v in h.items()}
            ref = float(e.ts)
        add = decay(w, e.ts, ref, tau)
        for t in terms.split():
            h[t] = h.get(t, 0.0) + add
        if len(h) > cfg.expansion_cap:
            h = dict(heapq.nlargest(cfg.expansion_cap, h.items(), key=lambda kv: (kv[1], kv[0])))
        self.expansion[e.item_id] = (ref, h)
        self.expansion_seq += 1
        self.expansion_log.pop(e.item_id, None)
        self.expansion_log[e.item_id] = self.expansion_seq
        while len(self.expansion_log) > cfg.expansion_log_cap:  # insertion order = change order
            del self.expansion_log[next(iter(self.expansion_log))]

    def _add_to_session(self, e: Event) -> None:
        """Session list (newest first) and item -> sessions (newest ts kept, the oldest trimmed)."""
        token = session_token(e.user_id, e.session_id)
        assert e.item_id is not None  # interactions carry an item (the Event validator)
        self.sessions[token].appendleft(e.item_id)
        row = self.item_sess[e.item_id]
        row[token] = max(row.get(token, float(e.ts)), float(e.ts))
        _trim(row, self.cfg.item_sessions_cap)

    def _covisit(self, e: Event) -> None:
        """The user's distinct earlier items of the same session within the window, both directions."""
        cfg, iid, session = self.cfg, e.item_id, e.session_id or ""
        assert iid is not None
        seen = {iid}
        basket: dict[str, None] = {}  # the session's earlier add-to-carts and purchases, in order
        in_basket = False  # the item was already added or bought in this session: pairs nothing again
        window = cfg.covis_window_s * 1000.0
        covisited = []
        for r in islice(self.recent[e.user_id], cfg.covis_lookback):
            if r.session != session or abs(e.ts - r.ts) > window:
                continue
            if r.item_id not in seen:
                seen.add(r.item_id)
                covisited.append(r.item_id)
            if e.type in BASKET and r.type in BASKET:
                if r.item_id == iid:
                    in_basket = True
                else:
                    basket.setdefault(r.item_id)
        bought = [] if in_basket else list(basket)
        for table, others in ((self.covis, covisited), (self.cobuy, bought)):
            for other in others:
                for a, b in ((iid, other), (other, iid)):
                    table[a][b] = table[a].get(b, 0.0) + 1.0
            for a in ([iid] + others) if others else []:
                _trim(table[a], cfg.covis_top_n)

    def _affinity(self, user: str, item: str, ts: int, w: float) -> None:
        cat = (self.attrs.get(item) or {}).get("category")
        if not cat:
            return
        aff = self.affinity[user]
        new = cat not in aff
        self._bump(aff, cat, ts, w, self.cfg.affinity_half_life_s)
        if new and len(aff) > self.cfg.category_cap:  # evict the weakest other category, decayed to ts
            tau = self.cfg.tau_ms(self.cfg.affinity_half_life_s)
            worst = min((c for c in aff if c != cat), key=lambda c: (decay(*aff[c], ts, tau), c))
            del aff[worst]

    # --- FeatureStore's read API -----------------------------------------------------------------

    def recent_items(self, user_id: str, n: int = 20) -> list[RecentItem]:
        return [RecentItem(r.item_id, r.type, r.ts) for r in list(self.recent.get(user_id, ()))[: max(0, n)]]

    def current_session(self, user_id: str) -> CurrentSession | None:
        cap = self.cfg.session_cap
        entries = [(RecentItem(r.item_id, r.type, r.ts), r.session) for r in islice(self.recent.get(user_id, ()), cap)]
        return current_session(user_id, entries, cap)

    def session_items(self, token: str) -> list[str]:
        return self.sessions_items([token])[0]

    def sessions_items(self, tokens: list[str]) -> list[list[str]]:
        return [list(self.sessions.get(t, ()))[::-1] for t in tokens]

    def item_sessions(self, item_ids: list[str], n: int | None = None) -> list[list[tuple[str, float]]]:
        if n is not None and n <= 0:
            return [[] for _ in item_ids]
        return [_top(self.item_sess.get(i, {}), len(self.item_sess.get(i, {})) if n is None else n) for i in item_ids]

    def item_stats(self, item_ids: list[str], now_ms: int | None = None) -> list[ItemStats]:
        cfg = self.cfg
        now = float(now_ms if now_ms is not None else self.clock)
        tau = cfg.tau_ms(cfg.item_half_life_s)
        out = []
        for iid in item_ids:
            h = self.items.get(iid, {})
            counts = {t: (decay(*h[t], now, tau) if t in h else 0.0) for t in INTERACTIONS}
            imps = decay(*h["impression"], now, tau) if "impression" in h else 0.0
            out.append(
                ItemStats(
                    counts=counts, impressions=imps, clicks=counts["click"], ctr=cfg.smoothed_ctr(counts["click"], imps)
                )
            )
        return out

    def expansions(self, item_ids: list[str], now_ms: int | None = None) -> list[dict[str, float]]:
        now = float(now_ms if now_ms is not None else self.clock)
        tau = self.cfg.tau_ms(self.cfg.expansion_half_life_s)
        out = []
        for iid in item_ids:
            ref, h = self.expansion.get(iid, (now, {}))
            out.append({t: decay(v, ref, now, tau) for t, v in h.items()})
        return out

    def click_memory(self, key: str, now_ms: int | None = None) -> dict[str, tuple[float, float]]:
        ref, c, ex = self.memory.get(key, (0.0, {}, {}))
        tau = self.cfg.tau_ms(self.cfg.memory_half_life_s)
        now = float(now_ms if now_ms is not None else self.clock)
        return {
            k: (decay(c.get(k, 0.0), ref, now, tau), decay(ex.get(k, 0.0), ref, now, tau)) for k in set(c) | set(ex)
        }

    def expansion_changes(self, after: int, n: int) -> tuple[list[tuple[str, int]], int]:
        rows = [(i, seq) for i, seq in self.expansion_log.items() if seq > after][:n]
        return rows, self.expansion_seq

    def covisited(self, item_id: str, n: int = 20) -> list[tuple[str, float]]:
        return _top(self.covis.get(item_id, {}), max(0, n))

    def neighbour_sessions(self, item_ids: list[str], own: str | None, sample: int) -> list[SessionView]:
        if not item_ids or sample <= 0:
            return []
        sampled = sample_sessions(self.item_sessions(list(dict.fromkeys(item_ids))), own, sample)
        views = [
            SessionView(t, ts, items)
            for (t, ts), items in zip(sampled, self.sessions_items([t for t, _ in sampled]), strict=True)
        ]
        return [v for v in views if v.items]

    def covisited_many(self, item_ids: list[str], n: int = 20) -> list[list[tuple[str, float]]]:
        return [self.covisited(i, n) for i in item_ids]

    def bought_together(self, item_ids: list[str], n: int = 20) -> list[list[tuple[str, float]]]:
        return [_top(self.cobuy.get(i, {}), max(0, n)) for i in item_ids]

    def trending(self, n: int = 20) -> list[tuple[str, float]]:
        """``FeatureStore.trending``: the top ``n`` in ZREVRANGE order, scaled to the stream clock."""
        if n <= 0 or self.trend_t0 is None:
            return []
        scale = landmark_scale(self.trend_t0, self.clock, self.cfg.tau_ms(self.cfg.trending_half_life_s))
        return [(i, s * scale) for s, i in reversed(self._trend_order[-n:])]

    def suggestions(self, n: int = 20, category: str | None = None) -> list[tuple[str, float]]:
        """``FeatureStore.suggestions``: the top ``n`` searches (within ``category``), scaled to the clock."""
        if n <= 0 or self.trend_t0 is None:
            return []
        scale = landmark_scale(self.trend_t0, self.clock, self.cfg.tau_ms(self.cfg.trending_half_life_s))
        scores = (
            self.suggest
            if category is None
            else self.suggest_by_category.get(category_key(category_levels(category)), {})
        )
        top = heapq.nlargest(n, ((s, q) for q, s in scores.items()))
        return [(q, s * scale) for s, q in top]

    def category_affinity(self, user_id: str, now_ms: int | None = None) -> dict[str, float]:
        tau = self.cfg.tau_ms(self.cfg.affinity_half_life_s)
        now = float(now_ms if now_ms is not None else self.clock)
        return {c: decay(v, t, now, tau) for c, (v, t) in self.affinity.get(user_id, {}).items()}

    def item_attributes(self, item_ids: list[str]) -> list[dict | None]:
        return [self.attrs.get(i) for i in item_ids]

    def row_reads(
        self,
        user_id: str | None,
        item_ids: list[str],
        now_ms: int | None,
        recent_n: int,
        covisit_of: int,
        covisit_n: int,
    ) -> RowReads:
        """``FeatureStore.row_reads``: the same reads, one by one."""
        recent = self.recent_items(user_id, recent_n) if user_id else []
        recent_ids = [r.item_id for r in recent]
        return RowReads(
            recent=recent,
            stats=self.item_stats(item_ids, now_ms),
            covisited=self.covisited_many(recent_ids[:covisit_of], covisit_n) if recent_ids else [],
            attributes=self.item_attributes(list(item_ids) + recent_ids),
            affinity=self.category_affinity(user_id) if user_id else {},
        )


def _trim_lowest(scores: dict[str, float], cap: int) -> None:
    """ZREMRANGEBYRANK of the lowest ranks beyond ``cap`` (ties: the lexically smaller member first)."""
    extra = len(scores) - cap
    if extra > 0:
        for _, q in sorted((s, q) for q, s in scores.items())[:extra]:
            del scores[q]
