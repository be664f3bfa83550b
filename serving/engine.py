"""The request path: candidates → ranking head → diversity → explained results → impression.

Retrieval differs per endpoint (query text, user profile, seed item); everything after the
candidate list is shared, so search, recommendations and similar items are ranked, explained and
logged the same way. The engine only reads published state: the vectors topic (via its index
replica), Redis features and model snapshots.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field

import numpy as np

from serving import recommend as session_rec
from serving import session_candidates
from serving.impressions import ImpressionLog
from serving.lexical import LexicalIndex
from serving.models import ModelWatcher
from serving.recommend import RecommendVariant
from serving.rerank import mmr
from serving.sessions import SessionParams
from streamrec.encoder import Encoder
from streamrec.features import INTERACTIONS, FeatureConfig, FeatureStore
from streamrec.ranking import FeatureAssembler
from streamrec.schemas import ResultItem, ResultList
from streamrec.settings import Settings
from streamrec.vector_index import IndexReplica, LiveIndex

log = logging.getLogger(__name__)

# How much each interaction type says about a user's taste, for the profile vector.
INTERACTION_WEIGHT = {t: FeatureConfig().weight(t) for t in INTERACTIONS}  # the feature config's weights
RECENCY_DECAY = 0.85  # weight of the i-th most recent interaction is RECENCY_DECAY ** i
RRF_K = 60  # reciprocal-rank fusion constant (Cormack et al.)


@dataclass
class Candidate:
    item_id: str
    relevance: float  # in [0, 1], comparable within one list
    similarity: float  # cosine to the context vector (query / profile / seed); the ranker's input
    reasons: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Context:
    """Who and what a result list is for; ``vector`` is what candidates are compared with."""

    user_id: str | None
    query: str | None
    vector: np.ndarray | None


class Engine:
    def __init__(
        self,
        s: Settings,
        encoder: Encoder,
        replica: IndexReplica,
        features: FeatureStore,
        models: ModelWatcher,
        lexical: LexicalIndex,
        impressions: ImpressionLog,
    ):
        self.s = s
        self.encoder = encoder
        self.replica = replica
        self.features = features
        self.models = models
        self.lexical = lexical
        self.impressions = impressions
        self.assembler = FeatureAssembler(features, self.index.vector, self.index.meta)
        self.session_params = SessionParams.from_settings(s)

    @property
    def index(self) -> LiveIndex:
        return self.replica.index

    # --- readiness ------------------------------------------------------------------------
    def status(self) -> dict:
        model = self.models.current
        return {
            "index_items": len(self.index),
            "index_version": self.index.version,
            "lexical_version": self.lexical.version,
            "model_version": model.version if model else 0,
            "encoder": self.encoder.model_id,
            "index_factory": self.s.index_factory,
        }

    def ready(self) -> bool:
        return self.models.current is not None and len(self.index) > 0

    # --- endpoints ------------------------------------------------------------------------
    def search(self, query: str, user_id: str | None, k: int) -> ResultList:
        qvec = self.encoder.encode_query(query)
        n = self.s.serving_candidates
        fused: dict[str, float] = {}
        reasons: dict[str, list[str]] = {}
        for rank, (item_id, cos) in enumerate(self.index.search(qvec[None, :], n)[0]):
            fused[item_id] = fused.get(item_id, 0.0) + 1.0 / (RRF_K + rank)
            reasons.setdefault(item_id, []).append(f"semantic match to '{query}' (cosine {cos:.2f})")
        for rank, (item_id, _bm25, terms) in enumerate(self.lexical.search(query, n)):
            if item_id not in self.index:  # deleted since the last lexical rebuild
                continue
            fused[item_id] = fused.get(item_id, 0.0) + 1.0 / (RRF_K + rank)
            meta = self.index.meta(item_id)
            text = f"{meta.title} {meta.category or ''}".lower() if meta else ""
            hit = [t for t in terms if t in text] or terms
            reasons.setdefault(item_id, []).append("title matches " + ", ".join(f"'{t}'" for t in hit[:4]))
        top = max(fused.values(), default=1.0)
        cands = [
            Candidate(item_id, score / top, self._cosine(qvec, item_id), reasons[item_id])
            for item_id, score in fused.items()
        ]
        return self._finish(Context(user_id, query, qvec), cands, k)

    def recommend(
        self, user_id: str, k: int, variant: RecommendVariant = "full", exclude_seen: bool | None = None
    ) -> ResultList:
        """Next items for the user's current session (serving/recommend.py); the older profile
        path (content neighbours, co-visitation, else trending) when the session gives nothing
        (a user without history, or all excluded).
        ``variant`` picks the families (``full`` = fusion, then the head and diversity at their
        /recommend settings); ``exclude_seen`` None = the setting."""
        if exclude_seen is None:
            exclude_seen = self.s.serving_recommend_exclude_seen
        sc = session_candidates.read(self.features, user_id, self.session_params)
        exclude = set(sc.prefix) if exclude_seen else set()
        ranked = session_rec.rank(sc, variant, self.session_params, self.index.__contains__, exclude)
        full = variant == "full"
        finish = {
            "model_weight": self.s.serving_recommend_model_weight if full else 0.0,
            "diversity": self.s.serving_recommend_diversity_lambda if full else 1.0,
        }
        # without the head and MMR the order is final: only the shown k need feature rows (latency)
        reorders = finish["model_weight"] > 0 or finish["diversity"] < 1
        ranked = ranked[: self.s.serving_candidates if reorders else k]
        if ranked or not full:
            profile, _ = self._profile(list(reversed(sc.session)))
            top = ranked[0].score if ranked else 1.0
            cands = [
                Candidate(
                    c.item_id, c.score / top, self._cosine(profile, c.item_id), session_rec.reasons(c, sc, self._title)
                )
                for c in ranked
            ]
            return self._finish(Context(user_id, None, profile), cands, k, **finish)
        return self._profile_recommend(user_id, k, exclude_seen, **finish)

    def _profile_recommend(self, user_id: str, k: int, exclude_seen: bool, **finish: float) -> ResultList:
        """Content neighbours of the user's recent items, co-visitation, else trending."""
        recent = self.features.recent_items(user_id, 20)
        seen = {r.item_id for r in recent}
        exclude = seen if exclude_seen else set()
        profile, anchors = self._profile(recent)
        cands: dict[str, Candidate] = {}
        n = self.s.serving_candidates
        if profile is not None:
            anchor_vecs = np.stack([v for _, v in anchors])
            hits = self.index.search(profile[None, :], n, exclude=exclude)[0]
            for item_id, cos in hits:
                vec = self.index.vector(item_id)
                reason = "matches your recent interests"
                if vec is not None:
                    anchor_id = anchors[int(np.argmax(anchor_vecs @ vec))][0]
                    reason = f"similar to '{self._title(anchor_id)}' you viewed"
                cands[item_id] = Candidate(item_id, max(0.0, cos), cos, [reason])
        for anchor_id in list(dict.fromkeys(r.item_id for r in recent))[:3]:
            co = self.features.covisited(anchor_id, 20)
            top = max((score for _, score in co), default=1.0) or 1.0
            for item_id, score in co:
                if item_id in exclude or item_id not in self.index:
                    continue
                c = cands.setdefault(item_id, Candidate(item_id, 0.0, self._cosine(profile, item_id)))
                c.relevance = min(1.0, c.relevance + 0.5 * score / top)
                c.reasons.append(f"often viewed together with '{self._title(anchor_id)}'")
        if not cands:  # a new or unknown user: what is popular right now
            trending = [(i, s) for i, s in self.features.trending(n) if i in self.index and i not in exclude]
            top = max((score for _, score in trending), default=1.0) or 1.0
            for item_id, score in trending:
                cands[item_id] = Candidate(item_id, score / top, 0.0, ["trending now"])
        return self._finish(Context(user_id, None, profile), list(cands.values()), k, **finish)

    def similar(self, item_id: str, k: int) -> ResultList | None:
        seed = self.index.vector(item_id)
        if seed is None:
            return None
        title = self._title(item_id)
        cands = [
            Candidate(other, max(0.0, cos), cos, [f"similar to '{title}' (cosine {cos:.2f})"])
            for other, cos in self.index.search(seed[None, :], self.s.serving_candidates, exclude={item_id})[0]
        ]
        for other, score in self.features.covisited(item_id, 20):
            match = next((c for c in cands if c.item_id == other), None)
            if match:
                match.reasons.append("often viewed together")
        return self._finish(Context(None, None, seed), cands, k)

    # --- shared tail ----------------------------------------------------------------------
    def _finish(
        self,
        ctx: Context,
        cands: list[Candidate],
        k: int,
        model_weight: float | None = None,
        diversity: float | None = None,
    ) -> ResultList:
        """``model_weight`` / ``diversity`` default to the search settings (serving_model_weight, MMR lambda)."""
        w = self.s.serving_model_weight if model_weight is None else model_weight
        request_id = uuid.uuid4().hex
        model = self.models.current
        index_version = self.index.version
        if not cands:
            return ResultList(
                request_id=request_id,
                items=[],
                model_version=model.version if model else 0,
                index_version=index_version,
            )
        ids = [c.item_id for c in cands]
        relevance = np.array([c.relevance for c in cands], dtype=np.float32)
        X = self.assembler.assemble(
            user_id=ctx.user_id,
            query_vec=ctx.vector,
            item_ids=ids,
            retrieval_scores=np.array([c.similarity for c in cands], dtype=np.float32),
        )
        final = relevance
        explanations: list[list[str]] = [[] for _ in cands]
        if model is not None and w > 0:  # the feature rows are logged below either way, for the learner
            p_click, p_buy = model.head.predict(X)
            value = p_click * (1.0 + p_buy)
            peak = float(value.max())
            if peak > 0:
                final = (1 - w) * relevance + w * (value / peak)
            explained = model.head.explain(X)
            for i in range(len(cands)):
                why = f"ranker v{model.version}: p(click) {p_click[i]:.3f}, p(purchase) {p_buy[i]:.3f}"
                if explained[i]:
                    why += " — driven by " + ", ".join(explained[i][:3])
                explanations[i].append(why)
        vectors = np.stack([self._vector_or_zero(i) for i in ids])
        order = mmr(final, vectors, k, self.s.serving_diversity_lambda if diversity is None else diversity)
        items = [
            ResultItem(
                item_id=ids[i],
                score=round(float(final[i]), 6),
                title=self._title(ids[i]),
                reasons=cands[i].reasons + explanations[i],
            )
            for i in order
        ]
        result = ResultList(
            request_id=request_id, items=items, model_version=model.version if model else 0, index_version=index_version
        )
        self.impressions.record(
            request_id=request_id,
            user_id=ctx.user_id,
            query=ctx.query,
            item_ids=[ids[i] for i in order],
            rows=X[order],
            ts_ms=int(time.time() * 1000),
        )
        return result

    # --- helpers --------------------------------------------------------------------------
    def _profile(self, recent) -> tuple[np.ndarray | None, list[tuple[str, np.ndarray]]]:
        """Weighted mean of recent item vectors; also the items it was made of (for reasons)."""
        total = None
        anchors: list[tuple[str, np.ndarray]] = []
        for i, r in enumerate(recent):
            vec = self.index.vector(r.item_id)
            if vec is None:
                continue
            w = INTERACTION_WEIGHT.get(r.type, 1.0) * RECENCY_DECAY**i
            total = vec * w if total is None else total + vec * w
            if all(a != r.item_id for a, _ in anchors):
                anchors.append((r.item_id, vec))
        if total is None:
            return None, []
        norm = float(np.linalg.norm(total))
        return (total / norm if norm > 0 else total).astype(np.float32), anchors

    def _cosine(self, ctx_vec: np.ndarray | None, item_id: str) -> float:
        vec = self.index.vector(item_id)
        if ctx_vec is None or vec is None:
            return 0.0
        return float(ctx_vec @ vec)

    def _vector_or_zero(self, item_id: str) -> np.ndarray:
        vec = self.index.vector(item_id)
        return vec if vec is not None else np.zeros(self.index.dim, dtype=np.float32)

    def _title(self, item_id: str) -> str:
        meta = self.index.meta(item_id)
        return meta.title if meta else item_id
