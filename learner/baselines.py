"""Reference scorers for judging the online head on the same prequential stream."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence

import numpy as np

from streamrec.schemas import Event


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


def stream_popularity_scores(events: Iterable[Event], stream_index: Sequence[int], item_ids: Sequence[str]) -> np.ndarray:
    """Prequential popularity over the whole event stream: each example (its impression's index in
    ``events``, its item) is scored by its item's click events *before* that impression — joined
    clicks and organic ones (e.g. a user's imported history) alike, so the baseline knows every
    click the head's features know."""
    if len(stream_index) != len(item_ids):
        raise ValueError("stream_index and item_ids must have the same length")
    order = np.argsort(np.asarray(stream_index), kind="stable")
    out = np.empty(len(item_ids), dtype=np.float64)
    clicks: dict[str, float] = defaultdict(float)
    k = 0
    for idx, e in enumerate(events):
        while k < len(order) and stream_index[order[k]] <= idx:
            j = order[k]
            out[j] = clicks[item_ids[j]]
            k += 1
        if e.type == "click" and e.item_id is not None:
            clicks[e.item_id] += 1.0
    while k < len(order):
        j = order[k]
        out[j] = clicks[item_ids[j]]
        k += 1
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
