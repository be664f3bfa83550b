"""The fixed fusion of the session families, the variants a /recommend request can ask for, and
why each item is shown.

Why a weighted sum of max-normalised families: the families score on unrelated scales (a decayed
repeat count, a sum of neighbour similarities, co-visitation counts, trending weight); dividing
each by its best in this request puts them on one scale, and the weights (``recommend.weight_*``)
say how much each counts. Why variants: the bench (issue 9) compares, through the same running
system, each family alone, their fusion without the ranking head, and the full path; a variant is
the per-request switch.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from operator import itemgetter
from typing import Literal, get_args

from streamrec.sessions.candidates import SessionCandidates
from streamrec.sessions.families import Scores
from streamrec.settings import RecommendSettings

RecommendVariant = Literal["full", "fused", "stan", "vsknn", "covis", "repeat", "popular"]
VARIANTS: tuple[str, ...] = get_args(RecommendVariant)
SINGLE_FAMILY = frozenset(VARIANTS[2:])  # one family alone, as its own relevance


@dataclass(frozen=True)
class Fused:
    """A candidate's fused score and each family's part in it (what :func:`reasons` explains)."""

    item_id: str
    score: float
    parts: dict[str, float]  # family -> its weighted, normalised contribution


def fuse(families: Mapping[str, Scores], weights: Mapping[str, float], top_n: int) -> list[Fused]:
    """Weighted sum of the max-normalised families over the union of each family's top ``top_n``,
    best first (ties by item id, so the order is deterministic). Each family is divided by its
    per-request max, so families with different scales can be summed."""
    used = {f: s for f, s in families.items() if weights.get(f, 0.0) > 0}
    pool: set[str] = set()
    peaks: dict[str, float] = {}
    by_score_then_id = itemgetter(1, 0)
    for f, s in used.items():
        top = heapq.nlargest(top_n, s.items(), key=by_score_then_id)  # the max-normalised order, unnormalised
        if top and top[0][1] > 0:
            peaks[f] = top[0][1]
            pool.update(x for x, _ in top)
    out = []
    for x in pool:  # only the pool's values are normalised: a family can score thousands of items
        parts = {}
        for f, peak in peaks.items():
            v = used[f].get(x, 0.0) / peak
            if v > 0:
                parts[f] = weights[f] * v
        out.append(Fused(x, sum(parts.values()), parts))
    out.sort(key=lambda c: (-c.score, c.item_id))
    return out


def rank(
    sc: SessionCandidates,
    variant: RecommendVariant,
    p: RecommendSettings,
    keep: Callable[[str], bool],
    exclude: Collection[str] = (),
) -> list[Fused]:
    """The variant's fused candidates, best first, only those ``keep`` accepts and not excluded.
    Excluded items are dropped before fusion, so they do not take a family's top-N slots."""
    weights: dict[str, float]
    if variant in SINGLE_FAMILY:
        weights = {variant: 1.0}
    else:
        weights = dict(p.weights)
    families = {
        f: {x: v for x, v in s.items() if x not in exclude and keep(x)}
        for f, s in sc.families.items()
        if weights.get(f, 0.0) > 0
    }
    return fuse(families, weights, p.family_top_n)


def reasons(c: Fused, sc: SessionCandidates, title: Callable[[str], str]) -> list[str]:
    """One sentence per contributing family, strongest first; trending only when it is all there is."""
    out: list[str] = []
    parts = sorted(c.parts.items(), key=lambda kv: -kv[1])
    for family, _ in parts:
        if family == "repeat":
            text = "you viewed this earlier in this session"
        elif family in ("stan", "vsknn"):
            anchor = sc.neighbour_anchor(c.item_id)
            anchor = anchor if anchor != c.item_id else None
            text = f"viewed after '{title(anchor)}' in similar sessions" if anchor else "viewed in similar sessions"
        elif family == "covis":
            anchor = sc.covis_anchor(c.item_id)
            text = f"often viewed together with '{title(anchor)}'" if anchor else "often viewed together"
        elif family == "popular" and len(parts) == 1:
            text = "trending now"
        else:
            continue
        if text not in out:
            out.append(text)
    return out
