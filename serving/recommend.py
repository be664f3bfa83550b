"""/recommend from the current session: which families a variant uses, and why each item is shown.

Why variants: the bench (issue 9) compares, through the same running system, each family alone,
their fusion without the ranking head, and the full path; a variant is the per-request switch.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Literal, get_args

from serving.session_candidates import SessionCandidates
from serving.sessions import Fused, SessionParams, fuse

RecommendVariant = Literal["full", "fused", "stan", "vsknn", "covis", "repeat", "popular"]
VARIANTS: tuple[str, ...] = get_args(RecommendVariant)
SINGLE_FAMILY = frozenset(VARIANTS[2:])  # one family alone, as its own relevance


def rank(
    sc: SessionCandidates,
    variant: RecommendVariant,
    p: SessionParams,
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
