"""The request path: candidates → ranking head → diversity → explained results → impression.

Retrieval differs per endpoint (query text, user profile, seed item); everything after the
candidate list is shared, so search, recommendations and similar items are ranked, explained and
logged the same way. The engine only reads published state: the vectors topic (via its index
replica), Redis features and model snapshots.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import redis

from serving import merchandising
from serving.catalog import facets as facet_counts
from serving.catalog import retrieval
from serving.catalog.columns import CatalogColumns, Selection
from serving.catalog.filters import Filter
from serving.expansions import ExpansionFollower
from serving.impressions import ImpressionLog
from serving.lexical import LexicalIndex
from serving.merchandising import RuleFollower
from serving.models import ModelWatcher
from serving.query_versions import QueryVersionFollower
from serving.rerank import mmr
from serving.search import Ranked, SearchRanker, pages
from serving.stages import route, stage
from serving.suggest import SuggestFollower
from streamrec import sessions
from streamrec.features import INTERACTIONS, FeatureStore, ShardedFeatureStore
from streamrec.query_encoder import QueryEncoder
from streamrec.ranking import N_FEATURES, FeatureAssembler
from streamrec.schemas import Facets, ResultItem, ResultList, Suggestion, SuggestionList
from streamrec.settings import Settings
from streamrec.vector_index import IndexReplica, LiveIndex

log = logging.getLogger(__name__)

# How much each interaction type says about a user's taste, for the profile vector.
RECENCY_DECAY = 0.85  # weight of the i-th most recent interaction is RECENCY_DECAY ** i
# ResultList.degraded entry while Redis does not answer: retrieval still works (the index and the
# lexical index live in this process), but there are no feature rows, so no head and no learning.
FEATURES_UNAVAILABLE = "feature store unreachable: not personalised, ranking head skipped"


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
        encoder: QueryEncoder,
        replica: IndexReplica,
        features: FeatureStore | ShardedFeatureStore,
        models: ModelWatcher,
        lexical: LexicalIndex,
        impressions: ImpressionLog,
        expansions: ExpansionFollower | None = None,
        suggestions: SuggestFollower | None = None,
        rules: RuleFollower | None = None,
        query_versions: QueryVersionFollower | None = None,
    ):
        self.s = s
        self.query_versions = query_versions  # the learner's fine-tuned query encoder, followed on disk
        self.expansions = expansions  # the lexical index's query-log expansions (stopped with it)
        self.suggestions = suggestions  # autocomplete, followed from Redis (None: nothing to suggest)
        self.rules = rules or RuleFollower(None)  # merchandising rules, followed from Redis
        self.encoder = encoder
        self.replica = replica
        self.features = features
        self.models = models
        self.lexical = lexical
        self.impressions = impressions
        self.assembler = FeatureAssembler(features, self.index.vector, self.index.meta)
        self.columns = CatalogColumns()  # what filters and facets read; current with every index change
        replica.index.subscribe(self.columns.apply)
        self.pages = pages.PageCache(s.catalog.page_cache_size, s.catalog.page_ttl_s)
        self.searcher = SearchRanker(
            s, encoder, lambda: self.index, lexical, self._assemble, self._head, self._search_head_earned, self._memory
        )

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
            "search_head_earned": self._search_head_earned(),  # the head reorders /search (its scorecard)
            "encoder": self.encoder.model_id,
            "index_factory": self.s.index.factory,
            "worker": self.s.serving.worker,  # which of several serving processes answered (None: the only one)
            "pid": os.getpid(),
            "vector_offsets": self.replica.offsets,  # the follower's next offset per partition (status: lag)
        }

    def ready(self) -> bool:
        return self.models.current is not None and len(self.index) > 0

    # --- endpoints ------------------------------------------------------------------------
    def search(
        self,
        query: str,
        user_id: str | None,
        k: int,
        variant: str = "full",
        impression: bool = True,
        filters: Filter | None = None,
        facets: list[str] | tuple[str, ...] = (),
        sort: pages.Sort = "relevance",
        offset: int = 0,
        page_of: str | None = None,
    ) -> ResultList:
        """The search ranking formula (``serving/search``): ``variant`` ``bm25``, ``dense``, ``rrf``
        and ``fused`` are first-stage orders only; ``full`` runs every stage. Only products
        ``filters`` admits are shown (unset: the shop's default availability); ``facets`` names the
        counts to return with them (``serving/catalog/facets.py``). ``sort``, ``offset`` and
        ``page_of`` (the request_id of an earlier page) page through one ranking (``pages.py``)."""
        with route("search"):
            with stage("filter"):
                selection = self.select(filters)
            asked = (query, user_id, variant, filters, sort)
            rules = self.rules.matching(query, filters) if variant == "full" else []
            if sort == "relevance" and offset == 0 and page_of is None and not rules:
                ranked = self.searcher.rank(query, user_id, k, variant, logged=impression, selection=selection)
                result = self._ranked_page(ranked, user_id, query, variant, impression, asked)
            else:
                result = self._later_page(
                    query, user_id, k, variant, impression, selection, asked, offset, page_of, rules
                )
                ranked = None
            if facets:
                result.facets = self._facets(query, filters, list(facets), ranked, selection is not None)
            return result

    def _ranked_page(
        self, ranked: Ranked | None, user_id: str | None, query: str, variant: str, impression: bool, asked: tuple
    ) -> ResultList:
        """The first page by relevance, as ranked (exploration included); its order kept for the next."""
        if ranked is None:
            return self._empty(variant)
        ctx = Context(user_id, query, ranked.query_vec)
        result = self._respond(
            ctx,
            ranked.ids,
            ranked.final,
            ranked.order,
            ranked.reasons,
            ranked.rows,
            variant,
            impression,
            swapped=ranked.exploration.swapped,
            features_down=ranked.features_down,
        )
        kept = pages.listing(ranked, pages.relevance_order(ranked), asked, self.s.catalog.page_depth)
        self.pages.put(result.request_id, kept)
        result.total = len(kept.entries)
        return result

    def _later_page(
        self,
        query: str,
        user_id: str | None,
        k: int,
        variant: str,
        impression: bool,
        selection: Selection | None,
        asked: tuple,
        offset: int,
        page_of: str | None,
        rules: list[merchandising.CompiledRule],
    ) -> ResultList:
        """A page cut from the ranking ``page_of`` answered, or from a new one (sorted as asked,
        then the merchandising ``rules`` applied). Its impression says where the page starts; its
        feature rows are left to the learner."""
        cat = self.s.catalog
        kept = self.pages.get(page_of, asked) if page_of else None
        degraded = [pages.PAGE_RANKED_AGAIN] if page_of and kept is None else []
        if kept is None:
            ranked = self.searcher.rank(query, user_id, k, variant, logged=False, selection=selection)
            if ranked is None:
                return self._empty(variant)
            order = pages.sorted_order(ranked, asked[-1], self._sort_values(asked[-1]), cat.sort_min_relevance)
            if rules:
                admits = self._admits(selection)
                meta = self.index.meta
                ranked, order = merchandising.apply(ranked, order, rules, meta, admits, boost=asked[-1] == "relevance")
            kept = pages.listing(ranked, order, asked, cat.page_depth)
        page = kept.entries[offset : offset + k]
        ids = [item_id for item_id, _, _ in page]
        result = self._respond(
            Context(user_id, query, None),
            ids,
            np.array([score for _, score, _ in page], dtype=np.float32),
            list(range(len(page))),
            [reasons for _, _, reasons in page],
            None,
            variant,
            impression,
            position=offset,
        )
        self.pages.put(result.request_id, kept)  # the next page may name this one
        result.offset, result.total = offset, len(kept.entries)
        result.degraded += degraded
        return result

    def _admits(self, selection: Selection | None) -> Callable[[str], bool]:
        index = self.index
        if selection is None:
            return index.__contains__
        return lambda item_id: item_id in index and selection.admits(item_id)

    def _sort_values(self, sort: pages.Sort) -> Callable[[list[str]], list[float | None]]:
        """Each item's value for ``sort``: price, first upsert, or decayed purchases (Redis)."""
        if sort in ("price_asc", "price_desc", "newest"):
            field = "price" if sort != "newest" else "created_ms"
            return lambda ids: [getattr(self.index.meta(i), field, None) for i in ids]

        def purchases(ids: list[str]) -> list[float | None]:
            try:
                return [stats.counts.get("purchase", 0.0) for stats in self.features.item_stats(ids)]
            except redis.RedisError:
                return [None] * len(ids)  # relevance order; the sort is best effort while Redis is down

        return purchases

    def suggest(self, typed: str, k: int, category: str | None = None) -> SuggestionList:
        """Completions of ``typed`` learned from the stream (``serving/suggest.py``), within
        ``category`` when given (searches that led to products of that category)."""
        with route("suggest"):
            if self.suggestions is None:
                return SuggestionList(suggestions=[])
            known = self.suggestions.within(category) if category else self.suggestions.current
            found, corrected = known.complete(typed, k)
            return SuggestionList(
                suggestions=[Suggestion(text=t, score=round(sc, 6)) for t, sc in found], corrected=corrected
            )

    def select(self, filters: Filter | None) -> Selection | None:
        """The items a request may show; None when every item may be shown."""
        return self.columns.select(filters or Filter(), self.s.catalog.default_availability)

    def _facets(
        self, query: str, filters: Filter | None, names: list[str], ranked: Ranked | None, filtered: bool
    ) -> Facets:
        """Counts over the query's matches, whatever the filters: its lexical matches (up to
        ``catalog.facet_depth``) and its nearest products (the unfiltered dense candidates: what an
        unfiltered search ranked, when nothing was filtered). So a facet's count is what choosing
        it shows — a selective filter may show a few more, found deeper among the nearest."""
        with stage("facets"):
            depth = self.s.catalog.facet_depth
            terms = self.lexical.query_terms(query)
            matching, total = self.lexical.matches(query, depth, terms)
            if not filtered and ranked is not None and ranked.query_vec is not None:
                found = matching + ranked.ids
            else:
                qvec = ranked.query_vec if ranked is not None else None
                qvec = self.encoder.encode_query(query) if qvec is None else qvec
                found = matching + [i for i, _ in self.index.search(qvec[None, :], self.s.serving.candidates)[0]]
            default = self.s.catalog.default_availability
            return facet_counts.count(
                self.columns, filters or Filter(), default, found, names, self.s.catalog, total <= depth
            )

    def recommend(
        self,
        user_id: str,
        k: int,
        variant: sessions.fusion.RecommendVariant = "full",
        exclude_seen: bool | None = None,
        impression: bool = True,
        filters: Filter | None = None,
    ) -> ResultList:
        """Next items for the user's current session (``streamrec.sessions``); the older profile
        path (content neighbours, co-visitation, else trending) when the session gives nothing
        (a user without history, or all excluded).
        ``variant`` picks the families (``full`` = fusion, then the head and diversity at their
        /recommend settings); ``exclude_seen`` None = the setting."""
        if variant not in sessions.fusion.VARIANTS:
            raise ValueError(f"unknown recommend variant {variant!r}; one of {sessions.fusion.VARIANTS}")
        with route("recommend"):
            with stage("filter"):
                selection = self.select(filters)
            return self._recommend(user_id, k, variant, exclude_seen, impression, selection)

    def _recommend(
        self,
        user_id: str,
        k: int,
        variant: sessions.fusion.RecommendVariant,
        exclude_seen: bool | None,
        impression: bool,
        selection: Selection | None,
    ) -> ResultList:
        if exclude_seen is None:
            exclude_seen = self.s.recommend.exclude_seen
        with stage("session"):
            sc = sessions.candidates.read(self.features, user_id, self.s.recommend)
        with stage("fusion"):
            exclude = set(sc.prefix) if exclude_seen else set()
            ranked = sessions.fusion.rank(sc, variant, self.s.recommend, self._admits(selection), exclude)
        full = variant == "full"
        model_weight = self.s.recommend.model_weight if full else 0.0
        diversity = self.s.recommend.diversity_lambda if full else 1.0
        if ranked or not full:
            profile, _ = self._profile(list(reversed(sc.session)))
            relevance = [c.score / ranked[0].score for c in ranked]
            pool = None
            if full and ranked and sc.prefix:  # the learner fits the fusion on this pool; serving may use its fit
                ranked, relevance, pool = self._learned_order(sc, ranked, relevance, profile, impression)
            # without the head and MMR the order is final: only the shown k need feature rows (latency)
            shown = self.s.serving.candidates if model_weight > 0 or diversity < 1 else k
            cands = [
                Candidate(c.item_id, rel, self._cosine(profile, c.item_id), sessions.fusion.reasons(c, sc, self._title))
                for c, rel in zip(ranked[:shown], relevance, strict=False)
            ]
            ctx = Context(user_id, None, profile)
            return self._finish(ctx, cands, k, impression, model_weight, diversity, variant, pool)
        return self._profile_recommend(user_id, k, exclude_seen, impression, model_weight, diversity, selection)

    def _learned_order(
        self,
        sc: sessions.candidates.SessionCandidates,
        ranked: list[sessions.fusion.Fused],
        relevance: list[float],
        profile: np.ndarray | None,
        impression: bool,
    ) -> tuple[list[sessions.fusion.Fused], list[float], sessions.learned.Pool | None]:
        """The fused candidates and their relevance in (0, 1], in the learned fusion's order when it
        has earned it (its ``mode``; else as given), and the pool with its features for the learner
        when the request is logged. Nothing is computed when neither needs the features."""
        model = self.models.current
        fitted = getattr(model, "fusion", None) if self.s.recommend.learned_fusion else None
        serve = fitted is not None and fitted.earned
        if not serve and not impression:
            return ranked, relevance, None
        # a row depends on its item alone: only the logged head of the pool needs rows unless the fit orders it all
        ids = [c.item_id for c in (ranked if serve else ranked[: sessions.learned.POOL_LOGGED])]
        cos = [self._cosine(profile, i) for i in ids]
        F = sessions.learned.features(ids, sc.families, sc.prefix, cos, self.s.recommend.family_top_n)
        pool = (ids[: sessions.learned.POOL_LOGGED], F[: sessions.learned.POOL_LOGGED]) if impression else None
        if not serve:
            return ranked, relevance, pool
        assert fitted is not None
        order, learned_relevance = fitted.order(F)
        return [ranked[j] for j in order], learned_relevance.tolist(), pool

    def _profile_recommend(
        self,
        user_id: str,
        k: int,
        exclude_seen: bool,
        impression: bool,
        model_weight: float,
        diversity: float,
        selection: Selection | None,
    ) -> ResultList:
        """Content neighbours of the user's recent items, co-visitation, else trending."""
        recent = self.features.recent_items(user_id, 20)
        seen = {r.item_id for r in recent}
        exclude = seen if exclude_seen else set()

        def admits(item_id: str) -> bool:
            return item_id not in exclude and item_id in self.index and (selection is None or selection.admits(item_id))

        profile, anchors = self._profile(recent)
        cands: dict[str, Candidate] = {}
        n = self.s.serving.candidates
        if profile is not None:
            anchor_vecs = np.stack([v for _, v in anchors])
            hits = retrieval.dense(self.index, profile, n, selection, self.s.catalog.dense_exact_max, exclude)
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
                if not admits(item_id):
                    continue
                c = cands.setdefault(item_id, Candidate(item_id, 0.0, self._cosine(profile, item_id)))
                c.relevance = min(1.0, c.relevance + 0.5 * score / top)
                c.reasons.append(f"often viewed together with '{self._title(anchor_id)}'")
        if not cands:  # a new or unknown user: what is popular right now
            trending = [(i, s) for i, s in self.features.trending(n) if admits(i)]
            top = max((score for _, score in trending), default=1.0) or 1.0
            for item_id, score in trending:
                cands[item_id] = Candidate(item_id, score / top, 0.0, ["trending now"])
        ctx = Context(user_id, None, profile)
        return self._finish(ctx, list(cands.values()), k, impression, model_weight, diversity)

    def similar(
        self, item_id: str, k: int, impression: bool = True, filters: Filter | None = None
    ) -> ResultList | None:
        with route("similar"):
            with stage("filter"):
                selection = self.select(filters)
            return self._similar(item_id, k, impression, selection)

    def _similar(self, item_id: str, k: int, impression: bool, selection: Selection | None) -> ResultList | None:
        seed = self.index.vector(item_id)
        if seed is None:
            return None
        title = self._title(item_id)
        with stage("dense"):
            n, exact = self.s.serving.candidates, self.s.catalog.dense_exact_max
            hits = retrieval.dense(self.index, seed, n, selection, exact, exclude={item_id})
        cands = [
            Candidate(other, max(0.0, cos), cos, [f"similar to '{title}' (cosine {cos:.2f})"]) for other, cos in hits
        ]
        try:
            covisited = self.features.covisited(item_id, 20)
        except redis.RedisError:
            covisited = []  # the explanation only; _finish reports the outage
        for other, _score in covisited:
            match = next((c for c in cands if c.item_id == other), None)
            if match:
                match.reasons.append("often viewed together")
        return self._finish(Context(None, None, seed), cands, k, impression)

    def bought_together(
        self, item_ids: list[str], k: int, impression: bool = True, filters: Filter | None = None
    ) -> ResultList:
        """What shoppers added to cart or bought in one basket with ``item_ids`` (a cart, or one
        product's page), each item's list normalised by its best and summed; co-visitation when no
        basket holds them yet. The cart's own items are never suggested."""
        with route("bought_together"):
            with stage("filter"):
                selection = self.select(filters)
            cart = list(dict.fromkeys(i for i in item_ids if i in self.index))
            with stage("session"):
                lists = self.features.bought_together(cart, 50)
                reason = "often bought with '{}'"
                if not any(lists):
                    lists, reason = self.features.covisited_many(cart, 50), "often viewed with '{}'"
            cands: dict[str, Candidate] = {}
            for anchor, rows in zip(cart, lists, strict=True):
                top = max((score for _, score in rows), default=1.0) or 1.0
                for other, score in rows:
                    if other in cart or other not in self.index or (selection and not selection.admits(other)):
                        continue
                    c = cands.setdefault(other, Candidate(other, 0.0, 0.0))
                    c.relevance += score / top / len(cart)
                    c.reasons.append(reason.format(self._title(anchor)))
            vectors = [v for i in cart if (v := self.index.vector(i)) is not None]
            ctx_vec = np.mean(vectors, axis=0).astype(np.float32) if vectors else None
            for c in cands.values():
                c.similarity = self._cosine(ctx_vec, c.item_id)
            return self._finish(Context(None, None, ctx_vec), list(cands.values()), k, impression, 0.0, 1.0)

    # --- shared tail ----------------------------------------------------------------------
    def _finish(
        self,
        ctx: Context,
        cands: list[Candidate],
        k: int,
        impression: bool = True,
        model_weight: float | None = None,
        diversity: float | None = None,
        variant: str = "full",
        pool: sessions.learned.Pool | None = None,
    ) -> ResultList:
        """Recommendations and similar items: relevance blended with the head (``model_weight``,
        default serving.model_weight), then MMR (``diversity``, default serving.diversity_lambda).
        ``pool``: the learned fusion's candidates and features, logged with the impression."""
        w = self.s.serving.model_weight if model_weight is None else model_weight
        if not cands:
            return self._empty(variant)
        ids = [c.item_id for c in cands]
        relevance = np.array([c.relevance for c in cands], dtype=np.float32)
        with stage("features"):
            X = self._assemble(
                user_id=ctx.user_id,
                query_vec=ctx.vector,
                item_ids=ids,
                retrieval_scores=np.array([c.similarity for c in cands], dtype=np.float32),
            )
        final: np.ndarray = relevance
        explanations: list[list[str]] = [[] for _ in cands]
        model = self.models.current  # one model scores and explains this list, whatever swaps meanwhile
        with stage("head"):  # scores every candidate; explains only the page, once it is known (below)
            head = self._head(X, False, model) if w > 0 and X is not None else None  # rows are logged either way
        if head is not None:
            p_click, p_buy, _ = head
            value = p_click * (1.0 + p_buy)
            peak = float(value.max())
            if peak > 0:
                final = (1 - w) * relevance + w * (value / peak)
        with stage("diversity"):
            order = self._diverse(ids, final, k, self.s.serving.diversity_lambda if diversity is None else diversity)
        if head is not None and X is not None:
            with stage("head"):
                page = self._explain(model, X[order], head[0][order], head[1][order])
            for j, text in zip(order, page, strict=True):
                explanations[j] = [text]
        reasons = [c.reasons + e for c, e in zip(cands, explanations, strict=True)]
        rows = X[order] if X is not None else None
        return self._respond(ctx, ids, final, order, reasons, rows, variant, impression, pool, features_down=X is None)

    def _assemble(self, **request) -> np.ndarray | None:
        """The feature rows, or None when Redis does not answer within ``serving.redis_timeout_s``
        (the caller then ranks on retrieval alone and the list says it is degraded)."""
        try:
            return self.assembler.assemble(**request)
        except redis.RedisError as e:
            log.warning("feature store unreachable, answering degraded: %r", e)
            return None

    def _memory(self, key: str) -> dict[str, tuple[float, float]]:
        """The query's click memory; {} while Redis does not answer (the list is already degraded)."""
        try:
            return self.features.click_memory(key)
        except redis.RedisError:
            return {}

    def _search_head_earned(self) -> bool:
        """The served model's search scorecard says its head orders unseen queries' clicks better
        than the fused order (published by the learner; a model without one has not earned it)."""
        model = self.models.current
        card = getattr(model, "search_card", None)
        return bool(card and card.get("earned"))

    def _head(
        self, X: np.ndarray, explain: bool = True, model: Any = None
    ) -> tuple[np.ndarray, np.ndarray, list[list[str]]] | None:
        """(p_click, p_purchase, per-row explanation, [] when not ``explain``) from ``model``
        (default: the current one), if it reads these rows."""
        model = model or self.models.current
        if model is None or model.head.n_features != N_FEATURES:  # none yet, or another feature schema
            return None
        p_click, p_buy = model.head.predict(X)
        if not explain:
            return p_click, p_buy, [[] for _ in range(X.shape[0])]
        return p_click, p_buy, [[text] for text in self._explain(model, X, p_click, p_buy)]

    @staticmethod
    def _explain(model, X: np.ndarray, p_click: np.ndarray, p_buy: np.ndarray) -> list[str]:
        if X.shape[0] == 0:
            return []
        explained = model.head.explain(X)
        out = []
        for i in range(X.shape[0]):
            text = f"ranker v{model.version}: p(click) {p_click[i]:.3f}, p(purchase) {p_buy[i]:.3f}"
            if explained[i]:
                text += " — driven by " + ", ".join(explained[i][:3])
            out.append(text)
        return out

    def _diverse(self, ids: list[str], final: np.ndarray, k: int, lambda_: float) -> list[int]:
        if lambda_ >= 1.0:
            return _top(final, k)
        return mmr(final, np.stack([self._vector_or_zero(i) for i in ids]), k, lambda_)

    def _respond(
        self,
        ctx: Context,
        ids: list[str],
        final: np.ndarray,
        order: list[int],
        reasons: list[list[str]],
        rows: np.ndarray | None,
        variant: str,
        impression: bool,
        pool: sessions.learned.Pool | None = None,
        swapped: int | None = None,
        features_down: bool = False,
        position: int = 0,
    ) -> ResultList:
        """The explained result list; logged as an impression (with the page's feature ``rows``, in
        ``order``) unless not asked. ``swapped``: the page position whose result traded places with
        the next at random.

        ``features_down``: the feature store did not answer; the impression is still logged (clicks
        on it are real labels) without served rows, so the learner recomputes them instead of
        learning zeros."""
        request_id = uuid.uuid4().hex
        model = self.models.current
        with stage("respond"):
            items = [self._item(ids[i], float(final[i]), reasons[i]) for i in order]
            result = ResultList(
                request_id=request_id,
                items=items,
                model_version=model.version if model else 0,
                index_version=self.index.version,
                variant=variant,
                degraded=[FEATURES_UNAVAILABLE] if features_down else [],
            )
        if impression:
            with stage("log"):
                self.impressions.record(
                    request_id=request_id,
                    user_id=ctx.user_id,
                    query=ctx.query,
                    item_ids=[ids[i] for i in order],
                    rows=rows,
                    ts_ms=int(time.time() * 1000),
                    pool=pool,
                    swapped=swapped,
                    position=position,
                )
        return result

    def _empty(self, variant: str) -> ResultList:
        model = self.models.current
        return ResultList(
            request_id=uuid.uuid4().hex,
            items=[],
            model_version=model.version if model else 0,
            index_version=self.index.version,
            variant=variant,
        )

    # --- helpers --------------------------------------------------------------------------
    def _profile(self, recent) -> tuple[np.ndarray | None, list[tuple[str, np.ndarray]]]:
        """Weighted mean of recent item vectors; also the items it was made of (for reasons)."""
        total = None
        anchors: list[tuple[str, np.ndarray]] = []
        for i, r in enumerate(recent):
            vec = self.index.vector(r.item_id)
            if vec is None:
                continue
            w = (self.s.features.weight(r.type) if r.type in INTERACTIONS else 1.0) * RECENCY_DECAY**i
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

    def _item(self, item_id: str, score: float, reasons: list[str]) -> ResultItem:
        meta = self.index.meta(item_id)
        if meta is None:  # deleted while this request ran
            return ResultItem(item_id=item_id, score=round(score, 6), title=item_id, reasons=reasons)
        return ResultItem(
            item_id=item_id,
            score=round(score, 6),
            title=meta.title,
            reasons=reasons,
            category=meta.category,
            brand=meta.brand,
            price=meta.price,
            in_stock=meta.available,
        )

    def _title(self, item_id: str) -> str:
        meta = self.index.meta(item_id)
        return meta.title if meta else item_id


def _top(scores: np.ndarray, k: int) -> list[int]:
    """Indices of the ``k`` best scores, best first; ties keep candidate order."""
    return np.argsort(-scores, kind="stable")[:k].tolist()
