"""The search ranking formula, in the order it runs: the one place to read or change it.

===========  =================================================================================
candidates   lexical (tantivy BM25 over the analysed title, category and description head, plus
             the query-log expansion field, boosted by ``search.expansion_boost``, when it holds
             every query term: ``serving/lexical.py``) ∪ dense (MiniLM query vector, FAISS)
             — ``candidates.py``
fused        ``search.lexical_weight`` · bm25 / the list's best bm25
             + ``search.dense_weight`` · max(0, cosine)
memory       + ``search.memory_weight`` · (a(q, d) − a_bar(q)): the product's clicks per
             examination for this very query, against the query's mean (``memory.py``); nothing
             for a query nobody clicked, nothing for any other query
head         + ``search.head_weight`` · (the ranking head's click logit − its mean over
             the list), only while the learner's search scorecard says the head orders clicks of
             queries it never trained on better than the fused order (``learner/search_card.py``)
             — else the head only explains
diversity    MMR over item vectors when ``search.diversity_lambda`` < 1
explore      on ``search.explore_share`` of logged searches one product from below the
             page takes a slot in positions 4–10; on ``search.swap_share`` two adjacent
             results swap, at random (``explore.py``): the learner estimates position bias from
             the swaps
===========  =================================================================================

``variant`` ``bm25`` | ``dense`` | ``rrf`` | ``fused`` orders by one first-stage score and stops
there (the ablations of ``bench/quality.py``); ``full`` runs every stage.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from serving.catalog import retrieval
from serving.catalog.columns import Selection
from serving.lexical import LexicalIndex
from serving.rerank import mmr
from serving.search import candidates as fusion
from serving.search.explore import Exploration, explore
from serving.search.memory import adjustment
from serving.search.query_features import query_features
from serving.stages import stage
from streamrec.analysis import query_key
from streamrec.query_encoder import QueryEncoder
from streamrec.settings import Settings
from streamrec.vector_index import LiveIndex

# (X) -> (p_click, p_purchase, per-row explanation) of the served model, or None (no model / another schema)
HeadScores = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray, list[list[str]]] | None]
# the feature rows of a search's candidates, or None while the feature store does not answer
Rows = Callable[..., np.ndarray | None]
# a query key's click memory: item -> (clicks, examinations), decayed; {} when none or unreachable
Memory = Callable[[str], Mapping[str, tuple[float, float]]]


@dataclass
class Ranked:
    """A search's candidates with their final scores, and what is shown (``order``) with why."""

    ids: list[str]
    final: np.ndarray
    order: list[int]
    reasons: list[list[str]]
    rows: np.ndarray | None  # the feature rows of the page, in ``order``; None when none were read
    query_vec: np.ndarray | None
    exploration: Exploration = field(default_factory=Exploration)
    features_down: bool = False  # the feature store did not answer: no rows, no head


class SearchRanker:
    def __init__(
        self,
        s: Settings,
        encoder: QueryEncoder,
        index: Callable[[], LiveIndex],
        lexical: LexicalIndex,
        rows: Rows,
        head: HeadScores,
        head_earned: Callable[[], bool],
        memory: Memory,
        rng: random.Random | None = None,
    ):
        self.s = s
        self.encoder = encoder
        self._index = index  # the replica's current index (it is swapped on a snapshot restore)
        self.lexical = lexical
        self.rows = rows
        self.head = head
        self.head_earned = head_earned
        self.memory = memory
        self.rng = rng or random.Random()

    @property
    def index(self) -> LiveIndex:
        return self._index()

    def rank(
        self, query: str, user_id: str | None, k: int, variant: str, logged: bool, selection: Selection | None = None
    ) -> Ranked | None:
        """The ranked candidates of ``query`` among the items ``selection`` admits (None: all);
        None when nothing matches.

        Feature rows are read for every candidate only while the head reorders the list; otherwise
        only for the page shown (the impression logs them, the head explains them): a tenth of
        the Redis reads and of the per-candidate Python."""
        if variant not in fusion.VARIANTS:
            raise ValueError(f"unknown search variant {variant!r}; one of {fusion.VARIANTS}")
        s, n = self.s, self.s.serving.candidates
        with stage("lexical"):
            terms = self.lexical.query_terms(query)
            restrict = s.catalog.lexical_restrict_max
            lexical = (
                [] if variant == "dense" else retrieval.lexical(self.lexical, query, n, terms, selection, restrict)
            )
            lexical = [h for h in lexical if h.item_id in self.index]  # deleted since the last lexical commit
        with stage("encode"):
            qvec = None if variant == "bm25" else self.encoder.encode_query(query)
        with stage("dense"):
            exact = s.catalog.dense_exact_max
            dense = retrieval.dense(self.index, qvec, n, selection, exact) if qvec is not None else []
        with stage("fusion"):
            cands = fusion.gather(lexical, dense, lambda item_id: self._cosine(qvec, item_id))
            if not cands.ids:
                return None
            weights = (s.search.lexical_weight, s.search.dense_weight)
            fused = fusion.weighted(cands, *weights).astype(np.float32)
            first = (
                fused
                if variant in ("full", "fused")
                else fusion.order_scores(variant, cands, len(lexical), len(dense), weights)
            )
            reasons = [self._reasons(query, terms, cands, j, len(dense)) for j in range(len(cands.ids))]

        features_down = False

        def rows(which: list[int]) -> np.ndarray | None:
            nonlocal features_down
            with stage("features"):
                X = self.rows(
                    user_id=user_id,
                    query_vec=qvec,
                    item_ids=[cands.ids[j] for j in which],
                    retrieval_scores=cands.cosine[which],
                    query_features=query_features(terms, cands, fused, self.lexical.title_tokens, which),
                )
            features_down = X is None
            return X

        final, order, shown_rows = first, _top(first, k), None
        exploration = Exploration()
        if variant == "full":
            with stage("memory"):
                final = self._with_memory(query, cands.ids, first, reasons)
            if self._head_reorders():
                X = rows(list(range(len(cands.ids))))
                if X is not None:
                    final, head_reasons = self._with_head(final, X)
                    reasons = [r + h for r, h in zip(reasons, head_reasons, strict=True)]
            else:
                X = None
            with stage("diversity"):
                order = self._diverse(cands.ids, final, k, s.search.diversity_lambda)
                if logged:
                    order, exploration = explore(order, final, k, self.rng, s.search.explore_share, s.search.swap_share)
                    if exploration.inserted is not None:
                        reasons[order[exploration.inserted]].append("shown to learn whether it fits this search")
            if X is not None:
                shown_rows = X[order]
            else:  # the head explains the page only
                shown_rows = rows(order)
                if shown_rows is not None:
                    with stage("head"):
                        head = self.head(shown_rows)
                    for j, why in zip(order, head[2] if head else [], strict=False):
                        reasons[j] = reasons[j] + why
        elif logged:
            shown_rows = rows(order)
        return Ranked(cands.ids, final, order, reasons, shown_rows, qvec, exploration, features_down)

    def _head_reorders(self) -> bool:
        """The head changes the order only with a weight and, when gated, its scorecard's say-so."""
        weight = self.s.search.head_weight
        return weight > 0 and (not self.s.search.head_gate or self.head_earned())

    def _with_memory(self, query: str, ids: list[str], first: np.ndarray, reasons: list[list[str]]) -> np.ndarray:
        """first + what shoppers who searched this query chose (``memory.py``); reasons say so."""
        weight = self.s.search.memory_weight
        if weight <= 0:
            return first
        remembered = self.memory(query_key(query))
        adj = adjustment(ids, remembered, weight, self.s.search.memory_prior)
        if not adj:
            return first
        out = first.astype(np.float32).copy()
        for j, item_id in enumerate(ids):
            if item_id in adj:
                out[j] += adj[item_id]
                if adj[item_id] > 0:
                    clicks = remembered[item_id][0]
                    reasons[j].append(f"chosen by shoppers who searched '{query}' ({clicks:.0f} recent clicks)")
        return out

    def _with_head(self, first: np.ndarray, X: np.ndarray) -> tuple[np.ndarray, list[list[str]]]:
        """first + weight × (click logit − its mean over the list), and the head's explanations."""
        with stage("head"):
            head = self.head(X)
        if head is None:
            return first, [[] for _ in range(len(first))]
        p_click, _, why = head
        p = np.clip(p_click.astype(np.float64), 1e-6, 1 - 1e-6)
        logit = np.log(p / (1 - p))
        return (first + self.s.search.head_weight * (logit - logit.mean())).astype(np.float32), why

    def _reasons(self, query: str, terms: list[str], cands: fusion.SearchCandidates, j: int, n_dense: int) -> list[str]:
        """Why candidate ``j`` was found: the query terms it matches (title first), the terms of past
        searches that led to it (its query-log expansion) and/or its cosine."""
        out = []
        matched = cands.matched[j]
        if matched:
            title = set(self.lexical.title_tokens(cands.ids[j]) or ())
            in_title = [t for t in matched if t in title]
            elsewhere = [t for t in matched if t not in title]
            if in_title:
                out.append("title matches " + ", ".join(f"'{t}'" for t in in_title[:4]))
            if elsewhere:
                out.append("category/description matches " + ", ".join(f"'{t}'" for t in elsewhere[:4]))
        if self.lexical.expansion_boost > 0:
            past = self.lexical.expansion(cands.ids[j])
            chosen = [t for t in terms if t in past]
            if chosen:
                out.append("chosen after past searches for " + ", ".join(f"'{t}'" for t in chosen[:4]))
        if cands.dense_rank[j] < n_dense:
            out.append(f"semantic match to '{query}' (cosine {cands.cosine[j]:.2f})")
        return out

    def _diverse(self, ids: list[str], final: np.ndarray, k: int, lambda_: float) -> list[int]:
        if lambda_ >= 1.0:
            return _top(final, k)
        vectors = [self.index.vector(i) for i in ids]
        zero = np.zeros(self.index.dim, dtype=np.float32)
        return mmr(final, np.stack([v if v is not None else zero for v in vectors]), k, lambda_)

    def _cosine(self, qvec: np.ndarray | None, item_id: str) -> float:
        vec = self.index.vector(item_id)
        if qvec is None or vec is None:
            return 0.0
        return float(qvec @ vec)


def _top(scores: np.ndarray, k: int) -> list[int]:
    """Indices of the ``k`` best scores, best first; ties keep candidate order."""
    return np.argsort(-scores, kind="stable")[:k].tolist()
