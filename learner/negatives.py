"""Negative sampling for streams that carry no impressions (plain interaction logs).

Mode ``popularity`` (``STREAMREC_LEARNER_NEGATIVE_SAMPLING=popularity``): every click /
add_to_cart / purchase without a ``request_id`` becomes one positive plus ``k`` negatives drawn
from a ring of recently interacted items — sampling from that ring is proportional to recent
popularity, the usual correction against a model that only learns "popular = good". Sampled
negatives were never shown, so they carry no position (no position-bias term) and no purchase
label for the positive (unknown: masked), and the user's own recent items are never drawn.
"""

from __future__ import annotations

import random
from collections import deque


class NegativeSampler:
    def __init__(self, k: int = 4, pool_size: int = 10_000, seed: int | None = 0):
        if k < 1 or pool_size < 1:
            raise ValueError("k and pool_size must be positive")
        self.k = k
        self.pool: deque[str] = deque(maxlen=pool_size)
        self.rng = random.Random(seed)

    def observe(self, item_id: str) -> None:
        """Every interaction (views included) feeds the popularity ring."""
        self.pool.append(item_id)

    def sample(self, positive: str, exclude: set[str] | frozenset[str] = frozenset()) -> list[str]:
        """Up to ``k`` distinct items, none of them the positive or in ``exclude``."""
        out: list[str] = []
        if not self.pool:
            return out
        tries = 0
        while len(out) < self.k and tries < self.k * 20:
            tries += 1
            cand = self.pool[self.rng.randrange(len(self.pool))]
            if cand != positive and cand not in exclude and cand not in out:
                out.append(cand)
        return out
