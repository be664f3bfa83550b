"""Reference scorers for judging the online head on the same prequential stream."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence

import numpy as np

from streamrec.schemas import Event


def popularity_scores(events: Iterable[Event], stream_index: Sequence[int], item_ids: Sequence[str]) -> np.ndarray:
    """Prequential popularity — the "most popular" recommender evaluated the same test-then-train
    way as the head: each example (its impression's index in ``events``, its item) is scored by
    its item's click events *before* that impression, joined clicks and organic ones (e.g. a
    user's imported history) alike, so the baseline knows every click the head's features know."""
    if len(stream_index) != len(item_ids):
        raise ValueError("stream_index and item_ids must have the same length")
    order = iter(np.argsort(np.asarray(stream_index), kind="stable").tolist())
    out = np.empty(len(item_ids), dtype=np.float64)
    clicks: dict[str, float] = defaultdict(float)
    pending = next(order, None)

    def score_through(idx: float) -> None:  # every example whose impression is at or before idx
        nonlocal pending
        while pending is not None and stream_index[pending] <= idx:
            out[pending] = clicks[item_ids[pending]]
            pending = next(order, None)

    for idx, e in enumerate(events):
        score_through(idx)
        if e.type == "click" and e.item_id is not None:
            clicks[e.item_id] += 1.0
    score_through(float("inf"))
    return out
