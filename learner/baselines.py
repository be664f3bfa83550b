"""Reference scorers for judging the online head on the same prequential stream."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np


def popularity_scores(item_ids: Sequence[str], labels: Sequence[float]) -> np.ndarray:
    """Prequential popularity: each example scored by its item's clicks seen *before* it.

    This is the "most popular" recommender evaluated the same test-then-train way as the head.
    """
    if len(item_ids) != len(labels):
        raise ValueError("item_ids and labels must have the same length")
    clicks: dict[str, float] = defaultdict(float)
    out = np.empty(len(item_ids), dtype=np.float64)
    for k, (iid, y) in enumerate(zip(item_ids, labels)):
        out[k] = clicks[iid]
        clicks[iid] += float(y)
    return out


def ctr_scores(item_ids: Sequence[str], labels: Sequence[float], prior: float = 0.01, strength: float = 20.0) -> np.ndarray:
    """Prequential smoothed CTR per item (clicks + prior·strength) / (shown + strength)."""
    clicks: dict[str, float] = defaultdict(float)
    shown: dict[str, float] = defaultdict(float)
    out = np.empty(len(item_ids), dtype=np.float64)
    for k, (iid, y) in enumerate(zip(item_ids, labels)):
        out[k] = (clicks[iid] + prior * strength) / (shown[iid] + strength)
        clicks[iid] += float(y)
        shown[iid] += 1.0
    return out
