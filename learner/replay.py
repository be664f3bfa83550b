"""Offline replay: drive the online-learning core from a list of events, without Kafka or Redis.

Why: tests and benchmarks on public logs must run in seconds, and must exercise the *same*
example building (:class:`ExampleBuilder`) and feature code (:class:`FeatureAssembler`) as the
service. :class:`ReplayFeatures` is the offline twin of ``streamrec.features.FeatureStore``: the
same read API and the same definitions (event-time decay, half-lives, CTR prior, type weights
from ``FeatureConfig``), kept in memory and updated by :meth:`ReplayFeatures.observe` *after*
each event's examples were built — so a row never sees its own label.
"""

from __future__ import annotations

import math
from collections import defaultdict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np

from learner.examples import Example
from learner.joiner import LabelJoiner
from learner.online import OnlineLearner, StepReport
from learner.pipeline import ExampleBuilder
from streamrec.features import INTERACTIONS, FeatureConfig, ItemStats, RecentItem
from streamrec.ranking import FeatureAssembler
from streamrec.schemas import Event


class _Decayed:
    """sum(exp(-(t - ts_i) / tau)) kept as (value, reference time), like the Redis layout."""

    __slots__ = ("v", "t")

    def __init__(self) -> None:
        self.v, self.t = 0.0, 0.0

    def add(self, ts: float, w: float, tau: float) -> None:
        if ts >= self.t:
            self.v = self.v * math.exp(-(ts - self.t) / tau) + w
            self.t = ts
        else:
            self.v += w * math.exp(-(self.t - ts) / tau)

    def at(self, now: float, tau: float) -> float:
        return self.v * math.exp(-max(0.0, now - self.t) / tau)


class ReplayFeatures:
    """In-memory features with ``FeatureStore``'s read API, for replays of public logs."""

    def __init__(self, attributes: dict[str, dict] | None = None, config: FeatureConfig | None = None):
        self.cfg = config or FeatureConfig()
        self.attrs = dict(attributes or {})
        self.recent: dict[str, deque[RecentItem]] = defaultdict(lambda: deque(maxlen=self.cfg.recent_cap))
        self.items: dict[str, dict[str, _Decayed]] = defaultdict(lambda: defaultdict(_Decayed))
        self.covis: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        self.trend: dict[str, _Decayed] = defaultdict(_Decayed)
        self.affinity: dict[str, dict[str, _Decayed]] = defaultdict(lambda: defaultdict(_Decayed))
        self.clock = 0

    def observe(self, e: Event) -> None:
        cfg = self.cfg
        self.clock = max(self.clock, e.ts)
        tau_item = cfg.tau_ms(cfg.item_half_life_s)
        if e.type == "impression":
            for iid in e.item_ids or []:
                self.items[iid]["impression"].add(e.ts, 1.0, tau_item)
            return
        iid = e.item_id
        self.items[iid][e.type].add(e.ts, 1.0, tau_item)
        self.trend[iid].add(e.ts, cfg.weight(e.type), cfg.tau_ms(cfg.trending_half_life_s))
        cat = (self.attrs.get(iid) or {}).get("category")
        if cat:
            self.affinity[e.user_id][cat].add(e.ts, cfg.weight(e.type), cfg.tau_ms(cfg.affinity_half_life_s))
        recent = self.recent[e.user_id]
        window = cfg.covis_window_s * 1000
        for k, r in enumerate(recent):
            if k >= cfg.covis_lookback or e.ts - r.ts > window:
                break
            if r.item_id != iid:
                self.covis[iid][r.item_id] += 1.0
                self.covis[r.item_id][iid] += 1.0
        recent.appendleft(RecentItem(iid, e.type, e.ts))

    # --- FeatureStore's read API -----------------------------------------------------------------

    def recent_items(self, user_id: str, n: int = 20) -> list[RecentItem]:
        return list(self.recent.get(user_id, ()))[:n]

    def item_stats(self, item_ids: list[str], now_ms: int | None = None) -> list[ItemStats]:
        cfg = self.cfg
        now = float(now_ms if now_ms is not None else self.clock)
        tau = cfg.tau_ms(cfg.item_half_life_s)
        out = []
        for iid in item_ids:
            h = self.items.get(iid, {})
            counts = {t: (h[t].at(now, tau) if t in h else 0.0) for t in INTERACTIONS}
            imps = h["impression"].at(now, tau) if "impression" in h else 0.0
            ctr = (counts["click"] + cfg.ctr_prior_clicks) / (imps + cfg.ctr_prior_impressions)
            out.append(ItemStats(counts=counts, impressions=imps, clicks=counts["click"], ctr=ctr))
        return out

    def covisited(self, item_id: str, n: int = 20) -> list[tuple[str, float]]:
        return sorted(self.covis.get(item_id, {}).items(), key=lambda kv: -kv[1])[:n]

    def trending(self, n: int = 20) -> list[tuple[str, float]]:
        tau = self.cfg.tau_ms(self.cfg.trending_half_life_s)
        scores = [(i, d.at(self.clock, tau)) for i, d in self.trend.items()]
        return sorted(scores, key=lambda kv: -kv[1])[:n]

    def category_affinity(self, user_id: str, now_ms: int | None = None) -> dict[str, float]:
        tau = self.cfg.tau_ms(self.cfg.affinity_half_life_s)
        now = float(now_ms if now_ms is not None else self.clock)
        return {c: d.at(now, tau) for c, d in self.affinity.get(user_id, {}).items()}

    def item_attributes(self, item_ids: list[str]) -> list[dict | None]:
        return [self.attrs.get(i) for i in item_ids]


@dataclass
class ReplayLog:
    """Per click-labelled example, in learning order: the champion's pre-learning score and label."""

    p_click: list[float] = field(default_factory=list)
    click: list[float] = field(default_factory=list)
    stream_index: list[int] = field(default_factory=list)   # stream index of the example's impression
    item_ids: list[str] = field(default_factory=list)
    detections: list = field(default_factory=list)          # (stream_index, Detection)
    promotions: list[int] = field(default_factory=list)     # stream indices
    challenger_starts: list[int] = field(default_factory=list)

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return np.array(self.p_click), np.array(self.click), np.array(self.stream_index)


def replay(events: Iterable[Event], core: OnlineLearner, features: ReplayFeatures,
           vectors: Callable[[str], np.ndarray | None], *, window_s: float = 60.0, batch_size: int = 64,
           on_event: Callable[[int, Event], None] | None = None,
           on_step: Callable[[list[Example], StepReport], None] | None = None) -> ReplayLog:
    """Feed ``events`` through join → features → prequential step; returns what was predicted."""
    joiner = LabelJoiner(window_s, clock=lambda: 0.0)   # event time only: replay speed does not matter
    builder = ExampleBuilder(joiner, FeatureAssembler(features, vectors))
    log = ReplayLog()
    ready: list[tuple[int, Example]] = []
    shown_at: dict[str, int] = {}   # request_id → stream index of its impression

    def step(chunk: list[tuple[int, Example]]) -> None:
        examples = [e for _, e in chunk]
        report = core.step(examples)
        if on_step is not None:
            on_step(examples, report)
        last = chunk[-1][0]
        for (idx, ex), p in zip(chunk, report.p_click):
            if ex.click is not None:
                log.p_click.append(float(p))
                log.click.append(ex.click)
                log.stream_index.append(shown_at.get(ex.request_id, idx))
                log.item_ids.append(ex.item_id)
        log.detections.extend((last, d) for d in report.detections)
        if report.challenger_started:
            log.challenger_starts.append(last)
        if report.promoted:
            log.promotions.append(last)

    idx = -1
    for idx, ev in enumerate(events):
        if on_event is not None:
            on_event(idx, ev)
        if ev.type == "impression":
            shown_at[ev.request_id] = idx
        ready.extend((idx, ex) for ex in builder.feed(ev))
        features.observe(ev)
        ready.extend((idx, ex) for ex in builder.expire())
        while len(ready) >= batch_size:
            step(ready[:batch_size])
            ready = ready[batch_size:]
    ready.extend((idx, ex) for ex in builder.expire(flush_all=True))
    for k in range(0, len(ready), batch_size):
        step(ready[k:k + batch_size])
    return log
