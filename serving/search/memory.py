"""Click memory: what shoppers who typed this very query chose, corrected for where they saw it.

Why: a query searched again should find what worked before (the head query of a shop is searched
thousands of times a day), but a raw click count mostly says where a product was shown: the top
result gets the clicks whatever it is. Under the position-based model a product's clicks divided
by its *examinations* (each impression adds theta(position), the chance that a shopper looked
there: ``learner/position_bias.py``) estimates its attractiveness for this query alone. The
consumers keep both per query (``streamrec/features``: ``qm:{query key}``), counting only pages
that got a click, so traffic that never clicks (bots, prefetching browsers, QA) adds nothing; an
add to cart or a purchase from the page counts as one more click (``memory_outcome_weight``).

The score added to the fused one is ``weight · (a(d) − a_bar)``, where ``a(d) = (clicks + m · a_bar)
/ (examinations + m)`` shrinks each product's rate towards the query's own mean ``a_bar`` with the
strength of ``m`` examinations: a product shown once and clicked once moves a little, one clicked
again and again moves a lot, one never shown for this query does not move. Nothing changes for a
query nobody clicked, and nothing learned here reaches another query.

Clicked every time it was on top, never clicked on top, and clicked once far down the page (an
examination of 0.1): the last one is the strongest evidence, the unseen one stays put.

>>> memory = {"drill": (3.0, 3.0), "saw": (0.0, 3.0), "bit": (1.0, 0.1)}
>>> adj = adjustment(["drill", "saw", "bit", "hammer"], memory, weight=1.0, prior=2.0)
>>> adj["bit"] > adj["drill"] > 0 > adj["saw"], "hammer" in adj
(True, False)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

MEAN_PRIOR = (0.3, 1.0)  # the query's mean attractiveness before its clicks: (rate, examinations)
MAX_ADJUSTMENT = 1.0  # bound on what memory adds or takes away (the fused score lies in 0 … 1.8)


def adjustment(
    ids: Sequence[str], memory: Mapping[str, tuple[float, float]], weight: float, prior: float
) -> dict[str, float]:
    """Per candidate with memory, the score to add: ``weight · (a(d) − a_bar)``, clipped."""
    if not memory or weight <= 0:
        return {}
    clicks = sum(c for c, _ in memory.values())
    exams = sum(e for _, e in memory.values())
    rate, strength = MEAN_PRIOR
    a_bar = (clicks + strength * rate) / (exams + strength)
    out = {}
    for item_id in ids:
        got = memory.get(item_id)
        if got is None:
            continue
        c, e = got
        a = (c + prior * a_bar) / (e + prior)
        out[item_id] = max(-MAX_ADJUSTMENT, min(MAX_ADJUSTMENT, weight * (a - a_bar)))
    return out
