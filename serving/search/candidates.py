"""Search candidates from the lexical and dense lists, and the ways of ordering them.

Why a weighted sum: reciprocal-rank fusion throws the scores away, so a product matching every
query term ranks like one matching a single frequent word. Normalising each list's score (BM25 by
the list's best, cosine clipped at 0) and weighting them keeps that information; the weights are
settings chosen on the feedback half of the Home Depot queries (bench/search_offline.py; on the
28,864 shortest-titled products, FB/EV nDCG@10: bm25 0.448/0.457, dense 0.342/0.330, rrf
0.426/0.421, 1·bm25/max + 0.8·cos 0.458/0.465).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from serving.lexical import LexicalHit

RRF_K = 60  # reciprocal-rank fusion constant (Cormack et al.)
VARIANTS = ("full", "bm25", "dense", "rrf", "fused")  # what GET /search?variant= accepts


@dataclass
class SearchCandidates:
    """Column arrays over the union of both lists, in first-seen order (lexical first)."""

    ids: list[str]
    bm25: np.ndarray  # 0 when not in the lexical list
    lexical_rank: np.ndarray  # 0-based; the list length when absent
    cosine: np.ndarray  # query–item cosine for every candidate (0 without a vector)
    dense_rank: np.ndarray
    matched: list[list[str]] = field(default_factory=list)  # analysed query terms in each item's document

    @property
    def bm25_norm(self) -> np.ndarray:
        top = float(self.bm25.max()) if len(self.bm25) else 0.0
        return self.bm25 / top if top > 0 else np.zeros_like(self.bm25)


def gather(
    lexical: list[LexicalHit], dense: list[tuple[str, float]], cosine: Callable[[str], float]
) -> SearchCandidates:
    """One candidate per item found by either list; ``cosine`` fills in lexical-only items."""
    ids: list[str] = []
    pos: dict[str, int] = {}
    for item_id in [h.item_id for h in lexical] + [i for i, _ in dense]:
        if item_id not in pos:
            pos[item_id] = len(ids)
            ids.append(item_id)
    n = len(ids)
    bm25 = np.zeros(n, dtype=np.float32)
    lexical_rank = np.full(n, len(lexical), dtype=np.float32)
    dense_rank = np.full(n, len(dense), dtype=np.float32)
    cos = np.full(n, np.nan, dtype=np.float32)
    matched: list[list[str]] = [[] for _ in range(n)]
    for rank, hit in enumerate(lexical):
        j = pos[hit.item_id]
        bm25[j], lexical_rank[j], matched[j] = hit.score, rank, hit.matched
    for rank, (item_id, c) in enumerate(dense):
        j = pos[item_id]
        dense_rank[j], cos[j] = rank, c
    for missing in np.flatnonzero(np.isnan(cos)):
        cos[missing] = cosine(ids[missing])
    return SearchCandidates(ids, bm25, lexical_rank, cos, dense_rank, matched)


def weighted(c: SearchCandidates, lexical_weight: float, dense_weight: float) -> np.ndarray:
    """lexical_weight · bm25 / max bm25 + dense_weight · max(0, cosine)."""
    return lexical_weight * c.bm25_norm + dense_weight * np.maximum(0.0, c.cosine)


def reciprocal_rank(c: SearchCandidates, n_lexical: int, n_dense: int) -> np.ndarray:
    """The old fixed fusion: Σ 1 / (RRF_K + rank) over the lists an item is in."""
    score = np.zeros(len(c.ids), dtype=np.float32)
    in_lexical = c.lexical_rank < n_lexical
    in_dense = c.dense_rank < n_dense
    score[in_lexical] += 1.0 / (RRF_K + c.lexical_rank[in_lexical])
    score[in_dense] += 1.0 / (RRF_K + c.dense_rank[in_dense])
    return score


def order_scores(variant: str, c: SearchCandidates, n_lexical: int, n_dense: int, weights: tuple[float, float]):
    """The first-stage score of every candidate under ``variant`` (higher first)."""
    if variant == "bm25":
        return c.bm25.astype(np.float32)
    if variant == "dense":
        return c.cosine.astype(np.float32)
    if variant == "rrf":
        return reciprocal_rank(c, n_lexical, n_dense)
    return weighted(c, *weights).astype(np.float32)
