"""Diversity re-ranking: maximal marginal relevance over item embeddings.

Trades a little relevance for variety so a result page is not ten near-identical products;
``lambda_`` = 1 keeps the relevance order unchanged.
"""

from __future__ import annotations

import numpy as np


def mmr(scores: np.ndarray, vectors: np.ndarray, k: int, lambda_: float = 0.8) -> list[int]:
    """Indices of the chosen items, in display order.

    ``scores`` are relevance in any scale (min-max normalised here), ``vectors`` L2-normalised
    rows (a zero row = unknown vector, treated as dissimilar to everything).
    """
    n = len(scores)
    if n == 0:
        return []
    k = min(k, n)
    rel = scores.astype(np.float64)
    span = rel.max() - rel.min()
    rel = (rel - rel.min()) / span if span > 0 else np.ones(n)
    sims = vectors @ vectors.T
    chosen: list[int] = []
    max_sim = np.full(n, -np.inf)
    available = np.ones(n, dtype=bool)
    for _ in range(k):
        redundancy = np.where(np.isfinite(max_sim), max_sim, 0.0)
        value = lambda_ * rel - (1 - lambda_) * redundancy
        value[~available] = -np.inf
        best = int(np.argmax(value))
        chosen.append(best)
        available[best] = False
        max_sim = np.maximum(max_sim, sims[best])
    return chosen
