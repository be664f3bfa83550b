"""Automatic rollback: a published model must do as well online as the last one that proved good.

Why paired: the world moves under every model at once, so the guard compares the *served*
version with the *last good* version on the same labelled examples (both frozen copies scoring
each batch before anyone learns from it). A world shift raises both losses and rolls nothing
back; a bad update (poisoned labels, a broken step) raises only the served one.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from learner.estimator import OnlineRanker
from learner.evaluation import logloss


class RollbackGuard:
    """Tracks (served, last good) and says when to roll back.

    Parameters
    ----------
    threshold: relative excess of the served model's mean click loss over the good one's that
        triggers a rollback (0.2 = 20 % worse).
    min_examples: labelled examples compared before any verdict.
    window: paired examples kept for the verdict.
    """

    def __init__(self, threshold: float = 0.2, min_examples: int = 500, window: int = 2000):
        if threshold <= 0 or min_examples < 1 or window < min_examples:
            raise ValueError("need threshold > 0, min_examples ≥ 1 and window ≥ min_examples")
        self.threshold, self.min_examples = threshold, min_examples
        self.good: tuple[int, OnlineRanker] | None = None
        self.served: tuple[int, OnlineRanker] | None = None
        self.pairs: deque[tuple[float, float]] = deque(maxlen=window)
        self.rollbacks = 0

    def reset(self, version: int, model: OnlineRanker) -> None:
        """Start over from a version known to be good (first publish, a rollback, an operator's pick)."""
        frozen = model.frozen_copy()
        self.good = (version, frozen)
        self.served = (version, frozen)
        self.pairs.clear()

    def on_publish(self, version: int, model: OnlineRanker) -> None:
        if self.good is None:
            self.reset(version, model)
        else:
            self.served = (version, model.frozen_copy())

    def observe(self, batch) -> tuple[int, OnlineRanker] | None:
        """Score a batch with both; returns ``(version, model)`` to roll back to, or None."""
        if self.good is None or self.served is None or self.served[0] == self.good[0]:
            return None
        m = batch.click_mask
        if not m.any():
            return None
        p_served, _ = self.served[1].predict(batch)
        p_good, _ = self.good[1].predict(batch)
        ls = logloss(p_served[m], batch.click[m])
        lg = logloss(p_good[m], batch.click[m])
        self.pairs.extend(zip(ls.tolist(), lg.tolist(), strict=True))
        if len(self.pairs) < self.min_examples:
            return None
        served_loss, good_loss = np.mean(self.pairs, axis=0)
        if served_loss > good_loss * (1 + self.threshold) + 1e-4:
            self.rollbacks += 1
            target = self.good
            self.served = target
            self.pairs.clear()
            return target[0], target[1].frozen_copy()
        self.good = self.served  # proved at least as good: it becomes the fallback
        self.pairs.clear()
        return None

    def verdict(self) -> dict:
        if not self.pairs:
            return {"served": self.served and self.served[0], "good": self.good and self.good[0], "compared": 0}
        s, g = np.mean(self.pairs, axis=0)
        assert self.served is not None and self.good is not None  # pairs are only observed with both
        return {
            "served": self.served[0],
            "good": self.good[0],
            "compared": len(self.pairs),
            "served_loss": float(s),
            "good_loss": float(g),
        }
