"""Ranking features and the ranking head — one module, imported by the learner *and* serving.

Why one module: the learner trains on exactly the rows serving scored (``log_served`` /
``load_served``), and when a replayed log has no served rows the learner recomputes them with the
same :class:`FeatureAssembler`, so there is no train/serve skew by construction.

Every feature degrades to a neutral value (0, with a ``has_*`` flag) when its input is missing:
an item without a vector, a user without history, a search without a query vector.

Redis layout written here: ``{prefix}served:{request_id}`` — a hash ``{schema, items, X}`` with a
TTL; ``items`` is the JSON list of item ids, ``X`` the base64 float32 rows in that order.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch
from torch import nn

if TYPE_CHECKING:  # pragma: no cover - types only
    import redis

    from streamrec.features import RowReads

FEATURE_NAMES: list[str] = [
    "retrieval_score",  # first-stage score from serving (0 for a replayed log)
    "query_item_cos",  # cosine(query vector, item vector)
    "has_query_vec",
    "user_item_cos",  # cosine(mean vector of the user's recent items, item vector)
    "has_user_vec",
    "has_item_vec",
    "user_history_log",  # log1p(number of recent items)
    "user_seen_item",  # the item is among the user's recent items
    "item_impressions_log",  # popularity / CTR counters
    "item_clicks_log",
    "item_ctr_smoothed",
    "item_views_log",
    "item_carts_log",
    "item_purchases_log",
    "item_purchase_rate",
    "covisit_sum_log",  # co-visitation of the item with the user's recent items
    "covisit_max_log",
    "trending_log",
    "category_affinity",  # share of the user's category affinity on the item's category
    "category_is_top",
    "price_log",
    "price_match",  # exp(-|log price - mean log price of the user's recent items|)
    "has_price",
] + [f"item_vec_{k}" for k in range(8)]  # a fixed random projection of the item vector (content → CTR)
# Query–product match, computed by serving's search from its analyzer (serving/query_features.py);
# 0 with has_query_features 0 for recommendations, similar items and replayed logs.
QUERY_FEATURE_NAMES: list[str] = [
    "qp_lexical_norm",  # BM25 / the best BM25 of the list
    "qp_lexical_rank_log",  # log1p(rank in the lexical list)
    "qp_title_coverage",  # share of the query's terms found in the title
    "qp_all_matched",  # every query term is in the item's document
    "qp_numbers_matched",  # numeric query terms (sizes, fractions) found in the title
    "qp_numbers_missing",  # numeric query terms not in the title: "1/2" asked, "1-1/2" shown
    "qp_last_in_title",  # the query's last term (usually the product type) is in the title
    "qp_first_title_in_query",  # the title's first term (often the brand) was asked for
    "qp_title_len_log",
    "qp_fused_score",  # the first-stage fused score
    "qp_fused_rank_log",
]
FEATURE_NAMES += QUERY_FEATURE_NAMES + ["has_query_features"]
N_ITEM_PROJ = 8
N_FEATURES = len(FEATURE_NAMES)
_COL = {name: i for i, name in enumerate(FEATURE_NAMES)}
SCHEMA_ID = hashlib.sha1(json.dumps(FEATURE_NAMES).encode()).hexdigest()[:12]

RECENT_FOR_PROFILE = 20  # recent items that make up the user's vector and price profile
RECENT_FOR_COVISIT = 5  # recent items whose co-visitation lists are read
TRENDING_N = 200


class FeatureSource(Protocol):
    """The read side of ``streamrec.features.FeatureStore`` (or an offline store with the same API)."""

    def recent_items(self, user_id: str, n: int = 20) -> list[Any]: ...
    def row_reads(
        self,
        user_id: str | None,
        item_ids: list[str],
        now_ms: int | None,
        recent_n: int,
        covisit_of: int,
        covisit_n: int,
    ) -> RowReads: ...
    def trending(self, n: int = 20) -> list[tuple[str, float]]: ...


_PROJ_CACHE: dict[int, np.ndarray] = {}


def item_projection(dim: int) -> np.ndarray:
    """The (dim, 8) Gaussian projection for item vectors of ``dim``; fixed by a seed, so the learner
    and every serving replica project identically."""
    P = _PROJ_CACHE.get(dim)
    if P is None:
        rng = np.random.default_rng(20_240_601 + dim)
        P = (rng.standard_normal((dim, N_ITEM_PROJ)) / math.sqrt(N_ITEM_PROJ)).astype(np.float32)
        _PROJ_CACHE[dim] = P
    return P


def _unit(v: np.ndarray | None) -> np.ndarray | None:
    if v is None:
        return None
    v = np.asarray(v, dtype=np.float32).ravel()
    n = float(np.linalg.norm(v))
    if not math.isfinite(n) or n == 0.0:
        return None
    return v / n


def _price(attrs: dict | None, meta: Any) -> float | None:
    p = attrs.get("price") if attrs else None
    if p is None and meta is not None:
        p = getattr(meta, "price", None)
    try:
        p = float(p) if p is not None else None
    except (TypeError, ValueError):
        return None
    return p if p is not None and math.isfinite(p) and p >= 0 else None


def _category(attrs: dict | None, meta: Any) -> str | None:
    c = attrs.get("category") if attrs else None
    if not c and meta is not None:
        c = getattr(meta, "category", None)
    return str(c) if c else None


class FeatureAssembler:
    """Turns (user, query, candidates) into the ranking feature matrix, for serving and learner alike.

    Parameters
    ----------
    features: the Redis feature reader (``FeatureStore``) or any object with its read API.
    vectors: item id → item embedding, or None when the item has no vector.
    item_meta: item id → metadata (category, price) used when Redis has no attributes.
    """

    def __init__(
        self,
        features: FeatureSource,
        vectors: Callable[[str], np.ndarray | None],
        item_meta: Callable[[str], Any | None] | None = None,
    ):
        self.features = features
        self.vectors = vectors
        self.item_meta = item_meta

    def assemble(
        self,
        *,
        user_id: str | None,
        query_vec: np.ndarray | None,
        item_ids: list[str],
        retrieval_scores: np.ndarray | Sequence[float] | None,
        now_ms: int | None = None,
        query_features: np.ndarray | None = None,
    ) -> np.ndarray:
        """The ``(len(item_ids), N_FEATURES)`` float32 matrix, rows in ``item_ids`` order.

        ``query_features``: the search's ``(n, len(QUERY_FEATURE_NAMES))`` query–product match
        columns, or None (then 0 and ``has_query_features`` 0)."""
        item_ids = [str(i) for i in item_ids]
        n = len(item_ids)
        X = np.zeros((n, N_FEATURES), dtype=np.float32)
        if n == 0:
            return X
        self._retrieval(X, retrieval_scores)
        self._query_match(X, query_features)
        reads = self.features.row_reads(user_id, item_ids, now_ms, RECENT_FOR_PROFILE, RECENT_FOR_COVISIT, 100)
        recent_ids = self._user_history(X, reads.recent, item_ids)
        self._vectors(X, query_vec, item_ids, recent_ids)
        self._counters(X, reads.stats)
        self._covisitation(X, item_ids, reads.covisited)
        self._trending(X, item_ids)
        self._category_and_price(X, item_ids, recent_ids, reads.attributes, reads.affinity)
        return X

    @staticmethod
    def _retrieval(X: np.ndarray, retrieval_scores: np.ndarray | Sequence[float] | None) -> None:
        n = X.shape[0]
        if retrieval_scores is None:
            scores = np.zeros(n, dtype=np.float32)
        else:
            scores = np.asarray(retrieval_scores, dtype=np.float32).ravel()
            if scores.shape[0] != n:
                raise ValueError(f"retrieval_scores has {scores.shape[0]} values for {n} items")
        X[:, _COL["retrieval_score"]] = np.nan_to_num(scores, nan=0.0, posinf=0.0, neginf=0.0)

    @staticmethod
    def _query_match(X: np.ndarray, query_features: np.ndarray | None) -> None:
        if query_features is None:
            return
        F = np.asarray(query_features, dtype=np.float32)
        if F.shape != (X.shape[0], len(QUERY_FEATURE_NAMES)):
            raise ValueError(f"query_features has shape {F.shape}, expected ({X.shape[0]}, {len(QUERY_FEATURE_NAMES)})")
        first = _COL[QUERY_FEATURE_NAMES[0]]
        X[:, first : first + len(QUERY_FEATURE_NAMES)] = np.nan_to_num(F, nan=0.0, posinf=0.0, neginf=0.0)
        X[:, _COL["has_query_features"]] = 1.0

    @staticmethod
    def _user_history(X: np.ndarray, recent: list, item_ids: list[str]) -> list[str]:
        """History length and seen-item flags; returns the user's recent item ids (newest first)."""
        recent_ids = [r.item_id for r in recent]
        X[:, _COL["user_history_log"]] = math.log1p(len(recent_ids))
        seen = set(recent_ids)
        X[:, _COL["user_seen_item"]] = [1.0 if i in seen else 0.0 for i in item_ids]
        return recent_ids

    def _vectors(self, X: np.ndarray, query_vec: np.ndarray | None, item_ids: list[str], recent_ids: list[str]) -> None:
        """Item projection and the query / user-profile cosines."""
        col = _COL
        q = _unit(query_vec)
        item_vecs = [_unit(self.vectors(i)) for i in item_ids]
        recent_vecs = [v for v in (_unit(self.vectors(i)) for i in recent_ids) if v is not None]
        user_vec = _unit(np.mean(np.stack(recent_vecs), axis=0)) if recent_vecs else None
        proj0 = col["item_vec_0"]
        by_dim: dict[int, list[tuple[int, np.ndarray]]] = {}  # rows with a vector, by its length
        for row, v in enumerate(item_vecs):
            if v is not None:
                by_dim.setdefault(v.shape[0], []).append((row, v))
        for dim, found in by_dim.items():  # one matrix product per length, not one per row
            rows = [r for r, _ in found]
            V = np.stack([v for _, v in found])
            X[rows, col["has_item_vec"]] = 1.0
            X[rows, proj0 : proj0 + N_ITEM_PROJ] = V @ item_projection(dim)
            if q is not None and q.shape[0] == dim:
                X[rows, col["query_item_cos"]] = V @ q
                X[rows, col["has_query_vec"]] = 1.0
            if user_vec is not None and user_vec.shape[0] == dim:
                X[rows, col["user_item_cos"]] = V @ user_vec
                X[rows, col["has_user_vec"]] = 1.0

    @staticmethod
    def _counters(X: np.ndarray, stats: list) -> None:
        """Popularity and CTR counters (the CTR smoothed by the feature config's prior)."""
        col = _COL
        for row, st in enumerate(stats):
            if st is None:
                continue
            imps, clicks = max(0.0, float(st.impressions)), max(0.0, float(st.clicks))
            counts = st.counts or {}
            views = max(0.0, float(counts.get("view", 0.0)))
            carts = max(0.0, float(counts.get("add_to_cart", 0.0)))
            buys = max(0.0, float(counts.get("purchase", 0.0)))
            X[row, col["item_impressions_log"]] = math.log1p(imps)
            X[row, col["item_clicks_log"]] = math.log1p(clicks)
            X[row, col["item_ctr_smoothed"]] = float(st.ctr)
            X[row, col["item_views_log"]] = math.log1p(views)
            X[row, col["item_carts_log"]] = math.log1p(carts)
            X[row, col["item_purchases_log"]] = math.log1p(buys)
            X[row, col["item_purchase_rate"]] = (buys + 0.1) / (views + clicks + 10.0)

    @staticmethod
    def _covisitation(X: np.ndarray, item_ids: list[str], rows: list[list[tuple[str, float]]]) -> None:
        """Co-visitation of each candidate with the user's most recent items (sum and max)."""
        if not rows:
            return
        n = len(item_ids)
        cov_sum = np.zeros(n, dtype=np.float64)
        cov_max = np.zeros(n, dtype=np.float64)
        index = {iid: k for k, iid in enumerate(item_ids)}
        for row in rows:
            for other, score in row:
                k = index.get(other)
                if k is not None and score > 0:
                    cov_sum[k] += score
                    cov_max[k] = max(cov_max[k], score)
        X[:, _COL["covisit_sum_log"]] = np.log1p(cov_sum)
        X[:, _COL["covisit_max_log"]] = np.log1p(cov_max)

    def _trending(self, X: np.ndarray, item_ids: list[str]) -> None:
        trending = dict(self.features.trending(n=TRENDING_N))
        X[:, _COL["trending_log"]] = [math.log1p(max(0.0, float(trending.get(i, 0.0)))) for i in item_ids]

    def _category_and_price(
        self,
        X: np.ndarray,
        item_ids: list[str],
        recent_ids: list[str],
        attrs: list[dict | None],
        affinity: dict[str, float],
    ) -> None:
        """Category affinity of the user for each candidate's category, and the price match;
        ``attrs``: the candidates' then the recent items' attributes."""
        col, n = _COL, len(item_ids)
        item_meta = self.item_meta
        meta: Callable[[str], Any | None] = item_meta if item_meta is not None else (lambda i: None)
        cand_attrs, recent_attrs = attrs[:n], attrs[n:]
        total_aff = sum(v for v in affinity.values() if v > 0)
        top_cat = max(affinity, key=lambda c: affinity[c]) if affinity else None
        recent_prices = [
            p for p in (_price(a, meta(i)) for a, i in zip(recent_attrs, recent_ids, strict=True)) if p is not None
        ]
        user_log_price = float(np.mean(np.log1p(recent_prices))) if recent_prices else None
        for row, (a, iid) in enumerate(zip(cand_attrs, item_ids, strict=True)):
            m = meta(iid) if (a is None or not a.get("category") or a.get("price") is None) else None
            cat = _category(a, m)
            if cat is not None and total_aff > 0:
                X[row, col["category_affinity"]] = max(0.0, affinity.get(cat, 0.0)) / total_aff
                X[row, col["category_is_top"]] = 1.0 if cat == top_cat else 0.0
            price = _price(a, m)
            if price is not None:
                X[row, col["has_price"]] = 1.0
                X[row, col["price_log"]] = math.log1p(price)
                if user_log_price is not None:
                    X[row, col["price_match"]] = math.exp(-abs(math.log1p(price) - user_log_price))


# --- the ranking head -----------------------------------------------------------------------------


class RankingHead(nn.Module):
    """Multi-task ranking head: shared layers, a click (CTR) and a purchase (CTCVR) head.

    Inputs are standardised by running statistics kept as buffers, so a snapshot carries its own
    normalisation and serving needs nothing else. Position de-biasing is a shallow tower: a
    learned per-position logit added to the click logit *in training only*; serving scores
    position-free (``position=None``), i.e. as if every item were shown at the top.
    """

    # buffers (register_buffer below), declared so they type as tensors, not `Tensor | Module`
    x_mean: torch.Tensor
    x_var: torch.Tensor
    x_count: torch.Tensor
    logit_offset: torch.Tensor

    def __init__(
        self,
        n_features: int = N_FEATURES,
        hidden: int = 32,
        max_positions: int = 50,
        feature_names: list[str] | None = None,
    ):
        super().__init__()
        if n_features < 1 or hidden < 1 or max_positions < 1:
            raise ValueError("n_features, hidden and max_positions must be positive")
        self.feature_names = list(
            feature_names or (FEATURE_NAMES if n_features == N_FEATURES else [f"f{i}" for i in range(n_features)])
        )
        if len(self.feature_names) != n_features:
            raise ValueError(f"{len(self.feature_names)} feature names for {n_features} features")
        self.n_features, self.hidden, self.max_positions = n_features, hidden, max_positions
        self.shared = nn.Sequential(nn.Linear(n_features, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
        self.click_deep = nn.Linear(hidden, 1)
        self.click_wide = nn.Linear(n_features, 1)
        self.buy_deep = nn.Linear(hidden, 1)
        self.buy_wide = nn.Linear(n_features, 1)
        self.position_bias = nn.Embedding(max_positions, 1)
        nn.init.zeros_(self.position_bias.weight)
        for lin in (self.click_deep, self.click_wide, self.buy_deep, self.buy_wide):
            nn.init.zeros_(lin.weight)
        nn.init.constant_(self.click_wide.bias, -3.0)  # start near a low base rate, not at 50 %
        nn.init.constant_(self.buy_wide.bias, -5.0)
        nn.init.zeros_(self.click_deep.bias)
        nn.init.zeros_(self.buy_deep.bias)
        self.register_buffer("x_mean", torch.zeros(n_features))
        self.register_buffer("x_var", torch.ones(n_features))
        self.register_buffer("x_count", torch.zeros(()))
        # log of the share of negatives the head was trained on (0 = all): trained on a sample, its
        # logits are too high by exactly -log(rate), so predictions add it back (He et al. 2014)
        self.register_buffer("logit_offset", torch.zeros(()))

    def config(self) -> dict:
        """What it takes to rebuild the module before loading its state dict."""
        return {
            "n_features": self.n_features,
            "hidden": self.hidden,
            "max_positions": self.max_positions,
            "feature_names": list(self.feature_names),
        }

    @torch.no_grad()
    def update_normalizer(self, X: torch.Tensor, momentum: float = 0.01) -> None:
        """Track feature mean/variance: exact average while young, exponential afterwards."""
        if X.shape[0] == 0:
            return
        mean, var = X.mean(0), X.var(0, unbiased=False)
        n = float(X.shape[0])
        c = float(self.x_count)
        w = max(n / (c + n), momentum)
        delta = mean - self.x_mean
        self.x_mean += w * delta
        self.x_var.mul_(1 - w).add_(w * var + w * (1 - w) * delta * delta)
        self.x_count += n

    def _standardize(self, X: torch.Tensor) -> torch.Tensor:
        return ((X - self.x_mean) / torch.sqrt(self.x_var + 1e-6)).clamp(-6.0, 6.0)

    def forward(self, X: torch.Tensor, position: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Click and purchase *logits*; ``position`` (0-based) only during training."""
        z = self._standardize(X)
        h = self.shared(z)
        click = (self.click_deep(h) + self.click_wide(z)).squeeze(-1)
        buy = (self.buy_deep(h) + self.buy_wide(z)).squeeze(-1)
        if position is not None:
            click = click + self.position_bias(position.clamp(0, self.max_positions - 1)).squeeze(-1)
        return click, buy

    def _check(self, X: np.ndarray) -> torch.Tensor:
        X = np.asarray(X, dtype=np.float32)
        if X.ndim != 2 or X.shape[1] != self.n_features:
            raise ValueError(f"expected an (n, {self.n_features}) feature matrix, got shape {X.shape}")
        return torch.from_numpy(np.nan_to_num(X, nan=0.0, posinf=0.0, neginf=0.0))

    @torch.no_grad()
    def predict(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(p_click, p_purchase)`` for each row, position-free."""
        was = self.training
        self.eval()
        try:
            click, buy = self.forward(self._check(X))
        finally:
            self.train(was)
        off = self.logit_offset  # back to the stream's odds (see the buffer)
        return torch.sigmoid(click + off).numpy(), torch.sigmoid(buy + off).numpy()

    def explain(self, X: np.ndarray, top: int = 3) -> list[list[str]]:
        """Per row, the features pushing the click score up most (gradient × standardised input)."""
        x = self._check(X)
        if x.shape[0] == 0:
            return []
        was = self.training
        self.eval()
        try:
            z = self._standardize(x).detach().requires_grad_(True)
            h = self.shared(z)
            click = (self.click_deep(h) + self.click_wide(z)).sum()
            (grad,) = torch.autograd.grad(click, z)
        finally:
            self.train(was)
        contrib = (grad * z).detach().numpy()
        out = []
        for row in contrib:
            order = np.argsort(-row)[:top]
            out.append([self.feature_names[k] for k in order if row[k] > 1e-4])
        return out


def head_from_state(config: dict, state: dict) -> RankingHead:
    """Rebuild a head from :meth:`RankingHead.config` and its state dict."""
    head = RankingHead(
        n_features=int(config["n_features"]),
        hidden=int(config["hidden"]),
        max_positions=int(config["max_positions"]),
        feature_names=list(config["feature_names"]),
    )
    state = dict(state)
    state.setdefault("logit_offset", torch.zeros(()))  # snapshots from before negative sampling
    head.load_state_dict(state)
    return head


# --- what serving scored ---------------------------------------------------------------------------


def served_key(prefix: str, request_id: str) -> str:
    return f"{prefix}served:{request_id}"


def log_served(r: redis.Redis, prefix: str, request_id: str, item_ids: list[str], X: np.ndarray, ttl_s: float) -> None:
    """Store the rows serving scored for ``request_id`` so the learner trains on exactly them."""
    X = np.ascontiguousarray(X, dtype=np.float32)
    if X.ndim != 2 or X.shape != (len(item_ids), N_FEATURES):
        raise ValueError(f"X must be ({len(item_ids)}, {N_FEATURES}), got {X.shape}")
    if ttl_s <= 0:
        raise ValueError("ttl_s must be positive")
    key = served_key(prefix, request_id)
    pipe = r.pipeline(transaction=True)
    pipe.hset(
        key,
        mapping={
            "schema": SCHEMA_ID,
            "items": json.dumps([str(i) for i in item_ids]),
            "X": base64.b64encode(X.tobytes()).decode(),
        },
    )
    pipe.pexpire(key, max(1, int(ttl_s * 1000)))
    pipe.execute()


def load_served(r: redis.Redis, prefix: str, request_id: str) -> dict[str, np.ndarray] | None:
    """item id → served feature row; None when absent, expired or from another feature schema."""
    raw = r.hgetall(served_key(prefix, request_id))
    if not raw:
        return None
    raw = {
        (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v) for k, v in raw.items()
    }
    if raw.get("schema") != SCHEMA_ID or "items" not in raw or "X" not in raw:
        return None
    items = json.loads(raw["items"])
    X = np.frombuffer(base64.b64decode(raw["X"]), dtype=np.float32)
    if X.size != len(items) * N_FEATURES:
        return None
    X = X.reshape(len(items), N_FEATURES)
    return {iid: X[k].copy() for k, iid in enumerate(items)}
