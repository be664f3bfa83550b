"""May the ranking head reorder search results? A test-then-train scorecard on unseen queries.

Why: the head learns from every search's clicks at once, so whatever it learns from the queries
that get clicks reaches every other query too; most queries (the long tail, and every query
nobody clicks) have no click to say it was wrong. So serving adds the head to the fused order only
while this card says: on the first click of a query the learner had never trained on, scored
*before* the learner learns from it, the head's order of that page puts the clicked product higher
than the fused order does, by more than the paired noise (``z`` standard errors) explains.

Each click counts 1 / theta(position) (``learner/position_bias.py``): a click at the top of the
page, where the fused order put it and where shoppers click anyway, counts for what it says. A
page's quality under an order is the DCG gain 1 / log2(2 + rank) of its clicked product.
"""

from __future__ import annotations

import math
import zlib
from collections import OrderedDict, deque

import numpy as np

from learner.joiner import PendingImpression
from learner.position_bias import ips_weight
from streamrec.analysis import query_key
from streamrec.ranking import FEATURE_NAMES, RankingHead

FUSED = FEATURE_NAMES.index("qp_fused_score")
IS_SEARCH = FEATURE_NAMES.index("has_query_features")


class SearchCard:
    def __init__(
        self,
        head_weight: float,
        window: int = 2000,
        min_clicks: int = 300,
        z: float = 2.0,
        queries_remembered: int = 50_000,
    ):
        self.head_weight, self.min_clicks, self.z = head_weight, min_clicks, z
        self.pairs: deque[tuple[float, float]] = deque(maxlen=window)  # (fused gain, head gain), IPS-weighted
        self.weights: deque[float] = deque(maxlen=window)
        self.trained: OrderedDict[int, None] = OrderedDict()  # query keys (crc32) already learned from
        self.queries_remembered = queries_remembered

    def observe_first_click(self, p: PendingImpression, k: int, head: RankingHead, eta: float) -> None:
        """The first click (at index ``k`` of the page) of a search impression, before it is learned."""
        if not p.event.query or p.rows.shape[1] != len(FEATURE_NAMES) or p.rows[k, IS_SEARCH] < 0.5:
            return
        key = zlib.crc32(query_key(p.event.query).encode())
        fresh = key not in self.trained
        self.trained[key] = None
        self.trained.move_to_end(key)
        while len(self.trained) > self.queries_remembered:
            self.trained.popitem(last=False)
        if not fresh or len(p.item_ids) < 2:
            return
        fused = p.rows[:, FUSED].astype(np.float64)
        p_click, _ = head.predict(p.rows)
        q = np.clip(p_click.astype(np.float64), 1e-6, 1 - 1e-6)
        logit = np.log(q / (1 - q))
        with_head = fused + self.head_weight * (logit - logit.mean())
        w = ips_weight(p.positions[p.item_ids[k]], eta)
        self.pairs.append((w * _gain(fused, k), w * _gain(with_head, k)))
        self.weights.append(w)

    def summary(self) -> dict:
        """What serving reads (``earned``) and what ops see: IPS-weighted mean gains and the gap."""
        n = len(self.pairs)
        if n == 0:
            return {"earned": False, "clicks": 0}
        a = np.asarray(self.pairs)
        total = float(np.sum(self.weights))
        fused, head = a[:, 0].sum() / total, a[:, 1].sum() / total
        diff = (a[:, 1] - a[:, 0]) / (total / n)
        stderr = float(diff.std(ddof=1) / math.sqrt(n)) if n > 1 else float("inf")
        earned = n >= self.min_clicks and float(diff.mean()) > self.z * stderr
        return {
            "earned": bool(earned),
            "clicks": n,
            "fused": round(float(fused), 4),
            "head": round(float(head), 4),
            "gap": round(float(diff.mean()), 4),
            "stderr": round(stderr, 4) if math.isfinite(stderr) else None,
        }

    def state(self) -> dict:
        return {"pairs": list(self.pairs), "weights": list(self.weights), "trained": list(self.trained)}

    def load_state(self, st: dict) -> None:
        self.pairs.extend(tuple(x) for x in st["pairs"])
        self.weights.extend(st["weights"])
        self.trained = OrderedDict.fromkeys(st["trained"])


def _gain(scores: np.ndarray, k: int) -> float:
    """DCG gain of item ``k`` under the order of ``scores`` (ties keep page order)."""
    rank = int(np.flatnonzero(np.argsort(-scores, kind="stable") == k)[0])
    return 1.0 / math.log2(2 + rank)
