"""Each session family's scores for one prefix, as pure functions over plain data.

Why these families: a shopper's next click is mostly explained by what came next in *other*
sessions that share the current one's recent items (STAN, V-SKNN), by items often viewed together
with them (co-visitation), and by the session's own items (a re-view is often the next click);
trending is the cold start and the tie-break. The measured share of each is in the README
(Benchmarks). Why pure functions: the inputs are what the online features hold
(``streamrec/features/layout.py``: session lists, the item -> sessions index, co-visitation rows,
trending), so the same code scores a live request and an offline replay
(:mod:`streamrec.sessions.candidates` reads them), and tests run on hand-made sessions.

A prefix is the current session's items, oldest first; positions are 1-based, ``t = len(prefix)``.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from streamrec.settings import RecommendSettings

Scores = dict[str, float]


@dataclass(frozen=True)
class Neighbour:
    """A candidate neighbour session: its token, items (oldest first) and newest event ts."""

    token: str
    items: Sequence[str]
    ts: float
    # set once here, not a cached_property: a request builds up to ``sample`` (500) neighbours
    # and 3.11's cached_property takes a lock on every read
    distinct: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "distinct", frozenset(self.items))


@dataclass(frozen=True)
class Scored:
    """A neighbour with its similarity and the prefix item it shares that is most recent there."""

    sim: float
    neighbour: Neighbour
    anchor: str
    anchor_pos: int  # 1-based position of ``anchor`` in the prefix


def last_positions(prefix: Sequence[str]) -> dict[str, int]:
    """Item -> 1-based position of its last occurrence in the prefix."""
    return {item: j for j, item in enumerate(prefix, 1)}


def repeat(prefix: Sequence[str], decay: float) -> Scores:
    """rep(x) = sum over x's positions j of decay^(t - j): re-viewing is often the next click."""
    t = len(prefix)
    out: Scores = {}
    for j, item in enumerate(prefix, 1):
        out[item] = out.get(item, 0.0) + decay ** (t - j)
    return out


def stan_neighbours(prefix: Sequence[str], neighbours: Sequence[Neighbour], p: RecommendSettings) -> list[Scored]:
    """STAN similarity (Garg et al., SIGIR 2019), top ``p.neighbours``:
    sim(n) = sum_{y in p & n} exp((pos(y) - t)/l1) / sqrt(|p| |n|) * exp(-(newest ts - ts_n)/tau),
    with ``|.|`` distinct items; recency is event time relative to the newest candidate, so replays
    of old data and live traffic score alike and nothing underflows."""
    pos = last_positions(prefix)
    t, n_prefix = len(prefix), len(pos)
    if not neighbours or not pos:
        return []
    newest = max(n.ts for n in neighbours)
    recency_ms = p.recency_ms
    weight = [math.exp((j - t) / p.stan_position_decay) for j in range(t + 1)]  # by 1-based position
    out = []
    for n in neighbours:
        distinct = n.distinct
        shared = pos.keys() & distinct
        if not shared:
            continue
        w = sum(weight[pos[y]] for y in shared)
        sim = w / math.sqrt(n_prefix * len(distinct)) * math.exp(-(newest - n.ts) / recency_ms)
        anchor = max(shared, key=pos.__getitem__)  # positions are distinct: the most recent shared item
        out.append(Scored(sim, n, anchor, pos[anchor]))
    return heapq.nlargest(p.neighbours, out, key=lambda s: (s.sim, s.neighbour.ts, s.neighbour.token))


def stan(neighbours: Sequence[Scored], p: RecommendSettings) -> Scores:
    """STAN(x) = sum_n sim(n) * max_{q: n_q = x} exp(-|q - q0|/l3), q0 = the last position in n of
    the anchor (the most recent prefix item n contains): what came right after it scores most."""
    out: Scores = {}
    longest = max((len(s.neighbour.items) for s in neighbours), default=0)
    near = [math.exp(-d / p.stan_neighbour_decay) for d in range(longest + 1)]  # by distance to q0
    for s in neighbours:
        items = s.neighbour.items
        q0 = len(items) - 1 - list(reversed(items)).index(s.anchor)
        best: Scores = {}
        for q, x in enumerate(items):
            w = near[abs(q - q0)]
            if w > best.get(x, 0.0):
                best[x] = w
        for x, w in best.items():
            out[x] = out.get(x, 0.0) + s.sim * w
    return out


def vsknn(prefix: Sequence[str], neighbours: Sequence[Neighbour], k: int) -> Scores:
    """V-SKNN (Ludewig & Jannach 2018): sim(n) = sum_{y in p & n} pos(y)/t over the top ``k``;
    VS(x) = sum_{n containing x} sim(n) / (t - pos(most recent shared item) + 1)."""
    pos = last_positions(prefix)
    t = len(prefix)
    scored = []
    for n in neighbours:
        distinct = n.distinct
        shared = [pos[y] for y in pos.keys() & distinct]
        if shared:
            scored.append((sum(shared) / t, n.ts, n.token, max(shared), distinct))
    out: Scores = {}
    for sim, _ts, _token, best, distinct in heapq.nlargest(k, scored, key=lambda r: r[:3]):
        w = sim / (t - best + 1)
        for x in distinct:
            out[x] = out.get(x, 0.0) + w
    return out


def covis_horizon(decay: float) -> int:
    """How many of the newest prefix positions :func:`covis` can use (weight >= 1e-4): only their rows are read."""
    return 1 if decay <= 0 else (1_000_000 if decay >= 1 else int(math.log(1e-4) / math.log(decay)) + 1)


def covis(prefix: Sequence[str], rows: Mapping[str, Sequence[tuple[str, float]]], decay: float) -> Scores:
    """cv(x) = sum over distinct prefix items y, newest first, of decay^(steps back) * C[y][x]."""
    out: Scores = {}
    seen: set[str] = set()
    t = len(prefix)
    for j in range(t - 1, -1, -1):
        y = prefix[j]
        w = decay ** (t - 1 - j)
        if w < 1e-4:
            break
        if y in seen:
            continue
        seen.add(y)
        for x, score in rows.get(y, ()):
            out[x] = out.get(x, 0.0) + w * score
    return out


def popular(trending: Iterable[tuple[str, float]]) -> Scores:
    """Trending now (decayed weighted interactions): a tie-break, and the cold-start answer."""
    return dict(trending)
